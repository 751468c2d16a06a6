"""The agent daemon: settings in, a supervised set of parts out, until a signal ends it.

This module is the lifecycle: a :class:`~agent.supervisor.Supervisor` runs the long-lived
parts, an ``AsyncExitStack`` closes everything that was opened whatever fails, signals stop
and reload the agent, and systemd hears READY, RELOADING, STOPPING, STATUS and the
watchdog (sd_notify(3)). What the parts are and how they are connected is
:mod:`agent.wiring`'s business: the hub connection (or an embedded hub when no hub URL is
set), the configured groups, calls with the camera and microphone (``[calls]``,
``[video]``, ``[audio]``), serial ports, rules and alerts. SIGTERM/SIGINT hang up and
``close_realtime()``, and the process exits 0.

The media stack (aiortc, PyAV, the camera pipeline) is not loaded at start: the calls part
(:class:`~agent.rtc.standby.CallStandby`) loads it when a call, a snapshot or a motion rule
first needs it, or at start with ``[calls] preload = true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError, EdgeAgentError
from agent.supervisor import Policy, Supervisor, closing
from agent.systemd import AgentStatus, Notifier, StatusBoard, run_watchdog, watchdog_interval
from agent.wiring import AgentParts

if TYPE_CHECKING:
    from agent.client import RealtimeClient
    from agent.config import Settings
    from agent.hub.server import HubServer
    from agent.media import MediaHub
    from agent.metrics import MetricsServer
    from agent.rtc.desk import CallDesk
    from agent.rtc.standby import CallStandby
    from agent.sensing import Sensing

__all__ = ["Agent", "run_agent"]

log = logging.getLogger(__name__)


class Agent:
    """One running agent: its parts (:class:`~agent.wiring.AgentParts`) and their lifecycle."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self._reload_settings = reload_settings
        # Children (exec video sources) must not inherit the notify socket.
        self.notifier = notifier or Notifier.from_environ(unset=True)
        self.board = StatusBoard(self.notifier, AgentStatus(groups=tuple(settings.groups)))
        self.parts = AgentParts(settings, board=self.board)
        self._supervisor: Supervisor | None = None
        self.failed_part: str | None = None  # a part whose failure stopped the agent
        self._stop = asyncio.Event()

    @property
    def client(self) -> RealtimeClient | None:
        """The hub connection, once running."""
        return self.parts.client

    @property
    def hub(self) -> HubServer | None:
        """The embedded hub, when no hub URL is set."""
        return self.parts.hub

    @property
    def calls(self) -> CallStandby | None:
        """The calls part, once running."""
        return self.parts.calls

    @property
    def sensing(self) -> Sensing | None:
        """Serial ports, rules, outbox and control socket, once running."""
        return self.parts.sensing

    @property
    def metrics(self) -> MetricsServer | None:
        """The Prometheus endpoint, when enabled and its port was free."""
        return self.parts.metrics

    @property
    def desk(self) -> CallDesk | None:
        """The desk answering calls, once the media stack is loaded."""
        return self.calls.desk if self.calls is not None else None

    @property
    def media(self) -> MediaHub | None:
        """The camera and microphone, once the media stack is loaded."""
        return self.calls.media if self.calls is not None else None

    @property
    def supervisor(self) -> Supervisor | None:
        """The supervisor of the running agent's long-lived parts (``None`` when not running).

        A program embedding the agent may add parts of its own to it.
        """
        return self._supervisor

    def request_stop(self) -> None:
        """Ask the agent to shut down (signal handlers call this)."""
        self._stop.set()

    async def wait_connected(self) -> None:
        """Return once the hub connection is up (tests and tools use this)."""
        await self.parts.link.connected.wait()

    async def run(self) -> None:
        """Run until :meth:`request_stop` (or a part fails for good); always closes what it
        opened, in reverse order, whatever fails on the way."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.notifier.close)  # last of all
            supervisor = Supervisor(on_fatal=self._part_failed)
            self._supervisor = supervisor
            stack.push_async_callback(closing("supervised parts", supervisor.aclose))
            try:
                await self.parts.open(stack, supervisor)
                # READY=1 once local parts are up; the hub may be down and is retried.
                self.notifier.ready(self.board.text)
                self._start_watchdog(supervisor)
                await self.parts.connect()
                await self._stop.wait()
            finally:
                self.notifier.stopping("stopping")

    async def reload(self) -> None:
        """Re-read settings; join and leave groups that changed, keep everything else."""
        if self._reload_settings is None:
            return
        self.notifier.reloading("reloading settings")
        try:
            new = self._reload_settings()
        except ConfigError as exc:
            log.error("reload refused, keeping the running settings: %s", exc)  # noqa: TRY400
            self.board.update(note=f"reload refused: {exc}")
            self.notifier.ready(self.board.text)
            return
        await self.parts.apply(new)
        self.settings = new
        log.info("settings reloaded from %s", self.config_path or "the environment")
        self.board.update(note=None)
        self.notifier.ready(self.board.text)

    def _start_watchdog(self, supervisor: Supervisor) -> None:
        """WATCHDOG=1 from the loop itself (sd_notify(3)), if systemd asked for it."""
        interval = watchdog_interval()
        if interval is not None and self.notifier.enabled:
            # A watchdog that cannot ping must not go unnoticed: systemd would restart us.
            supervisor.start(
                "watchdog", lambda: run_watchdog(self.notifier, interval), policy=Policy.STOP
            )

    def _part_failed(self, name: str, _exc: BaseException) -> None:
        log.error("%s failed for good; stopping the agent", name)
        self.failed_part = name
        self._stop.set()


def run_agent(
    settings: Settings,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> int:
    """Run the agent until SIGTERM or SIGINT; returns the process exit code.

    ``overrides`` are the command line's settings (``--state-dir``, ``--port``, ...): a
    reload (SIGHUP) reads the file and the environment again and applies them on top, as
    the start did.
    """

    def reload_settings() -> Settings:
        from agent.config import load_settings

        return load_settings(config_path, **(overrides or {}))

    agent = Agent(settings, config_path=config_path, reload_settings=reload_settings)
    try:
        asyncio.run(_run_with_signals(agent))
    except EdgeAgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    # A part that failed for good stopped the agent: exit 1 so that systemd restarts it.
    return 1 if agent.failed_part is not None else 0


async def _run_with_signals(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(agent.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, agent.request_stop)
    loop.add_signal_handler(signal.SIGINT, agent.request_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await agent.run()
