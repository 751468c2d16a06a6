"""The reconnect policy: delays and verdicts, pure (no loop, no sockets)."""

from __future__ import annotations

import itertools
import random
import ssl

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidMessage,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close
from websockets.http11 import Response

from agent.errors import Codes
from agent.retry import Verdict, backoff, capped_delay, classify, is_retryable, refusal_code


def _status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "", Headers(), b""))


def _closed(code: int | None) -> ConnectionClosedError:
    return ConnectionClosedError(None if code is None else Close(code, ""), None)


# -- backoff --------------------------------------------------------------------------------


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    delays = list(itertools.islice(backoff(initial=0.5, factor=2, cap=30, jitter=lambda: 1.0), 10))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_is_full_jitter_below_each_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.25, 0.999])
    delays = list(
        itertools.islice(backoff(initial=1, factor=3, cap=5, jitter=lambda: next(draws)), 4)
    )
    assert delays == [0.0, 1.5, 1.25, pytest.approx(4.995)]


def test_backoff_with_a_seeded_source_is_reproducible_and_bounded() -> None:
    # Jitter only spreads reconnects; no secret depends on it.
    first = list(itertools.islice(backoff(jitter=random.Random(7).random), 50))  # noqa: S311
    again = list(itertools.islice(backoff(jitter=random.Random(7).random), 50))  # noqa: S311
    assert first == again
    ceilings = list(itertools.islice(backoff(jitter=lambda: 1.0), 50))
    assert all(0 <= d <= c for d, c in zip(first, ceilings, strict=True))
    assert max(first) <= 30
    # Full jitter spreads the capped delays over the whole window, not near the cap only.
    assert min(first[10:]) < 15 < max(first[10:])


def test_backoff_never_ends() -> None:
    delays = backoff(initial=0.1, cap=0.2, jitter=lambda: 1.0)
    assert list(itertools.islice(delays, 1000))[-1] == 0.2


@pytest.mark.parametrize(
    ("initial", "factor", "cap"), [(0, 2, 30), (-1, 2, 30), (1, 0.5, 30), (10, 2, 5)]
)
def test_backoff_refuses_nonsense(initial: float, factor: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        next(backoff(initial=initial, factor=factor, cap=cap))


def test_capped_delay_stays_in_the_upper_half() -> None:
    assert capped_delay(30, lambda: 0.0) == 15.0
    assert capped_delay(30, lambda: 1.0) == 30.0
    assert capped_delay(10, lambda: 0.5) == 7.5


# -- verdicts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (ConnectionRefusedError(111, "refused"), Verdict.RETRY),
        (OSError(101, "unreachable"), Verdict.RETRY),
        (TimeoutError(), Verdict.RETRY),
        (EOFError(), Verdict.RETRY),
        (InvalidMessage("did not receive a valid HTTP response"), Verdict.RETRY),
        (_status(500), Verdict.RETRY),
        (_status(502), Verdict.RETRY),
        (_status(503), Verdict.RETRY),
        (_status(408), Verdict.RETRY),
        (_status(425), Verdict.RETRY),
        (_status(429), Verdict.RETRY),
        (_status(401), Verdict.RETRY_AT_CAP),
        (_status(403), Verdict.RETRY_AT_CAP),
        (_status(404), Verdict.RETRY_AT_CAP),
        (_status(400), Verdict.RETRY_AT_CAP),
        (_closed(None), Verdict.RETRY),
        (_closed(1001), Verdict.RETRY),
        (_closed(1006), Verdict.RETRY),
        (_closed(1008), Verdict.RETRY),
        (_closed(1011), Verdict.RETRY),
        (_closed(4429), Verdict.RETRY),
        (_closed(4408), Verdict.RETRY),
        (_closed(4000), Verdict.RETRY),
        (_closed(4401), Verdict.RETRY_AT_CAP),
        (_closed(4403), Verdict.RETRY_AT_CAP),
        (_closed(4409), Verdict.RETRY),
        (ConnectionClosedOK(Close(1000, ""), None), Verdict.RETRY),
        (ssl.SSLCertVerificationError("certificate verify failed"), Verdict.RETRY_AT_CAP),
        (InvalidURI("ws://", "no host"), Verdict.GIVE_UP),
        (InvalidProxy("http://", "bad proxy"), Verdict.GIVE_UP),
        (ValueError("a bug"), Verdict.GIVE_UP),
        (KeyError("a bug"), Verdict.GIVE_UP),
    ],
    ids=repr,
)
def test_classify(exc: BaseException, verdict: Verdict) -> None:
    assert classify(exc) is verdict
    assert is_retryable(exc) is (verdict is not Verdict.GIVE_UP)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (_status(401), Codes.UNAUTHORIZED),
        (_status(403), Codes.FORBIDDEN),
        (_closed(4401), Codes.UNAUTHORIZED),
        (_closed(4403), Codes.FORBIDDEN),
        (_status(404), None),
        (_status(500), None),
        (_closed(1000), None),
        (_closed(1401), None),
        (_closed(None), None),
        (OSError(), None),
    ],
    ids=repr,
)
def test_refusal_code(exc: BaseException, code: str | None) -> None:
    assert refusal_code(exc) == code
