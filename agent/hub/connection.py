"""One accepted WebSocket connection: its outbound path, limits and closing.

Fan-out never awaits a recipient: :meth:`Connection.deliver` writes an already-encoded
frame straight to the connection's transport while it accepts data (through the server's
:data:`WRITE_TEXT_EXTENSION` when it offers one, else by stepping the ASGI ``send``), and
only when the transport is paused (the peer reads slower than frames arrive) queues it for
a drainer task. A reader that does not keep up only grows its own queue; past
``max_outbound_bytes`` that connection alone is closed (4409) and everyone else carries on.

Frames the hub sends are ASCII (percent-encoded as ``encodeURI`` does), so a frame's
``len()`` is its size in bytes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any, Final

from agent.compat import check_asgi_send_hook
from agent.errors import Codes
from agent.hub.backplane import Member
from agent.hub.limits import CloseCode, ErrorWindow, LimitSettings, TokenBucket
from agent.hub.metrics import HubMetrics
from agent.protocol import FrameKind, HubFrame, encode_hub_frame

__all__ = ["WRITE_TEXT_EXTENSION", "ASGISend", "ConnState", "Connection", "WriteText"]

log = logging.getLogger(__name__)

ASGISend = Callable[[MutableMapping[str, Any]], Coroutine[Any, Any, None]]
# Writes one text frame now if the transport takes it; False: use the ASGI send instead.
WriteText = Callable[[bytes], bool]
# The ASGI scope extension (``scope["extensions"][name]["write_text"]``) of a server that
# can write a frame without an ASGI send: agent.hub.wsprotocol.HubWebSocketProtocol.
WRITE_TEXT_EXTENSION: Final = "edge-agent.websocket.write_text"
# How long a close frame may wait for a peer that has stopped reading before giving up.
_CLOSE_WAIT_SECONDS: Final = 10.0

check_asgi_send_hook()  # Connection._write_now steps uvicorn's send coroutine by hand


class ConnState(enum.Enum):
    """Where a connection stands; only ``OPEN`` receives and sends frames."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """An accepted connection of ``member``: queue, writer, limits, close reason."""

    __slots__ = (
        "_cancelled_reader",
        "_drainer",
        "_errors",
        "_idle_handle",
        "_idle_timeout",
        "_loop",
        "_max_outbound",
        "_metrics",
        "_queue",
        "_queued",
        "_rate",
        "_send",
        "_write_text",
        "close_code",
        "close_reason",
        "groups",
        "last_seen",
        "member",
        "reader",
        "state",
    )

    def __init__(
        self,
        member: Member,
        send: ASGISend,
        *,
        limits: LimitSettings,
        metrics: HubMetrics,
        write_text: WriteText | None = None,
    ) -> None:
        self.member = member
        self.state = ConnState.OPEN
        # This node's copy of the connection's groups: a broadcast checks it without a
        # round trip to the backplane.
        self.groups: set[str] = set()
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.reader: asyncio.Task[Any] | None = None
        self._send = send
        self._write_text = write_text
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self.last_seen = self._loop.time()
        # Only a connection whose transport has stalled has a queue.
        self._queue: deque[str] | None = None
        self._queued = 0
        self._max_outbound = limits.max_outbound_bytes
        self._drainer: asyncio.Task[None] | None = None
        self._rate = TokenBucket.full(
            rate=limits.rate_per_second, burst=limits.rate_burst, now=self.last_seen
        )
        self._errors = ErrorWindow(limits.max_errors, limits.error_window_seconds)
        self._idle_timeout = limits.idle_timeout_seconds
        self._idle_handle: asyncio.TimerHandle | None = None
        self._cancelled_reader = False

    @property
    def scid(self) -> str:
        """The connection id (without the ``cid:`` prefix)."""
        return self.member.scid

    def deliver(self, text: str) -> None:
        """Send an encoded frame now if the socket takes it, else queue it (bounded)."""
        if self.state is not ConnState.OPEN:
            return
        metrics = self._metrics
        metrics.frames_out += 1
        metrics.bytes_out += len(text)
        if self._drainer is None:
            self._write_now(text)
            return
        queued = self._queued + len(text)
        if queued > self._max_outbound:
            self.fail(
                CloseCode.SLOW_READER, "Outbound queue overflow: the client reads too slowly."
            )
            return
        self._queued = queued
        if self._queue is None:
            self._queue = deque()
        self._queue.append(text)

    def _write_now(self, text: str) -> None:
        write_text = self._write_text
        if write_text is not None:
            try:
                if write_text(text.encode()):
                    return
            except Exception as exc:  # a recipient's failure must never reach the sender
                self._lost(exc)
                return
        # Run the ASGI send by hand up to its first suspension. While the transport accepts
        # data, uvicorn's send never suspends, so the frame is written with no task switch
        # (what asyncio's eager tasks do from Python 3.12). If it suspends, the transport
        # is paused (its buffer is over the high-water mark): a drainer task finishes this
        # send and then the frames queued behind it.
        coro = self._send({"type": "websocket.send", "text": text})
        try:
            blocker = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:  # a recipient's failure must never reach the sender
            self._lost(exc)
            return
        self._drainer = self._loop.create_task(
            self._drain(coro, blocker), name=f"hub-drain-{self.scid}"
        )

    async def _drain(self, started: Coroutine[Any, Any, None], blocker: Any) -> None:
        try:
            await _finish_started(started, blocker)
            while (queue := self._queue) and self.state is ConnState.OPEN:
                text = queue.popleft()
                self._queued -= len(text)
                await self._send({"type": "websocket.send", "text": text})
        except Exception as exc:  # the peer went away; its reader cleans up
            self._lost(exc)
        finally:
            self._drainer = None
            self._queue = None

    def _lost(self, exc: Exception) -> None:
        # uvicorn raises ClientDisconnected (an OSError) once the peer has gone; the reader
        # receives the disconnect and cleans up. Anything else is a bug worth a traceback.
        if not isinstance(exc, OSError):
            log.error("connection %s: send failed", self.scid, exc_info=exc)
        if self.state is ConnState.OPEN:
            self._set_state(ConnState.CLOSING)
        self._queue = None
        self._queued = 0

    def admit(self) -> bool:
        """Account one inbound frame: refresh the idle clock; ``False`` if over the rate."""
        now = self._loop.time()
        self.last_seen = now
        self._metrics.frames_in += 1
        return self._rate.take(now)

    def error(self, code: str, message: str, *, counts: bool = True) -> None:
        """Send an ``#error`` frame; too many counted errors in the window close (1008)."""
        self._metrics.errors[code] += 1
        self.deliver(encode_hub_frame(HubFrame(FrameKind.ERROR, message, code=code)))
        if counts and self._errors.record(self._loop.time()):
            self.fail(CloseCode.POLICY, "Too many errors.")

    def rate_limited(self) -> None:
        """Answer a frame dropped by the rate limit (not counted as a client error)."""
        self.error(Codes.RATE_LIMITED, _RATE_TEXT, counts=False)

    def start_idle_timer(self) -> None:
        """Close (4408) when no frame arrives for ``idle_timeout_seconds``."""
        self._idle_handle = self._loop.call_later(self._idle_timeout, self._check_idle)

    def fail(self, code: CloseCode, reason: str) -> None:
        """Stop this connection: drop its queue and end its reader; the close follows."""
        if self.state is not ConnState.OPEN:
            return
        self._set_state(ConnState.CLOSING)
        self.close_code = code
        self.close_reason = reason
        self._metrics.closes[int(code)] += 1
        self._queue = None
        self._queued = 0
        log.info(
            "connection %s (%s): closing with %d: %s", self.scid, self.member.name, code, reason
        )
        reader = self.reader
        if reader is not None and reader is not asyncio.current_task() and not reader.done():
            self._cancelled_reader = True
            reader.cancel()

    def reader_cancelled_by_fail(self) -> bool:
        """Whether a CancelledError in the reader came only from :meth:`fail`."""
        if not self._cancelled_reader or self.reader is None:
            return False
        self._cancelled_reader = False
        return self.reader.uncancel() == 0

    async def finish(self) -> None:
        """Stop sending frames and, if the hub decided to close, send the close frame."""
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self.state is ConnState.OPEN:
            self._set_state(ConnState.CLOSING)
        drainer = self._drainer
        if drainer is not None:
            drainer.cancel()
            await asyncio.wait([drainer])
        if self.close_code is not None:
            await self._send_close(self.close_code, self.close_reason)
        self._set_state(ConnState.CLOSED)

    async def _send_close(self, code: CloseCode, reason: str) -> None:
        try:
            async with asyncio.timeout(_CLOSE_WAIT_SECONDS):
                await self._send({"type": "websocket.close", "code": int(code), "reason": reason})
        except (OSError, TimeoutError):
            log.debug("connection %s: close frame not sent (peer gone or not reading)", self.scid)

    def _check_idle(self) -> None:
        idle = self._loop.time() - self.last_seen
        if idle >= self._idle_timeout:
            self.fail(CloseCode.IDLE, f"No frame for {self._idle_timeout:g} s.")
        else:
            self._idle_handle = self._loop.call_later(self._idle_timeout - idle, self._check_idle)

    def _set_state(self, state: ConnState) -> None:
        log.debug("connection %s: %s -> %s", self.scid, self.state.value, state.value)
        self.state = state


_RATE_TEXT: Final = "Too many frames: this one was dropped. Slow down."


async def _finish_started(coro: Coroutine[Any, Any, None], blocker: Any) -> None:
    """Drive to its end a coroutine that was stepped by hand and suspended on ``blocker``.

    What a Task does: wait for the future the coroutine yielded (``None`` means "yield to
    the loop"), then resume it, until it returns. Cancelled while waiting, the coroutine is
    closed so that it unwinds (uvicorn's send then never writes its frame).
    """
    while True:
        try:
            if blocker is None:
                await asyncio.sleep(0)
            else:
                # Task.__step clears this flag on every future a coroutine yields; awaiting
                # a future that still has it set fails ("await wasn't used with future").
                blocker._asyncio_future_blocking = False
                await blocker
        except BaseException:
            coro.close()
            raise
        try:
            blocker = coro.send(None)
        except StopIteration:
            return
