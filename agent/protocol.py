"""The realtime wire protocol: frames in, typed actions and envelopes out. No I/O.

Client to hub, one JSON object per text frame, keyed by ``action``::

    {"action": "joinRoom", "rid": GROUP | null, "keep": bool?}
    {"action": "leaveRoom", "rid": GROUP}
    {"action": "keepAlive"}
    {"action": "sendMessage", "uid": USER_ID, "content": ANY, "notification": ..?}
    {"action": "broadcast", "rid": GROUP, "content": ANY, "notification": ..?}
    {"action": "rtc", "uid": "cid:...", "content": {...}}

Hub to client, keyed by a ``#`` field (``#message``, ``#private``, ``#notice``, ``#rtc``,
``#error``) with ``#user_id``, ``#scid``, ``#srid`` and ``#code``. The hub sends its frames
percent-encoded as JavaScript's ``encodeURI`` does, because the hosted service's browser
client runs ``decodeURI`` on every frame and drops one with a raw ``%``; our own clients
accept encoded and plain JSON.

Parsers never raise: they return a :class:`ProtocolError` naming what was wrong. Fields a
frame carries that the hub does not use (``token``, ...) are ignored.

Decoding is bounded as well as sized. Arrays and objects may nest at most
``Limits.max_json_depth`` levels (the outer object counts as one), checked by a linear scan
before the JSON parser runs, because that parser recurses once per level and a 2 KB frame
of brackets would otherwise exhaust the interpreter's stack. ``NaN``, ``Infinity`` and
numbers too large for a double (``1e999``) are refused: RFC 8259 s. 6 has no such values
and a browser's ``JSON.parse`` rejects a frame carrying them, so forwarding one would break
every member's client. Encoders refuse them too (``allow_nan=False``).
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias
from urllib.parse import quote, unquote

from agent.errors import Codes, RealtimeError

__all__ = [
    "ACTIONS",
    "CID_PREFIX",
    "MAX_JSON_DEPTH",
    "Broadcast",
    "ClientAction",
    "FrameKind",
    "HubFrame",
    "JoinRoom",
    "KeepAlive",
    "LeaveRoom",
    "Limits",
    "Notice",
    "Notification",
    "ProtocolError",
    "Rtc",
    "SendMessage",
    "decode_frame_text",
    "encode_client_action",
    "encode_hub_frame",
    "encode_uri",
    "is_user_id",
    "notice_text",
    "parse_client_frame",
    "parse_hub_frame",
    "scid_of",
]

CID_PREFIX: Final = "cid:"
# The hosted client shows connection ids as "scid:..." in some versions; accept both.
_CID_PREFIXES: Final = ("cid:", "scid:")
# What JavaScript's encodeURI leaves alone besides letters, digits and "_.-~".
_ENCODE_URI_SAFE: Final = ";,/?:@&=+$!*'()#"
_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_RTC_KEYS: Final = frozenset({"sdpoffer", "sdpanswer", "candidate", "pickup", "hungup"})
# The deepest nesting any parser here accepts; a setting may lower it, never raise it. Well
# below the interpreter's recursion limit (1000), which the JSON parser and encoder share
# with whatever called them.
MAX_JSON_DEPTH: Final = 256
# Keep only the brackets of UTF-8 text (multi-byte sequences never hold ASCII bytes), every
# opening one as "(" and every closing one as ")".
_NOT_BRACKETS: Final = bytes(set(range(256)) - set(b"[]{}"))
_AS_PARENS: Final = bytes.maketrans(b"[{]}", b"(())")
_MAX_NUMBER_SHOWN: Final = 32


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits the parsers enforce (the frame limit itself is the transport's)."""

    max_frame_bytes: int = 64 * 1024
    max_content_bytes: int = 32 * 1024
    max_group_chars: int = 128
    max_id_chars: int = 128
    max_notification_bytes: int = 3 * 1024
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.max_json_depth <= MAX_JSON_DEPTH:
            raise ValueError(f"max_json_depth must be within 1..{MAX_JSON_DEPTH}")


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A frame that cannot be accepted; ``code`` and ``message`` go back as ``#error``."""

    code: str
    message: str
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """A push notification riding on a message (the reference's postRealtime argument)."""

    title: str
    body: str
    always: bool = False


@dataclass(frozen=True, slots=True)
class JoinRoom:
    """Join ``rid`` (``None`` leaves every group); ``keep`` adds without leaving others."""

    rid: str | None
    keep: bool = False


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """Leave one group, keeping the others."""

    rid: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Keep the connection open; carries nothing."""


@dataclass(frozen=True, slots=True)
class SendMessage:
    """A private message to every connection of user ``uid``."""

    uid: str
    content: Any
    notification: Notification | None = None


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A message to every member of group ``rid``, the sender included."""

    rid: str
    content: Any
    notification: Notification | None = None


