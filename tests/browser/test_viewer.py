"""The viewer in headless Chromium against a real agent: log in, call, watch, talk, control.

Chromium and the agent talk over loopback only (the agent's host candidates are
127.0.0.1; Chromium is allowed loopback candidates); the camera is Chromium's fake one
and the microphone plays a voice-like WAV.
"""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect

from agent.protocol import FrameKind, HubFrame, encode_hub_frame

from .harness import DEVICE, WAIT, AgentProcess, Viewer

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

SECOND = 48000  # talk-back samples per second (48 kHz mono)
NO_VALUE = "\u2013"  # what a statistic shows before it has one
_DEVICE_CIDS = (
    f"((window.viewer.devices.find(d => d.name === '{DEVICE}') || {{}}).connection_ids || [])"
)


async def _logged_in(viewer: Viewer, agent: AgentProcess) -> None:
    await viewer.login("admin", agent.admin_password)
    await viewer.device_button().wait_for()


async def test_hub_frames_are_read_percent_encoded_or_plain(viewer: Viewer) -> None:
    content = {"text": "100% sure, caf\u00e9 #1 {ok}", "n": [1, 2]}
    frame = HubFrame(FrameKind.PRIVATE, content, "0f8fad5b-d9cb-469f-a165-70867728950e", "Qx3f")
    encoded = encode_hub_frame(frame)  # what the hub sends
    assert encoded.startswith("%7B")
    plain = json.dumps({"#private": content, "#user_id": frame.user_id, "#scid": "Qx3f"})
    read = await viewer.page.evaluate(
        """async (texts) => {
            const { decodeFrame, classify } = await import(location.origin + '/realtime.js');
            return texts.map((text) => classify(decodeFrame(text)));
        }""",
        [encoded, plain],
    )
    expected = {
        "type": "private",
        "content": content,
        "sender": frame.user_id,
        "cid": "cid:Qx3f",
        "group": None,
        "code": None,
    }
    assert read == [expected, expected]


async def test_wrong_password_is_refused_on_the_page(viewer: Viewer) -> None:
    await viewer.page.fill("#login-name", "admin")
    await viewer.page.fill("#login-password", "not-the-password")
    await viewer.page.click("#login-submit")
    error = viewer.page.locator("#login-error")
    await error.wait_for()
    assert await error.text_content() == "Wrong name or password."
    assert await viewer.page.locator("#devices-view").is_hidden()


async def test_login_keeps_the_token_out_of_the_url(viewer: Viewer, agent: AgentProcess) -> None:
    await _logged_in(viewer, agent)
    assert "token" not in viewer.page.url
    assert await viewer.js("sessionStorage.getItem('edge-agent.session') !== null")
    assert await viewer.js("localStorage.getItem('edge-agent.session') === null")
    await viewer.page.reload()  # the session survives a reload of the tab
    await viewer.device_button().wait_for()
    assert await viewer.page.locator("#who").text_content() == "admin"


async def test_remember_me_keeps_the_login_across_tabs(viewer: Viewer, agent: AgentProcess) -> None:
    await viewer.login("admin", agent.admin_password, remember=True)
    assert await viewer.js("localStorage.getItem('edge-agent.session') !== null")
    other = Viewer(await viewer.page.context.new_page(), agent.url)
    await other.open()
    await other.device_button().wait_for()  # no login form: the saved session is used
    await other.page.click("#logout")
    await other.page.locator("#login-view").wait_for()
    assert await other.js("localStorage.getItem('edge-agent.session') === null")


async def test_the_device_list_follows_devices_coming_and_going(
    viewer: Viewer, agent: AgentProcess
) -> None:
    await agent.add_user("porch", "porch-password", role="device", groups="devices")
    await _logged_in(viewer, agent)
    async with httpx.AsyncClient(base_url=agent.url, timeout=WAIT) as http:
        login = (
            await http.post("/api/login", json={"name": "porch", "password": "porch-password"})
        ).json()
    ws_url = agent.url.replace("http://", "ws://") + f"/ws?token={login['token']}"
    porch_tile = "document.querySelector('.tile[data-name=\"porch\"]').dataset.online"
    async with connect(ws_url) as porch:
        await porch.send(json.dumps({"action": "joinRoom", "rid": "devices"}))
        await viewer.device_button("porch").wait_for()  # listed on the join notice
        await viewer.wait_until(f"{porch_tile} === 'true'")
        assert await viewer.device_button("porch").is_enabled()
    await viewer.wait_until(f"{porch_tile} === 'false'")  # it stays, offline since now
    assert await viewer.device_button("porch").is_disabled()
    presence = viewer.page.locator('.tile[data-name="porch"] .presence')
    assert (await presence.text_content() or "").startswith("Offline since ")
    assert await viewer.device_button(DEVICE).is_enabled()


async def test_call_plays_video_and_shows_stats(viewer: Viewer, agent: AgentProcess) -> None:
    await _logged_in(viewer, agent)
    await viewer.call()
    await viewer.wait_until("document.getElementById('video').videoWidth > 0")
    assert await viewer.js("document.getElementById('video').videoWidth") == 320
    first = await viewer.js("document.getElementById('video').currentTime")
    frames = await viewer.js("window.viewer.call.framesShown")
    await viewer.wait_until(f"window.viewer.call.framesShown > {frames + 15}")
    assert await viewer.js("document.getElementById('video').currentTime") > first
    await viewer.wait_until("document.getElementById('st-route').textContent.includes('host')")
    stats = await viewer.js("window.viewer.call.stats")
    assert stats["width"] == 320
    assert stats["framesDecoded"] > 0
    assert stats["localType"] == "host"
    assert stats["remoteType"] == "host"
    assert await viewer.page.locator("#st-ttff").text_content() != NO_VALUE
    assert await viewer.js("window.viewer.call.pc.getConfiguration().iceServers") == []
    metrics = await viewer.metrics()
    assert metrics["clickAt"] < metrics["offerAt"] < metrics["answerAt"] < metrics["firstFrameAt"]
    await viewer.page.click("#hangup")
    await viewer.wait_until("window.viewer.call === null")


