"""Per-connection limits as pure state machines: the caller passes the clock in. No I/O.

A token bucket bounds the frame rate, an error window closes a connection that keeps
sending bad frames, and :class:`CloseCode` names every code the hub closes with
(RFC 6455 s. 7.4.1 for the 1xxx codes; 4xxx are the application range, s. 7.4.2, and
mirror the HTTP status they stand for).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["CloseCode", "ErrorWindow", "LimitSettings", "TokenBucket"]


class LimitSettings(Protocol):
    """The ``[hub.limits]`` settings the hub reads (``agent.config`` provides them)."""

    @property
    def max_frame_bytes(self) -> int:
        """A bigger inbound frame closes the connection with 1009."""

    @property
    def max_content_bytes(self) -> int:
        """A bigger message content is refused with ``#error``."""

    @property
    def max_json_depth(self) -> int:
        """Arrays and objects nested deeper in a frame are refused with ``#error``."""

    @property
    def rate_burst(self) -> int:
        """Frames a connection may send at once."""

    @property
    def rate_per_second(self) -> float:
        """Frames a connection may send per second, sustained."""

    @property
    def max_errors(self) -> int:
        """More errors than this within ``error_window_seconds`` close with 1008."""

    @property
    def error_window_seconds(self) -> float:
        """The window ``max_errors`` counts in."""

    @property
    def idle_timeout_seconds(self) -> float:
        """No inbound frame for this long closes with 4408."""

    @property
    def max_connections_per_user(self) -> int:
        """One more connection of the same user is refused (HTTP 429)."""

    @property
    def max_outbound_bytes(self) -> int:
        """Queued outbound bytes beyond this close the connection with 4409."""


class CloseCode(enum.IntEnum):
    """Close codes the hub sends."""

    NORMAL = 1000
    POLICY = 1008  # too many bad frames
    TOO_BIG = 1009  # a frame over max_frame_bytes (sent by the WebSocket layer)
    SERVICE_RESTART = 1012  # the hub is stopping (sent by uvicorn): reconnect
    UNAUTHORIZED = 4401  # account removed or token revoked (or refused where no HTTP 401 can be)
    IDLE = 4408  # no inbound traffic for idle_timeout_seconds
    SLOW_READER = 4409  # the outbound queue overflowed max_outbound_bytes
    TOO_MANY_CONNECTIONS = 4429  # only where a refusal before the upgrade is impossible


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one frame costs one token."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, *, rate: float, burst: float, now: float) -> TokenBucket:
        """A bucket that starts full at time ``now``."""
        return cls(rate=rate, burst=burst, tokens=burst, stamp=now)

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at ``now``; ``False`` (and nothing taken) if too few."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


@dataclass(slots=True)
class ErrorWindow:
    """Counts errors in a sliding window; trips when more than ``max_errors`` fall in it."""

    max_errors: int
    window: float
    # A list, not a deque: most connections never err, and an empty list is a tenth the size.
    _times: list[float] = field(default_factory=list)

    def record(self, now: float) -> bool:
        """Record one error at ``now`` (a monotonic clock); ``True`` when over the limit."""
        times = self._times
        times.append(now)
        del times[: bisect.bisect_right(times, now - self.window)]
        return len(times) > self.max_errors
