#!/usr/bin/env python3
"""Fan-out benchmark: agent CPU and memory per viewer, encode-once versus aiortc's default.

The agent side (the device) runs in a child process, so its CPU time and RSS are its own;
the viewers run in this process. For each mode the child serves 1, 2, 4, 8, 16 viewers of
one 640x480@30 test pattern and reports, over a measuring window per point:

- cpu: process CPU time / wall time, in % of one core
- rss: resident memory (MB)
- each viewer's received frame rate (complete frames out of aiortc's jitter buffer)

Modes, measured in the same run:
- encode-once: agent.media.MediaHub (one VP8 encode, packets to every viewer)
- per-viewer:  aiortc's default: MediaRelay over one VideoStreamTrack, one encoder per sender

With ``--audio`` every viewer also receives the microphone (a tone): one shared Opus
encode in encode-once mode, one Opus encoder per sender in per-viewer mode.

Viewers count frames without decoding them (``--decode`` decodes), so that 16 decoders do
not compete with the agent for the CPU. Everything stays on 127.0.0.1.

    .venv/bin/python scripts/bench_fanout.py               # both modes, 5 s per point
    .venv/bin/python scripts/bench_fanout.py --seconds 10 --points 1,4,16 --codec H264
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from unittest import mock

import aioice.ice
import aiortc.rtcrtpreceiver
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from agent.media import EncoderConfig, MediaConfig, MediaHub, TestPatternConfig, ToneTrack
from agent.media.sources import PatternTrack

WIDTH, HEIGHT, FPS = 640, 480, 30


def loopback_only() -> Any:
    """aioice skips 127.0.0.1 and would offer every interface; this keeps ICE on loopback."""
    return mock.patch.object(aioice.ice, "get_host_addresses", return_value=["127.0.0.1"])


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ----------------------------------------------------------------------------- agent side


class Agent:
    """The device: answers offers in one of the two modes."""

    def __init__(self, mode: str, bitrate: int) -> None:
        self.mode = mode
        self.pcs: list[RTCPeerConnection] = []
        self.hub = MediaHub(
            MediaConfig(
                video=TestPatternConfig(WIDTH, HEIGHT, FPS),
                encoder=EncoderConfig(bitrate=bitrate),
            )
        )
        self.relay = MediaRelay()
        self.camera: PatternTrack | None = None
        self.microphone: ToneTrack | None = None

    async def answer(self, sdp: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        for transceiver in pc.getTransceivers():
            if self.mode == "encode-once":
                track = self.hub.subscribe_video()
                if transceiver.kind == "audio":
                    track = self.hub.subscribe_audio()
                track.attach(pc.addTrack(track))
            elif transceiver.kind == "video":
                self.camera = self.camera or PatternTrack(TestPatternConfig(WIDTH, HEIGHT, FPS))
                pc.addTrack(self.relay.subscribe(self.camera))
            else:
                self.microphone = self.microphone or ToneTrack()
                pc.addTrack(self.relay.subscribe(self.microphone))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def stats(self) -> dict[str, Any]:
        if self.mode != "encode-once":
            return {"encodes": None}
        stats = self.hub.stats()
        return {"encodes": sum(c.encodes for c in stats.codecs), "frames": stats.frames_captured}

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()
        await self.hub.close()


async def agent_main(conn: Connection, mode: str, bitrate: int) -> None:
    agent = Agent(mode, bitrate)
    loop = asyncio.get_running_loop()
    window: tuple[float, float] = (0.0, 0.0)
    while True:
        command, argument = await loop.run_in_executor(None, conn.recv)
        if command == "offer":
            conn.send(await agent.answer(argument))
        elif command == "start":
            window = (time.process_time(), time.monotonic())
            conn.send(agent.stats())
        elif command == "stop":
            cpu, wall = time.process_time() - window[0], time.monotonic() - window[1]
            conn.send({"cpu": cpu / wall * 100, "rss": rss_mb(), **agent.stats()})
        else:
            await agent.close()
            conn.send(None)
            return


def agent_process(conn: Connection, mode: str, bitrate: int) -> None:
    with loopback_only():
        asyncio.run(agent_main(conn, mode, bitrate))


# ---------------------------------------------------------------------------- viewer side


class CountingDecoder:
    """Stands in for aiortc's decoder: counts complete frames, decodes nothing."""

    instances: list[CountingDecoder] = []  # noqa: RUF012 - one list for the benchmark run

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frames = 0
        CountingDecoder.instances.append(self)

    def decode(self, encoded_frame: Any) -> list[Any]:
        self.frames += 1
        return []


def counting_decoder(codec: Any) -> CountingDecoder:
    """Replaces ``aiortc.rtcrtpreceiver.get_decoder`` unless viewers decode."""
    return CountingDecoder(codec.mimeType.partition("/")[0])


@dataclass
class Viewer:
    pc: RTCPeerConnection
    task: asyncio.Task[None] | None = None
    frames: int = 0


