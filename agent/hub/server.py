"""The hub as a server: uvicorn serving the hub application, in-process or as a command.

:class:`HubServer` binds its own listening socket (so port 0 works and a bind error is a
:class:`HubAddressError` here, not uvicorn's ``sys.exit``) and drives uvicorn's startup, main
loop and shutdown without uvicorn's signal handling: whoever embeds the hub owns the signals
(uvicorn's public ``Server.serve`` installs its own; :mod:`agent.compat` checks the steps).
:func:`run_hub` is the blocking command: it stops cleanly on SIGTERM or SIGINT.

With ``hub.tls_cert`` and ``hub.tls_key`` the hub serves HTTPS and WSS (browsers allow the
microphone and web push only on a secure origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import uvicorn

from agent.compat import check_server_hooks
from agent.errors import ConfigError, EdgeAgentError
from agent.hub.access import AccessTable, accounts_share_a_group
from agent.hub.app import STATIC_DIR, HubApplication, HubServices
from agent.hub.backplane import Backplane, MemoryBackplane
from agent.hub.devices_api import IceServerItem
from agent.hub.events_api import EventsService
from agent.hub.history import DatabaseEventStore
from agent.hub.login import LoginGuard, ThrottleStore
from agent.hub.metrics import HubMetrics
from agent.hub.recorder import HistoryRecorder
from agent.hub.records import open_records
from agent.hub.snapshots import SnapshotStore
from agent.hub.tokens import TokenIssuer
from agent.hub.turn import ice_server_source
from agent.hub.wsprotocol import HubWebSocketProtocol
from agent.logs import redact
from agent.push.service import PushService
from agent.rtc.settings import IceServerSettings
from agent.statedir import resolve_state_dir

if TYPE_CHECKING:
    from agent.config import Settings

__all__ = ["HubAddressError", "HubServer", "backplane_for", "run_hub", "shared_login_throttle"]

log = logging.getLogger(__name__)

check_server_hooks()

# Connections get this long to close when the hub stops, then their tasks are cancelled.
_GRACEFUL_SHUTDOWN_SECONDS: Final = 3
_BACKLOG: Final = 2048
_REDACT_LOGGERS: Final = ("uvicorn.error", "uvicorn.access")
_CONNECTION_CHATTER: Final = ("uvicorn.error", "websockets.server")
# Why a bind fails, and which of --host/--port (hub.host/hub.port) changes it.
_BIND_FAILURES: Final = {
    errno.EADDRINUSE: ("the address is already in use", "port"),
    errno.EACCES: ("ports below 1024 need privileges", "port"),
    errno.EADDRNOTAVAIL: ("{host} is not an address of this machine", "host"),
}


class HubAddressError(EdgeAgentError, OSError):
    """The hub cannot listen on ``host``:``port``; the message names the flag and the
    setting that change it. An ``OSError`` (``errno`` from the bind) for callers that
    catch those."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        reason, change = _BIND_FAILURES.get(cause.errno or 0, (str(cause.strerror), ""))
        advice = (
            f"choose another {change} with --{change} (setting hub.{change})"
            if change
            else "check --host and --port (settings hub.host, hub.port)"
        )
        shown = f"[{host}]" if _is_ipv6(host) else host  # as given, wildcards too
        message = f"cannot listen on {shown}:{port}: {reason.format(host=shown)}; {advice}"
        super().__init__(cause.errno, message)
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


