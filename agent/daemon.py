"""The agent daemon: settings in, a supervised set of tasks out, until a signal ends it.

It is the only module that knows every component. Today it keeps the hub connection (or
runs an embedded hub when no hub URL is set), joins the configured groups, answers calls
with the camera and microphone (``[calls]``, ``[video]``, ``[audio]``), follows SIGHUP
reloads and exits 0 on SIGTERM/SIGINT after hanging up and ``close_realtime()``.

The media stack (aiortc, PyAV, the camera pipeline) is not loaded at start: the calls part
(:class:`~agent.rtc.standby.CallStandby`) loads it when a call, a snapshot or a motion rule
first needs it, or at start with ``[calls] preload = true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import Codes, ConfigError, EdgeAgentError
from agent.exposition import Exposition, labelled
from agent.metrics import process_metrics, resident_memory_bytes
from agent.supervisor import Policy, Supervisor, closing
from agent.systemd import (
    AgentStatus,
    HubLink,
    Notifier,
    StatusBoard,
    run_watchdog,
    watchdog_interval,
)

if TYPE_CHECKING:
    from agent.client import RealtimeClient
    from agent.config import Settings
    from agent.events.motion import MotionAnalyzer
    from agent.hub.server import HubServer
    from agent.media import MediaEvent, MediaHub
    from agent.metrics import MetricsServer
    from agent.rtc.callstats import CallFigures
    from agent.rtc.desk import CallDesk
    from agent.rtc.standby import CallStandby
    from agent.sensing import Sensing

__all__ = ["Agent", "run_agent"]

log = logging.getLogger(__name__)

# A token the agent mints for itself from an embedded hub lives as long as the process;
# a restart mints a new one.
_EMBEDDED_TOKEN_TTL = 365 * 24 * 3600
_MOTION_RETRY_SECONDS = 1.0
_FIGURES_SECONDS = 5.0  # how often per-call figures are read (getStats is not free)
_ADMIN_PASSWORD_FILE = "admin-password"  # noqa: S105 (a file name, not a password)


class Agent:
    """One running agent: hub connection, groups, and the parts later issues add."""

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
        self.client: RealtimeClient | None = None
        self.hub: HubServer | None = None
        self.calls: CallStandby | None = None
        self.sensing: Sensing | None = None
        self.metrics: MetricsServer | None = None
        self._reconnects = 0
        self._refusals: set[str] = set()  # hub refusals already logged (one line each)
        self._call_figures: list[CallFigures] = []
        self._supervisor: Supervisor | None = None
        self.failed_part: str | None = None  # a part whose failure stopped the agent
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()

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
        await self._connected.wait()

    async def run(self) -> None:
        """Run until :meth:`request_stop` (or a part fails for good); always closes what it
        opened, in reverse order, whatever fails on the way."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.notifier.close)  # last of all
            supervisor = Supervisor(on_fatal=self._part_failed)
            self._supervisor = supervisor
            stack.push_async_callback(closing("supervised parts", supervisor.aclose))
            try:
                url, token = await self._hub_endpoint(stack)
                client = self._make_client(url, token)
                stack.push_async_callback(closing("hub connection", self._close_client))
                await self._start_local_parts(client, stack)
                # READY=1 once local parts are up; the hub may be down and is retried.
                self.notifier.ready(self.board.text)
                self._start_watchdog(supervisor)
                await self._connect(client)
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
        log.info("settings reloaded from %s", self.config_path or "the environment")
        self.board.update(note=None)
        self.notifier.ready(self.board.text)

    # -- hub connection --------------------------------------------------------------------

    async def _hub_endpoint(self, stack: contextlib.AsyncExitStack) -> tuple[str | list[str], str]:
        connect = self.settings.connect
        if connect.url is None:
            return await self._start_embedded_hub(stack)
        token = _read_token(self.settings)
        return connect.urls, token

    async def _start_embedded_hub(self, stack: contextlib.AsyncExitStack) -> tuple[str, str]:
        from agent.hub.accounts import Role
        from agent.hub.server import HubServer

        self.hub = HubServer(self.settings)
        stack.push_async_callback(closing("embedded hub", self.hub.stop))  # safe if not started
        await self.hub.start()
        accounts, tokens = self.hub.accounts, self.hub.tokens
        device = await asyncio.to_thread(accounts.get_by_name, self.settings.name)
        if device is None:
            device = await asyncio.to_thread(
                accounts.add, self.settings.name, None, Role.DEVICE, groups=self.settings.groups
            )
        await self._grant_own_groups(self.settings.groups)
        password_file = await asyncio.to_thread(self._ensure_admin_login)
        _print_login(self.hub.http_url, password_file)
        return self.hub.ws_url, tokens.issue(device, _EMBEDDED_TOKEN_TTL)

    async def _grant_own_groups(self, groups: list[str]) -> None:
        """The embedded hub is this agent's own: its device account holds the agent's groups."""
        if self.hub is None or not groups:
            return
        await asyncio.to_thread(self.hub.accounts.grant, self.settings.name, groups)
        await self.hub.access.refresh()

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

    def _make_client(self, url: str | list[str], token: str) -> RealtimeClient:
        from agent.client import RealtimeClient

        # The calls part gives the client its peer factory when it loads (CallStandby).
        self.client = RealtimeClient(url, token=token)
        return self.client

    async def _start_local_parts(
        self, client: RealtimeClient, stack: contextlib.AsyncExitStack
    ) -> None:
        """Calls, serial ports, rules, outbox, control socket and metrics: all local."""
        stack.push_async_callback(closing("calls", self._stop_calls))
        calls = self._start_calls(client)  # before connecting: an offer may be the first frame
        if self.settings.calls.preload:
            await calls.load()
        stack.push_async_callback(closing("sensing", self._close_sensing))
        await self._start_sensing(client, self.settings)
        stack.push_async_callback(closing("metrics", self._close_metrics))
        await self._start_metrics()
        if self.settings.calls.enabled and self._supervisor is not None:
            self._supervisor.start("call figures", lambda: self._refresh_call_figures(calls))
        self._start_motion_watch()

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
        self.sensing.add_control({"status": self._control_status})
        if self.calls is not None:
            self.sensing.register_channels(self.calls.channels)
        await self.sensing.start()

    async def _connect(self, client: RealtimeClient) -> None:
        self._set_link(HubLink.CONNECTING)
        await client.connect_realtime(self._on_message)
        for index, group in enumerate(self.settings.groups):
            await client.join_realtime(group, keep=index > 0)

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

    def _on_message(self, message: Any) -> None:
        kind = getattr(message, "type", None)
        if kind == "success":
            self._connected.set()
            self._set_link(HubLink.CONNECTED)
        elif kind == "reconnect":
            self._reconnects += 1
            self._connected.clear()
            self._set_link(HubLink.RETRYING)
        elif kind == "error":
            text = str(getattr(message, "message", message))
            if getattr(message, "code", None) != Codes.FORBIDDEN:
                log.warning("hub: %s", text)
            elif text not in self._refusals:
                # A group this device is not granted: said once, with the command that fixes it.
                self._refusals.add(text)
                log.error("hub refused: %s", text)

    # -- calls -----------------------------------------------------------------------------

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
            on_media_event=self._media_event,
            status_extra=self._status_fields,
            on_calls=self._calls_changed,
        )
        self.calls.start()
        return self.calls

    def _camera(self) -> Callable[[], Awaitable[bytes]] | None:
        """Pictures for snapshots and motion (the first one loads the media stack)."""
        if self.calls is None or not self.settings.calls.enabled:
            return None  # calls disabled: no camera either
        return self.calls.snapshot

    def _port_changed(self, name: str, up: bool) -> None:
        self.board.set_sensor(name, up=up)

    def _calls_changed(self, count: int) -> None:
        self.board.update(calls=count)

    def _media_event(self, event: MediaEvent) -> None:
        from agent.media import MediaEventKind

        present = {
            MediaEventKind.SOURCE_OPENED: True,
            MediaEventKind.SOURCE_FAILED: False,
            MediaEventKind.SOURCE_LOST: False,
        }.get(event.kind)
        if present is not None and self.sensing is not None:
            # Rules may watch the camera and microphone come and go.
            kind = "camera" if event.media == "video" else "microphone"
            self.sensing.engine.on_device(kind, event.source, present)

    def _status_fields(self) -> dict[str, Any]:
        status = self.board.status
        fields: dict[str, Any] = {"hub": status.hub.value, "groups": list(status.groups)}
        if self.sensing is not None:
            fields.update(self.sensing.status())
        return fields

    async def _control_status(self, _request: dict[str, Any]) -> dict[str, Any]:
        """``edge-agent status``: the STATUS= words, then one line per part."""
        fields = self._status_fields()
        lines = [self.board.text]
        for name, port in fields.get("sensors", {}).items():
            lines.append(f"serial {name}: {port.get('state')} ({port.get('readings', 0)} readings)")
        for name, rule in fields.get("events", {}).items():
            lines.append(f"event {name}: {_fired_text(int(rule.get('fired', 0)))}")
        stack = self.calls.status() if self.calls is not None else None
        if self.media is not None:
            lines.append(f"media: {self.media.viewers} viewers")
        lines.extend(_call_line(f) for f in self._call_figures)
        rss = resident_memory_bytes()
        lines.append(_memory_line(rss, stack))
        fields["memory"] = {"resident_bytes": rss}
        if stack is not None:
            fields["media_stack"] = stack
        return {"ok": True, "lines": lines, **fields}

    # -- metrics ---------------------------------------------------------------------------

    async def _start_metrics(self) -> None:
        from agent.metrics import MetricsServer

        options = self.settings.metrics
        if not options.enabled:
            return
        self.metrics = MetricsServer(self._render_metrics, host=options.host, port=options.port)
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
        analyzer = self.sensing.engine.motion_analyzer() if self.sensing else None
        camera = self._camera()
        if analyzer is not None and camera is not None:
            # The first picture loads the media stack: a motion rule needs the camera.
            supervisor.start("motion watch", lambda: _watch_motion(camera, analyzer))

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

    async def _refresh_call_figures(self, calls: CallStandby) -> None:
        """Keep per-call figures fresh for the (synchronous) metrics and status answers."""
        while True:
            desk = calls.desk  # None until the first call loads the stack
            try:
                self._call_figures = await desk.call_figures() if desk and desk.calls else []
            except Exception:  # a call ending under us: skip this round
                log.debug("call figures not read this round", exc_info=True)
            await asyncio.sleep(_FIGURES_SECONDS)

    def _render_metrics(self) -> str:
        out = Exposition("edge_agent_")
        link = self.board.status.hub
        out.add(
            "hub_connected",
            "gauge",
            "1 while the hub connection is open.",
            int(link is HubLink.CONNECTED),
        )
        out.add("hub_reconnects_total", "counter", "Hub connection losses.", self._reconnects)
        if self.calls is not None:
            self.calls.add_metrics(out)
        _call_metrics(out, self._call_figures)
        text = out.render()
        if self.sensing is not None:
            text += self.sensing.metrics()
        return text + process_metrics()

    async def _stop_calls(self) -> None:
        if self.calls is not None:
            await self.calls.aclose()

    # -- status and shutdown ---------------------------------------------------------------

    def _set_link(self, link: HubLink) -> None:
        old = self.board.status.hub
        if link is not old:
            log.info("hub link %s -> %s", old.value, link.value)
            self.board.update(hub=link)

    async def _close_client(self) -> None:
        if self.client is not None:
            with contextlib.suppress(EdgeAgentError):
                await self.client.close_realtime()

    async def _close_sensing(self) -> None:
        if self.sensing is not None:
            await self.sensing.close()

    async def _close_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()


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


