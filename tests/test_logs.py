"""Logging: journal entries (encoded and sent to a real socket), terminal lines, redaction."""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import re
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from agent.logs import (
    MASK,
    JournalHandler,
    NativeJournalSink,
    RedactSecrets,
    TerminalFormatter,
    configure_logging,
    encode_journal_entry,
    journal_fields,
    journal_priority,
    journal_stream_matches,
    parse_journal_stream,
    parse_level,
    redact,
)

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6ImFsaWNlIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


def _raise(exc: Exception) -> NoReturn:
    raise exc


def decode_journal_entry(data: bytes) -> dict[str, str]:
    """Inverse of the native protocol encoding, written from the protocol description."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            pos = end + 10 + size
        fields[name.decode()] = value.decode()
    return fields


# --- pure encoding -----------------------------------------------------------------------


def test_encode_plain_fields() -> None:
    assert encode_journal_entry({"MESSAGE": "hello", "PRIORITY": "6"}) == (
        b"MESSAGE=hello\nPRIORITY=6\n"
    )


def test_encode_multiline_value_with_length_prefix() -> None:
    data = encode_journal_entry({"MESSAGE": "a\nb", "CALL_ID": "cid:1"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\nCALL_ID=cid:1\n"
    assert decode_journal_entry(data) == {"MESSAGE": "a\nb", "CALL_ID": "cid:1"}


def test_encode_bytes_and_unicode() -> None:
    data = encode_journal_entry({"MESSAGE": "caméra", "BLOB": b"\x00\xff"})
    assert data == "MESSAGE=caméra\n".encode() + b"BLOB=\x00\xff\n"


@pytest.mark.parametrize("name", ["message", "_PID", "1ABC", "A-B", "", "A" * 65])
def test_encode_refuses_names_journald_would_drop(name: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        encode_journal_entry({name: "x"})


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (5, 7),
    ],
)
def test_priority_follows_syslog(level: int, priority: int) -> None:
    assert journal_priority(level) == priority


def _record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("agent.daemon", level, "/x/daemon.py", 42, msg, None, None, "f")
    record.__dict__.update(extra)
    return record


def test_journal_fields_carry_structured_extras() -> None:
    record = _record(
        "call answered", call_id="cid:abc", peer="alice", group="porch", event="ring", port=None
    )
    fields = journal_fields(record, "call answered")
    assert fields == {
        "MESSAGE": "call answered",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "edge-agent",
        "LOGGER": "agent.daemon",
        "CODE_FILE": "/x/daemon.py",
        "CODE_LINE": "42",
        "CODE_FUNC": "f",
        "THREAD_NAME": record.threadName,
        "CALL_ID": "cid:abc",
        "PEER": "alice",
        "GROUP": "porch",
        "EVENT": "ring",
    }


def test_journal_fields_stringify_and_name_the_identifier() -> None:
    fields = journal_fields(_record("x", port=3), "x", identifier="edge-hub")
    assert fields["PORT"] == "3"
    assert fields["SYSLOG_IDENTIFIER"] == "edge-hub"


# --- the handler over a real datagram socket ---------------------------------------------


class JournalReceiver:
    """Stands in for journald: a bound datagram socket that also accepts passed fds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(10)

    def entry(self) -> dict[str, str]:
        data, fds, _, _ = socket.recv_fds(self.sock, 256 * 1024, 1)
        if fds:
            assert data == b""
            # journald refuses a memfd the sender could still change.
            seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE
            assert seals & fcntl.F_SEAL_SEAL
            with os.fdopen(fds[0], "rb") as memfd:
                memfd.seek(0)
                data = memfd.read()
        return decode_journal_entry(data)


@pytest.fixture
def journald() -> Iterator[JournalReceiver]:
    with tempfile.TemporaryDirectory(prefix="jr-") as tmp:
        receiver = JournalReceiver(str(Path(tmp) / "socket"))
        try:
            yield receiver
        finally:
            receiver.sock.close()


