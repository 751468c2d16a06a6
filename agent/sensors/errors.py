"""Errors of serial sensors and actuators; every one names its port.

EdgeAgentError
 └── SensorError            a serial port problem (``port``)
      ├── UnknownPortError  no [[serial]] entry has that name
      └── SerialWriteError  a command refused or not written (``reason``, ``command``)
"""

from __future__ import annotations

import enum

from agent.errors import EdgeAgentError

__all__ = ["SensorError", "SerialWriteError", "UnknownPortError", "WriteRefusal"]


class WriteRefusal(enum.StrEnum):
    """Why a command was not written to a port."""

    NOT_WRITABLE = "not_writable"
    NOT_ALLOWED = "not_allowed"
    BAD_COMMAND = "bad_command"
    PORT_DOWN = "port_down"
    WRITE_FAILED = "write_failed"


class SensorError(EdgeAgentError):
    """A problem with the serial port ``port``."""

    def __init__(self, message: str, *, port: str) -> None:
        super().__init__(message)
        self.message = message
        self.port = port


class UnknownPortError(SensorError):
    """No ``[[serial]]`` entry is named ``port``."""

    def __init__(self, port: str, known: list[str]) -> None:
        names = ", ".join(repr(name) for name in known) or "none"
        super().__init__(f"no serial port named {port!r} (configured: {names})", port=port)


class SerialWriteError(SensorError):
    """A command that was refused or could not be written; ``reason`` says which."""

    def __init__(self, message: str, *, port: str, command: str, reason: WriteRefusal) -> None:
        super().__init__(message, port=port)
        self.command = command
        self.reason = reason
