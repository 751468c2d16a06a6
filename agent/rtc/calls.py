"""The objects of one call: a connection that is up, a call being placed, a ringing call.

``_Call`` holds the I/O side of one call for :class:`agent.rtc.engine.RtcEngine`; the
public classes are views on it with the reference's names and shapes. They reach the
engine only through :class:`CallControl`, so this module does not import the engine
(which imports it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from aiortc import RTCDataChannel, RTCPeerConnection

from agent.rtc.media import LocalMedia, OfferMedia
from agent.rtc.peer import EventCallback, EventDispatcher
from agent.rtc.signaling import CloseReason, Role

__all__ = ["CallControl", "IncomingCall", "RtcConnection", "RtcConnector"]


class CallControl(Protocol):
    """What a call's objects ask of the engine that runs it (:class:`RtcEngine`)."""

    def hangup(self, cid: str) -> asyncio.Task[None]:
        """End call ``cid`` from this side; the task ends once it is released."""
        ...

    async def accept(
        self,
        call: _Call,
        *,
        ice: Any,
        media: Any,
        callback: EventCallback | None,
        receive: Iterable[str] | None,
    ) -> RtcConnection:
        """Take the ringing ``call``: answer, then pick up."""
        ...


class RtcConnection:
    """A call that is up (the reference's RTCResolved)."""

    def __init__(self, call: _Call) -> None:
        self._call = call

    def __repr__(self) -> str:
        return f"<RtcConnection {self._call.role.value} {self.cid} closed={self.closed}>"

    @property
    def cid(self) -> str:
        """The other side's connection id (``cid:...``)."""
        return self._call.cid

    @property
    def user_id(self) -> str | None:
        """The other side's user id."""
        return self._call.user_id

    @property
    def target(self) -> RTCPeerConnection:
        """The peer connection."""
        return self._call.peer

    @property
    def channels(self) -> dict[str, RTCDataChannel]:
        """The data channels, by protocol (label)."""
        return self._call.channels

    @property
    def media(self) -> LocalMedia | None:
        """The tracks this side sends."""
        return self._call.local

    @property
    def closed(self) -> bool:
        """Whether the call is over."""
        return self._call.done.is_set()

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the call ended (None while it goes on)."""
        return self._call.reason

    def hangup(self) -> asyncio.Task[None]:
        """End the call; await the task to wait until it is released."""
        return self._call.engine.hangup(self.cid)

    async def wait_closed(self) -> None:
        """Return once the call is over and released (either side hung up, or it failed)."""
        await self._call.done.wait()


class RtcConnector:
    """A call being placed (the reference's RTCConnector)."""

    def __init__(self, call: _Call) -> None:
        self._call = call

    @property
    def connection(self) -> asyncio.Future[RtcConnection]:
        """Resolves on pickup; CallEndedError if the call ends before."""
        return self._call.up

    def hangup(self) -> asyncio.Task[None]:
        """Cancel or end the call."""
        return self._call.engine.hangup(self._call.cid)


class IncomingCall:
    """A ringing call: ``connect_rtc`` to take it, ``hangup`` to refuse it."""

    def __init__(self, call: _Call, offer: OfferMedia | None) -> None:
        self._call = call
        self._offer = offer

    def __repr__(self) -> str:
        return f"<IncomingCall {self.cid} from {self.user_id}>"

    @property
    def cid(self) -> str:
        """The caller's connection id (``cid:...``)."""
        return self._call.cid

    @property
    def user_id(self) -> str | None:
        """The caller's user id."""
        return self._call.user_id

    @property
    def wants(self) -> frozenset[str]:
        """The kinds (``video``, ``audio``) the caller wants to receive."""
        return self._offer.wants if self._offer is not None else frozenset()

    @property
    def sends(self) -> frozenset[str]:
        """The kinds the caller sends."""
        return self._offer.sends if self._offer is not None else frozenset()

    async def connect_rtc(
        self,
        *,
        ice: Any = None,
        media: Any = None,
        callback: EventCallback | None = None,
        receive: Iterable[str] | None = None,
    ) -> RtcConnection:
        """Take the call: answer, then pick up.

        Args:
            ice: ICE servers (a URL, or a list of URLs or ``{urls, username, credential}``);
                default: the configured ones.
            media: What to send (see :mod:`agent.rtc.media`), where the caller wants it.
            callback: Receives the RTC events (sync or async), in order.
            receive: The kinds to receive of those the caller sends (default: all).

        Raises:
            RealtimeError: INVALID_REQUEST when the call no longer rings; DEVICE_NOT_FOUND
                for a media flag without a device (the call keeps ringing);
                CallEndedError when the caller hangs up or the call fails meanwhile.
        """
        return await self._call.engine.accept(
            self._call, ice=ice, media=media, callback=callback, receive=receive
        )

    def hangup(self) -> asyncio.Task[None]:
        """Refuse the call (sends ``hungup``)."""
        return self._call.engine.hangup(self.cid)


class _Call:
    """The I/O side of one call: peer connection, channels, tasks."""

    def __init__(self, engine: CallControl, cid: str, user_id: str | None, role: Role) -> None:
        self.engine = engine
        self.cid = cid
        self.user_id = user_id
        self.role = role
        self.pc: RTCPeerConnection | None = None
        self.channels: dict[str, RTCDataChannel] = {}
        self.local: LocalMedia | None = None
        self.events = EventDispatcher(None)
        self.up: asyncio.Future[RtcConnection] = asyncio.get_running_loop().create_future()
        self.lock = asyncio.Lock()  # one change of descriptions or candidates at a time
        self.tasks: set[asyncio.Task[None]] = set()
        self.ring_timer: asyncio.TimerHandle | None = None
        self.reason: CloseReason | None = None
        self.release: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.channels_opened = 0
        self.grace: asyncio.TimerHandle | None = None
        self.last_words: list[asyncio.Future[None]] = []  # our hungup, sent before closing

    @property
    def closing(self) -> bool:
        return self.reason is not None

    @property
    def peer(self) -> RTCPeerConnection:
        if self.pc is None:
            raise RuntimeError(f"the call with {self.cid} has no peer connection yet")
        return self.pc
