"""Pure tests of serial framing: bytes in, readings and bad-data records out, no event loop."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from agent.sensors.framing import (
    BadData,
    BadDataKind,
    JsonFramer,
    LinesFramer,
    LineSplitter,
    NmeaFramer,
    Oversize,
    RawFramer,
    Reading,
    make_framer,
    parse_nmea,
    to_number,
)
from agent.sensors.settings import Framing, SerialPortSettings

TS = 1700000000.5


def port(**options: Any) -> SerialPortSettings:
    return SerialPortSettings(name="dev", port="/dev/null", **options)


def nmea(body: str) -> str:
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    return f"${body}*{checksum:02X}"


def readings(items: list[Reading | BadData]) -> list[Reading]:
    return [item for item in items if isinstance(item, Reading)]


def bad(items: list[Reading | BadData]) -> list[BadData]:
    return [item for item in items if isinstance(item, BadData)]


# --- line splitting ---------------------------------------------------------------------------


def test_splitter_lines_across_reads() -> None:
    splitter = LineSplitter(b"\n", 32)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde\nf") == [b"abc", b"de"]
    assert splitter.feed(b"\n") == [b"f"]


def test_splitter_multibyte_delimiter_split_between_reads() -> None:
    splitter = LineSplitter(b"\r\n", 32)
    assert splitter.feed(b"one\r") == []
    assert splitter.feed(b"\ntwo\r\n") == [b"one", b"two"]


def test_splitter_line_at_the_limit_is_kept() -> None:
    splitter = LineSplitter(b"\r\n", 4)
    # 4 bytes plus half a delimiter: not yet provably too long.
    assert splitter.feed(b"abcd\r") == []
    assert splitter.feed(b"\n") == [b"abcd"]


def test_splitter_oversize_without_delimiter_is_skipped_to_the_next_one() -> None:
    splitter = LineSplitter(b"\n", 4)
    assert splitter.feed(b"abcdefg") == [Oversize(7)]
    assert splitter.feed(b"hij") == []  # still the same oversize line: reported once
    assert splitter.feed(b"k\nok\n") == [b"ok"]


def test_splitter_oversize_skip_finds_a_delimiter_split_between_reads() -> None:
    splitter = LineSplitter(b"\r\n", 4)
    assert splitter.feed(b"abcdefgh\r") == [Oversize(9)]
    assert splitter.feed(b"\nok\r\n") == [b"ok"]


def test_splitter_oversize_complete_line_in_one_read() -> None:
    splitter = LineSplitter(b"\n", 4)
    assert splitter.feed(b"toolong\nok\n") == [Oversize(7), b"ok"]


def test_splitter_buffer_stays_bounded_under_endless_garbage() -> None:
    splitter = LineSplitter(b"\n", 16)
    for _ in range(1000):
        splitter.feed(b"x" * 100)
    assert len(splitter._buffer) <= 16 + 1


# --- lines ------------------------------------------------------------------------------------


def test_lines_plain_text() -> None:
    framer = LinesFramer(port())
    out = framer.feed(b"hello\r\nworld\n\n", TS)
    assert out == [Reading("dev", TS, line="hello"), Reading("dev", TS, line="world")]


def test_lines_keep_cr_when_the_delimiter_is_not_newline() -> None:
    framer = LinesFramer(port(delimiter=";"))
    assert framer.feed(b"a\r;b;", TS) == [
        Reading("dev", TS, line="a\r"),
        Reading("dev", TS, line="b"),
    ]


def test_lines_undecodable_is_skipped_and_reported() -> None:
    framer = LinesFramer(port())
    out = framer.feed(b"\xff\xfe\x00garbage\nok\n", TS)
    assert readings(out) == [Reading("dev", TS, line="ok")]
    (record,) = bad(out)
    assert record.kind is BadDataKind.UNDECODABLE
    assert record.port == "dev"
    assert record.size == 10
    assert "utf-8" in record.detail


def test_lines_other_encoding() -> None:
    framer = LinesFramer(port(encoding="latin-1"))
    assert readings(framer.feed(b"caf\xe9\n", TS))[0].line == "café"


def test_lines_oversize_is_reported_with_the_limit() -> None:
    framer = LinesFramer(port(max_line_bytes=16))
    out = framer.feed(b"x" * 40 + b"\nfine\n", TS)
    assert readings(out) == [Reading("dev", TS, line="fine")]
    (record,) = bad(out)
    assert record.kind is BadDataKind.OVERSIZE
    assert "16 bytes" in record.detail


def test_lines_parse_named_groups_into_numbers() -> None:
    framer = LinesFramer(port(parse=r"T=(?P<temp>\S+) H=(?P<hum>\S+)(?: S=(?P<state>\w+))?"))
    (reading,) = readings(framer.feed(b"T=21.5 H=40\n", TS))
    assert reading.fields == {"temp": 21.5, "hum": 40, "state": None}
    assert reading.line == "T=21.5 H=40"
    (reading,) = readings(framer.feed(b"T=-3 H=n/a S=ok\n", TS))
    assert reading.fields == {"temp": -3, "hum": "n/a", "state": "ok"}


def test_lines_parse_no_match_keeps_the_line() -> None:
    framer = LinesFramer(port(parse=r"T=(?P<temp>\S+)"))
    assert framer.feed(b"booting\n", TS) == [Reading("dev", TS, line="booting")]


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42),
        (" -7 ", -7),
        ("+3", 3),
        ("2.5", 2.5),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("7.", 7.0),
        ("1e999", "1e999"),  # not finite: stays text
        ("nan", "nan"),
        ("inf", "inf"),
        ("0x10", "0x10"),
        ("12abc", "12abc"),
        ("", ""),
        ("9" * 5000, "9" * 5000),  # longer than int() converts
    ],
)
def test_to_number(text: str, expected: object) -> None:
    result = to_number(text)
    assert result == expected
    assert type(result) is type(expected)


# --- json -------------------------------------------------------------------------------------


def test_json_objects_become_fields() -> None:
    framer = JsonFramer(port(framing=Framing.JSON))
    (reading,) = readings(framer.feed(b'{"temp": 21.5, "ok": true}\n', TS))
    assert reading.fields == {"temp": 21.5, "ok": True}


@pytest.mark.parametrize(
    ("line", "kind", "words"),
    [
        (b"{not json}", BadDataKind.BAD_JSON, "not JSON"),
        (b'{"a": NaN}', BadDataKind.BAD_JSON, "NaN is not a JSON number"),
        (b"[1, 2]", BadDataKind.NOT_OBJECT, "a JSON list"),
        (b"3", BadDataKind.NOT_OBJECT, "a JSON int"),
        # Nesting past the recursion limit.
        (b"[" * 3000 + b"]" * 3000, BadDataKind.BAD_JSON, "maximum recursion depth"),
    ],
)
def test_json_bad_lines_are_reported(line: bytes, kind: BadDataKind, words: str) -> None:
    framer = JsonFramer(port(framing=Framing.JSON, max_line_bytes=8192))
    out = framer.feed(line + b'\n{"after": 1}\n', TS)
    assert readings(out)[0].fields == {"after": 1}
    (record,) = bad(out)
    assert record.kind is kind
    assert words in record.detail


def test_json_oversize_and_undecodable_pass_through() -> None:
    framer = JsonFramer(port(framing=Framing.JSON, max_line_bytes=16))
    out = framer.feed(b'{"x": "' + b"y" * 40 + b'"}\n\xff\n', TS)
    assert [record.kind for record in bad(out)] == [BadDataKind.OVERSIZE, BadDataKind.UNDECODABLE]


# --- nmea -------------------------------------------------------------------------------------

GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"


def test_nmea_good_sentence() -> None:
    framer = NmeaFramer(port(framing=Framing.NMEA))
    (reading,) = readings(framer.feed((nmea(GGA) + "\r\n").encode(), TS))
    assert reading.fields is not None
    assert reading.fields["talker"] == "GP"
    assert reading.fields["sentence"] == "GGA"
    assert reading.fields["values"][:3] == ["123519", "4807.038", "N"]
    assert reading.fields["values"][-1] == ""


def test_nmea_checksum_in_lower_case_hex() -> None:
    sentence = nmea("GPZDA,201530.00,04,07,2002,00,00")
    assert isinstance(parse_nmea(sentence[:-2] + sentence[-2:].lower()), dict)


def test_nmea_proprietary_and_encapsulated() -> None:
    proprietary = parse_nmea(nmea("PGRME,15.0,M,45.0,M,25.0,M"))
    assert isinstance(proprietary, dict)
    assert (proprietary["talker"], proprietary["sentence"]) == ("P", "GRME")
    ais = parse_nmea("!" + nmea("AIVDM,1,1,,A,13aGmP0P00PD;88MD5MTDww@2<0L,0")[1:])
    assert isinstance(ais, dict)
    assert (ais["talker"], ais["sentence"]) == ("AI", "VDM")


def test_nmea_bad_checksum_is_counted_and_skipped() -> None:
    good = nmea(GGA)
    wrong = good[:-2] + ("00" if good[-2:] != "00" else "01")
    framer = NmeaFramer(port(framing=Framing.NMEA))
    out = framer.feed(f"{wrong}\r\n{good}\r\n".encode(), TS)
    assert len(readings(out)) == 1
    (record,) = bad(out)
    assert record.kind is BadDataKind.BAD_CHECKSUM
    assert good[-2:] in record.detail


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("GPGGA,1,2*00", "not an NMEA sentence"),
        ("$GPGGA,1,2", "without a *HH checksum"),
        ("$GPGGA,1,2*G1", "without a *HH checksum"),
        ("$GPGGA,1,2*123", "without a *HH checksum"),
        (nmea("gp,1"), "address 'gp' is not valid"),
        (nmea("G,1"), "address 'G' is not valid"),
    ],
)
def test_nmea_malformed(line: str, words: str) -> None:
    result = parse_nmea(line)
    assert isinstance(result, tuple)
    kind, detail = result
    assert kind is BadDataKind.MALFORMED
    assert words in detail


def test_nmea_framer_passes_line_errors_through() -> None:
    framer = NmeaFramer(port(framing=Framing.NMEA, max_line_bytes=16))
    out = framer.feed(b"$" + b"x" * 40 + b"\r\n\xff\r\nhello\r\n", TS)
    assert [record.kind for record in bad(out)] == [
        BadDataKind.OVERSIZE,
        BadDataKind.UNDECODABLE,
        BadDataKind.MALFORMED,
    ]


# --- raw --------------------------------------------------------------------------------------


def test_raw_chunks_are_cut_at_the_limit() -> None:
    framer = RawFramer(port(framing=Framing.RAW, max_line_bytes=16))
    out = framer.feed(bytes(range(40)), TS)
    assert [len(item.raw or b"") for item in readings(out)] == [16, 16, 8]
    assert b"".join(item.raw or b"" for item in readings(out)) == bytes(range(40))
    assert framer.feed(b"", TS) == []


# --- factory and wire shape -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "cls"),
    [
        (Framing.LINES, LinesFramer),
        (Framing.JSON, JsonFramer),
        (Framing.NMEA, NmeaFramer),
        (Framing.RAW, RawFramer),
    ],
)
def test_make_framer(framing: Framing, cls: type) -> None:
    assert isinstance(make_framer(port(framing=framing)), cls)


def test_reading_as_json() -> None:
    with_fields = Reading("env", TS, fields={"t": 1}, line="t=1")
    assert with_fields.as_json() == {"port": "env", "ts": TS, "fields": {"t": 1}}
    assert Reading("env", TS, line="hi").as_json() == {"port": "env", "ts": TS, "raw": "hi"}
    raw = Reading("env", TS, raw=b"\x00\xff").as_json()
    assert raw["encoding"] == "base64"
    assert base64.b64decode(raw["raw"]) == b"\x00\xff"
    json.dumps(raw)


def test_json_long_error_text_is_cut_short() -> None:
    framer = JsonFramer(port(framing=Framing.JSON, max_line_bytes=8192))
    (record,) = bad(framer.feed(b"[" * 3000 + b"\n", TS))
    assert record.detail.endswith("...")
    assert len(record.detail) <= len("not JSON: ") + 60