def _sensing_changed(old: Settings, new: Settings) -> bool:
    """Whether a reload touches what :class:`~agent.sensing.Sensing` was built from."""
    return any(
        getattr(old, key) != getattr(new, key)
        for key in ("serial", "sensors", "events", "push", "name", "groups", "state_dir")
    )


async def _watch_motion(snapshot: Callable[[], Awaitable[bytes]], analyzer: MotionAnalyzer) -> None:
    """Score one picture per interval. Pictures come through the snapshot path, which keeps
    the camera open while they are asked for more often than it lingers; the JPEG is
    decoded off the loop."""
    while True:
        try:
            jpeg = await snapshot()
            frame = await asyncio.to_thread(_decode_jpeg, jpeg)
        except (TimeoutError, EdgeAgentError, ValueError) as exc:
            log.warning("motion: no picture this round: %s", exc)
            await asyncio.sleep(_MOTION_RETRY_SECONDS)
            continue
        analyzer.feed_frame(frame)
        await asyncio.sleep(analyzer.seconds_until_due())


def _decode_jpeg(jpeg: bytes) -> Any:
    import io

    import av

    with av.open(io.BytesIO(jpeg), mode="r", format="mjpeg") as container:
        return next(container.decode(video=0))


def _fired_text(count: int) -> str:
    """How often a rule fired, in words: "not fired yet", "fired once", "fired 3 times"."""
    if count == 0:
        return "not fired yet"
    return "fired once" if count == 1 else f"fired {count} times"


