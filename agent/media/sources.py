"""Video sources: test pattern, V4L2 camera, and a command writing H.264 or MJPEG.

A source yields either raw ``av.VideoFrame``s (to be encoded) or ``EncodedUnit``s, H.264
access units passed through to viewers without decoding. Blocking reads run on the
source's own thread; a missing or vanished device raises ``DeviceNotFoundError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamTrack
from av.container import InputContainer
from av.video.frame import PictureType, VideoFrame

from agent.media.bitstream import (
    AccessUnit,
    AnnexBSplitter,
    BitstreamError,
    JpegSplitter,
    ParameterSetCache,
    is_idr,
)
from agent.media.config import (
    ExecConfig,
    StreamFormat,
    TestPatternConfig,
    V4L2Config,
    VideoSourceConfig,
)
from agent.media.errors import MediaError, device_not_found
from agent.media.runtime import MediaClock, SerialWorker

__all__ = [
    "VIDEO_RATE",
    "VIDEO_TIME_BASE",
    "EncodedUnit",
    "ExecSource",
    "PatternSource",
    "PatternTrack",
    "V4L2Opener",
    "V4L2Source",
    "VideoItem",
    "VideoSource",
    "make_video_source",
    "open_v4l2",
]

logger = logging.getLogger(__name__)

VIDEO_RATE = 90_000  # RTP clock rate of every video codec (RFC 6184, RFC 7741)
VIDEO_TIME_BASE = Fraction(1, VIDEO_RATE)
_READ_CHUNK = 64 * 1024
_STDERR_TAIL = 2048
_STOP_TIMEOUT = 2.0

# linux/videodev2.h: VIDIOC_S_CTRL = _IOWR('V', 28, struct v4l2_control {u32 id; s32 value})
_VIDIOC_S_CTRL = 0xC008561C
_V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME = 0x009909E5  # V4L2_CID_CODEC_BASE + 229


@dataclass(frozen=True, slots=True)
class EncodedUnit:
    """An H.264 access unit from the source, Annex B, with SPS/PPS before each IDR."""

    data: bytes
    key: bool
    pts: int  # in VIDEO_TIME_BASE


VideoItem = VideoFrame | EncodedUnit


class VideoSource(Protocol):
    """What the media hub needs from a video source."""

    @property
    def name(self) -> str:
        """The device or command, as told to a caller when it goes missing."""

    @property
    def passthrough(self) -> bool:
        """True when ``read`` returns H.264 ``EncodedUnit``s (known after ``open``)."""

    async def open(self) -> None:
        """Acquire the device; DeviceNotFoundError if it is absent."""

    async def read(self) -> VideoItem:
        """The next frame; DeviceNotFoundError if the device went away."""

    def request_keyframe(self) -> bool:
        """Ask a pass-through source for an IDR; False if it cannot."""

    async def close(self) -> None:
        """Release the device."""


def make_video_source(config: VideoSourceConfig, clock: MediaClock) -> VideoSource:
    """The source for ``config``."""
    if isinstance(config, TestPatternConfig):
        return PatternSource(config, clock)
    if isinstance(config, V4L2Config):
        return V4L2Source(config, clock)
    return ExecSource(config, clock)


def stamp(frame: VideoFrame, clock: MediaClock) -> VideoFrame:
    """Give ``frame`` a capture timestamp and a neutral picture type.

    lavfi and some demuxers tag every frame as an I picture; encoders obey that tag, so
    left alone it turns every VP8 frame into a key frame.
    """
    frame.pts = clock.pts(VIDEO_RATE)
    frame.time_base = VIDEO_TIME_BASE
    frame.pict_type = PictureType.NONE
    return frame


class PatternSource:
    """A moving lavfi test pattern, paced to its frame rate."""

    passthrough = False

    def __init__(self, config: TestPatternConfig, clock: MediaClock) -> None:
        self._config = config
        self._clock = clock
        self._worker: SerialWorker | None = None
        self._container: InputContainer | None = None
        self._frames: Iterator[VideoFrame] | None = None
        self._next = 0.0

    @property
    def name(self) -> str:
        """The pattern's name."""
        return f"pattern:{self._config.pattern}"

    async def open(self) -> None:
        """Start the lavfi graph on a worker thread."""
        self._worker = SerialWorker("media-pattern")
        self._container = await self._worker.run(self._open_blocking)
        self._frames = self._container.decode(video=0)
        self._next = asyncio.get_running_loop().time()

    async def read(self) -> VideoItem:
        """The next pattern frame, at the configured rate."""
        worker, frames = self._worker, self._frames
        if worker is None or frames is None:
            raise MediaError(f"{self.name} is not open")
        await self._pace()
        frame = await worker.run(next, frames)
        return stamp(frame, self._clock)

    def request_keyframe(self) -> bool:
        """Frames are encoded by the hub, which forces key frames itself."""
        return False

    async def close(self) -> None:
        """Stop the graph."""
        await _close_container(self._worker, self._container)
        self._worker = self._container = self._frames = None

    def _open_blocking(self) -> InputContainer:
        c = self._config
        graph = f"{c.pattern}=size={c.width}x{c.height}:rate={c.fps},format=yuv420p"
        return av.open(graph, format="lavfi")

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1 / self._config.fps
        self._next += period
        now = loop.time()
        if self._next < now - period:  # fell behind: do not burst to catch up
            self._next = now
        await asyncio.sleep(max(0.0, self._next - now))


