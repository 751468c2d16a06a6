"""Access tokens: HS256 JWTs (RFC 7519) signed with a secret kept in the state directory.

Claims: ``sub`` (the account's UUID), ``name``, ``role``, ``iat``, ``exp`` and ``gen``, the
account's token generation when it was issued. Verification pins the algorithm (RFC 8725
s. 3.1: never let the token choose it) and requires every claim but ``gen`` (tokens issued
before generations existed count as generation 0). A token is revoked when its generation
is below the account's: the hub compares the two on every request and open connection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt

from agent.database import FileSecrets, SecretStore
from agent.errors import AuthError, ConfigError
from agent.hub.accounts import Account, Role

__all__ = ["SECRET_FILE", "Claims", "TokenIssuer"]

SECRET_FILE: Final = "jwt-secret"  # noqa: S105 (a file name, not a secret)
_ALGORITHM: Final = "HS256"
# RFC 7518 s. 3.2: an HS256 key must be at least as long as the hash output (32 bytes).
_MIN_SECRET_BYTES: Final = 32
_NEW_SECRET_BYTES: Final = 64
_REQUIRED: Final = ["sub", "name", "role", "iat", "exp"]
_LEEWAY_SECONDS: Final = 5


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says about its bearer."""

    user_id: str
    name: str
    role: Role
    expires_at: int
    generation: int = 0


class TokenIssuer:
    """Issues and verifies the hub's tokens."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ConfigError(f"The token secret is {len(secret)} bytes; at least 32 are needed.")
        self._secret = secret

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``, derived from the token secret (HMAC-SHA256), so
        every node sharing the secret derives the same key and no purpose sees the secret."""
        return hmac.new(self._secret, f"edge-agent {purpose}".encode(), hashlib.sha256).digest()

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> TokenIssuer:
        """The issuer whose secret is ``state_dir/jwt-secret`` (made, mode 0600, on first use)."""
        return cls.from_secrets(FileSecrets(state_dir))

    @classmethod
    def from_secrets(cls, store: SecretStore) -> TokenIssuer:
        """The issuer whose secret is ``jwt-secret`` in ``store`` (made on first use).

        Hub nodes sharing a database share the secret through it: a token from any node
        is good on every node.
        """
        secret = store.get_or_create(SECRET_FILE, lambda: secrets.token_bytes(_NEW_SECRET_BYTES))
        if len(secret) < _MIN_SECRET_BYTES:
            where = store.state_dir / SECRET_FILE if isinstance(store, FileSecrets) else None
            raise ConfigError(
                f"The token secret is {len(secret)} bytes; at least 32 are needed. "
                "Delete it to make a new one (every issued token stops working).",
                file=where,
            )
        return cls(secret)

    def issue(self, account: Account, ttl_seconds: int) -> str:
        """A token for ``account`` valid for ``ttl_seconds``."""
        if ttl_seconds <= 0:
            raise ValueError(f"Token lifetime must be positive, got {ttl_seconds} seconds.")
        now = int(time.time())
        payload = {
            "sub": account.user_id,
            "name": account.name,
            "role": account.role.value,
            "iat": now,
            "exp": now + ttl_seconds,
            "gen": account.token_generation,
        }
        return jwt.encode(payload, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; ``AuthError`` (reason ``expired``/``invalid``) if not."""
        payload = self._decode(token)
        try:
            return Claims(
                user_id=_str_claim(payload, "sub"),
                name=_str_claim(payload, "name"),
                role=Role(payload["role"]),
                expires_at=int(payload["exp"]),
                generation=_generation_claim(payload),
            )
        except (ValueError, TypeError) as exc:
            raise AuthError("The token's claims are malformed.", reason="invalid") from exc

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={"require": _REQUIRED},
                leeway=_LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("The token has expired.", reason="expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("The token is not valid.", reason="invalid") from exc


def _str_claim(payload: dict[str, Any], key: str) -> str:
    value = payload[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"claim {key!r} must be a non-empty string")
    return value


def _generation_claim(payload: dict[str, Any]) -> int:
    value = payload.get("gen", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("claim 'gen' must be a non-negative integer")
    return value
