"""The one place that builds the agent's parts from its settings and connects them.

The parts: the hub endpoint (an embedded hub when ``connect.url`` is unset), the realtime
client, the calls part (:class:`~agent.rtc.standby.CallStandby`), the device's senses
(:class:`~agent.sensing.Sensing`: serial ports, rules, alert outbox, control socket) and the
metrics endpoint. Each part publishes its own metrics and status lines (:class:`Part`) and
tells of its own events through callbacks; :class:`AgentParts` only connects them:

- the calls part's camera is the senses' camera (snapshots and motion), and the camera and
  microphone coming and going reach the device rules (:meth:`Sensing.device_presence`);
- serial ports, the hub link and the number of calls reach the status board (``STATUS=``);
- the senses serve the calls' ``sensors`` and ``serial:NAME`` data channels, and the
  ``status`` command of the control socket;
- ``/metrics`` and ``edge-agent status`` are the parts' own figures, in a fixed order.

The daemon (:mod:`agent.daemon`) owns the lifecycle around this: the supervisor, the exit
stack that closes what was opened, signals, reloads and systemd notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.errors import Codes, ConfigError, EdgeAgentError
from agent.exposition import Exposition
from agent.metrics import memory_line, process_metrics, resident_memory_bytes
from agent.supervisor import Supervisor, closing
from agent.systemd import HubLink, StatusBoard

if TYPE_CHECKING:
    from agent.client import RealtimeClient
    from agent.config import Settings
    from agent.hub.server import HubServer
    from agent.metrics import MetricsServer
    from agent.rtc.standby import CallStandby
    from agent.sensing import Sensing

__all__ = ["AgentParts", "HubLinkWatch", "Part"]

log = logging.getLogger(__name__)

# A token the agent mints for itself from an embedded hub lives as long as the process;
# a restart mints a new one.
_EMBEDDED_TOKEN_TTL = 365 * 24 * 3600
_ADMIN_PASSWORD_FILE = "admin-password"  # noqa: S105 (a file name, not a password)
# What Sensing is built from: a reload that changes one of these restarts it.
_SENSING_KEYS = ("serial", "sensors", "events", "push", "name", "groups", "state_dir")


class Part(Protocol):
    """What a part of the agent publishes about itself."""

    def render_metrics(self) -> str:
        """Its Prometheus families, as exposition text (``edge_agent_`` names)."""

    def status_lines(self) -> list[str]:
        """Its lines of ``edge-agent status``."""


class HubLinkWatch:
    """The hub link as the agent sees it: its state on the status board, losses counted,
    each refusal of the hub said once."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._refusals: set[str] = set()  # hub refusals already logged (one line each)

    def on_message(self, message: Any) -> None:
        """The client's callback: ``success``, ``reconnect`` and ``error`` change the link."""
        kind = getattr(message, "type", None)
        if kind == "success":
            self.connected.set()
            self.set(HubLink.CONNECTED)
        elif kind == "reconnect":
            self.reconnects += 1
            self.connected.clear()
            self.set(HubLink.RETRYING)
        elif kind == "error":
            self._hub_error(message)

    def set(self, link: HubLink) -> None:
        """Record a link state (logged when it changes)."""
        old = self.board.status.hub
        if link is not old:
            log.info("hub link %s -> %s", old.value, link.value)
            self.board.update(hub=link)

    def status(self) -> dict[str, Any]:
        """``hub`` (the link state) and ``groups`` (joined), for status answers."""
        status = self.board.status
        return {"hub": status.hub.value, "groups": list(status.groups)}

    def status_lines(self) -> list[str]:
        """The ``STATUS=`` words, which begin with the hub link."""
        return [self.board.text]

    def render_metrics(self) -> str:
        """Whether the link is open, and how often it was lost."""
        out = Exposition("edge_agent_")
        link = self.board.status.hub
        out.add(
            "hub_connected",
            "gauge",
            "1 while the hub connection is open.",
            int(link is HubLink.CONNECTED),
        )
        out.add("hub_reconnects_total", "counter", "Hub connection losses.", self.reconnects)
        return out.render()

    def _hub_error(self, message: Any) -> None:
        text = str(getattr(message, "message", message))
        if getattr(message, "code", None) != Codes.FORBIDDEN:
            log.warning("hub: %s", text)
        elif text not in self._refusals:
            # A group this device is not granted: said once, with the command that fixes it.
            self._refusals.add(text)
            log.error("hub refused: %s", text)


