#!/usr/bin/env python3
"""Late-join benchmark: how soon a viewer joining a running stream shows its first frame.

One viewer watches a 640x480@30 test pattern with a long GOP (300 frames, 10 s); then N
viewers join one after another (each hangs up before the next joins). For each joiner:

- offer -> first decoded frame, and ICE/DTLS connected -> first decoded frame (ms)
- decode errors logged by its receiver
- key frames the first viewer received because of the joins (the "storm" check)

Modes, measured in the same run:
- encode-once: agent.media.MediaHub; a join forces one key frame (rate limited)
- no-join-keyframe: the same fan-out with forced key frames disabled, i.e. aiortc's packet
  track as it is (PLI ignored): the joiner waits for the next scheduled key frame
- per-viewer: aiortc's default (MediaRelay + VideoStreamTrack): each sender has its own
  encoder, so its first frame is a key frame, at the CPU cost shown by bench_fanout.py

    .venv/bin/python scripts/bench_latejoin.py                 # 10 joins, 3 for the slow mode
    .venv/bin/python scripts/bench_latejoin.py --joins 20 --codec H264
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.media import EncoderConfig, FanoutConfig, MediaConfig, MediaHub, TestPatternConfig
from agent.media.sources import PatternTrack

WIDTH, HEIGHT, FPS, GOP = 640, 480, 30, 300


class DecodeErrors(logging.Handler):
    """Counts aiortc receiver warnings about undecodable frames."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            self.count += 1


@dataclass
class Call:
    viewer: RTCPeerConnection
    agent: RTCPeerConnection
    offered: float
    connected: float | None = None
    first_frame: float | None = None
    frames: int = 0
    got_frame: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def hang_up(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.viewer.close()
        await self.agent.close()


class Device:
    """The agent side in one of the modes."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        interval = float("inf") if mode == "no-join-keyframe" else 0.5
        self.hub = MediaHub(
            MediaConfig(
                video=TestPatternConfig(WIDTH, HEIGHT, FPS),
                encoder=EncoderConfig(keyframe_interval=GOP, bitrate=500_000),
                fanout=FanoutConfig(
                    keyframe_min_interval=interval, viewer_keyframe_interval=interval
                ),
            )
        )
        self.relay = MediaRelay()
        self.camera: PatternTrack | None = None
        self.tracks: list[Any] = []

    def add_video(self, pc: RTCPeerConnection) -> None:
        if self.mode == "per-viewer":
            self.camera = self.camera or PatternTrack(TestPatternConfig(WIDTH, HEIGHT, FPS))
            pc.addTrack(self.relay.subscribe(self.camera))
            return
        track = self.hub.subscribe_video()
        track.attach(pc.addTrack(track))
        self.tracks.append(track)

    def keyframes(self) -> int:
        return sum(c.keyframes for c in self.hub.stats().codecs)

    async def close(self) -> None:
        await self.hub.close()


async def call(device: Device, codec: str) -> Call:
    loop = asyncio.get_running_loop()
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    agent = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    result = Call(viewer, agent, offered=loop.time())
    transceiver = viewer.addTransceiver("video", direction="recvonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType == f"video/{codec}"])

    @viewer.on("connectionstatechange")
    def on_state() -> None:
        if viewer.connectionState == "connected" and result.connected is None:
            result.connected = loop.time()

    @viewer.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def consume() -> None:
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return
                result.frames += 1
                if result.first_frame is None:
                    result.first_frame = loop.time()
                    result.got_frame.set()

        result.tasks.append(asyncio.create_task(consume()))

    await viewer.setLocalDescription(await viewer.createOffer())
    await agent.setRemoteDescription(viewer.localDescription)
    device.add_video(agent)
    await agent.setLocalDescription(await agent.createAnswer())
    await viewer.setRemoteDescription(agent.localDescription)
    return result


async def measure(mode: str, joins: int, codec: str, errors: DecodeErrors) -> dict[str, Any]:
    device = Device(mode)
    first = await call(device, codec)
    await asyncio.wait_for(first.got_frame.wait(), 20)
    await asyncio.sleep(1.0)
    keys_before = device.keyframes()
    errors_before = errors.count
    to_frame, from_connected = [], []
    rng = random.Random(1)  # noqa: S311 - join times, not security
    for _ in range(joins):
        if mode == "no-join-keyframe":  # join at a random point of the GOP
            await asyncio.sleep(rng.uniform(0, GOP / FPS))
        joiner = await call(device, codec)
        await asyncio.wait_for(joiner.got_frame.wait(), 2 * GOP / FPS + 5)
        assert joiner.first_frame is not None
        assert joiner.connected is not None
        to_frame.append((joiner.first_frame - joiner.offered) * 1000)
        from_connected.append((joiner.first_frame - joiner.connected) * 1000)
        await asyncio.sleep(0.3)
        await joiner.hang_up()
        await asyncio.sleep(0.7)  # apart from the previous join's key frame
    row = {
        "mode": mode,
        "joins": joins,
        "to_frame": to_frame,
        "from_connected": from_connected,
        "decode_errors": errors.count - errors_before,
        "extra_keys": (device.keyframes() - keys_before) if mode != "per-viewer" else None,
    }
    await first.hang_up()
    await device.close()
    return row


def report(row: dict[str, Any]) -> None:
    def spread(values: list[float]) -> str:
        median = statistics.median(values)
        return f"median {median:6.0f}  min {min(values):6.0f}  max {max(values):6.0f}"

    keys = row["extra_keys"]
    storm = (
        f"{keys} key frames for {row['joins']} joins" if keys is not None else "n/a (own encoder)"
    )
    print(
        f"{row['mode']:17} offer->first frame ms {spread(row['to_frame'])}\n"
        f"{'':17} connected->frame ms   {spread(row['from_connected'])}\n"
        f"{'':17} decode errors {row['decode_errors']}, first viewer saw {storm}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    errors = DecodeErrors()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(errors)
    print(
        f"{WIDTH}x{HEIGHT}@{FPS} {args.codec}, GOP {GOP} frames, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f} at start"
    )
    for mode in args.modes:
        joins = args.slow_joins if mode == "no-join-keyframe" else args.joins
        report(await measure(mode, joins, args.codec, errors))


def _positive(text: str) -> int:
    """A count of joins: a median needs at least one."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 join is needed for a median")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--joins", default=10, type=_positive)
    parser.add_argument("--slow-joins", default=3, type=_positive, help="joins without key frames")
    parser.add_argument("--codec", default="VP8", choices=["VP8", "H264"])
    parser.add_argument(
        "--modes", default="encode-once,no-join-keyframe,per-viewer", type=lambda s: s.split(",")
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    started = time.monotonic()
    with mock.patch.object(aioice.ice, "get_host_addresses", return_value=["127.0.0.1"]):
        asyncio.run(main(arguments))
    print(f"(ran {time.monotonic() - started:.0f} s)")
