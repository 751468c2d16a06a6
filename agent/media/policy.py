"""Pure decisions of the fan-out: key-frame rate limiting, per-viewer queues, backoff, bitrate.

Nothing here awaits, reads a clock or touches a socket: callers pass ``now``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Generic, TypeVar

from agent import retry
from agent.media.config import BackoffConfig

__all__ = [
    "Backoff",
    "KeyframeGate",
    "Offer",
    "RequestLimiter",
    "ViewerQueue",
    "shared_bitrate",
]

T = TypeVar("T")


class KeyframeGate:
    """Coalesces key-frame requests into at most one forced key frame per ``min_interval``.

    Any key frame, scheduled or forced, satisfies the requests made before it, because
    every viewer that asked is already waiting for the next key frame.
    """

    def __init__(self, min_interval: float) -> None:
        self._min_interval = min_interval
        self._last_key = -math.inf
        self._pending = False
        self.forced = 0

    @property
    def pending(self) -> bool:
        """A request is waiting for the next frame the limit allows."""
        return self._pending

    def request(self) -> None:
        """Ask for a key frame as soon as the rate limit allows."""
        self._pending = True

    def take(self, now: float) -> bool:
        """Should the frame encoded at ``now`` be forced to a key frame?"""
        if not self._pending or now - self._last_key < self._min_interval:
            return False
        self._pending = False
        self._last_key = now
        self.forced += 1
        return True

    def keyframe_sent(self, now: float) -> None:
        """A key frame went out (scheduled or forced); pending requests are satisfied."""
        self._pending = False
        self._last_key = now


class RequestLimiter:
    """At most one request per ``interval`` (one viewer's PLIs and resync requests)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = -math.inf

    def allow(self, now: float) -> bool:
        """True (and counts) if a request at ``now`` is allowed."""
        if now - self._last < self._interval:
            return False
        self._last = now
        return True


class Offer(Enum):
    """What a viewer queue did with an offered frame."""

    QUEUED = "queued"
    WAITING_FOR_KEY = "waiting_for_key"  # skipped: the viewer cannot decode it
    OVERFLOW = "overflow"  # queue full: older frames were dropped


class ViewerQueue(Generic[T]):
    """A bounded queue for one viewer that drops alone and never blocks the producer.

    Video (``needs_key``) drops everything queued on overflow and waits for the next key
    frame, since a decoder cannot use frames that reference dropped ones. Audio drops the
    oldest packet.
    """

    def __init__(self, capacity: int, *, needs_key: bool) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._needs_key = needs_key
        self.waiting_for_key = needs_key
        self.dropped = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T, *, key: bool) -> Offer:
        """Queue ``item`` if this viewer can use it."""
        if self.waiting_for_key and not key:
            self.skipped += 1
            return Offer.WAITING_FOR_KEY
        self.waiting_for_key = False
        result = Offer.QUEUED
        if len(self._items) >= self._capacity:
            result = Offer.OVERFLOW
            if self._needs_key and not key:
                self.resync()
                self.dropped += 1
                return result
            self._drop(len(self._items) if self._needs_key else 1)
        self._items.append(item)
        return result

    def pop(self) -> T | None:
        """The oldest queued item, or None."""
        return self._items.popleft() if self._items else None

    def resync(self) -> None:
        """Drop what is queued and wait for the next key frame (video only)."""
        self._drop(len(self._items))
        self.waiting_for_key = self._needs_key

    def _drop(self, count: int) -> None:
        for _ in range(count):
            self._items.popleft()
        self.dropped += count


class Backoff:
    """Delays before reopening a lost device: the project's one capped exponential schedule
    (:func:`agent.retry.backoff`), started again by ``reset`` after a long enough success.

    Delay ``n`` (0 first) lies in ``[ceiling * (1 - jitter), ceiling)``, where ``ceiling =
    min(maximum, initial * factor**n)`` and ``jitter`` is ``config.jitter``: the fraction of
    each delay drawn at random. 1.0 is the full jitter of the network reconnects; a device
    has no herd of clients to spread, so a small fraction keeps retries near the ceiling.
    0.0 gives the ceilings themselves. No delay exceeds ``maximum``.
    """

    def __init__(self, config: BackoffConfig, rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self._rng = rng  # jitter only; not security relevant
        self._delays = self._schedule()

    def __iter__(self) -> Iterator[float]:
        while True:
            yield self.next_delay()

    def next_delay(self) -> float:
        """Delay before the next attempt."""
        return next(self._delays)

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._delays = self._schedule()

    def _schedule(self) -> Iterator[float]:
        config = self.config
        return retry.backoff(
            initial=config.initial, factor=config.factor, cap=config.maximum, jitter=self._draw
        )

    def _draw(self) -> float:
        # full_jitter multiplies the ceiling by this draw: [1 - jitter, 1), the whole
        # [0, 1) of random() when jitter is 1.
        return 1.0 - self.config.jitter + self.config.jitter * self._rng()


def shared_bitrate(estimates: Iterable[int], *, configured: int, floor: int) -> int:
    """Bitrate for a shared encoder: the slowest viewer at or above ``floor``, capped.

    Viewers whose receiver estimate (REMB) is below ``floor`` are ignored: one bad link
    must not degrade every other viewer, so that viewer drops frames instead.
    """
    usable = [estimate for estimate in estimates if estimate >= floor]
    if not usable:
        return configured
    return max(floor, min(configured, *usable))
