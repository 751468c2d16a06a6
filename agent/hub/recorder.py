"""What the hub remembers of its devices, recorded off the hot path: events, presence,
recent telemetry.

:class:`HistoryRecorder` is told of every group post (:meth:`~HistoryRecorder.observe_post`,
the realtime endpoint's ``on_group_post`` hook, called once per broadcast after its
fan-out) and of every connection opening and closing (:meth:`~HistoryRecorder.observe_presence`,
its ``on_presence`` hook). Only *device* accounts count:

- an event post (:func:`agent.hub.history.event_post`) is queued for the history; a
  writer task stores what is queued in batches, in a thread, so the broadcast never
  waits for the disk. A full queue drops (and counts) rather than blocks;
- a telemetry post (``{"type": "telemetry", "ts", "readings", "ports"?}``, what the
  agent's sensors post) is kept in memory for :data:`TELEMETRY_WINDOW` seconds, for the
  viewer's tiles and charts (telemetry is the latest state, not history);
- a device's first connection makes it online since then; its last one closing (asked of
  the backplane, which knows every node's connections) makes it offline since then.
  Presence is kept in memory and written through the same queue, so "offline since"
  survives a hub restart. Whether a device is online *now* is the backplane's to say;
  the recorder says since when.

Every group's bounds are applied as events are written, and ages once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.hub.access import AccessTable
from agent.hub.accounts import Role
from agent.hub.backplane import Member
from agent.hub.history import (
    DevicePresence,
    EventPage,
    EventQuery,
    EventRecord,
    EventStore,
    event_post,
)

__all__ = [
    "TELEMETRY_WINDOW",
    "HistoryRecorder",
    "TelemetryPoint",
    "TelemetryWindow",
    "telemetry_post",
]

log = logging.getLogger(__name__)

TELEMETRY_WINDOW: Final = 600.0  # the viewer charts the last 10 minutes
_MAX_POINTS: Final = 720  # per device: one a second for 10 minutes, with room
_MAX_PORTS: Final = 32
_QUEUE: Final = 10000
_BATCH: Final = 256
_PRUNE_SECONDS: Final = 3600.0
_FLUSH_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class TelemetryPoint:
    """One telemetry post of a device: when, its readings and port states."""

    ts: float  # the device's time
    readings: Mapping[str, Any]
    ports: Mapping[str, Any]
    groups: frozenset[str]
    received: float  # the hub's time: what the window is measured in

    def as_json(self) -> dict[str, Any]:
        """As the hub's API shows it."""
        return {"ts": self.ts, "readings": dict(self.readings), "ports": dict(self.ports)}


def telemetry_post(content: object) -> tuple[float, dict[str, Any], dict[str, Any]] | None:
    """(ts, readings, ports) of a telemetry post, or ``None`` if it is not one. Pure."""
    if not isinstance(content, dict) or content.get("type") != "telemetry":
        return None
    ts, readings, ports = content.get("ts"), content.get("readings"), content.get("ports")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        return None
    if not isinstance(readings, dict):
        return None
    ports = ports if isinstance(ports, dict) else {}
    return (
        float(ts),
        dict(list(readings.items())[:_MAX_PORTS]),
        dict(list(ports.items())[:_MAX_PORTS]),
    )


class TelemetryWindow:
    """The last :data:`TELEMETRY_WINDOW` seconds of each device's telemetry. Pure."""

    def __init__(self, *, window: float = TELEMETRY_WINDOW, max_points: int = _MAX_POINTS):
        self._window = window
        self._max_points = max_points
        self._points: dict[str, deque[TelemetryPoint]] = {}

    def add(self, device_id: str, group: str, content: object, now: float) -> bool:
        """Keep a telemetry post sent to ``group``; whether it was one.

        The agent posts the same payload to each of its groups: one point, many groups.
        """
        parsed = telemetry_post(content)
        if parsed is None:
            return False
        ts, readings, ports = parsed
        points = self._points.setdefault(device_id, deque(maxlen=self._max_points))
        if points and points[-1].ts == ts and points[-1].readings == readings:
            last = points.pop()
            points.append(TelemetryPoint(ts, readings, ports, last.groups | {group}, last.received))
        else:
            points.append(TelemetryPoint(ts, readings, ports, frozenset({group}), now))
        self._expire(points, now)
        return True

    def points(
        self, device_id: str, now: float, may_see: Callable[[str], bool]
    ) -> list[TelemetryPoint]:
        """The device's points in the window that went to a group ``may_see`` accepts."""
        points = self._points.get(device_id)
        if not points:
            return []
        self._expire(points, now)
        return [p for p in points if any(may_see(g) for g in p.groups)]

    def _expire(self, points: deque[TelemetryPoint], now: float) -> None:
        while points and points[0].received < now - self._window:
            points.popleft()


