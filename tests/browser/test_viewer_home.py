"""The viewer outside a call, in Chromium against a real agent and hub with serial ports on
ptys: device tiles, their pictures, the event timeline, and an alert landing on its event.

The same run saves the README's screenshots of the device list and the timeline, at a
desktop's and a phone's size, in ``docs/``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser
from websockets.asyncio.client import connect

from agent.protocol import decode_frame_text
from agent.push.message import parse_send_request

from .harness import DEVICE, WAIT, AgentProcess, Viewer
from .rig import closed, logged_in, save_screenshot
from .test_alerts import _CLICK, _SHOWN, _push

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

TILE = '.tile[data-name="{}"]'
GARAGE = "garage"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(board_agent: AgentProcess) -> AgentProcess:
    """The doorbell with its board, its embedded hub, and a garage that was online once."""
    await _garage_was_here(board_agent)
    await board_agent.trigger("too-warm")
    await board_agent.trigger("doorbell-pressed")
    return board_agent


async def _logged_in(browser: Browser, agent: AgentProcess, *, phone: bool = False) -> Viewer:
    viewer = await logged_in(browser, agent, phone=phone)
    await viewer.page.locator(TILE.format(DEVICE) + " .tile-call:not([disabled])").wait_for()
    return viewer


async def test_tiles_say_how_each_device_is(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent)
    page = viewer.page
    doorbell = page.locator(TILE.format(DEVICE))
    await viewer.wait_until(
        f"document.querySelector('{TILE.format(DEVICE)} .tile-event').textContent"
        ".includes('doorbell-pressed')"
    )
    assert (await doorbell.locator(".presence").text_content() or "").startswith("Online since ")
    await viewer.wait_until(
        f"/temp [0-9.]+ °C · humidity [0-9]+ %/.test("
        f"document.querySelector('{TILE.format(DEVICE)} .tile-sensors').textContent)"
    )
    # The picture: the event's snapshot or a fresher one, the camera's 320x240.
    await viewer.wait_until(
        f"(document.querySelector('{TILE.format(DEVICE)} .thumb img') || {{}}).naturalWidth === 320"
    )
    call = doorbell.locator("button")
    assert await call.get_attribute("aria-label") == f"Call {DEVICE}"

    garage = page.locator(TILE.format(GARAGE))
    assert (await garage.locator(".presence").text_content() or "").startswith("Offline since ")
    assert await garage.locator("button").is_disabled()
    assert "opened" in (await garage.locator(".tile-event").text_content() or "")
    assert await garage.locator(".tile-sensors").text_content() == "temp 4.5 °C"

    await save_screenshot(page, "devices-desktop")
    await closed(viewer)


async def test_the_phone_list_fits_the_screen(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent, phone=True)
    await viewer.wait_until(
        f"(document.querySelector('{TILE.format(DEVICE)} .thumb img') || {{}}).naturalWidth > 0"
    )
    await save_screenshot(viewer.page, "devices-phone")
    await closed(viewer)


async def test_pictures_are_taken_only_while_someone_looks(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer = await _logged_in(browser, agent)
    refresher = "window.viewer.home.thumbnails"
    taken = await viewer.wait_until(f"{refresher}.taken >= 1 && {refresher}.taken")
    await viewer.wait_until(f"{refresher}.taken > {taken}")  # again, every 2 s

    await viewer.page.click("#tab-timeline")  # the tiles are off screen: nothing is due
    await viewer.wait_until(f"!{refresher}.scheduled")
    asked = await viewer.js(f"{refresher}.asked")
    await viewer.page.click("#tab-devices")
    await viewer.wait_until(f"{refresher}.asked > {asked}")

    # A hidden page (another app in front; headless pages are never hidden by themselves).
    await viewer.js(
        "Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await viewer.wait_until(f"!{refresher}.scheduled")
    await viewer.js(
        "delete document.visibilityState; document.dispatchEvent(new Event('visibilitychange'))"
    )
    await viewer.wait_until(f"{refresher}.scheduled")

    # During a call nothing is asked either, and the call is not refused for a picture call.
    await viewer.call()
    assert await viewer.js(f"{refresher}.scheduled") is False
    await viewer.page.click("#hangup")
    await viewer.wait_until(f"{refresher}.scheduled")
    await closed(viewer)


async def test_the_timeline_lists_what_happened(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent)
    page = viewer.page
    await page.click("#tab-timeline")
    await viewer.wait_until("document.querySelectorAll('.event-item').length >= 3")
    names = await viewer.js(
        "[...document.querySelectorAll('.event-item strong')].map(e => e.textContent)"
    )
    assert names[:3] == ["doorbell-pressed", "too-warm", "opened"]  # newest first
    await viewer.wait_until(
        "(document.querySelector('.event-item img') || {}).naturalWidth === 320"
    )

    # Live: an event posted now comes to the top without a reload.
    await agent.trigger("too-warm")
    await viewer.wait_until(
        "document.querySelector('.event-item strong').textContent === 'too-warm'"
    )

    # Filtered by device, then paged.
    await page.select_option("#tl-device", GARAGE)
    await viewer.wait_until(
        "[...document.querySelectorAll('.event-item')].every(e => e.dataset.device === 'garage')"
    )
    await page.select_option("#tl-device", DEVICE)
    await viewer.wait_until(
        "[...document.querySelectorAll('.event-item')].every(e => e.dataset.device === 'doorbell')"
    )
    await viewer.js("window.viewer.home.timeline.pageSize = 1")
    await page.select_option("#tl-device", "")
    await viewer.wait_until("document.querySelectorAll('.event-item').length === 1")
    await page.click("#timeline-more")
    await viewer.wait_until("document.querySelectorAll('.event-item').length === 2")
    await viewer.js("window.viewer.home.timeline.pageSize = 30")
    await page.select_option("#tl-device", "")
    await viewer.wait_until("document.querySelectorAll('.event-item').length >= 4")
    await save_screenshot(page, "timeline-desktop")

    # An event opens full size, with a call to its device.
    await page.locator('.event-item[data-name="doorbell-pressed"]').first.click()
    await viewer.wait_until("document.getElementById('event-image').naturalWidth === 320")
    assert await page.locator("#event-call").text_content() == f"Call {DEVICE}"
    await page.click("#event-call")
    await viewer.wait_until("window.viewer.call && window.viewer.call.state === 'connected'")
    await page.click("#hangup")
    await closed(viewer)


async def test_the_timeline_on_a_phone(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent, phone=True)
    await viewer.page.click("#tab-timeline")
    await viewer.wait_until("(document.querySelector('.event-item img') || {}).naturalWidth > 0")
    await save_screenshot(viewer.page, "timeline-phone")
    await closed(viewer)


async def test_an_alert_tapped_lands_on_its_event(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent)
    context = viewer.page.context
    await context.grant_permissions(["notifications"], origin=agent.url)
    event = await _newest_event(agent, "doorbell-pressed")
    alert = {
        "title": "Doorbell",
        "body": "Someone is at the door.",
        "device": DEVICE,
        "event": "doorbell-pressed",
        "time": event["time"],
    }
    payload = parse_send_request(alert, default_ttl=60).message.data
    await _push(context, viewer, payload)
    async with asyncio.timeout(WAIT):
        [shown] = await viewer.page.evaluate(_SHOWN)
    assert shown["data"]["event"] == "doorbell-pressed"
    assert await context.service_workers[0].evaluate(_CLICK) == "Doorbell"
    await viewer.wait_until("document.getElementById('event-dialog').open")
    dialog = viewer.page.locator("#event-dialog")
    assert await dialog.get_attribute("data-name") == "doorbell-pressed"
    assert await viewer.page.locator("#tab-timeline").get_attribute("aria-selected") == "true"
    await viewer.wait_until("document.getElementById('event-image').naturalWidth === 320")
    assert await viewer.js("window.viewer.call") is None  # not a call alert: no call
    await closed(viewer)


# -- helpers ------------------------------------------------------------------------------


async def _garage_was_here(agent: AgentProcess) -> None:
    """A second device: it connected, posted telemetry and an event, and went away."""
    await agent.add_user(GARAGE, "garage-password", role="device", groups="devices")
    async with httpx.AsyncClient(base_url=agent.url, timeout=WAIT) as http:
        answer = await http.post("/api/login", json={"name": GARAGE, "password": "garage-password"})
        token = answer.json()["token"]
    ws_url = agent.url.replace("http://", "ws://") + f"/ws?token={token}"
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"action": "joinRoom", "rid": "devices"}))
        await _until_frame(ws, "#notice")
        telemetry = {
            "type": "telemetry",
            "device": GARAGE,
            "ts": 1.0e9,
            "readings": {"t": {"port": "t", "ts": 1.0e9, "fields": {"temp": 4.5}}},
            "ports": {
                "t": {
                    "state": "open",
                    "readings": 1,
                    "bad_data": 0,
                    "outages": 0,
                    "units": {"temp": "°C"},
                }
            },
        }
        event = {"type": "event", "name": "opened", "trigger": "line", "time": _now() - 60}
        for content in (telemetry, event):
            await ws.send(json.dumps({"action": "broadcast", "rid": "devices", "content": content}))
            await _until_frame(ws, "#message")


async def _until_frame(ws: Any, key: str) -> dict[str, Any]:
    while True:
        frame = decode_frame_text(str(await asyncio.wait_for(ws.recv(), WAIT)))
        if isinstance(frame, dict) and key in frame:
            return frame


async def _newest_event(agent: AgentProcess, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=agent.url, timeout=WAIT) as http:
        login = await http.post(
            "/api/login", json={"name": "admin", "password": agent.admin_password}
        )
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        page = (await http.get("/api/events", headers=headers, params={"device": DEVICE})).json()
    return next(item for item in page["list"] if item["name"] == name)


def _now() -> float:
    return time.time()
