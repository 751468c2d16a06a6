"""Encoders shared by every viewer: H.264 (hardware, else libx264), VP8, Opus, JPEG.

Every method here blocks; the hub calls them on one worker thread per pipeline. Output
packets carry ``pts``/``time_base`` so aiortc's RTP sender can packetize them as they are
(RFC 6184 for H.264: Annex B with SPS/PPS before every IDR; RFC 7741 for VP8).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from av.audio.frame import AudioFrame
from av.codec.context import CodecContext
from av.packet import Packet
from av.video.frame import PictureType, VideoFrame

from agent.media.bitstream import AccessUnit, ParameterSetCache
from agent.media.config import EncoderConfig, VideoCodec
from agent.media.errors import EncoderUnavailableError
from agent.media.sources import VIDEO_TIME_BASE

__all__ = [
    "AUDIO_RATE",
    "AUDIO_TIME_BASE",
    "EncodedFrame",
    "H264Decoder",
    "OpusEncoder",
    "VideoEncoder",
    "encode_jpeg",
    "encoder_threads",
    "make_packet",
]

logger = logging.getLogger(__name__)

AUDIO_RATE = 48_000  # Opus RTP clock rate (RFC 7587)
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
_FRAME_RATE = 30  # nominal, for rate control; timestamps come from capture
_QP2LAMBDA = 118  # FF_QP2LAMBDA: ffmpeg's scale for a fixed quantizer


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded picture shared by every viewer of a codec."""

    packet: Packet[Any]
    key: bool


def make_packet(data: bytes, pts: int, time_base: Fraction) -> Packet[Any]:
    """An ``av.Packet`` as aiortc's sender expects one: payload, ``pts`` and ``time_base``."""
    packet: Packet[Any] = av.Packet(data)
    packet.pts = pts
    packet.time_base = time_base
    return packet


