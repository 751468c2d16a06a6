"""What a failed hub connection means: a verdict for the retry policy, a code, a sentence.

Pure functions of the exceptions ``websockets`` raises (and the OS and TLS errors under
them); :mod:`agent.retry` holds the policy itself and knows no network library. The
connection loop (:mod:`agent.client.link`) asks :func:`failure` how to wait,
:func:`refusal_code` what to report and :func:`describe` what to log.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from typing import Any, Final

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)

from agent.errors import Codes
from agent.retry import Failure, Verdict

__all__ = [
    "RESTART_CLOSE_CODES",
    "classify",
    "describe",
    "failure",
    "is_restart",
    "is_retryable",
    "most_telling",
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
# Close codes of a server that is going away on purpose and will be back: 1001 going away
# (RFC 6455 7.4.1) and 1012 service restart (IANA WebSocket close code registry).
RESTART_CLOSE_CODES: Final = frozenset({1001, 1012})


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


def is_restart(exc: BaseException) -> bool:
    """Whether the hub closed the connection because it is restarting (1012 or 1001)."""
    return (
        isinstance(exc, ConnectionClosed)
        and exc.rcvd is not None
        and exc.rcvd.code in RESTART_CLOSE_CODES
    )


def failure(exc: BaseException) -> Failure:
    """``exc`` in the terms of :mod:`agent.retry`'s schedules."""
    return Failure(classify(exc), restart=is_restart(exc))


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


def most_telling(errors: Sequence[Exception]) -> Exception:
    """The error an attempt over several hubs reports: a refusal (the token) before an
    outage, an outage before a setting no retry fixes (which is reported only if every
    hub failed that way)."""
    for wanted in (Verdict.RETRY_AT_CAP, Verdict.RETRY):
        for error in errors:
            if classify(error) is wanted:
                return error
    return errors[0]


def describe(error: BaseException) -> str:
    """One line for the log and the ``reconnect`` message; never the URL (it holds the token)."""
    if isinstance(error, InvalidStatus):
        payload = _json_or_none(bytes(error.response.body or b""))
        said = payload.get("message") if isinstance(payload, dict) else None
        status = error.response.status_code
        return f"the hub refused the connection (HTTP {status})" + (f": {said}" if said else "")
    if isinstance(error, ConnectionClosed):
        close = error.rcvd
        if close is None:
            return "the connection was lost"
        reason = f" {close.reason}" if close.reason else ""
        return f"the hub closed the connection ({close.code}{reason})"
    if isinstance(error, TimeoutError):
        return "the hub did not answer in time"
    if isinstance(error, OSError):
        return f"cannot reach the hub: {error.strerror or error}"
    # Never str() an arbitrary error here: some carry the URL, and the URL carries the token.
    return f"connection failed ({type(error).__name__})"


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


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
