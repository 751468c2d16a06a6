"""Settings of serial sensors and actuators: ``[[serial]]`` entries and the ``[sensors]`` table.

A ``[[serial]]`` entry in TOML::

    [[serial]]
    name = "env"                  # shown to callers; the channel is "serial:env"
    port = "/dev/ttyUSB0"         # a device path or a pyserial URL (socket://, rfc2217://)
    baudrate = 115200
    framing = "lines"             # lines | json | nmea | raw
    parse = 'T=(?P<temp>\\S+) H=(?P<humidity>\\S+)'
    writable = true
    allow = ['LED (ON|OFF)', 'FAN [0-9]{1,3}']
    units = { temp = "°C", humidity = "%" }

The models are standalone so ``agent.config.Settings`` can hold them as
``serial: list[SerialPortSettings]`` and ``sensors: SensorsSettings``.
"""

from __future__ import annotations

import codecs
import enum
import re
from collections.abc import Sequence
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "PORT_NAME_PATTERN",
    "Framing",
    "Parity",
    "SensorsSettings",
    "SerialPortSettings",
    "check_port_names",
]

# Port names end up in data channel labels ("serial:NAME") and log lines: plain words only.
PORT_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_MAX_LINE_BYTES: Final = 1 << 20
_STOPBITS: Final = (1, 1.5, 2)


class Framing(enum.StrEnum):
    """How the byte stream of a port is cut into readings."""

    LINES = "lines"  # text lines; an optional ``parse`` regex turns them into fields
    JSON = "json"  # one JSON object per line
    NMEA = "nmea"  # NMEA 0183 sentences, checksum verified
    RAW = "raw"  # chunks of bytes as they arrive


class Parity(enum.StrEnum):
    """Parity bit setting, spelled out (pyserial's one-letter codes via ``pyserial``)."""

    NONE = "none"
    EVEN = "even"
    ODD = "odd"
    MARK = "mark"
    SPACE = "space"

    @property
    def pyserial(self) -> str:
        """The pyserial constant (``"N"``, ``"E"``, ...)."""
        return self.value[0].upper()


class SerialPortSettings(BaseModel):
    """One serial port ([[serial]]): where it is, how to talk to it, what may be written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=PORT_NAME_PATTERN)
    port: str = Field(min_length=1)
    baudrate: int = Field(9600, gt=0, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = Parity.NONE
    stopbits: float = 1
    framing: Framing = Framing.LINES
    delimiter: str = Field("\n", min_length=1, max_length=8)
    encoding: str = "utf-8"
    max_line_bytes: int = Field(4096, ge=16, le=_MAX_LINE_BYTES)
    parse: str | None = None
    writable: bool = False
    # Commands must match one of these entirely (re.fullmatch) to be written; empty: any.
    allow: list[str] = Field(default_factory=list)
    # Units of the fields, shown with the readings: {temp = "°C", humidity = "%"}.
    units: dict[str, Annotated[str, Field(max_length=16)]] = Field(
        default_factory=dict, max_length=64
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None

    @field_validator("stopbits")
    @classmethod
    def _known_stopbits(cls, value: float) -> float:
        if value not in _STOPBITS:
            raise ValueError(f"stopbits is 1, 1.5 or 2, not {value}")
        return value

    @field_validator("parse")
    @classmethod
    def _parse_regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        pattern = _compile(value, "parse")
        if not pattern.groupindex:
            raise ValueError(
                f"parse regex {value!r} has no named group; name the fields: (?P<temp>[0-9.]+)"
            )
        return value

    @field_validator("allow")
    @classmethod
    def _allow_regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _compile(pattern, "allow")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SerialPortSettings:
        if self.parse is not None and self.framing is not Framing.LINES:
            raise ValueError(
                f"parse applies to framing 'lines' only (port {self.name!r} uses "
                f"{self.framing.value!r})"
            )
        try:
            self.delimiter.encode(self.encoding)
        except UnicodeEncodeError:
            raise ValueError(
                f"delimiter {self.delimiter!r} cannot be written in encoding {self.encoding!r}"
            ) from None
        if self.allow and not self.writable:
            raise ValueError(f"allow is set but port {self.name!r} is not writable = true")
        return self

    @property
    def parse_groups(self) -> tuple[str, ...]:
        """Field names the ``parse`` regex yields (empty without one)."""
        return tuple(re.compile(self.parse).groupindex) if self.parse else ()

    @property
    def is_url(self) -> bool:
        """Whether ``port`` is a pyserial URL rather than a device path."""
        return "://" in self.port


class SensorsSettings(BaseModel):
    """Options for all ports together ([sensors]): telemetry posted to groups."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Post the latest readings every this many seconds; unset: no telemetry.
    telemetry_seconds: float | None = Field(None, ge=1.0)
    # Groups to post telemetry to; unset: the agent's own groups.
    telemetry_groups: list[str] | None = None
    # Readings buffered per subscriber (a data channel) before its oldest are dropped.
    queue_size: int = Field(256, ge=1, le=65536)


def check_port_names(ports: Sequence[SerialPortSettings]) -> None:
    """Raise ``ValueError`` when two ``[[serial]]`` entries share a name."""
    seen: set[str] = set()
    for port in ports:
        if port.name in seen:
            raise ValueError(f"two [[serial]] entries are named {port.name!r}; names are unique")
        seen.add(port.name)


def _compile(pattern: str, key: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key} regex {pattern!r} does not compile: {exc}") from None