async def test_push_to_talk_reaches_the_talkback_sink(viewer: Viewer, agent: AgentProcess) -> None:
    await _logged_in(viewer, agent)
    await viewer.call()
    await viewer.wait_until("!document.getElementById('talk').disabled")  # the mic is attached
    samples, nonsilent = agent.talkback()
    await agent.wait_talkback(samples=samples + SECOND // 2)  # audio flows, and it is silent
    assert agent.talkback()[1] == nonsilent, "the microphone is live before talk is held"

    await viewer.hold_talk()
    assert await viewer.js("window.viewer.call.mic.enabled") is True
    assert await viewer.page.locator("#talk").text_content() == "Talking…"
    await agent.wait_talkback(nonsilent=nonsilent + SECOND // 2)
    await viewer.release_talk()
    assert await viewer.js("window.viewer.call.mic.enabled") is False

    released = agent.talkback()[0]
    _, quiet = await agent.wait_talkback(samples=released + SECOND)  # what was on the way
    await agent.wait_talkback(samples=released + 2 * SECOND)
    assert agent.talkback()[1] == quiet, "the microphone stayed live after talk was released"
    await viewer.page.click("#hangup")


async def test_control_status_and_snapshot(viewer: Viewer, agent: AgentProcess) -> None:
    await _logged_in(viewer, agent)
    await viewer.call()
    await viewer.wait_until("!document.getElementById('cmd-snapshot').disabled")
    await viewer.page.click("#cmd-snapshot")
    await viewer.wait_until("document.getElementById('snapshot').naturalWidth > 0")
    size = await viewer.js(
        "[document.getElementById('snapshot').naturalWidth,"
        " document.getElementById('snapshot').naturalHeight]"
    )
    assert size == [320, 240]
    await viewer.page.click("#cmd-status")
    # The status is a card; the raw answer is behind "Details".
    card = viewer.page.locator("#status-list")
    await viewer.wait_until("document.getElementById('status-list').textContent.includes('Up for')")
    assert "1 of 4" in (await card.text_content() or "")
    await viewer.page.click("#status-details summary")
    out = viewer.page.locator("#control-out")
    await out.wait_for()
    status = json.loads(await out.text_content() or "{}")
    assert status["device"] == DEVICE
    assert status["calls"]["active"] == 1
    await viewer.page.click("#hangup")


async def test_hang_up_frees_the_device(viewer: Viewer, agent: AgentProcess) -> None:
    await _logged_in(viewer, agent)
    await viewer.call()
    await viewer.page.click("#hangup")
    await viewer.wait_until("window.viewer.call === null")
    assert await viewer.js("window.viewer.lastCall.pc.connectionState") == "closed"
    assert await viewer.page.locator("#devices-view").is_visible()
    assert await viewer.page.locator("#banner-text").text_content() == "You hung up."
    # Calling again works, and the device counts one call: the first one is gone there.
    await viewer.call()
    await viewer.wait_until("!document.getElementById('cmd-status').disabled")
    await viewer.page.click("#cmd-status")
    await viewer.wait_until("document.getElementById('control-out').textContent.includes('active')")
    status = json.loads(await viewer.page.locator("#control-out").text_content() or "{}")
    assert status["calls"]["active"] == 1
    await viewer.page.click("#hangup")


async def test_a_link_to_a_device_opens_it_ready_to_call(
    viewer: Viewer, agent: AgentProcess
) -> None:
    await viewer.open(f"?device={DEVICE}&call=1")
    assert await viewer.page.locator("#login-error").text_content() == f"Log in to call {DEVICE}."
    assert "device=" not in viewer.page.url  # the address bar is cleaned at once
    # The link goes straight on to the call: the device list may never be shown.
    await viewer.login("admin", agent.admin_password, wait_for_list=False)
    await viewer.wait_until("window.viewer.call && window.viewer.call.state === 'connected'")
    await viewer.wait_until("window.viewer.call.framesShown > 0")
    await viewer.page.click("#hangup")


async def test_a_lost_connection_to_the_hub_comes_back_by_itself(
    viewer: Viewer, agent: AgentProcess
) -> None:
    await _logged_in(viewer, agent)
    before = await viewer.js(_DEVICE_CIDS)
    await agent.reset_connections()  # the device's connection drops too, as in a network drop
    await viewer.wait_until("window.viewer.linkHistory.includes('reconnecting')")
    await viewer.wait_until("window.viewer.link === 'online'")
    assert await viewer.page.locator("#banner-text").text_content() == "Reconnected to the hub."
    # The device comes back on a new connection, and the list follows it.
    await viewer.wait_until(
        f"(c => c.length && !c.includes({json.dumps(before[0])}))({_DEVICE_CIDS})"
    )
    await viewer.call()  # calls work again over the new connections
    await viewer.page.click("#hangup")


async def test_a_deleted_account_is_sent_back_to_the_login(
    viewer: Viewer, agent: AgentProcess
) -> None:
    await agent.add_user("visitor", "visitor-password")
    await viewer.login("visitor", "visitor-password")
    await agent.remove_user("visitor")
    await agent.reset_connections()  # as a network drop does
    error = viewer.page.locator("#login-error")
    await error.wait_for()
    assert await error.text_content() == "Your session has expired: log in again."
    assert await viewer.js("sessionStorage.getItem('edge-agent.session') === null")
