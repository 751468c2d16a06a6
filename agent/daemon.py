"""The agent daemon: settings in, a supervised set of tasks out, until a signal ends it.

It is the only module that knows every component. Today it keeps the hub connection (or
runs an embedded hub when no hub URL is set), joins the configured groups, follows
SIGHUP reloads and exits 0 on SIGTERM/SIGINT after ``close_realtime()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError, EdgeAgentError

if TYPE_CHECKING:
    from agent.client import RealtimeClient
    from agent.config import Settings
    from agent.hub.server import HubServer

__all__ = ["Agent", "AgentState", "run_agent"]

log = logging.getLogger(__name__)

# A token the agent mints for itself from an embedded hub lives as long as the process;
# a restart mints a new one.
_EMBEDDED_TOKEN_TTL = 365 * 24 * 3600
_ADMIN_PASSWORD_FILE = "admin-password"  # noqa: S105 (a file name, not a password)


class AgentState(enum.Enum):
    """Where the agent's hub connection stands."""

    STARTING = "starting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    STOPPING = "stopping"


@dataclass
class _Status:
    """What STATUS= and ``edge-agent status`` report, in words."""

    state: AgentState = AgentState.STARTING
    groups: list[str] = field(default_factory=list)
    hub: str = ""

    def text(self) -> str:
        words = {
            AgentState.STARTING: "starting",
            AgentState.CONNECTING: f"connecting to {self.hub}",
            AgentState.CONNECTED: f"hub connected ({self.hub})",
            AgentState.RETRYING: f"hub unreachable, retrying ({self.hub})",
            AgentState.STOPPING: "stopping",
        }[self.state]
        groups = ", ".join(self.groups) or "none"
        return f"{words}; groups: {groups}"


