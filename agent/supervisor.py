"""Long-lived parts of the daemon under one supervisor, and teardown that always finishes.

:class:`Supervisor` runs each named part as a task. A part that ends with an exception is
logged and, by its :class:`Policy`, either restarted after a backoff delay (capped
exponential with full jitter, :func:`agent.retry.backoff`; a part that then runs for a while
starts again from the shortest delay) or reported to ``on_fatal``, which stops the daemon
cleanly. A part that returns is done. :meth:`Supervisor.aclose` cancels every part and
waits for them, whatever they raise.

:func:`closing` wraps a close step for an :class:`contextlib.AsyncExitStack`: a step that
raises is logged and the steps after it still run, so a failed part never leaves the
metrics server, the sensing parts, the hub connection, the embedded hub or the notifier
open behind it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

from agent import retry

__all__ = ["Policy", "Supervisor", "closing"]

log = logging.getLogger(__name__)

# A part that stayed up this long is healthy again: its next failure waits the least.
_HEALTHY_SECONDS: Final = 60.0
_RESTART_INITIAL: Final = 1.0
_RESTART_CAP: Final = 60.0

Part = Callable[[], Awaitable[None]]


class Policy(enum.Enum):
    """What a part's failure does."""

    RESTART = "restart"  # log it and run the part again after a backoff delay
    STOP = "stop"  # log it and stop the daemon cleanly (on_fatal)


class Supervisor:
    """Runs named parts; restarts or escalates their failures; cancels them all on close."""

    def __init__(
        self,
        *,
        on_fatal: Callable[[str, BaseException], None],
        delays: Callable[[], Iterator[float]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._on_fatal = on_fatal
        self._delays = delays or (lambda: retry.backoff(initial=_RESTART_INITIAL, cap=_RESTART_CAP))
        self._clock = clock or asyncio.get_running_loop().time
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, part: Part, *, policy: Policy = Policy.RESTART) -> None:
        """Run ``part`` as ``name`` (replacing a part of that name already running)."""
        self.cancel(name)
        self._tasks[name] = asyncio.create_task(self._keep(name, part, policy), name=name)

    def cancel(self, name: str) -> None:
        """Stop the part ``name`` if it runs (it finishes at the next await)."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    @property
    def running(self) -> list[str]:
        """The names of the parts not finished."""
        return [name for name, task in self._tasks.items() if not task.done()]

    async def aclose(self) -> None:
        """Cancel every part and wait for all of them."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, name: str, part: Part, policy: Policy) -> None:
        delays = self._delays()
        while True:
            started = self._clock()
            try:
                await part()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("%s failed", name)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # It raised while being cancelled: it is stopping, not failing.
                    raise asyncio.CancelledError from exc
                if policy is Policy.STOP:
                    self._on_fatal(name, exc)
                    return
            else:
                log.debug("%s finished", name)
                return
            if self._clock() - started >= _HEALTHY_SECONDS:
                delays = self._delays()
            delay = next(delays)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            log.warning("%s restarts in %.1f s", name, delay)
            await asyncio.sleep(delay)


def closing(name: str, close: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    """``close`` as a teardown step that logs a failure instead of ending the teardown."""

    async def step() -> None:
        try:
            await close()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("closing %s failed; closing the rest", name)

    return step