async def connect(conn: Connection, codec: str, decode: bool, audio: bool) -> Viewer:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer = Viewer(pc)
    transceiver = pc.addTransceiver("video", direction="recvonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType == f"video/{codec}"])
    if audio:
        pc.addTransceiver("audio", direction="recvonly")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def consume() -> None:
            while True:
                await track.recv()
                viewer.frames += 1

        if decode and track.kind == "video":
            viewer.task = asyncio.create_task(consume())

    await pc.setLocalDescription(await pc.createOffer())
    conn.send(("offer", pc.localDescription.sdp))
    answer = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return viewer


def frame_counts(viewers: list[Viewer], decode: bool) -> list[int]:
    if decode:
        return [v.frames for v in viewers]
    return [d.frames for d in CountingDecoder.instances if d.kind == "video"]


async def measure_mode(mode: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    CountingDecoder.instances.clear()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=agent_process, args=(child, mode, args.bitrate))
    process.start()
    loop = asyncio.get_running_loop()

    async def ask(command: str, argument: Any = None) -> Any:
        parent.send((command, argument))
        return await loop.run_in_executor(None, parent.recv)

    viewers: list[Viewer] = []
    rows = []
    try:
        for count in args.points:
            while len(viewers) < count:
                viewers.append(await connect(parent, args.codec, args.decode, args.audio))
            await asyncio.sleep(args.warmup)
            before = frame_counts(viewers, args.decode)
            start = await ask("start")
            began = time.monotonic()
            await asyncio.sleep(args.seconds)
            stop = await ask("stop")
            elapsed = time.monotonic() - began
            after = frame_counts(viewers, args.decode)
            fps = [(a - b) / elapsed for a, b in zip(after, before, strict=False)]
            fps += [0.0] * (count - len(fps))  # a viewer that got nothing has no decoder
            encodes = None
            if stop["encodes"] is not None:
                encodes = (stop["encodes"] - start["encodes"]) / elapsed
            row = {**stop, "mode": mode, "viewers": count, "fps": fps, "encodes": encodes}
            row["load"] = os.getloadavg()[0]
            rows.append(row)
            print_row(row)
        await ask("quit")
    finally:
        for viewer in viewers:
            if viewer.task:
                viewer.task.cancel()
            await viewer.pc.close()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    return rows


def print_row(row: dict[str, Any]) -> None:
    fps = row["fps"]
    encodes = f"{row['encodes']:6.1f}" if row["encodes"] is not None else "   n/a"
    print(
        f"{row['mode']:12} {row['viewers']:3d} viewers  cpu {row['cpu']:6.1f}% of a core  "
        f"rss {row['rss']:6.1f} MB  fps min/median/max "
        f"{min(fps):5.1f}/{statistics.median(fps):5.1f}/{max(fps):5.1f}  "
        f"encodes/s {encodes}  load {row['load']:.2f}",
        flush=True,
    )


def summarize(rows: list[dict[str, Any]]) -> None:
    print("\nper extra viewer (first to last point):")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        points = [r for r in rows if r["mode"] == mode]
        first, last = points[0], points[-1]
        extra = last["viewers"] - first["viewers"]
        if extra <= 0:
            continue
        cpu = (last["cpu"] - first["cpu"]) / extra
        rss = (last["rss"] - first["rss"]) / extra
        print(
            f"  {mode:12} {cpu:+6.2f}% of a core, {rss:+6.2f} MB per viewer; "
            f"at {last['viewers']} viewers: {last['cpu']:.1f}% of a core, "
            f"median {statistics.median(last['fps']):.1f} fps"
        )


async def main(args: argparse.Namespace) -> None:
    print(
        f"{WIDTH}x{HEIGHT}@{FPS} {args.codec}{' + Opus' if args.audio else ''}, "
        f"{args.bitrate} bit/s, "
        f"{args.seconds:.0f} s per point, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f} at start"
    )
    rows = []
    for mode in args.modes:
        rows += await measure_mode(mode, args)
    summarize(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--points", default="1,2,4,8,16", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--modes", default="encode-once,per-viewer", type=lambda s: s.split(","))
    parser.add_argument("--seconds", default=5.0, type=float, help="measuring window per point")
    parser.add_argument("--warmup", default=2.0, type=float, help="settling time per point")
    parser.add_argument("--codec", default="VP8", choices=["VP8", "H264"])
    parser.add_argument("--bitrate", default=500_000, type=int, help="encode-once bitrate")
    parser.add_argument("--decode", action="store_true", help="viewers decode (costs CPU)")
    parser.add_argument("--audio", action="store_true", help="viewers also receive audio")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    with loopback_only():
        if not arguments.decode:
            patch = mock.patch.object(aiortc.rtcrtpreceiver, "get_decoder", counting_decoder)
            patch.start()
        asyncio.run(main(arguments))
    sys.exit(0)
