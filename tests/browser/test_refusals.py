"""A device that refuses a call says why, and the viewer shows it: busy, or not allowed.

The agent here takes one call at a time and only from admins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext

from .conftest import LOOPBACK_ONLY
from .harness import DEVICE, AgentProcess, Viewer

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

STRICT = {
    **LOOPBACK_ONLY,
    "EDGE_AGENT_CALLS__MAX_CALLS": "1",
    "EDGE_AGENT_CALLS__ALLOW_ROLES": '["admin"]',
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AgentProcess]:
    """An agent that takes one call at a time, from admins only."""
    async with AgentProcess(tmp_path_factory.mktemp("strict-agent"), env=STRICT) as process:
        yield process


async def _refused(viewer: Viewer) -> str:
    await viewer.device_button().click()
    await viewer.wait_until("window.viewer.call === null && window.viewer.lastCall !== null")
    await viewer.wait_until("window.viewer.errors.length > 0")
    assert await viewer.js("window.viewer.lastCall.metrics.pickupAt") is None
    assert await viewer.page.locator("#devices-view").is_visible()
    return str(await viewer.page.locator("#banner-text").text_content())


async def test_a_caller_who_may_not_call_is_told_so(viewer: Viewer, agent: AgentProcess) -> None:
    await agent.add_user("guest", "guest-password", groups="devices")  # sees it, may not call
    await viewer.login("guest", "guest-password")
    await viewer.device_button().wait_for()
    assert await _refused(viewer) == f'You are not allowed to call "{DEVICE}".'
    assert await viewer.js("window.viewer.errors") == [f'You are not allowed to call "{DEVICE}".']


async def test_a_busy_device_says_it_is_busy(
    viewer: Viewer, agent: AgentProcess, context: BrowserContext
) -> None:
    await viewer.login("admin", agent.admin_password)
    await viewer.call()  # takes the device's only call
    other = Viewer(await context.browser.new_page(), agent.url)  # type: ignore[union-attr]
    try:
        await other.open()
        await other.login("admin", agent.admin_password)
        await other.device_button().wait_for()
        text = await _refused(other)
        assert text == f'"{DEVICE}" is busy: 1 calls are in progress (at most 1).'
    finally:
        await other.page.close()
    # The first call is not disturbed by the refused one, though the refusal went to every
    # connection of the account.
    assert await viewer.js("window.viewer.errors") == []
    frames = await viewer.js("window.viewer.call.framesShown")
    await viewer.wait_until(f"window.viewer.call && window.viewer.call.framesShown > {frames + 5}")
    await viewer.page.click("#hangup")
