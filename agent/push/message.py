"""Push messages: a send request parsed and checked, and the small JSON a phone receives.

Pure: dictionaries in, frozen dataclasses or a ``RealtimeError`` (INVALID_PARAMETER) out.
A push message travels in one aes128gcm record of at most 4096 octets (RFC 8291 section 4),
so the payload is capped at 3 KB with the reference's text "Notification size exceeds 3kb.".
Delivery options follow RFC 8030: ``ttl`` (section 5.2), ``urgency`` (5.3), ``topic`` (5.4).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from agent.errors import Codes, RealtimeError
from agent.protocol import Limits, Notification, is_user_id
from agent.push.settings import MAX_TTL_SECONDS

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SIZE_TEXT",
    "PushMessage",
    "Recipients",
    "SendRequest",
    "Urgency",
    "check_size",
    "message_from_notification",
    "parse_send_request",
]

MAX_PAYLOAD_BYTES: Final = Limits().max_notification_bytes
SIZE_TEXT: Final = "Notification size exceeds 3kb."
_TOPIC_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_ALERT_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_ROLES: Final = frozenset({"admin", "user", "device"})
_MAX_RECIPIENTS: Final = 1000
_MAX_LINK_CHARS: Final = 1024
_KNOWN_KEYS: Final = frozenset(
    {
        "title",
        "body",
        "user_ids",
        "users",
        "roles",
        "id",
        "urgency",
        "ttl",
        "topic",
        "url",
        "device",
        "event",
        "time",
        "snapshot",
        "call",
    }
)


class Urgency(enum.StrEnum):
    """RFC 8030 section 5.3: how soon a phone should wake up for a message."""

    VERY_LOW = "very-low"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class PushMessage:
    """What is pushed: the JSON ``payload`` and how the push service should treat it."""

    payload: Mapping[str, Any]
    ttl: int
    urgency: Urgency = Urgency.NORMAL
    topic: str | None = None

    @property
    def data(self) -> bytes:
        """The payload as compact UTF-8 JSON, the plaintext that gets encrypted."""
        return _dumps(self.payload)


@dataclass(frozen=True, slots=True)
class Recipients:
    """Who a send request names: ids, account names, roles; nothing at all is everyone."""

    user_ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    @property
    def everyone(self) -> bool:
        """Whether no recipient was named (the request reaches everyone allowed)."""
        return not (self.user_ids or self.names or self.roles)


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A checked ``/api/push/send`` request."""

    message: PushMessage
    recipients: Recipients = field(default_factory=Recipients)
    alert_id: str | None = None


def parse_send_request(obj: Any, *, default_ttl: int) -> SendRequest:
    """A send request from the API's JSON body; INVALID_PARAMETER names what is wrong."""
    if not isinstance(obj, Mapping):
        raise _invalid('The request must be an object: {"title": ..., "body": ...}.')
    unknown = sorted(set(obj) - _KNOWN_KEYS)
    if unknown:
        raise _invalid(f"Unknown field(s): {', '.join(unknown)}.")
    message = PushMessage(
        payload=_payload(obj),
        ttl=_ttl(obj.get("ttl"), default_ttl),
        urgency=_urgency(obj.get("urgency")),
        topic=_topic(obj.get("topic")),
    )
    check_size(message)
    return SendRequest(message, _recipients(obj), _alert_id(obj.get("id")))


def message_from_notification(note: Notification, *, ttl: int) -> PushMessage:
    """The push message for a realtime message's ``notification`` (postRealtime)."""
    message = PushMessage({"title": note.title, "body": note.body}, ttl=ttl)
    check_size(message)
    return message


def check_size(message: PushMessage) -> None:
    """INVALID_PARAMETER with the reference's text when the payload is over 3 KB."""
    if len(message.data) > MAX_PAYLOAD_BYTES:
        raise _invalid(SIZE_TEXT)


