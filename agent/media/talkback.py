"""Talk-back: a caller's voice played on the device speaker, written to a file, or dropped.

Every sink counts the samples it received and how many were not silent, which is how
an operator (and a test) knows the caller's audio arrived. Several callers talking at
once are played in arrival order, not mixed (push-to-talk is one voice at a time).
"""

from __future__ import annotations

import asyncio
import logging
import wave
from array import array
from collections.abc import Callable
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler

from agent.media.config import FileSinkConfig, NullSinkConfig, SinkConfig, SpeakerConfig
from agent.media.encoders import AUDIO_RATE
from agent.media.errors import DeviceNotFoundError, device_not_found
from agent.media.runtime import SerialWorker, cancel_and_wait

__all__ = ["TalkbackSink", "count_nonsilent"]

logger = logging.getLogger(__name__)

_SILENCE = 500  # |sample| at or below this (about -36 dBFS) counts as silence


def count_nonsilent(pcm: bytes, threshold: int = _SILENCE) -> int:
    """Samples of s16 ``pcm`` louder than ``threshold``."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    return sum(1 for s in samples if s > threshold or s < -threshold)


class _Output(Protocol):
    def open(self) -> None: ...
    def write(self, frame: AudioFrame, pcm: bytes) -> None: ...
    def close(self) -> None: ...


class _NullOutput:
    def open(self) -> None:
        pass

    def write(self, frame: AudioFrame, pcm: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _WavOutput:
    def __init__(self, config: FileSinkConfig) -> None:
        self._path = config.path
        self._file: wave.Wave_write | None = None

    def open(self) -> None:
        self._file = wave.open(str(self._path), "wb")  # noqa: SIM115 - closed in close()
        self._file.setnchannels(1)
        self._file.setsampwidth(2)
        self._file.setframerate(AUDIO_RATE)

    def write(self, frame: AudioFrame, pcm: bytes) -> None:
        if self._file is not None:
            self._file.writeframes(pcm)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _SpeakerOutput:
    def __init__(self, config: SpeakerConfig) -> None:
        self._device = config.device
        self._container: Any = None
        self._stream: Any = None

    def open(self) -> None:
        name = f"alsa:{self._device}"
        if "alsa" not in av.formats_available:
            raise device_not_found(name, "ALSA playback is not available in this build")
        try:
            self._container = av.open(self._device, "w", format="alsa")
            self._stream = self._container.add_stream("pcm_s16le", rate=AUDIO_RATE, layout="mono")
            self._container.start_encoding()  # opens the device now, not at the first write
        except (av.FFmpegError, OSError) as exc:
            raise device_not_found(name, f"cannot open: {exc}") from exc

    def write(self, frame: AudioFrame, pcm: bytes) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _make_output(config: SinkConfig) -> _Output:
    if isinstance(config, SpeakerConfig):
        return _SpeakerOutput(config)
    if isinstance(config, FileSinkConfig):
        return _WavOutput(config)
    return _NullOutput()


class TalkbackSink:
    """Plays remote audio tracks on the configured output and counts what it heard."""

    def __init__(
        self,
        config: SinkConfig | None = None,
        *,
        threshold: int = _SILENCE,
        on_error: Callable[[DeviceNotFoundError], None] | None = None,
    ) -> None:
        self._config = config or NullSinkConfig()
        self._threshold = threshold
        self._on_error = on_error
        self._worker = SerialWorker("media-talkback")
        self._output: _Output | None = None
        self._players: set[asyncio.Task[None]] = set()
        self._heard = asyncio.Condition()
        self.samples = 0
        self.nonsilent = 0

    def play(self, track: MediaStreamTrack) -> asyncio.Task[None]:
        """Start playing ``track`` until it ends; the task is kept by the sink."""
        task = asyncio.create_task(self._play(track))
        self._players.add(task)
        task.add_done_callback(self._players.discard)
        return task

    async def wait_for(self, *, samples: int = 0, nonsilent: int = 0) -> None:
        """Return once at least ``samples`` samples, ``nonsilent`` of them not silent, arrived."""
        async with self._heard:
            await self._heard.wait_for(
                lambda: self.samples >= samples and self.nonsilent >= nonsilent
            )

    async def close(self) -> None:
        """Stop every player and close the output."""
        for task in tuple(self._players):
            await cancel_and_wait(task)
        output, self._output = self._output, None
        try:
            if output is not None:
                await self._worker.run(output.close)
        finally:
            self._worker.shutdown()

    async def _play(self, track: MediaStreamTrack) -> None:
        output = await self._ensure_output()
        resampler = AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        while True:
            try:
                received = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(received, AudioFrame):
                continue
            for frame in resampler.resample(received):
                if not await self._consume(output, frame):
                    output = _NullOutput()

    async def _consume(self, output: _Output, frame: AudioFrame) -> bool:
        """Count and play one frame; False if the output failed (it is then dropped)."""
        pcm = bytes(frame.planes[0])[: frame.samples * 2]
        played = True
        try:
            await self._worker.run(output.write, frame, pcm)
        except (av.FFmpegError, OSError) as exc:
            logger.warning("talk-back output failed, dropping audio until the next call: %s", exc)
            if self._output is output:
                self._output = None
            played = False
        # Counted once handed to the output, so a close right after wait_for() returns
        # never loses audio that was already counted.
        self.samples += frame.samples
        self.nonsilent += count_nonsilent(pcm, self._threshold)
        async with self._heard:
            self._heard.notify_all()
        return played

    async def _ensure_output(self) -> _Output:
        """The configured output; the null output (reported) while it cannot be opened."""
        if self._output is not None:
            return self._output
        output = _make_output(self._config)
        try:
            await self._worker.run(output.open)
        except DeviceNotFoundError as exc:
            logger.warning("talk-back: %s; counting and dropping audio", exc.message)
            if self._on_error is not None:
                self._on_error(exc)
            return _NullOutput()  # retried on the next play()
        self._output = output
        return output
