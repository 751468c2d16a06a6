"""Delivery: a client's messages to its callback and streams, never blocking the reader.

The callback (sync or async) runs on its own task, in order, fed by a bounded queue; each
``messages()`` stream has its own bounded queue. When a queue is full the oldest message
is dropped, and the consumer next receives an ``error`` message with code
``MESSAGES_DROPPED`` saying how many were lost (:mod:`agent.messages`). A callback that
raises is logged and the next message still comes; the task ends after ``close``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Final, TypeAlias

from agent.messages import MessageQueue, MessageStream, MessageType, RealtimeMessage

__all__ = ["Callback", "Delivery"]

log = logging.getLogger(__name__)

Callback: TypeAlias = Callable[[RealtimeMessage], Awaitable[None] | None]

_CALLBACK_QUEUE: Final = 1024
_DRAIN_SECONDS: Final = 5.0


class Delivery:
    """Hands each message to the callback's queue and to every open stream."""

    def __init__(self) -> None:
        self._queue: MessageQueue | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._streams: weakref.WeakSet[MessageStream] = weakref.WeakSet()

    def start(self, callback: Callback) -> None:
        """Deliver to ``callback`` from now on, on a task of its own."""
        self._queue = MessageQueue(_CALLBACK_QUEUE)
        self._dispatcher = asyncio.get_running_loop().create_task(_deliver(self._queue, callback))

    def stream(self, maxsize: int) -> MessageStream:
        """A new stream of every message from now on (see ``RealtimeClient.messages``)."""
        stream = MessageStream(MessageQueue(maxsize), self._streams.discard)
        self._streams.add(stream)
        return stream

    def emit(self, message: RealtimeMessage) -> None:
        """Deliver ``message`` to the callback and every stream (never blocks)."""
        if self._queue is not None:
            self._queue.put(message)
        for stream in list(self._streams):
            stream.feed(message)

    async def drain(self) -> None:
        """Stop taking messages for the callback and let it finish the queued ones (up to
        a few seconds, then it is cancelled)."""
        dispatcher, self._dispatcher = self._dispatcher, None
        self._queue = None
        if dispatcher is None or dispatcher is asyncio.current_task():
            return
        _done, pending = await asyncio.wait([dispatcher], timeout=_DRAIN_SECONDS)
        if pending:
            log.warning("realtime callback still busy after close; cancelling it")
            dispatcher.cancel()
            await asyncio.wait([dispatcher])


async def _deliver(queue: MessageQueue, callback: Callback) -> None:
    while True:
        message = await queue.get()
        try:
            result = callback(message)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("realtime callback failed on a %s message", message.type)
        if message.type is MessageType.CLOSE:
            return
