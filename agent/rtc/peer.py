"""Peer connections for calls, and their events in the reference's shapes.

``PeerFactory`` makes every ``RTCPeerConnection`` of a process the same way: explicit ICE
servers (never aiortc's public STUN fallback), MAX_BUNDLE (one transport, one set of
sockets, for audio, video and data), one DTLS certificate generated at start and shared by
every call, the configured transport policy, candidates gathered by
:mod:`agent.rtc.gather` (host ones where allowed, a relay on every TURN URL), remote
descriptions of ``balanced`` peers reduced to their BUNDLE transport
(:mod:`agent.rtc.bundle`), and remote mDNS names resolved before aiortc sees them
(:mod:`agent.rtc.ice`).

``watch_peer`` and ``watch_channel`` turn aiortc's events into the reference's RTC events
(``{"type": "connectionstatechange", "target": pc, "state": ...}``), delivered in order by
an :class:`EventDispatcher` that never blocks aiortc.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeAlias

from aiortc import (
    RTCBundlePolicy,
    RTCCertificate,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from agent.compat import DependencyMismatchError, check_certificate_hook
from agent.rtc.bundle import Bundle, bundle_of, sdp_with_bundle_transport
from agent.rtc.gather import GatherPlan, gather, gather_plan, local_candidates
from agent.rtc.ice import (
    IceOptions,
    IceServer,
    all_host_addresses,
    candidate_to_aiortc,
    sdp_mdns_names,
    sdp_with_hosts,
    select_host_addresses,
    system_addresses,
)
from agent.rtc.mdns import MdnsResolver, is_mdns_name
from agent.rtc.signaling import Description, IceCandidate

__all__ = [
    "EventCallback",
    "EventDispatcher",
    "PeerFactory",
    "candidate_events",
    "watch_channel",
    "watch_peer",
]

log = logging.getLogger(__name__)

EventCallback: TypeAlias = Callable[[dict[str, Any]], Awaitable[None] | None]
_MAX_PENDING_EVENTS: Final = 1024
# A callback still busy this long after its call ended is cancelled, so a stuck callback
# cannot keep a call (and its hangup) from being released.
_DRAIN_SECONDS: Final = 5.0
# aiortc 1.16 generates a certificate in RTCPeerConnection.__init__ and keeps it in this
# name-mangled attribute; it has no RTCConfiguration.certificates (W3C) to pass one in.
_CERTIFICATES_ATTR: Final = "_RTCPeerConnection__certificates"

check_certificate_hook()


class PeerFactory:
    """Makes the peer connections of every call of one process."""

    def __init__(
        self,
        options: IceOptions | None = None,
        *,
        resolver: MdnsResolver | None = None,
        video_codecs: Sequence[str] = (),
        addresses: Callable[[], list[tuple[str, str]]] = system_addresses,
    ) -> None:
        """Generate the DTLS certificate and set the ICE policy.

        Args:
            options: ICE servers, host address restriction, mDNS resolution.
            resolver: The mDNS resolver to use (default: one made from ``options``).
            video_codecs: Video codec names in order of preference (``("H264", "VP8")``).
            addresses: (interface, address) pairs of this machine (tests pass their own).
        """
        self.options = options or IceOptions()
        self.video_codecs = tuple(video_codecs)
        self.certificate = RTCCertificate.generateCertificate()
        self._addresses = addresses
        if resolver is None and self.options.mdns:
            resolver = MdnsResolver(
                interfaces=self._ipv4_interfaces(), timeout=self.options.mdns_timeout
            )
        self.resolver = resolver
        self._plans: weakref.WeakKeyDictionary[RTCPeerConnection, GatherPlan] = (
            weakref.WeakKeyDictionary()
        )
        self._bundles: weakref.WeakKeyDictionary[RTCPeerConnection, Bundle] = (
            weakref.WeakKeyDictionary()
        )

    def create(
        self, servers: Sequence[IceServer] | None = None, *, relay_only: bool | None = None
    ) -> RTCPeerConnection:
        """A peer connection with ``servers`` (default: the configured ones) and our cert.

        ``relay_only`` overrides the configured transport policy (True: ``relay``).
        """
        chosen = self.options.servers if servers is None else servers
        relay = self.options.relay_only if relay_only is None else relay_only
        configuration = RTCConfiguration(
            iceServers=[server.to_aiortc() for server in chosen],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL,
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        )
        pc = RTCPeerConnection(configuration)
        if not hasattr(pc, _CERTIFICATES_ATTR):  # checked at import; this is the proof
            raise DependencyMismatchError(
                "aiortc", "RTCPeerConnection.__certificates", user="agent.rtc.peer"
            )
        setattr(pc, _CERTIFICATES_ATTR, [self.certificate])
        self._plans[pc] = gather_plan(chosen, relay_only=relay)
        return pc

    def host_addresses(self) -> list[str] | None:
        """Where host candidates are gathered now; None: every address (aioice's choice)."""
        return select_host_addresses(self._addresses(), self.options)

    async def set_local(
        self, pc: RTCPeerConnection, description: RTCSessionDescription
    ) -> Description:
        """Gather (host candidates on the allowed addresses) and set the local description."""
        plan = self._plans.get(pc) or gather_plan(
            self.options.servers, relay_only=self.options.relay_only
        )
        addresses = self.host_addresses()
        if addresses is None:
            addresses = all_host_addresses(self._addresses(), ipv6=self.options.ipv6)
        await gather(pc, plan, addresses)
        await pc.setLocalDescription(description)
        local = pc.localDescription
        return Description(local.type, local.sdp)

    async def set_remote(self, pc: RTCPeerConnection, description: Description) -> None:
        """Set the remote description: one BUNDLE transport, mDNS candidates resolved."""
        sdp = sdp_with_bundle_transport(description.sdp)
        self._bundles[pc] = bundle_of(sdp)
        names = sdp_mdns_names(sdp) if self.resolver is not None else set()
        if names:
            addresses = await asyncio.gather(*(self._resolve(name) for name in names))
            sdp = sdp_with_hosts(sdp, dict(zip(names, addresses, strict=True)))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=description.type))

    async def resolve_candidate(self, candidate: IceCandidate) -> IceCandidate | None:
        """``candidate`` with its mDNS name resolved; None if it cannot be."""
        if self.resolver is None or not is_mdns_name(candidate.host):
            return candidate
        address = await self._resolve(candidate.host)
        return None if address is None else candidate.with_host(address)

    async def add_candidate(self, pc: RTCPeerConnection, candidate: IceCandidate) -> None:
        """Add a (resolved) remote candidate, unless it is for a transport BUNDLE drops."""
        bundle = self._bundles.get(pc)
        if bundle is not None and not bundle.carries(candidate.sdp_mid, candidate.sdp_mline_index):
            log.debug("ignored a candidate of bundled m= section %s", candidate.sdp_mid)
            return
        await pc.addIceCandidate(candidate_to_aiortc(candidate))

    def close(self) -> None:
        """Release the mDNS socket."""
        if self.resolver is not None:
            self.resolver.close()

    async def _resolve(self, name: str) -> str | None:
        if self.resolver is None:
            return None
        address = await self.resolver.resolve(name)
        if address is None:
            log.warning("dropped a remote candidate: mDNS name %s did not resolve", name)
        return address

    def _ipv4_interfaces(self) -> list[str]:
        allowed = select_host_addresses(self._addresses(), self.options)
        if allowed is None:
            return []  # the system's default multicast interface
        return [a for a in allowed if ":" not in a and not a.startswith("127.")]


