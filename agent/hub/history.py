"""The hub's event history: what devices posted as events, per group, bounded, on disk.

An *event post* is a group post from a device account whose content is an event as the
agent's events engine makes it (``agent.events.engine.Event.as_json``): a JSON object
with ``"type": "event"``, a ``name``, a ``trigger`` and the ``time`` it fired (and
``at``, ``details``, ``readings``, ``snapshot``, ``call``, the post queue's ``id``).
:func:`event_post` reads one into an :class:`EventRecord`, or says it is none; it is
pure and never raises. The device is the account that sent the post, not what the
content says.

One event is one row, whatever the number of groups it was posted to (an agent posts
each event to each of its groups) and however often it was sent (a post whose echo was
lost is sent again): it is known by (device, name, the device's time). Its groups are
rows of their own, so that each group keeps its own bounds: the newest ``max_events``
for at most ``max_age`` (``[hub.events]``); an event no group keeps is removed.

Events are ordered by when they happened as the device says, unless its clock is not
plausible (a board without a real-time clock before NTP has run), then by when the hub
got them (:func:`event_time`).

Storage is the small interface :class:`EventStore`; :class:`DatabaseEventStore` keeps it
in an :class:`agent.database.Database`: ``events.db`` in the state directory (mode 0600),
or the PostgreSQL database the hub nodes share, so that every node lists every device's
events. Its SQL is portable (``INSERT ... ON CONFLICT``, keyset paging, no SQLite-only
functions) and its tables come from the numbered migrations of :data:`EVENTS_SCHEMA`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeGuard

from agent.database import Database, Migration, Schema, SqliteDatabase, Tx, migrate

__all__ = [
    "EVENTS_FILE",
    "EVENTS_SCHEMA",
    "DatabaseEventStore",
    "DevicePresence",
    "EventPage",
    "EventQuery",
    "EventRecord",
    "EventStore",
    "Retention",
    "cursor_of",
    "event_post",
    "event_time",
    "parse_cursor",
]

EVENTS_FILE: Final = "events.db"
MAX_PAGE: Final = 200
SNAPSHOT_LINK_RE: Final = re.compile(r"^/api/snapshots/[0-9a-f]{32}$")
_MAX_NAME: Final = 128
_MAX_TRIGGER: Final = 32
_MAX_AT: Final = 64
_MAX_POST_ID: Final = 128
# A device's clock is believed when it is at most this far behind or ahead of the hub's.
_CLOCK_BEHIND: Final = 7 * 86400.0  # events wait in the agent's outbox through outages
_CLOCK_AHEAD: Final = 300.0

EVENTS_SCHEMA: Final = Schema(
    "events",
    (
        Migration(
            1,
            "event history and device presence",
            (
                """CREATE TABLE IF NOT EXISTS events (
                    id {serial},
                    device_id TEXT NOT NULL,
                    device TEXT NOT NULL,
                    name TEXT NOT NULL,
                    trigger_kind TEXT NOT NULL,
                    device_time {real} NOT NULL,
                    happened_at {real} NOT NULL,
                    received_at {real} NOT NULL,
                    snapshot TEXT,
                    body TEXT NOT NULL
                )""",
                "CREATE UNIQUE INDEX IF NOT EXISTS events_once "
                "ON events (device_id, name, device_time)",
                "CREATE INDEX IF NOT EXISTS events_by_time ON events (happened_at, id)",
                "CREATE INDEX IF NOT EXISTS events_by_device ON events (device, happened_at)",
                """CREATE TABLE IF NOT EXISTS event_groups (
                    event_id BIGINT NOT NULL,
                    group_name TEXT NOT NULL,
                    happened_at {real} NOT NULL,
                    PRIMARY KEY (event_id, group_name)
                )""",
                "CREATE INDEX IF NOT EXISTS event_groups_by_group "
                "ON event_groups (group_name, happened_at, event_id)",
                """CREATE TABLE IF NOT EXISTS device_presence (
                    device_id TEXT PRIMARY KEY,
                    device TEXT NOT NULL,
                    online INTEGER NOT NULL,
                    since {real} NOT NULL
                )""",
            ),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event a device posted; ``id`` once stored."""

    device_id: str
    device: str
    name: str
    trigger: str
    device_time: float  # what the device said (with ``name``, what makes the event one)
    time: float  # when it happened, for ordering and bounds (see event_time)
    received: float
    groups: tuple[str, ...] = ()
    post_id: str | None = None
    snapshot: str | None = None
    call: bool = False
    at: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    readings: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The event as ``GET /api/events`` lists it."""
        return {
            "id": self.id,
            "device": self.device,
            "device_id": self.device_id,
            "name": self.name,
            "trigger": self.trigger,
            "time": self.time,
            "at": self.at,
            "received": self.received,
            "groups": list(self.groups),
            "snapshot": self.snapshot,
            "call": self.call,
            "details": dict(self.details),
            "readings": dict(self.readings),
        }


@dataclass(frozen=True, slots=True)
class DevicePresence:
    """Whether a device is connected, and since when."""

    device_id: str
    device: str
    online: bool
    since: float


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events to list, newest first. ``groups=None`` is every group (admins)."""

    groups: tuple[str, ...] | None
    device: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, int] | None = None  # a cursor: only events older than this one
    with_snapshot: bool = False
    limit: int = 50


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of events and the cursor of the next one (``None`` at the end)."""

    items: list[EventRecord]
    next_cursor: str | None


class Retention(Protocol):
    """The bounds of one group's history (``agent.config.EventRetention``)."""

    @property
    def max_events(self) -> int:
        """Newest events kept."""

    @property
    def max_age(self) -> int:
        """Seconds an event is kept."""


