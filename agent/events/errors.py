"""Errors of the events engine and its control socket.

    EdgeAgentError
     └── EventError             an event rule or the control socket
          ├── UnknownRuleError  ``trigger NAME`` names no manual rule (``name``)
          ├── ControlError      the control socket cannot be served or reached (``path``)
          └── LinkDownError     a post could not be sent: the hub link is down

Rules that do not fit the agent (a missing handler, an unknown port) are ``ConfigError``s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.errors import EdgeAgentError

__all__ = ["ControlError", "EventError", "LinkDownError", "UnknownRuleError"]


class EventError(EdgeAgentError):
    """A problem with event rules or the control socket."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownRuleError(EventError):
    """No manual rule is named ``name``."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        names = ", ".join(repr(rule) for rule in known) or "none"
        super().__init__(f"no manual rule named {name!r} (manual rules: {names})")
        self.name = name


class ControlError(EventError):
    """The control socket at ``path`` cannot be served, reached, or refused a request."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class LinkDownError(EventError):
    """A post could not be sent because the hub link is not open (it will be resent)."""
