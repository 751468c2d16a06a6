"""Calls end to end: Python callers (connect_rtc) call a device over a real hub on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import av
import pytest

from agent.errors import Codes, RealtimeError, Texts
from agent.hub.server import HubServer
from agent.media import (
    ExecConfig,
    MediaConfig,
    StreamFormat,
    TestPatternConfig,
    ToneTrack,
    V4L2Config,
)
from agent.rtc.errors import CALL_ENDED, CallEndedError
from agent.rtc.policy import CallPolicy
from agent.rtc.signaling import CloseReason

from .conftest import WAIT, Call, Connect, MakeDevice, Viewer


async def test_a_caller_sees_video_of_the_configured_size_hears_audio_and_gets_a_snapshot(
    connect: Connect, device: MakeDevice, call: Call
) -> None:
    porch = await device(MediaConfig(video=TestPatternConfig(320, 240, 15)))
    alice = await connect("alice")
    viewer = await call(alice, porch)
    await viewer.until(lambda: viewer.frames["video"] >= 10 and viewer.frames["audio"] >= 10)
    assert viewer.sizes == {(320, 240)}

    head, *chunks = await viewer.command("snapshot", 1)
    assert head["ok"] is True
    assert head["result"]["mime"] == "image/jpeg"
    jpeg = b"".join(base64.b64decode(chunk["data"]) for chunk in chunks)
    assert len(jpeg) == head["result"]["bytes"]
    with av.open(io.BytesIO(jpeg), format="jpeg_pipe") as container:
        picture = next(container.decode(video=0))
    assert (picture.width, picture.height) == (320, 240)

    [status] = await viewer.command("status", 2)
    result = status["result"]
    assert result["device"] == "porch"
    [call] = result["calls"].pop("list")  # this call, with its route once measured
    assert result["calls"] == {"active": 1, "max": 4, "refused": 0}
    assert call["seconds"] >= 0
    assert result["uptime_seconds"] >= 0
    assert result["media"]["video"]["state"] == "live"

    [unknown] = await viewer.command("reboot", 3)
    assert unknown["error"]["code"] == Codes.INVALID_REQUEST
    assert 'Unknown command "reboot"' in unknown["error"]["message"]


async def test_talk_back_reaches_the_devices_sink(
    connect: Connect, device: MakeDevice, call: Call
) -> None:
    porch = await device()
    alice = await connect("alice")
    await call(alice, porch, media={"video": False, "audio": ToneTrack()})
    async with asyncio.timeout(WAIT):
        await porch.sink.wait_for(nonsilent=48000 // 2)  # half a second of tone
    assert porch.sink.nonsilent > porch.sink.samples // 2


@pytest.mark.parametrize("callers", [2, 4])
async def test_many_callers_share_one_encode_per_frame(
    connect: Connect, device: MakeDevice, call: Call, callers: int
) -> None:
    porch = await device()
    viewers = [await call(await connect(f"viewer{i}"), porch) for i in range(callers)]
    await asyncio.gather(*(v.until(lambda v=v: v.frames["video"] >= 5) for v in viewers))
    before = porch.media.stats()
    received = [v.frames["video"] for v in viewers]
    await viewers[0].until(lambda: viewers[0].frames["video"] >= received[0] + 30)
    after = porch.media.stats()
    (codec,) = after.codecs  # one codec, one encoder, for every viewer
    assert codec.viewers == callers
    encodes = codec.encodes - before.codecs[0].encodes
    captured = after.frames_captured - before.frames_captured
    assert 0 < encodes <= captured  # once per frame, not once per viewer
    for viewer, start in zip(viewers, received, strict=True):
        await viewer.until(lambda v=viewer, s=start: v.frames["video"] - s >= encodes - 10)


async def test_a_stalled_caller_drops_alone(
    connect: Connect, device: MakeDevice, call: Call
) -> None:
    porch = await device()
    fast = [await call(await connect(f"fast{i}"), porch) for i in range(2)]
    slow_party = await connect("slow")
    slow = await call(slow_party, porch)
    await asyncio.gather(*(v.until(lambda v=v: v.frames["video"] >= 5) for v in [*fast, slow]))

    # The network toward the slow caller stops taking packets (a full socket buffer, a
    # stalled peer): its sender on the device blocks, as a real stuck path would.
    stall = asyncio.Event()
    agent_pc = _device_side(porch, slow_party.user_id).target
    (sender,) = [s for s in agent_pc.getSenders() if s.track and s.track.kind == "video"]
    transport = sender.transport
    original = transport._send_rtp

    async def stuck(data: bytes) -> None:
        await stall.wait()
        await original(data)

    transport._send_rtp = stuck
    slow.reading = False
    track: Any = sender.track
    await fast[0].until(lambda: track.dropped > 0)

    before = porch.media.stats().codecs[0].encodes
    received = [v.frames["video"] for v in fast]
    await fast[0].until(lambda: porch.media.stats().codecs[0].encodes - before >= 30)
    encodes = porch.media.stats().codecs[0].encodes - before
    for viewer, start in zip(fast, received, strict=True):
        await viewer.until(lambda v=viewer, s=start: v.frames["video"] - s >= encodes - 10)
    stall.set()


async def test_a_caller_the_policy_does_not_allow_is_told_why(
    connect: Connect, device: MakeDevice
) -> None:
    porch = await device(policy=CallPolicy.of(roles=["admin"]))
    alice = await connect("alice")
    connector = await alice.client.connect_rtc(cid=porch.cid, media=None)
    with pytest.raises(CallEndedError) as info:
        await asyncio.wait_for(connector.connection, WAIT)
    assert info.value.code == CALL_ENDED
    message = await alice.inbox.wait_for("private", sender=porch.user_id)
    assert message.message["reason"] == "not_allowed"
    assert message.message["message"] == 'You are not allowed to call "porch".'
    closed = await alice.inbox.wait_for("rtc:closed", sender_cid=porch.cid)
    assert closed.sender == porch.user_id
    assert porch.desk.calls == 0
    assert porch.desk.refused == 1


async def test_callers_allowed_by_name_or_group(
    connect: Connect, device: MakeDevice, call: Call
) -> None:
    porch = await device(policy=CallPolicy.of(users=["bob"], groups=["devices"], roles=[]))
    bob = await connect("bob")
    await call(bob, porch)  # by name, from the embedded hub's accounts
    carol = await connect("carol")
    await call(carol, porch)  # by group: she is connected in "devices"


async def test_allow_groups_is_a_boundary_joining_the_group_does_not_get_in(
    hub: HubServer, connect: Connect, device: MakeDevice, call: Call
) -> None:
    porch = await device(
        groups=("devices", "family"), policy=CallPolicy.of(groups=["family"], roles=[])
    )
    bob = await connect("bob")  # granted "devices" only
    await bob.client.join_realtime("family", keep=True)
    refused = await bob.inbox.wait_for("error", code=Codes.FORBIDDEN)
    assert '"family"' in refused.message
    assert "edge-agent user grant bob family" in refused.message
    connector = await bob.client.connect_rtc(cid=porch.cid, media=None)
    with pytest.raises(CallEndedError):
        await asyncio.wait_for(connector.connection, WAIT)
    told = await bob.inbox.wait_for("private", sender=porch.user_id)
    assert told.message["reason"] == "not_allowed"
    assert porch.desk.calls == 0

    # Once an admin grants the group, the same join and call go through.
    await asyncio.to_thread(hub.accounts.grant, "bob", ["family"])
    await hub.access.refresh()
    await bob.client.join_realtime("family", keep=True)
    await bob.inbox.wait_for("notice", sender=bob.user_id, sender_rid="family")
    await call(bob, porch)


async def test_a_busy_device_refuses_and_says_so(
    connect: Connect, device: MakeDevice, call: Call
) -> None:
    porch = await device(policy=CallPolicy.of(max_calls=1))
    alice, bob = await connect("alice"), await connect("bob")
    await call(alice, porch)
    connector = await bob.client.connect_rtc(cid=porch.cid)
    with pytest.raises(CallEndedError):
        await asyncio.wait_for(connector.connection, WAIT)
    message = await bob.inbox.wait_for("private", sender=porch.user_id)
    assert message.message == {
        "type": "call_refused",
        "reason": "busy",
        "device": "porch",
        "message": '"porch" is busy: 1 calls are in progress (at most 1).',
    }


async def test_the_caller_hangs_up(connect: Connect, device: MakeDevice, call: Call) -> None:
    porch = await device()
    alice = await connect("alice")
    viewer = await call(alice, porch)
    assert viewer.connection is not None
    device_side = _device_side(porch, alice.user_id)
    await viewer.connection.hangup()
    assert viewer.connection.close_reason is CloseReason.LOCAL
    async with asyncio.timeout(WAIT):
        await device_side.wait_closed()
    assert device_side.close_reason is CloseReason.REMOTE
    await porch.calls.until(lambda count: count == 0)


async def test_the_device_hangs_up(connect: Connect, device: MakeDevice, call: Call) -> None:
    porch = await device()
    alice = await connect("alice")
    viewer = await call(alice, porch)
    assert viewer.connection is not None
    await _device_side(porch, alice.user_id).hangup()
    closed = await alice.inbox.wait_for("rtc:closed", sender_cid=porch.cid)
    assert closed.message == {"hungup": porch.user_id}
    async with asyncio.timeout(WAIT):
        await viewer.connection.wait_closed()
    assert viewer.connection.close_reason is CloseReason.REMOTE


async def test_a_caller_can_cancel_before_pickup(connect: Connect, device: MakeDevice) -> None:
    porch = await device(policy=CallPolicy.of(roles=["admin"]))
    alice = await connect("alice")
    connector = await alice.client.connect_rtc(cid=porch.cid)
    await connector.hangup()
    with pytest.raises(CallEndedError, match="hung up here"):
        await connector.connection


async def test_a_repeated_channel_protocol_is_refused_before_calling(
    connect: Connect, device: MakeDevice
) -> None:
    porch = await device()
    alice = await connect("alice")
    with pytest.raises(RealtimeError) as info:
        await alice.client.connect_rtc(cid=porch.cid, channels=["gaming", {"protocol": "gaming"}])
    assert info.value.as_dict() == {
        "code": "INVALID_REQUEST",
        "message": 'Data channel with the protocol "gaming" already exists.',
    }
    assert alice.client.rtc.calls == {}


async def test_local_media_that_does_not_exist_is_device_not_found(
    connect: Connect, device: MakeDevice
) -> None:
    porch = await device()
    alice = await connect("alice")
    for media in ({"video": True}, {"audio": True, "video": False}):
        with pytest.raises(RealtimeError) as info:
            await alice.client.connect_rtc(cid=porch.cid, media=media)
        assert info.value.as_dict() == {
            "code": "DEVICE_NOT_FOUND",
            "message": Texts.DEVICE_NOT_FOUND,
        }
    assert alice.client.rtc.calls == {}


async def test_bad_call_arguments_are_named(connect: Connect, device: MakeDevice) -> None:
    porch = await device()
    alice = await connect("alice")
    for options, text in [
        ({"cid": "abc"}, '"cid" should be a valid connection id.'),
        ({"cid": porch.cid, "media": "camera"}, '"media" must be'),
        ({"cid": porch.cid, "media": {"screen": True}}, "Unknown media kind(s): screen."),
        ({"cid": porch.cid, "ice": "http://x"}, "Bad ICE server URL"),
    ]:
        with pytest.raises(RealtimeError) as info:
            await alice.client.connect_rtc(**options)
        assert info.value.code == Codes.INVALID_PARAMETER
        assert text in info.value.message


async def test_data_channels_by_label(connect: Connect, device: MakeDevice, call: Call) -> None:
    porch = await device()

    async def echo(session: Any) -> None:
        async for message in session.messages():
            session.send(f"echo {message}")

    porch.desk.channels.register("chat", echo)
    alice = await connect("alice")
    channels = [{"protocol": p} for p in ("chat", "sensors", "serial:env", "other")]
    viewer = await call(alice, porch, channels=channels)
    assert viewer.connection is not None
    chat = viewer.connection.channels["chat"]
    await viewer.until(lambda: chat.readyState == "open")
    chat.send("hi")
    await viewer.until(lambda: ("chat", "echo hi") in viewer.messages)
    await viewer.until(lambda: len([m for m in viewer.messages if m[0] != "chat"]) == 3)
    said = {label: json.loads(data) for label, data in viewer.messages if label != "chat"}
    assert "sensor bridge is not running" in said["sensors"]["error"]["message"]
    assert 'data channel "serial:env"' in said["serial:env"]["error"]["message"]
    assert said["other"]["error"] == {
        "code": "NOT_FOUND",
        "message": 'Nothing serves the data channel "other" on this device.',
    }


async def test_a_camera_missing_at_start_is_reported_and_the_call_goes_on(
    connect: Connect, device: MakeDevice, call: Call
) -> None:
    missing = V4L2Config(device="/dev/video-absent-for-test", width=160, height=120, fps=15)
    porch = await device(MediaConfig(video=missing))
    alice = await connect("alice")
    viewer = await call(alice, porch)
    await viewer.until(lambda: bool(viewer.notices()))
    notice = viewer.notices()[0]
    assert notice["code"] == "DEVICE_NOT_FOUND"
    assert notice["device"] == "/dev/video-absent-for-test"
    assert notice["message"].startswith(Texts.DEVICE_NOT_FOUND)
    told = await alice.inbox.wait_for("private", sender=porch.user_id)
    assert told.message["device"] == "/dev/video-absent-for-test"
    frames = viewer.frames["video"]
    await viewer.until(lambda: viewer.frames["video"] >= frames + 10)  # the pattern, meanwhile
    assert viewer.sizes == {(160, 120)}


async def test_a_camera_that_goes_away_mid_call_is_reported(
    connect: Connect, device: MakeDevice, call: Call, tmp_path: Path
) -> None:
    pid_file = tmp_path / "camera.pid"
    script = (
        f"echo $$ > {pid_file}; exec ffmpeg -nostdin -loglevel error -re -f lavfi "
        "-i testsrc2=size=160x120:rate=15 -c:v libx264 -preset ultrafast -tune zerolatency "
        "-g 15 -bf 0 -f h264 -"
    )
    camera = ExecConfig(command=("sh", "-c", script), stream_format=StreamFormat.H264, fps=15)
    porch = await device(MediaConfig(video=camera, fallback=TestPatternConfig(160, 120, 15)))
    alice = await connect("alice")
    viewer = await call(alice, porch)
    await viewer.until(lambda: viewer.frames["video"] >= 5)
    assert viewer.notices() == []

    process = await asyncio.create_subprocess_exec("kill", pid_file.read_text().strip())
    assert await process.wait() == 0
    await viewer.until(lambda: bool(viewer.notices()))
    assert viewer.notices()[0]["code"] == "DEVICE_NOT_FOUND"
    assert viewer.notices()[0]["device"] == "sh"  # the command's program
    frames = viewer.frames["video"]
    await viewer.until(lambda: viewer.frames["video"] >= frames + 10)  # still watching


async def test_a_python_callee_takes_a_call_with_connect_rtc(connect: Connect) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    listing = await alice.client.get_realtime_users("devices", bob.user_id)
    bob_cid = listing["list"][0]["connection_id"]
    alice_view, bob_view = Viewer(), Viewer()
    connector = await alice.client.connect_rtc(
        cid=bob_cid, media={"audio": ToneTrack(), "video": False}, callback=alice_view
    )
    ringing = await bob.inbox.wait_for("rtc:incoming", sender=alice.user_id)
    assert ringing.connect_rtc is not None
    bob_view.connection = await ringing.connect_rtc(callback=bob_view)
    alice_view.connection = await asyncio.wait_for(connector.connection, WAIT)
    await bob_view.until(lambda: bob_view.frames["audio"] >= 10)
    default = alice_view.connection.channels["default"]
    await alice_view.until(lambda: default.readyState == "open")
    default.send("hello")
    await bob_view.until(lambda: ("default", "hello") in bob_view.messages)
    types = {e["type"] for e in alice_view.events}
    assert {"icecandidate", "icecandidateend", "signalingstatechange", "open"} <= types
    await alice_view.connection.hangup()
    closed = await bob.inbox.wait_for("rtc:closed", sender=alice.user_id)
    assert closed.sender_cid is not None
    await alice_view.close()
    await bob_view.close()


async def test_a_refused_incoming_call_ends_the_callers_connection(connect: Connect) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    listing = await alice.client.get_realtime_users("devices", bob.user_id)
    connector = await alice.client.connect_rtc(cid=listing["list"][0]["connection_id"])
    ringing = await bob.inbox.wait_for("rtc:incoming")
    assert ringing.hangup is not None
    await ringing.hangup()
    with pytest.raises(CallEndedError, match="hung up by the other side"):
        await asyncio.wait_for(connector.connection, WAIT)
    assert ringing.connect_rtc is not None
    with pytest.raises(RealtimeError, match="is not ringing"):
        await ringing.connect_rtc()


def _device_side(porch: Any, user_id: str) -> Any:
    """The device's RtcConnection of the call with ``user_id``."""
    for desk_call in porch.desk._calls.values():
        if desk_call.user_id == user_id and desk_call.connection is not None:
            return desk_call.connection
    raise AssertionError(f"no call from {user_id} on the device")