def _call_line(f: CallFigures) -> str:
    def ms(value: float | None) -> str:
        return "?" if value is None else f"{value * 1000:.0f} ms"

    rate = "?" if f.bitrate_bps is None else f"{f.bitrate_bps / 1000:.0f} kbit/s"
    return (
        f"call {f.cid}: first frame {ms(f.first_frame_seconds)}, ICE {ms(f.ice_setup_seconds)}, "
        f"route {f.candidate_type or '?'}, RTT {ms(f.rtt_seconds)}, {rate}"
    )


def _memory_line(rss: int | None, stack: dict[str, Any] | None) -> str:
    """``memory: 52.1 MB resident; media stack not loaded (loads on the first call ...)``."""
    text = "memory: " + ("?" if rss is None else f"{rss / 1e6:.1f} MB") + " resident"
    if stack is None:
        return text
    if stack["failure"] is not None:
        return f"{text}; media stack failed to load: {stack['failure']}"
    if stack["load_seconds"] is None:
        return f"{text}; media stack not loaded (loads on the first call or snapshot)"
    return f"{text}; media stack loaded in {stack['load_seconds'] * 1000:.0f} ms"


def _call_metrics(out: Exposition, figures: list[CallFigures]) -> None:
    def per_call(value: Callable[[CallFigures], float | None]) -> list[tuple[str, float]]:
        found = {f.cid: value(f) for f in figures}
        return labelled("call", {cid: v for cid, v in found.items() if v is not None})

    out.add(
        "call_first_frame_seconds",
        "gauge",
        "Offer to first video frame sent, per call.",
        per_call(lambda f: f.first_frame_seconds),
    )
    out.add(
        "call_ice_setup_seconds",
        "gauge",
        "Offer to ICE connected, per call.",
        per_call(lambda f: f.ice_setup_seconds),
    )
    out.add(
        "call_rtt_seconds",
        "gauge",
        "Round-trip time reported by the viewer, per call.",
        per_call(lambda f: f.rtt_seconds),
    )
    out.add(
        "call_bitrate_bps",
        "gauge",
        "Bits per second sent, per call.",
        per_call(lambda f: f.bitrate_bps),
    )
    routes = Counter(f.candidate_type or "unknown" for f in figures)
    out.add(
        "calls_by_route",
        "gauge",
        "Calls by the local candidate type of their route.",
        labelled("route", dict(routes)),
    )


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
