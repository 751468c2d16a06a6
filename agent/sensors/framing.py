"""Serial framing as pure code: bytes in, readings and bad-data records out.

Nothing here reads a port, sleeps or looks at a clock: the caller passes the bytes it read and
the time it read them. A framer never raises out of ``feed``; whatever it cannot use
(undecodable bytes, a line over the limit, bad JSON, a wrong NMEA checksum) comes back as a
``BadData`` record for the caller to count and log, and framing carries on at the next
delimiter.

Framings: ``lines`` (text lines, optionally parsed by a regex with named groups), ``json``
(one object per line), ``nmea`` (NMEA 0183 sentences, checksum verified) and ``raw`` (chunks).
"""

from __future__ import annotations

import base64
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agent.sensors.settings import Framing, SerialPortSettings

__all__ = [
    "BadData",
    "BadDataKind",
    "Framer",
    "JsonFramer",
    "LineSplitter",
    "LinesFramer",
    "NmeaFramer",
    "Oversize",
    "RawFramer",
    "Reading",
    "make_framer",
    "parse_nmea",
    "to_number",
]

_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NMEA_ADDRESS_RE: Final = re.compile(r"[A-Z0-9]{3,}")
_HEX2_RE: Final = re.compile(r"[0-9A-Fa-f]{2}")


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a port: parsed ``fields``, a text ``line``, or a ``raw`` chunk."""

    port: str
    ts: float
    fields: Mapping[str, Any] | None = None
    line: str | None = None
    raw: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        """The wire shape: ``port``, ``ts`` and ``fields``, else ``raw`` (text or base64)."""
        out: dict[str, Any] = {"port": self.port, "ts": self.ts}
        if self.fields is not None:
            out["fields"] = dict(self.fields)
        elif self.line is not None:
            out["raw"] = self.line
        else:
            out["raw"] = base64.b64encode(self.raw or b"").decode("ascii")
            out["encoding"] = "base64"
        return out


class BadDataKind(enum.StrEnum):
    """Why bytes from a port were skipped."""

    UNDECODABLE = "undecodable"
    OVERSIZE = "oversize"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    BAD_CHECKSUM = "bad_checksum"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class BadData:
    """Bytes a framer skipped: which port, why, and how many bytes."""

    port: str
    kind: BadDataKind
    detail: str
    size: int


class Framer(Protocol):
    """Turns the bytes of one port into readings; never raises."""

    def feed(self, data: bytes, ts: float) -> list[Reading | BadData]:
        """Take ``data`` read at ``ts``; return what it completed, in order."""
        ...


@dataclass(frozen=True, slots=True)
class Oversize:
    """A line longer than the limit; ``size`` bytes of it were seen before it was dropped."""

    size: int


class LineSplitter:
    """Cuts bytes at a delimiter, bounded: a line over ``max_line_bytes`` is skipped whole."""

    def __init__(self, delimiter: bytes, max_line_bytes: int) -> None:
        self._delimiter = delimiter
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | Oversize]:
        """Lines completed by ``data`` (without the delimiter), and oversize markers."""
        self._buffer += data
        out: list[bytes | Oversize] = []
        while (item := self._next()) is not None:
            out.append(item)
        return out

    def _next(self) -> bytes | Oversize | None:
        while True:
            end = self._buffer.find(self._delimiter)
            if not self._skipping:
                return self._take(end)
            if end < 0:
                self._keep_tail()
                return None
            # The rest of an oversize line, already reported: drop it with its delimiter.
            del self._buffer[: end + len(self._delimiter)]
            self._skipping = False

    def _take(self, end: int) -> bytes | Oversize | None:
        if end < 0:
            # Only when even the longest allowed line plus a partial delimiter cannot
            # explain the buffer is the line certainly too long.
            if len(self._buffer) > self._max + len(self._delimiter) - 1:
                seen = len(self._buffer)
                self._skipping = True
                self._keep_tail()
                return Oversize(seen)
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + len(self._delimiter)]
        return Oversize(len(line)) if len(line) > self._max else line

    def _keep_tail(self) -> None:
        # Keep what could be the start of a delimiter split across two reads.
        keep = len(self._delimiter) - 1
        del self._buffer[: len(self._buffer) - keep]


class _TextLines:
    """Lines decoded as text; the shared first stage of the line-based framers."""

    def __init__(self, settings: SerialPortSettings) -> None:
        self.port = settings.name
        self._encoding = settings.encoding
        self._max = settings.max_line_bytes
        self._splitter = LineSplitter(
            settings.delimiter.encode(settings.encoding), settings.max_line_bytes
        )
        # Devices that end lines with CR LF are read fine with the default "\n".
        self._strip_cr = settings.delimiter == "\n"

    def feed(self, data: bytes) -> list[str | BadData]:
        out: list[str | BadData] = []
        for item in self._splitter.feed(data):
            decoded = self._decode(item)
            if decoded != "":
                out.append(decoded)
        return out

    def _decode(self, item: bytes | Oversize) -> str | BadData:
        if isinstance(item, Oversize):
            detail = f"line longer than {self._max} bytes skipped"
            return BadData(self.port, BadDataKind.OVERSIZE, detail, item.size)
        try:
            text = item.decode(self._encoding)
        except UnicodeDecodeError as exc:
            detail = f"line is not valid {self._encoding}: {exc.reason} at byte {exc.start}"
            return BadData(self.port, BadDataKind.UNDECODABLE, detail, len(item))
        return text.removesuffix("\r") if self._strip_cr else text


class LinesFramer:
    """Text lines; with a ``parse`` regex, its named groups become fields."""

    def __init__(self, settings: SerialPortSettings) -> None:
        self._lines = _TextLines(settings)
        self._parse = re.compile(settings.parse) if settings.parse else None

    def feed(self, data: bytes, ts: float) -> list[Reading | BadData]:
        """See ``Framer.feed``."""
        return [
            item if isinstance(item, BadData) else self._reading(item, ts)
            for item in self._lines.feed(data)
        ]

    def _reading(self, line: str, ts: float) -> Reading:
        port = self._lines.port
        match = self._parse.search(line) if self._parse else None
        if match is None:
            return Reading(port, ts, line=line)
        fields = {
            key: value if value is None else to_number(value)
            for key, value in match.groupdict().items()
        }
        return Reading(port, ts, fields=fields, line=line)


class JsonFramer:
    """One JSON object per line; its members are the fields."""

    def __init__(self, settings: SerialPortSettings) -> None:
        self._lines = _TextLines(settings)

    def feed(self, data: bytes, ts: float) -> list[Reading | BadData]:
        """See ``Framer.feed``."""
        return [
            item if isinstance(item, BadData) else self._reading(item, ts)
            for item in self._lines.feed(data)
        ]

    def _reading(self, line: str, ts: float) -> Reading | BadData:
        port = self._lines.port
        size = len(line.encode("utf-8", "replace"))
        try:
            value = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            detail = f"not JSON: {_short(str(exc))}"
            return BadData(port, BadDataKind.BAD_JSON, detail, size)
        if not isinstance(value, dict):
            detail = f"a JSON {type(value).__name__} where an object was expected"
            return BadData(port, BadDataKind.NOT_OBJECT, detail, size)
        return Reading(port, ts, fields=value, line=line)


class NmeaFramer:
    """NMEA 0183 sentences: ``$TTSSS,f1,f2*HH`` with the checksum verified."""

    def __init__(self, settings: SerialPortSettings) -> None:
        self._lines = _TextLines(settings)

    def feed(self, data: bytes, ts: float) -> list[Reading | BadData]:
        """See ``Framer.feed``."""
        out: list[Reading | BadData] = []
        for item in self._lines.feed(data):
            if isinstance(item, BadData):
                out.append(item)
                continue
            parsed = parse_nmea(item)
            port = self._lines.port
            if isinstance(parsed, tuple):
                kind, detail = parsed
                out.append(BadData(port, kind, detail, len(item)))
            else:
                out.append(Reading(port, ts, fields=parsed, line=item))
        return out


class RawFramer:
    """Bytes as they arrive, in chunks of at most ``max_line_bytes``."""

    def __init__(self, settings: SerialPortSettings) -> None:
        self._port = settings.name
        self._max = settings.max_line_bytes

    def feed(self, data: bytes, ts: float) -> list[Reading | BadData]:
        """See ``Framer.feed``."""
        step = self._max
        return [
            Reading(self._port, ts, raw=data[start : start + step])
            for start in range(0, len(data), step)
        ]


def make_framer(settings: SerialPortSettings) -> Framer:
    """The framer that ``settings.framing`` names."""
    framers: dict[Framing, type[LinesFramer | JsonFramer | NmeaFramer | RawFramer]] = {
        Framing.LINES: LinesFramer,
        Framing.JSON: JsonFramer,
        Framing.NMEA: NmeaFramer,
        Framing.RAW: RawFramer,
    }
    return framers[settings.framing](settings)


def parse_nmea(sentence: str) -> dict[str, Any] | tuple[BadDataKind, str]:
    """Fields of an NMEA 0183 sentence, or why it is not one.

    The checksum is the XOR of every character between ``$`` (or ``!``) and ``*``, written
    as two hex digits (NMEA 0183 section 5.2.1). Fields are ``talker`` (``"P"`` for
    proprietary sentences), ``sentence`` (the type, e.g. ``"GGA"``) and ``values`` (the
    comma-separated data fields as text: leading zeros matter, as in ``"0123"`` for a time).
    """
    if not sentence.startswith(("$", "!")):
        return BadDataKind.MALFORMED, f"not an NMEA sentence (starts {sentence[:1]!r})"
    body, star, check = sentence[1:].rpartition("*")
    if not star or not _HEX2_RE.fullmatch(check):
        return BadDataKind.MALFORMED, "NMEA sentence without a *HH checksum"
    computed = 0
    for char in body:
        computed ^= ord(char)
    if computed != int(check, 16):
        detail = f"NMEA checksum {check.upper()} does not match the computed {computed:02X}"
        return BadDataKind.BAD_CHECKSUM, detail
    address, *values = body.split(",")
    if not _NMEA_ADDRESS_RE.fullmatch(address):
        return BadDataKind.MALFORMED, f"NMEA address {_short(address)!r} is not valid"
    # Proprietary sentences are "P" + a manufacturer code; the rest have a 2-letter talker.
    talker, kind = ("P", address[1:]) if address.startswith("P") else (address[:2], address[2:])
    return {"talker": talker, "sentence": kind, "values": values}


def to_number(text: str) -> int | float | str:
    """``text`` as an int or a finite float where it reads as one, else unchanged."""
    stripped = text.strip()
    try:
        if _INT_RE.fullmatch(stripped):
            return int(stripped)
        if _FLOAT_RE.fullmatch(stripped):
            number = float(stripped)
            return number if math.isfinite(number) else text
    except ValueError:
        # Longer than int() converts (sys.get_int_max_str_digits): keep the text.
        return text
    return text


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 section 6) and cannot be sent on.
    raise ValueError(f"{name} is not a JSON number")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