class VideoEncoder:
    """One encoder for one codec; opened on the first frame, reopened if the size changes."""

    def __init__(self, codec: VideoCodec, config: EncoderConfig) -> None:
        self.codec = codec
        self.name = ""
        self.encodes = 0
        self.keyframes = 0
        self._config = config
        self._bitrate = config.bitrate
        self._context: Any = None
        self._size = (0, 0)
        self._parameter_sets = ParameterSetCache()

    @property
    def bitrate(self) -> int:
        """Target bitrate in bits per second."""
        return self._bitrate

    @bitrate.setter
    def bitrate(self, value: int) -> None:
        # Neither libx264 nor libvpx through PyAV follow a bitrate change on an open
        # context, so a new bitrate takes effect by reopening (one key frame for all).
        if value != self._bitrate:
            self._bitrate = value
            self._context = None

    def encode(self, frame: VideoFrame, *, force_key: bool) -> list[EncodedFrame]:
        """Encode ``frame`` (pts in VIDEO_TIME_BASE); a forced frame comes out as an IDR."""
        if self._context is None or self._size != (frame.width, frame.height):
            self._open(frame.width, frame.height)
            force_key = True
        frame.pict_type = PictureType.I if force_key else PictureType.NONE
        self.encodes += 1
        return [self._wrap(packet, frame.pts or 0) for packet in self._context.encode(frame)]

    def close(self) -> None:
        """Drop the codec context."""
        self._context = None

    def _wrap(self, packet: Packet[Any], pts: int) -> EncodedFrame:
        data = bytes(packet)
        key = bool(packet.is_keyframe)
        if self.codec is VideoCodec.H264:
            data = self._parameter_sets.apply(AccessUnit(data, key)).data
        self.keyframes += key
        return EncodedFrame(make_packet(data, pts, VIDEO_TIME_BASE), key)

    def _open(self, width: int, height: int) -> None:
        tried: list[str] = []
        for name in self._candidates():
            tried.append(name)
            try:
                self._context = self._create(name, width, height)
            except (av.FFmpegError, ValueError) as exc:
                logger.info("encoder %s unavailable (%s), trying the next one", name, exc)
                continue
            self.name, self._size = name, (width, height)
            logger.info("%s encoder: %s %dx%d", self.codec, name, width, height)
            return
        raise EncoderUnavailableError(self.codec, tuple(tried), "none opened")

    def _candidates(self) -> list[str]:
        if self.codec is VideoCodec.VP8:
            return ["libvpx"]
        return (["h264_v4l2m2m"] if self._config.hardware else []) + ["libx264"]

    def _create(self, name: str, width: int, height: int) -> Any:
        ctx: Any = CodecContext.create(name, "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = Fraction(_FRAME_RATE, 1)
        ctx.bit_rate = self._bitrate
        ctx.gop_size = self._config.keyframe_interval
        ctx.max_b_frames = 0  # B-frames reorder output, which RTP cannot carry as-is
        ctx.thread_count = self._config.threads or encoder_threads(width * height)
        if name == "libvpx":
            ctx.qmin, ctx.qmax = 2, 56
        ctx.options = self._options(name)
        ctx.open()
        return ctx

    def _options(self, name: str) -> dict[str, str]:
        if name == "libx264":
            return {
                "preset": self._config.x264_preset,
                "tune": "zerolatency",  # no lookahead, no frame delay
                "profile": "baseline",  # profile-level-id 42e01f, every browser decodes it
                "level": "31",
                "forced-idr": "1",  # a forced key frame is an IDR, not just an I frame
                "keyint_min": str(min(self._config.keyframe_interval, 25)),
            }
        if name == "libvpx":
            # aiortc's realtime VP8 settings; minrate = maxrate = bit_rate selects CBR.
            bitrate = str(self._bitrate)
            return {
                "deadline": "realtime",
                "cpu-used": str(self._config.vp8_cpu_used),
                "lag-in-frames": "0",
                "bufsize": bitrate,
                "minrate": bitrate,
                "maxrate": bitrate,
                "noise-sensitivity": "4",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
                "overshoot-pct": "15",
            }
        return {}


def encoder_threads(pixels: int, cpus: int | None = None) -> int:
    """Encoder threads for a picture size: one up to VGA, more only with spare cores.

    FFmpeg's default (one per core) makes libvpx and libx264 spend more CPU in total on
    synchronisation than they save on a small device.
    """
    cpus = cpus or os.cpu_count() or 1
    if pixels > 1280 * 720 and cpus >= 6:
        return 4
    if pixels > 640 * 480 and cpus >= 3:
        return 2
    return 1


class H264Decoder:
    """Decodes pass-through H.264 when a snapshot or another codec needs pictures."""

    def __init__(self) -> None:
        self.decodes = 0
        self._context: Any = CodecContext.create("h264", "r")
        self._context.thread_count = 1  # see encoder_threads

    def decode(self, data: bytes, pts: int) -> list[VideoFrame]:
        """Decode one access unit; undecodable ones (missing references) give no frames."""
        self.decodes += 1
        try:
            frames: list[VideoFrame] = list(
                self._context.decode(make_packet(data, pts, VIDEO_TIME_BASE))
            )
        except av.FFmpegError as exc:
            logger.debug("pass-through H.264 did not decode: %s", exc)
            return []
        for frame in frames:
            frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
            frame.pict_type = PictureType.NONE
        return frames


class OpusEncoder:
    """One Opus encoder for every audio viewer (48 kHz stereo, 20 ms packets)."""

    def __init__(self, bitrate: int) -> None:
        self.encodes = 0
        ctx: Any = CodecContext.create("libopus", "w")
        ctx.sample_rate = AUDIO_RATE
        ctx.layout = "stereo"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.time_base = AUDIO_TIME_BASE
        ctx.options = {"application": "voip", "frame_duration": "20"}
        ctx.open()
        self._context = ctx
        self._offset: int | None = None

    def encode(self, frame: AudioFrame) -> list[Packet[Any]]:
        """Encode one 20 ms frame (pts in AUDIO_TIME_BASE)."""
        self.encodes += 1
        out = []
        for packet in self._context.encode(frame):
            if self._offset is None:
                # libopus reports its look-ahead as a negative first pts; line the
                # stream up with the capture clock instead.
                self._offset = (frame.pts or 0) - (packet.pts or 0)
            pts = (packet.pts or 0) + self._offset
            out.append(make_packet(bytes(packet), pts, AUDIO_TIME_BASE))
        return out


def encode_jpeg(frame: VideoFrame, quality: int) -> bytes:
    """A JPEG (baseline, 4:2:0) of ``frame``; ``quality`` is the mjpeg qscale, 2..31."""
    ctx: Any = CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = frame.width, frame.height
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, _FRAME_RATE)
    ctx.qscale = True
    ctx.global_quality = quality * _QP2LAMBDA
    image = frame.reformat(format="yuvj420p")
    image.pts = 0
    image.pict_type = PictureType.NONE
    packets = [*ctx.encode(image), *ctx.encode(None)]
    return b"".join(bytes(p) for p in packets)
