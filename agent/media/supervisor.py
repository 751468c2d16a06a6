"""Keeps a capture going: the configured device when it works, a fallback while it does not.

A device that is missing at start or disappears mid-stream is reported (``MediaEvent``
with a ``DeviceNotFoundError`` naming it), replaced by the fallback (test pattern or tone)
so viewers keep receiving media, and retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from agent.errors import DeviceNotFoundError
from agent.media.config import BackoffConfig
from agent.media.errors import device_not_found
from agent.media.policy import Backoff
from agent.media.runtime import MediaClock, cancel_and_wait

__all__ = [
    "CaptureState",
    "MediaEvent",
    "MediaEventKind",
    "Source",
    "SourceSupervisor",
    "Timeouts",
]

logger = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")
SourceT = TypeVar("SourceT", bound="Source[Any]")


class Source(Protocol[T_co]):
    """A capture device: open, read items, close."""

    @property
    def name(self) -> str:
        """The device, as told to a caller when it is missing."""

    async def open(self) -> None:
        """Acquire the device; DeviceNotFoundError if absent."""

    async def read(self) -> T_co:
        """The next item; DeviceNotFoundError if the device went away."""

    async def close(self) -> None:
        """Release the device."""


class CaptureState(Enum):
    """Where a pipeline's media comes from."""

    IDLE = "idle"  # nothing open
    OPENING = "opening"  # trying the configured device
    LIVE = "live"  # the configured device
    FALLBACK = "fallback"  # the test pattern or tone, while the device is retried


class MediaEventKind(Enum):
    """Things worth telling a caller or an operator."""

    SOURCE_OPENED = "source_opened"
    SOURCE_FAILED = "source_failed"  # could not be opened (missing at start or on retry)
    SOURCE_LOST = "source_lost"  # went away mid-stream
    FALLBACK_STARTED = "fallback_started"
    SOURCE_RELEASED = "source_released"  # closed after the last viewer left


@dataclass(frozen=True, slots=True)
class MediaEvent:
    """One capture event; ``error`` names the device for FAILED and LOST."""

    kind: MediaEventKind
    media: str  # "video" or "audio"
    source: str
    error: DeviceNotFoundError | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a device may take to deliver its first item, and between items."""

    first_item: float = 5.0
    stall: float = 5.0


class SourceSupervisor(Generic[T, SourceT]):
    """Runs the primary source, falling back and retrying; hands every item to ``deliver``."""

    def __init__(
        self,
        *,
        media: str,
        primary: Callable[[], SourceT],
        fallback: Callable[[], SourceT] | None,
        deliver: Callable[[T, SourceT], None],
        backoff: BackoffConfig,
        on_event: Callable[[MediaEvent], None],
        clock: MediaClock,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._media = media
        self._primary = primary
        self._fallback = fallback
        self._deliver = deliver
        self._backoff = Backoff(backoff)
        self._stable_after = backoff.stable_after
        self._on_event = on_event
        self._clock = clock
        self._timeouts = timeouts or Timeouts()
        self._state = CaptureState.IDLE
        self.last_error: DeviceNotFoundError | None = None

    @property
    def state(self) -> CaptureState:
        """Current capture state."""
        return self._state

    async def run(self) -> None:
        """Capture until cancelled; never raises for a missing or failing device."""
        fallback: asyncio.Task[None] | None = None
        try:
            while True:
                source = self._primary()
                if fallback is None:
                    self._set_state(CaptureState.OPENING)
                first = await self._attempt(source)
                if first is not None:
                    await cancel_and_wait(fallback)
                    fallback = None
                    await self._run_primary(source, first)  # returns once the device is lost
                if fallback is None:
                    fallback = self._start_fallback()
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            await cancel_and_wait(fallback)
            self._set_state(CaptureState.IDLE)

    async def _attempt(self, source: SourceT) -> tuple[T] | None:
        """Open ``source`` and read its first item; None (reported) if that fails."""
        try:
            async with asyncio.timeout(self._timeouts.first_item):
                await source.open()
                return (await source.read(),)
        except Exception as exc:
            await _close_quietly(source)
            self._report(MediaEventKind.SOURCE_FAILED, source, exc, "no media within the timeout")
            return None
        except BaseException:
            await _close_quietly(source)
            raise

    async def _run_primary(self, source: SourceT, first: tuple[T]) -> None:
        """Deliver from ``source`` until it fails (reported), then close it."""
        self._set_state(CaptureState.LIVE)
        self._emit(MediaEventKind.SOURCE_OPENED, source)
        opened = self._clock.now()
        try:
            self._deliver(first[0], source)
            while True:
                async with asyncio.timeout(self._timeouts.stall):
                    item = await source.read()
                self._deliver(item, source)
                if self._clock.now() - opened > self._stable_after:
                    self._backoff.reset()
        except Exception as exc:
            self._report(MediaEventKind.SOURCE_LOST, source, exc, "stopped delivering media")
        finally:
            await _close_quietly(source)

    def _start_fallback(self) -> asyncio.Task[None] | None:
        if self._fallback is None:
            return None
        self._set_state(CaptureState.FALLBACK)
        return asyncio.create_task(self._pump_fallback(self._fallback()))

    async def _pump_fallback(self, source: SourceT) -> None:
        try:
            await source.open()
            self._emit(MediaEventKind.FALLBACK_STARTED, source)
            while True:
                self._deliver(await source.read(), source)
        except Exception:
            logger.exception("%s fallback %s failed", self._media, source.name)
        finally:
            await _close_quietly(source)

    def _report(self, kind: MediaEventKind, source: SourceT, exc: Exception, timeout: str) -> None:
        if isinstance(exc, DeviceNotFoundError):
            error = exc
        elif isinstance(exc, TimeoutError):
            error = device_not_found(source.name, timeout)
        else:
            logger.warning(
                "%s source %s failed unexpectedly", self._media, source.name, exc_info=exc
            )
            error = device_not_found(source.name, f"{type(exc).__name__}: {exc}")
        repeated = self.last_error is not None and str(self.last_error) == str(error)
        self.last_error = error
        log = logger.debug if repeated else logger.warning
        log("%s %s: %s (retrying)", self._media, kind.value, error.message)
        self._emit(kind, source, error)

    def _emit(
        self, kind: MediaEventKind, source: SourceT, error: DeviceNotFoundError | None = None
    ) -> None:
        try:
            self._on_event(MediaEvent(kind, self._media, source.name, error))
        except Exception:
            logger.exception("media event handler failed")

    def _set_state(self, state: CaptureState) -> None:
        if state is not self._state:
            logger.info("%s capture: %s -> %s", self._media, self._state.value, state.value)
            self._state = state


async def _close_quietly(source: Source[object]) -> None:
    try:
        await source.close()
    except Exception:
        logger.exception("closing %s failed", source.name)
