"""RealtimeLink: one client's WebSocket to the hub, kept open, and the groups it is in.

It tries the hub URLs in turn (:mod:`agent.client.addresses`), serves the connection
(reader, ``keepAlive`` every ``keepalive_interval``), and after a loss waits as the
schedule of :mod:`agent.retry` says (what a failure means comes from
:mod:`agent.client.failures`) and tries again, until :meth:`RealtimeLink.close` or a
failure no retry can fix. On each (re)connection it rejoins the groups (the first
plainly, the rest with ``keep``) under the same lock that joins take, and only then is
the link ``OPEN``: no post reaches a group not yet joined.

What the owner sees: the :class:`ConnectionState`; the ``first_attempt`` future (settled
with ``None`` or the error that ended the link); ``emit`` with ``success``,
``reconnect``, ``error`` (a refused token, a link given up) and ``close`` messages;
``on_frame`` with every hub frame that parses (called on the reader: it must not block).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent import retry
from agent.client import addresses, failures
from agent.errors import Codes, RealtimeError, Texts
from agent.logs import redact
from agent.messages import MessageType, RealtimeMessage
from agent.protocol import (
    ClientAction,
    HubFrame,
    JoinRoom,
    KeepAlive,
    LeaveRoom,
    Limits,
    ProtocolError,
    encode_client_action,
    parse_hub_frame,
)

__all__ = ["ConnectionState", "LinkOptions", "RealtimeLink"]

log = logging.getLogger(__name__)

_CONNECTED_TEXT: Final = "Connected to WebSocket server."
_CLOSED_TEXT: Final = "WebSocket connection closed."
_CLOSE_SECONDS: Final = 2.0


class ConnectionState(enum.Enum):
    """Where the client's hub connection stands."""

    IDLE = "idle"  # connect_realtime() not called yet
    CONNECTING = "connecting"  # first attempt under way
    OPEN = "open"
    RECONNECTING = "reconnecting"  # waiting to retry, or retrying
    CLOSED = "closed"  # close_realtime() called, or gave up


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """The settings of a link (see ``RealtimeClient``'s arguments of the same names)."""

    token: str
    schedule: Callable[[], retry.ReconnectSchedule]  # a fresh schedule per started link
    keepalive_interval: float = 15.0
    open_timeout: float = 10.0
    max_frame_bytes: int = Limits().max_frame_bytes
    ssl_context: ssl.SSLContext | None = None