def _payload(obj: Mapping[str, Any]) -> dict[str, Any]:
    title, body = obj.get("title"), obj.get("body", "")
    if not isinstance(title, str) or not isinstance(body, str):
        raise _invalid('"title" and "body" must be strings.')
    payload: dict[str, Any] = {"title": title, "body": body}
    for key in ("id", "device", "event"):
        if obj.get(key) is not None:
            payload[key] = _short_text(obj, key)
    if obj.get("time") is not None:
        payload["time"] = _time(obj["time"])
    if obj.get("snapshot") is not None:
        payload["snapshot"] = _link(obj["snapshot"], "snapshot", https=True)
    call = obj.get("call", False)
    if not isinstance(call, bool):
        raise _invalid('"call" must be true or false.')
    if call:
        payload["call"] = True
    url = obj.get("url")
    if url is not None:
        payload["url"] = _link(url, "url")
    elif "device" in payload:
        # The notification click opens the viewer on the device, ready to call it.
        payload["url"] = "/?device=" + quote(payload["device"], safe="") + ("&call=1" * call)
    return payload


def _recipients(obj: Mapping[str, Any]) -> Recipients:
    raw = obj.get("user_ids")
    ids = (raw,) if isinstance(raw, str) else raw
    if ids is None:
        ids = ()
    elif not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
        raise _invalid('"user_ids" must be a user id, a list of them, or null.')
    bad = [i for i in ids if not is_user_id(i)]
    if bad:
        raise _invalid(f'"user_ids" must be user ids (UUIDs); {bad[0]!r} is not one.')
    names = _string_list(obj, "users", _NAME_RE.match)
    roles = _string_list(obj, "roles", _ROLES.__contains__)
    recipients = Recipients(tuple(i.lower() for i in ids), names, roles)
    if raw is not None and recipients.everyone:
        raise _invalid('"user_ids" is empty: name a recipient, or leave it out for everyone.')
    if len(ids) + len(names) + len(roles) > _MAX_RECIPIENTS:
        raise _invalid(f"At most {_MAX_RECIPIENTS} recipients per request.")
    return recipients


def _string_list(obj: Mapping[str, Any], key: str, valid: Any) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and valid(v) for v in value):
        what = "account names" if key == "users" else "roles (admin, user, device)"
        raise _invalid(f'"{key}" must be a list of {what}.')
    return tuple(value)


def _alert_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ALERT_ID_RE.match(value):
        raise _invalid('"id" must be 1 to 128 letters, digits or _ . : -.')
    return value


def _ttl(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TTL_SECONDS:
        raise _invalid(f'"ttl" must be whole seconds from 0 to {MAX_TTL_SECONDS}.')
    return value


def _urgency(value: Any) -> Urgency:
    if value is None:
        return Urgency.NORMAL
    try:
        return Urgency(value)
    except ValueError:
        choices = ", ".join(u.value for u in Urgency)
        raise _invalid(f'"urgency" must be one of: {choices}.') from None


def _topic(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TOPIC_RE.match(value):
        # RFC 8030 section 5.4: at most 32 characters of the URL-safe base64 alphabet.
        raise _invalid('"topic" must be 1 to 32 characters of A-Z a-z 0-9 - _.')
    return value


def _short_text(obj: Mapping[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise _invalid(f'"{key}" must be a string of 1 to 128 characters.')
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _invalid('"time" must be a Unix time in seconds.')
    return float(value)


def _link(value: Any, key: str, *, https: bool = False) -> str:
    # A click opens only the viewer's own pages (a path); an image may also be on https.
    if isinstance(value, str) and len(value) <= _MAX_LINK_CHARS and "\\" not in value:
        if value.startswith("/") and not value.startswith("//"):
            return value
        if https and value.startswith("https://") and len(value) > len("https://"):
            return value
    where = "a path on the hub (one leading /)" + (" or an https URL" if https else "")
    raise _invalid(f'"{key}" must be {where}.')


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _invalid(message: str) -> RealtimeError:
    return RealtimeError(Codes.INVALID_PARAMETER, message)