class HubServer:
    """The hub serving HTTP(S) and WebSocket on ``settings.hub.host``/``port``.

    ``state_dir`` overrides ``settings.state_dir``; ``static_dir`` the viewer's files.
    """

    def __init__(
        self, settings: Settings, *, state_dir: Path | None = None, static_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.state_dir = resolve_state_dir(state_dir or settings.state_dir)
        self.records = open_records(settings.hub, self.state_dir)
        self.accounts = self.records.accounts
        self.access = AccessTable(self.accounts)
        self._access_watch: contextlib.AsyncExitStack | None = None
        self.tokens = TokenIssuer.from_secrets(self.records.secrets)
        self.backplane: Backplane = backplane_for(
            settings.hub.backplane, password_file=settings.hub.backplane_password_file
        )
        self.metrics = HubMetrics()
        self.login_guard = LoginGuard(
            self.accounts,
            kdf_threads=settings.hub.login.kdf_threads,
            kdf_queue=settings.hub.login.kdf_queue,
            shared=shared_login_throttle(
                self.backplane, hash_key=self.tokens.derive_key("login throttle keys")
            ),
        )
        self.push = (
            PushService.from_state_dir(self.state_dir, settings.push, accounts=self.accounts)
            if isinstance(self.records.push, Path)
            else PushService.from_database(
                self.records.push, self.records.secrets, settings.push, accounts=self.accounts
            )
        )
        self.push.reaches = accounts_share_a_group  # devices alert only people they share with
        self.snapshots = SnapshotStore(self.records.snapshots)
        self.history = self._history(settings)
        self._history_run: contextlib.AsyncExitStack | None = None
        self.app = HubApplication(
            HubServices(
                accounts=self.accounts,
                access=self.access,
                tokens=self.tokens,
                backplane=self.backplane,
                metrics=self.metrics,
                limits=settings.hub.limits,
                login_guard=self.login_guard,
                static_dir=static_dir or STATIC_DIR,
                push=self.push,
                viewer_ice_servers=tuple(_ice_item(s) for s in settings.hub.ice_servers),
                viewer_groups=tuple(settings.hub.viewer_groups),
                events=(
                    EventsService(self.history, settings.hub.events.thumbnail_seconds)
                    if self.history is not None
                    else None
                ),
                snapshots=self.snapshots,
                ice=ice_server_source(
                    settings, tuple(_ice_item(s) for s in settings.hub.ice_servers)
                ),
            )
        )
        if self.history is not None:
            # Device posts and presence reach the history without waiting for it.
            self.app.realtime.on_group_post = self.history.observe_post
            self.app.realtime.on_presence = self.history.observe_presence
        self._server: uvicorn.Server | None = None
        self._main: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    @property
    def tls(self) -> bool:
        """Whether the hub serves HTTPS/WSS."""
        return self.settings.hub.tls_cert is not None

    @property
    def http_url(self) -> str:
        """Base URL to reach the hub from this machine (``https`` with TLS)."""
        return (
            f"{'https' if self.tls else 'http'}://{_url_host(self.settings.hub.host)}:{self.port}"
        )

    @property
    def ws_url(self) -> str:
        """The realtime WebSocket URL (``wss`` with TLS), without a token."""
        return f"{'wss' if self.tls else 'ws'}://{_url_host(self.settings.hub.host)}:{self.port}/ws"

    async def start(self) -> None:
        """Bind and start serving; :class:`HubAddressError` if it cannot listen."""
        if self._server is not None:
            raise RuntimeError("The hub is already started.")
        _install_log_redaction()
        config = self._uvicorn_config()
        # Routing first: a connection accepted before it could not reach other nodes.
        await self.backplane.start()
        sock = _bind(self.settings.hub.host, self.settings.hub.port)  # HubAddressError
        server = uvicorn.Server(config)
        await self._start_history()  # before any device can connect
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            await self._stop_history()
            raise
        self._server, self._socket = server, sock
        self.port = sock.getsockname()[1]
        # Account changes made elsewhere (the CLI, other nodes) reach open connections.
        watch = contextlib.AsyncExitStack()
        await watch.enter_async_context(self.access.running())
        self._access_watch = watch
        self._main = asyncio.create_task(server.main_loop(), name="hub-main-loop")
        # Push deliveries a previous run left queued go out now, not at the first send.
        await self.push.start()
        log.info("hub listening on %s (state in %s)", self.http_url, self.state_dir)

    async def stop(self) -> None:
        """Close every connection (1012), stop listening, stop push, close the stores.

        Safe after a failed :meth:`start` and when called twice; a stopped hub is not
        started again (make a new ``HubServer``).
        """
        server, main = self._server, self._main
        if server is not None and main is not None:
            server.should_exit = True
            await main
            await server.shutdown(sockets=[self._socket] if self._socket else None)
            self._server = self._main = self._socket = None
            log.info("hub stopped")
        if self._access_watch is not None:
            await self._access_watch.aclose()
            self._access_watch = None
        await self._stop_history()  # after the connections: their last posts are kept
        await self.backplane.close()
        await self.push.aclose()
        self.login_guard.close()
        self.snapshots.close()
        self.records.close()

    def _history(self, settings: Settings) -> HistoryRecorder | None:
        """The event history ([hub.events]), or ``None`` when it is turned off."""
        events = settings.hub.events
        if not events.enabled:
            return None
        store = DatabaseEventStore(self.records.events, retention=events.retention)
        return HistoryRecorder(store, self.access, connected=self._has_connections)

    async def _has_connections(self, user_id: str) -> bool:
        return bool(await self.backplane.user_connections(user_id))

    async def _start_history(self) -> None:
        run = contextlib.AsyncExitStack()
        if self.history is not None:
            await run.enter_async_context(self.history.running())
        self._history_run = run

    async def _stop_history(self) -> None:
        run, self._history_run = self._history_run, None
        if run is not None:
            await run.aclose()  # writes what is queued, then closes the store
        elif self.history is not None:
            await asyncio.to_thread(self.history.store.close)  # never started

    def _uvicorn_config(self) -> uvicorn.Config:
        hub = self.settings.hub
        config = uvicorn.Config(
            self.app,
            # uvicorn's sans-I/O protocol over websockets (no task per connection for the
            # protocol), lightened for idle connections.
            ws=HubWebSocketProtocol,
            ws_max_size=hub.limits.max_frame_bytes,
            # Compression would run once per recipient of a fan-out and cost each idle
            # connection a zlib context; realtime frames are small.
            ws_per_message_deflate=False,
            lifespan="off",
            log_config=None,  # logging is the embedding program's
            access_log=False,
            server_header=False,
            # Only these proxies may name the client (X-Forwarded-For): login throttling
            # counts per client address. uvicorn's own default reads FORWARDED_ALLOW_IPS.
            proxy_headers=bool(hub.trusted_proxies),
            forwarded_allow_ips=list(hub.trusted_proxies),
            backlog=_BACKLOG,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
            ssl_certfile=hub.tls_cert,
            ssl_keyfile=hub.tls_key,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the TLS certificate or key: {exc}", key="hub.tls_cert"
            ) from exc
        return config


def backplane_for(setting: str, *, password_file: Path | None = None) -> Backplane:
    """The backplane ``[hub] backplane`` names: ``"memory"``, or a ``redis[s]://`` URL."""
    if setting == "memory":
        return MemoryBackplane()
    # Imported here: a single hub never loads the Redis client.
    from agent.hub.backplane_redis import RedisBackplane, read_password_file

    password = read_password_file(password_file) if password_file is not None else None
    return RedisBackplane(setting, password=password)


def shared_login_throttle(backplane: Backplane, *, hash_key: bytes) -> ThrottleStore | None:
    """The login throttle the nodes on ``backplane`` share (its keys hashed with
    ``hash_key``, the same on every node); ``None`` on a single hub."""
    if isinstance(backplane, MemoryBackplane):
        return None
    from agent.hub.backplane_redis.plane import RedisBackplane
    from agent.hub.backplane_redis.throttle import RedisThrottleStore

    if not isinstance(backplane, RedisBackplane):
        return None
    return RedisThrottleStore.of(backplane, hash_key=hash_key)


def run_hub(settings: Settings) -> int:
    """Serve the hub until SIGTERM or SIGINT; 0 after a clean stop."""
    return asyncio.run(_serve_until_signal(settings))


async def _serve_until_signal(settings: Settings) -> int:
    from agent.systemd import Notifier, start_watchdog

    hub = HubServer(settings)
    notifier = Notifier.from_environ(unset=True)
    watchdog: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await hub.start()
        notifier.ready(f"serving on {hub.http_url}")
        watchdog = start_watchdog(notifier)
        await stop.wait()
        notifier.stopping("stopping")
    finally:
        if watchdog is not None:
            watchdog.cancel()
        notifier.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await hub.stop()
    return 0


def _ice_item(server: IceServerSettings) -> IceServerItem:
    credential = server.credential.get_secret_value() if server.credential else None
    return IceServerItem(urls=list(server.urls), username=server.username, credential=credential)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
    # The protocol number makes asyncio turn Nagle off on accepted connections; without it
    # every keep-alive HTTP answer after the first waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # A restarted hub must get its port back while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise HubAddressError(host, port, exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _is_ipv6(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).version == 6
    return False


def _url_host(host: str) -> str:
    # A wildcard address is not somewhere to connect to; loopback on the same machine is.
    if host in ("0.0.0.0", ""):  # noqa: S104 (comparing, not binding)
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if _is_ipv6(host) else host


class _RedactTokens(logging.Filter):
    """Blanks tokens in log records: uvicorn logs WebSocket paths with their query string,
    and at debug level the request headers (``Authorization: Bearer ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        return True


def _redact(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _install_log_redaction() -> None:
    for name in _REDACT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())
    # Two INFO lines per WebSocket opened or closed (uvicorn's "[accepted]", websockets'
    # "connection open"): ~1 ms of a core each time, a quarter of a reconnect's cost when a
    # fleet comes back after a restart. The hub logs what matters about connections itself;
    # with --log-level debug they are kept.
    for name in _CONNECTION_CHATTER:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in logger.filters):
            logger.addFilter(_DropChatter())


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG)
