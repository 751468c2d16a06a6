"""Commands written to a port, checked as pure code: writable, allowed, well formed.

Text commands are written with the port's line ending, so a caller sends ``"LED ON"`` and the
device reads ``b"LED ON\\n"``. A command may not carry a line break of its own: one allowed
command must not smuggle in a second one after it.
"""

from __future__ import annotations

import re
from typing import Final, NoReturn

from agent.sensors.errors import SerialWriteError, WriteRefusal
from agent.sensors.settings import Framing, SerialPortSettings

__all__ = ["encode_command", "shown_command"]

_SHOWN_CHARS: Final = 80
# NMEA 0183 sentences end with <CR><LF> whatever delimiter reading uses.
_NMEA_ENDING: Final = "\r\n"


def encode_command(settings: SerialPortSettings, command: str | bytes) -> bytes:
    """The bytes to write for ``command``; ``SerialWriteError`` naming why it is refused."""
    shown = shown_command(command)
    if not settings.writable:
        _refuse(
            settings,
            shown,
            WriteRefusal.NOT_WRITABLE,
            "is not writable (set writable = true in its [[serial]] entry)",
        )
    if settings.framing is Framing.RAW:
        return _raw_payload(settings, command, shown)
    text = _strip_ending(_decode(settings, command, shown), settings.delimiter)
    if not text or any(mark in text for mark in ("\r", "\n", settings.delimiter)):
        _refuse(settings, shown, WriteRefusal.BAD_COMMAND, "takes one non-empty line per command")
    _check_allowed(settings, text, shown)
    ending = _NMEA_ENDING if settings.framing is Framing.NMEA else settings.delimiter
    payload = _encode(settings, text + ending, shown)
    if len(payload) > settings.max_line_bytes:
        _refuse(
            settings,
            shown,
            WriteRefusal.BAD_COMMAND,
            f"takes commands of at most {settings.max_line_bytes} bytes",
        )
    return payload


def shown_command(command: str | bytes) -> str:
    """``command`` as it appears in errors and logs: quoted and cut short."""
    text = repr(command)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _raw_payload(settings: SerialPortSettings, command: str | bytes, shown: str) -> bytes:
    data = _encode(settings, command, shown) if isinstance(command, str) else command
    if not data:
        _refuse(settings, shown, WriteRefusal.BAD_COMMAND, "takes non-empty commands")
    if settings.allow:
        # An allow list is text patterns, so the bytes must read as text to be checked.
        _check_allowed(settings, _decode(settings, command, shown), shown)
    return data


def _decode(settings: SerialPortSettings, command: str | bytes, shown: str) -> str:
    if isinstance(command, str):
        return command
    try:
        return command.decode(settings.encoding)
    except UnicodeDecodeError:
        _refuse(settings, shown, WriteRefusal.BAD_COMMAND, f"takes {settings.encoding} text")


def _encode(settings: SerialPortSettings, text: str, shown: str) -> bytes:
    try:
        return text.encode(settings.encoding)
    except UnicodeEncodeError:
        _refuse(settings, shown, WriteRefusal.BAD_COMMAND, f"takes {settings.encoding} text")


def _strip_ending(text: str, delimiter: str) -> str:
    # Callers typing at a terminal send "LED ON\n"; one line ending is not a second command.
    for ending in (delimiter, "\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


def _check_allowed(settings: SerialPortSettings, text: str, shown: str) -> None:
    if settings.allow and not any(re.fullmatch(pattern, text) for pattern in settings.allow):
        patterns = ", ".join(repr(pattern) for pattern in settings.allow)
        _refuse(
            settings,
            shown,
            WriteRefusal.NOT_ALLOWED,
            f"does not allow it: it matches none of allow = [{patterns}]",
        )


def _refuse(settings: SerialPortSettings, shown: str, reason: WriteRefusal, why: str) -> NoReturn:
    message = f"command {shown} refused: serial port {settings.name!r} {why}"
    raise SerialWriteError(message, port=settings.name, command=shown, reason=reason)
