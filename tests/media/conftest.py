"""Real aiortc peers, connected to each other in-process over loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.media import FanoutTrack, MediaHub

WAIT = 20.0  # generous: the machine is shared
# A callback running this long blocked the loop. Generous: on a loaded 2-core machine a step
# of aiortc's own DTLS task was once measured at 0.56 s with nothing of ours in it (the
# loop thread waiting for the CPU or the GIL). The check catches stalls (a device open or a
# read that hangs on the loop), not a short per-frame cost.
BLOCKED = 1.0


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """Host candidates on 127.0.0.1 only: aioice skips loopback and would use every NIC."""
    with mock.patch.object(
        aioice.ice, "get_host_addresses", autospec=True, return_value=["127.0.0.1"]
    ):
        yield


@pytest.fixture(autouse=True)
async def debug_loop(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Debug mode (never-awaited coroutines, non-thread-safe calls), and fail a test whose
    code blocked the event loop: blocking work belongs on the media worker threads."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = BLOCKED
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    loop.set_debug(False)
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    blocked = [
        r.getMessage() for r in records if r.name == "asyncio" and " took " in r.getMessage()
    ]
    assert blocked == [], "the event loop was blocked"


@dataclass
class Viewer:
    """A caller's peer connection and what it received, plus the agent's side of the call."""

    pc: RTCPeerConnection
    agent_pc: RTCPeerConnection
    tracks: list[FanoutTrack]
    video_frames: int = 0
    audio_frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    first_video: asyncio.Event = field(default_factory=asyncio.Event)
    first_audio: asyncio.Event = field(default_factory=asyncio.Event)
    first_video_at: float | None = None
    reading: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = field(default_factory=list)

    @property
    def video_track(self) -> FanoutTrack:
        return next(t for t in self.tracks if t.kind == "video")

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (event driven: checked on every received frame) until ``predicate()``."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, WAIT)

    def _received(self) -> None:
        for predicate, future in list(self._waiters):
            if not future.done() and predicate():
                future.set_result(None)
                self._waiters.remove((predicate, future))

    async def consume(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame: Any = await track.recv()
            except MediaStreamError:
                return
            if not self.reading:
                continue  # still drain aiortc's queue, but count nothing
            if track.kind == "video":
                self.video_frames += 1
                self.sizes.add((frame.width, frame.height))
                if not self.first_video.is_set():
                    self.first_video_at = loop.time()
                    self.first_video.set()
            else:
                self.audio_frames += 1
                self.first_audio.set()
            self._received()

    async def close(self) -> None:
        for track in self.tracks:
            track.stop()
        await self.pc.close()
        await self.agent_pc.close()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def connect_viewer(
    hub: MediaHub,
    *,
    codec: str | None = None,
    video: bool = True,
    audio: bool = False,
    consume: bool = True,
) -> Viewer:
    """Call the 'device' like a browser: recvonly offer from the viewer, answer by the hub."""
    pc, agent_pc = _peer(), _peer()
    if video:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        if codec is not None:
            caps = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences([c for c in caps if c.mimeType == f"video/{codec}"])
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    viewer = Viewer(pc=pc, agent_pc=agent_pc, tracks=[])

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if consume:
            viewer.tasks.append(asyncio.create_task(viewer.consume(track)))

    await pc.setLocalDescription(await pc.createOffer())
    await agent_pc.setRemoteDescription(pc.localDescription)
    for transceiver in agent_pc.getTransceivers():
        track = hub.subscribe_video() if transceiver.kind == "video" else hub.subscribe_audio()
        track.attach(agent_pc.addTrack(track))
        viewer.tracks.append(track)
    await agent_pc.setLocalDescription(await agent_pc.createAnswer())
    await pc.setRemoteDescription(agent_pc.localDescription)
    return viewer


@pytest.fixture
async def viewers() -> AsyncIterator[Callable[..., Awaitable[Viewer]]]:
    """``await viewers(hub, codec=..., audio=...)``; every call is hung up at the end."""
    made: list[Viewer] = []

    async def make(hub: MediaHub, **options: Any) -> Viewer:
        viewer = await connect_viewer(hub, **options)
        made.append(viewer)
        return viewer

    yield make
    for viewer in made:
        await viewer.close()


@pytest.fixture
def decode_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """aiortc's receiver warnings about frames it could not decode."""
    caplog.set_level(logging.WARNING, logger="aiortc.rtcrtpreceiver")

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if "failed to decode" in r.getMessage()]

    return errors