@pytest.fixture
def journal_logger(journald: JournalReceiver) -> Iterator[logging.Logger]:
    logger = logging.getLogger("agent.test-journal")
    handler = JournalHandler(NativeJournalSink(journald.path))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_handler_sends_structured_fields(
    journald: JournalReceiver, journal_logger: logging.Logger
) -> None:
    journal_logger.warning(
        "camera %s gone", "/dev/video0", extra={"call_id": "cid:42", "peer": "bob"}
    )
    entry = journald.entry()
    assert entry["MESSAGE"] == "camera /dev/video0 gone"
    assert entry["PRIORITY"] == "4"
    assert entry["LOGGER"] == "agent.test-journal"
    assert entry["CALL_ID"] == "cid:42"
    assert entry["PEER"] == "bob"
    assert entry["CODE_FUNC"] == "test_handler_sends_structured_fields"
    assert "GROUP" not in entry


def test_handler_sends_tracebacks_as_binary_safe_values(
    journald: JournalReceiver, journal_logger: logging.Logger
) -> None:
    try:
        _raise(RuntimeError("serial port vanished"))
    except RuntimeError:
        journal_logger.exception("reader failed", extra={"port": "/dev/ttyUSB0"})
    entry = journald.entry()
    assert entry["MESSAGE"].startswith("reader failed\nTraceback (most recent call last):")
    assert "RuntimeError: serial port vanished" in entry["MESSAGE"]
    assert entry["PRIORITY"] == "3"
    assert entry["PORT"] == "/dev/ttyUSB0"


def test_handler_passes_big_entries_through_a_sealed_memfd(
    journald: JournalReceiver, journal_logger: logging.Logger
) -> None:
    big = "x" * (200 * 1024)
    journal_logger.info(big)
    assert journald.entry()["MESSAGE"] == big


def test_handler_redacts_before_sending(
    journald: JournalReceiver, journal_logger: logging.Logger
) -> None:
    journal_logger.info("connecting to ws://hub/ws?token=%s", JWT, extra={"peer": JWT})
    entry = journald.entry()
    assert JWT not in entry["MESSAGE"]
    assert entry["MESSAGE"] == f"connecting to ws://hub/ws?token={MASK}"
    assert entry["PEER"] == MASK


def test_handler_falls_back_to_stderr_when_the_journal_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = JournalHandler(NativeJournalSink(str(tmp_path / "no-journal")))
    try:
        handler.handle(_record("still here", logging.ERROR))
    finally:
        handler.close()
    assert capsys.readouterr().err == "ERROR agent.daemon: still here\n"


def test_handler_uses_the_native_socket_without_systemd_python() -> None:
    # systemd-python is an optional extra; without it the native protocol is spoken.
    try:
        importlib.import_module("systemd.journal")
    except ImportError:
        available = False
    else:
        available = True
    handler = JournalHandler()
    try:
        assert isinstance(handler.sink, NativeJournalSink) is not available
    finally:
        handler.close()


# --- journal detection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("8:12345", (8, 12345)), ("", None), (None, None), ("8", None), ("a:1", None)],
)
def test_parse_journal_stream(value: str | None, parsed: tuple[int, int] | None) -> None:
    assert parse_journal_stream(value) == parsed


