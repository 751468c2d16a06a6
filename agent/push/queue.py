"""The hub's durable queue of push deliveries: one row per message and subscription.

A send the hub accepts is written here before the hub answers, in the same transaction as
the alert's id (:meth:`DatabaseDeliveryQueue.accept`), so an acknowledged alert is on disk and
a resent one is recognised. :class:`agent.push.worker.DeliveryWorker` claims due rows, sends
them and records the outcome; rows outlive hub restarts and crashes.

Order: each subscription's deliveries go out one at a time, oldest first. Only the oldest
row of an endpoint (its *head*) is ever claimed, so a push service that answers 429 or
5xx holds back that subscription's later messages rather than receiving them out of order
(a newer ``Topic`` message must not be replaced by an older one arriving late).

Claims are leases: a claimed row carries ``leased_until`` and is not claimed again before
then. A hub that owns its database alone (SQLite) clears every lease when it starts
(:meth:`DatabaseDeliveryQueue.release_leases`), so rows claimed by a crashed hub are sent
again at once; on a database several nodes share (PostgreSQL) a dead node's leases simply
run out, and a claim takes its rows with ``FOR UPDATE SKIP LOCKED``, so two nodes never
claim the same row: each delivery goes out once, from whichever node claims it.

The SQL is deliberately plain (no ``RETURNING``, no upsert tricks, no SQLite functions):
the same statements run on both engines. The :class:`DeliveryQueue` protocol is the seam.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agent.database import Tx
from agent.push.errors import PushError
from agent.push.message import PushMessage, Urgency
from agent.push.store import StoredSubscription, SubscriptionStore
from agent.push.subscriptions import Subscription

__all__ = [
    "Accepted",
    "DatabaseDeliveryQueue",
    "Delivery",
    "DeliveryQueue",
    "NewSend",
    "QueueFullError",
    "QueueStats",
]

# The oldest row of every endpoint: the only one that may be sent now.
_HEADS: Final = "SELECT MIN(id) FROM push_queue GROUP BY endpoint"
_COLUMNS: Final = (
    "q.id, q.endpoint, q.user_id, q.payload, q.ttl, q.urgency, q.topic, q.created_at, "
    "q.expires_at, q.attempts, s.user_id, s.p256dh, s.auth"
)


class QueueFullError(PushError):
    """The queue holds ``max_rows`` deliveries already."""


@dataclass(frozen=True, slots=True)
class NewSend:
    """One accepted send: its message for these subscriptions, and its alert (sender, id)."""

    subs: Sequence[StoredSubscription]
    message: PushMessage
    alert: tuple[str, str] | None = None


# What became of one NewSend: rows queued, None for an alert accepted before, or the queue
# was full.
Accepted = int | None | QueueFullError


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed row: a message for one subscription, and how often it was tried."""

    id: int
    user_id: str
    subscription: Subscription
    message: PushMessage
    created_at: float
    expires_at: float
    attempts: int

    def ttl_left(self, now: float) -> int:
        """Whole seconds of the message's life left at ``now`` (the TTL header to send)."""
        return max(0, int(self.expires_at - now))


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Rows waiting (claimed or not) and when the oldest was accepted."""

    depth: int
    oldest_created_at: float | None


class DeliveryQueue(Protocol):
    """What the push service needs from the queue's storage (SQLite or PostgreSQL)."""

    def accept(
        self,
        subs: Sequence[StoredSubscription],
        message: PushMessage,
        *,
        now: float,
        alert: tuple[str, str] | None = None,
        keep_seconds: float = 0,
        max_rows: int,
    ) -> int | None:
        """Queue ``message`` for ``subs``; ``None`` if ``alert`` was accepted before."""
        ...

    def accept_many(
        self, sends: Sequence[NewSend], *, now: float, keep_seconds: float = 0, max_rows: int
    ) -> list[Accepted]:
        """Several ``accept`` in order, in one transaction."""
        ...

    def claim(self, now: float, limit: int, *, lease_seconds: float) -> list[Delivery]:
        """Up to ``limit`` due heads, leased until ``now + lease_seconds``."""
        ...

    def next_due(self) -> float | None:
        """When the next head falls due (or its lease ends)."""
        ...

    def delivered(self, delivery_id: int) -> None:
        """Delete a row that reached its push service (or that is dropped)."""
        ...

    def retry_at(self, delivery_id: int, when: float) -> None:
        """Release a row's lease, one attempt more, due again at ``when``."""
        ...

    def drop_endpoint(self, endpoint: str, *, p256dh: str | None = None) -> int:
        """Remove a subscription the service reported gone, and every row for it."""
        ...

    def release_leases(self) -> None:
        """Forget every lease (on start: whoever held them is gone)."""
        ...

    def stats(self) -> QueueStats:
        """Depth and the oldest row's acceptance time."""
        ...


