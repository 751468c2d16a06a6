"""The video pipeline: one capture, one encode per negotiated codec, every viewer.

Raw frames (pattern, V4L2 raw/MJPEG, exec MJPEG) are encoded once per codec that has
viewers; the encoder always takes the newest frame, so a slow encoder skips frames
instead of building latency. H.264 access units from a camera or command go to H.264
viewers untouched, and are decoded (once) only when a viewer of another codec or a
snapshot needs pictures.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.mediastreams import MediaStreamError
from av.video.frame import VideoFrame

from agent.media.config import MediaConfig, VideoCodec
from agent.media.encoders import EncodedFrame, H264Decoder, VideoEncoder, encode_jpeg, make_packet
from agent.media.errors import MediaError
from agent.media.fanout import EncodedFanout, FanoutTrack
from agent.media.pipeline import Pipeline, Session
from agent.media.policy import shared_bitrate
from agent.media.runtime import MediaClock, SerialWorker, cancel_and_wait
from agent.media.sources import VIDEO_TIME_BASE, EncodedUnit, VideoItem, VideoSource
from agent.media.supervisor import MediaEvent

__all__ = ["CodecStats", "VideoPipeline", "VideoSession"]

logger = logging.getLogger(__name__)

_GOP_LIMIT = 900  # access units kept for snapshots and late decoding (30 s at 30 fps)
_GOP_BYTES = 16 * 1024 * 1024
_DECODE_BACKLOG = 60
_BITRATE_HYSTERESIS = 0.2  # change the shared bitrate only for a 20 % difference
_BITRATE_MIN_INTERVAL = 5.0  # and at most this often: each change costs a key frame

VideoSourceFactory = Callable[[], VideoSource]


@dataclass(frozen=True, slots=True)
class CodecStats:
    """One codec's fan-out: encoder work and frames handed out."""

    codec: str
    encoder: str  # "libx264", "h264_v4l2m2m", "libvpx" or "passthrough"
    bitrate: int  # target of the shared encoder (REMB adaptation may lower it)
    encodes: int
    frames: int
    keyframes: int
    forced_keyframes: int
    viewers: int


@dataclass
class _Job:
    encoder: VideoEncoder
    force_key: bool
    bitrate: int | None


@dataclass
class _Counters:
    frames: int = 0  # raw frames captured or decoded
    skipped: int = 0  # replaced by a newer frame before the encoder took them
    units: int = 0  # pass-through access units
    decodes: int = 0
    encode_errors: int = 0
    bitrates: dict[VideoCodec, int] = field(default_factory=dict)


