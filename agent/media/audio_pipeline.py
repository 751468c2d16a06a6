"""The audio pipeline: one microphone (or tone), one Opus encode, every viewer.

Sharing the encoder means every viewer gets the same Opus packets; aiortc's sender packs
them as they are (it sets no audio-level header extension for packets, RFC 6464 is
optional). A viewer whose sender lags drops its oldest packets alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from av.audio.frame import AudioFrame
from av.packet import Packet

from agent.media.audio import FRAME_SAMPLES, AudioSource
from agent.media.config import MediaConfig
from agent.media.encoders import AUDIO_RATE, OpusEncoder
from agent.media.fanout import EncodedFanout, FanoutTrack
from agent.media.pipeline import Pipeline, Session
from agent.media.runtime import MediaClock, SerialWorker, cancel_and_wait
from agent.media.supervisor import MediaEvent

__all__ = ["AudioPipeline", "AudioSession"]

logger = logging.getLogger(__name__)

_BACKLOG = 50  # 1 s of frames waiting for the encoder before the oldest are dropped

AudioSourceFactory = Callable[[], AudioSource]


class AudioPipeline(Pipeline["AudioSession"]):
    """Audio for every viewer: leases, the shared fan-out and the capture session."""

    def __init__(
        self,
        config: MediaConfig,
        *,
        clock: MediaClock,
        primary: AudioSourceFactory,
        fallback: AudioSourceFactory | None,
        on_event: Callable[[MediaEvent], None],
    ) -> None:
        super().__init__(media="audio", linger=config.fanout.linger_seconds, on_event=on_event)
        self._config = config
        self._clock = clock
        self._primary = primary
        self._fallback = fallback
        self.fanout = EncodedFanout("opus", keyframe_interval=0.0)

    @property
    def session(self) -> AudioSession | None:
        """The running capture session, if any."""
        return self._session

    @property
    def encodes(self) -> int:
        """Opus encodes in the current session."""
        return self._session.encodes if self._session is not None else 0

    def subscribe(self) -> FanoutTrack:
        """A new listener's track; the capture starts now."""
        track = FanoutTrack(self, kind="audio", capacity=self._config.fanout.audio_queue)
        self.acquire()
        return track

    def join(self, track: FanoutTrack) -> None:
        """The listener's sender started reading."""
        self.fanout.add(track)

    def leave(self, track: FanoutTrack) -> None:
        """The listener is gone."""
        self.fanout.remove(track)
        self.release()

    def keyframe_wanted(self, track: FanoutTrack) -> None:
        """Audio has no key frames."""

    def bitrate_estimated(self, track: FanoutTrack) -> None:
        """Opus runs at a fixed, small bitrate."""

    def _new_session(self) -> AudioSession:
        return AudioSession(self, self._config, self._clock, self._primary, self._fallback)


class AudioSession(Session[AudioFrame, AudioSource]):
    """One audio capture run: supervisor, timestamps, the Opus encoder thread."""

    def __init__(
        self,
        pipeline: AudioPipeline,
        config: MediaConfig,
        clock: MediaClock,
        primary: AudioSourceFactory,
        fallback: AudioSourceFactory | None,
    ) -> None:
        super().__init__(
            media="audio",
            config=config,
            clock=clock,
            primary=primary,
            fallback=fallback,
            on_event=pipeline._emit,
        )
        self._pipeline = pipeline
        self._config = config
        self._clock = clock
        self._worker = SerialWorker("media-audio")
        self._encoder: OpusEncoder | None = None
        self._backlog: deque[AudioFrame] = deque(maxlen=_BACKLOG)
        self._ready = asyncio.Event()
        self._pts = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.frames = 0

    @property
    def encodes(self) -> int:
        """Opus encodes so far."""
        return self._encoder.encodes if self._encoder is not None else 0

    def start(self) -> None:
        """Start the capture and encode tasks."""
        for coro in (self.supervisor.run(), self._encode_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        """Stop capturing."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._worker.shutdown()

    def _deliver(self, frame: AudioFrame, source: AudioSource) -> None:
        if source is not self._source:
            # A new source starts at the capture clock, never before what was sent.
            self._source = source
            self._pts = max(self._pts, self._clock.pts(AUDIO_RATE))
        frame.pts = self._pts
        self._pts += frame.samples or FRAME_SAMPLES
        self.frames += 1
        self._backlog.append(frame)
        self._ready.set()

    async def _encode_loop(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            frames = list(self._backlog)
            self._backlog.clear()
            try:
                packets = await self._worker.run(self._encode_blocking, frames)
            except Exception:
                logger.exception("audio encoding failed")
                continue
            now = asyncio.get_running_loop().time()
            for packet in packets:
                self._pipeline.fanout.publish(packet, key=True, now=now)

    def _encode_blocking(self, frames: list[AudioFrame]) -> list[Packet[Any]]:
        if self._encoder is None:
            self._encoder = OpusEncoder(self._config.encoder.opus_bitrate)
        return [packet for frame in frames for packet in self._encoder.encode(frame)]