class RealtimeLink:
    """The hub connection of one client (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        options: LinkOptions,
        *,
        emit: Callable[[RealtimeMessage], None],
        on_frame: Callable[[HubFrame], None],
    ) -> None:
        self._urls = tuple(urls)
        self._url = self._urls[0]
        # The hub address the last connection used: the next attempt starts after it.
        self._last: addresses.Candidate | None = None
        self._options = options
        self._emit = emit
        self._on_frame = on_frame
        self._state = ConnectionState.IDLE
        self._groups: list[str] = []
        self._join_lock = asyncio.Lock()
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self.first_attempt: asyncio.Future[BaseException | None] | None = None

    @property
    def state(self) -> ConnectionState:
        """Where the connection stands."""
        return self._state

    @property
    def url(self) -> str:
        """The WebSocket URL in use (or to try first), without the token."""
        return self._url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every hub URL, in the order given."""
        return self._urls

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups joined (and rejoined after a reconnect), in join order."""
        return tuple(self._groups)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran and :meth:`close` has not."""
        return self._runner is not None

    @property
    def gave_up(self) -> bool:
        """Whether the link ended by itself (a failure no retry fixes)."""
        return self._runner is not None and self._runner.done()

    def require_started(self) -> None:
        """Raises RealtimeError INVALID_REQUEST (the reference's text) unless started."""
        if self._runner is None or self._state is ConnectionState.CLOSED:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NO_CONNECTION)

    def require_open(self) -> None:
        """Raises RealtimeError INVALID_REQUEST (the reference's texts) unless open."""
        self.require_started()
        if self._state is not ConnectionState.OPEN:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN)

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        loop = asyncio.get_running_loop()
        self.first_attempt = loop.create_future()
        self._set_state(ConnectionState.CONNECTING)
        self._runner = loop.create_task(self._supervise(), name=f"realtime {self._url}")

    async def close(self) -> bool:
        """Stop reconnecting, close the connection, emit ``close``; whether it was started."""
        runner, self._runner = self._runner, None
        if runner is None:
            return False
        if not runner.done():
            runner.cancel()
            await asyncio.wait([runner])
        self._finish()
        return True

    async def join(self, group: str, *, keep: bool) -> None:
        """Join ``group`` (leaving the others unless ``keep``), now or once open."""
        async with self._join_lock:
            if not keep:
                self._groups.clear()
            if group not in self._groups:
                self._groups.append(group)
            await self._send_if_open(JoinRoom(group, keep=keep))

    async def leave(self, group: str) -> None:
        """Leave ``group`` and stay in the others."""
        async with self._join_lock:
            if group in self._groups:
                self._groups.remove(group)
                await self._send_if_open(LeaveRoom(group))

    async def leave_all(self) -> None:
        """Leave every group."""
        async with self._join_lock:
            if self._groups:
                self._groups.clear()
                await self._send_if_open(JoinRoom(None))

    async def send(self, action: ClientAction) -> None:
        """Send one action on the open connection.

        Raises:
            RealtimeError: INVALID_PARAMETER for an unserializable or oversized frame;
                INVALID_REQUEST (the reference's text) when the connection is not open.
        """
        try:
            text = encode_client_action(action)
        except (TypeError, ValueError) as exc:
            raise RealtimeError(
                Codes.INVALID_PARAMETER, f"Message must be JSON-serializable: {exc}"
            ) from exc
        size, limit = len(text.encode()), self._options.max_frame_bytes
        if size > limit:
            raise RealtimeError(
                Codes.INVALID_PARAMETER,
                f"Message frame is {size} bytes; the hub accepts up to {limit}.",
            )
        ws = self._ws
        if ws is None:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN)
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN) from exc

    async def _send_if_open(self, action: ClientAction) -> None:
        # Group changes are remembered either way: a closed connection is rejoined with
        # the current groups when it reopens.
        if self._state is ConnectionState.OPEN:
            with contextlib.suppress(RealtimeError):
                await self.send(action)

    # -- the connection loop -----------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: report it and close rather than die silently
            log.exception("realtime connection loop failed")
            self._give_up(exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        schedule = self._options.schedule()
        attempt = 0
        error: Exception
        while True:
            try:
                ws = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is classified just below
                error = exc
            else:
                attempt = 0
                schedule.opened(loop.time())
                error = await self._serve(ws)
            self._settle_first_attempt(error)
            failure = failures.failure(error)
            if failure.verdict is retry.Verdict.GIVE_UP:
                self._give_up(error)
                return
            delay = schedule.delay(failure, loop.time())
            attempt += 1
            self._set_state(ConnectionState.RECONNECTING)
            self._report_retry(error, delay, attempt)
            await asyncio.sleep(delay)

    async def _open(self) -> ClientConnection:
        """Connect to the first hub address that accepts, starting after the last used."""
        found = addresses.after(await addresses.candidates(self._urls), self._last)
        errors: list[Exception] = []
        for url, address in found:
            try:
                ws = await self._connect(url, address)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next address may work; the caller classifies
                errors.append(exc)
                if len(found) > 1:
                    where = addresses.where(url, address)
                    log.info("hub %s: %s; trying the next", where, failures.describe(exc))
                continue
            self._last = (url, address)
            self._url = url
            return ws
        raise failures.most_telling(errors)

    async def _connect(self, url: str, address: str | None) -> ClientConnection:
        # ``host`` only changes where the TCP connection goes: the Host header and the
        # TLS server name stay the URL's (websockets' connect passes it to the loop).
        destination: dict[str, Any] = {} if address is None else {"host": address}
        return await connect(
            addresses.with_token(url, self._options.token),
            open_timeout=self._options.open_timeout,
            close_timeout=_CLOSE_SECONDS,
            ssl=self._options.ssl_context if url.startswith("wss:") else None,
            logger=_RedactingLogger(logging.getLogger("websockets.client"), {}),
            # A hub on the LAN or loopback must not be reached through a proxy from the
            # environment; a deployment that needs one sets it up in front of the hub.
            proxy=None,
            **destination,
        )

    async def _serve(self, ws: ClientConnection) -> Exception:
        keepalive = asyncio.get_running_loop().create_task(self._keep_alive(ws))
        try:
            await self._on_open(ws)
            return await self._read(ws)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed send while rejoining ends this connection
            return exc
        finally:
            self._ws = None
            keepalive.cancel()
            await asyncio.wait([keepalive])
            await ws.close()

    async def _on_open(self, ws: ClientConnection) -> None:
        # Under the lock, so that a join racing with the rejoin is either part of it or
        # sent after it; OPEN only once rejoined, so no post reaches a group not yet joined.
        async with self._join_lock:
            self._ws = ws
            for index, group in enumerate(self._groups):
                await ws.send(encode_client_action(JoinRoom(group, keep=index > 0)))
            self._set_state(ConnectionState.OPEN)
        self._settle_first_attempt(None)
        self._emit(RealtimeMessage(MessageType.SUCCESS, _CONNECTED_TEXT))

    async def _read(self, ws: ClientConnection) -> ConnectionClosed:
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as exc:
                return exc
            if isinstance(raw, str):
                self._dispatch(raw)
            else:
                log.debug("dropped a binary frame of %d bytes from the hub", len(raw))

    def _dispatch(self, raw: str) -> None:
        frame = parse_hub_frame(raw)
        if isinstance(frame, ProtocolError):
            log.warning("dropped a frame from the hub: %s", frame.message)
            return
        self._on_frame(frame)

    async def _keep_alive(self, ws: ClientConnection) -> None:
        frame = encode_client_action(KeepAlive())
        while True:
            await asyncio.sleep(self._options.keepalive_interval)
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return

    # -- outcomes ------------------------------------------------------------------------------

    def _report_retry(self, error: Exception, delay: float, attempt: int) -> None:
        reason = failures.describe(error)
        code = failures.refusal_code(error)
        if code is not None:
            log.warning("hub refused the connection (%s): %s", code, reason)
            self._emit(RealtimeMessage(MessageType.ERROR, reason, code=code))
        else:
            log.info("hub connection: %s; retrying in %.1f s", reason, delay)
        text = f"{reason}; reconnecting in {delay:.1f} s (attempt {attempt})."
        self._emit(RealtimeMessage(MessageType.RECONNECT, text))

    def _settle_first_attempt(self, error: Exception | None) -> None:
        first = self.first_attempt
        if first is None or first.done():
            return
        fatal = error is not None and not failures.is_retryable(error)
        first.set_result(error if fatal else None)

    def _give_up(self, error: Exception) -> None:
        log.error("hub connection given up: %s", failures.describe(error))
        self._emit(RealtimeMessage(MessageType.ERROR, Texts.CONNECTION_ERROR, code=Codes.ERROR))
        self._settle_first_attempt(error)
        self._finish()

    def _finish(self) -> None:
        # Whoever waits in connect_realtime() returns: the client was closed meanwhile.
        self._settle_first_attempt(None)
        self._groups.clear()
        if self._state is not ConnectionState.CLOSED:
            self._set_state(ConnectionState.CLOSED)
            self._emit(RealtimeMessage(MessageType.CLOSE, _CLOSED_TEXT))

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            log.debug("realtime %s: %s -> %s", self._url, self._state.value, state.value)
            self._state = state


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Hands records to ``websockets``' logger with the token removed from the text."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self.logger.log(level, redact(text), **kwargs)