class EventStore(Protocol):
    """Where the hub keeps event history and device presence (synchronous: call it from a
    thread)."""

    def add(self, records: Sequence[EventRecord]) -> int:
        """Store events (an event already stored gains the groups it lacked); how many
        were new. Each group they touched is cut back to its ``max_events``."""

    def page(self, query: EventQuery) -> EventPage:
        """A page of events, newest first."""

    def groups(self) -> list[str]:
        """Every group that has events."""

    def prune(self, now: float) -> int:
        """Drop what is past every group's bounds; how many events went."""

    def save_presence(self, presences: Sequence[DevicePresence]) -> None:
        """Record devices coming and going (the last word per device wins)."""

    def presences(self) -> list[DevicePresence]:
        """Every device's last known presence."""

    def close(self) -> None:
        """Release the storage."""


def event_time(device_time: float, received: float) -> float:
    """When an event happened: the device's time if plausible, else the hub's."""
    if received - _CLOCK_BEHIND <= device_time <= received + _CLOCK_AHEAD:
        return device_time
    return received


def event_post(
    content: object, *, device_id: str, device: str, group: str, received: float
) -> EventRecord | None:
    """The event a group post carries, or ``None`` if it is not an event post."""
    if not isinstance(content, dict) or content.get("type") != "event":
        return None
    name, trigger, when = content.get("name"), content.get("trigger"), content.get("time")
    if not (_short_text(name, _MAX_NAME) and _short_text(trigger, _MAX_TRIGGER)):
        return None
    if not isinstance(when, int | float) or isinstance(when, bool) or not math.isfinite(when):
        return None
    snapshot = content.get("snapshot")
    at, post_id = content.get("at"), content.get("id")
    return EventRecord(
        device_id=device_id,
        device=device,
        name=name,
        trigger=trigger,
        device_time=float(when),
        time=event_time(float(when), received),
        received=received,
        groups=(group,),
        post_id=post_id if _short_text(post_id, _MAX_POST_ID) else None,
        # Only a link to this hub's snapshots: the viewer fetches it with its token.
        snapshot=snapshot
        if isinstance(snapshot, str) and SNAPSHOT_LINK_RE.match(snapshot)
        else None,
        call=content.get("call") is True,
        at=at if _short_text(at, _MAX_AT) else "",
        details=_object(content.get("details")),
        readings=_object(content.get("readings")),
    )


def cursor_of(record: EventRecord) -> str:
    """The cursor that continues after ``record``."""
    return f"{record.time!r}:{record.id}"


def parse_cursor(text: str) -> tuple[float, int]:
    """A cursor's (time, id); ``ValueError`` naming the problem."""
    when, sep, ident = text.partition(":")
    try:
        parsed = (float(when), int(ident))
    except ValueError:
        parsed = None
    if not sep or parsed is None or not math.isfinite(parsed[0]):
        raise ValueError(f"{text[:40]!r} is not a cursor from this listing (its startKey)")
    return parsed