class VideoPipeline(Pipeline["VideoSession"]):
    """Video for every viewer: leases, fan-outs per codec, and the capture session."""

    def __init__(
        self,
        config: MediaConfig,
        *,
        clock: MediaClock,
        primary: VideoSourceFactory,
        fallback: VideoSourceFactory | None,
        on_event: Callable[[MediaEvent], None],
    ) -> None:
        super().__init__(media="video", linger=config.fanout.linger_seconds, on_event=on_event)
        self._config = config
        self._clock = clock
        self._primary = primary
        self._fallback = fallback
        self.fanouts: dict[VideoCodec, EncodedFanout] = {}

    @property
    def session(self) -> VideoSession | None:
        """The running capture session, if any."""
        return self._session

    def subscribe(self, codec: VideoCodec | None) -> FanoutTrack:
        """A new viewer's track; the capture starts now so the first frame is ready early."""
        track = FanoutTrack(
            self,
            kind="video",
            capacity=self._config.fanout.video_queue,
            codec=codec,
            request_interval=self._config.fanout.viewer_keyframe_interval,
        )
        self.acquire()
        return track

    def join(self, track: FanoutTrack) -> None:
        """The viewer's sender started reading: deliver from the next key frame."""
        if track.codec is None:
            logger.error("video track %s has no codec: subscribe with one or attach() it", track.id)
            raise MediaStreamError("video track has no negotiated codec")
        self._fanout(track.codec).add(track)

    def leave(self, track: FanoutTrack) -> None:
        """The viewer is gone."""
        if track.codec is not None and track.codec in self.fanouts:
            self.fanouts[track.codec].remove(track)
        self.release()

    def keyframe_wanted(self, track: FanoutTrack) -> None:
        """Ask for a key frame for ``track``'s codec (rate limited by the gate)."""
        if track.codec is not None:
            self.request_keyframe(track.codec)

    def request_keyframe(self, codec: VideoCodec | None = None) -> None:
        """Force a key frame soon for ``codec`` (every codec if None)."""
        for name, fanout in self.fanouts.items():
            if codec in (None, name):
                fanout.gate.request()
        if self._session is not None and codec in (None, VideoCodec.H264):
            self._session.ask_source_for_keyframe()

    def bitrate_estimated(self, track: FanoutTrack) -> None:
        """A viewer's REMB changed; maybe move the shared bitrate."""
        if self._session is None or track.codec is None or not self._config.fanout.adapt_bitrate:
            return
        estimates = [v.remb for v in self.fanouts[track.codec].viewers if v.remb is not None]
        self._session.adapt_bitrate(track.codec, estimates)

    async def snapshot(self) -> bytes:
        """A JPEG of the current picture (opens the capture for it if needed)."""
        self.acquire()
        try:
            session = self._session
            if session is None:
                raise MediaError("video capture did not start")
            # Long enough for a device to fail and the fallback to deliver.
            async with asyncio.timeout(2 * self._config.fanout.source_timeout + 1):
                return await session.snapshot()
        finally:
            self.release()

    def codec_stats(self) -> list[CodecStats]:
        """Per-codec figures."""
        session = self._session
        return [
            CodecStats(
                codec=str(codec),
                encoder=session.encoder_name(codec) if session else "",
                bitrate=session.bitrate(codec) if session else self._config.encoder.bitrate,
                encodes=session.encodes(codec) if session else 0,
                frames=fanout.frames,
                keyframes=fanout.keyframes,
                forced_keyframes=fanout.gate.forced,
                viewers=len(fanout.viewers),
            )
            for codec, fanout in self.fanouts.items()
        ]

    def _fanout(self, codec: VideoCodec) -> EncodedFanout:
        if codec not in self.fanouts:
            interval = self._config.fanout.keyframe_min_interval
            self.fanouts[codec] = EncodedFanout(str(codec), keyframe_interval=interval)
        return self.fanouts[codec]

    def _new_session(self) -> VideoSession:
        return VideoSession(self, self._config, self._clock, self._primary, self._fallback)


