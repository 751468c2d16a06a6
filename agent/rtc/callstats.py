"""Per-call figures for metrics and ``edge-agent status``: setup times, route, RTT, bitrate.

aiortc reports RTT and bytes through ``getStats()`` (W3C webrtc-stats: remote-inbound-rtp
``roundTripTime``, outbound-rtp ``bytesSent``); the selected candidate pair is not in its
report, so the route is read from the ICE transport's nominated pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection

__all__ = ["CallFigures", "measure"]


@dataclass(frozen=True, slots=True)
class CallFigures:
    """One call, as metrics show it; ``None`` where not known (yet)."""

    cid: str
    ice_setup_seconds: float | None
    first_frame_seconds: float | None
    candidate_type: str | None
    rtt_seconds: float | None
    bytes_sent: int
    bitrate_bps: float | None


async def measure(
    pc: RTCPeerConnection,
    *,
    cid: str,
    started: float,
    ice_connected: float | None,
    first_frame: float | None,
    previous: CallFigures | None,
    previous_at: float | None,
) -> CallFigures:
    """Read one call's figures now; bitrate is the byte delta since ``previous``."""
    report = await pc.getStats()
    rtts, sent = [], 0
    for stats in report.values():
        kind = getattr(stats, "type", "")
        if kind == "remote-inbound-rtp" and getattr(stats, "roundTripTime", None) is not None:
            rtts.append(float(stats.roundTripTime))
        elif kind == "outbound-rtp":
            sent += int(getattr(stats, "bytesSent", 0) or 0)
    now = time.monotonic()
    bitrate = None
    if previous is not None and previous_at is not None and now > previous_at:
        bitrate = max(0, sent - previous.bytes_sent) * 8 / (now - previous_at)
    return CallFigures(
        cid=cid,
        ice_setup_seconds=None if ice_connected is None else ice_connected - started,
        first_frame_seconds=None if first_frame is None else first_frame - started,
        candidate_type=_route(pc),
        rtt_seconds=max(rtts) if rtts else None,
        bytes_sent=sent,
        bitrate_bps=bitrate,
    )


def _route(pc: RTCPeerConnection) -> str | None:
    """host, srflx, prflx or relay: the local side of the nominated candidate pair."""
    for transceiver in pc.getTransceivers():
        transport: Any = transceiver.sender.transport
        connection = getattr(getattr(transport, "transport", None), "_connection", None)
        nominated = getattr(connection, "_nominated", None)
        if nominated:
            pair = next(iter(nominated.values()))
            return str(pair.local_candidate.type)
    return None