@dataclass(frozen=True, slots=True)
class Rtc:
    """WebRTC signaling for one connection; ``scid`` is the target without its prefix."""

    scid: str
    content: dict[str, Any]


ClientAction: TypeAlias = JoinRoom | LeaveRoom | KeepAlive | SendMessage | Broadcast | Rtc

ACTIONS: Final = ("joinRoom", "leaveRoom", "keepAlive", "sendMessage", "broadcast", "rtc")


class FrameKind(enum.Enum):
    """The ``#`` key that names a hub frame's kind."""

    MESSAGE = "#message"
    PRIVATE = "#private"
    NOTICE = "#notice"
    RTC = "#rtc"
    ERROR = "#error"


class Notice(enum.Enum):
    """``#code`` values of ``#notice`` frames."""

    USER_JOINED = "USER_JOINED"
    USER_LEFT = "USER_LEFT"
    USER_DISCONNECTED = "USER_DISCONNECTED"


@dataclass(frozen=True, slots=True)
class HubFrame:
    """One hub-to-client frame."""

    kind: FrameKind
    content: Any
    user_id: str | None = None
    scid: str | None = None
    srid: str | None = None
    code: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_NOTICE_TEXTS: Final = {
    Notice.USER_JOINED: 'User "{}" has joined the message group.',
    Notice.USER_LEFT: 'User "{}" has left the message group.',
    # The hosted client matches "has been disconnected." literally.
    Notice.USER_DISCONNECTED: 'User "{}" left the message group and has been disconnected.',
}


def notice_text(notice: Notice, user_id: str) -> str:
    """The notice text, naming the user in double quotes as the hosted service does."""
    return _NOTICE_TEXTS[notice].format(user_id)


def encode_uri(text: str) -> str:
    """Percent-encode ``text`` exactly as JavaScript's ``encodeURI`` does."""
    return quote(text, safe=_ENCODE_URI_SAFE)


def is_user_id(value: str) -> bool:
    """Whether ``value`` is shaped like a user id (a UUID)."""
    return bool(_UUID_RE.match(value))


def scid_of(cid: str) -> str:
    """The bare connection id of ``cid:...`` (or ``scid:...``, or an already bare id)."""
    for prefix in _CID_PREFIXES:
        if cid.startswith(prefix):
            return cid[len(prefix) :]
    return cid


def encode_hub_frame(frame: HubFrame) -> str:
    """Serialize a hub frame, percent-encoded for the hosted service's clients."""
    obj: dict[str, Any] = {frame.kind.value: frame.content}
    for key, value in (
        ("#user_id", frame.user_id),
        ("#scid", frame.scid),
        ("#srid", frame.srid),
        ("#code", frame.code),
    ):
        if value is not None:
            obj[key] = value
    obj.update(frame.extra)
    return encode_uri(_dumps(obj))


