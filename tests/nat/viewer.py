"""Driving the viewer page in Chromium (inside the viewer's namespace) for the NAT tests."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Page

from .rig import HUB_URL, PASSWORD, WAIT

__all__ = ["CALL", "call_porch", "stats", "wait_until"]

CALL = "window.viewer.call"


async def call_porch(page: Page) -> None:
    """Log in as alice and call the device; returns once frames are shown."""
    await page.goto(HUB_URL + "/")
    await page.fill("#login-name", "alice")
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await page.locator('.device[data-name="porch"] button').click()
    await wait_until(page, f"{CALL} && {CALL}.state === 'connected'")
    await wait_until(page, f"{CALL}.framesShown > 10")


async def wait_until(page: Page, expression: str) -> Any:
    handle = await page.wait_for_function(f"() => ({expression})", timeout=WAIT * 1000)
    return await handle.json_value()


async def stats(page: Page) -> dict[str, Any]:
    """The call's statistics once the route is known and audio has come in."""
    await wait_until(page, f"{CALL}.stats && {CALL}.stats.route && {CALL}.stats.audioBytes > 0")
    return dict(await page.evaluate(f"{CALL}.stats"))
