"""Accounts of the hub: SQLite in the state directory, scrypt password hashes.

Every account has a UUID (``user_id``, what the wire carries) and a unique ``name`` (what
people log in with and what settings use). Passwords are hashed with scrypt (RFC 7914), a
memory-hard KDF, with a per-account salt, and compared in constant time. An account without
a password (a device that only ever uses minted tokens) cannot log in.

Each account holds group grants (:mod:`agent.hub.grants`) and a token generation: tokens
are issued with the current generation, and bumping it (``revoke_tokens``, a password
change) makes every earlier token invalid. Every change bumps the store's ``revision``,
which running hubs poll to apply it to open connections (:mod:`agent.hub.access`).

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
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.database import (
    Database,
    Migration,
    Schema,
    SqliteDatabase,
    Tx,
    integrity_errors,
    migrate,
)
from agent.errors import AccountError, AccountNotFoundError
from agent.hub.grants import check_grant
from agent.protocol import is_user_id

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

# Every change to accounts, grants or token generations bumps ``revision`` in the same
# transaction: hubs (this process or another node on the same database) poll it to apply
# changes to open connections.
ACCOUNTS_SCHEMA: Final = Schema(
    "accounts",
    (
        Migration(
            1,
            "accounts",
            (
                """CREATE TABLE IF NOT EXISTS accounts (
                    user_id TEXT PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    role TEXT NOT NULL,
                    password_hash TEXT,
                    created_at {real} NOT NULL
                )""",
            ),
        ),
        Migration(
            2,
            "grants and token generations",
            (
                """CREATE TABLE grants (
                    user_id TEXT NOT NULL,
                    grant_pattern TEXT NOT NULL,
                    PRIMARY KEY (user_id, grant_pattern)
                )""",
                "CREATE TABLE account_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
                "INSERT INTO account_meta (key, value) VALUES ('revision', 0)",
                "ALTER TABLE accounts ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0",
            ),
        ),
    ),
)


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
    grants: tuple[str, ...] = ()
    # Tokens carry the generation they were issued in; revoking bumps it (see tokens.py).
    token_generation: int = 0


class AccountStore:
    """Accounts in a :class:`~agent.database.Database` (a path: a private SQLite file)."""

    def __init__(self, database: Database | Path) -> None:
        self._database = SqliteDatabase(database) if isinstance(database, Path) else database
        self._owns_database = isinstance(database, Path)  # else the caller closes it
        # The SQLite file, when that is the engine (tools and tests look at it).
        self.path = self._database.path if isinstance(self._database, SqliteDatabase) else None
        migrate(self._database, ACCOUNTS_SCHEMA, now=time.time())

    @property
    def database(self) -> Database:
        """Where the accounts are kept."""
        return self._database

    def add(
        self,
        name: str,
        password: str | None,
        role: Role = Role.USER,
        *,
        groups: Iterable[str] = (),
        min_password_length: int = MIN_PASSWORD_LENGTH,
    ) -> Account:
        """Create an account granted ``groups``; ``AccountError`` on a bad or taken name,
        a bad grant, or a password shorter than ``min_password_length``."""
        _check_name(name)
        grants = _check_grants(groups)
        digest = None if password is None else _new_hash(password, min_password_length)
        account = Account(str(uuid.uuid4()), name, Role(role), time.time(), grants)
        taken = AccountError(f'An account named "{name}" already exists.')
        try:
            with self._database.transaction() as db:
                if db.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
                    raise taken
                db.execute(
                    "INSERT INTO accounts (user_id, name, role, password_hash, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (account.user_id, name, account.role.value, digest, account.created_at),
                )
                _insert_grants(db, account.user_id, grants)
                _bump_revision(db)
        except integrity_errors() as exc:  # another process took the name meanwhile
            raise taken from exc
        return account

    def remove(self, name: str) -> None:
        """Delete the account ``name`` and its grants; ``AccountError`` if there is none."""
        with self._database.transaction() as db:
            user_id = _user_id_of(db, name)
            db.execute("DELETE FROM grants WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM accounts WHERE user_id = ?", (user_id,))
            _bump_revision(db)

    def grant(self, name: str, groups: Iterable[str]) -> tuple[str, ...]:
        """Grant ``groups`` (names or ``prefix*``) to ``name``; its grants after."""
        grants = _check_grants(groups)
        with self._database.transaction() as db:
            user_id = _user_id_of(db, name)
            _insert_grants(db, user_id, grants)
            _bump_revision(db)
            return _grants_of(db, user_id)

    def revoke(self, name: str, groups: Iterable[str]) -> tuple[str, ...]:
        """Take ``groups`` back from ``name`` (exactly as granted); its grants after."""
        grants = _check_grants(groups)
        with self._database.transaction() as db:
            user_id = _user_id_of(db, name)
            held = set(_grants_of(db, user_id))
            missing = [g for g in grants if g not in held]
            if missing:
                raise AccountError(
                    f'"{name}" holds no grant {", ".join(missing)} '
                    f"(it holds: {', '.join(sorted(held)) or 'none'})."
                )
            db.executemany(
                "DELETE FROM grants WHERE user_id = ? AND grant_pattern = ?",
                [(user_id, g) for g in grants],
            )
            _bump_revision(db)
            return _grants_of(db, user_id)

    def set_role(self, name: str, role: Role) -> None:
        """Change the role of ``name``; open connections follow from their next frame."""
        with self._database.transaction() as db:
            user_id = _user_id_of(db, name)
            db.execute(
                "UPDATE accounts SET role = ? WHERE user_id = ?", (Role(role).value, user_id)
            )
            _bump_revision(db)

    def revoke_tokens(self, name: str) -> int:
        """Invalidate every token issued to ``name`` so far; the new generation."""
        with self._database.transaction() as db:
            user_id = _user_id_of(db, name)
            db.execute(
                "UPDATE accounts SET token_generation = token_generation + 1 WHERE user_id = ?",
                (user_id,),
            )
            _bump_revision(db)
            row = db.execute(
                "SELECT token_generation FROM accounts WHERE user_id = ?", (user_id,)
            ).fetchone()
        return int(row[0])

    def revision(self) -> int:
        """A number that moves whenever an account, grant or token generation changes."""
        with self._database.read() as db:
            row = db.execute("SELECT value FROM account_meta WHERE key = 'revision'").fetchone()
        return int(row[0])

    def snapshot(self) -> tuple[int, builtins.list[Account]]:
        """The revision and every account, read in one transaction."""
        with self._database.transaction() as db:
            row = db.execute("SELECT value FROM account_meta WHERE key = 'revision'").fetchone()
            return int(row[0]), _select(db, "ORDER BY name", ())

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
        with self._database.read() as db:
            row = db.execute(
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
        ``AccountError`` if it is shorter than ``min_password_length``.

        Every token issued before is revoked: a changed password ends old sessions.
        """
        digest = None if password is None else _new_hash(password, min_password_length)
        with self._database.transaction() as db:
            user_id = _user_id_of(db, name)
            db.execute(
                "UPDATE accounts SET password_hash = ?, token_generation = token_generation + 1 "
                "WHERE user_id = ?",
                (digest, user_id),
            )
            _bump_revision(db)

    def close(self) -> None:
        """Close the database, if this store opened it."""
        if self._owns_database:
            self._database.close()

    def _select(self, where: str, args: tuple[str, ...]) -> builtins.list[Account]:
        with self._database.read() as db:
            return _select(db, where, args)


