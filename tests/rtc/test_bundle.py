"""BUNDLE: a ``balanced`` caller's offer reaches the device's one transport as one transport.

The pure rewriting is checked on SDP as Chromium and aiortc write it; the loopback call
checks what the bug was about: the device's ICE transport holds the candidates and the
credentials of the BUNDLE-tagged section only (before the fix it held the last section's,
which behind a filtering NAT never connects: see tests/nat).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from agent.protocol import HubFrame
from agent.rtc.bundle import bundle_of, sdp_with_bundle_transport
from agent.rtc.gather import GatherPlan, gather

from .conftest import WAIT, Connect, MakeDevice, small_pattern

BALANCED_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "a=msid-semantic: WMS",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:aaaa",
        "a=ice-pwd:aaaaaaaaaaaaaaaaaaaaaaaa",
        "a=mid:0",
        "a=recvonly",
        "a=candidate:1 1 udp 2113937151 100.64.0.2 5000 typ host",
        "a=candidate:2 1 udp 16777215 192.0.2.1 49001 typ relay raddr 203.0.113.2 rport 7",
        "a=end-of-candidates",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:bbbb",
        "a=ice-pwd:bbbbbbbbbbbbbbbbbbbbbbbb",
        "a=mid:1",
        "a=recvonly",
        "a=candidate:3 1 udp 2113937151 100.64.0.2 5002 typ host",
        "a=candidate:4 1 udp 16777215 192.0.2.1 49002 typ relay raddr 203.0.113.2 rport 8",
        "a=end-of-candidates",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:2",
        "a=ice-ufrag:cccc",
        "a=ice-pwd:cccccccccccccccccccccccc",
        "a=candidate:5 1 udp 2113937151 100.64.0.2 5004 typ host",
        "a=sctp-port:5000",
        "",
    ]
)


def sections(sdp: str) -> list[list[str]]:
    found: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def transport_of(section: list[str]) -> list[str]:
    keys = ("a=ice-ufrag:", "a=ice-pwd:", "a=candidate:", "a=end-of-candidates")
    return [line for line in section if line.startswith(keys)]


def test_every_bundled_section_gets_the_tagged_sections_transport() -> None:
    rewritten = sdp_with_bundle_transport(BALANCED_OFFER)
    video, audio, data = sections(rewritten)
    assert transport_of(audio) == transport_of(video) == transport_of(data)
    assert "a=ice-ufrag:aaaa" in video
    assert not any("49002" in line or "5004" in line for line in rewritten.splitlines())
    # Everything else stays, in place: the application section keeps its sctp-port last.
    assert data[0].startswith("m=application")
    assert data[-1] == "a=sctp-port:5000"
    assert audio[:3] == ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=ice-ufrag:aaaa"]
    assert rewritten.endswith("\r\n")
    assert "\n" not in rewritten.replace("\r\n", "")


def test_without_a_group_or_with_one_member_nothing_changes() -> None:
    lone = BALANCED_OFFER.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 1")
    unbundled = BALANCED_OFFER.replace("a=group:BUNDLE 0 1 2\r\n", "")
    assert sdp_with_bundle_transport(lone) == lone
    assert sdp_with_bundle_transport(unbundled) == unbundled
    assert bundle_of(unbundled).tag is None


def test_the_tag_is_the_first_present_member_and_sections_outside_keep_theirs() -> None:
    offer = BALANCED_OFFER.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 9 1 2")
    bundle = bundle_of(offer)
    assert bundle.tag == "1"
    assert bundle.members == {"1", "2"}
    video, audio, data = sections(sdp_with_bundle_transport(offer))
    assert "a=ice-ufrag:aaaa" in video  # not bundled: left alone
    assert transport_of(data) == transport_of(audio)


def test_trickled_candidates_of_the_other_bundled_sections_are_not_carried() -> None:
    bundle = bundle_of(BALANCED_OFFER)
    assert bundle.mids == ("0", "1", "2")
    assert bundle.carries("0", None)
    assert bundle.carries(None, 0)
    assert not bundle.carries("1", 1)
    assert not bundle.carries(None, 2)  # known by its m-line index alone
    assert bundle.carries("7", None)  # not a member: not ours to judge
    assert bundle.carries(None, None)
    assert bundle_of("v=0\r\n").carries("1", 1)  # no group: everything is carried


async def test_a_balanced_caller_reaches_the_device_on_its_tagged_transport(
    connect: Connect, device: MakeDevice
) -> None:
    porch = await device(small_pattern())
    alice = await connect("alice")
    # A raw aiortc peer with the W3C default policy: one transport per m= section.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    frames: asyncio.Queue[Any] = asyncio.Queue()
    tasks: list[asyncio.Future[Any]] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        if track.kind == "video":
            tasks.append(asyncio.ensure_future(_forward(track, frames)))

    def on_rtc(frame: HubFrame) -> None:
        content = frame.content
        if isinstance(content, dict) and "sdpanswer" in content:
            answer = RTCSessionDescription(content["sdpanswer"]["sdp"], "answer")
            tasks.append(asyncio.ensure_future(pc.setRemoteDescription(answer)))

    alice.client.set_rtc_handler(on_rtc)
    pc.addTransceiver("video", "recvonly")
    pc.addTransceiver("audio", "recvonly")
    pc.createDataChannel("control")
    await gather(pc, GatherPlan(), ["127.0.0.1"])  # its three transports, on loopback only
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    own = [tuple(transport_of(section)) for section in sections(offer)]
    assert len(set(own)) == 3  # a transport (sockets, candidates) per section
    try:
        await alice.client.send_rtc(porch.cid, {"sdpoffer": {"type": "offer", "sdp": offer}})
        await asyncio.wait_for(frames.get(), WAIT)
        (call,) = porch.desk._calls.values()
        assert call.connection is not None
        transport = call.connection.target.getTransceivers()[0].receiver.transport.transport
        tagged = transport_of(sections(offer)[0])
        ufrag = next(line.split(":", 1)[1] for line in tagged if "ice-ufrag" in line)
        lines = [line[len("a=candidate:") :] for line in tagged if line.startswith("a=cand")]
        wanted = {(c.ip, c.port) for c in map(candidate_from_sdp, lines)}
        remote = {(c.ip, c.port) for c in transport.getRemoteCandidates() if c.type != "prflx"}
        assert remote <= wanted
        assert transport._connection.remote_username == ufrag
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()


async def _forward(track: Any, frames: asyncio.Queue[Any]) -> None:
    while True:
        try:
            frames.put_nowait(await track.recv())
        except Exception:  # the track ended with the call
            return
