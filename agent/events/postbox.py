"""Event posts to groups, kept on disk and in order through hub link outages.

Every ``post`` action of an event is committed to the agent's outbox file (``outbox.db``,
table ``posts``, WAL with ``synchronous=FULL`` like the alerts beside it) and then sent to
its group over the realtime connection while the link is open. A post counts as delivered
when the hub echoes it back (the hub gives a group's messages to every member, the sender
included), and only then is its row deleted. When the link goes down, what was sent but
not echoed is sent again, in order, once the link is back: a hub that dies with posts in
its buffers loses none of them. (A post the hub fanned out but whose echo was lost with
the link is sent twice; its ``id`` tells a viewer it has seen it.)

A post that is not echoed within ``ack_seconds`` on an open link is sent again from there
on; after three tries it is dropped with a log line (the hub refuses it, e.g. a group this
device may not post to) so it cannot hold up the others.

Bounded: beyond ``max_posts`` the oldest rows are dropped and counted; the first drop of an
outage is logged, and how many were lost once the queue has drained again.

Paced: at most ``rate`` posts a second after a burst of ``burst``, below the hub's default
per-connection frame limit, so a queue flushed after an outage is not dropped by the hub's
rate limit (which would reorder it).

A post may be added *held* (``hold_seconds``), like an alert in the outbox: committed at
once, sent once ``release`` fills in what it waited for (a snapshot's link).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.errors import EdgeAgentError
from agent.events.errors import LinkDownError
from agent.exposition import Exposition
from agent.storage import PrivateDatabase

__all__ = ["HeldPost", "PostBox", "PostBoxStats", "SendPost"]

log = logging.getLogger(__name__)

SendPost = Callable[[str, dict[str, Any]], Awaitable[object]]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS posts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    post_id TEXT NOT NULL UNIQUE,
    grp TEXT NOT NULL,
    created_at REAL NOT NULL,
    content TEXT NOT NULL,
    held_until REAL
)
"""
_MAX_TRIES: Final = 3
_WINDOW: Final = 32  # posts sent and not yet echoed, at most


@dataclass(frozen=True, slots=True)
class PostBoxStats:
    """What the post queue holds and has done since it was made."""

    depth: int
    delivered: int
    dropped: int
    rejected: int

    def render_metrics(self, prefix: str = "edge_agent_posts_") -> str:
        """Prometheus text exposition of these figures."""
        out = Exposition(prefix)
        out.add("queued", "gauge", "Event posts on disk not yet echoed by the hub.", self.depth)
        out.add("delivered_total", "counter", "Event posts the hub echoed.", self.delivered)
        out.add(
            "dropped_total",
            "counter",
            "Event posts dropped, oldest first, because the queue was full.",
            self.dropped,
        )
        out.add("rejected_total", "counter", "Event posts the hub never took.", self.rejected)
        return out.render()