class EventDispatcher:
    """Delivers RTC events to a callback (sync or async), in order, off aiortc's path."""

    def __init__(self, callback: EventCallback | None) -> None:
        self._callback = callback
        self._pending: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        if callback is not None:
            self._task = asyncio.get_running_loop().create_task(self._deliver())

    def emit(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (dropped if nobody listens or far too many are waiting)."""
        if self._task is None or self._closing:
            return
        if len(self._pending) >= _MAX_PENDING_EVENTS:
            log.warning("rtc callback is %d events behind; dropping the oldest", len(self._pending))
            self._pending.popleft()
        self._pending.append(event)
        self._wake.set()

    async def close(self, grace: float = _DRAIN_SECONDS) -> None:
        """Deliver what is queued (for at most ``grace`` seconds), then stop."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        _done, pending = await asyncio.wait([task], timeout=grace)
        if pending:
            log.warning("rtc callback still busy %.0f s after its call ended; cancelled", grace)
            task.cancel()
            await asyncio.wait([task])

    async def _deliver(self) -> None:
        callback = self._callback
        if callback is None:
            return
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            event = self._pending.popleft()
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rtc callback failed on a %s event", event.get("type"))


def _iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _ms_now() -> float:
    return asyncio.get_running_loop().time() * 1000.0


def watch_peer(pc: RTCPeerConnection, emit: Callable[[dict[str, Any]], None]) -> None:
    """Emit ``pc``'s events in the reference's shapes."""

    def states(kind: str, state: str, **others: str) -> dict[str, Any]:
        return {"type": kind, "target": pc, "timestamp": _iso_now(), "state": state, **others}

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        emit({"type": "track", "target": pc, "timeStamp": _ms_now(), "streams": [], "track": track})

    @pc.on("connectionstatechange")
    def on_connection() -> None:
        emit(
            states(
                "connectionstatechange",
                pc.connectionState,
                iceState=pc.iceConnectionState,
                signalingState=pc.signalingState,
            )
        )

    @pc.on("iceconnectionstatechange")
    def on_ice() -> None:
        emit(
            states(
                "iceconnectionstatechange",
                pc.iceConnectionState,
                gatheringState=pc.iceGatheringState,
                signalingState=pc.signalingState,
            )
        )

    @pc.on("icegatheringstatechange")
    def on_gathering() -> None:
        emit(
            states(
                "icegatheringstatechange",
                pc.iceGatheringState,
                connectionState=pc.iceConnectionState,
                signalingState=pc.signalingState,
            )
        )

    @pc.on("signalingstatechange")
    def on_signaling() -> None:
        emit(
            states(
                "signalingstatechange",
                pc.signalingState,
                connectionState=pc.iceConnectionState,
                gatheringState=pc.iceGatheringState,
            )
        )


def candidate_events(pc: RTCPeerConnection, emit: Callable[[dict[str, Any]], None]) -> None:
    """``icecandidate`` for each gathered candidate, then ``icecandidateend``.

    aiortc gathers every candidate inside ``setLocalDescription`` and puts them in the
    SDP; there is nothing to trickle, but the events say what was gathered.
    """
    for candidate in local_candidates(pc):
        emit(
            {
                "type": "icecandidate",
                "target": pc,
                "timestamp": _iso_now(),
                "candidate": "candidate:" + _candidate_sdp(candidate),
                "sdpMid": candidate.sdpMid,
                "sdpMLineIndex": candidate.sdpMLineIndex,
                "usernameFragment": None,
                "protocol": candidate.protocol,
                "gatheringState": pc.iceGatheringState,
                "connectionState": pc.iceConnectionState,
            }
        )
    emit({"type": "icecandidateend", "target": pc, "timestamp": _iso_now()})


def _candidate_sdp(candidate: Any) -> str:
    from aiortc.sdp import candidate_to_sdp

    return str(candidate_to_sdp(candidate))


def watch_channel(channel: RTCDataChannel, emit: Callable[[dict[str, Any]], None]) -> None:
    """Emit ``channel``'s events (open, message, close, bufferedamountlow, error)."""

    def base(kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "target": channel,
            "timeStamp": _ms_now(),
            "readyState": channel.readyState,
            "label": channel.label,
        }

    @channel.on("open")
    def on_open() -> None:
        emit(
            {
                **base("open"),
                "id": channel.id,
                "ordered": channel.ordered,
                "maxRetransmits": channel.maxRetransmits,
                "protocol": channel.protocol,
            }
        )

    @channel.on("message")
    def on_message(data: str | bytes) -> None:
        emit({**base("message"), "data": data, "bufferedAmount": channel.bufferedAmount})

    @channel.on("close")
    def on_close() -> None:
        emit({**base("close"), "id": channel.id})

    @channel.on("bufferedamountlow")
    def on_low() -> None:
        emit(
            {
                **base("bufferedamountlow"),
                "bufferedAmount": channel.bufferedAmount,
                "bufferedAmountLowThreshold": channel.bufferedAmountLowThreshold,
            }
        )

    @channel.on("error")
    def on_error(error: Exception) -> None:
        emit({**base("error"), "error": str(error), "errorCode": type(error).__name__})
