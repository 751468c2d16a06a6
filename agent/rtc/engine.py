"""Calls over one realtime connection: the I/O around the pure :class:`Switchboard`.

``RtcEngine`` feeds ``#rtc`` frames and local decisions to the switchboard and carries out
its effects: frames go out in order through one outbox; descriptions and candidates are
applied to a call's peer connection one at a time (a lock per call); a remote mDNS
candidate is resolved on its own task, so a slow name never holds up the others.

Placing a call (the reference's ``connectRTC``)::

    connector = await engine.dial("cid:...", media={"video": False, "audio": False})
    connection = await connector.connection      # resolves on pickup
    connection.target, connection.channels["default"], connection.hangup()

Answering: each new offer rings through ``on_incoming(IncomingCall)``; the application
calls ``await incoming.connect_rtc(...)`` (answer, then pickup) or ``incoming.hangup()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final, TypeVar

from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpTransceiver

from agent.errors import Codes, RealtimeError
from agent.protocol import CID_PREFIX, HubFrame
from agent.rtc.calls import IncomingCall, RtcConnection, RtcConnector, _Call
from agent.rtc.channels import ChannelSpec, channel_specs
from agent.rtc.errors import CallEndedError
from agent.rtc.ice import CallIce, IceServer, ice_servers
from agent.rtc.media import (
    KINDS,
    Attachable,
    LocalMedia,
    MediaDevices,
    NoMediaDevices,
    OfferMedia,
    codec_preferences,
    media_request,
    offer_media,
)
from agent.rtc.peer import (
    EventCallback,
    EventDispatcher,
    PeerFactory,
    candidate_events,
    watch_channel,
    watch_peer,
)
from agent.rtc.signaling import (
    AddCandidates,
    ApplyAnswer,
    ApplyOffer,
    CallState,
    Closed,
    CloseReason,
    Description,
    Effect,
    IceCandidate,
    Ignored,
    PickedUp,
    Ring,
    Role,
    Send,
    SignalingLimits,
    Switchboard,
)

__all__ = ["IncomingCall", "RtcConnection", "RtcConnector", "RtcEngine", "SendFn"]


log = logging.getLogger(__name__)

SendFn = Callable[[str, dict[str, Any]], Awaitable[None]]
_T = TypeVar("_T")
# The other side closes its channels and peer connection right after sending ``hungup``;
# their closing often arrives first (straight over UDP, not through the hub). Wait this
# long for the ``hungup`` before treating the closing as a hang-up without a word.
_HANGUP_GRACE: Final = 2.0
_HUNGUP_SEND_WAIT: Final = 2.0  # before closing, let our own ``hungup`` reach the hub
_DIRECTIONS: Final = {
    (True, True): "sendrecv",
    (True, False): "sendonly",
    (False, True): "recvonly",
    (False, False): "inactive",
}


class RtcEngine:
    """Every call of one realtime connection."""

    def __init__(
        self,
        send: SendFn,
        *,
        local_id: str,
        factory: PeerFactory,
        media_devices: MediaDevices | None = None,
        on_incoming: Callable[[IncomingCall], None] | None = None,
        on_closed: Callable[[str, str | None, dict[str, Any]], None] | None = None,
        ring_timeout: float = 60.0,
        limits: SignalingLimits | None = None,
        ice_source: Callable[[], Awaitable[CallIce]] | None = None,
    ) -> None:
        """Prepare the engine; it does nothing until a frame or a dial.

        Args:
            send: Sends an ``rtc`` content to a connection (``client.send_rtc``).
            local_id: This side's user id (the value of ``pickup`` and ``hungup``).
            factory: Makes the peer connections.
            media_devices: This side's devices, for ``media`` flags.
            on_incoming: Called with each new ringing call.
            on_closed: Called with (cid, user_id, content) when the other side hangs up.
            ring_timeout: Seconds a call may ring before it is refused.
            limits: Bounds on buffered signaling.
            ice_source: The ICE servers and policy of a call that names none (the hub's,
                :class:`agent.rtc.ice.HubIceServers`); default: the factory's.
        """
        self._send = send
        self.factory = factory
        self.media_devices: MediaDevices = media_devices or NoMediaDevices()
        self.on_incoming = on_incoming
        self.on_closed = on_closed
        self._ring_timeout = ring_timeout
        self._ice_source = ice_source
        self._board = Switchboard(local_id, limits)
        self._calls: dict[str, _Call] = {}
        self._outbox: deque[tuple[str, dict[str, Any], asyncio.Future[None]]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def calls(self) -> dict[str, CallState]:
        """The state of every call, by remote connection id."""
        return {cid: machine.state for cid, machine in self._board.calls.items()}

    # -- input -----------------------------------------------------------------------------

    def handle_frame(self, frame: HubFrame) -> None:
        """One ``#rtc`` frame from the hub (called on the reader: never blocks)."""
        if not frame.scid:
            log.info("dropped an rtc frame without a sender connection")
            return
        cid = CID_PREFIX + frame.scid
        call = self._calls.get(cid)
        if call is not None and call.user_id is None:
            call.user_id = frame.user_id  # a dialled call learns who answered
        self._run(self._board.receive(cid, frame.user_id, frame.content))

    async def dial(
        self,
        cid: str,
        *,
        ice: Any = None,
        media: Any = None,
        channels: Any = None,
        callback: EventCallback | None = None,
    ) -> RtcConnector:
        """Place a call to connection ``cid``; returns once the offer is sent.

        Raises:
            RealtimeError: INVALID_REQUEST for a duplicate channel protocol or a call
                with ``cid`` already going on; DEVICE_NOT_FOUND for missing local media;
                INVALID_PARAMETER for bad options; the send's error if the offer cannot go.
        """
        cid = _cid(cid)
        specs = channel_specs(channels)
        chosen = ice_servers(ice, self.factory.options.servers)
        request = media_request(media, self.media_devices)
        if cid in self._board.calls:
            raise RealtimeError(Codes.INVALID_REQUEST, f"A call with {cid} is already going on.")
        call_ice = await self._call_ice(ice, chosen)
        if self._board.dial(cid) is None:
            raise RealtimeError(Codes.INVALID_REQUEST, f"A call with {cid} is already going on.")
        call = self._calls[cid] = _Call(self, cid, None, Role.CALLER)
        try:
            pc = self.factory.create(call_ice.servers, relay_only=call_ice.relay_only)
            pc = self._setup(call, pc, callback, request.local)
            for kind in request.kinds:
                track = request.local.track(kind) if request.local is not None else None
                self._transceiver(pc, kind, track, "sendrecv" if track else "recvonly")
            for spec in specs:
                self._add_channel(call, _create_channel(pc, spec))
            async with call.lock:
                local = await self.factory.set_local(pc, await pc.createOffer())
            candidate_events(pc, call.events.emit)
            await asyncio.gather(*self._run(self._board.offer_ready(cid, local)))
        except BaseException:
            self.hangup(cid)
            raise
        return RtcConnector(call)

    async def accept(
        self,
        call: _Call,
        *,
        ice: Any,
        media: Any,
        callback: EventCallback | None,
        receive: Iterable[str] | None,
    ) -> RtcConnection:
        """Take the ringing ``call`` (see :meth:`IncomingCall.connect_rtc`)."""
        chosen = ice_servers(ice, self.factory.options.servers)
        call_ice = await self._call_ice(ice, chosen)  # first: the call may end meanwhile
        machine = self._board.calls.get(call.cid)
        if machine is None or machine.state is not CallState.RINGING or machine.offer is None:
            raise RealtimeError(Codes.INVALID_REQUEST, f"The call from {call.cid} is not ringing.")
        try:
            offer = offer_media(machine.offer.sdp)
        except ValueError as exc:
            self._run(self._board.fail(call.cid))
            raise RealtimeError(Codes.INVALID_REQUEST, str(exc)) from exc
        request = media_request(media, self.media_devices)
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        try:
            self._prepare_answer(
                call,
                offer,
                self.factory.create(call_ice.servers, relay_only=call_ice.relay_only),
                callback=callback,
                local=request.local,
                receive=set(KINDS if receive is None else receive),
            )
        except BaseException:
            self.hangup(call.cid)
            raise
        self._run(self._board.accept(call.cid))
        return await asyncio.shield(call.up)

    async def _call_ice(self, ice: Any, chosen: list[IceServer]) -> CallIce:
        """The call's servers: those given (``ice``), else the source's, else the factory's."""
        relay_only = self.factory.options.relay_only
        if ice is not None or self._ice_source is None:
            return CallIce(tuple(chosen), relay_only)
        return await self._ice_source()

    def _prepare_answer(
        self,
        call: _Call,
        offer: OfferMedia,
        pc: RTCPeerConnection,
        *,
        callback: EventCallback | None,
        local: LocalMedia | None,
        receive: set[str],
    ) -> None:
        # Transceivers made before the offer is applied take its m-lines (aiortc matches
        # the first free one of each kind), with our tracks and codec preferences.
        self._setup(call, pc, callback, local)
        for kind in offer.kinds:
            track = local.track(kind) if local is not None else None
            sending = track is not None and kind in offer.wants
            receiving = kind in offer.sends and kind in receive
            self._transceiver(pc, kind, track if sending else None, _DIRECTIONS[sending, receiving])

    def hangup(self, cid: str) -> asyncio.Task[None]:
        """End call ``cid`` from this side; the task ends once it is released."""
        cid = _cid(cid)
        call = self._calls.get(cid)
        sends = self._run(self._board.hangup(cid))
        return asyncio.get_running_loop().create_task(self._hung_up(sends, call))

    async def close(self) -> None:
        """Hang up every call, send what is queued, and stop."""
        hangups = [self.hangup(cid) for cid in list(self._board.calls)]
        if hangups:
            await asyncio.gather(*hangups, return_exceptions=True)
        for task in list(self._releases):
            await task
        await self._drain_outbox()

    # -- effects ---------------------------------------------------------------------------

    def _run(self, effects: list[Effect]) -> list[asyncio.Future[None]]:
        """Carry out ``effects``; the futures of the frames they send."""
        sent: list[asyncio.Future[None]] = []
        for effect in effects:
            match effect:
                case Send(cid=cid, content=content):
                    sent.append(self._queue_send(cid, content))
                    call = self._calls.get(cid)
                    if call is not None and "hungup" in content:
                        call.last_words.append(sent[-1])
                case Ring(cid=cid, user_id=user_id):
                    self._ring(cid, user_id)
                case ApplyOffer(cid=cid, description=description):
                    self._spawn(cid, self._apply_offer, description)
                case ApplyAnswer(cid=cid, description=description):
                    self._spawn(cid, self._apply_answer, description)
                case AddCandidates(cid=cid, candidates=candidates):
                    for candidate in candidates:
                        self._spawn(cid, self._add_candidate, candidate)
                case PickedUp(cid=cid):
                    self._picked_up(cid)
                case Closed(cid=cid, reason=reason):
                    self._closed(cid, reason)
                case Ignored(cid=cid, reason=reason):
                    log.info("rtc from %s ignored: %s", cid, reason)
        return sent

    def _spawn(
        self, cid: str, work: Callable[[_Call, _T], Coroutine[Any, Any, None]], arg: _T
    ) -> None:
        call = self._calls.get(cid)
        if call is None or call.closing:
            return
        task = asyncio.get_running_loop().create_task(work(call, arg))
        call.tasks.add(task)
        task.add_done_callback(call.tasks.discard)

    def _ring(self, cid: str, user_id: str | None) -> None:
        call = self._calls[cid] = _Call(self, cid, user_id, Role.CALLEE)
        call.ring_timer = asyncio.get_running_loop().call_later(
            self._ring_timeout, self._ring_expired, cid
        )
        machine = self._board.calls[cid]
        offer = None
        if machine.offer is not None:
            with contextlib.suppress(ValueError):
                offer = offer_media(machine.offer.sdp)
        incoming = IncomingCall(call, offer)
        if self.on_incoming is None:
            log.info("nobody takes calls here; refusing the call from %s", cid)
            self.hangup(cid)
            return
        try:
            self.on_incoming(incoming)
        except Exception:
            log.exception("the incoming call handler failed; refusing the call from %s", cid)
            self.hangup(cid)

    def _ring_expired(self, cid: str) -> None:
        machine = self._board.calls.get(cid)
        if machine is not None and machine.state is CallState.RINGING:
            log.info("call from %s rang %.0f s unanswered; refusing it", cid, self._ring_timeout)
            self._run(self._board.reject(cid))

    async def _apply_offer(self, call: _Call, offer: Description) -> None:
        pc = call.peer
        try:
            async with call.lock:
                await self.factory.set_remote(pc, offer)
                local = await self.factory.set_local(pc, await pc.createAnswer())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("call from %s: the offer could not be answered: %s", call.cid, exc)
            self._run(self._board.fail(call.cid))
            return
        self._run(self._board.answer_ready(call.cid, local))

    async def _apply_answer(self, call: _Call, answer: Description) -> None:
        pc = call.peer
        try:
            async with call.lock:
                await self.factory.set_remote(pc, answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("call to %s: the answer could not be applied: %s", call.cid, exc)
            self._run(self._board.fail(call.cid))
            return
        self._run(self._board.answer_applied(call.cid))

    async def _add_candidate(self, call: _Call, candidate: IceCandidate) -> None:
        resolved = await self.factory.resolve_candidate(candidate)
        if resolved is None or call.pc is None:
            return
        async with call.lock:
            try:
                await self.factory.add_candidate(call.pc, resolved)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a candidate aiortc cannot use harms nothing else
                log.info("call with %s: candidate refused: %s", call.cid, exc)

    def _picked_up(self, cid: str) -> None:
        call = self._calls.get(cid)
        if call is not None and not call.up.done():
            call.up.set_result(RtcConnection(call))

    def _closed(self, cid: str, reason: CloseReason) -> None:
        call = self._calls.pop(cid, None)
        if call is None:
            return
        call.reason = reason
        log.info("call %s %s: %s", call.role.value, cid, reason.value)
        for timer in (call.ring_timer, call.grace):
            if timer is not None:
                timer.cancel()
        if not call.up.done():
            call.up.set_exception(CallEndedError(cid, reason.value))
            call.up.exception()  # retrieved: nobody may be waiting for it
        release = asyncio.get_running_loop().create_task(self._release(call))
        call.release = release
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)
        if reason is CloseReason.REMOTE and self.on_closed is not None:
            try:
                self.on_closed(cid, call.user_id, {"hungup": call.user_id or True})
            except Exception:
                log.exception("the rtc:closed handler failed")

    async def _release(self, call: _Call) -> None:
        for task in list(call.tasks):
            task.cancel()
        if call.tasks:
            await asyncio.wait(list(call.tasks))
        if call.last_words:
            await asyncio.wait(call.last_words, timeout=_HUNGUP_SEND_WAIT)
        for channel in list(call.channels.values()):
            with contextlib.suppress(Exception):
                channel.close()
        if call.local is not None:
            call.local.stop()
        if call.pc is not None:
            try:
                await call.pc.close()
            except Exception:
                log.exception("closing the peer connection of %s failed", call.cid)
        await call.events.close()
        call.done.set()

    async def _hung_up(self, sends: list[asyncio.Future[None]], call: _Call | None) -> None:
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)
        if call is not None and call.release is not None:
            await call.release

    # -- peer connections ------------------------------------------------------------------

    def _setup(
        self,
        call: _Call,
        pc: RTCPeerConnection,
        callback: EventCallback | None,
        local: LocalMedia | None,
    ) -> RTCPeerConnection:
        call.pc, call.local = pc, local
        call.events = EventDispatcher(callback)
        watch_peer(pc, call.events.emit)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "failed":
                self._run(self._board.fail(call.cid))
            elif pc.connectionState == "closed":
                self._end_soon(call)  # the other side closed its end

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            self._add_channel(call, channel)
            call.events.emit(
                {"type": "datachannel", "target": pc, "channel": channel, "label": channel.label}
            )

        return pc

    def _transceiver(
        self,
        pc: RTCPeerConnection,
        kind: str,
        track: Any,
        direction: str,
    ) -> RTCRtpTransceiver:
        transceiver = pc.addTransceiver(track if track is not None else kind, direction)
        if kind == "video" and self.factory.video_codecs:
            transceiver.setCodecPreferences(codec_preferences(self.factory.video_codecs))
        if isinstance(track, Attachable):
            track.attach(transceiver.sender)
        return transceiver

    def _add_channel(self, call: _Call, channel: RTCDataChannel) -> None:
        call.channels[channel.label] = channel
        watch_channel(channel, call.events.emit)

        @channel.on("open")
        def on_open() -> None:
            call.channels_opened += 1

        @channel.on("close")
        def on_close() -> None:
            if call.channels.get(channel.label) is channel:
                del call.channels[channel.label]
            # The reference ends a call whose data channels have all closed.
            if call.channels_opened and not call.channels:
                self._end_soon(call)

    def _end_soon(self, call: _Call) -> None:
        """Hang up after a grace period, unless the other side's ``hungup`` comes first."""
        if call.closing or call.grace is not None:
            return
        loop = asyncio.get_running_loop()
        call.grace = loop.call_later(_HANGUP_GRACE, lambda: self._run(self._board.hangup(call.cid)))

    # -- outbox ----------------------------------------------------------------------------

    def _queue_send(self, cid: str, content: dict[str, Any]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._outbox.append((cid, content, future))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_loop())
        return future

    async def _send_loop(self) -> None:
        while self._outbox:
            cid, content, future = self._outbox.popleft()
            try:
                await self._send(cid, content)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                log.warning("rtc %s to %s not sent: %s", "/".join(content), cid, exc)
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved here; whoever awaits it still sees it
            else:
                if not future.done():
                    future.set_result(None)

    async def _drain_outbox(self) -> None:
        sender = self._sender
        if sender is not None and not sender.done():
            await asyncio.wait([sender])


def _cid(cid: Any) -> str:
    if not isinstance(cid, str) or not cid.startswith(CID_PREFIX) or len(cid) <= len(CID_PREFIX):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"cid" should be a valid connection id.')
    return cid


def _create_channel(pc: RTCPeerConnection, spec: ChannelSpec) -> RTCDataChannel:
    return pc.createDataChannel(
        spec.protocol,
        maxPacketLifeTime=spec.max_packet_life_time,
        maxRetransmits=spec.max_retransmits,
        ordered=spec.ordered,
        protocol=spec.protocol,
    )
