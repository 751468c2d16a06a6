"""Runtime helpers of the media engine: worker threads, the capture clock, task cancelling.

PyAV containers and codec contexts are not thread-safe, so each is used from exactly one
thread: a single-thread executor per capture device or encoder gives that, and keeps
blocking reads off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["MediaClock", "SerialWorker", "cancel_and_wait"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class SerialWorker:
    """Runs blocking calls one at a time on its own thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` run on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def shutdown(self) -> None:
        """Stop accepting work; queued calls are cancelled, a running one finishes."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class MediaClock:
    """Capture timestamps for every source of one hub, so a source switch never goes back."""

    def __init__(self, time_fn: Callable[[], float] = time.monotonic) -> None:
        self._time = time_fn
        self._origin = time_fn()

    def now(self) -> float:
        """Seconds since the clock started."""
        return self._time() - self._origin

    def pts(self, rate: int) -> int:
        """Now, in ticks of ``1/rate`` seconds."""
        return int(self.now() * rate)


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` and wait for it; a cancellation of the caller still propagates."""
    if task is None or task.done():
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()  # consume it; errors were logged where they happened
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        logger.debug("cancelled task had failed", exc_info=True)
