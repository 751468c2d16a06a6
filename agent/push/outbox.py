"""The agent's durable alert outbox: written before sending, removed once the hub took it.

Every alert gets an id and is committed to SQLite in the state directory (``outbox.db``,
mode 0600, WAL with ``synchronous=FULL``: the commit fsyncs the log, so a committed alert
survives a power cut, not only a crashed process) before ``add`` returns; the control
socket answers "fired" only after that. One task sends the rows oldest first through the
injected ``deliver`` (the hub's ``/api/push/send`` with the agent's token) and deletes a
row only when ``deliver`` returned, i.e. the hub answered 2xx. Failures are retried with capped
exponential backoff and full jitter (:func:`agent.retry.backoff`) for as long as it takes:
hub outages and agent restarts lose nothing, because rows left on disk are sent again by
the next ``Outbox`` on the same file.

Exactly once, as far as the phone can tell: a row is resent with the same id when the
hub's answer was lost, and the hub acknowledges an id it has already accepted without
pushing it again.

An alert may be added *held* (``hold_seconds``): committed at once, but sent only when
``release`` fills in what it was waiting for (the link of a snapshot being taken), or when
the hold runs out. Rows are sent in order, so a held row keeps later ones waiting too.
Holds do not survive a restart: rows a previous run left held are sent as they are.

With ``deliver_batch`` (the hub's ``/api/push/send-batch``) the rows waiting are sent up
to 50 at a time, in order, each getting its own answer: an outbox that filled up during an
outage empties in a few requests and commits. A hub without that route (404) is sent to
one alert at a time.

``retry_now`` cuts a back-off short (the daemon calls it when the hub link comes back, so
alerts queued through an outage leave at once rather than at the end of a long wait).

Bounded: beyond ``max_rows`` the oldest rows are dropped, counted and logged. An alert
older than its TTL is dropped as expired (RFC 8030 section 5.2: nobody wants a doorbell
alert from yesterday); a younger one is sent with the TTL it has left. An alert the hub
refuses for good (400, 403, ...: :func:`agent.push.policy.hub_rejected_for_good`) is
dropped and counted as rejected, so one bad alert cannot block the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self

from agent import retry
from agent.errors import RealtimeError
from agent.exposition import Exposition
from agent.push.errors import HubRequestError, PushError
from agent.push.policy import hub_rejected_for_good
from agent.push.settings import OutboxSettings
from agent.storage import PrivateDatabase

__all__ = [
    "OUTBOX_FILE",
    "AlertLike",
    "Deliver",
    "DeliverBatch",
    "HeldAlert",
    "Outbox",
    "OutboxState",
    "OutboxStats",
    "alert_request",
    "is_final_rejection",
]

log = logging.getLogger(__name__)

OUTBOX_FILE: Final = "outbox.db"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    request TEXT NOT NULL,
    held_until REAL
)
"""
# Fields of an alert that the hub's send request takes, by the alert's own field name.
_REQUEST_FIELDS: Final = {
    "title": "title",
    "body": "body",
    "users": "users",
    "roles": "roles",
    "urgency": "urgency",
    "ttl_seconds": "ttl",
    "topic": "topic",
    "device": "device",
    "event": "event",
    "time": "time",
    "snapshot": "snapshot",
    "call": "call",
}

Deliver = Callable[[dict[str, Any]], Awaitable[object]]
# Several requests in one; one result each ({"status", "code"?, "message"}), in order.
DeliverBatch = Callable[[list[dict[str, Any]]], Awaitable[Sequence[Mapping[str, Any]]]]
# Alerts per batch (the hub takes up to 100).
_BATCH: Final = 50
# Answers that mean the hub has no batch route: send one at a time.
_NO_BATCH_STATUSES: Final = frozenset({404, 405})


class AlertLike(Protocol):
    """Anything that can say what it is as JSON (``agent.events.Alert`` does)."""

    def as_json(self) -> dict[str, Any]:
        """The alert's fields."""
        ...


class OutboxState(enum.Enum):
    """Where the sending task stands."""

    STOPPED = "stopped"
    IDLE = "idle"  # nothing to send
    SENDING = "sending"
    BACKING_OFF = "backing_off"  # the last delivery failed; waiting to retry


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What the outbox holds and has done since it was made."""

    state: OutboxState
    depth: int
    delivered: int
    dropped: int
    expired: int
    rejected: int
    retries: int

    def status_text(self) -> str:
        """A short phrase for systemd's STATUS= line."""
        text = f"{self.depth} alert(s) pending"
        lost = {"dropped": self.dropped, "expired": self.expired, "rejected": self.rejected}
        return text + "".join(f", {n} {what}" for what, n in lost.items() if n)

    def render_metrics(self, prefix: str = "edge_agent_outbox_") -> str:
        """Prometheus text exposition of these figures."""
        out = Exposition(prefix)
        out.add("depth", "gauge", "Alerts on disk not yet accepted by the hub.", self.depth)
        for name, help_text in (
            ("delivered", "Alerts the hub accepted."),
            ("dropped", "Alerts dropped because the outbox was full."),
            ("expired", "Alerts dropped because they outlived their TTL."),
            ("rejected", "Alerts the hub refused for good."),
            ("retries", "Deliveries to the hub retried."),
        ):
            out.add(f"{name}_total", "counter", help_text, getattr(self, name))
        return out.render()


