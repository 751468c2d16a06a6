"""Settings models of serial ports: defaults, conversions and clear refusals."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent.sensors.settings import (
    Framing,
    Parity,
    SensorsSettings,
    SerialPortSettings,
    check_port_names,
)


def port(**options: Any) -> SerialPortSettings:
    return SerialPortSettings.model_validate({"name": "env", "port": "/dev/ttyUSB0", **options})


def refusal(**options: Any) -> str:
    with pytest.raises(ValidationError) as info:
        port(**options)
    return str(info.value)


def test_defaults() -> None:
    settings = port()
    assert (settings.baudrate, settings.bytesize, settings.parity, settings.stopbits) == (
        9600,
        8,
        Parity.NONE,
        1,
    )
    assert settings.framing is Framing.LINES
    assert (settings.delimiter, settings.encoding, settings.max_line_bytes) == (
        "\n",
        "utf-8",
        4096,
    )
    assert not settings.writable
    assert settings.allow == []
    assert settings.parse_groups == ()
    assert not settings.is_url
    assert port(parse=None).parse is None


def test_toml_shaped_values() -> None:
    settings = port(
        port="socket://127.0.0.1:7000",
        baudrate=115200,
        bytesize=7,
        parity="even",
        stopbits=1.5,
        encoding="LATIN-1",
        parse=r"T=(?P<temp>\S+) H=(?P<hum>\S+)",
        writable=True,
        allow=["LED (ON|OFF)"],
    )
    assert settings.parity.pyserial == "E"
    assert settings.encoding == "iso8859-1"
    assert settings.parse_groups == ("temp", "hum")
    assert settings.is_url


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": ""}, "name"),
        ({"port": ""}, "port"),
        ({"baudrate": 0}, "baudrate"),
        ({"bytesize": 9}, "bytesize"),
        ({"parity": "sometimes"}, "parity"),
        ({"stopbits": 3}, "stopbits is 1, 1.5 or 2, not 3"),
        ({"framing": "xml"}, "framing"),
        ({"encoding": "klingon"}, "unknown text encoding 'klingon'"),
        ({"max_line_bytes": 1}, "max_line_bytes"),
        ({"parse": "(unclosed"}, "parse regex '(unclosed' does not compile"),
        ({"parse": "T=[0-9]+"}, "has no named group"),
        ({"parse": "(?P<t>.*)", "framing": "json"}, "parse applies to framing 'lines' only"),
        ({"allow": ["[z-a]"], "writable": True}, "allow regex '[z-a]' does not compile"),
        ({"allow": ["LED ON"]}, "allow is set but port 'env' is not writable = true"),
        ({"delimiter": "€", "encoding": "ascii"}, "cannot be written in encoding 'ascii'"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_refusals_name_the_problem(options: dict[str, Any], words: str) -> None:
    assert words in refusal(**options)


def test_duplicate_port_names() -> None:
    check_port_names([port(), port(name="gps")])
    with pytest.raises(ValueError, match="two \\[\\[serial\\]\\] entries are named 'env'"):
        check_port_names([port(), port(port="/dev/ttyUSB1")])


def test_sensors_section() -> None:
    assert SensorsSettings().telemetry_seconds is None
    section = SensorsSettings(telemetry_seconds=60, telemetry_groups=["ops"])
    assert section.telemetry_groups == ["ops"]
    with pytest.raises(ValidationError, match="telemetry_seconds"):
        SensorsSettings(telemetry_seconds=0.1)
