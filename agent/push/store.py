"""The hub's push database: browser subscriptions and the alert ids it has seen.

A :class:`~agent.database.Database`: by default SQLite in the state directory (``push.db``,
mode 0600, WAL with ``synchronous=FULL``: the hub answers an alert's sender only after its
commit, and the sender then forgets the alert, so that commit must survive a power cut
too), or the PostgreSQL database the hub nodes share. The queue of deliveries
(:mod:`agent.push.queue`) lives in the same database, so that an alert's id and its
deliveries are committed together. The methods are synchronous; async
callers wrap them in ``asyncio.to_thread``. Every change runs in one transaction that is
rolled back whole when any statement fails, so a failed subscribe leaves nothing half done.

Subscriptions: an endpoint is one browser on one device, so it belongs to one user: a
subscribe from another account moves it (the browser now shows that account's alerts).
A user keeps at most ``max_per_user`` subscriptions; a new one evicts the oldest, because
the newest browser is the one in the user's hand and old ones are usually dead (a reset
phone, a cleared browser) and would otherwise lock the user out until a push found them.

Alert ids: an agent resends an alert whose answer it did not get; the id of every accepted
alert is kept for ``keep_seconds`` so the resend is acknowledged without notifying twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.database import Database, Migration, Schema, SqliteDatabase, Tx, migrate
from agent.push.subscriptions import Subscription

__all__ = ["PUSH_DB_FILE", "PUSH_SCHEMA", "StoredSubscription", "SubscriptionStore"]

PUSH_DB_FILE: Final = "push.db"
# SQLite allows 32766 host parameters per statement; stay far below.
_CHUNK: Final = 500
_PRUNE_EVERY: Final = 256

PUSH_SCHEMA: Final = Schema(
    "push",
    (
        Migration(
            1,
            "subscriptions and alert ids",
            (
                """CREATE TABLE IF NOT EXISTS subscriptions (
                    endpoint TEXT PRIMARY KEY,
                    user_id TEXT NOT NULL,
                    p256dh TEXT NOT NULL,
                    auth TEXT NOT NULL,
                    created_at {real} NOT NULL
                )""",
                "CREATE INDEX IF NOT EXISTS subscriptions_user "
                "ON subscriptions (user_id, created_at)",
                """CREATE TABLE IF NOT EXISTS alert_ids (
                    sender TEXT NOT NULL,
                    alert_id TEXT NOT NULL,
                    seen_at {real} NOT NULL,
                    PRIMARY KEY (sender, alert_id)
                )""",
                "CREATE INDEX IF NOT EXISTS alert_ids_seen ON alert_ids (seen_at)",
            ),
        ),
        Migration(
            2,
            "the durable push queue",
            (
                """CREATE TABLE IF NOT EXISTS push_queue (
                    id {serial},
                    endpoint TEXT NOT NULL,
                    user_id TEXT NOT NULL,
                    payload TEXT NOT NULL,
                    ttl INTEGER NOT NULL,
                    urgency TEXT NOT NULL,
                    topic TEXT,
                    created_at {real} NOT NULL,
                    expires_at {real} NOT NULL,
                    attempts INTEGER NOT NULL,
                    next_attempt_at {real} NOT NULL,
                    leased_until {real}
                )""",
                "CREATE INDEX IF NOT EXISTS push_queue_endpoint ON push_queue (endpoint, id)",
            ),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """A subscription and the user it belongs to."""

    user_id: str
    subscription: Subscription
    created_at: float


class SubscriptionStore:
    """Subscriptions and seen alert ids (a path: a private SQLite file)."""

    def __init__(self, database: Database | Path) -> None:
        # FULL: see the module docstring (NORMAL would lose the last commits to a power cut).
        self._database = (
            SqliteDatabase(database, synchronous="FULL") if isinstance(database, Path) else database
        )
        self._owns_database = isinstance(database, Path)  # else the caller closes it
        self.path = self._database.path if isinstance(self._database, SqliteDatabase) else None
        migrate(self._database, PUSH_SCHEMA, now=time.time())
        self._inserts = 0

    @property
    def database(self) -> Database:
        """Where subscriptions are kept, shared with the delivery queue."""
        return self._database

    def add(self, user_id: str, sub: Subscription, *, max_per_user: int) -> list[Subscription]:
        """Store ``sub`` for ``user_id`` (replacing the same endpoint); the evicted ones."""
        with self._database.transaction() as db:
            db.execute(
                "INSERT INTO subscriptions (endpoint, user_id, p256dh, auth, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO "
                "UPDATE SET user_id = excluded.user_id, p256dh = excluded.p256dh, "
                "auth = excluded.auth, created_at = excluded.created_at",
                (sub.endpoint, user_id, sub.p256dh, sub.auth, time.time()),
            )
            # A user has a handful at most: the newest are kept, in Python, because the
            # engines spell "everything after OFFSET" differently.
            rows = db.execute(
                "SELECT endpoint, p256dh, auth FROM subscriptions WHERE user_id = ? "
                "ORDER BY created_at DESC, endpoint DESC",
                (user_id,),
            ).fetchall()
            evicted = [Subscription(*row) for row in rows[max_per_user:]]
            db.executemany(
                "DELETE FROM subscriptions WHERE endpoint = ?", [(s.endpoint,) for s in evicted]
            )
        return evicted

    def remove(self, user_id: str, endpoint: str) -> bool:
        """Delete ``user_id``'s subscription at ``endpoint``; whether there was one."""
        with self._database.transaction() as db:
            cursor = db.execute(
                "DELETE FROM subscriptions WHERE user_id = ? AND endpoint = ?",
                (user_id, endpoint),
            )
            return cursor.rowcount > 0

    def remove_endpoint(self, endpoint: str, *, p256dh: str | None = None) -> bool:
        """Delete the subscription at ``endpoint`` (only with these keys, if given)."""
        sql, args = "DELETE FROM subscriptions WHERE endpoint = ?", [endpoint]
        if p256dh is not None:
            sql, args = sql + " AND p256dh = ?", [*args, p256dh]
        with self._database.transaction() as db:
            return db.execute(sql, args).rowcount > 0

    def for_users(self, user_ids: Iterable[str]) -> list[StoredSubscription]:
        """Every subscription of the given users."""
        ids, found = list(dict.fromkeys(user_ids)), []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found += self._select(f"WHERE user_id IN ({marks})", chunk)
        return found

    def all(self) -> list[StoredSubscription]:
        """Every subscription, oldest first."""
        return self._select("", [])

    def subscribed_users(self) -> list[str]:
        """The users with at least one subscription."""
        with self._database.read() as db:
            rows = db.execute("SELECT DISTINCT user_id FROM subscriptions").fetchall()
        return [row[0] for row in rows]

    def remember_alert(self, sender: str, alert_id: str, *, keep_seconds: float) -> bool:
        """Record an accepted alert id; ``False`` if ``sender`` sent it before (a resend)."""
        with self._database.transaction() as db:
            return self.remember_alert_in(db, sender, alert_id, keep_seconds=keep_seconds)

    def remember_alert_in(self, db: Tx, sender: str, alert_id: str, *, keep_seconds: float) -> bool:
        """``remember_alert`` inside a transaction the caller holds (``database``)."""
        now = time.time()
        cursor = db.execute(
            "INSERT INTO alert_ids (sender, alert_id, seen_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (sender, alert_id, now),
        )
        self._inserts += 1
        if self._inserts % _PRUNE_EVERY == 0:
            db.execute("DELETE FROM alert_ids WHERE seen_at < ?", (now - keep_seconds,))
        return cursor.rowcount > 0

    def forget_alert(self, sender: str, alert_id: str) -> None:
        """Forget an alert id again (it was recorded but could not be handed on)."""
        with self._database.transaction() as db:
            db.execute(
                "DELETE FROM alert_ids WHERE sender = ? AND alert_id = ?", (sender, alert_id)
            )

    def close(self) -> None:
        """Close the database, if this store opened it."""
        if self._owns_database:
            self._database.close()

    def _select(self, where: str, args: list[str]) -> list[StoredSubscription]:
        sql = (
            "SELECT user_id, endpoint, p256dh, auth, created_at FROM subscriptions "  # noqa: S608 (fixed clauses, bound values)
            f"{where} ORDER BY created_at, endpoint"
        )
        with self._database.read() as db:
            rows = db.execute(sql, args).fetchall()
        return [StoredSubscription(r[0], Subscription(r[1], r[2], r[3]), r[4]) for r in rows]