V4L2Opener = Callable[[V4L2Config], InputContainer]


def open_v4l2(config: V4L2Config) -> InputContainer:
    """Open a V4L2 capture device with PyAV (blocking)."""
    options = {
        "video_size": f"{config.width}x{config.height}",
        "framerate": str(config.fps),
        "input_format": config.input_format,
    }
    return av.open(config.device, format="video4linux2", options=options)


class V4L2Source:
    """A V4L2 camera; H.264 cameras are passed through, other formats decoded."""

    def __init__(
        self, config: V4L2Config, clock: MediaClock, *, opener: V4L2Opener = open_v4l2
    ) -> None:
        self._config = config
        self._clock = clock
        self._opener = opener
        self._worker: SerialWorker | None = None
        self._container: InputContainer | None = None
        self._items: Iterator[Any] | None = None
        self._parameter_sets = ParameterSetCache()
        self._key_task: asyncio.Task[bool] | None = None
        self.passthrough = False

    @property
    def name(self) -> str:
        """The device path."""
        return self._config.device

    async def open(self) -> None:
        """Open the device on a worker thread; DeviceNotFoundError if it is absent."""
        self._worker = SerialWorker("media-v4l2")
        try:
            self._container = await self._worker.run(self._open_blocking)
        except BaseException:
            self._worker.shutdown()
            self._worker = None
            raise
        stream = self._container.streams.video[0]
        self.passthrough = stream.codec_context.name == "h264"
        self._items = (
            self._container.demux(stream) if self.passthrough else (self._container.decode(stream))
        )

    async def read(self) -> VideoItem:
        """The next frame or access unit; DeviceNotFoundError when the camera is gone."""
        if self._worker is None:
            raise MediaError(f"{self.name} is not open")
        return await self._worker.run(self._read_blocking)

    def request_keyframe(self) -> bool:
        """Set V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME on an H.264 camera (off the loop)."""
        if not self.passthrough:
            return False
        if self._key_task is None or self._key_task.done():
            self._key_task = asyncio.create_task(
                asyncio.to_thread(force_key_frame, self._config.device)
            )
        return True

    async def close(self) -> None:
        """Release the camera."""
        await _close_container(self._worker, self._container)
        self._worker = self._container = self._items = None

    def _open_blocking(self) -> InputContainer:
        device = self._config.device
        if not os.path.exists(device):
            raise device_not_found(device, "no such device")
        try:
            return self._opener(self._config)
        except (av.FFmpegError, OSError) as exc:
            raise device_not_found(device, f"cannot open: {exc}") from exc

    def _read_blocking(self) -> VideoItem:
        if self._items is None:
            raise MediaError(f"{self.name} is not open")
        device = self._config.device
        try:
            item = next(self._items)
            while self.passthrough and item.size == 0:  # demuxer flush packets
                item = next(self._items)
        except StopIteration:
            raise device_not_found(device, "capture stopped") from None
        except (av.FFmpegError, OSError) as exc:
            raise device_not_found(device, f"capture failed: {exc}") from exc
        if not self.passthrough:
            return stamp(item, self._clock)
        data = bytes(item)
        unit = self._parameter_sets.apply(AccessUnit(data, is_idr(data)))
        return EncodedUnit(unit.data, unit.key, self._clock.pts(VIDEO_RATE))


