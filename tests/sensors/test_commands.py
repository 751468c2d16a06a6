"""Pure tests of command checks: what may be written to a port, and the bytes written."""

from __future__ import annotations

from typing import Any

import pytest

from agent.sensors.commands import encode_command, shown_command
from agent.sensors.errors import SerialWriteError, WriteRefusal
from agent.sensors.settings import Framing, SerialPortSettings


def port(**options: Any) -> SerialPortSettings:
    return SerialPortSettings(name="relay", port="/dev/null", **options)


def refused(settings: SerialPortSettings, command: str | bytes) -> SerialWriteError:
    with pytest.raises(SerialWriteError) as info:
        encode_command(settings, command)
    assert info.value.port == "relay"
    assert "'relay'" in str(info.value)
    return info.value


def test_not_writable_is_refused_naming_command_and_port() -> None:
    error = refused(port(), "LED ON")
    assert error.reason is WriteRefusal.NOT_WRITABLE
    assert error.command == "'LED ON'"
    assert "'LED ON'" in str(error)
    assert "writable = true" in str(error)


def test_text_command_gets_the_line_ending() -> None:
    assert encode_command(port(writable=True), "LED ON") == b"LED ON\n"
    assert encode_command(port(writable=True, delimiter="\r\n"), b"LED ON") == b"LED ON\r\n"


@pytest.mark.parametrize("command", ["LED ON\n", "LED ON\r\n", "LED ON;"])
def test_one_trailing_line_ending_is_tolerated(command: str) -> None:
    assert encode_command(port(writable=True, delimiter=";"), command) == b"LED ON;"


def test_nmea_commands_end_with_cr_lf() -> None:
    assert encode_command(port(writable=True, framing=Framing.NMEA), "$PMTK101*32") == (
        b"$PMTK101*32\r\n"
    )


@pytest.mark.parametrize("command", ["", "\n", "LED ON\nREBOOT", "A\rB", "x;y"])
def test_a_command_is_one_non_empty_line(command: str) -> None:
    error = refused(port(writable=True, delimiter=";"), command)
    assert error.reason is WriteRefusal.BAD_COMMAND
    assert "one non-empty line" in str(error)


def test_allow_list_is_matched_in_full() -> None:
    settings = port(writable=True, allow=["LED (ON|OFF)", "FAN [0-9]{1,3}"])
    assert encode_command(settings, "FAN 80") == b"FAN 80\n"
    for command in ["LED DIM", "LED ONX", "xLED ON", "REBOOT"]:
        error = refused(settings, command)
        assert error.reason is WriteRefusal.NOT_ALLOWED
        assert repr(command) in str(error)
        assert "'LED (ON|OFF)'" in str(error)


def test_too_long_for_the_port() -> None:
    error = refused(port(writable=True, max_line_bytes=16), "x" * 16)
    assert error.reason is WriteRefusal.BAD_COMMAND
    assert "at most 16 bytes" in str(error)


def test_text_the_encoding_cannot_carry() -> None:
    error = refused(port(writable=True, encoding="ascii"), "café")
    assert error.reason is WriteRefusal.BAD_COMMAND
    assert "ascii text" in str(error)
    error = refused(port(writable=True), b"\xff\xfe")
    assert "utf-8 text" in str(error)


def test_raw_ports_take_bytes_as_they_are() -> None:
    settings = port(writable=True, framing=Framing.RAW)
    assert encode_command(settings, b"\x01\x02\n\xff") == b"\x01\x02\n\xff"
    assert encode_command(settings, "go") == b"go"
    assert refused(settings, b"").reason is WriteRefusal.BAD_COMMAND


def test_raw_ports_with_an_allow_list_check_the_text() -> None:
    settings = port(writable=True, framing=Framing.RAW, allow=["go|stop"])
    assert encode_command(settings, b"stop") == b"stop"
    assert refused(settings, b"jump").reason is WriteRefusal.NOT_ALLOWED
    assert refused(settings, b"\xff").reason is WriteRefusal.BAD_COMMAND


def test_shown_command_is_cut_short() -> None:
    assert shown_command("x" * 200).endswith("...")
    assert len(shown_command("x" * 200)) == 80
    assert shown_command(b"ab") == "b'ab'"
