"""Accounts of the hub: SQLite in the state directory, scrypt password hashes.

Every account has a UUID (``user_id``, what the wire carries) and a unique ``name`` (what
people log in with and what settings use). Passwords are hashed with scrypt (RFC 7914), a
memory-hard KDF, with a per-account salt, and compared in constant time. An account without
a password (a device that only ever uses minted tokens) cannot log in.

The methods are synchronous; async callers wrap them in ``asyncio.to_thread`` (the hub
runs ``verify_password``, a deliberately slow scrypt, on a pool of its own:
:mod:`agent.hub.login`). One store may be used from several threads (a lock serialises
them) and several processes (the CLI adds a user while the hub runs: SQLite locks the
file, a busy timeout waits for the other writer).
"""

from __future__ import annotations

import base64
import builtins
import enum
import functools
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.errors import AccountError
from agent.protocol import is_user_id
from agent.storage import PrivateDatabase

__all__ = [
    "ACCOUNTS_FILE",
    "MIN_PASSWORD_LENGTH",
    "Account",
    "AccountStore",
    "Role",
    "check_new_password",
    "check_password",
    "hash_password",
]

ACCOUNTS_FILE: Final = "accounts.db"
# Names are what people type at a login prompt and write in TOML: keep them plain.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_MAX_PASSWORD_CHARS: Final = 1024
# New passwords, unless the caller says otherwise ([hub] min_password_length): length is what
# makes a guessed password expensive (NIST SP 800-63B s. 3.1.1.2 asks for at least 8; 12
# also holds against an offline attack on a stolen database).
MIN_PASSWORD_LENGTH: Final = 12
# scrypt cost: N=2**14, r=8 is 16 MiB and ~50 ms per hash on a Pi-class core (RFC 7914 s. 2
# recommends r=8; N is the memory/CPU knob).
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_HASH_BYTES: Final = 32
_SALT_BYTES: Final = 16

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    user_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT,
    created_at REAL NOT NULL
)
"""


class Role(enum.StrEnum):
    """What an account may do: administer, use, or be a device."""

    ADMIN = "admin"
    USER = "user"
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class Account:
    """One account; ``user_id`` is the UUID the wire carries."""

    user_id: str
    name: str
    role: Role
    created_at: float


class AccountStore:
    """Accounts in an SQLite file (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store = PrivateDatabase(path)
        self._lock, self._db = self._store.lock, self._store.connection
        self._db.execute(_SCHEMA)

    def add(
        self,
        name: str,
        password: str | None,
        role: Role = Role.USER,
        *,
        min_password_length: int = MIN_PASSWORD_LENGTH,
    ) -> Account:
        """Create an account; ``AccountError`` on a bad or taken name, or a password shorter
        than ``min_password_length``."""
        _check_name(name)
        digest = None if password is None else _new_hash(password, min_password_length)
        account = Account(str(uuid.uuid4()), name, Role(role), time.time())
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
                    (account.user_id, name, account.role.value, digest, account.created_at),
                )
        except sqlite3.IntegrityError as exc:
            raise AccountError(f'An account named "{name}" already exists.') from exc
        return account

    def remove(self, name: str) -> None:
        """Delete the account ``name``; ``AccountError`` if there is none."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM accounts WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise AccountError(f'No account named "{name}".')

    def list(self) -> builtins.list[Account]:
        """Every account, by name."""
        return self._select("ORDER BY name", ())

    def get_by_name(self, name: str) -> Account | None:
        """The account called ``name``, if any."""
        found = self._select("WHERE name = ?", (name,))
        return found[0] if found else None

    def get_by_id(self, user_id: str) -> Account | None:
        """The account with UUID ``user_id``, if any."""
        found = self._select("WHERE user_id = ?", (user_id,))
        return found[0] if found else None

    def verify_password(self, name: str, password: str) -> Account | None:
        """The account if ``password`` is right for ``name``; ``None`` otherwise, never raises
        for any name or password.

        An unknown name, an account without a password, an empty or an overlong password
        each cost one scrypt against a dummy hash, like a wrong password: neither the answer
        nor its timing tells which names exist.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT password_hash FROM accounts WHERE name = ?", (name,)
            ).fetchone()
        stored = row[0] if row else None
        if stored is None or not password or len(password) > _MAX_PASSWORD_CHARS:
            check_password(password[:_MAX_PASSWORD_CHARS], _dummy_hash())
            return None
        return self.get_by_name(name) if check_password(password, stored) else None

    def set_password(
        self, name: str, password: str | None, *, min_password_length: int = MIN_PASSWORD_LENGTH
    ) -> None:
        """Replace the password of ``name`` (``None`` disables password login);
        ``AccountError`` if it is shorter than ``min_password_length``."""
        digest = None if password is None else _new_hash(password, min_password_length)
        with self._lock:
            cursor = self._db.execute(
                "UPDATE accounts SET password_hash = ? WHERE name = ?", (digest, name)
            )
        if cursor.rowcount == 0:
            raise AccountError(f'No account named "{name}".')

    def close(self) -> None:
        """Close the database."""
        self._store.close()

    def _select(self, where: str, args: tuple[str, ...]) -> builtins.list[Account]:
        sql = f"SELECT user_id, name, role, created_at FROM accounts {where}"  # noqa: S608 (fixed clauses)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Account(r[0], r[1], Role(r[2]), r[3]) for r in rows]


def hash_password(password: str) -> str:
    """An scrypt hash of ``password`` as ``scrypt$N$r$p$salt$hash`` (base64)."""
    if not password:
        raise AccountError("The password is empty.")
    if len(password) > _MAX_PASSWORD_CHARS:
        raise AccountError(f"The password is longer than {_MAX_PASSWORD_CHARS} characters.")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return "$".join(
        ["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    )


def check_new_password(password: str, min_length: int = MIN_PASSWORD_LENGTH) -> None:
    """``AccountError`` naming the rule if ``password`` is too short or too long to set."""
    if len(password) < min_length:
        raise AccountError(
            f"The password is too short: use at least {min_length} characters "
            "([hub] min_password_length)."
        )
    if len(password) > _MAX_PASSWORD_CHARS:
        raise AccountError(f"The password is longer than {_MAX_PASSWORD_CHARS} characters.")


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``, compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def _new_hash(password: str, min_length: int) -> str:
    check_new_password(password, min_length)
    return hash_password(password)


@functools.cache
def _dummy_hash() -> str:
    # Same parameters as a real hash, so checking against it costs the same; its digest
    # is random and never written down, so no password matches it.
    salt, digest = secrets.token_bytes(_SALT_BYTES), secrets.token_bytes(_HASH_BYTES)
    return "$".join(
        ["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    )


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: OpenSSL's default cap (32 MiB) is close to 128*N*r; leave headroom.
    # surrogatepass: a lone surrogate (valid in JSON) hashes like any other input instead
    # of failing early, which would answer faster; other strings encode as plain UTF-8.
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=_HASH_BYTES,
        maxmem=64 * 1024 * 1024,
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise AccountError(
            f"Bad account name {name!r}: use 1 to 64 letters, digits or . _ @ -, "
            "starting with a letter or digit."
        )
    if is_user_id(name):
        # A recipient may be given by id or by name; a UUID-shaped name would be ambiguous.
        raise AccountError(f"Bad account name {name!r}: a name must not look like a user id.")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
