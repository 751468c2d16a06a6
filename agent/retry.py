"""Reconnect policy as pure code: how long to wait, and whether a failure is worth a retry.

Nothing here sleeps or touches a socket; the client's connection loop asks these functions
and does the waiting itself, so the policy is tested without an event loop.

Delays use "full jitter" (a uniform draw between zero and the capped exponential delay):
many devices that lost the same hub at the same moment then spread their reconnects over
the whole window instead of arriving together.
"""

from __future__ import annotations

import enum
import random
import ssl
from collections.abc import Callable, Iterator
from typing import Final

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)

from agent.errors import Codes

__all__ = [
    "Verdict",
    "backoff",
    "capped_delay",
    "classify",
    "is_retryable",
    "refusal_code",
]

# HTTP statuses on the upgrade request that a later attempt can get past on its own:
# timeout, too early, too many requests (RFC 9110 15.5.9, RFC 8470, RFC 6585 4).
_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
# The hub closes an open connection with 4000 + an HTTP status when it refuses it later
# (the 4000-4999 range is the application's, RFC 6455 7.4.2).
# Of those, only a refused token calls for slowing down; idle (4408), slow reader (4409)
# and too many connections (4429) are over once the next connection starts.
_REFUSED_CLOSE_CODES: Final = frozenset({4401, 4403})


class Verdict(enum.Enum):
    """What the connection loop does after a failure."""

    RETRY = "retry"  # transient: back off exponentially and try again
    RETRY_AT_CAP = "retry_at_cap"  # refused (token, path, certificate): report, retry slowly
    GIVE_UP = "give_up"  # a bad setting or a bug that no retry can fix


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
    ceiling = initial
    while True:
        yield jitter() * ceiling
        ceiling = min(cap, ceiling * factor)


def capped_delay(cap: float = 30.0, jitter: Callable[[], float] = random.random) -> float:
    """A delay between half the cap and the cap, for failures that retrying soon won't fix."""
    return cap / 2 + jitter() * cap / 2


def classify(exc: BaseException) -> Verdict:
    """Decide what a failed or ended connection calls for."""
    if isinstance(exc, InvalidStatus):
        return _classify_status(exc.response.status_code)
    if isinstance(exc, ConnectionClosed):
        return _classify_close(exc.rcvd.code if exc.rcvd is not None else None)
    if isinstance(exc, InvalidURI | InvalidProxy):
        return Verdict.GIVE_UP
    if isinstance(exc, ssl.SSLCertVerificationError):
        # The hub's certificate is not trusted: an operator has to act, but may do so
        # without restarting every device, so keep trying slowly.
        return Verdict.RETRY_AT_CAP
    if isinstance(exc, InvalidHandshake | OSError | TimeoutError | EOFError):
        return Verdict.RETRY
    return Verdict.GIVE_UP


def is_retryable(exc: BaseException) -> bool:
    """Whether the connection loop should try again after ``exc`` (sooner or later)."""
    return classify(exc) is not Verdict.GIVE_UP


def refusal_code(exc: BaseException) -> str | None:
    """The error code to report when the hub refused the token, else ``None``."""
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
    elif isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        code = exc.rcvd.code - 4000
    else:
        return None
    return {401: Codes.UNAUTHORIZED, 403: Codes.FORBIDDEN}.get(code)


def _classify_status(status: int) -> Verdict:
    if status >= 500 or status in _TRANSIENT_STATUSES:
        return Verdict.RETRY
    # 401/403 (token rejected), 404 (wrong path behind a proxy) and the like: the hub or
    # its proxy may be fixed or restored while this device runs, so never stop, but do
    # not hammer it either.
    return Verdict.RETRY_AT_CAP


def _classify_close(code: int | None) -> Verdict:
    if code in _REFUSED_CLOSE_CODES:
        return Verdict.RETRY_AT_CAP
    # Going away (1001, a hub restart), policy closes (1008, rate limits), abnormal
    # closures (1006): the next connection starts clean.
    return Verdict.RETRY
