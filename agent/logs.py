"""Logging: structured journal entries under systemd, readable lines on a terminal.

Under systemd (``$JOURNAL_STREAM`` names the device and inode of our stderr, see
systemd.exec(5)) records go to the journal with fields a person can filter on::

    journalctl -u edge-agent CALL_ID=cid:1f3a...   journalctl -u edge-agent PORT=/dev/ttyUSB0

Code attaches them with ``logger.info("...", extra={"call_id": cid, "peer": name})``; the
keys are :data:`STRUCTURED_FIELDS`. The entry travels over systemd-python's ``sendv`` when
that optional extra is installed, otherwise as a datagram of the journal's native protocol
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) written here. Either way the fields are
composed by the pure :func:`journal_fields` and :func:`encode_journal_entry`.

Every handler carries :class:`RedactSecrets`, so a token, password or private key that
slips into a message is masked before it is written anywhere. :func:`redact` and
:func:`redact_url` are the project's one masking of secrets in text and in URLs: the
client's and the hub's log filters and ``config show`` use them too.
"""

from __future__ import annotations

import array
import errno
import fcntl
import importlib
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Final, TextIO

__all__ = [
    "JOURNAL_SOCKET",
    "MASK",
    "STRUCTURED_FIELDS",
    "JournalHandler",
    "NativeJournalSink",
    "RedactSecrets",
    "TerminalFormatter",
    "configure_logging",
    "encode_journal_entry",
    "journal_fields",
    "journal_priority",
    "journal_stream_matches",
    "parse_journal_stream",
    "parse_level",
    "redact",
    "redact_url",
]

JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
MASK: Final = "********"
# Record attribute (from ``extra=``) -> journal field name.
STRUCTURED_FIELDS: Final[Mapping[str, str]] = {
    "call_id": "CALL_ID",
    "peer": "PEER",
    "group": "GROUP",
    "event": "EVENT",
    "port": "PORT",
}
# Third-party loggers that narrate every ICE check at INFO; kept at WARNING unless debugging.
_CHATTY_LOGGERS: Final = ("aioice", "aiortc")
_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Journal field names: upper case, digits, underscore; a leading "_" is reserved for
# fields journald itself adds, so it is not ours to send.
_FIELD_NAME_RE: Final = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# journald reads datagrams up to this size; bigger entries go through a sealed memfd.
_MAX_DATAGRAM: Final = 128 * 1024
_OURS: Final = "_edge_agent_handler"
# URL query or fragment parameters whose values are credentials: ?token=JWT, ?access_key=..,
# &password=.., &sig=.. (signed URLs), #access_token=.. (RFC 6749 4.2.2: in the fragment).
_SECRET_PARAMS_RE: Final = re.compile(
    r"([?&;#](?:[^=&;#]*(?:token|secret|passw(?:or)?d|pwd|auth|credential|signature)[^=&;#]*"
    r"|[^=&;#]*key|sig)=)[^&;#]*",
    re.IGNORECASE,
)
_MASK_PARAM: Final = rf"\1{MASK}"
_REDACTED: Final = "_edge_agent_redacted"

JournalSink = Callable[[Mapping[str, str]], None]


