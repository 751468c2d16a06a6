"""Browser push subscriptions: validation of what ``PushManager.subscribe()`` hands a page.

Pure: a JSON object in, a :class:`Subscription` or a ``RealtimeError`` (INVALID_PARAMETER)
naming the bad field out. An endpoint must be ``https`` (RFC 8030 section 8: push messages
are sent over TLS), carry no credentials, and, unless the hub allows it for tests, must not
name a loopback, private, link-local or otherwise non-global address or a ``localhost``
name (RFC 6761 section 6.3): the hub would otherwise POST wherever a user points it (SSRF).
Names that resolve to such addresses are refused again when sending (``sender.py``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import Codes, RealtimeError

__all__ = [
    "AUTH_BYTES",
    "MAX_ENDPOINT_CHARS",
    "P256DH_BYTES",
    "Subscription",
    "b64url_decode",
    "b64url_encode",
    "check_endpoint",
    "is_public_address",
    "origin_of",
    "parse_subscription",
]

# RFC 8291 section 3.1-3.2: an uncompressed P-256 point, and a 16-octet auth secret.
P256DH_BYTES: Final = 65
AUTH_BYTES: Final = 16
MAX_ENDPOINT_CHARS: Final = 2048
_MAX_KEY_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class Subscription:
    """One browser's push subscription (keys as the browser gives them: base64url)."""

    endpoint: str
    p256dh: str
    auth: str

    def info(self) -> dict[str, Any]:
        """The ``subscription_info`` shape pywebpush and ``PushSubscription.toJSON()`` use."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}

    @property
    def origin(self) -> str:
        """The push service's origin, the VAPID ``aud`` claim (RFC 8292 section 2)."""
        return origin_of(self.endpoint)


def parse_subscription(obj: Any, *, allow_private: bool = False) -> Subscription:
    """A validated subscription from ``{endpoint, keys: {p256dh, auth}}``."""
    if not isinstance(obj, Mapping):
        raise _invalid('The subscription must be an object: {"endpoint": ..., "keys": {...}}.')
    endpoint = check_endpoint(obj.get("endpoint"), allow_private=allow_private)
    keys = obj.get("keys")
    if not isinstance(keys, Mapping):
        raise _invalid('"keys" must be an object with "p256dh" and "auth".')
    p256dh = _key(keys, "p256dh", P256DH_BYTES)
    if not _on_curve(b64url_decode(p256dh)):
        raise _invalid('"keys.p256dh" must be an uncompressed P-256 point (0x04, x, y).')
    auth = _key(keys, "auth", AUTH_BYTES)
    return Subscription(endpoint, p256dh, auth)


def check_endpoint(value: Any, *, allow_private: bool = False) -> str:
    """``value`` if it is an acceptable push endpoint URL; INVALID_PARAMETER otherwise."""
    if not isinstance(value, str) or not value:
        raise _invalid('"endpoint" must be a non-empty string (an https URL).')
    if len(value) > MAX_ENDPOINT_CHARS:
        raise _invalid(f'"endpoint" is longer than {MAX_ENDPOINT_CHARS} characters.')
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not port_ok or parts.scheme != "https" or not parts.hostname:
        raise _invalid('"endpoint" must be an https URL with a host.')
    if parts.username is not None or parts.password is not None:
        raise _invalid('"endpoint" must not carry a user name or password.')
    if not allow_private and not _public_host(parts.hostname):
        raise _invalid(
            f'"endpoint" host {parts.hostname!r} is loopback, private or link-local; '
            "push services are on the public Internet."
        )
    return value


def is_public_address(address: str) -> bool:
    """Whether the IP literal ``address`` is globally routable (not loopback, private, ...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, the way a browser serializes an origin."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme)
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme}://{host}{port}"


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; ``ValueError`` if it is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64url: {exc}") from exc


def b64url_encode(data: bytes) -> str:
    """base64url without padding, as the Push API and VAPID spell keys (RFC 8292 3.2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_host(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        return is_public_address(name)
    except ValueError:
        return True  # a DNS name: checked against what it resolves to when sending


def _on_curve(point: bytes) -> bool:
    if point[0] != 0x04:
        return False
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        return False
    return True


def _key(keys: Mapping[str, Any], name: str, size: int) -> str:
    value = keys.get(name)
    if not isinstance(value, str) or not value or len(value) > _MAX_KEY_CHARS:
        raise _invalid(f'"keys.{name}" must be a base64url string.')
    if any(c in value for c in "+/"):
        # The Push API hands out base64url; accept the plain alphabet too, as pywebpush does.
        value = value.replace("+", "-").replace("/", "_")
    try:
        raw = b64url_decode(value.rstrip("="))
    except ValueError:
        raise _invalid(f'"keys.{name}" is not valid base64url.') from None
    if len(raw) != size:
        raise _invalid(f'"keys.{name}" must decode to {size} bytes, not {len(raw)}.')
    return b64url_encode(raw)


def _invalid(message: str) -> RealtimeError:
    return RealtimeError(Codes.INVALID_PARAMETER, message)
