"""Errors of edge-agent: one root, one base per subsystem, data on every error.

    EdgeAgentError
     ├── RealtimeError      code + message as in the realtime API reference
     │    ├── DeviceNotFoundError   DEVICE_NOT_FOUND, names the device when known
     │    └── HubRequestError       an HTTP call to the hub failed (``status``; ``None``:
     │                              the hub was not reached or its answer not read)
     ├── ConfigError        file, key and line of a bad setting
     ├── AccountError       duplicate name, bad password input, bad grant
     │    └── AccountNotFoundError  no account of that name (``name``)
     ├── AuthError          a token or password that is missing, bad or expired (``reason``)
     │
     │   each subsystem's own base, in its ``errors`` module:
     ├── MediaError         (agent.media.errors) EncoderUnavailableError;
     │                      BitstreamError (also a ValueError: bytes that cannot be split)
     ├── PushError          (agent.push.errors) VapidKeyError; QueueFullError (push.queue)
     ├── SensorError        (agent.sensors.errors) UnknownPortError, SerialWriteError
     ├── EventError         (agent.events.errors) UnknownRuleError, ControlError, LinkDownError
     ├── StackLoadError     (agent.rtc.errors) the media stack cannot be loaded
     ├── BackplaneError     (agent.hub.backplane) BackplaneDown (its Redis is away)
     └── ThrottleStoreDown  (agent.hub.login) the cluster's shared login throttle is away
    RealtimeError also roots CallEndedError (agent.rtc.errors), which carries the
    reference's codes.

A frame the hub cannot accept is not an exception: :class:`agent.protocol.ProtocolError` is
the value the pure parser returns, answered as ``#error``. The reference API's codes and
texts are kept exactly (see ``Texts``), so code written against the reference reads the
same in Python.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AccountError",
    "AccountNotFoundError",
    "AuthError",
    "Codes",
    "ConfigError",
    "DeviceNotFoundError",
    "EdgeAgentError",
    "HubRequestError",
    "RealtimeError",
    "Texts",
]


class Codes:
    """Error codes used on the wire and in ``RealtimeError.code``."""

    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_PARAMETER = "INVALID_PARAMETER"
    NOT_FOUND = "NOT_FOUND"
    NOT_CONNECTED = "NOT_CONNECTED"
    FORBIDDEN = "FORBIDDEN"
    UNAUTHORIZED = "UNAUTHORIZED"
    RATE_LIMITED = "RATE_LIMITED"
    DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND"
    ERROR = "ERROR"


class Texts:
    """The reference API's error texts, word for word."""

    NO_CONNECTION = "No realtime connection. Execute connectRealtime() before this method."
    NOT_OPEN = "Realtime connection is not open. Try reconnecting with connectRealtime()."
    CALLBACK = "Callback must be a function."
    CONNECTION_ERROR = "Skapi: WebSocket connection error."
    DEVICE_NOT_FOUND = "Requested media device not found."

    @staticmethod
    def not_joined(group: str) -> str:
        """Text for posting to a group that the connection has not joined."""
        return f"User has not joined to the recipient group. Run joinRealtime('{group}')"

    @staticmethod
    def duplicate_channel(protocol: str) -> str:
        """Text for a second data channel with the same protocol."""
        return f'Data channel with the protocol "{protocol}" already exists.'


class EdgeAgentError(Exception):
    """Root of every error edge-agent raises on purpose."""


class RealtimeError(EdgeAgentError):
    """An error of the realtime API, with the reference's ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """The reference's error shape: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}


class DeviceNotFoundError(RealtimeError):
    """A camera, microphone or other local device that is configured but absent."""

    def __init__(self, device: str | None = None, message: str = Texts.DEVICE_NOT_FOUND) -> None:
        super().__init__(Codes.DEVICE_NOT_FOUND, message)
        self.device = device


class HubRequestError(RealtimeError):
    """A call to the hub's HTTP API failed: the hub's code and message, and the HTTP
    ``status`` for retry policy (``None`` when the hub was not reached or its answer was
    unusable)."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status


class ConfigError(EdgeAgentError):
    """A settings file or value that is wrong; says which file, key and line."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = Path(file) if file is not None else None
        self.key = key
        self.line = line
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file) + (f":{self.line}" if self.line else ""))
        if self.key:
            where.append(f"key {self.key!r}")
        return (", ".join(where) + ": " if where else "") + self.message


class AccountError(EdgeAgentError):
    """An account operation that cannot be done (unknown user, duplicate name, ...)."""


class AccountNotFoundError(AccountError):
    """No account has the name ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__(f'No account named "{name}" (see: edge-agent user list).')
        self.name = name


class AuthError(EdgeAgentError):
    """A token or password that cannot be accepted; ``reason`` is machine-readable."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
