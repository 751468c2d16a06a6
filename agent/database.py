"""Where the hub keeps its records: one small interface, two engines (SQLite, PostgreSQL).

The hub's stores (accounts and grants, push subscriptions and queue, snapshots, event
history, shared secrets) write plain SQL against :class:`Database`:

- ``transaction()`` yields a :class:`Tx` inside one transaction (SQLite ``BEGIN IMMEDIATE``,
  a PostgreSQL transaction on a pooled connection), committed on success, rolled back on
  any exception;
- ``read()`` yields a :class:`Tx` for reads that need no write lock;
- statements use ``?`` placeholders; the PostgreSQL engine turns them into ``%s``;
- :func:`migrate` creates and upgrades each store's tables from its numbered
  :class:`Migration` list, the same statements for both engines (the few type names that
  differ are filled in from :class:`Dialect`), and records them in ``schema_migrations``.

SQLite is the zero-setup default: one private file (mode 0600, WAL) per store in the state
directory, used by one hub process. PostgreSQL (``[hub] database = "postgresql://..."``)
holds every store in one database that several hub nodes share.

Why not SQLAlchemy Core and Alembic: the hub's SQL is a few dozen plain statements; this
adapter (placeholders, three type names, a pool) keeps them visible and costs no extra
packages on a Pi, where the SQLite engine is all that runs.

Everything here is synchronous; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import abc
import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from agent.errors import ConfigError
from agent.logs import redact
from agent.statedir import read_or_create_secret
from agent.storage import PrivateDatabase

__all__ = [
    "POSTGRES",
    "SQLITE",
    "Database",
    "DatabaseSecrets",
    "Dialect",
    "FileSecrets",
    "Migration",
    "PostgresDatabase",
    "Schema",
    "SecretStore",
    "SqliteDatabase",
    "Tx",
    "integrity_errors",
    "is_postgres_url",
    "migrate",
]

# Serialises migrations of nodes starting together (an arbitrary, fixed lock key).
_MIGRATION_LOCK_KEY: Final = 0x6564676568
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
_PLACEHOLDER_RE: Final = re.compile(r"\?")
_POOL_MAX: Final = 8
_CONNECT_TIMEOUT_SECONDS: Final = 10


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the engines in the statements the stores use."""

    name: Literal["sqlite", "postgresql"]
    blob: str  # a binary column
    serial: str  # an auto-increment integer primary key
    real: str  # a double-precision float (PostgreSQL's REAL is single precision)
    for_update: str  # appended to a SELECT that claims rows several nodes compete for


SQLITE: Final = Dialect(
    "sqlite", "BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT", "DOUBLE PRECISION", ""
)
POSTGRES: Final = Dialect(
    "postgresql",
    "BYTEA",
    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "DOUBLE PRECISION",
    " FOR UPDATE OF q SKIP LOCKED",
)


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use."""

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""

    def fetchone(self) -> Any:
        """The next row, or ``None``."""

    def fetchall(self) -> list[Any]:
        """Every remaining row."""


class Tx(Protocol):
    """A connection inside a transaction (or a read)."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders."""

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for every row."""


class Database(abc.ABC):
    """One engine holding hub records."""

    dialect: Dialect
    shared: bool  # whether several hub processes may use it at once

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction: committed on success, rolled back on an exception."""

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractContextManager[Tx]:
        """A connection for reads."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections."""

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """Where it is, for messages (a path, or a URL without its password)."""


