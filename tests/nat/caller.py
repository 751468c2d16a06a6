"""A Python caller behind the carrier NAT (run by tests/nat in the viewer's namespace).

    python caller.py HUB_URL TOKEN MODE [ARGS]

Modes:

* ``hub [ICE_JSON]``: ``RealtimeClient.connect_rtc`` as an application calls it: the ICE
  servers (fresh TURN credentials) come from the hub, or are ``ICE_JSON`` when given;
  video, audio and a ``control`` channel;
* ``balanced [ICE_JSON]``: a raw aiortc peer with the W3C default bundle policy,
  signalling by hand (a browser page or another library calling the device);
* ``bench COUNT [ICE_JSON]``: COUNT calls one after the other (video only), each timed
  from ``connect_rtc`` to its first video frame, with the route it took (for
  scripts/bench_relay.py);
* ``allocate CREDENTIALS_JSON``: TURN allocations with the given ``[{label, username,
  credential}]`` (the hub's answer is the first), each reported as allocated or refused.

It prints one JSON line ``{"report": "call", ...}`` once the call is up (or has failed to
come up), keeps it until a line ``hangup`` arrives on stdin, then prints
``{"report": "done", ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from aioice import stun, turn
from aioice.ice import StunProtocol
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from agent.client import RealtimeClient
from agent.rtc.callstats import measure
from agent.rtc.ice import IceOptions
from agent.rtc.peer import PeerFactory

UP_WAIT = 20.0
NO_TURN_WAIT = 6.0  # a relayed call is up in well under a second here; this is a failure


def report(kind: str, **fields: Any) -> None:
    print(json.dumps({"report": kind, **fields}), flush=True)


class Media:
    """Counts the frames of every track received; the time of the first video frame."""

    def __init__(self) -> None:
        self.frames = {"video": 0, "audio": 0}
        self.first_video: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()

    def track(self, track: Any) -> None:
        self.tasks.append(asyncio.create_task(self._read(track)))

    async def until(self, kind: str, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.frames[kind] >= count)

    async def _read(self, track: Any) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.frames[track.kind] += 1
            if track.kind == "video" and not self.first_video.done():
                self.first_video.set_result(time.perf_counter())
            async with self._changed:
                self._changed.notify_all()


async def connect(url: str, token: str) -> tuple[RealtimeClient, str]:
    """A client in the ``devices`` group, and the device's connection id."""
    ws = url.replace("http", "ws", 1) + "/ws"
    client = RealtimeClient(ws, token=token, rtc_factory=PeerFactory(IceOptions(mdns=False)))
    await client.connect_realtime(lambda message: None)
    await client.join_realtime("devices")
    users = await client.get_realtime_users("devices")
    cid = next(u["connection_id"] for u in users["list"] if u["user_id"] != client.user_id)
    return client, cid


async def call_with_client(url: str, token: str, ice: list[dict[str, Any]] | None) -> None:
    client, cid = await connect(url, token)
    media = Media()
    answers: asyncio.Queue[str] = asyncio.Queue()
    opened = asyncio.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "track":
            media.track(event["track"])
        elif event["type"] == "open" and event["label"] == "control":
            opened.set()
        elif event["type"] == "message" and event["label"] == "control":
            answers.put_nowait(event["data"])

    started = time.perf_counter()
    connector = await client.connect_rtc(
        cid=cid,
        ice=ice,
        media={"video": False, "audio": False},
        channels=[{"protocol": "control"}],
        callback=on_event,
    )
    connection = await asyncio.wait_for(connector.connection, UP_WAIT)
    pc = connection.target
    result: dict[str, Any] = {"picked_up": True}
    servers = [url for s in _configuration(pc).iceServers or [] for url in s.urls]
    relayed = any(url.startswith("turn") for url in servers)
    try:
        first = await asyncio.wait_for(media.first_video, UP_WAIT if relayed else NO_TURN_WAIT)
        result["ms_to_first_frame"] = (first - started) * 1000
        await asyncio.wait_for(opened.wait(), UP_WAIT)
        connection.channels["control"].send(json.dumps({"id": 1, "command": "status"}))
        result["control"] = json.loads(await asyncio.wait_for(answers.get(), UP_WAIT))
        # Audio comes 50 times a second: some of it shows it crossed the relay too.
        await asyncio.wait_for(media.until("audio", 10), UP_WAIT)
    except TimeoutError:
        result["timed_out"] = True
    figures = await measure(
        pc, cid=cid, started=started, ice_connected=None, first_frame=None,
        previous=None, previous_at=None,
    )  # fmt: skip
    result.update(
        ice_state=pc.iceConnectionState,
        frames=media.frames,
        route=figures.candidate_type,
        local=figures.local_candidate_type,
        remote=figures.remote_candidate_type,
        relay_protocol=figures.relay_protocol,
        ice_servers=[list(s.urls) for s in _configuration(pc).iceServers or []],
        local_candidates=sorted({c.type for c in _local_candidates(pc)}),
        remote_candidates=sorted({c.type for c in _remote_candidates(pc)}),
        relay_only=_configuration(pc).iceTransportPolicy.value == "relay",
    )
    report("call", **result)
    await wait_for_hangup()
    await connection.hangup()
    for task in media.tasks:
        task.cancel()
    await client.close_realtime()
    report("done", frames=media.frames)


def _configuration(pc: RTCPeerConnection) -> RTCConfiguration:
    # aiortc has no getConfiguration(); the configuration is kept in a private attribute.
    configuration: RTCConfiguration = pc._RTCPeerConnection__configuration  # type: ignore[attr-defined]
    return configuration


