"""Data channels a caller opens to the device, served by label.

Each channel of an accepted call becomes a :class:`ChannelSession` served by one handler
task, found in a :class:`ChannelRegistry` by the channel's label:

* ``control``: the device's JSON commands (:mod:`agent.rtc.control`);
* ``sensors`` and ``serial:NAME``: reserved for the sensor bridge, which registers them
  (``register("sensors", ...)``, ``register("serial:", ..., prefix=True)``); until it
  does, a caller opening them is told nothing serves them here;
* anything else: a handler registered for it, or the caller is told none is.

A handler is ``async def handler(session)``: it reads ``session.messages()`` until the
channel closes and answers with ``session.send(...)``. A session's queue is bounded: a
caller flooding a slow handler loses its own oldest messages, nobody else's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from agent.errors import Codes

if TYPE_CHECKING:
    # Annotations only: the registry exists before a call loads aiortc (agent.rtc.standby).
    from aiortc import RTCDataChannel

__all__ = ["RESERVED_LABELS", "ChannelHandler", "ChannelRegistry", "ChannelSession"]

log = logging.getLogger(__name__)

ChannelHandler = Callable[["ChannelSession"], Awaitable[None]]
RESERVED_LABELS: Final = ("sensors", "serial:")
_QUEUE: Final = 256


class ChannelSession:
    """One data channel of one call, as its handler sees it."""

    def __init__(
        self,
        channel: RTCDataChannel,
        *,
        cid: str,
        user_id: str | None,
        queue_size: int = _QUEUE,
    ) -> None:
        self.channel = channel
        self.label: str = channel.label
        self.cid = cid
        self.user_id = user_id
        self.dropped = 0
        self._queue: deque[str | bytes] = deque()
        self._queue_size = queue_size
        self._ready = asyncio.Event()
        self._ended = False

    @property
    def open(self) -> bool:
        """Whether messages can still be sent."""
        return not self._ended and self.channel.readyState == "open"

    def feed(self, data: str | bytes) -> None:
        """A message from the caller (the call's event order; never blocks)."""
        if self._ended:
            return
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped % 100 == 1:
                log.warning(
                    "data channel %r of %s dropped %d messages", self.label, self.cid, self.dropped
                )
        self._queue.append(data)
        self._ready.set()

    def end(self) -> None:
        """The channel closed: ``messages()`` ends once what is queued is read."""
        self._ended = True
        self._ready.set()

    async def messages(self) -> AsyncIterator[str | bytes]:
        """Every message from the caller, until the channel closes."""
        while True:
            while not self._queue:
                if self._ended:
                    return
                self._ready.clear()
                await self._ready.wait()
            yield self._queue.popleft()

    def send(self, data: str | bytes) -> bool:
        """Send to the caller; False if the channel is closed."""
        if not self.open:
            return False
        try:
            self.channel.send(data)
        except Exception as exc:  # closed under us, or a message too large for the peer
            log.info("data channel %r of %s: send failed: %s", self.label, self.cid, exc)
            return False
        return True

    def send_json(self, value: Any) -> bool:
        """Send ``value`` as one JSON text message."""
        return self.send(json.dumps(value, separators=(",", ":")))


class ChannelRegistry:
    """Handlers for data channel labels (exact labels, or prefixes such as ``serial:``)."""

    def __init__(self) -> None:
        self._exact: dict[str, ChannelHandler] = {}
        self._prefixes: dict[str, ChannelHandler] = {}

    def register(self, label: str, handler: ChannelHandler, *, prefix: bool = False) -> None:
        """Serve channels labelled ``label`` (or starting with it) with ``handler``."""
        (self._prefixes if prefix else self._exact)[label] = handler

    def unregister(self, label: str, *, prefix: bool = False) -> None:
        """Stop serving ``label``."""
        (self._prefixes if prefix else self._exact).pop(label, None)

    def handler_for(self, label: str) -> ChannelHandler:
        """The handler for ``label``: registered, else one that says nothing serves it."""
        handler = self._exact.get(label)
        if handler is not None:
            return handler
        for prefix in sorted(self._prefixes, key=len, reverse=True):
            if label.startswith(prefix):
                return self._prefixes[prefix]
        return _unserved


async def _unserved(session: ChannelSession) -> None:
    """Tell the caller (once) that nothing serves this label here, then drain."""
    reserved = any(
        session.label == r or (r.endswith(":") and session.label.startswith(r))
        for r in RESERVED_LABELS
    )
    detail = " (the sensor bridge is not running)" if reserved else ""
    session.send_json(
        {
            "ok": False,
            "error": {
                "code": Codes.NOT_FOUND,
                "message": f'Nothing serves the data channel "{session.label}" on this device'
                f"{detail}.",
            },
        }
    )
    async for _message in session.messages():
        pass