class SqliteDatabase(Database):
    """A private SQLite file (mode 0600, WAL, ``synchronous`` as given)."""

    dialect = SQLITE
    shared = False

    def __init__(self, path: Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        self.path = path
        self._file = PrivateDatabase(path, synchronous=synchronous)

    @property
    def where(self) -> str:
        """The file's path."""
        return str(self.path)

    @property
    def private(self) -> PrivateDatabase:
        """The underlying file (for stores that also keep agent-side tables)."""
        return self._file

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, serialised by the file's lock."""
        with self._file.transaction() as db:
            yield _SqliteTx(db)

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        """The connection in autocommit mode, under the lock."""
        with self._file.lock:
            yield _SqliteTx(self._file.connection)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class PostgresDatabase(Database):
    """A PostgreSQL database shared by every hub node, through a small connection pool."""

    dialect = POSTGRES
    shared = True

    def __init__(self, url: str, *, password: str | None = None) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as exc:  # pragma: no cover - the extra is part of [test]
            raise ConfigError(
                "A postgresql:// database needs the postgres extra: "
                "pip install 'edge-agent[postgres]'.",
                key="hub.database",
            ) from exc
        self._where = redact(url)
        kwargs: dict[str, Any] = {"connect_timeout": _CONNECT_TIMEOUT_SECONDS}
        if password is not None:
            kwargs["password"] = password
        self._pool = ConnectionPool(
            url, min_size=1, max_size=_POOL_MAX, kwargs=kwargs, open=False, name="edge-hub"
        )
        try:
            self._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_SECONDS)
        except Exception as exc:
            self._pool.close()
            raise ConfigError(
                f"cannot connect to the database at {self._where}: {exc}", key="hub.database"
            ) from exc

    @property
    def where(self) -> str:
        """The URL without its password."""
        return self._where

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction on a pooled connection."""
        with self._pool.connection() as conn, conn.transaction():
            yield _PostgresTx(conn)

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        """A pooled connection (its implicit transaction ends when it goes back)."""
        with self._pool.connection() as conn:
            yield _PostgresTx(conn)

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()


def integrity_errors() -> tuple[type[Exception], ...]:
    """The exception types a broken unique or key constraint raises, in either engine."""
    errors: list[type[Exception]] = [sqlite3.IntegrityError]
    with contextlib.suppress(ImportError):
        import psycopg

        errors.append(psycopg.IntegrityError)
    return tuple(errors)


def is_postgres_url(value: str) -> bool:
    """Whether ``value`` names a PostgreSQL database."""
    return urlsplit(value).scheme in _POSTGRES_SCHEMES


class SecretStore(Protocol):
    """Where the hub's own secrets live (the JWT signing key, the VAPID private key)."""

    def get_or_create(self, name: str, factory: Callable[[], bytes]) -> bytes:
        """The secret ``name``; made by ``factory`` and kept on first use.

        Several processes starting at once agree on one value.
        """


class FileSecrets:
    """Secrets as files (mode 0600) in the state directory: the single-node default."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def get_or_create(self, name: str, factory: Callable[[], bytes]) -> bytes:
        """``state_dir/name``, made on first use."""
        return read_or_create_secret(self.state_dir / name, factory)


class DatabaseSecrets:
    """Secrets in the shared database, so that every node signs and verifies alike.

    The table is made by :data:`SECRETS_SCHEMA`.
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    def get_or_create(self, name: str, factory: Callable[[], bytes]) -> bytes:
        """The row ``name``; the first node to insert it wins, the others read it."""
        with self._database.transaction() as tx:
            tx.execute(
                "INSERT INTO hub_secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (name, factory()),
            )
            row = tx.execute("SELECT value FROM hub_secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered step of a store's schema; ``{blob}``, ``{serial}``, ``{real}`` in its
    statements become the engine's type names."""

    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Schema:
    """A store's tables: its name in ``schema_migrations`` and its migrations, in order."""

    domain: str
    migrations: tuple[Migration, ...]


SECRETS_SCHEMA: Final = Schema(
    "secrets",
    (
        Migration(
            1,
            "hub secrets",
            (
                "CREATE TABLE IF NOT EXISTS hub_secrets "
                "(name TEXT PRIMARY KEY, value {blob} NOT NULL)",
            ),
        ),
    ),
)

_LEDGER: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (domain TEXT NOT NULL, version INTEGER NOT NULL, "
    "name TEXT NOT NULL, applied_at {real} NOT NULL, PRIMARY KEY (domain, version))"
)


def migrate(database: Database, schema: Schema, *, now: float) -> list[Migration]:
    """Apply the migrations of ``schema`` that ``database`` lacks, in one transaction.

    Returns what was applied. Nodes starting together take turns (an advisory lock on
    PostgreSQL, the write lock on SQLite). ``ConfigError`` when the database has a newer
    version than this program knows (an older hub against an upgraded database).
    """
    known = {m.version for m in schema.migrations}
    types = {"blob": database.dialect.blob, "serial": database.dialect.serial}
    types["real"] = database.dialect.real
    with database.transaction() as tx:
        if database.dialect is POSTGRES:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_KEY,))
        tx.execute(_LEDGER.format(**types))
        rows = tx.execute(
            "SELECT version FROM schema_migrations WHERE domain = ?", (schema.domain,)
        ).fetchall()
        applied = {int(row[0]) for row in rows}
        if applied - known:
            raise ConfigError(
                f"the {schema.domain} tables in {database.where} are at version "
                f"{max(applied)}, newer than this program knows ({max(known)}): "
                "upgrade edge-agent on this node.",
                key="hub.database",
            )
        todo = [m for m in schema.migrations if m.version not in applied]
        for migration in todo:
            for statement in migration.statements:
                tx.execute(statement.format(**types))
            tx.execute(
                "INSERT INTO schema_migrations (domain, version, name, applied_at) "
                "VALUES (?, ?, ?, ?)",
                (schema.domain, migration.version, migration.name, now),
            )
    return todo


class _SqliteTx:
    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self._db.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)


class _PostgresTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self._conn.execute(_PLACEHOLDER_RE.sub("%s", sql), tuple(args))
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._conn.cursor() as cursor:
                cursor.executemany(_PLACEHOLDER_RE.sub("%s", sql), [tuple(r) for r in rows])