class DatabaseEventStore:
    """:class:`EventStore` in a :class:`~agent.database.Database` (a path: an SQLite file)."""

    def __init__(self, database: Database | Path, *, retention: Callable[[str], Retention]) -> None:
        self._db = SqliteDatabase(database) if isinstance(database, Path) else database
        self._owns_database = isinstance(database, Path)  # else the caller closes it
        self._retention = retention
        migrate(self._db, EVENTS_SCHEMA, now=time.time())

    def add(self, records: Sequence[EventRecord]) -> int:
        """See :meth:`EventStore.add`."""
        added, touched = 0, set[str]()
        with self._db.transaction() as sql:
            for record in records:
                added += _insert(sql, record)
                touched.update(record.groups)
            for group in sorted(touched):
                _cut_to_count(sql, group, self._retention(group).max_events)
            _drop_orphans(sql)
        return added

    def page(self, query: EventQuery) -> EventPage:
        """See :meth:`EventStore.page`."""
        if query.groups is not None and not query.groups:
            return EventPage([], None)
        where, params = _conditions(query)
        limit = max(1, min(query.limit, MAX_PAGE))
        statement = (
            "SELECT id, device_id, device, name, trigger_kind, device_time, happened_at,"  # noqa: S608 (fixed clauses, bound values)
            f" received_at, snapshot, body FROM events e WHERE {where}"
            " ORDER BY happened_at DESC, id DESC LIMIT ?"
        )
        with self._db.read() as sql:
            rows = sql.execute(statement, (*params, limit + 1)).fetchall()
            records = [_record(row) for row in rows[:limit]]
            memberships = _groups_of(sql, [r.id for r in records if r.id])
        shown = set(query.groups) if query.groups is not None else None
        records = [_with_groups(r, memberships.get(r.id or 0, ()), shown) for r in records]
        more = len(rows) > limit
        return EventPage(records, cursor_of(records[-1]) if more and records else None)

    def groups(self) -> list[str]:
        """See :meth:`EventStore.groups`."""
        with self._db.read() as sql:
            rows = sql.execute(
                "SELECT DISTINCT group_name FROM event_groups ORDER BY group_name"
            ).fetchall()
        return [row[0] for row in rows]

    def prune(self, now: float) -> int:
        """See :meth:`EventStore.prune`."""
        with self._db.transaction() as sql:
            before = sql.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            groups = [
                row[0]
                for row in sql.execute("SELECT DISTINCT group_name FROM event_groups").fetchall()
            ]
            for group in groups:
                bounds = self._retention(group)
                sql.execute(
                    "DELETE FROM event_groups WHERE group_name = ? AND happened_at < ?",
                    (group, now - bounds.max_age),
                )
                _cut_to_count(sql, group, bounds.max_events)
            _drop_orphans(sql)
            after = sql.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return int(before - after)

    def save_presence(self, presences: Sequence[DevicePresence]) -> None:
        """See :meth:`EventStore.save_presence`."""
        with self._db.transaction() as sql:
            for p in presences:
                sql.execute(
                    "INSERT INTO device_presence (device_id, device, online, since)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET"
                    " device = excluded.device, online = excluded.online, since = excluded.since",
                    (p.device_id, p.device, int(p.online), p.since),
                )

    def presences(self) -> list[DevicePresence]:
        """See :meth:`EventStore.presences`."""
        with self._db.read() as sql:
            rows = sql.execute(
                "SELECT device_id, device, online, since FROM device_presence"
            ).fetchall()
        return [DevicePresence(row[0], row[1], bool(row[2]), float(row[3])) for row in rows]

    def close(self) -> None:
        """Close the database, if this store opened it."""
        if self._owns_database:
            self._db.close()


# -- SQL helpers (each runs inside the caller's transaction or lock) ------------------------