class Agent:
    """One running agent: hub connection, groups, and the parts later issues add."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        reload_settings: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self._reload_settings = reload_settings
        self.status = _Status(groups=list(settings.groups))
        self.client: RealtimeClient | None = None
        self.hub: HubServer | None = None
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._status_listeners: list[Callable[[str], None]] = []
        self._notifier: Any = None

    @property
    def state(self) -> AgentState:
        """The hub connection's state."""
        return self.status.state

    def on_status(self, listener: Callable[[str], None]) -> None:
        """Call ``listener`` with the status text whenever it changes."""
        self._status_listeners.append(listener)

    def request_stop(self) -> None:
        """Ask the agent to shut down (signal handlers call this)."""
        self._stop.set()

    async def wait_connected(self) -> None:
        """Return once the hub connection is up (tests and tools use this)."""
        await self._connected.wait()

    async def run(self) -> None:
        """Run until :meth:`request_stop`; always closes what it opened."""
        try:
            url, token = await self._hub_endpoint()
            self.status.hub = url
            await self._connect(url, token)
            self._notify("READY=1")
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def reload(self) -> None:
        """Re-read settings; join and leave groups that changed, keep everything else."""
        if self._reload_settings is None:
            return
        self._notify("RELOADING=1")
        try:
            new = self._reload_settings()
        except ConfigError as exc:
            log.error("reload refused, keeping the running settings: %s", exc)  # noqa: TRY400
            self._notify("READY=1")
            return
        await self._apply_groups(list(new.groups))
        self.settings = new
        log.info("settings reloaded from %s", self.config_path or "environment")
        self._notify("READY=1")

    # -- hub connection --------------------------------------------------------------------

    async def _hub_endpoint(self) -> tuple[str, str]:
        connect = self.settings.connect
        if connect.url is None:
            return await self._start_embedded_hub()
        token = _read_token(self.settings)
        return connect.url, token

    async def _start_embedded_hub(self) -> tuple[str, str]:
        from agent.hub.accounts import Role
        from agent.hub.server import HubServer

        self.hub = HubServer(self.settings)
        await self.hub.start()
        accounts, tokens = self.hub.accounts, self.hub.tokens
        device = await asyncio.to_thread(accounts.get_by_name, self.settings.name)
        if device is None:
            device = await asyncio.to_thread(accounts.add, self.settings.name, None, Role.DEVICE)
        password_file = await asyncio.to_thread(self._ensure_admin_login)
        _print_login(self.hub.http_url, password_file)
        return self.hub.ws_url, tokens.issue(device, _EMBEDDED_TOKEN_TTL)

    def _ensure_admin_login(self) -> Path | None:
        """Create an ``admin`` login on first start; its password goes to a 0600 file."""
        from agent.hub.accounts import Role
        from agent.statedir import resolve_state_dir, write_secret

        if self.hub is None:
            return None
        accounts = self.hub.accounts
        if any(a.role is Role.ADMIN for a in accounts.list()):
            path = resolve_state_dir(self.settings.state_dir) / _ADMIN_PASSWORD_FILE
            return path if path.exists() else None
        password = secrets.token_urlsafe(12)
        accounts.add("admin", password, Role.ADMIN)
        path = resolve_state_dir(self.settings.state_dir) / _ADMIN_PASSWORD_FILE
        write_secret(path, password.encode() + b"\n")
        return path

    async def _connect(self, url: str, token: str) -> None:
        from agent.client import RealtimeClient

        self.client = RealtimeClient(url, token=token)
        self._set_state(AgentState.CONNECTING)
        await self.client.connect_realtime(self._on_message)
        for index, group in enumerate(self.settings.groups):
            await self.client.join_realtime(group, keep=index > 0)

    async def _apply_groups(self, wanted: list[str]) -> None:
        client = self.client
        if client is None:
            return
        current = self.status.groups
        for group in [g for g in current if g not in wanted]:
            await client.leave_realtime(group)
        for group in [g for g in wanted if g not in current]:
            await client.join_realtime(group, keep=True)
        self.status.groups = list(wanted)
        self._publish_status()

    def _on_message(self, message: Any) -> None:
        kind = getattr(message, "type", None)
        if kind == "success":
            self._connected.set()
            self._set_state(AgentState.CONNECTED)
        elif kind == "reconnect":
            self._connected.clear()
            self._set_state(AgentState.RETRYING)
        elif kind == "error":
            log.warning("hub: %s", getattr(message, "message", message))

    # -- status and shutdown ---------------------------------------------------------------

    def _set_state(self, state: AgentState) -> None:
        if state is self.status.state:
            return
        log.info("agent %s -> %s", self.status.state.value, state.value)
        self.status.state = state
        self._publish_status()

    def _publish_status(self) -> None:
        text = self.status.text()
        self._notify(f"STATUS={text}")
        for listener in self._status_listeners:
            listener(text)

    def _notify(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.send(message)

    async def _shutdown(self) -> None:
        self._set_state(AgentState.STOPPING)
        self._notify("STOPPING=1")
        if self.client is not None:
            with contextlib.suppress(EdgeAgentError):
                await self.client.close_realtime()
        if self.hub is not None:
            await self.hub.stop()


def run_agent(settings: Settings, *, config_path: Path | None = None) -> int:
    """Run the agent until SIGTERM or SIGINT; returns the process exit code."""

    def reload_settings() -> Settings:
        from agent.config import load_settings

        return load_settings(config_path)

    agent = Agent(settings, config_path=config_path, reload_settings=reload_settings)
    try:
        asyncio.run(_run_with_signals(agent))
    except EdgeAgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    return 0


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


def _read_token(settings: Settings) -> str:
    connect = settings.connect
    if connect.token is not None:
        return connect.token.get_secret_value()
    if connect.token_file is not None:
        try:
            return connect.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the token file: {exc.strerror}", key="connect.token_file"
            ) from exc
    raise ConfigError(
        "connect.url is set, so connect.token or connect.token_file is required "
        "(mint one on the hub with: edge-agent token --user NAME)",
        key="connect",
    )


def _print_login(http_url: str, password_file: Path | None) -> None:
    # stdout, not the log: a person at the terminal reads this once. The password itself
    # stays in its 0600 file so it never reaches a log or the journal.
    lines = [f"edge-agent: embedded hub and viewer at {http_url}/"]
    if password_file is not None:
        lines.append(f"edge-agent: log in as 'admin'; the password is in {password_file}")
    else:
        lines.append("edge-agent: add a login with: edge-agent user add NAME --role admin")
    print("\n".join(lines), flush=True)