def test_journal_stream_must_match_our_stderr(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream:
        st = os.fstat(stream.fileno())
        assert journal_stream_matches({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        # Inherited by a shell started from the service, but stderr is something else now.
        assert not journal_stream_matches(
            {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream
        )
        assert not journal_stream_matches({}, stream)


# --- configure_logging and the terminal -------------------------------------------------


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in ("aioice", "aiortc")}
    try:
        yield root
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        for name, old in chatty.items():
            logging.getLogger(name).setLevel(old)


def _ours(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, "_edge_agent_handler", False)]


def test_terminal_lines_are_readable(
    clean_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", journal=False)
    log = logging.getLogger("agent.sensors")
    log.debug("not shown")
    log.info("reading %d", 7, extra={"port": "/dev/ttyUSB0", "event": "threshold"})
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO    agent\.sensors: reading 7 "
        r"\[event=threshold port=/dev/ttyUSB0\]\n",
        err,
    ), err


def test_terminal_puts_fields_on_the_first_line_of_a_traceback() -> None:
    try:
        _raise(ValueError("boom"))
    except ValueError:
        record = _record("failed", logging.ERROR, call_id="cid:9")
        record.exc_info = sys.exc_info()
    lines = TerminalFormatter().format(record).splitlines()
    assert lines[0].endswith("agent.daemon: failed [call_id=cid:9]")
    assert lines[-1] == "ValueError: boom"


def test_terminal_redacts(clean_root: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", journal=False)
    logging.getLogger("agent.cli").info("login with password=hunter2 token %s", JWT)
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert JWT not in err
    assert f"password={MASK} token {MASK}" in err


def test_configure_twice_keeps_one_handler(clean_root: logging.Logger) -> None:
    configure_logging("info", journal=False)
    configure_logging("warning", journal=False)
    assert len(_ours(clean_root)) == 1
    assert clean_root.level == logging.WARNING


def test_configure_journal_installs_the_journal_handler(clean_root: logging.Logger) -> None:
    configure_logging("info", journal=True)
    (handler,) = _ours(clean_root)
    assert isinstance(handler, JournalHandler)


def test_configure_detects_no_journal_outside_systemd(
    clean_root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging("info")
    (handler,) = _ours(clean_root)
    assert not isinstance(handler, JournalHandler)


def test_configure_quiets_chatty_libraries_unless_debugging(clean_root: logging.Logger) -> None:
    configure_logging("info", journal=False)
    assert logging.getLogger("aioice").getEffectiveLevel() == logging.WARNING
    configure_logging("error", journal=False)
    assert logging.getLogger("aiortc").getEffectiveLevel() == logging.ERROR
    configure_logging("debug", journal=False)
    assert logging.getLogger("aioice").getEffectiveLevel() == logging.DEBUG


def test_configure_refuses_an_unknown_level(clean_root: logging.Logger) -> None:
    before = clean_root.handlers[:]
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")
    assert clean_root.handlers == before


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", 10), (" Info ", 20), ("WARNING", 30), ("warn", 30), ("error", 40)],
)
def test_parse_level(text: str, level: int) -> None:
    assert parse_level(text) == level


# --- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token {JWT} ok", f"token {MASK} ok"),
        (f"GET /ws?token={JWT}&x=1", f"GET /ws?token={MASK}&x=1"),
        ("GET /ws?access_token=abc.def&x=1", f"GET /ws?access_token={MASK}&x=1"),
        ("password=hunter2 next", f"password={MASK} next"),
        ("password: 'hunter 2'", f"password: '{MASK}'"),
        ("Settings(token='s3cr3t', name='cam')", f"Settings(token='{MASK}', name='cam')"),
        ('{"password": "hunter2", "name": "bob"}', f'{{"password": "{MASK}", "name": "bob"}}'),
        (
            '{"auth": "k3y", "endpoint": "https://push"}',
            f'{{"auth": "{MASK}", "endpoint": "https://push"}}',
        ),
        ("Authorization: Bearer abc.def-ghi", f"Authorization: Bearer {MASK}"),
        ("redis://user:pa55@127.0.0.1:6379/0", f"redis://user:{MASK}@127.0.0.1:6379/0"),
        ("jwt_secret=deadbeef", f"jwt_secret={MASK}"),
        (
            "key:\n-----BEGIN PRIVATE KEY-----\nMIIE\nabc\n-----END PRIVATE KEY-----\ndone",
            f"key:\n{MASK}\ndone",
        ),
    ],
)
def test_redact_masks_secrets(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "joined groups devices, porch",
        "token_file=/etc/edge-agent/token",
        "tokens issued: 4",
        "call cid:3f1e answered by alice",
        "bad password for alice",
    ],
)
def test_redact_leaves_ordinary_lines_alone(text: str) -> None:
    assert redact(text) == text


def test_filter_redacts_tracebacks_once() -> None:
    try:
        _raise(ValueError(f"rejected token={JWT}"))
    except ValueError:
        record = _record("login failed for %s", logging.ERROR)
        record.args = ("bob",)
        record.exc_info = sys.exc_info()
    redactor = RedactSecrets()
    assert redactor.filter(record)
    assert record.getMessage() == "login failed for bob"
    assert record.exc_text is not None
    assert f"token={MASK}" in record.exc_text
    assert JWT not in logging.Formatter().format(record)
    # A second handler's filter sees an already clean record and leaves it as is.
    text = record.exc_text
    assert redactor.filter(record)
    assert record.exc_text == text