def force_key_frame(device: str) -> bool:
    """Ask a V4L2 encoder for an IDR now; False (logged) if the driver cannot."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        logger.debug("cannot open %s to force a key frame: %s", device, exc)
        return False
    try:
        control = struct.pack("Ii", _V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1)
        fcntl.ioctl(fd, _VIDIOC_S_CTRL, control)
    except OSError as exc:
        logger.debug("%s cannot force a key frame: %s", device, exc)
        return False
    finally:
        os.close(fd)
    return True


class ExecSource:
    """A command writing H.264 Annex B or MJPEG to stdout, read without blocking the loop.

    H.264 is passed through; the command cannot be asked for a key frame, so configure it
    with a short key-frame interval (``rpicam-vid --intra 30``, ``ffmpeg -g 30``).
    """

    def __init__(self, config: ExecConfig, clock: MediaClock) -> None:
        if not config.command:
            raise ValueError("exec source needs a command")
        self._config = config
        self._clock = clock
        self._process: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr = bytearray()
        self._pending: deque[VideoItem] = deque()
        self._h264 = AnnexBSplitter()
        self._jpeg = JpegSplitter()
        self._parameter_sets = ParameterSetCache()
        self._decoder: SerialWorker | None = None
        self._jpeg_codec: Any = None
        self._last_pts = -VIDEO_RATE

    @property
    def name(self) -> str:
        """The command's program name."""
        return self._config.command[0]

    @property
    def passthrough(self) -> bool:
        """H.264 output is passed through; MJPEG is decoded."""
        return self._config.stream_format is StreamFormat.H264

    async def open(self) -> None:
        """Start the command; DeviceNotFoundError if it cannot be started."""
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._config.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise device_not_found(self.name, f"cannot start: {exc}") from exc
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        if not self.passthrough:
            self._decoder = SerialWorker("media-mjpeg")
            self._jpeg_codec = av.CodecContext.create("mjpeg", "r")

    async def read(self) -> VideoItem:
        """The next access unit or decoded image; DeviceNotFoundError when the command ends."""
        while not self._pending:
            await self._read_chunk()
        return self._pending.popleft()

    def request_keyframe(self) -> bool:
        """A command cannot be asked; its key-frame interval applies."""
        return False

    async def close(self) -> None:
        """Stop the command (SIGTERM, then SIGKILL) and its reader."""
        process, self._process = self._process, None
        if process is not None:
            await _stop_process(process)
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        if self._decoder is not None:
            self._decoder.shutdown()
            self._decoder = None

    async def _read_chunk(self) -> None:
        stdout = self._process.stdout if self._process is not None else None
        if stdout is None:
            raise MediaError(f"{self.name} is not running")
        chunk = await stdout.read(_READ_CHUNK)
        if not chunk:
            raise await self._exit_error()
        try:
            if self.passthrough:
                self._add_units(self._h264.feed(chunk))
            else:
                await self._add_images(self._jpeg.feed(chunk))
        except BitstreamError as exc:
            raise device_not_found(self.name, f"unreadable output: {exc}") from exc

    def _add_units(self, units: list[AccessUnit]) -> None:
        for unit in map(self._parameter_sets.apply, units):
            self._pending.append(EncodedUnit(unit.data, unit.key, self._next_pts()))

    async def _add_images(self, images: list[bytes]) -> None:
        if self._decoder is None:
            raise MediaError(f"{self.name} is not running")
        for image in images:
            try:
                frames = await self._decoder.run(self._decode_jpeg, image)
            except av.FFmpegError as exc:
                logger.warning("%s: skipping an undecodable JPEG image: %s", self.name, exc)
                continue
            self._pending.extend(stamp(frame, self._clock) for frame in frames)

    def _decode_jpeg(self, image: bytes) -> list[VideoFrame]:
        return list(self._jpeg_codec.decode(av.Packet(image)))

    def _next_pts(self) -> int:
        """Arrival time, kept increasing when several units arrive in one read."""
        min_step = VIDEO_RATE // (2 * max(1, self._config.fps))
        self._last_pts = max(self._clock.pts(VIDEO_RATE), self._last_pts + min_step)
        return self._last_pts

    async def _exit_error(self) -> Exception:
        if self._process is None:
            return device_not_found(self.name, "stopped")
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                code = await self._process.wait()
        except TimeoutError:
            return device_not_found(self.name, "closed its output")
        if self._stderr_task is not None:
            # The pipe ends with the process: read what it said last before reporting it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await asyncio.shield(self._stderr_task)
        tail = self._stderr.decode(errors="replace").strip().splitlines()[-1:]
        detail = f": {tail[0]}" if tail else ""
        return device_not_found(self.name, f"exited with code {code}{detail}")

    async def _drain_stderr(self) -> None:
        """Keep the last bytes of stderr for error messages; a full pipe would stall it."""
        stderr = self._process.stderr if self._process is not None else None
        while stderr is not None and (chunk := await stderr.read(_READ_CHUNK)):
            self._stderr += chunk
            del self._stderr[:-_STDERR_TAIL]


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def _close_container(worker: SerialWorker | None, container: InputContainer | None) -> None:
    """Close ``container`` on its own thread, then stop the thread."""
    if worker is None:
        return
    try:
        if container is not None:
            await worker.run(container.close)
    finally:
        worker.shutdown()


class PatternTrack(MediaStreamTrack):
    """aiortc's usual shape of a camera track: raw pattern frames, encoded by each sender.

    The per-viewer baseline the benchmarks compare the shared encoder against.
    """

    kind = "video"

    def __init__(self, config: TestPatternConfig) -> None:
        super().__init__()
        self._source = PatternSource(config, MediaClock())
        self._opened = False

    async def recv(self) -> Any:
        """The next frame of the pattern (an ``av.VideoFrame``)."""
        if not self._opened:
            await self._source.open()
            self._opened = True
        return await self._source.read()