class HistoryRecorder:
    """Records device events and presence through a queue and one writer task."""

    def __init__(
        self,
        store: EventStore,
        access: AccessTable,
        *,
        connected: Callable[[str], Awaitable[bool]],
        clock: Callable[[], float] = time.time,
        queue_size: int = _QUEUE,
    ) -> None:
        self.store = store
        self.telemetry = TelemetryWindow()
        self.stored = 0
        self.dropped = 0
        self._access = access
        self._clock = clock
        self._queue: asyncio.Queue[EventRecord | DevicePresence] = asyncio.Queue(queue_size)
        self._presence: dict[str, DevicePresence] = {}
        self._connected = connected
        self._checks: set[asyncio.Task[None]] = set()

    # -- what the hub tells it (synchronous, never blocks, never raises) -------------------

    def observe_post(self, member: Member, group: str, content: Any) -> None:
        """A group post went out; keep it if a device posted an event or telemetry."""
        if not isinstance(content, dict) or content.get("type") not in ("event", "telemetry"):
            return  # the common case, decided without a lookup
        if not self._is_device(member.user_id):
            return
        now = self._clock()
        if self.telemetry.add(member.user_id, group, content, now):
            return
        record = event_post(
            content, device_id=member.user_id, device=member.name, group=group, received=now
        )
        if record is not None:
            self._enqueue(record)

    def observe_presence(self, member: Member, online: bool) -> None:
        """A connection of ``member`` opened (``online``) or closed."""
        if not self._is_device(member.user_id):
            return
        known = self._presence.get(member.user_id)
        if online:
            if known is None or not known.online:
                self._set(DevicePresence(member.user_id, member.name, True, self._clock()))
        elif known is None or known.online:
            # Offline only once its last connection, on any node, has gone.
            task = asyncio.get_running_loop().create_task(self._maybe_offline(member))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    # -- what the API reads ------------------------------------------------------------------

    def now(self) -> float:
        """The recorder's clock (Unix seconds)."""
        return self._clock()

    def presence(self, device_id: str) -> DevicePresence | None:
        """The device's presence as last recorded."""
        return self._presence.get(device_id)

    async def page(self, query: EventQuery) -> EventPage:
        """A page of stored events."""
        return await asyncio.to_thread(self.store.page, query)

    async def groups(self) -> list[str]:
        """Every group with stored events."""
        return await asyncio.to_thread(self.store.groups)

    async def flush(self) -> None:
        """Wait until everything recorded so far is written."""
        while self._checks:
            await asyncio.gather(*self._checks, return_exceptions=True)
        await self._queue.join()

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HistoryRecorder]:
        """Load presence, prune, and write in the background for the life of the context;
        what is queued at the end is written before it closes (for a few seconds at most)."""
        await self._load()
        tasks = [
            asyncio.create_task(self._write_loop(), name="history-writer"),
            asyncio.create_task(self._prune_loop(), name="history-prune"),
        ]
        try:
            yield self
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_FLUSH_TIMEOUT):
                    await self.flush()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self.store.close)

    async def _load(self) -> None:
        now = self._clock()
        for stored in await asyncio.to_thread(self.store.presences):
            # Online when the hub stopped without seeing it go: offline since then, or less.
            self._presence[stored.device_id] = (
                DevicePresence(stored.device_id, stored.device, False, now)
                if stored.online
                else stored
            )

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await asyncio.to_thread(self._write, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a busy or broken disk: say so, keep serving
                log.exception("event history: %d record(s) not written", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, batch: list[EventRecord | DevicePresence]) -> None:
        records = [item for item in batch if isinstance(item, EventRecord)]
        presences = [item for item in batch if isinstance(item, DevicePresence)]
        if records:
            self.stored += self.store.add(records)
        if presences:
            self.store.save_presence(presences)

    async def _prune_loop(self) -> None:
        while True:
            try:
                gone = await asyncio.to_thread(self.store.prune, self._clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event history: pruning failed; trying again later")
            else:
                if gone:
                    log.info("event history: %d event(s) past their group's bounds removed", gone)
            await asyncio.sleep(_PRUNE_SECONDS)

    async def _maybe_offline(self, member: Member) -> None:
        try:
            still = await self._connected(member.user_id)
        except Exception:  # the backplane is unsure: the next change will tell
            log.debug("presence of %s not checked", member.name, exc_info=True)
            return
        if not still:
            self._set(DevicePresence(member.user_id, member.name, False, self._clock()))

    def _set(self, presence: DevicePresence) -> None:
        self._presence[presence.device_id] = presence
        self._enqueue(presence)

    def _enqueue(self, item: EventRecord | DevicePresence) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 100 == 1:
                log.warning("event history: writer behind, %d record(s) dropped", self.dropped)

    def _is_device(self, user_id: str) -> bool:
        access = self._access.get(user_id)
        return access is not None and access.role is Role.DEVICE
