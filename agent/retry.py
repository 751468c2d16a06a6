"""Reconnect policy as pure code: how long to wait, and whether a failure is worth a retry.

Nothing here sleeps, touches a socket or knows a network library: the client's connection
loop turns what went wrong into a :class:`Failure` (:mod:`agent.client.failures` reads the
WebSocket library's exceptions), asks a schedule how long to wait and does the waiting
itself, so the policy is tested without an event loop.

Delays use "full jitter" (a uniform draw between zero and the capped exponential delay):
many devices that lost the same hub at the same moment then spread their reconnects over
the whole window instead of arriving together.

:class:`Reconnect` is the hub connection's schedule: a hub that says it restarts (close
code 1012, or 1001) is tried again within a second; after an abrupt loss every delay stays
under a second for the first minute of the outage (most outages are a restart or a short
network blip, and a device should be back as soon as the hub is), then the ceiling doubles
every 30 s of outage up to a 30 s cap. The ceiling follows the outage's age, not the
number of attempts, so a hub back after 61 s is not met with a delay meant for a long one.
:class:`FixedBackoff` is the plain capped exponential schedule behind the same interface
(what clients did before; benchmarks compare the two).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "Failure",
    "FixedBackoff",
    "Reconnect",
    "ReconnectPolicy",
    "ReconnectSchedule",
    "Verdict",
    "backoff",
    "capped_delay",
    "full_jitter",
]


class Verdict(enum.Enum):
    """What the connection loop does after a failure."""

    RETRY = "retry"  # transient: back off exponentially and try again
    RETRY_AT_CAP = "retry_at_cap"  # refused (token, path, certificate): report, retry slowly
    GIVE_UP = "give_up"  # a bad setting or a bug that no retry can fix


@dataclass(frozen=True, slots=True)
class Failure:
    """What one failed attempt or ended connection means to a schedule."""

    verdict: Verdict
    # The server said it is going away to come back (a restart): a new, short outage.
    restart: bool = False


def backoff(
    initial: float = 0.5,
    factor: float = 2.0,
    cap: float = 30.0,
    jitter: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield delays forever: ``jitter() * min(cap, initial * factor**n)`` for n = 0, 1, ...

    Args:
        initial: The ceiling of the first delay, in seconds.
        factor: How much the ceiling grows after each attempt.
        cap: The largest ceiling; once reached, every delay is drawn below it.
        jitter: A source of floats in [0, 1); inject a seeded one to test.
    """
    if initial <= 0 or factor < 1 or cap < initial:
        raise ValueError(
            f"backoff needs initial > 0, factor >= 1 and cap >= initial "
            f"(got initial={initial}, factor={factor}, cap={cap})"
        )
    attempt = 0
    while True:
        yield full_jitter(attempt, initial=initial, factor=factor, cap=cap, jitter=jitter)
        attempt += 1


def full_jitter(
    attempt: int,
    *,
    initial: float,
    factor: float = 2.0,
    cap: float,
    jitter: Callable[[], float] = random.random,
) -> float:
    """The delay before retry number ``attempt`` (0 first): ``jitter() * min(cap, initial *
    factor**attempt)``, the one formula every backoff of the project uses."""
    # The exponent stops growing long after the cap is reached: a retry count in the
    # thousands (a queue row retried for a day) must not overflow a float.
    ceiling = min(cap, initial * factor ** min(attempt, _MAX_EXPONENT))
    return jitter() * ceiling


def capped_delay(cap: float = 30.0, jitter: Callable[[], float] = random.random) -> float:
    """A delay between half the cap and the cap, for failures that retrying soon won't fix."""
    return cap / 2 + jitter() * cap / 2


# -- reconnect schedules ------------------------------------------------------------------------

_MAX_EXPONENT: Final = 64


