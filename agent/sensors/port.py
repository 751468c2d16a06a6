"""One serial port (pyserial) as a thin adapter: open, read in a thread, frame, reopen, write.

Reading runs in one dedicated thread per open port, blocking in ``read()`` with a short timeout
and handing bytes to the event loop with ``call_soon_threadsafe``. That is pyserial's own
pattern (``serial.threaded.ReaderThread``), and it is the one that works for every port
``serial_for_url`` opens: URL handlers (``socket://``, ``rfc2217://``, ``loop://``) have no
file descriptor that ``loop.add_reader`` could watch, and a ``to_thread`` call per read would
park a worker of the shared default executor on every port indefinitely, starving the SQLite
and file work that needs it.

A port that is missing at start or lost later is reopened forever with capped exponential
backoff and full jitter (``agent.retry.backoff``); each outage moves the state to ``DOWN``
once, counts it, logs it, and tells ``on_presence(name, False)``; reopening says ``True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, NoReturn, Protocol

from agent.retry import backoff
from agent.sensors.commands import encode_command, shown_command
from agent.sensors.errors import SerialWriteError, WriteRefusal
from agent.sensors.framing import BadData, BadDataKind, Framer, Reading, make_framer
from agent.sensors.settings import SerialPortSettings

__all__ = [
    "Opener",
    "PortCounters",
    "PortState",
    "ReopenPolicy",
    "SerialLink",
    "SerialPort",
    "open_serial",
]

log = logging.getLogger(__name__)

# How long one blocking read waits: the reader thread notices a stop request this often.
READ_TIMEOUT: Final = 0.1
# A write that cannot complete in this time (flow control held off) fails instead of hanging.
WRITE_TIMEOUT: Final = 2.0
# A port that stayed open this long starts its next outage with short delays again.
_STABLE_SECONDS: Final = 10.0
# Bad data of one kind is logged at most once per this many seconds per port.
_BAD_DATA_LOG_SECONDS: Final = 10.0


class SerialLink(Protocol):
    """The part of ``serial.Serial`` the adapter uses."""

    @property
    def in_waiting(self) -> int:
        """Bytes ready to read."""
        ...

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes, waiting at most the read timeout."""
        ...

    def write(self, data: bytes, /) -> int | None:
        """Write ``data``, waiting at most the write timeout."""
        ...

    def flush(self) -> None:
        """Wait until written data has left."""
        ...

    def close(self) -> None:
        """Close the port."""
        ...


Opener = Callable[[SerialPortSettings], SerialLink]


def open_serial(settings: SerialPortSettings) -> SerialLink:
    """Open the port (blocking; call from a thread) with the settings' line parameters."""
    import serial

    link: Any = serial.serial_for_url(settings.port, do_not_open=True)
    link.baudrate = settings.baudrate
    link.bytesize = settings.bytesize
    link.parity = settings.parity.pyserial
    link.stopbits = settings.stopbits
    link.timeout = READ_TIMEOUT
    link.write_timeout = WRITE_TIMEOUT
    if not settings.is_url:
        # flock(2): a second agent (or a stray terminal program) cannot read the same device
        # and steal half of its lines.
        link.exclusive = True
    link.open()
    result: SerialLink = link
    return result


class PortState(enum.Enum):
    """Where a port stands."""

    STOPPED = "stopped"  # not running
    OPENING = "opening"  # first attempt to open
    OPEN = "open"  # reading
    DOWN = "down"  # missing or lost; reopening with backoff


