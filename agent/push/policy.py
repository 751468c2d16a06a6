"""What an answer means, as pure code: push service answers (RFC 8030) and hub answers.

Push service (RFC 8030 section 5 and 8.4, RFC 8292 section 4):

- 2xx: accepted (201 Created is the usual answer);
- 404 Not Found / 410 Gone: the subscription has expired or was revoked: remove it;
- 413 Payload Too Large: the message is over the service's limit, which our 3 KB cap
  should make impossible: our bug, logged loudly, not retried;
- 429 Too Many Requests and 503 Service Unavailable: wait as long as ``Retry-After`` says
  (RFC 9110 sections 10.2.3, 15.5.30, 15.6.4), then retry; without it, back off;
- 5xx, 408 and a failed connection: transient, retried with backoff within the TTL;
- other 4xx (400, 401/403 for a VAPID problem): rejected; retrying would not help.

:func:`next_attempt_delay` is the one place that says how long a delivery waits before
its next attempt. The agent's outbox asks :func:`hub_rejected_for_good` about the hub's
answers.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
from collections.abc import Callable
from typing import Final

from agent.retry import full_jitter

__all__ = [
    "PushOutcome",
    "classify_push_status",
    "hub_rejected_for_good",
    "next_attempt_delay",
    "retry_after_seconds",
]

# A Retry-After longer than this is not worth waiting for inside one delivery.
_MAX_RETRY_AFTER: Final = 24 * 3600.0
# Hub answers that no retry can get past: a bad request, a refused recipient, too large.
# 401 (a token the hub does not know yet, e.g. accounts being restored), 404 (a hub
# without push routes behind a proxy), 408, 425, 429 and 5xx are worth another try.
_HUB_FINAL_STATUSES: Final = frozenset({400, 403, 405, 409, 410, 413, 415, 422})
# Answers whose Retry-After says when to come back.
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


class PushOutcome(enum.Enum):
    """What to do after a push service answered."""

    DELIVERED = "delivered"
    GONE = "gone"  # remove the subscription
    TOO_LARGE = "too_large"  # our bug: log, drop
    RATE_LIMITED = "rate_limited"  # wait Retry-After, retry
    RETRY = "retry"  # transient: back off, retry
    REJECTED = "rejected"  # drop; retrying cannot help


def classify_push_status(status: int | None) -> PushOutcome:
    """The outcome of a push service answer; ``None`` is a request that got no answer."""
    if status is None or status >= 500 or status == 408:
        return PushOutcome.RETRY
    if 200 <= status < 300:
        return PushOutcome.DELIVERED
    return _CLIENT_ERRORS.get(status, PushOutcome.REJECTED)


_CLIENT_ERRORS: Final = {
    404: PushOutcome.GONE,
    410: PushOutcome.GONE,
    413: PushOutcome.TOO_LARGE,
    429: PushOutcome.RATE_LIMITED,
}


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date), if valid."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT (RFC 9110 section 5.6.7)
        return None
    seconds = when.timestamp() - now
    return min(max(0.0, seconds), _MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def next_attempt_delay(
    status: int | None,
    *,
    attempts: int,
    retry_after: str | None,
    now: float,
    initial: float,
    cap: float,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Seconds until the next attempt of a delivery that got ``status`` on its attempt
    number ``attempts`` (0 first): what ``Retry-After`` asks on 429 and 503, else full
    jitter below ``min(cap, initial * 2**attempts)``."""
    if status in _RETRY_AFTER_STATUSES:
        asked = retry_after_seconds(retry_after, now=now)
        if asked is not None:
            return asked
    return full_jitter(attempts, initial=initial, cap=cap, jitter=jitter)


def hub_rejected_for_good(status: int | None) -> bool:
    """Whether the hub's answer means the alert can never be accepted (drop it)."""
    return status is not None and status in _HUB_FINAL_STATUSES