class ReconnectSchedule(Protocol):
    """How long a connection loop waits before its next attempt (pure; the clock is passed)."""

    def opened(self, now: float) -> None:
        """A connection opened at ``now``."""
        ...

    def delay(self, failure: Failure, now: float) -> float:
        """Seconds to wait after ``failure`` (a failed attempt or an ended connection)."""
        ...


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """The numbers of :class:`Reconnect` (see the module docstring)."""

    quick_seconds: float = 1.0  # the ceiling of every delay while the outage is young
    quick_window_seconds: float = 60.0  # how long an outage counts as young
    factor: float = 2.0  # growth of the ceiling per doubling_seconds of outage after that
    doubling_seconds: float = 30.0
    cap_seconds: float = 30.0  # the largest ceiling
    # A connection that stayed up this long ends the outage; one the hub drops right after
    # accepting it (too many connections, a policy close) does not.
    stable_seconds: float = 10.0
    refused_seconds: float = 30.0  # ceiling after a refused token (drawn in its upper half)

    def __post_init__(self) -> None:
        if (
            not 0 < self.quick_seconds <= self.cap_seconds
            or self.factor < 1
            or self.doubling_seconds <= 0
        ):
            raise ValueError(
                "a reconnect policy needs 0 < quick_seconds <= cap_seconds, factor >= 1 "
                "and doubling_seconds > 0"
            )


class Reconnect:
    """The hub connection's schedule: quick while an outage is young, then backing off."""

    def __init__(
        self, policy: ReconnectPolicy | None = None, *, jitter: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy or ReconnectPolicy()
        self._jitter = jitter
        self._outage_since: float | None = None
        self._opened_at: float | None = None

    @property
    def outage_since(self) -> float | None:
        """When the current outage began (``None``: connected, or never tried)."""
        return None if self._opened_at is not None else self._outage_since

    def opened(self, now: float) -> None:
        """A connection opened at ``now``; the outage may be over (see ``stable_seconds``)."""
        self._opened_at = now

    def delay(self, failure: Failure, now: float) -> float:
        """Seconds to wait after ``failure`` at ``now``."""
        policy = self.policy
        self._track_outage(failure, now)
        if failure.verdict is Verdict.RETRY_AT_CAP:
            return capped_delay(policy.refused_seconds, self._jitter)
        since = now if self._outage_since is None else self._outage_since
        late = now - since - policy.quick_window_seconds
        if late < 0:
            return self._jitter() * policy.quick_seconds
        growth: float = policy.factor ** min(late / policy.doubling_seconds, _MAX_EXPONENT)
        return self._jitter() * min(policy.cap_seconds, policy.quick_seconds * growth)

    def _track_outage(self, failure: Failure, now: float) -> None:
        opened, self._opened_at = self._opened_at, None
        stable = opened is not None and now - opened >= self.policy.stable_seconds
        if self._outage_since is None or stable or (opened is not None and failure.restart):
            # A new outage: the first one, the end of a connection that had settled, or a
            # hub that said it restarts (it will be back soon whatever came before).
            self._outage_since = now


class FixedBackoff:
    """Capped exponential backoff with full jitter, reset by a connection that lasted."""

    def __init__(
        self,
        delays: Callable[[], Iterator[float]] = backoff,
        *,
        stable_seconds: float = 10.0,
        refused_seconds: float = 30.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._factory = delays
        self._delays = delays()
        self._stable = stable_seconds
        self._refused = refused_seconds
        self._jitter = jitter
        self._opened_at: float | None = None

    def opened(self, now: float) -> None:
        """A connection opened at ``now``."""
        self._opened_at = now

    def delay(self, failure: Failure, now: float) -> float:
        """The next delay of the backoff (restarted after a stable connection)."""
        opened, self._opened_at = self._opened_at, None
        if opened is not None and now - opened >= self._stable:
            self._delays = self._factory()
        if failure.verdict is Verdict.RETRY_AT_CAP:
            return capped_delay(self._refused, self._jitter)
        return next(self._delays)