@dataclass(frozen=True)
class ReopenPolicy:
    """Backoff between attempts to reopen a port: capped exponential with full jitter."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def delays(self) -> Iterator[float]:
        """A fresh sequence of delays."""
        return backoff(self.initial, self.factor, self.cap)


@dataclass
class PortCounters:
    """What a port has done since start: the figures status and metrics report."""

    bytes_read: int = 0
    readings: int = 0
    bad_data: Counter[BadDataKind] = field(default_factory=Counter)
    outages: int = 0
    open_failures: int = 0
    writes: int = 0
    refused_writes: int = 0

    def as_json(self) -> dict[str, Any]:
        """Plain JSON-able figures."""
        return {
            "bytes_read": self.bytes_read,
            "readings": self.readings,
            "bad_data": {kind.value: count for kind, count in sorted(self.bad_data.items())},
            "outages": self.outages,
            "open_failures": self.open_failures,
            "writes": self.writes,
            "refused_writes": self.refused_writes,
        }


class SerialPort:
    """One configured port: keeps it open, frames what it reads, writes checked commands."""

    def __init__(
        self,
        settings: SerialPortSettings,
        *,
        on_reading: Callable[[Reading], None],
        on_presence: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.time,
        reopen: ReopenPolicy | None = None,
        opener: Opener = open_serial,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.counters = PortCounters()
        self._on_reading = on_reading
        self._on_presence = on_presence
        self._clock = clock
        self._reopen = reopen or ReopenPolicy()
        self._opener = opener
        self._state = PortState.STOPPED
        self._link: SerialLink | None = None
        self._framer: Framer | None = None
        self._write_lock = asyncio.Lock()
        self._bad_log = _Throttle(_BAD_DATA_LOG_SECONDS)
        self._down_reason = ""

    @property
    def state(self) -> PortState:
        """The port's current state."""
        return self._state

    def status(self) -> dict[str, Any]:
        """State, settings summary and counters, JSON-able."""
        return {
            "name": self.name,
            "port": self.settings.port,
            "state": self._state.value,
            "framing": self.settings.framing.value,
            "writable": self.settings.writable,
            "allow": list(self.settings.allow),
            "units": dict(self.settings.units),
            "down_reason": self._down_reason if self._state is PortState.DOWN else None,
            **self.counters.as_json(),
        }

    async def run(self) -> None:
        """Keep the port open and read it until cancelled; never fails on port errors."""
        self._set_state(PortState.OPENING)
        delays = self._reopen.delays()
        try:
            while True:
                link = await self._open()
                if link is not None:
                    opened = time.monotonic()
                    self._lost(await self._session(link))
                    if time.monotonic() - opened >= _STABLE_SECONDS:
                        delays = self._reopen.delays()
                await asyncio.sleep(next(delays))
        finally:
            self._set_state(PortState.STOPPED)

    async def write(self, command: str | bytes) -> None:
        """Write one command; ``SerialWriteError`` says why when it is refused or fails."""
        try:
            await self._write(command)
        except SerialWriteError as exc:
            self.counters.refused_writes += 1
            log.info("serial port %r: %s", self.name, exc)
            raise
        self.counters.writes += 1

    # -- open, read, lose ------------------------------------------------------------------

    async def _open(self) -> SerialLink | None:
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, self._opener, self.settings)
        try:
            link = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The open finishes in its thread anyway; close what it opens.
            opening.add_done_callback(_close_opened)
            raise
        except Exception as exc:  # pyserial raises SerialException, OSError or ValueError
            self.counters.open_failures += 1
            self._went_down(f"cannot open {self.settings.port}: {exc}")
            return None
        self._link = link
        self._framer = make_framer(self.settings)
        self._set_state(PortState.OPEN)
        self._tell_presence(present=True)
        return link

    async def _session(self, link: SerialLink) -> BaseException | None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[BaseException | None] = loop.create_future()
        stop = threading.Event()
        reader = threading.Thread(
            target=_pump,
            args=(link, loop, self._feed, partial(_settle, ended), stop),
            name=f"serial:{self.name}",
            daemon=True,
        )
        reader.start()
        try:
            return await ended
        finally:
            stop.set()
            async with self._write_lock:
                self._link = None
                await asyncio.to_thread(_shut, link, reader)

    def _lost(self, error: BaseException | None) -> None:
        self._framer = None
        self._went_down(f"lost: {error}" if error is not None else "closed")

    def _feed(self, data: bytes) -> None:
        framer = self._framer
        if framer is None:
            return
        self.counters.bytes_read += len(data)
        for item in framer.feed(data, self._clock()):
            if isinstance(item, BadData):
                self._bad_data(item)
            else:
                self.counters.readings += 1
                self._on_reading(item)

    def _bad_data(self, item: BadData) -> None:
        self.counters.bad_data[item.kind] += 1
        held = self._bad_log.allow(item.kind, time.monotonic())
        if held is not None:
            more = f" ({held} more since the last report)" if held else ""
            log.warning(
                "serial port %r: skipped %d bytes: %s%s", self.name, item.size, item.detail, more
            )

    # -- write -----------------------------------------------------------------------------

    async def _write(self, command: str | bytes) -> None:
        payload = encode_command(self.settings, command)
        async with self._write_lock:
            link = self._link
            if link is None:
                self._refuse(command, WriteRefusal.PORT_DOWN, f"is {self._state.value}")
            try:
                await asyncio.to_thread(_write_all, link, payload)
            except Exception as exc:  # SerialTimeoutException, SerialException, OSError
                self._refuse(
                    command, WriteRefusal.WRITE_FAILED, f"failed to write it: {exc}", cause=exc
                )

    def _refuse(
        self,
        command: str | bytes,
        reason: WriteRefusal,
        why: str,
        *,
        cause: BaseException | None = None,
    ) -> NoReturn:
        shown = shown_command(command)
        message = f"command {shown} not written: serial port {self.name!r} {why}"
        raise SerialWriteError(message, port=self.name, command=shown, reason=reason) from cause

    # -- state -----------------------------------------------------------------------------

    def _went_down(self, reason: str) -> None:
        if self._state is PortState.DOWN:
            log.debug("serial port %r: still down: %s", self.name, reason)
            return
        self._down_reason = reason
        self.counters.outages += 1
        self._set_state(PortState.DOWN, reason)
        self._tell_presence(present=False)

    def _set_state(self, state: PortState, reason: str = "") -> None:
        if state is self._state:
            return
        level = logging.WARNING if state is PortState.DOWN else logging.INFO
        why = f" ({reason}; reopening with backoff)" if reason else ""
        log.log(level, "serial port %r: %s -> %s%s", self.name, self._state.value, state.value, why)
        self._state = state

    def _tell_presence(self, *, present: bool) -> None:
        if self._on_presence is not None:
            self._on_presence(self.name, present)