def _select(db: Tx, where: str, args: tuple[str, ...]) -> list[Account]:
    sql = (
        "SELECT user_id, name, role, created_at, token_generation FROM accounts "  # noqa: S608 (fixed clauses)
        + where
    )
    rows = db.execute(sql, args).fetchall()
    grants: dict[str, list[str]] = {}
    if rows:
        for user_id, pattern in db.execute(
            "SELECT user_id, grant_pattern FROM grants ORDER BY grant_pattern"
        ).fetchall():
            grants.setdefault(user_id, []).append(pattern)
    return [
        Account(r[0], r[1], Role(r[2]), r[3], tuple(grants.get(r[0], ())), int(r[4])) for r in rows
    ]


def _user_id_of(db: Tx, name: str) -> str:
    row = db.execute("SELECT user_id FROM accounts WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise AccountNotFoundError(name)
    return str(row[0])


def _grants_of(db: Tx, user_id: str) -> tuple[str, ...]:
    rows = db.execute(
        "SELECT grant_pattern FROM grants WHERE user_id = ? ORDER BY grant_pattern", (user_id,)
    ).fetchall()
    return tuple(row[0] for row in rows)


def _insert_grants(db: Tx, user_id: str, grants: Iterable[str]) -> None:
    db.executemany(
        "INSERT INTO grants (user_id, grant_pattern) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(user_id, grant) for grant in grants],
    )


def _bump_revision(db: Tx) -> None:
    db.execute("UPDATE account_meta SET value = value + 1 WHERE key = 'revision'")


def _check_grants(groups: Iterable[str]) -> tuple[str, ...]:
    if isinstance(groups, str):
        raise AccountError(f"Grants must be a list of groups, got the string {groups!r}.")
    return tuple(dict.fromkeys(check_grant(group) for group in groups))


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