class VideoSession(Session[VideoItem, VideoSource]):
    """One capture run: supervisor, encoder thread, encoders and the pass-through path."""

    def __init__(
        self,
        pipeline: VideoPipeline,
        config: MediaConfig,
        clock: MediaClock,
        primary: VideoSourceFactory,
        fallback: VideoSourceFactory | None,
    ) -> None:
        super().__init__(
            media="video",
            config=config,
            clock=clock,
            primary=primary,
            fallback=fallback,
            on_event=pipeline._emit,
        )
        self._pipeline = pipeline
        self._config = config
        self._worker = SerialWorker("media-video")
        self._encoders: dict[VideoCodec, VideoEncoder] = {}
        self._decoder: H264Decoder | None = None
        self._latest: VideoFrame | None = None
        self._frame_ready = asyncio.Event()
        self._gop: list[EncodedUnit] = []
        self._gop_bytes = 0
        self._backlog: deque[EncodedUnit] = deque()
        self._decoding = False
        self._decoder_reset = False
        self._decode_ready = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._last_bitrate_change = -_BITRATE_MIN_INTERVAL
        self._tasks: list[asyncio.Task[None]] = []
        self.counters = _Counters()

    @property
    def passthrough(self) -> bool:
        """The current source delivers H.264 that goes to viewers untouched."""
        return self._source is not None and self._source.passthrough

    def start(self) -> None:
        """Start the capture, encode and decode tasks."""
        for coro in (self.supervisor.run(), self._encode_loop(), self._decode_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        """Stop capturing and free the encoders."""
        for task in self._tasks:
            await cancel_and_wait(task)
        for waiter in self._waiters:
            waiter.cancel()
        encoders = list(self._encoders.values())
        try:
            await self._worker.run(_close_encoders, encoders)
        finally:
            self._worker.shutdown()

    def encoder_name(self, codec: VideoCodec) -> str:
        """What produces ``codec`` now."""
        if codec is VideoCodec.H264 and self.passthrough:
            return "passthrough"
        encoder = self._encoders.get(codec)
        return encoder.name if encoder is not None else ""

    def bitrate(self, codec: VideoCodec) -> int:
        """Target bitrate of ``codec``'s encoder."""
        return self.counters.bitrates.get(codec, self._config.encoder.bitrate)

    def encodes(self, codec: VideoCodec) -> int:
        """Frames ``codec``'s encoder has encoded in this session."""
        encoder = self._encoders.get(codec)
        return encoder.encodes if encoder is not None else 0

    def ask_source_for_keyframe(self) -> None:
        """Pass-through sources make their own key frames; ask the device if it can."""
        if self._source is not None and self.passthrough:
            self._source.request_keyframe()

    def adapt_bitrate(self, codec: VideoCodec, estimates: list[int]) -> None:
        """Follow the slowest reasonable viewer, with hysteresis (each change reopens)."""
        fanout_config, configured = self._config.fanout, self._config.encoder.bitrate
        target = shared_bitrate(estimates, configured=configured, floor=fanout_config.min_bitrate)
        current = self.counters.bitrates.get(codec, configured)
        now = asyncio.get_running_loop().time()
        if abs(target - current) / current <= _BITRATE_HYSTERESIS:
            return
        if now - self._last_bitrate_change < _BITRATE_MIN_INTERVAL:
            return
        logger.info("%s shared bitrate %d -> %d bit/s", codec, current, target)
        self.counters.bitrates[codec] = target
        self._last_bitrate_change = now

    async def snapshot(self) -> bytes:
        """JPEG of the newest picture."""
        quality = self._config.encoder.jpeg_quality
        while True:
            if self.passthrough and self._gop:
                frame = await self._worker.run(_decode_last, list(self._gop))
            else:
                frame = None if self.passthrough else self._latest
            if frame is not None:
                return await self._worker.run(encode_jpeg, frame, quality)
            await self._next_item()

    def _deliver(self, item: VideoItem, source: VideoSource) -> None:
        if source is not self._source:
            self._switch_to(source)
        if isinstance(item, EncodedUnit):
            self._on_unit(item)
        else:
            self._on_frame(item)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def _switch_to(self, source: VideoSource) -> None:
        """A different source: every viewer restarts at a key frame of the new stream."""
        self._source = source
        self._gop.clear()
        self._gop_bytes = 0
        self._backlog.clear()
        self._decoding = False
        self._decoder_reset = True
        self._latest = None
        for fanout in self._pipeline.fanouts.values():
            fanout.resync()
        self.ask_source_for_keyframe()

    def _on_frame(self, frame: VideoFrame) -> None:
        self.counters.frames += 1
        if self._frame_ready.is_set():
            self.counters.skipped += 1
        self._latest = frame
        self._frame_ready.set()

    def _on_unit(self, unit: EncodedUnit) -> None:
        self.counters.units += 1
        self._keep_gop(unit)
        fanout = self._pipeline.fanouts.get(VideoCodec.H264)
        if fanout is not None and fanout.viewers:
            packet = make_packet(unit.data, unit.pts, VIDEO_TIME_BASE)
            fanout.publish(packet, key=unit.key, now=asyncio.get_running_loop().time())
        self._queue_decode(unit)

    def _keep_gop(self, unit: EncodedUnit) -> None:
        """Units since the last IDR: enough to decode the current picture on demand."""
        if unit.key:
            self._gop, self._gop_bytes = [], 0
        elif not self._gop:
            return  # no IDR seen yet: nothing decodable to keep
        self._gop.append(unit)
        self._gop_bytes += len(unit.data)
        if len(self._gop) > _GOP_LIMIT or self._gop_bytes > _GOP_BYTES:
            self._gop, self._gop_bytes = [], 0

    def _queue_decode(self, unit: EncodedUnit) -> None:
        if not self._decode_wanted():
            self._decoding = False
            self._backlog.clear()
            return
        if not self._decoding:
            if not self._gop or len(self._gop) > _DECODE_BACKLOG:
                return  # start at the next IDR rather than decode a long way to catch up
            self._decoding = True
            self._decoder_reset = True
            self._backlog.extend(self._gop)  # catch up from the last IDR (includes ``unit``)
        elif len(self._backlog) >= _DECODE_BACKLOG:
            self._backlog.clear()  # decoder overloaded: start again from an IDR
            self._decoding = False
        else:
            self._backlog.append(unit)
        self._decode_ready.set()

    def _decode_wanted(self) -> bool:
        return any(
            fanout.viewers
            for codec, fanout in self._pipeline.fanouts.items()
            if codec is not VideoCodec.H264
        )

    async def _decode_loop(self) -> None:
        while True:
            await self._decode_ready.wait()
            self._decode_ready.clear()
            units = list(self._backlog)
            self._backlog.clear()
            if not units:
                continue
            reset, self._decoder_reset = self._decoder_reset, False
            try:
                frame = await self._worker.run(self._decode_blocking, units, reset)
            except Exception:
                logger.exception("pass-through decoding failed")
                continue
            if frame is not None:
                self._on_frame(frame)

    def _decode_blocking(self, units: list[EncodedUnit], reset: bool) -> VideoFrame | None:
        if reset or self._decoder is None:
            self._decoder = H264Decoder()
        frames: list[VideoFrame] = []
        for unit in units:
            frames = self._decoder.decode(unit.data, unit.pts) or frames
        self.counters.decodes = self._decoder.decodes
        return frames[-1] if frames else None

    async def _encode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._frame_ready.wait()
            self._frame_ready.clear()
            frame, jobs = self._latest, self._jobs(loop.time())
            if frame is None or not jobs:
                continue
            try:
                results = await self._worker.run(_encode_blocking, frame, jobs)
            except Exception as exc:
                self._encode_failed(exc)
                continue
            now = loop.time()
            for codec, frames in results:
                for encoded in frames:
                    self._pipeline.fanouts[codec].publish(encoded.packet, key=encoded.key, now=now)

    def _jobs(self, now: float) -> list[_Job]:
        jobs = []
        for codec, fanout in self._pipeline.fanouts.items():
            if not fanout.viewers or (codec is VideoCodec.H264 and self.passthrough):
                continue
            encoder = self._encoders.get(codec)
            if encoder is None:
                encoder = self._encoders[codec] = VideoEncoder(codec, self._config.encoder)
            jobs.append(_Job(encoder, fanout.gate.take(now), self.counters.bitrates.get(codec)))
        return jobs

    def _encode_failed(self, exc: Exception) -> None:
        self.counters.encode_errors += 1
        if self.counters.encode_errors in (1, 10, 100, 1000):
            logger.error("video encoding failed (%d times): %s", self.counters.encode_errors, exc)

    async def _next_item(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


def _encode_blocking(
    frame: VideoFrame, jobs: list[_Job]
) -> list[tuple[VideoCodec, list[EncodedFrame]]]:
    """Encode ``frame`` once per codec (on the session's worker thread)."""
    if frame.format.name != "yuv420p":
        converted = frame.reformat(format="yuv420p")
        converted.pts, converted.time_base = frame.pts, frame.time_base
        frame = converted
    results = []
    for job in jobs:
        if job.bitrate is not None:
            job.encoder.bitrate = job.bitrate
        results.append((job.encoder.codec, job.encoder.encode(frame, force_key=job.force_key)))
    return results


def _decode_last(units: list[EncodedUnit]) -> VideoFrame | None:
    """The picture at the end of ``units`` (which start at an IDR), with a fresh decoder."""
    decoder = H264Decoder()
    frames: list[VideoFrame] = []
    for unit in units:
        frames = decoder.decode(unit.data, unit.pts) or frames
    return frames[-1] if frames else None


def _close_encoders(encoders: list[VideoEncoder]) -> None:
    for encoder in encoders:
        encoder.close()