class _Throttle:
    """Lets one log line per key through every ``interval`` seconds, counting the rest."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[object, float] = {}
        self._held: Counter[object] = Counter()

    def allow(self, key: object, now: float) -> int | None:
        """``None`` to hold the line back, else how many were held back before it."""
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] += 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


def _pump(
    link: SerialLink,
    loop: asyncio.AbstractEventLoop,
    on_data: Callable[[bytes], None],
    on_end: Callable[[BaseException | None], None],
    stop: threading.Event,
) -> None:
    """Reader thread: hand bytes to the loop until the link fails or ``stop`` is set."""
    error: BaseException | None = None
    try:
        while not stop.is_set():
            data = link.read(link.in_waiting or 1)
            if data:
                loop.call_soon_threadsafe(on_data, data)
    except Exception as exc:  # any failure of the link ends this session
        error = exc
    with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits
        loop.call_soon_threadsafe(on_end, error)


def _settle(ended: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not ended.done():
        ended.set_result(error)


def _shut(link: SerialLink, reader: threading.Thread) -> None:
    """Stop the reader thread, then close the link (never close under a running read)."""
    cancel = getattr(link, "cancel_read", None)
    if cancel is not None:
        with contextlib.suppress(Exception):
            cancel()
    reader.join()
    with contextlib.suppress(Exception):
        link.close()


def _write_all(link: SerialLink, payload: bytes) -> None:
    link.write(payload)
    link.flush()


def _close_opened(opening: asyncio.Future[SerialLink]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        with contextlib.suppress(Exception):
            opening.result().close()