class AgentParts:
    """Every part of one running agent, built from its settings and connected."""

    def __init__(self, settings: Settings, *, board: StatusBoard) -> None:
        """Nothing is built before :meth:`open`; ``board`` receives the parts' states."""
        self.settings = settings
        self.board = board
        self.link = HubLinkWatch(board)
        self.client: RealtimeClient | None = None
        self.hub: HubServer | None = None
        self.calls: CallStandby | None = None
        self.sensing: Sensing | None = None
        self.metrics: MetricsServer | None = None
        self._supervisor: Supervisor | None = None

    async def open(self, stack: contextlib.AsyncExitStack, supervisor: Supervisor) -> None:
        """Build and start every local part; ``stack`` closes each one, whatever fails, and
        ``supervisor`` runs their long-lived loops. The hub is not reached yet."""
        from agent.client import RealtimeClient

        self._supervisor = supervisor
        url, token = await self._hub_endpoint(stack)
        # The calls part gives the client its peer factory when it loads (CallStandby).
        client = self.client = RealtimeClient(url, token=token)
        stack.push_async_callback(closing("hub connection", self._close_client))
        stack.push_async_callback(closing("calls", self._stop_calls))
        calls = self._start_calls(client)  # before connecting: an offer may be the first frame
        if self.settings.calls.preload:
            await calls.load()
        stack.push_async_callback(closing("sensing", self._close_sensing))
        await self._start_sensing(client, self.settings)
        stack.push_async_callback(closing("metrics", self._close_metrics))
        await self._start_metrics()
        if self.settings.calls.enabled:
            supervisor.start("call figures", calls.figures.run)
        self._start_motion_watch()

    async def connect(self) -> None:
        """Connect to the hub (retried by the client) and join the configured groups."""
        client = self.client
        if client is None:  # not opened: nothing to connect
            return
        self.link.set(HubLink.CONNECTING)
        await client.connect_realtime(self.link.on_message)
        for index, group in enumerate(self.settings.groups):
            await client.join_realtime(group, keep=index > 0)

    async def apply(self, new: Settings) -> None:
        """Apply reloaded settings: join and leave groups that changed, restart the senses
        if what they are built from changed, keep everything else."""
        await self._apply_groups(list(new.groups))
        if self.client is not None and _sensing_changed(self.settings, new):
            # Ports and rules restart; the outbox keeps its alerts on disk in between.
            if self.sensing is not None:
                await self.sensing.close()
            for name, _up in self.board.status.sensors:
                self.board.remove_sensor(name)
            await self._start_sensing(self.client, new)
            self._start_motion_watch()
            log.info("serial ports, event rules and alerts restarted with the new settings")
        self.settings = new

    def parts(self) -> list[Part]:
        """The parts that publish figures, in the order ``/metrics`` and status show them."""
        found: list[Part | None] = [self.link, self.calls, self.sensing]
        return [part for part in found if part is not None]

    def render_metrics(self) -> str:
        """The ``/metrics`` text: every part's families, then the process's memory."""
        return "".join(part.render_metrics() for part in self.parts()) + process_metrics()

    def status_fields(self) -> dict[str, Any]:
        """The hub link, groups, ports, rules and outbox, for every status answer."""
        fields = self.link.status()
        if self.sensing is not None:
            fields.update(self.sensing.status())
        return fields

    async def control_status(self, _request: dict[str, Any]) -> dict[str, Any]:
        """``edge-agent status``: the STATUS= words, then one line per part, then memory."""
        fields = self.status_fields()
        lines = [line for part in self.parts() for line in part.status_lines()]
        rss = resident_memory_bytes()
        lines.append(memory_line(rss, None if self.calls is None else self.calls.stack_words()))
        fields["memory"] = {"resident_bytes": rss}
        if self.calls is not None:
            fields["media_stack"] = self.calls.status()
        return {"ok": True, "lines": lines, **fields}

    # -- hub endpoint ----------------------------------------------------------------------

    async def _hub_endpoint(self, stack: contextlib.AsyncExitStack) -> tuple[str | list[str], str]:
        connect = self.settings.connect
        if connect.url is None:
            return await self._start_embedded_hub(stack)
        return connect.urls, _read_token(self.settings)

    async def _start_embedded_hub(self, stack: contextlib.AsyncExitStack) -> tuple[str, str]:
        from agent.hub.accounts import Role
        from agent.hub.server import HubServer

        settings = self.settings
        self.hub = hub = HubServer(settings)
        stack.push_async_callback(closing("embedded hub", hub.stop))  # safe if not started
        await hub.start()
        device = await asyncio.to_thread(hub.accounts.get_by_name, settings.name)
        if device is None:
            device = await asyncio.to_thread(
                hub.accounts.add, settings.name, None, Role.DEVICE, groups=settings.groups
            )
        await self._grant_own_groups(settings.groups)
        password_file = await asyncio.to_thread(_ensure_admin_login, hub, settings.state_dir)
        _print_login(hub.http_url, password_file)
        return hub.ws_url, hub.tokens.issue(device, _EMBEDDED_TOKEN_TTL)

    async def _grant_own_groups(self, groups: list[str]) -> None:
        """The embedded hub is this agent's own: its device account holds the agent's groups."""
        if self.hub is None or not groups:
            return
        await asyncio.to_thread(self.hub.accounts.grant, self.settings.name, groups)
        await self.hub.access.refresh()

    async def _apply_groups(self, wanted: list[str]) -> None:
        client = self.client
        if client is None:
            return
        current = client.groups
        await self._grant_own_groups(wanted)
        for group in [g for g in current if g not in wanted]:
            await client.leave_realtime(group)
        for group in [g for g in wanted if g not in current]:
            await client.join_realtime(group, keep=True)
        log.info("groups now: %s", ", ".join(wanted) or "none")
        self.board.update(groups=wanted)

    # -- local parts -----------------------------------------------------------------------

    def _start_calls(self, client: RealtimeClient) -> CallStandby:
        """Answer calls with the configured camera, microphone and talk-back (loaded on the
        first need); with calls disabled, refuse them."""
        from agent.rtc.standby import CallStandby

        settings = self.settings
        self.calls = CallStandby(
            client,
            device=settings.name,
            calls=settings.calls,
            video=settings.video,
            audio=settings.audio,
            accounts=self.hub.accounts if self.hub is not None else None,
            on_device=self._device_presence,
            status_extra=self.status_fields,
            on_calls=self._calls_changed,
        )
        self.calls.start()
        return self.calls

    async def _start_sensing(self, client: RealtimeClient, settings: Settings) -> None:
        from agent.sensing import Sensing
        from agent.statedir import resolve_state_dir

        self.sensing = Sensing(
            settings,
            state_dir=resolve_state_dir(settings.state_dir),
            client=client,
            on_port=self._port_changed,
            camera=self._camera(),
        )
        self.sensing.add_control({"status": self.control_status})
        if self.calls is not None:
            self.sensing.register_channels(self.calls.channels)
        await self.sensing.start()

    async def _start_metrics(self) -> None:
        from agent.metrics import MetricsServer

        options = self.settings.metrics
        if not options.enabled:
            return
        self.metrics = MetricsServer(self.render_metrics, host=options.host, port=options.port)
        try:
            await self.metrics.start()
        except OSError as exc:
            # A busy port costs the metrics, not the agent.
            log.error("metrics endpoint not started on %s:%d: %s", options.host, options.port, exc)  # noqa: TRY400
            self.metrics = None

    def _start_motion_watch(self) -> None:
        """Feed camera pictures to the motion rules, if any rule watches motion."""
        supervisor = self._supervisor
        if supervisor is None:
            return
        supervisor.cancel("motion watch")
        watch = self.sensing.motion_watch() if self.sensing is not None else None
        if watch is not None:
            # The first picture loads the media stack: a motion rule needs the camera.
            supervisor.start("motion watch", watch)

    def _camera(self) -> Callable[[], Awaitable[bytes]] | None:
        """Pictures for snapshots and motion (the first one loads the media stack)."""
        if self.calls is None or not self.settings.calls.enabled:
            return None  # calls disabled: no camera either
        return self.calls.snapshot

    # -- callbacks between parts -----------------------------------------------------------

    def _device_presence(self, kind: str, source: str, present: bool) -> None:
        if self.sensing is not None:
            self.sensing.device_presence(kind, source, present)

    def _port_changed(self, name: str, up: bool) -> None:
        self.board.set_sensor(name, up=up)

    def _calls_changed(self, count: int) -> None:
        self.board.update(calls=count)

    # -- closing ---------------------------------------------------------------------------

    async def _close_client(self) -> None:
        if self.client is not None:
            with contextlib.suppress(EdgeAgentError):
                await self.client.close_realtime()

    async def _stop_calls(self) -> None:
        if self.calls is not None:
            await self.calls.aclose()

    async def _close_sensing(self) -> None:
        if self.sensing is not None:
            await self.sensing.close()

    async def _close_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()


