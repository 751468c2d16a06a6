"""Encode once, send to many: per-codec fan-out and the per-viewer tracks aiortc reads.

A ``FanoutTrack`` is what goes into ``RTCPeerConnection.addTrack``. Its ``recv()`` returns
``av.Packet``s that were encoded once for every viewer; aiortc's ``RTCRtpSender`` packs a
packet into RTP without encoding it. Each viewer has a bounded queue, so a slow viewer
drops frames alone and never stalls the encoder or the others.

aiortc 1.16 answers a viewer's PLI/FIR (RFC 4585 6.3.1, RFC 5104 4.3.1) only by flagging
its own per-sender encoder, which does not exist for packet tracks, and it applies REMB
only to that encoder. ``FanoutTrack.attach`` hooks the sender so that a PLI or FIR asks
the shared encoder for a key frame (rate limited, so viewers cannot cause a key-frame
storm) and REMB estimates reach the fan-out; it also learns the negotiated codec.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, unpack_remb_fci
from av.packet import Packet

from agent.compat import check_sender_hooks
from agent.media.config import VideoCodec
from agent.media.policy import KeyframeGate, Offer, RequestLimiter, ViewerQueue

__all__ = ["EncodedFanout", "FanoutTrack", "TrackOwner"]

logger = logging.getLogger(__name__)

check_sender_hooks()  # FanoutTrack.attach wraps two RTCRtpSender methods (see above)

_RTCP_KEYFRAME_REQUESTS = (RTCP_PSFB_PLI, RTCP_PSFB_FIR)


class TrackOwner(Protocol):
    """The pipeline behind a track: it registers viewers and serves their requests."""

    def join(self, track: FanoutTrack) -> None:
        """``track`` started reading: give it frames from now on."""

    def leave(self, track: FanoutTrack) -> None:
        """``track`` stopped: forget it."""

    def keyframe_wanted(self, track: FanoutTrack) -> None:
        """``track`` needs a key frame (joined, resyncing, or PLI/FIR)."""

    def bitrate_estimated(self, track: FanoutTrack) -> None:
        """``track.remb`` changed."""


class FanoutTrack(MediaStreamTrack):
    """One viewer's track; ``recv()`` returns shared encoded packets (``av.Packet``)."""

    def __init__(
        self,
        owner: TrackOwner,
        *,
        kind: str,
        capacity: int,
        codec: VideoCodec | None = None,
        request_interval: float = 2.0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.codec = codec
        self.sent = 0
        self.first_sent_at: float | None = None  # monotonic; time to first frame
        self.keyframe_requests = 0
        self.remb: int | None = None
        self.joined = False
        self._owner = owner
        self.keyframes_sent = 0
        self._queue: ViewerQueue[tuple[Packet[Any], bool]] = ViewerQueue(
            capacity, needs_key=kind == "video"
        )
        self._ready = asyncio.Event()
        self._limiter = RequestLimiter(request_interval)

    @property
    def dropped(self) -> int:
        """Frames this viewer dropped because it did not keep up."""
        return self._queue.dropped

    @property
    def skipped(self) -> int:
        """Frames skipped while waiting for a key frame."""
        return self._queue.skipped

    @property
    def queued(self) -> int:
        """Frames waiting for this viewer's sender."""
        return len(self._queue)

    async def recv(self) -> Packet[Any]:
        """The next encoded frame for this viewer (called by aiortc's RTP sender)."""
        if not self.joined and self.readyState == "live":
            self.joined = True
            self._owner.join(self)
            self.request_keyframe()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item = self._queue.pop()
            if item is not None:
                packet, key = item
                if self.first_sent_at is None:
                    self.first_sent_at = time.monotonic()
                self.sent += 1
                self.keyframes_sent += key
                return packet
            if self._queue.waiting_for_key:
                self.request_keyframe()  # a viewer that resumes reading after dropping
            self._ready.clear()
            await self._ready.wait()

    def deliver(self, packet: Packet[Any], *, key: bool) -> Offer:
        """Queue a shared packet for this viewer (never blocks)."""
        result = self._queue.offer((packet, key), key=key)
        if result is not Offer.WAITING_FOR_KEY:
            self._ready.set()
        return result

    def resync(self) -> None:
        """Drop what is queued and wait for the next key frame (the stream changed)."""
        self._queue.resync()

    def request_keyframe(self) -> None:
        """Ask for a key frame, at most once per this viewer's request interval."""
        if self.kind != "video":
            return
        if self._limiter.allow(asyncio.get_running_loop().time()):
            self.keyframe_requests += 1
            self._owner.keyframe_wanted(self)

    def stop(self) -> None:
        """End the track and leave the fan-out; aiortc calls this when the sender stops."""
        if self.readyState == "live":
            super().stop()
            self._ready.set()
            self._owner.leave(self)

    def attach(self, sender: RTCRtpSender) -> None:
        """Hook ``sender`` (the one this track was added with) for codec, PLI/FIR and REMB."""
        send: Callable[[RTCRtpSendParameters], Awaitable[None]] = sender.send
        handle: Callable[[Any], Awaitable[None]] = sender._handle_rtcp_packet

        async def send_hooked(parameters: RTCRtpSendParameters) -> None:
            self._negotiated(parameters)
            await send(parameters)

        async def handle_hooked(packet: Any) -> None:
            await handle(packet)
            self._feedback(packet, sender._ssrc)

        # Instance attributes shadow the methods: aiortc calls both through ``self``.
        setattr(sender, "send", send_hooked)  # noqa: B010
        setattr(sender, "_handle_rtcp_packet", handle_hooked)  # noqa: B010

    def _negotiated(self, parameters: RTCRtpSendParameters) -> None:
        if self.kind != "video" or not parameters.codecs:
            return
        codec = VideoCodec.from_mime(parameters.codecs[0].mimeType)
        if self.codec not in (None, codec):
            logger.info("viewer %s negotiated %s instead of %s", self.id, codec, self.codec)
        self.codec = codec

    def _feedback(self, packet: Any, ssrc: int) -> None:
        if not isinstance(packet, RtcpPsfbPacket) or self.readyState != "live":
            return
        if packet.fmt in _RTCP_KEYFRAME_REQUESTS:
            self.request_keyframe()
        elif packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if ssrc in ssrcs and bitrate != self.remb:
                self.remb = bitrate
                self._owner.bitrate_estimated(self)


class EncodedFanout:
    """One codec's encoded frames, handed to every joined viewer of that codec."""

    def __init__(self, name: str, *, keyframe_interval: float) -> None:
        self.name = name
        self.viewers: set[FanoutTrack] = set()
        self.gate = KeyframeGate(keyframe_interval)
        self.frames = 0
        self.keyframes = 0

    def add(self, track: FanoutTrack) -> None:
        """Start delivering to ``track``."""
        self.viewers.add(track)

    def remove(self, track: FanoutTrack) -> None:
        """Stop delivering to ``track``."""
        self.viewers.discard(track)

    def publish(self, packet: Packet[Any], *, key: bool, now: float) -> None:
        """Give ``packet`` to every viewer; none of them can block the others."""
        self.frames += 1
        if key:
            self.keyframes += 1
            self.gate.keyframe_sent(now)
        for viewer in tuple(self.viewers):
            viewer.deliver(packet, key=key)

    def resync(self) -> None:
        """Every viewer waits for the next key frame, and one is requested."""
        for viewer in self.viewers:
            viewer.resync()
        if self.viewers:
            self.gate.request()