def decode_frame_text(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a frame sent as plain or percent-encoded JSON; raises ``ValueError``.

    Nesting deeper than ``max_depth``, ``NaN``, ``Infinity`` and numbers that overflow a
    double are refused with a ``ValueError`` that is also a
    :class:`~agent.errors.RealtimeError` (INVALID_REQUEST) whose message is the answer;
    invalid JSON and lone UTF-16 surrogates with a plain ``ValueError``.
    """
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        stripped = unquote(stripped, errors="strict")
    return _loads(stripped, max_depth)


def parse_hub_frame(text: str) -> HubFrame | ProtocolError:
    """Parse a hub frame (encoded or plain JSON) into a :class:`HubFrame`; never raises.

    Nesting up to :data:`MAX_JSON_DEPTH` is accepted whatever the hub's own setting, so a
    hub configured deeper than the default still reaches this client.
    """
    obj = _decode(text, MAX_JSON_DEPTH)
    if isinstance(obj, ProtocolError):
        return obj
    if not isinstance(obj, dict):
        return ProtocolError(Codes.INVALID_REQUEST, "Frame must be a JSON object.")
    for kind in FrameKind:
        if kind.value in obj:
            known = {kind.value, "#user_id", "#scid", "#srid", "#code"}
            return HubFrame(
                kind=kind,
                content=obj[kind.value],
                user_id=_opt_str(obj.get("#user_id")),
                scid=_opt_str(obj.get("#scid")),
                srid=_opt_str(obj.get("#srid")),
                code=_opt_str(obj.get("#code")),
                extra={k: v for k, v in obj.items() if k not in known},
            )
    return ProtocolError(Codes.INVALID_REQUEST, "Frame has no known '#' key.")


def encode_client_action(action: ClientAction) -> str:
    """Serialize a client action as plain JSON."""
    return _dumps(_action_dict(action))


def parse_client_frame(text: str, limits: Limits | None = None) -> ClientAction | ProtocolError:
    """Parse and validate one client frame; never raises."""
    limits = limits or Limits()
    obj = _decode(text, limits.max_json_depth)
    if isinstance(obj, ProtocolError):
        return obj
    if not isinstance(obj, dict):
        return ProtocolError(Codes.INVALID_REQUEST, "Frame must be a JSON object.")
    action = obj.get("action")
    parser = _PARSERS.get(action) if isinstance(action, str) else None
    if parser is None:
        return ProtocolError(
            Codes.INVALID_REQUEST,
            f"Unknown action {action!r}. Expected one of: {', '.join(ACTIONS)}.",
        )
    try:
        return parser(obj, limits)
    except _Invalid as exc:
        return ProtocolError(exc.code, exc.message, action)


class _Refused(RealtimeError, ValueError):
    """JSON refused for what it holds (too deep, not finite); ``message`` is the answer."""

    def __init__(self, message: str) -> None:
        super().__init__(Codes.INVALID_REQUEST, message)


def _decode(text: str, max_depth: int) -> Any:
    """The decoded frame, or the :class:`ProtocolError` that answers it."""
    try:
        return decode_frame_text(text, max_depth=max_depth)
    except _Refused as exc:
        return ProtocolError(exc.code, exc.message)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many int digits
        return ProtocolError(Codes.INVALID_REQUEST, f"Frame is not valid JSON: {exc}")


def _loads(text: str, max_depth: int) -> Any:
    """JSON ``text`` decoded: nested within ``max_depth``, finite, valid Unicode."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # not from a socket (UTF-8 there), but from a caller
            raise ValueError("it contains a lone UTF-16 surrogate; send valid Unicode") from None
    if _nesting_depth(text, max_depth) > max_depth:
        raise _Refused(
            f"Frame nests arrays and objects more than {max_depth} levels deep; "
            f"the limit is {max_depth}."
        )
    try:
        value = _DECODER.decode(text)
    except RecursionError:  # only if the caller's own stack was already deep
        raise _Refused("Frame nests arrays and objects too deeply to decode.") from None
    # JSON may escape half of a UTF-16 surrogate pair ("\ud800"), which is no Unicode
    # text at all: refuse it here rather than fail later when the value is re-encoded.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError(
                "it contains a lone UTF-16 surrogate (a \\ud800-\\udfff escape); send valid Unicode"
            ) from None
    return value


def _nesting_depth(text: str, limit: int) -> int:
    """How deep brackets outside strings nest; ``limit + 1`` stands for anything deeper.

    Linear, without recursion, and in C-speed passes. Escaped backslashes and then escaped
    quotes are dropped, so every quote left opens or closes a string and every other piece
    between quotes is outside strings (an unterminated string runs to the end, as for the
    parser). Then each pass deletes every innermost bracket pair, so the passes needed to
    empty the brackets are the depth. For unbalanced text (no valid JSON anyway) the result
    is an upper bound: passes plus the opening brackets never closed, each of which the
    parser would still descend into before it fails.
    """
    if text.count("[") + text.count("{") <= limit:
        return 0  # the common case: too few brackets to matter, no scan needed
    plain = text.encode("utf-8", "surrogatepass").replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[::2])
    parens = outside.translate(_AS_PARENS, _NOT_BRACKETS)
    depth = 0
    while parens and depth <= limit:
        inner_removed = parens.replace(b"()", b"")
        if len(inner_removed) == len(parens):
            return depth + parens.count(b"(")
        parens = inner_removed
        depth += 1
    return depth


def _refuse_constant(name: str) -> Any:
    # Python's parser accepts these non-standard literals; RFC 8259 s. 6 does not.
    raise _Refused(
        f"Frame contains {name}, which JSON does not allow; send a finite number or a string."
    )


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        shown = literal[:_MAX_NUMBER_SHOWN] + ("..." if len(literal) > _MAX_NUMBER_SHOWN else "")
        raise _Refused(
            f"Frame contains the number {shown}, beyond the range of a double (it would be "
            "Infinity); send a smaller number or a string."
        )
    return value


# One decoder for every parse: json.loads with hooks would build a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _parse_join(obj: dict[str, Any], limits: Limits) -> ClientAction:
    if "rid" not in obj:
        raise _Invalid(Codes.INVALID_PARAMETER, '"rid" is required for action "joinRoom".')
    rid = obj["rid"]
    if rid is None or rid == "":
        return JoinRoom(None)
    return JoinRoom(_group(obj, "joinRoom", limits), keep=obj.get("keep") is True)


def _parse_leave(obj: dict[str, Any], limits: Limits) -> ClientAction:
    return LeaveRoom(_group(obj, "leaveRoom", limits))


def _parse_keepalive(obj: dict[str, Any], limits: Limits) -> ClientAction:
    return KeepAlive()