def _insert(sql: Tx, record: EventRecord) -> int:
    body = json.dumps(
        {
            "at": record.at,
            "call": record.call,
            "details": dict(record.details),
            "readings": dict(record.readings),
        }
    )
    inserted = sql.execute(
        "INSERT INTO events (device_id, device, name, trigger_kind, device_time, happened_at,"
        " received_at, snapshot, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (device_id, name, device_time) DO NOTHING",
        (
            record.device_id,
            record.device,
            record.name,
            record.trigger,
            record.device_time,
            record.time,
            record.received,
            record.snapshot,
            body,
        ),
    ).rowcount
    event_id, happened = sql.execute(
        "SELECT id, happened_at FROM events WHERE device_id = ? AND name = ? AND device_time = ?",
        (record.device_id, record.name, record.device_time),
    ).fetchone()
    if not inserted and record.snapshot is not None:
        # A copy of a post sent before its picture was linked: the link is news.
        sql.execute(
            "UPDATE events SET snapshot = ? WHERE id = ? AND snapshot IS NULL",
            (record.snapshot, event_id),
        )
    for group in record.groups:
        sql.execute(
            "INSERT INTO event_groups (event_id, group_name, happened_at) VALUES (?, ?, ?)"
            " ON CONFLICT (event_id, group_name) DO NOTHING",
            (event_id, group, happened),
        )
    return 1 if inserted else 0


def _cut_to_count(sql: Tx, group: str, keep: int) -> None:
    """Keep the newest ``keep`` events of ``group`` (keyset: no engine-specific LIMIT -1)."""
    oldest_kept = sql.execute(
        "SELECT happened_at, event_id FROM event_groups WHERE group_name = ?"
        " ORDER BY happened_at DESC, event_id DESC LIMIT 1 OFFSET ?",
        (group, keep),
    ).fetchone()
    if oldest_kept is not None:
        when, event_id = oldest_kept
        sql.execute(
            "DELETE FROM event_groups WHERE group_name = ?"
            " AND (happened_at < ? OR (happened_at = ? AND event_id <= ?))",
            (group, when, when, event_id),
        )


def _drop_orphans(sql: Tx) -> None:
    sql.execute(
        "DELETE FROM events WHERE NOT EXISTS"
        " (SELECT 1 FROM event_groups g WHERE g.event_id = events.id)"
    )


def _conditions(query: EventQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    if query.groups is not None:
        marks = ", ".join("?" for _ in query.groups)
        clauses.append(
            "EXISTS (SELECT 1 FROM event_groups g WHERE g.event_id = e.id"  # noqa: S608 (marks)
            f" AND g.group_name IN ({marks}))"
        )
        params.extend(query.groups)
    for clause, value in (
        ("device = ?", query.device),
        ("happened_at >= ?", query.since),
        ("happened_at <= ?", query.until),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if query.with_snapshot:
        clauses.append("snapshot IS NOT NULL")
    if query.before is not None:
        when, event_id = query.before
        clauses.append("(happened_at < ? OR (happened_at = ? AND id < ?))")
        params.extend((when, when, event_id))
    return " AND ".join(clauses), params


def _groups_of(connection: Tx, ids: list[int]) -> dict[int, tuple[str, ...]]:
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = connection.execute(
        f"SELECT event_id, group_name FROM event_groups WHERE event_id IN ({marks})"  # noqa: S608 (marks)
        " ORDER BY group_name",
        ids,
    ).fetchall()
    found: dict[int, tuple[str, ...]] = {}
    for event_id, group in rows:
        found[event_id] = (*found.get(event_id, ()), group)
    return found


def _record(row: Sequence[Any]) -> EventRecord:
    body = _object(_json(row[9]))
    return EventRecord(
        device_id=row[1],
        device=row[2],
        name=row[3],
        trigger=row[4],
        device_time=float(row[5]),
        time=float(row[6]),
        received=float(row[7]),
        snapshot=row[8],
        at=str(body.get("at") or ""),
        call=body.get("call") is True,
        details=_object(body.get("details")),
        readings=_object(body.get("readings")),
        id=int(row[0]),
    )


def _with_groups(
    record: EventRecord, groups: tuple[str, ...], shown: set[str] | None
) -> EventRecord:
    return dataclasses.replace(
        record, groups=tuple(g for g in groups if shown is None or g in shown)
    )


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _object(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _snapshot_link(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and SNAPSHOT_LINK_RE.match(value) is not None


def _short_text(value: object, limit: int) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= limit
