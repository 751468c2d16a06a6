"""A call survives the network changing under it (the viewer on a train, a flaky uplink).

Chromium watches the device through the relay; then the viewer's link goes down and up,
the viewer moves to another network and address (its old sockets, TURN allocation and
hub connection all cut off), or the device's link goes down and up. The device cannot
restart ICE (aiortc has no ICE restart), so when the media stops the viewer calls again
by itself, keeping its page; a path that comes back by itself (ICE consent answered
again, or Chromium moving the call to its new address) is kept. The measure is from the
moment the new path exists to video moving again on the page (run with -s to see it).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.async_api import Page

from .conftest import World
from .viewer import call_porch, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

RESUME_GOAL = 3.0  # seconds from the new path to moving video (issue 10, item 4)


# More frames than are in flight when a path breaks (15 fps: a quarter of a second).
MOVING = 4


async def frames_resume(page: Page, since: float) -> float:
    """Seconds from ``since`` (monotonic) until the page has shown ``MOVING`` more frames."""
    shown = await page.evaluate("window.viewer.frames")
    await wait_until(page, f"window.viewer.frames >= {shown + MOVING}")
    return time.monotonic() - since


async def until_stalled(page: Page) -> None:
    """The page noticed the media stopped (and, after a moment, is trying to call again)."""
    await wait_until(page, "window.viewer.resume !== null")


async def last_resume(page: Page) -> dict[str, Any]:
    resume: dict[str, Any] = await page.evaluate(
        "(() => { const r = window.viewer.resumes.at(-1);"
        " return {recovered: r.recovered, attempts: r.attempts, error: r.lastError}; })()"
    )
    return resume


async def link_down_and_up(page: Page, world: World, side: str) -> None:
    """In a call, ``side``'s link goes down until the page notices, then up again: video
    moves again within ``RESUME_GOAL``."""
    await call_porch(page)
    world.lab.link(side, False)
    try:
        await until_stalled(page)
    finally:
        world.lab.link(side, True)
    waited = await frames_resume(page, since=time.monotonic())
    print(f"video moving again {waited:.2f} s after the new path")
    assert waited <= RESUME_GOAL, (waited, await last_resume(page))


async def test_the_viewers_link_going_down_and_up(page: Page, world: World) -> None:
    await link_down_and_up(page, world, "view")
    # By the same call (ICE consent came back) or by calling again.
    await wait_until(page, "window.viewer.resumes.at(-1).recovered")
    assert await page.evaluate("window.viewer.call.state") == "connected"
    await page.click("#hangup")


async def test_the_viewer_moving_to_a_new_address(page: Page, world: World) -> None:
    await call_porch(page)
    world.lab.move_viewer()
    # The old address is gone, so frames shown from here on came over the new network:
    # by Chromium moving the call to its new address by itself (the caller controls ICE
    # and may nominate a new pair, RFC 8445 section 8.1.1), or by the page calling again.
    waited = await frames_resume(page, since=time.monotonic())
    print(f"video moving again {waited:.2f} s after the new path")
    assert waited <= RESUME_GOAL, (waited, await page.evaluate("window.viewer.resumes"))
    assert await page.evaluate("document.getElementById('call-view').hidden") is False
    route = await wait_until(page, "window.viewer.call.stats && window.viewer.call.stats.route")
    assert "relay" in route
    await page.click("#hangup")


async def test_the_devices_link_going_down_and_up(page: Page, world: World) -> None:
    await link_down_and_up(page, world, "dev")
    await page.click("#hangup")
