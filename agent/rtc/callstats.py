"""Per-call figures for metrics and ``edge-agent status``: setup times, route, RTT, bitrate.

aiortc reports RTT and bytes through ``getStats()`` (W3C webrtc-stats: remote-inbound-rtp
``roundTripTime``, outbound-rtp ``bytesSent``); the selected candidate pair is not in its
report, so the route is read from the ICE transport's nominated pair.

The route is named by how the media travels: ``relay`` when either end of the pair is a
TURN relay (a viewer on mobile data relays while the device answers from its own address;
the media crosses the relay all the same), else the device's own candidate type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aioice.turn import TurnClientTcpProtocol
from aiortc import RTCPeerConnection

from agent.compat import check_pair_hooks

__all__ = ["CallFigures", "measure", "route_of"]

check_pair_hooks()  # the route is read from aioice's nominated pair (see _pair_types)


@dataclass(frozen=True, slots=True)
class CallFigures:
    """One call, as metrics show it; ``None`` where not known (yet)."""

    cid: str
    ice_setup_seconds: float | None
    first_frame_seconds: float | None
    candidate_type: str | None  # the route: relay if either end relays, else the local type
    rtt_seconds: float | None
    bytes_sent: int
    bitrate_bps: float | None
    local_candidate_type: str | None = None
    remote_candidate_type: str | None = None
    relay_protocol: str | None = None  # udp, tcp or tls: how our own relay is reached


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
    local, remote, relay_protocol = _pair_types(pc)
    return CallFigures(
        cid=cid,
        ice_setup_seconds=None if ice_connected is None else ice_connected - started,
        first_frame_seconds=None if first_frame is None else first_frame - started,
        candidate_type=route_of(local, remote),
        rtt_seconds=max(rtts) if rtts else None,
        bytes_sent=sent,
        bitrate_bps=bitrate,
        local_candidate_type=local,
        remote_candidate_type=remote,
        relay_protocol=relay_protocol,
    )


def route_of(local: str | None, remote: str | None) -> str | None:
    """The route's name: relay if either end relays, else the local candidate type."""
    return "relay" if "relay" in (local, remote) else local


def _pair_types(pc: RTCPeerConnection) -> tuple[str | None, str | None, str | None]:
    """(local, remote) candidate types of the nominated pair (host, srflx, prflx, relay),
    and the transport to our TURN server when the local one is a relay."""
    transports: list[Any] = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:  # a call with data channels only
        transports.append(pc.sctp.transport)
    for transport in transports:
        connection = getattr(getattr(transport, "transport", None), "_connection", None)
        nominated = getattr(connection, "_nominated", None)
        if nominated:
            pair = next(iter(nominated.values()))
            local = str(pair.local_candidate.type)
            relay = _turn_transport(pair.protocol) if local == "relay" else None
            return local, str(pair.remote_candidate.type), relay
    return None, None, None


def _turn_transport(protocol: Any) -> str | None:
    # aioice keeps the TURN client protocol in a private attribute of its TurnTransport.
    inner = getattr(protocol.transport, "_TurnTransport__inner_protocol", None)
    if inner is None:
        return None
    if not isinstance(inner, TurnClientTcpProtocol):
        return "udp"
    return "tls" if inner.transport.get_extra_info("sslcontext") is not None else "tcp"