def parse_level(level: str) -> int:
    """The logging level for a settings value such as ``"info"`` (any case)."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        allowed = ", ".join(name for name in _LEVELS if name != "warn")
        raise ValueError(f"unknown log level {level!r}: use one of {allowed}") from None


def configure_logging(level: str, *, journal: bool | None = None) -> None:
    """Send log records to the journal or the terminal at ``level``; safe to call again.

    ``journal=None`` decides by ``$JOURNAL_STREAM`` (see :func:`journal_stream_matches`).
    Raises ValueError for an unknown level, before anything changes.
    """
    levelno = parse_level(level)
    use_journal = journal_stream_matches() if journal is None else journal
    handler = JournalHandler() if use_journal else _terminal_handler(sys.stderr)
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    for name in _CHATTY_LOGGERS:
        chatty = logging.NOTSET if levelno <= logging.DEBUG else max(logging.WARNING, levelno)
        logging.getLogger(name).setLevel(chatty)


def parse_journal_stream(value: str | None) -> tuple[int, int] | None:
    """``(device, inode)`` from ``$JOURNAL_STREAM`` (``"DEV:INODE"``), None if malformed."""
    if not value:
        return None
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return None
    return int(dev), int(ino)


def journal_stream_matches(
    environ: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> bool:
    """True if ``stream`` (stderr) is the journal stream systemd gave us.

    systemd.exec(5): compare ``$JOURNAL_STREAM`` with the fstat of the stream, since a
    shell started from the service inherits the variable but not the connection.
    """
    env = os.environ if environ is None else environ
    expected = parse_journal_stream(env.get("JOURNAL_STREAM"))
    if expected is None:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == expected


def journal_priority(levelno: int) -> int:
    """syslog(3) priority for a logging level (journal field ``PRIORITY``)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journal_fields(
    record: logging.LogRecord, message: str, *, identifier: str = "edge-agent"
) -> dict[str, str]:
    """The journal entry for a record whose formatted text is ``message``."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(journal_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": identifier,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
    }
    if record.threadName:
        fields["THREAD_NAME"] = record.threadName
    fields.update(_structured(record))
    return fields


def encode_journal_entry(fields: Mapping[str, str | bytes]) -> bytes:
    """One datagram of the journal's native protocol.

    A value without newlines is ``NAME=value\\n``; one with newlines is ``NAME\\n``, its
    length as a little-endian 64-bit integer, the bytes, and ``\\n``. Raises ValueError for
    a field name journald would drop.
    """
    out = bytearray()
    for name, value in fields.items():
        if not _FIELD_NAME_RE.match(name):
            raise ValueError(f"bad journal field name {name!r}: use A-Z, 0-9 and _")
        data = value.encode("utf-8", "replace") if isinstance(value, str) else value
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def _mask_value(match: re.Match[str]) -> str:
    value = match.group(2)
    quote = value[0] if value[0] in "'\"" else ""
    return f"{match.group(1)}{quote}{MASK}{quote}"


_SECRET_PATTERNS: Final[
    tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...]
] = (
    # PEM private keys, whole block.
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
        ),
        MASK,
    ),
    # JWTs (RFC 7519): base64url of '{"' starts with eyJ; mask any such run, signed or not.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2}"), MASK),
    # "Authorization: Bearer x", "Basic x".
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I), rf"\1 {MASK}"),
    # URLs: the password of their userinfo, credential query parameters (redact_url).
    (re.compile(r"(?:\b[A-Za-z][A-Za-z0-9+.-]*)?://[^\s'\"<>]+"), lambda m: redact_url(m[0])),
    # JSON "password": "x" and friends.
    (
        re.compile(
            r'("(?:[a-z_]*password|passwd|[a-z_]*secret|[a-z_]*token|private_key|auth)"\s*:\s*)"[^"]*"',
            re.I,
        ),
        rf'\1"{MASK}"',
    ),
    # key=value, key: value, query parameters (?token=..&), repr "token='x'".
    (
        re.compile(
            r"(\b(?:[a-z_]*password|passwd|pwd|[a-z_]*secret|[a-z_]*token|api_key|private_key|auth)"
            r"\b\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s&'\",;)}\]]+)",
            re.I,
        ),
        _mask_value,
    ),
)


def redact(text: str) -> str:
    """``text`` with tokens, passwords and private keys replaced by :data:`MASK`.

    URLs in it are masked as :func:`redact_url` does.
    """
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and the values of credential parameters
    (``token``, ``secret``, ``password``, ``key``, ``auth``, ... in the query or fragment)
    replaced by :data:`MASK`; every other character kept as it was. Never raises.

    ``postgresql://hub:pw@db/edge``, ``redis://:pw@r`` and ``wss://hub/ws?token=JWT`` become
    ``postgresql://hub:********@db/edge``, ``redis://:********@r`` and
    ``wss://hub/ws?token=********``. Text is scanned, not parsed, so that a URL that is not
    valid (RFC 3986 section 3) is masked too: the password is everything between the
    userinfo's first ``:`` and the last ``@`` before the query, so a generated password
    with ``/`` or ``@`` in it, pasted unencoded, is masked whole.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    query = next((i for i, char in enumerate(rest) if char in "?#"), len(rest))
    at = rest.rfind("@", 0, query)
    user, colon, _ = rest[: max(at, 0)].partition(":")
    if colon and "/" not in user:
        rest = f"{user}:{MASK}{rest[at:]}"
    return scheme + sep + _SECRET_PARAMS_RE.sub(_MASK_PARAM, rest)


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message, traceback and structured fields; keeps all records.

    Defence in depth: code must not log secrets in the first place.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place and let it through."""
        if getattr(record, _REDACTED, False):
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for attr in STRUCTURED_FIELDS:
            value = getattr(record, attr, None)
            if isinstance(value, str):
                setattr(record, attr, redact(value))
        setattr(record, _REDACTED, True)
        return True


