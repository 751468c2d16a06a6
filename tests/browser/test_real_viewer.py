"""The viewer as a real first visit: no auto-granted media, no loopback candidates.

Without ``--use-fake-ui-for-media-stream`` the page has no media permission (the prompt
is declined, as headless Chromium does), so Chromium hides its host addresses behind mDNS
``UUID.local`` names (RFC 8838 / draft-ietf-rtcweb-mdns-ice-candidates) and answers
multicast DNS queries for them. That multicast must not reach any real network, so the
agent, its hub and Chromium all run inside a network namespace made for this module,
with loopback and a veth pair (both ends inside) as its only interfaces.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Playwright

from .harness import (
    CHROMIUM,
    AgentProcess,
    NetNamespace,
    Viewer,
    chromium_args,
    launch_chromium,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

_MDNS_HOST = re.compile(r"^candidate:\S+ \d \S+ \d+ [0-9a-f-]{36}\.local \d+ typ host")
# What the agent logs when a browser's mDNS name costs a call time or a candidate.
_UNRESOLVED = ("did not resolve", "cannot be resolved")


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNamespace]:
    """A network namespace with lo and a veth pair; removed afterwards."""
    namespace = NetNamespace()
    try:
        namespace.create()
        yield namespace
    finally:
        namespace.delete()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(
    tmp_path_factory: pytest.TempPathFactory, netns: NetNamespace
) -> AsyncIterator[AgentProcess]:
    """The agent and its hub inside the namespace, gathering on every interface there."""
    async with AgentProcess(tmp_path_factory.mktemp("ns-agent"), netns=netns) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(
    playwright: Playwright,
    voice_wav: Path,
    netns: NetNamespace,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Browser]:
    """Chromium inside the namespace, as a real viewer's: no fake UI, no loopback ICE."""
    wrapper = netns.wrap(CHROMIUM, tmp_path_factory.mktemp("bin"))
    args = chromium_args(fake_ui=False, loopback=False, microphone=voice_wav)
    chromium = await launch_chromium(playwright, args, executable=wrapper)
    yield chromium
    await chromium.close()


async def test_a_real_viewer_calls_with_mdns_candidates(
    viewer: Viewer, agent: AgentProcess
) -> None:
    await viewer.login("admin", agent.admin_password)
    await viewer.call()
    await viewer.wait_until("window.viewer.call.framesShown > 10")
    assert await viewer.js("document.getElementById('video').videoWidth") == 320

    candidates = (await viewer.metrics())["localCandidates"]
    assert candidates, "Chromium sent no candidate"
    assert all(_MDNS_HOST.match(c) for c in candidates), candidates
    await viewer.wait_until("document.getElementById('st-route').textContent.includes('(udp')")
    log = agent.log_tail(400)
    assert not [line for line in log.splitlines() if any(u in line for u in _UNRESOLVED)]

    # The microphone prompt was declined: the call goes on, and the page says so.
    note = await viewer.page.locator("#mic-note").text_content()
    assert note is not None
    assert note.startswith("Microphone blocked: allow it for this site")
    assert await viewer.page.locator("#talk").is_disabled()
    await viewer.page.click("#hangup")
    await viewer.wait_until("window.viewer.call === null")
