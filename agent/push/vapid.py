"""VAPID (RFC 8292): the hub's P-256 key pair and the ``Authorization`` header it signs.

The private key is made on first start and kept in the state directory as PKCS#8 PEM with
mode 0600 (``statedir.read_or_create_secret``: two processes starting at once agree on one
key). The public key is handed to browsers as the base64url uncompressed point, the
``applicationServerKey`` of ``PushManager.subscribe()`` (RFC 8292 section 3.2).

Each push request carries ``Authorization: vapid t=JWT, k=PUBLIC_KEY`` where the JWT is
ES256-signed with claims ``aud`` (the push service's origin), ``exp`` (at most 24 hours
ahead, section 2) and ``sub`` (a contact, section 2.1). A token is reused for the same
audience until an hour before it expires: signing once per request would be waste.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from agent.database import FileSecrets, SecretStore
from agent.push.errors import VapidKeyError
from agent.push.subscriptions import b64url_encode

__all__ = ["TOKEN_LIFETIME_SECONDS", "VAPID_KEY_FILE", "VapidKeys", "VapidSigner"]

VAPID_KEY_FILE: Final = "vapid-private-key.pem"
# RFC 8292 section 2: "exp" MUST NOT be more than 24 hours from the time of the request.
TOKEN_LIFETIME_SECONDS: Final = 12 * 3600
_REFRESH_MARGIN_SECONDS: Final = 3600
_MAX_CACHED_AUDIENCES: Final = 64


class VapidKeys:
    """The hub's VAPID key pair."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise TypeError("a VAPID key must be on P-256 (secp256r1)")
        self.private_key = private_key
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.public_key = b64url_encode(point)
        self._vapid: Any = Vapid02(private_key)

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> VapidKeys:
        """The key pair in ``state_dir``, made (mode 0600) on first use."""
        return cls.from_secrets(FileSecrets(state_dir))

    @classmethod
    def from_secrets(cls, store: SecretStore) -> VapidKeys:
        """The key pair kept as ``vapid-private-key.pem`` in ``store``, made on first use."""
        pem = store.get_or_create(VAPID_KEY_FILE, _new_private_pem)
        # Named in errors: the file, or the row of that name in a shared database.
        where = store.state_dir / VAPID_KEY_FILE if isinstance(store, FileSecrets) else None
        where = where or Path(VAPID_KEY_FILE)
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise VapidKeyError(where, "not an unencrypted PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise VapidKeyError(where, "not a P-256 (secp256r1) key")
        return cls(key)

    def sign(self, claims: dict[str, Any]) -> str:
        """The ``Authorization`` header value for ``claims`` (``vapid t=..., k=...``)."""
        headers: dict[str, str] = self._vapid.sign(claims)
        return headers["Authorization"]


@dataclass(frozen=True, slots=True)
class _Token:
    header: str
    expires_at: int


class VapidSigner:
    """Signs VAPID headers for push services, reusing one per audience while it is fresh."""

    def __init__(
        self,
        keys: VapidKeys,
        subject: str,
        *,
        lifetime: int = TOKEN_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lifetime <= 24 * 3600:
            raise ValueError("a VAPID token lives more than 0 s and at most 24 h")
        self.keys = keys
        self.subject = subject
        self._lifetime = lifetime
        self._clock = clock
        self._tokens: dict[str, _Token] = {}

    def authorization(self, audience: str) -> str:
        """``Authorization`` for a request to the push service at origin ``audience``."""
        now = self._clock()
        token = self._tokens.get(audience)
        if token is None or token.expires_at - now < min(_REFRESH_MARGIN_SECONDS, self._lifetime):
            token = self._sign(audience, int(now) + self._lifetime)
        return token.header

    def _sign(self, audience: str, expires_at: int) -> _Token:
        claims = {"aud": audience, "exp": expires_at, "sub": self.subject}
        token = _Token(self.keys.sign(claims), expires_at)
        if len(self._tokens) >= _MAX_CACHED_AUDIENCES:
            self._tokens.clear()
        self._tokens[audience] = token
        return token


def _new_private_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
