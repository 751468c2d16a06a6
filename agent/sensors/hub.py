"""All serial ports of the agent: latest readings, fan-out to subscribers, writes, telemetry.

Consumers plug in three ways:

* ``add_listener(fn)``: a synchronous call for every reading, in order, never dropped (the
  events engine);
* ``subscribe(ReadingFilter)``: a bounded queue per subscriber (the ``sensors`` data channel);
  a slow subscriber loses its own oldest readings and nobody else's;
* ``bridge(name)``: the readings of one writable port plus ``write`` (a ``serial:NAME`` data
  channel).

Telemetry: with an interval and an injected ``post(group, payload)``, the latest readings are
posted to the telemetry groups as ``{"type": "telemetry", "device", "ts", "readings",
"ports"}``; ``ports`` says how each port is doing (``state``, ``readings``, ``bad_data`` and
``outages`` counts, ``units``), so that a viewer tells a stale reading from a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

from agent.sensors.errors import SerialWriteError, UnknownPortError, WriteRefusal
from agent.sensors.framing import Reading
from agent.sensors.port import Opener, ReopenPolicy, SerialPort, open_serial
from agent.sensors.settings import SerialPortSettings, check_port_names

__all__ = [
    "PostFn",
    "ReadingFilter",
    "SensorHub",
    "SerialBridge",
    "Subscription",
]

log = logging.getLogger(__name__)

PostFn = Callable[[str, dict[str, Any]], Awaitable[None]]
# Drops of one subscriber are logged on the first and then on every this-many-th.
_DROP_LOG_EVERY: Final = 100
_FILTER_KEYS: Final = frozenset({"ports", "fields"})


@dataclass(frozen=True)
class ReadingFilter:
    """Which readings a subscriber wants: some ports, some fields (``None``: all)."""

    ports: frozenset[str] | None = None
    fields: frozenset[str] | None = None

    @classmethod
    def from_json(cls, value: object) -> ReadingFilter:
        """A filter from a caller's JSON (``{"ports": [...], "fields": [...]}``).

        Raises:
            ValueError: naming what is wrong with ``value``.
        """
        if value is None:
            return cls()
        if not isinstance(value, dict):
            # A caller's bad input, not a programming error: ValueError like every other case.
            raise ValueError(  # noqa: TRY004
                "a sensors filter is a JSON object with 'ports' and/or 'fields'"
            )
        unknown = sorted(set(value) - _FILTER_KEYS)
        if unknown:
            raise ValueError(f"unknown sensors filter key(s) {unknown}; use 'ports', 'fields'")
        return cls(_names(value, "ports"), _names(value, "fields"))

    def apply(self, reading: Reading) -> Reading | None:
        """``reading`` cut down to the wanted fields, or ``None`` when nothing is wanted."""
        if self.ports is not None and reading.port not in self.ports:
            return None
        if self.fields is None:
            return reading
        if reading.fields is None:
            return None
        kept = {key: value for key, value in reading.fields.items() if key in self.fields}
        return Reading(reading.port, reading.ts, fields=kept, line=reading.line) if kept else None


class Subscription:
    """A bounded stream of readings for one subscriber; iterate it, close it when done."""

    def __init__(
        self,
        reading_filter: ReadingFilter,
        maxsize: int,
        on_close: Callable[[Subscription], None],
    ) -> None:
        self.filter = reading_filter
        self.dropped = 0
        self._queue: asyncio.Queue[Reading | None] = asyncio.Queue(maxsize)
        self._on_close = on_close
        self._closed = False

    def offer(self, reading: Reading) -> None:
        """Queue ``reading`` if wanted; when full, drop this subscriber's oldest one."""
        wanted = self.filter.apply(reading)
        if wanted is None or self._closed:
            return
        self._put(wanted)

    async def get(self) -> Reading:
        """The next reading; ``StopAsyncIteration`` once the subscription is closed."""
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # later calls end too
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Stop the stream; readers waiting in ``get`` end."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        self._put(None)

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self

    async def __anext__(self) -> Reading:
        return await self.get()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _put(self, item: Reading | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped % _DROP_LOG_EVERY == 1:
                log.warning("a slow sensors subscriber has dropped %d readings", self.dropped)
        self._queue.put_nowait(item)


class SerialBridge:
    """One caller's two-way link to a writable port (a ``serial:NAME`` data channel)."""

    def __init__(self, port: SerialPort, readings: Subscription) -> None:
        self.port = port.name
        self.readings = readings
        self._serial = port

    async def write(self, command: str | bytes) -> None:
        """Write a command; ``SerialWriteError`` with a clear message when refused."""
        await self._serial.write(command)

    def close(self) -> None:
        """End the reading stream."""
        self.readings.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SensorHub:
    """Owns every configured serial port and fans its readings out."""

    def __init__(
        self,
        ports: Sequence[SerialPortSettings],
        *,
        device: str = "",
        post: PostFn | None = None,
        telemetry_seconds: float | None = None,
        telemetry_groups: Sequence[str] = (),
        on_presence: Callable[[str, bool], None] | None = None,
        queue_size: int = 256,
        clock: Callable[[], float] = time.time,
        reopen: ReopenPolicy | None = None,
        opener: Opener = open_serial,
    ) -> None:
        check_port_names(ports)
        self.device = device
        self._post = post
        self._telemetry_seconds = telemetry_seconds
        self._telemetry_groups = tuple(telemetry_groups)
        self._on_presence = on_presence
        self._queue_size = queue_size
        self._clock = clock
        self._latest: dict[str, Reading] = {}
        self._listeners: list[Callable[[Reading], None]] = []
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.ports: Mapping[str, SerialPort] = {
            settings.name: SerialPort(
                settings,
                on_reading=self._dispatch,
                on_presence=self._presence,
                clock=clock,
                reopen=reopen,
                opener=opener,
            )
            for settings in ports
        }

    # -- consumers -------------------------------------------------------------------------

    def latest(self) -> dict[str, Reading]:
        """The last reading of each port that has sent one."""
        return dict(self._latest)

    def status(self) -> dict[str, Any]:
        """Per-port state, counters and latest reading (part of the ``control`` status)."""
        return {
            name: {**port.status(), "latest": _json_or_none(self._latest.get(name))}
            for name, port in self.ports.items()
        }

    def add_listener(self, listener: Callable[[Reading], None]) -> Callable[[], None]:
        """Call ``listener(reading)`` for every reading; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def subscribe(
        self, reading_filter: ReadingFilter | None = None, *, maxsize: int | None = None
    ) -> Subscription:
        """A bounded stream of the readings ``reading_filter`` wants."""
        for name in sorted((reading_filter.ports or set()) if reading_filter else ()):
            self.port(name)  # an unknown port name is the caller's mistake: say so
        subscription = Subscription(
            reading_filter or ReadingFilter(),
            maxsize or self._queue_size,
            self._subscriptions.discard,
        )
        self._subscriptions.add(subscription)
        return subscription

    def bridge(self, name: str, *, maxsize: int | None = None) -> SerialBridge:
        """Readings and writes of port ``name``; refused unless it is ``writable``."""
        port = self.port(name)
        if not port.settings.writable:
            raise SerialWriteError(
                f"serial port {name!r} is not writable (set writable = true in its [[serial]] "
                "entry), so it cannot be opened for remote control",
                port=name,
                command="",
                reason=WriteRefusal.NOT_WRITABLE,
            )
        readings = self.subscribe(ReadingFilter(ports=frozenset({name})), maxsize=maxsize)
        return SerialBridge(port, readings)

    def port(self, name: str) -> SerialPort:
        """The port named ``name``; ``UnknownPortError`` if none is."""
        try:
            return self.ports[name]
        except KeyError:
            raise UnknownPortError(name, sorted(self.ports)) from None

    async def write(self, name: str, command: str | bytes) -> None:
        """Write ``command`` to port ``name`` (see ``SerialPort.write``)."""
        await self.port(name).write(command)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every port, and telemetry when configured, until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                for port in self.ports.values():
                    group.create_task(port.run(), name=f"serial:{port.name}")
                if self._post is not None and self._telemetry_seconds and self._telemetry_groups:
                    group.create_task(self._telemetry(self._telemetry_seconds, self._post))
        finally:
            for subscription in list(self._subscriptions):
                subscription.close()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="sensors")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def telemetry_payload(self) -> dict[str, Any] | None:
        """What one telemetry post carries, or ``None`` before any reading."""
        if not self._latest:
            return None
        readings = {name: reading.as_json() for name, reading in sorted(self._latest.items())}
        return {
            "type": "telemetry",
            "device": self.device,
            "ts": self._clock(),
            "readings": readings,
            "ports": {name: _port_summary(port) for name, port in self.ports.items()},
        }

    # -- internals -------------------------------------------------------------------------

    def _dispatch(self, reading: Reading) -> None:
        self._latest[reading.port] = reading
        for listener in list(self._listeners):
            try:
                listener(reading)
            except Exception:  # one broken consumer must not stop the readings
                log.exception("a sensors listener failed on a reading of %r", reading.port)
        for subscription in list(self._subscriptions):
            subscription.offer(reading)

    def _presence(self, name: str, present: bool) -> None:
        if self._on_presence is None:
            return
        try:
            self._on_presence(name, present)
        except Exception:
            log.exception("the presence callback failed for serial port %r", name)

    async def _telemetry(self, interval: float, post: PostFn) -> None:
        while True:
            await asyncio.sleep(interval)
            payload = self.telemetry_payload()
            if payload is None:
                continue
            for group in self._telemetry_groups:
                await self._post_one(post, group, payload, interval)

    async def _post_one(
        self, post: PostFn, group: str, payload: dict[str, Any], limit: float
    ) -> None:
        try:
            async with asyncio.timeout(limit):
                await post(group, payload)
        except Exception as exc:  # the hub may be down; the next interval tries again
            log.warning("telemetry to group %r not posted: %r", group, exc)


def _names(value: dict[str, Any], key: str) -> frozenset[str] | None:
    names = value.get(key)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"sensors filter {key!r} must be a list of names")
    return frozenset(names)


def _port_summary(port: SerialPort) -> dict[str, Any]:
    counters = port.counters
    return {
        "state": port.state.value,
        "readings": counters.readings,
        "bad_data": sum(counters.bad_data.values()),
        "outages": counters.outages,
        "units": dict(port.settings.units),
    }


def _json_or_none(reading: Reading | None) -> dict[str, Any] | None:
    return None if reading is None else reading.as_json()