def _parse_send(obj: dict[str, Any], limits: Limits) -> ClientAction:
    uid = _ident(obj, "uid", "sendMessage", limits)
    return SendMessage(uid, _content(obj, "sendMessage", limits), _notification(obj, limits))


def _parse_broadcast(obj: dict[str, Any], limits: Limits) -> ClientAction:
    rid = _group(obj, "broadcast", limits)
    return Broadcast(rid, _content(obj, "broadcast", limits), _notification(obj, limits))


def _parse_rtc(obj: dict[str, Any], limits: Limits) -> ClientAction:
    scid = scid_of(_ident(obj, "uid", "rtc", limits))
    content = _content(obj, "rtc", limits)
    if not isinstance(content, dict) or not _RTC_KEYS.intersection(content):
        raise _Invalid(
            Codes.INVALID_PARAMETER,
            '"content" of action "rtc" must be an object with one of: '
            + ", ".join(sorted(_RTC_KEYS))
            + ".",
        )
    return Rtc(scid, content)


_PARSERS: Final = {
    "joinRoom": _parse_join,
    "leaveRoom": _parse_leave,
    "keepAlive": _parse_keepalive,
    "sendMessage": _parse_send,
    "broadcast": _parse_broadcast,
    "rtc": _parse_rtc,
}


def _group(obj: dict[str, Any], action: str, limits: Limits) -> str:
    rid = obj.get("rid")
    if not isinstance(rid, str) or not rid:
        raise _Invalid(
            Codes.INVALID_PARAMETER, f'"rid" must be a non-empty string for action "{action}".'
        )
    if len(rid) > limits.max_group_chars:
        raise _Invalid(
            Codes.INVALID_PARAMETER,
            f'"rid" is {len(rid)} characters; the limit is {limits.max_group_chars}.',
        )
    return rid


def _ident(obj: dict[str, Any], key: str, action: str, limits: Limits) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Invalid(
            Codes.INVALID_PARAMETER, f'"{key}" must be a non-empty string for action "{action}".'
        )
    if len(value) > limits.max_id_chars:
        raise _Invalid(
            Codes.INVALID_PARAMETER,
            f'"{key}" is {len(value)} characters; the limit is {limits.max_id_chars}.',
        )
    return value


def _content(obj: dict[str, Any], action: str, limits: Limits) -> Any:
    if "content" not in obj:
        raise _Invalid(Codes.INVALID_PARAMETER, f'"content" is required for action "{action}".')
    content = obj["content"]
    size = len(_dumps(content).encode())
    if size > limits.max_content_bytes:
        raise _Invalid(
            Codes.INVALID_PARAMETER,
            f"Message content is {size} bytes; the limit is {limits.max_content_bytes}.",
        )
    return content


def _notification(obj: dict[str, Any], limits: Limits) -> Notification | None:
    raw = obj.get("notification")
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = _loads(raw, limits.max_json_depth)
        except ValueError:  # not JSON (or JSON we refuse): the text is the body
            raw = {"title": "", "body": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("title", ""), str):
        raise _Invalid(Codes.INVALID_PARAMETER, '"notification" must be {title, body}.')
    if not isinstance(raw.get("body", ""), str):
        raise _Invalid(Codes.INVALID_PARAMETER, '"notification" must be {title, body}.')
    if len(_dumps(raw).encode()) > limits.max_notification_bytes:
        raise _Invalid(Codes.INVALID_PARAMETER, "Notification size exceeds 3kb.")
    config = obj.get("notificationConfig") or raw.get("config") or {}
    always = isinstance(config, dict) and config.get("always") is True
    return Notification(raw.get("title", ""), raw.get("body", ""), always)


def _action_dict(action: ClientAction) -> dict[str, Any]:
    match action:
        case JoinRoom(rid=rid, keep=keep):
            return {"action": "joinRoom", "rid": rid, **({"keep": True} if keep else {})}
        case LeaveRoom(rid=rid):
            return {"action": "leaveRoom", "rid": rid}
        case KeepAlive():
            return {"action": "keepAlive"}
        case SendMessage(uid=uid, content=content, notification=note):
            return {"action": "sendMessage", "uid": uid, "content": content, **_note(note)}
        case Broadcast(rid=rid, content=content, notification=note):
            return {"action": "broadcast", "rid": rid, "content": content, **_note(note)}
        case _:  # Rtc, the last member of the union (mypy checks exhaustiveness)
            return {"action": "rtc", "uid": CID_PREFIX + action.scid, "content": action.content}


def _note(note: Notification | None) -> dict[str, Any]:
    if note is None:
        return {}
    return {
        "notification": {"title": note.title, "body": note.body},
        "notificationConfig": {"always": note.always},
    }


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dumps(obj: Any) -> str:
    # allow_nan=False: a NaN or Infinity must fail here rather than reach a peer's JSON.parse.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