def _sensing_changed(old: Settings, new: Settings) -> bool:
    """Whether a reload touches what :class:`~agent.sensing.Sensing` was built from."""
    return any(getattr(old, key) != getattr(new, key) for key in _SENSING_KEYS)


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


def _ensure_admin_login(hub: HubServer, state_dir: Path | None) -> Path | None:
    """Create an ``admin`` login on first start; its password goes to a 0600 file."""
    from agent.hub.accounts import Role
    from agent.statedir import resolve_state_dir, write_secret

    path = resolve_state_dir(state_dir) / _ADMIN_PASSWORD_FILE
    if any(a.role is Role.ADMIN for a in hub.accounts.list()):
        return path if path.exists() else None
    password = secrets.token_urlsafe(12)
    hub.accounts.add("admin", password, Role.ADMIN)
    write_secret(path, password.encode() + b"\n")
    return path


def _print_login(http_url: str, password_file: Path | None) -> None:
    # stdout, not the log: a person at the terminal reads this once. The password itself
    # stays in its 0600 file so it never reaches a log or the journal.
    lines = [f"edge-agent: embedded hub and viewer at {http_url}/"]
    if password_file is not None:
        lines.append(f"edge-agent: log in as 'admin'; the password is in {password_file}")
    else:
        lines.append("edge-agent: add a login with: edge-agent user add NAME --role admin")
    print("\n".join(lines), flush=True)
