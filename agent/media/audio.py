"""Audio sources: a generated tone (the default) and an ALSA or PulseAudio microphone.

Every source yields 20 ms frames of 48 kHz stereo s16, the shape Opus packs into one RTP
packet (RFC 7587); the hub stamps their timestamps.
"""

from __future__ import annotations

import asyncio
import math
from array import array
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamTrack
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.container import InputContainer

from agent.media.config import AudioSourceConfig, MicrophoneConfig, ToneConfig
from agent.media.encoders import AUDIO_RATE, AUDIO_TIME_BASE
from agent.media.errors import MediaError, device_not_found
from agent.media.runtime import SerialWorker

__all__ = [
    "FRAME_SAMPLES",
    "AudioSource",
    "MicrophoneSource",
    "ToneSource",
    "ToneTrack",
    "make_audio_source",
]

FRAME_SAMPLES = 960  # 20 ms at 48 kHz
_PTIME = FRAME_SAMPLES / AUDIO_RATE
_CHANNELS = 2


class AudioSource(Protocol):
    """What the media hub needs from an audio source."""

    @property
    def name(self) -> str:
        """The device, as told to a caller when it is missing."""

    async def open(self) -> None:
        """Acquire the device; DeviceNotFoundError if it is absent."""

    async def read(self) -> AudioFrame:
        """The next 20 ms frame (s16, stereo, 48 kHz)."""

    async def close(self) -> None:
        """Release the device."""


def make_audio_source(config: AudioSourceConfig) -> AudioSource:
    """The source for ``config``."""
    if isinstance(config, ToneConfig):
        return ToneSource(config)
    return MicrophoneSource(config)


def tone_pcm(config: ToneConfig) -> bytes:
    """One 20 ms frame of the tone, interleaved stereo s16; it repeats without a seam."""
    cycles = config.frequency * _PTIME
    if config.frequency <= 0 or not float(cycles).is_integer():
        raise ValueError(
            f"tone frequency must be a positive multiple of 50 Hz, not {config.frequency}"
        )
    amplitude = max(0.0, min(1.0, config.volume)) * 32767
    samples = array("h")
    for n in range(FRAME_SAMPLES):
        value = int(amplitude * math.sin(2 * math.pi * config.frequency * n / AUDIO_RATE))
        samples.extend((value,) * _CHANNELS)
    return samples.tobytes()


def pcm_frame(pcm: bytes) -> AudioFrame:
    """An s16 stereo 48 kHz frame holding ``pcm``."""
    frame = AudioFrame(format="s16", layout="stereo", samples=FRAME_SAMPLES)
    frame.planes[0].update(pcm)
    frame.sample_rate = AUDIO_RATE
    frame.time_base = AUDIO_TIME_BASE
    return frame


class ToneSource:
    """A sine tone paced in real time."""

    def __init__(self, config: ToneConfig) -> None:
        self._config = config
        self._pcm = tone_pcm(config)
        self._next = 0.0

    @property
    def name(self) -> str:
        """The tone's description."""
        return f"tone:{self._config.frequency}Hz"

    async def open(self) -> None:
        """Start the pacing clock."""
        self._next = asyncio.get_running_loop().time()

    async def read(self) -> AudioFrame:
        """The next 20 ms of tone, on time."""
        now = asyncio.get_running_loop().time()
        self._next = max(self._next + _PTIME, now - _PTIME)
        await asyncio.sleep(max(0.0, self._next - now))
        return pcm_frame(self._pcm)

    async def close(self) -> None:
        """Nothing to release."""


class MicrophoneSource:
    """An ALSA or PulseAudio capture device, read on its own thread."""

    def __init__(self, config: MicrophoneConfig) -> None:
        self._config = config
        self._worker: SerialWorker | None = None
        self._container: InputContainer | None = None
        self._frames: Iterator[AudioFrame] | None = None
        self._resampler = AudioResampler(
            format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=FRAME_SAMPLES
        )
        self._pending: deque[AudioFrame] = deque()

    @property
    def name(self) -> str:
        """``backend:device``."""
        return f"{self._config.backend}:{self._config.device}"

    async def open(self) -> None:
        """Open the capture device; DeviceNotFoundError if it is absent."""
        self._worker = SerialWorker("media-mic")
        try:
            self._container = await self._worker.run(self._open_blocking)
        except BaseException:
            self._worker.shutdown()
            self._worker = None
            raise
        self._frames = self._container.decode(audio=0)

    async def read(self) -> AudioFrame:
        """The next 20 ms frame; DeviceNotFoundError if the device went away."""
        worker = self._worker
        if worker is None:
            raise MediaError(f"{self.name} is not open")
        while not self._pending:
            self._pending.extend(await worker.run(self._read_blocking))
        return self._pending.popleft()

    async def close(self) -> None:
        """Release the device."""
        worker, container = self._worker, self._container
        self._worker = self._container = self._frames = None
        if worker is not None:
            try:
                if container is not None:
                    await worker.run(container.close)
            finally:
                worker.shutdown()

    def _open_blocking(self) -> InputContainer:
        backend, device = self._config.backend, self._config.device
        if backend not in av.formats_available:
            raise device_not_found(self.name, f"{backend} capture is not available in this build")
        options = {"sample_rate": str(AUDIO_RATE), "channels": str(_CHANNELS)}
        try:
            return av.open(device, format=backend, options=options)
        except (av.FFmpegError, OSError) as exc:
            raise device_not_found(self.name, f"cannot open: {exc}") from exc

    def _read_blocking(self) -> list[AudioFrame]:
        if self._frames is None:
            raise MediaError(f"{self.name} is not open")
        try:
            frame = next(self._frames)
        except StopIteration:
            raise device_not_found(self.name, "capture stopped") from None
        except (av.FFmpegError, OSError) as exc:
            raise device_not_found(self.name, f"capture failed: {exc}") from exc
        frame.pts = None  # the hub stamps frames; the resampler must not reorder by them
        return self._resampler.resample(frame)


class ToneTrack(MediaStreamTrack):
    """An aiortc audio track playing a tone (a caller's stand-in microphone)."""

    kind = "audio"

    def __init__(self, config: ToneConfig | None = None) -> None:
        super().__init__()
        self._source = ToneSource(config or ToneConfig())
        self._pts = 0
        self._started = False

    async def recv(self) -> Any:
        """The next 20 ms of tone (an ``av.AudioFrame``)."""
        if not self._started:
            await self._source.open()
            self._started = True
        frame = await self._source.read()
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        return frame