class HeldPost:
    """A post committed held: ``release`` lets it go, with changes to its content."""

    def __init__(self, box: PostBox, post_id: str) -> None:
        self.box = box
        self.post_id = post_id

    async def release(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the post's content and let it be sent."""
        await self.box.release(self.post_id, changes)


class PostBox:
    """A durable, ordered, bounded queue of group posts (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        send: SendPost,
        max_posts: int = 1000,
        ack_seconds: float = 10.0,
        rate: float = 40.0,
        burst: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.max_posts = max_posts
        self._send = send
        self._ack_seconds = ack_seconds
        self._pace = _Pace(rate, burst)
        self._clock = clock
        self._db: _PostDb | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._up = False
        self._in_flight: dict[str, float] = {}  # post id -> when sent
        self._tries: dict[str, int] = {}
        self._acked: list[str] = []
        self._last_sent = 0  # the seq of the last row sent on this connection
        self._epoch = 0  # bumped by every rewind: a send that straddles one is not recorded
        self._depth = 0
        self._lost_this_outage = 0
        self._counts = {"delivered": 0, "dropped": 0, "rejected": 0}

    @property
    def depth(self) -> int:
        """Posts on disk not yet echoed."""
        return self._depth

    @property
    def link_is_up(self) -> bool:
        """Whether the hub link is open (as last told)."""
        return self._up

    def stats(self) -> PostBoxStats:
        """Depth and counters, for status and metrics."""
        return PostBoxStats(self._depth, **self._counts)

    async def __aenter__(self) -> PostBox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the file and start sending (posts a previous run left too)."""
        if self._db is None:
            self._db = await asyncio.to_thread(_PostDb, self.path)
            self._set_depth(await asyncio.to_thread(self._db.count))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="post-box")

    async def aclose(self) -> None:
        """Stop sending and close the file; unechoed posts stay on disk for the next run."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        db, self._db = self._db, None
        if db is not None:
            await asyncio.to_thread(db.close)

    async def add(
        self, group: str, content: Mapping[str, Any], *, hold_seconds: float | None = None
    ) -> str:
        """Commit a post of ``content`` (a JSON object) to ``group``; its id (``content["id"]``)."""
        db = self._require_db()
        post_id = uuid.uuid4().hex
        now = self._clock()
        body = {**content, "id": post_id}
        held_until = None if hold_seconds is None else now + hold_seconds
        depth, dropped = await asyncio.to_thread(
            db.insert, post_id, group, now, body, max_rows=self.max_posts, held_until=held_until
        )
        self._set_depth(depth)
        if dropped:
            self._dropped(dropped)
        self._wake.set()
        return post_id

    async def post(
        self, group: str, content: dict[str, Any], *, hold_seconds: float | None = None
    ) -> HeldPost | None:
        """``add`` as the events engine's post handler (``ActionHandlers(post=...)``)."""
        post_id = await self.add(group, content, hold_seconds=hold_seconds)
        return None if hold_seconds is None else HeldPost(self, post_id)

    async def release(self, post_id: str, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into a held post's content and let it be sent."""
        await asyncio.to_thread(self._require_db().release, post_id, dict(changes))
        self._wake.set()

    def link_up(self) -> None:
        """The hub link is open (and its groups joined): send."""
        self._up = True
        self._wake.set()

    def link_down(self) -> None:
        """The hub link is gone: what was not echoed goes again, in order, once it is back."""
        self._up = False
        self._rewind()

    def acknowledge(self, post_id: str) -> bool:
        """The hub echoed ``post_id``: it is delivered. Whether it was one of ours in flight."""
        if self._in_flight.pop(post_id, None) is None:
            return False
        self._tries.pop(post_id, None)
        self._acked.append(post_id)
        self._wake.set()
        return True

    async def wait_empty(self) -> None:
        """Wait until every post so far has been echoed (or dropped)."""
        await self._empty.wait()

    # -- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:  # the file failed (a full disk): say so, try again soon
                log.exception("post queue: a round failed")
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _round(self) -> float | None:
        """Record echoes, then send what may go now; how long until something is due."""
        db = self._require_db()
        if self._acked:
            acked, self._acked = self._acked, []
            self._counts["delivered"] += len(acked)
            self._set_depth(await asyncio.to_thread(db.delete, acked))
        if not self._up:
            return None
        if self._overdue(self._clock()):
            await self._retry_unechoed()
        room = _WINDOW - len(self._in_flight)
        if room <= 0:
            return self._echo_deadline(self._clock())
        return await self._send_rows(db, room)

    async def _send_rows(self, db: _PostDb, room: int) -> float | None:
        """Send up to ``room`` rows after the last one sent; the wait before the next round."""
        epoch = self._epoch
        rows = await asyncio.to_thread(db.after, self._last_sent, room)
        for row in rows:
            wait = 0.0 if epoch != self._epoch else await self._send_row(row, epoch)
            if wait != 0.0 or epoch != self._epoch:
                return wait  # not yet, the link went down (None), or rewound: start over
        if len(rows) == room:
            return 0.0  # there may be more
        return self._echo_deadline(self._clock())

    async def _send_row(self, row: _Post, epoch: int) -> float | None:
        """Send one row; 0 when sent (or dropped), else how long to wait (``None``: link down)."""
        now = self._clock()
        wait = self._pace.wait(now)
        if row.held_until is not None and row.held_until > now:
            wait = max(wait, row.held_until - now)
        if wait > 0:
            return wait
        try:
            await self._send(row.group, row.content)
        except LinkDownError:
            self.link_down()
            return None
        except EdgeAgentError as exc:
            await self._reject(row.post_id, getattr(exc, "message", str(exc)))
        else:
            self._pace.take(now)
            if epoch == self._epoch:  # not rewound meanwhile (else it goes again)
                self._in_flight[row.post_id] = now
                self._tries[row.post_id] = self._tries.get(row.post_id, 0) + 1
        if epoch == self._epoch:
            self._last_sent = row.seq
        return 0.0

    def _overdue(self, now: float) -> bool:
        oldest = min(self._in_flight.values(), default=None)
        return oldest is not None and now - oldest >= self._ack_seconds

    async def _retry_unechoed(self) -> None:
        """No echo on an open link: send again from the oldest, dropping the hopeless."""
        hopeless = [p for p in self._in_flight if self._tries.get(p, 0) >= _MAX_TRIES]
        for post_id in hopeless:
            await self._reject(post_id, f"the hub did not echo it after {_MAX_TRIES} tries")
        log.info("post queue: %d post(s) not echoed in time; sending again", len(self._in_flight))
        self._rewind()

    async def _reject(self, post_id: str, why: str) -> None:
        self._in_flight.pop(post_id, None)
        self._tries.pop(post_id, None)
        self._counts["rejected"] += 1
        self._set_depth(await asyncio.to_thread(self._require_db().delete, [post_id]))
        log.warning("event post %s dropped: %s", post_id, why)

    def _rewind(self) -> None:
        self._in_flight.clear()
        self._last_sent = 0
        self._epoch += 1

    def _echo_deadline(self, now: float) -> float | None:
        oldest = min(self._in_flight.values(), default=None)
        return None if oldest is None else max(0.0, oldest + self._ack_seconds - now)

    def _dropped(self, post_ids: list[str]) -> None:
        self._counts["dropped"] += len(post_ids)
        for post_id in post_ids:
            self._in_flight.pop(post_id, None)
            self._tries.pop(post_id, None)
        if self._lost_this_outage == 0:
            log.warning(
                "post queue full (%d): dropping the oldest event posts until the hub takes "
                "them again",
                self.max_posts,
            )
        self._lost_this_outage += len(post_ids)

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if depth:
            self._empty.clear()
            return
        self._empty.set()
        if self._lost_this_outage:
            log.warning(
                "post queue drained; %d event post(s) were dropped while it was full",
                self._lost_this_outage,
            )
            self._lost_this_outage = 0

    def _require_db(self) -> _PostDb:
        if self._db is None:
            raise LinkDownError(f"the post queue {self.path} is not open")
        return self._db


class _Pace:
    """A token bucket: ``rate`` posts a second after a burst of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def wait(self, now: float) -> float:
        """Seconds until one post may go (0: now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate

    def take(self, now: float) -> None:
        """Spend one post."""
        self._refill(now)
        self._tokens -= 1

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now


@dataclass(frozen=True, slots=True)
class _Post:
    seq: int
    post_id: str
    group: str
    content: dict[str, Any]
    held_until: float | None


class _PostDb:
    """The ``posts`` table of the outbox file; synchronous, called in threads."""

    def __init__(self, path: Path) -> None:
        # FULL: a committed post survives a power cut (see agent.push.outbox).
        self._store = PrivateDatabase(path, synchronous="FULL")
        with self._store.transaction() as db:
            db.execute(_SCHEMA)
            # Holds are promises of one run: what a previous run left held goes as it is.
            db.execute("UPDATE posts SET held_until = NULL WHERE held_until IS NOT NULL")

    def insert(
        self,
        post_id: str,
        group: str,
        created_at: float,
        content: dict[str, Any],
        *,
        max_rows: int,
        held_until: float | None,
    ) -> tuple[int, list[str]]:
        """Add a row, dropping the oldest beyond ``max_rows``; (depth, dropped ids)."""
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO posts (post_id, grp, created_at, content, held_until) "
                "VALUES (?, ?, ?, ?, ?)",
                (post_id, group, created_at, _dumps(content), held_until),
            )
            dropped = [
                str(row[0])
                for row in db.execute(
                    "SELECT post_id FROM posts ORDER BY seq DESC LIMIT -1 OFFSET ?", (max_rows,)
                )
            ]
            db.executemany("DELETE FROM posts WHERE post_id = ?", [(i,) for i in dropped])
            return _count(db), list(reversed(dropped))

    def after(self, seq: int, limit: int) -> list[_Post]:
        """Up to ``limit`` rows after ``seq``, oldest first."""
        with self._store.lock:
            rows = self._store.connection.execute(
                "SELECT seq, post_id, grp, content, held_until FROM posts WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [_Post(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def release(self, post_id: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into a row's content and clear its hold."""
        with self._store.transaction() as db:
            row = db.execute("SELECT content FROM posts WHERE post_id = ?", (post_id,)).fetchone()
            if row is None:
                return  # dropped meanwhile
            db.execute(
                "UPDATE posts SET content = ?, held_until = NULL WHERE post_id = ?",
                (_dumps(json.loads(row[0]) | changes), post_id),
            )

    def delete(self, post_ids: list[str]) -> int:
        """Remove rows; the depth left."""
        with self._store.transaction() as db:
            db.executemany("DELETE FROM posts WHERE post_id = ?", [(i,) for i in post_ids])
            return _count(db)

    def count(self) -> int:
        """Rows on disk."""
        with self._store.lock:
            return _count(self._store.connection)

    def close(self) -> None:
        """Close the file."""
        self._store.close()


def _count(db: Any) -> int:
    return int(db.execute("SELECT COUNT(*) FROM posts").fetchone()[0])


def _dumps(content: dict[str, Any]) -> str:
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False)