def alert_request(alert: AlertLike | Mapping[str, Any], alert_id: str) -> dict[str, Any]:
    """The ``/api/push/send`` body for ``alert`` (unset fields left out)."""
    fields = dict(alert) if isinstance(alert, Mapping) else alert.as_json()
    request: dict[str, Any] = {"id": alert_id}
    for name, key in _REQUEST_FIELDS.items():
        value = fields.get(name, fields.get(key))
        if value is not None and value != [] and value is not False:
            request[key] = list(value) if isinstance(value, tuple) else value
    return request


def is_final_rejection(exc: BaseException) -> bool:
    """Whether ``exc`` says the hub will never accept this alert (drop it)."""
    return isinstance(exc, HubRequestError) and hub_rejected_for_good(exc.status)


class HeldAlert:
    """An alert committed held: ``release`` lets it go, with changes to its fields."""

    def __init__(self, outbox: Outbox, alert_id: str) -> None:
        self.outbox = outbox
        self.alert_id = alert_id

    async def release(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (alert field names, e.g. ``snapshot``) and let it be sent."""
        await self.outbox.release(self.alert_id, changes)


class Outbox:
    """A durable, bounded queue of alerts for the hub (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        deliver: Deliver,
        deliver_batch: DeliverBatch | None = None,
        settings: OutboxSettings | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.path = path
        self.settings = settings or OutboxSettings()
        self._deliver = deliver
        self._deliver_batch = deliver_batch
        self._clock = clock
        self._jitter = jitter
        self._db: _OutboxDb | None = None
        self._open_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._empty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._state = OutboxState.STOPPED
        self._depth = 0
        self._counts = {"delivered": 0, "dropped": 0, "expired": 0, "rejected": 0, "retries": 0}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def depth(self) -> int:
        """Alerts on disk not yet accepted by the hub."""
        return self._depth

    @property
    def state(self) -> OutboxState:
        """Where the sending task stands."""
        return self._state

    def stats(self) -> OutboxStats:
        """Depth and counters, for STATUS= and metrics."""
        return OutboxStats(self._state, self._depth, **self._counts)

    async def start(self) -> None:
        """Open the file and start sending what it holds (rows left by a previous run too)."""
        await self._open()
        if self._task is None:
            self._set_state(OutboxState.IDLE)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="push-outbox")

    async def add(
        self, alert: AlertLike | Mapping[str, Any], *, hold_seconds: float | None = None
    ) -> str:
        """Commit ``alert`` to disk (then it will be sent); its id.

        With ``hold_seconds`` it waits for :meth:`release` that long at most.
        """
        db = await self._open()
        alert_id = str(uuid.uuid4())
        request = alert_request(alert, alert_id)
        now = self._clock()
        held_until = None if hold_seconds is None else now + hold_seconds
        depth, dropped = await asyncio.to_thread(
            db.insert, alert_id, now, request, self.settings.max_rows, held_until
        )
        self._set_depth(depth)
        if dropped:
            self._counts["dropped"] += len(dropped)
            log.warning(
                "alert outbox full (%d): dropped the oldest %d alert(s): %s",
                self.settings.max_rows,
                len(dropped),
                ", ".join(dropped),
            )
        self._wake.set()
        return alert_id

    async def release(self, alert_id: str, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` to a held alert's request and let it be sent."""
        db = await self._open()
        await asyncio.to_thread(db.release, alert_id, alert_request(changes, alert_id))
        self._wake.set()

    async def push(
        self, alert: AlertLike | Mapping[str, Any], *, hold_seconds: float | None = None
    ) -> HeldAlert | None:
        """``add`` as the events engine's push handler (``ActionHandlers(push=...)``)."""
        alert_id = await self.add(alert, hold_seconds=hold_seconds)
        return None if hold_seconds is None else HeldAlert(self, alert_id)

    def retry_now(self) -> None:
        """Cut a back-off short: the hub is reachable again."""
        self._kick.set()

    async def wait_empty(self) -> None:
        """Wait until every alert so far has been accepted by the hub (or dropped)."""
        await self._empty.wait()

    async def aclose(self) -> None:
        """Stop sending and close the file; pending alerts stay on disk for the next start."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(OutboxState.STOPPED)
        db, self._db = self._db, None
        if db is not None:
            await asyncio.to_thread(db.close)

    # -- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delays: Iterator[float] | None = None
        while True:
            rows = await self._next_rows()
            self._set_state(OutboxState.SENDING)
            self._kick.clear()  # a kick from now on cuts the back-off after this attempt
            failure = await self._send_rows(rows)
            if failure is None:
                delays = None
                continue
            delays = delays or self._delays()
            if await self._back_off(*failure, next(delays)):
                delays = None  # the hub is back: start the backoff over

    async def _next_rows(self) -> list[_Row]:
        """The rows ready to go from the head on, in order (one without batches)."""
        db = await self._open()
        limit = _BATCH if self._deliver_batch is not None else 1
        while True:
            self._wake.clear()  # before reading: an add() from now on wakes the wait below
            rows = await asyncio.to_thread(db.head, limit)
            now, ready = self._clock(), []
            for row in rows:
                if row.held_until is not None and row.held_until > now:
                    break  # held, and the rows behind it wait with it
                ready.append(row)
            if ready:
                return ready
            wait = rows[0].held_until - now if rows and rows[0].held_until else None
            if not rows:
                self._set_state(OutboxState.IDLE)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _send_rows(self, rows: list[_Row]) -> tuple[_Row, Exception] | None:
        """Send ``rows``; the first one that failed (and why), to retry from there."""
        live = []
        for row in rows:
            if self._request(row) is None:
                await self._remove_many([], [], expired=[(row, "older than its TTL")])
            else:
                live.append(row)
        if len(live) > 1 and self._deliver_batch is not None:
            return await self._send_batch(live, self._deliver_batch)
        return await self._send_one(live[0]) if live else None

    async def _send_one(self, row: _Row) -> tuple[_Row, Exception] | None:
        request = self._request(row)
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                await self._deliver(request or row.request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not is_final_rejection(exc):
                return row, exc
            await self._remove_many([], [(row, f"refused by the hub: {_describe(exc)}")])
            return None
        await self._remove_many([row], [])
        return None

    async def _send_batch(
        self, rows: list[_Row], deliver_batch: DeliverBatch
    ) -> tuple[_Row, Exception] | None:
        requests = [self._request(row) or row.request for row in rows]
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                results = await deliver_batch(requests)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, HubRequestError) and exc.status in _NO_BATCH_STATUSES:
                log.info("the hub takes no batches (%s); alerts go one at a time", exc.status)
                self._deliver_batch = None
                return None
            return rows[0], exc
        done, refused = [], []
        for row, result in zip(rows, results, strict=False):
            status, error = _batch_error(result)
            if error is None:
                done.append(row)
            elif hub_rejected_for_good(status):
                refused.append((row, f"refused by the hub: {_describe(error)}"))
            else:
                await self._remove_many(done, refused)
                return row, error
        await self._remove_many(done, refused)
        return None

    def _request(self, row: _Row) -> dict[str, Any] | None:
        """The row's request with the TTL it has left; ``None`` once that has run out."""
        ttl_left = row.ttl_left(self._clock())
        if ttl_left is not None and ttl_left < 0:
            return None
        return row.request if ttl_left is None else {**row.request, "ttl": ttl_left}

    async def _back_off(self, row: _Row, exc: Exception, delay: float) -> bool:
        """Wait ``delay`` after a failed delivery; whether ``retry_now`` cut it short."""
        self._counts["retries"] += 1
        self._set_state(OutboxState.BACKING_OFF)
        log.info(
            "alert %s not accepted by the hub (%s); %d pending, retrying in %.1f s",
            row.alert_id,
            _describe(exc),
            self._depth,
            delay,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._kick.wait()
        return self._kick.is_set()

    async def _remove_many(
        self,
        done: list[_Row],
        refused: list[tuple[_Row, str]],
        *,
        expired: Sequence[tuple[_Row, str]] = (),
    ) -> None:
        """Delete delivered, refused and expired rows in one commit; count and log."""
        gone = [r.alert_id for r in done] + [r.alert_id for r, _ in [*refused, *expired]]
        if not gone:
            return
        db = await self._open()
        depth = await asyncio.to_thread(db.delete, gone)
        if depth == 0:
            self._set_state(OutboxState.IDLE)  # before wait_empty() wakes anyone
        self._set_depth(depth)
        self._counts["delivered"] += len(done)
        for counter, dropped in (("rejected", refused), ("expired", expired)):
            for row, why in dropped:
                self._counts[counter] += 1
                log.warning("alert %s dropped: %s", row.alert_id, why)

    def _delays(self) -> Iterator[float]:
        s = self.settings
        return retry.backoff(s.retry_initial_seconds, 2.0, s.retry_cap_seconds, self._jitter)

    # -- state -----------------------------------------------------------------------------

    async def _open(self) -> _OutboxDb:
        if self._closed:
            raise PushError(f"the alert outbox {self.path} is closed")
        async with self._open_lock:
            if self._db is None:
                self._db = await asyncio.to_thread(_OutboxDb, self.path)
                self._set_depth(await asyncio.to_thread(self._db.count))
        return self._db

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if depth == 0:
            self._empty.set()
        else:
            self._empty.clear()

    def _set_state(self, state: OutboxState) -> None:
        if state is not self._state:
            log.debug("alert outbox: %s -> %s", self._state.value, state.value)
            self._state = state


@dataclass(frozen=True, slots=True)
class _Row:
    alert_id: str
    created_at: float
    request: dict[str, Any]
    held_until: float | None = None

    def ttl_left(self, now: float) -> int | None:
        ttl = self.request.get("ttl")
        if not isinstance(ttl, int):
            return None  # the hub's default applies
        return ttl - int(max(0.0, now - self.created_at))


class _OutboxDb:
    """The outbox's SQLite file; synchronous, serialised by a lock (called in threads)."""

    def __init__(self, path: Path) -> None:
        # FULL: a commit is on disk before add() returns, even across a power cut.
        self._store = PrivateDatabase(path, synchronous="FULL")
        self._lock, self._db = self._store.lock, self._store.connection
        self._transaction = self._store.transaction
        with self._transaction():
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            if "held_until" not in columns:  # a file from before holds existed
                self._db.execute("ALTER TABLE outbox ADD COLUMN held_until REAL")
            # Holds are promises of this run: what a previous run left held goes as it is.
            self._db.execute("UPDATE outbox SET held_until = NULL WHERE held_until IS NOT NULL")

    def insert(
        self,
        alert_id: str,
        created_at: float,
        request: dict[str, Any],
        max_rows: int,
        held_until: float | None = None,
    ) -> tuple[int, list[str]]:
        """Add a row, dropping the oldest beyond ``max_rows``; (depth, dropped ids)."""
        text = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
        with self._transaction():
            self._db.execute(
                "INSERT INTO outbox (alert_id, created_at, request, held_until) "
                "VALUES (?, ?, ?, ?)",
                (alert_id, created_at, text, held_until),
            )
            dropped = [
                row[0]
                for row in self._db.execute(
                    "SELECT alert_id FROM outbox ORDER BY seq DESC LIMIT -1 OFFSET ?", (max_rows,)
                )
            ]
            self._db.executemany("DELETE FROM outbox WHERE alert_id = ?", [(i,) for i in dropped])
            return self._count(), list(reversed(dropped))

    def release(self, alert_id: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into a row's request and clear its hold."""
        with self._transaction():
            row = self._db.execute(
                "SELECT request FROM outbox WHERE alert_id = ?", (alert_id,)
            ).fetchone()
            if row is None:
                return  # dropped meanwhile (the outbox was full)
            merged = json.loads(row[0]) | changes
            self._db.execute(
                "UPDATE outbox SET request = ?, held_until = NULL WHERE alert_id = ?",
                (json.dumps(merged, separators=(",", ":"), ensure_ascii=False), alert_id),
            )

    def head(self, limit: int = 1) -> list[_Row]:
        """The oldest ``limit`` rows, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT alert_id, created_at, request, held_until FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [_Row(row[0], row[1], json.loads(row[2]), row[3]) for row in rows]

    def delete(self, alert_ids: list[str]) -> int:
        """Remove rows; the depth left."""
        with self._transaction():
            self._db.executemany("DELETE FROM outbox WHERE alert_id = ?", [(i,) for i in alert_ids])
            return self._count()

    def count(self) -> int:
        """Rows on disk."""
        with self._lock:
            return self._count()

    def close(self) -> None:
        """Close the file."""
        self._store.close()

    def _count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(row[0])


def _batch_error(result: Mapping[str, Any]) -> tuple[int | None, HubRequestError | None]:
    """A batch result's status, and the error it stands for (``None``: accepted)."""
    status = result.get("status")
    if isinstance(status, int) and 200 <= status < 300:
        return status, None
    code, message = result.get("code"), result.get("message")
    return (status if isinstance(status, int) else None), HubRequestError(
        code if isinstance(code, str) else "ERROR",
        message if isinstance(message, str) else f"the hub answered {status}",
        status=status if isinstance(status, int) else None,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RealtimeError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return type(exc).__name__