class TerminalFormatter(logging.Formatter):
    """``2024-05-01 12:00:00 INFO    agent.daemon: text [call_id=.. peer=..]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """The line for ``record``, with its structured fields appended."""
        text = super().format(record)
        fields = [f"{attr}={getattr(record, attr)}" for attr in _present_fields(record)]
        if not fields:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{' '.join(fields)}]{newline}{rest}"


class NativeJournalSink:
    """Writes entries to journald's native socket (or any datagram socket, for tests)."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self._path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # journald's queue is large; a stuck journald should cost a dropped line, not a hang.
        self._sock.settimeout(1.0)

    def __call__(self, fields: Mapping[str, str]) -> None:
        """Send one entry; raises OSError if the journal does not take it."""
        data = encode_journal_entry(fields)
        if len(data) <= _MAX_DATAGRAM:
            try:
                self._sock.sendto(data, self._path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
            else:
                return
        self._send_memfd(data)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def _send_memfd(self, data: bytes) -> None:
        # The protocol's way for big entries: a sealed memfd passed with SCM_RIGHTS and an
        # empty payload (JOURNAL_NATIVE_PROTOCOL, "Large messages").
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            # socket.send_fds drops its address argument (CPython 3.11), so build the message.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._sock.sendmsg([b""], rights, 0, self._path)
        finally:
            os.close(fd)


class JournalHandler(logging.Handler):
    """A logging handler that writes structured journal entries through a sink.

    The default sink is systemd-python's ``journal.sendv`` when installed, else
    :class:`NativeJournalSink`. If the journal refuses an entry, the line goes to stderr
    instead, which systemd also collects.
    """

    def __init__(
        self,
        sink: JournalSink | None = None,
        *,
        identifier: str = "edge-agent",
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.sink = sink or _default_sink()
        self.identifier = identifier
        self.addFilter(RedactSecrets())
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Send ``record`` to the journal."""
        try:
            fields = journal_fields(record, self.format(record), identifier=self.identifier)
            self.sink(fields)
        except OSError:
            sys.stderr.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")
        except Exception:  # logging must not raise into the caller (logging.Handler.emit)
            self.handleError(record)

    def close(self) -> None:
        """Close the sink if it holds a socket."""
        closer = getattr(self.sink, "close", None)
        if callable(closer):
            closer()
        super().close()


def _default_sink() -> JournalSink:
    try:
        # The optional extra "systemd"; imported by name because the checkout's systemd/
        # folder of unit files would shadow it for static analysis.
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return NativeJournalSink()
    sendv: Callable[..., None] = journal.sendv

    def send(fields: Mapping[str, str]) -> None:
        sendv(*(f"{name}={value}" for name, value in fields.items()))

    return send


def _terminal_handler(stream: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(TerminalFormatter())
    return handler


def _present_fields(record: logging.LogRecord) -> list[str]:
    return [attr for attr in STRUCTURED_FIELDS if getattr(record, attr, None) is not None]


def _structured(record: logging.LogRecord) -> dict[str, str]:
    return {STRUCTURED_FIELDS[attr]: str(getattr(record, attr)) for attr in _present_fields(record)}
