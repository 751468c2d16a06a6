"""What a failed hub connection means: verdicts, refusal codes, log lines (pure, no socket)."""

from __future__ import annotations

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

from agent.client.failures import (
    classify,
    describe,
    failure,
    is_restart,
    is_retryable,
    most_telling,
    refusal_code,
)
from agent.errors import Codes
from agent.retry import Failure, Verdict

LOST = ConnectionRefusedError(111, "refused")


def _status(code: int, body: bytes = b"") -> InvalidStatus:
    return InvalidStatus(Response(code, "", Headers(), body))


def _closed(code: int | None, reason: str = "") -> ConnectionClosedError:
    return ConnectionClosedError(None if code is None else Close(code, reason), None)


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


def test_is_restart_knows_1012_and_1001_only() -> None:
    assert is_restart(_closed(1012))
    assert is_restart(_closed(1001))
    assert not any(is_restart(e) for e in (_closed(1006), _closed(None), LOST, _status(503)))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_closed(1012), Failure(Verdict.RETRY, restart=True)),
        (_closed(1006), Failure(Verdict.RETRY)),
        (_status(401), Failure(Verdict.RETRY_AT_CAP)),
        (ValueError("a bug"), Failure(Verdict.GIVE_UP)),
    ],
    ids=repr,
)
def test_failure_is_what_a_schedule_is_given(exc: BaseException, expected: Failure) -> None:
    assert failure(exc) == expected


def test_most_telling_prefers_a_refusal_then_an_outage_then_the_first() -> None:
    refused, bug = _status(403), ValueError("bad")
    assert most_telling([LOST, refused, bug]) is refused
    assert most_telling([bug, LOST]) is LOST
    assert most_telling([bug, KeyError("x")]) is bug


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            _status(401, b'{"code": "UNAUTHORIZED", "message": "Token expired."}'),
            "the hub refused the connection (HTTP 401): Token expired.",
        ),
        (_status(502, b"<html>"), "the hub refused the connection (HTTP 502)"),
        (_closed(1012, "restart"), "the hub closed the connection (1012 restart)"),
        (_closed(None), "the connection was lost"),
        (TimeoutError(), "the hub did not answer in time"),
        (LOST, "cannot reach the hub: refused"),
        (ValueError("ws://h/ws?token=secret"), "connection failed (ValueError)"),
    ],
    ids=repr,
)
def test_describe_names_the_failure_and_never_the_url(exc: BaseException, text: str) -> None:
    assert describe(exc) == text
