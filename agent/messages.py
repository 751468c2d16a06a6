"""Messages a realtime client hands to its user: types, the hub-frame mapping, streams.

Pure data and two small queues; :mod:`agent.client` does the I/O.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Self

from agent.protocol import CID_PREFIX, FrameKind, HubFrame

__all__ = [
    "DROPPED_CODE",
    "MessageQueue",
    "MessageStream",
    "MessageType",
    "RealtimeMessage",
    "message_from_frame",
]

DROPPED_CODE: Final = "MESSAGES_DROPPED"


class MessageType(enum.StrEnum):
    """The ``type`` of a message given to the callback (compares equal to its string)."""

    MESSAGE = "message"
    PRIVATE = "private"
    NOTICE = "notice"
    ERROR = "error"
    SUCCESS = "success"
    CLOSE = "close"
    RECONNECT = "reconnect"
    RTC_INCOMING = "rtc:incoming"
    RTC_CLOSED = "rtc:closed"


@dataclass(frozen=True, slots=True)
class RealtimeMessage:
    """One message for the callback, shaped like the reference's ``RealtimeCallback`` argument."""

    type: MessageType
    message: Any = None
    sender: str | None = None
    sender_cid: str | None = None
    sender_rid: str | None = None
    code: str | None = None
    # rtc:incoming only: take the call (``await message.connect_rtc(media=...)``) or refuse it.
    connect_rtc: Callable[..., Awaitable[Any]] | None = field(
        default=None, compare=False, repr=False
    )
    hangup: Callable[[], Any] | None = field(default=None, compare=False, repr=False)


def message_from_frame(frame: HubFrame) -> RealtimeMessage | None:
    """The callback message for a hub frame; ``None`` for ``#rtc`` (handled separately)."""
    kind = _FRAME_TYPES.get(frame.kind)
    if kind is None:
        return None
    if kind is MessageType.ERROR:
        return _error_message(frame)
    return RealtimeMessage(
        type=kind,
        message=frame.content,
        sender=frame.user_id,
        sender_cid=CID_PREFIX + frame.scid if frame.scid else None,
        sender_rid=frame.srid,
        code=frame.code,
    )


class MessageStream:
    """An async iterator over a client's messages; ends after the ``close`` message."""

    def __init__(self, queue: MessageQueue, on_close: Callable[[MessageStream], None]) -> None:
        self._queue = queue
        self._on_close = on_close
        self._ended = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RealtimeMessage:
        if self._ended:
            raise StopAsyncIteration
        message = await self._queue.get()
        if message.type is MessageType.CLOSE:
            self.close()
        return message

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def feed(self, message: RealtimeMessage) -> None:
        """Queue ``message`` for this stream (the client calls this; never blocks)."""
        if not self._ended:
            self._queue.put(message)

    def close(self) -> None:
        """Stop receiving; iteration ends once this is called."""
        if not self._ended:
            self._ended = True
            self._on_close(self)


class MessageQueue:
    """A bounded queue that drops its oldest message when full and counts the drops."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._items: deque[RealtimeMessage] = deque()
        self._maxsize = maxsize
        self._dropped = 0
        self._ready = asyncio.Event()

    def put(self, message: RealtimeMessage) -> None:
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self._dropped += 1
        self._items.append(message)
        self._ready.set()

    async def get(self) -> RealtimeMessage:
        while not self._items and not self._dropped:
            self._ready.clear()
            await self._ready.wait()
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return RealtimeMessage(
                MessageType.ERROR,
                f"{dropped} message(s) dropped: the consumer fell behind "
                f"(queue of {self._maxsize}).",
                code=DROPPED_CODE,
            )
        return self._items.popleft()


_FRAME_TYPES: Final = {
    FrameKind.MESSAGE: MessageType.MESSAGE,
    FrameKind.PRIVATE: MessageType.PRIVATE,
    FrameKind.NOTICE: MessageType.NOTICE,
    FrameKind.ERROR: MessageType.ERROR,
}


def _error_message(frame: HubFrame) -> RealtimeMessage:
    content = frame.content
    if isinstance(content, dict):
        code = content.get("code") if isinstance(content.get("code"), str) else frame.code
        return RealtimeMessage(MessageType.ERROR, content.get("message", content), code=code)
    return RealtimeMessage(MessageType.ERROR, content, code=frame.code)
