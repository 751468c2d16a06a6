"""Errors of web push.

    EdgeAgentError
     ├── RealtimeError
     │    └── HubRequestError   a call to the hub's push API failed (``status``; ``None``:
     │                          the hub was not reached or its answer was not read)
     └── PushError              web push on the hub or the agent's outbox
          └── VapidKeyError     the VAPID key file cannot be read (``path``)

Requests with bad input are answered with the reference's ``RealtimeError`` codes
(INVALID_PARAMETER, FORBIDDEN); the hub's API turns those into 4xx answers.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import EdgeAgentError, RealtimeError

__all__ = ["HubRequestError", "PushError", "VapidKeyError"]


class HubRequestError(RealtimeError):
    """The hub answered a push API call with an error, or could not be reached."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status


class PushError(EdgeAgentError):
    """A web push problem that is not the caller's input."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class VapidKeyError(PushError):
    """The VAPID private key at ``path`` is not a P-256 key in PEM."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot use the VAPID key {path}: {reason}")
        self.path = path
