"""Lifetime of a capture: opened at the first viewer, released a while after the last.

A ``Pipeline`` counts leases (viewers' tracks and pending snapshots). The first lease
starts a capture session; when the count drops to zero the session lingers for
``linger_seconds`` so a viewer who reloads the page does not reopen the camera, then stops.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from agent.media.config import MediaConfig
from agent.media.runtime import MediaClock, cancel_and_wait
from agent.media.supervisor import (
    CaptureState,
    MediaEvent,
    MediaEventKind,
    SourceSupervisor,
    SourceT,
    T,
    Timeouts,
)

__all__ = ["Pipeline", "Session"]

logger = logging.getLogger(__name__)


class Session(ABC, Generic[T, SourceT]):
    """One capture run: its supervised source, tasks, worker thread and encoders."""

    def __init__(
        self,
        *,
        media: str,
        config: MediaConfig,
        clock: MediaClock,
        primary: Callable[[], SourceT],
        fallback: Callable[[], SourceT] | None,
        on_event: Callable[[MediaEvent], None],
    ) -> None:
        self._source: SourceT | None = None
        timeout = config.fanout.source_timeout
        self.supervisor: SourceSupervisor[T, SourceT] = SourceSupervisor(
            media=media,
            primary=primary,
            fallback=fallback,
            deliver=self._deliver,
            backoff=config.backoff,
            on_event=on_event,
            clock=clock,
            timeouts=Timeouts(timeout, timeout),
        )

    @property
    def state(self) -> CaptureState:
        """Where the media comes from right now (the supervisor's state)."""
        return self.supervisor.state

    @property
    def source_name(self) -> str:
        """The source delivering now, or ''."""
        return self._source.name if self._source is not None else ""

    @abstractmethod
    def _deliver(self, item: T, source: SourceT) -> None:
        """Take one item from the source that delivers now (called by the supervisor)."""

    @abstractmethod
    def start(self) -> None:
        """Start capturing (creates tasks)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop capturing and release everything."""


S = TypeVar("S", bound=Session[Any, Any])


class Pipeline(ABC, Generic[S]):
    """Lease counting and lingering release around a ``Session``."""

    def __init__(
        self, *, media: str, linger: float, on_event: Callable[[MediaEvent], None]
    ) -> None:
        self.media = media
        self._linger = linger
        self._on_event = on_event
        self._leases = 0
        self._session: S | None = None
        self._linger_task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def leases(self) -> int:
        """Viewers and snapshot requests holding the capture open."""
        return self._leases

    @property
    def state(self) -> CaptureState:
        """The session's capture state, IDLE without one."""
        return self._session.state if self._session is not None else CaptureState.IDLE

    def acquire(self) -> None:
        """Hold the capture open; starts it on the first lease."""
        self._leases += 1
        if self._linger_task is not None:
            self._linger_task.cancel()
            self._linger_task = None
        if self._session is None:
            self._session = self._new_session()
            self._session.start()

    def release(self) -> None:
        """Drop a lease; the last one schedules the release after the linger time."""
        self._leases -= 1
        if self._leases == 0 and self._session is not None:
            self._linger_task = asyncio.create_task(self._linger_then_stop())

    async def close(self) -> None:
        """Stop now, whatever holds leases."""
        await cancel_and_wait(self._linger_task)
        self._linger_task = None
        await self._stop_session()
        for task in tuple(self._stopping):
            await task

    @abstractmethod
    def _new_session(self) -> S:
        """A fresh capture session."""

    async def _linger_then_stop(self) -> None:
        await asyncio.sleep(self._linger)
        self._linger_task = None
        await self._stop_session()

    async def _stop_session(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        # A new lease may start a new session while this one is still stopping; it only
        # ever touches its own tasks and devices, so both can overlap safely.
        name = session.source_name
        task = asyncio.create_task(session.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        await asyncio.shield(task)
        logger.info("%s capture released", self.media)
        self._emit(MediaEvent(MediaEventKind.SOURCE_RELEASED, self.media, name))

    def _emit(self, event: MediaEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            logger.exception("media event handler failed")