class DatabaseDeliveryQueue:
    """The queue in the push database, beside the subscriptions (see the module docstring)."""

    def __init__(self, store: SubscriptionStore) -> None:
        # The tables come with the store's migrations (agent.push.store.PUSH_SCHEMA).
        self._subscriptions = store
        self._store = store.database

    def accept(
        self,
        subs: Sequence[StoredSubscription],
        message: PushMessage,
        *,
        now: float,
        alert: tuple[str, str] | None = None,
        keep_seconds: float = 0,
        max_rows: int,
    ) -> int | None:
        """Queue ``message`` for every subscription in ``subs``, due now; how many rows.

        With ``alert`` (sender, alert id) the id is recorded in the same transaction, and a
        resend of an id already recorded queues nothing and returns ``None``.

        Raises:
            QueueFullError: the rows would take the queue beyond ``max_rows`` (nothing is
                recorded, so the sender's retry is not taken for a resend).
        """
        [result] = self.accept_many(
            [NewSend(subs, message, alert)], now=now, keep_seconds=keep_seconds, max_rows=max_rows
        )
        if isinstance(result, QueueFullError):
            raise result
        return result

    def accept_many(
        self, sends: Sequence[NewSend], *, now: float, keep_seconds: float = 0, max_rows: int
    ) -> list[Accepted]:
        """``accept`` for several sends, in order, in one transaction (one commit)."""
        results: list[Accepted] = []
        with self._store.transaction() as db:
            depth = _count(db)
            for send in sends:
                rows = _rows(send, now)
                if depth + len(rows) > max_rows:
                    results.append(QueueFullError(f"the push queue holds {max_rows} deliveries"))
                    continue
                if send.alert is not None and not self._subscriptions.remember_alert_in(
                    db, *send.alert, keep_seconds=keep_seconds
                ):
                    results.append(None)
                    continue
                db.executemany(
                    "INSERT INTO push_queue (endpoint, user_id, payload, ttl, urgency, topic, "
                    "created_at, expires_at, attempts, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                depth += len(rows)
                results.append(len(rows))
        return results

    def claim(self, now: float, limit: int, *, lease_seconds: float) -> list[Delivery]:
        """Up to ``limit`` due heads, leased until ``now + lease_seconds``.

        Rows whose subscription is gone, or now belongs to another user, are deleted here
        rather than sent.
        """
        sql = (
            f"SELECT {_COLUMNS} FROM push_queue q "  # noqa: S608 (fixed clauses, bound values)
            "LEFT JOIN subscriptions s ON s.endpoint = q.endpoint "
            f"WHERE q.id IN ({_HEADS}) AND q.next_attempt_at <= ? "
            "AND (q.leased_until IS NULL OR q.leased_until <= ?) "
            "ORDER BY q.next_attempt_at, q.id LIMIT ?" + self._store.dialect.for_update
        )
        with self._store.transaction() as db:
            found = db.execute(sql, (now, now, limit)).fetchall()
            orphans = [row for row in found if row[10] != row[2]]
            for row in orphans:
                db.execute(
                    "DELETE FROM push_queue WHERE endpoint = ? AND user_id = ?", (row[1], row[2])
                )
            claimed = [_delivery(row) for row in found if row[10] == row[2]]
            db.executemany(
                "UPDATE push_queue SET leased_until = ? WHERE id = ?",
                [(now + lease_seconds, d.id) for d in claimed],
            )
        return claimed

    def next_due(self) -> float | None:
        """When the next head falls due (or its lease ends); ``None`` when empty."""
        sql = f"SELECT MIN(COALESCE(leased_until, next_attempt_at)) FROM push_queue WHERE id IN ({_HEADS})"  # noqa: S608, E501 (a fixed clause)
        with self._store.read() as db:
            row = db.execute(sql).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def delivered(self, delivery_id: int) -> None:
        """Delete one row."""
        with self._store.transaction() as db:
            db.execute("DELETE FROM push_queue WHERE id = ?", (delivery_id,))

    def retry_at(self, delivery_id: int, when: float) -> None:
        """Count an attempt, release the lease, make the row due at ``when``."""
        with self._store.transaction() as db:
            db.execute(
                "UPDATE push_queue SET attempts = attempts + 1, next_attempt_at = ?, "
                "leased_until = NULL WHERE id = ?",
                (when, delivery_id),
            )

    def drop_endpoint(self, endpoint: str, *, p256dh: str | None = None) -> int:
        """Delete the subscription at ``endpoint`` (with these keys, if given) and its rows.

        Returns the number of rows dropped. A subscription renewed with new keys meanwhile
        is kept, and so are its rows.
        """
        with self._store.transaction() as db:
            sql, args = "DELETE FROM subscriptions WHERE endpoint = ?", [endpoint]
            if p256dh is not None:
                sql, args = sql + " AND p256dh = ?", [*args, p256dh]
            if db.execute(sql, args).rowcount == 0 and p256dh is not None:
                return 0
            return int(
                db.execute("DELETE FROM push_queue WHERE endpoint = ?", (endpoint,)).rowcount
            )

    def release_leases(self) -> None:
        """Forget every lease, where this hub is the database's only user."""
        if self._store.shared:
            return  # other nodes' leases are theirs; a dead node's run out on their own
        with self._store.transaction() as db:
            db.execute("UPDATE push_queue SET leased_until = NULL WHERE leased_until IS NOT NULL")

    def stats(self) -> QueueStats:
        """Depth and the oldest row's acceptance time."""
        with self._store.read() as db:
            row = db.execute("SELECT COUNT(*), MIN(created_at) FROM push_queue").fetchone()
        return QueueStats(int(row[0]), None if row[1] is None else float(row[1]))

    def endpoints(self) -> list[str]:
        """The endpoint of every row, oldest first (for tests and tools)."""
        with self._store.read() as db:
            rows = db.execute("SELECT endpoint FROM push_queue ORDER BY id").fetchall()
        return [str(row[0]) for row in rows]


def _rows(send: NewSend, now: float) -> list[tuple[Any, ...]]:
    message = send.message
    payload = json.dumps(dict(message.payload), separators=(",", ":"), ensure_ascii=False)
    return [
        (
            s.subscription.endpoint,
            s.user_id,
            payload,
            message.ttl,
            message.urgency.value,
            message.topic,
            now,
            now + message.ttl,
            0,
            now,
        )
        for s in send.subs
    ]


def _count(db: Tx) -> int:
    return int(db.execute("SELECT COUNT(*) FROM push_queue").fetchone()[0])


def _delivery(row: Sequence[Any]) -> Delivery:
    message = PushMessage(json.loads(row[3]), ttl=row[4], urgency=Urgency(row[5]), topic=row[6])
    return Delivery(
        id=row[0],
        user_id=row[2],
        subscription=Subscription(row[1], row[11], row[12]),
        message=message,
        created_at=row[7],
        expires_at=row[8],
        attempts=row[9],
    )