def _local_candidates(pc: RTCPeerConnection) -> list[Any]:
    transport = pc.getTransceivers()[0].receiver.transport.transport
    return list(transport._connection.local_candidates)


def _remote_candidates(pc: RTCPeerConnection) -> list[Any]:
    transport = pc.getTransceivers()[0].receiver.transport.transport
    return [c for c in transport.getRemoteCandidates() if c.type != "prflx"]


async def call_balanced(url: str, token: str, ice: list[dict[str, Any]] | None) -> None:
    """A raw aiortc peer, ``balanced`` bundle policy, the hub's servers, hand-made signaling."""
    client, cid = await connect(url, token)
    if ice is None:
        ice = (await client.get_ice_servers())["iceServers"]
    servers = [RTCIceServer(**server) for server in ice]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
    media = Media()
    pc.on("track", media.track)
    applying: list[asyncio.Future[Any]] = []

    def on_rtc(frame: Any) -> None:
        content = frame.content
        if isinstance(content, dict) and "sdpanswer" in content:
            remote = RTCSessionDescription(content["sdpanswer"]["sdp"], "answer")
            applying.append(asyncio.ensure_future(pc.setRemoteDescription(remote)))

    client.set_rtc_handler(on_rtc)
    pc.addTransceiver("video", "recvonly")
    pc.addTransceiver("audio", "recvonly")
    pc.createDataChannel("control")
    started = time.perf_counter()
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await client.send_rtc(cid, {"sdpoffer": {"type": "offer", "sdp": offer}})
    result: dict[str, Any] = {
        "transports_offered": len({ln for ln in offer.splitlines() if " typ relay " in ln}),
    }
    try:
        first = await asyncio.wait_for(media.first_video, UP_WAIT)
        result["ms_to_first_frame"] = (first - started) * 1000
    except TimeoutError:
        result["timed_out"] = True
    result.update(ice_state=pc.iceConnectionState, frames=media.frames)
    report("call", **result)
    await wait_for_hangup()
    await client.send_rtc(cid, {"hungup": client.user_id})
    await pc.close()
    await client.close_realtime()
    report("done")


async def bench(url: str, token: str, count: int, ice: list[dict[str, Any]] | None) -> None:
    """``count`` calls in a row: milliseconds from connect_rtc to the first video frame."""
    client, cid = await connect(url, token)
    timings: list[float | None] = []
    routes: list[str | None] = []
    for _ in range(count):
        media = Media()

        def on_event(event: dict[str, Any], media: Media = media) -> None:
            if event["type"] == "track":
                media.track(event["track"])

        started = time.perf_counter()
        connector = await client.connect_rtc(
            cid=cid, ice=ice, media={"video": False}, callback=on_event
        )
        connection = await asyncio.wait_for(connector.connection, UP_WAIT)
        try:
            first = await asyncio.wait_for(media.first_video, UP_WAIT)
            timings.append((first - started) * 1000)
        except TimeoutError:
            timings.append(None)
        figures = await measure(
            connection.target, cid=cid, started=started, ice_connected=None,
            first_frame=None, previous=None, previous_at=None,
        )  # fmt: skip
        routes.append(
            f"{figures.local_candidate_type}/{figures.remote_candidate_type}"
            + (f" ({figures.relay_protocol})" if figures.relay_protocol else "")
        )
        await connection.hangup()
        for task in media.tasks:
            task.cancel()
        # A second apart: a viewer joining within the media hub's key-frame interval (0.5 s)
        # of another would wait for the next key frame, which is not what this measures.
        await asyncio.sleep(1.0)
    report("call", ms=timings, routes=routes)
    await wait_for_hangup()
    await client.close_realtime()
    report("done")


async def allocate(url: str, token: str, credentials: list[dict[str, str]]) -> None:
    """One TURN allocation (UDP) per credential: allocated or refused with its error code."""
    client, _cid = await connect(url, token)
    answer = await client.get_ice_servers()
    minted = answer["iceServers"][0]
    tries = [{"label": "hub", "username": minted["username"], "credential": minted["credential"]}]
    outcomes: dict[str, Any] = {}
    for entry in tries + credentials:
        try:
            transport, _protocol = await turn.create_turn_endpoint(
                lambda: StunProtocol(None),  # type: ignore[arg-type]
                server_addr=("192.0.2.1", 3478),
                username=entry["username"],
                password=entry["credential"],
            )
        except stun.TransactionFailed as exc:
            outcomes[entry["label"]] = exc.response.attributes["ERROR-CODE"][0]
        else:
            outcomes[entry["label"]] = "allocated " + str(transport.get_extra_info("sockname")[0])
            transport.close()
    report("call", outcomes=outcomes)
    await wait_for_hangup()
    await client.close_realtime()
    report("done")


async def wait_for_hangup() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "hangup":
            return


async def main() -> None:
    url, token, mode, *rest = sys.argv[1:]
    ice = json.loads(rest[0]) if rest and mode in ("hub", "balanced") else None
    if mode == "bench":
        await bench(url, token, int(rest[0]), json.loads(rest[1]) if len(rest) > 1 else None)
    elif mode == "hub":
        await call_with_client(url, token, ice)
    elif mode == "balanced":
        await call_balanced(url, token, ice)
    elif mode == "allocate":
        await allocate(url, token, json.loads(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    asyncio.run(main())
