"""Errors of web push.

    EdgeAgentError
     └── PushError              web push on the hub or the agent's outbox
          └── VapidKeyError     the VAPID key file cannot be read (``path``)

A push call to the hub that fails raises :class:`agent.errors.HubRequestError`, as every
HTTP call of the client does (:mod:`agent.hub_http`); it is importable from here too.

Requests with bad input are answered with the reference's ``RealtimeError`` codes
(INVALID_PARAMETER, FORBIDDEN); the hub's API turns those into 4xx answers.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import EdgeAgentError, HubRequestError

__all__ = ["HubRequestError", "PushError", "VapidKeyError"]


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
