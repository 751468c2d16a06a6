"""The hub's records, opened on the engine its settings name: SQLite files or PostgreSQL.

``[hub] database = "sqlite"`` (the default) keeps each store in its own private file in the
state directory (``accounts.db``, ``push.db``, ``snapshots.db``, ``events.db``) and the
hub's own secrets as files (``jwt-secret``, ``vapid-private-key.pem``): one hub process,
nothing to set up.

``[hub] database = "postgresql://..."`` keeps every store and both secrets in that one
database, which several hub nodes share: a token issued by any node is good on every node,
an account changed on one applies on all (the access table polls the accounts' revision),
and the push queue is drained by whichever node claims a delivery first. The password may
be in the URL or in ``database_password_file``.

``edge-agent hub migrate`` applies every store's migrations without starting the hub; a
starting hub applies them too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agent.database import (
    SECRETS_SCHEMA,
    Database,
    DatabaseSecrets,
    FileSecrets,
    Migration,
    PostgresDatabase,
    SecretStore,
    SqliteDatabase,
    migrate,
)
from agent.hub.accounts import ACCOUNTS_FILE, ACCOUNTS_SCHEMA, AccountStore
from agent.hub.history import EVENTS_FILE, EVENTS_SCHEMA
from agent.hub.snapshots import SNAPSHOTS_SCHEMA
from agent.push.store import PUSH_DB_FILE, PUSH_SCHEMA
from agent.statedir import read_secret_file

if TYPE_CHECKING:
    from agent.config import HubSettings

__all__ = ["HUB_SCHEMAS", "SNAPSHOTS_FILE", "HubRecords", "migrate_all", "open_records"]

SNAPSHOTS_FILE: Final = "snapshots.db"
HUB_SCHEMAS: Final = (
    ACCOUNTS_SCHEMA,
    PUSH_SCHEMA,
    SNAPSHOTS_SCHEMA,
    EVENTS_SCHEMA,
    SECRETS_SCHEMA,
)


@dataclass
class HubRecords:
    """Where each of the hub's stores lives, and its secrets."""

    accounts: AccountStore
    push: Database | Path  # a path: push.db, opened by the push service itself
    snapshots: Database | Path
    events: Database | Path
    secrets: SecretStore
    shared: bool  # several hub nodes may use these records at once
    where: str  # for messages: the state directory or the database URL (no password)
    _owned: list[Database] = field(default_factory=list)

    def migrate(self) -> None:
        """Bring every store's tables up to date without opening the stores."""
        for place, schema in (
            (self.push, PUSH_SCHEMA),
            (self.snapshots, SNAPSHOTS_SCHEMA),
            (self.events, EVENTS_SCHEMA),
        ):
            if isinstance(place, Path):  # SQLite: one file per store
                database = SqliteDatabase(place)
                try:
                    migrate(database, schema, now=time.time())
                finally:
                    database.close()
        # The accounts were migrated when they were opened, and a shared database whole.

    def close(self) -> None:
        """Close what was opened here (the stores close their own SQLite files)."""
        self.accounts.close()
        for database in self._owned:
            database.close()


def open_records(hub: HubSettings, state_dir: Path) -> HubRecords:
    """The hub's stores per ``hub.database``; ``ConfigError`` naming what is wrong."""
    if hub.database == "sqlite":
        return HubRecords(
            accounts=AccountStore(state_dir / ACCOUNTS_FILE),
            push=state_dir / PUSH_DB_FILE,
            snapshots=state_dir / SNAPSHOTS_FILE,
            events=state_dir / EVENTS_FILE,
            secrets=FileSecrets(state_dir),
            shared=False,
            where=str(state_dir),
        )
    database = PostgresDatabase(hub.database, password=_password(hub.database_password_file))
    try:
        migrate_all(database)
        accounts = AccountStore(database)
    except BaseException:
        database.close()
        raise
    return HubRecords(
        accounts=accounts,
        push=database,
        snapshots=database,
        events=database,
        secrets=DatabaseSecrets(database),
        shared=True,
        where=database.where,
        _owned=[database],
    )


def migrate_all(database: Database) -> list[tuple[str, Migration]]:
    """Apply every store's migrations to ``database``; what was applied."""
    applied = []
    for schema in HUB_SCHEMAS:
        applied += [(schema.domain, m) for m in migrate(database, schema, now=time.time())]
    return applied


@contextlib.contextmanager
def records_for_tools(hub: HubSettings, state_dir: Path) -> Iterator[HubRecords]:
    """The records for a command (``user``, ``token``, ``hub migrate``), closed after."""
    records = open_records(hub, state_dir)
    try:
        yield records
    finally:
        records.close()


def _password(path: Path | None) -> str | None:
    if path is None:
        return None
    return read_secret_file(path, what="database password", key="hub.database_password_file")
