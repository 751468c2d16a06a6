"""uvicorn's sans-I/O WebSocket protocol, made lighter for thousands of idle connections.

A hub node holds one protocol object per connected device and viewer, most of them idle
for hours. uvicorn's ``WebSocketsSansIOProtocol`` gives each an ``asyncio.Queue`` for
inbound events and an ``asyncio.Event`` for write flow control, which own five
``collections.deque`` objects between them (760 bytes each, allocated up front), and it
keeps the upgrade request and response (every header) for the connection's whole life
although nothing reads them after the handshake. :class:`HubWebSocketProtocol` changes
only that:

- :class:`Inbox`: the inbound events for the one ASGI ``receive`` caller, a list that
  is emptied as it is read, and one future while the reader waits;
- :class:`Gate`: the transport's "writable" flag; ``wait()`` on an open gate returns an
  already-finished awaitable (no coroutine, the common case of every fan-out write), and
  waiters exist only while the transport is paused;
- the handshake's request and response are dropped once the response is written;
- :meth:`HubWebSocketProtocol.write_text`, offered to the application as the ASGI
  extension :data:`agent.hub.connection.WRITE_TEXT_EXTENSION`: a fan-out writes each
  recipient's frame with one call while the transport accepts data, instead of an ASGI
  ``send`` (a message dict, a coroutine and its checks) per recipient.

Everything else (framing, keepalive pings, closing, ASGI messages) is uvicorn's. The
attributes replaced are internals of uvicorn's class, so
:func:`agent.compat.check_ws_protocol_hooks` checks at import that they are still set and
used the way this module expects, within the uvicorn versions pyproject.toml allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Any, Final, Generic, TypeVar, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

from agent.compat import check_ws_protocol_hooks
from agent.hub.connection import WRITE_TEXT_EXTENSION

__all__ = ["Gate", "HubWebSocketProtocol", "Inbox"]

check_ws_protocol_hooks()

T = TypeVar("T")


class Inbox(Generic[T]):
    """A FIFO with one consumer: what ``WebSocketsSansIOProtocol`` uses of ``asyncio.Queue``.

    ``put_nowait`` never blocks (the queue is unbounded, as uvicorn's is); ``get`` waits
    for an item. Only one task may wait in ``get`` at a time (ASGI ``receive`` has one
    caller); a second concurrent ``get`` raises ``RuntimeError``.
    """

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._head = 0  # items before it were read; the list is reset once all are
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        """Append ``item`` and wake the waiting reader."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        """Whether no item is waiting to be read."""
        return self._head == len(self._items)

    def qsize(self) -> int:
        """How many items are waiting to be read."""
        return len(self._items) - self._head

    async def get(self) -> T:
        """The oldest item, waiting for one if there is none."""
        while self._head == len(self._items):
            if self._waiter is not None:
                raise RuntimeError("Inbox.get() already has a waiting reader")
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self._items = []  # a burst's list goes with it
            self._head = 0
        return item


class _Ready:
    """An awaitable that is already finished: awaiting it creates no coroutine frame."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


_READY: Final = _Ready()


class Gate:
    """What ``WebSocketsSansIOProtocol`` uses of ``asyncio.Event``: ``set``, ``clear``,
    ``is_set`` and ``wait`` (which finishes once the gate is open; its result is ``None``,
    not ``asyncio.Event``'s ``True``: uvicorn does not read it)."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        """Whether the gate is open."""
        return self._open

    def set(self) -> None:
        """Open the gate and wake every waiter."""
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        """Close the gate: later ``wait`` calls wait for :meth:`set`."""
        self._open = False

    def wait(self) -> Awaitable[None]:
        """An awaitable that finishes when the gate is (or becomes) open."""
        if self._open:
            # Not a generator, but await only needs an iterator from __await__.
            return cast("Awaitable[None]", _READY)
        return self._wait_closed()

    async def _wait_closed(self) -> None:
        while not self._open:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with a lighter per-connection footprint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Replaced before any data arrives (connection_made has not run yet).
        self.queue = Inbox()  # type: ignore[assignment]
        gate = Gate()
        gate.set()
        self.writable = gate  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        """Answer the upgrade as uvicorn does, and offer :meth:`write_text` to the app."""
        super().handle_connect(event)
        scope = self.__dict__.get("scope")  # only set when the upgrade goes ahead
        if scope is not None:
            scope["extensions"][WRITE_TEXT_EXTENSION] = {"write_text": self.write_text}

    def write_text(self, data: bytes) -> bool:
        """Write a text frame (UTF-8 ``data``) at once if the connection takes it now.

        ``True`` when written. ``False`` when it must go through the ASGI ``send`` instead,
        which waits or fails as uvicorn decides: the transport is paused (its buffer is
        over the high-water mark), the handshake is not complete, a close was sent or
        received, or the peer is gone.
        """
        if (
            not self.writable.is_set()
            or self.disconnected
            or self.close_sent
            or not self.handshake_complete
            or self.initial_response is not None
        ):
            return False
        try:
            self.conn.send_text(data)
        except InvalidState:  # closing: uvicorn's send raises ClientDisconnected for it
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def start_keepalive(self) -> None:
        """Called once the handshake response is written: drop the request and response."""
        # Nothing reads them after the handshake; they hold every header of both.
        self.__dict__.pop("request", None)
        self.__dict__.pop("response", None)
        super().start_keepalive()
