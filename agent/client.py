"""RealtimeClient: the reference's realtime API in Python, over ``websockets`` and HTTP.

Usage::

    client = RealtimeClient("ws://127.0.0.1:8080/ws", token=jwt)
    await client.connect_realtime(print)
    await client.join_realtime("devices")
    await client.post_realtime({"hello": "world"}, "devices")
    ...
    await client.close_realtime()

How it behaves where the reference leaves room:

- **Several hubs.** ``url`` may be a list: the nodes of a hub cluster. Each attempt tries
  them in turn, starting after the one last used, and every address of a name that
  resolves to several; the first that accepts wins. A node's loss is then one reconnect.
- **Reconnects forever, and soon.** A lost or refused connection is retried on the
  schedule of :class:`agent.retry.Reconnect`: within a second after a hub restart (close
  code 1012) and throughout the first minute of an outage, then backing off with full
  jitter to 30 s. Every wait is announced with a ``reconnect`` message and every
  (re)connection with ``success``. After a reconnect the client rejoins
  its groups (the first plainly, the rest with ``keep``) before it reports ``success``.
- **A refused token is reported, not fatal.** When the hub answers the upgrade with 401/403
  (or closes with 4401/4403) the client emits an ``error`` with code ``UNAUTHORIZED`` or
  ``FORBIDDEN`` and keeps retrying at the slow ``refused_delay`` pace: an unattended
  device must come back by itself once the hub's accounts are restored.
- **connect_realtime returns after the first attempt**, whether it opened or not; the
  outcome also reaches the callback. Groups joined before the connection opens are
  remembered and joined as soon as it does.
- **Delivery never blocks the socket.** The callback (sync or async) runs on its own task,
  in order, fed by a bounded queue; each ``messages()`` stream has its own bounded queue.
  When a queue is full the oldest message is dropped, and the consumer next receives an
  ``error`` message with code ``MESSAGES_DROPPED`` saying how many were lost.
- ``#rtc`` frames go to :meth:`RealtimeClient.on_rtc_frame`: to a handler registered with
  :meth:`RealtimeClient.set_rtc_handler`, else to the client's calls (:mod:`agent.rtc`),
  which place calls (:meth:`RealtimeClient.connect_rtc`) and ring with ``rtc:incoming``
  messages carrying ``connect_rtc`` and ``hangup``; ``rtc:closed`` says the other side hung
  up. Closing the client hangs up its calls.

Secrets: the token travels in the ``?token=`` query (browsers cannot set headers on a
WebSocket) and in the ``Authorization`` header of HTTP calls; it is never logged, and the
``websockets`` debug log gets it redacted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import inspect
import io
import json
import logging
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Self, TypeAlias
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent import retry
from agent.errors import Codes, RealtimeError, Texts
from agent.logs import redact
from agent.messages import (
    DROPPED_CODE,
    MessageQueue,
    MessageStream,
    MessageType,
    RealtimeMessage,
    message_from_frame,
)
from agent.protocol import (
    Broadcast,
    ClientAction,
    FrameKind,
    HubFrame,
    JoinRoom,
    KeepAlive,
    LeaveRoom,
    Limits,
    Notification,
    ProtocolError,
    Rtc,
    SendMessage,
    encode_client_action,
    is_user_id,
    parse_client_frame,
    parse_hub_frame,
    scid_of,
)
from agent.push.client_methods import PushMethods

if TYPE_CHECKING:
    from agent.rtc.engine import RtcConnector, RtcEngine
    from agent.rtc.media import MediaDevices
    from agent.rtc.peer import EventCallback, PeerFactory

__all__ = [
    "DROPPED_CODE",
    "Callback",
    "ConnectionState",
    "MessageStream",
    "MessageType",
    "RealtimeClient",
    "RealtimeMessage",
    "RtcHandler",
    "message_from_frame",
]

log = logging.getLogger(__name__)

_CONNECTED_TEXT: Final = "Connected to WebSocket server."
_CLOSED_TEXT: Final = "WebSocket connection closed."
_SENT: Final = {"type": "success", "message": "Message sent."}
_LEFT_ALL_TEXT: Final = "Left realtime message group."
_CALLBACK_QUEUE: Final = 1024
_DRAIN_SECONDS: Final = 5.0
_CLOSE_SECONDS: Final = 2.0
_FETCH_KEYS: Final = {
    "limit": "limit",
    "startKey": "startKey",
    "start_key": "startKey",
    "ascending": "ascending",
}
_MAX_FRAME_BYTES: Final = Limits().max_frame_bytes


class ConnectionState(enum.Enum):
    """Where the client's hub connection stands."""

    IDLE = "idle"  # connect_realtime() not called yet
    CONNECTING = "connecting"  # first attempt under way
    OPEN = "open"
    RECONNECTING = "reconnecting"  # waiting to retry, or retrying
    CLOSED = "closed"  # close_realtime() called, or gave up


Callback: TypeAlias = Callable[[RealtimeMessage], Awaitable[None] | None]
RtcHandler: TypeAlias = Callable[[HubFrame], None]


class RealtimeClient(PushMethods):
    """A connection to a hub with the reference's realtime API (see the module docstring)."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str,
        http_url: str | None = None,
        keepalive_interval: float = 15.0,
        backoff: Callable[[], Iterator[float]] | None = None,
        reconnect: retry.ReconnectPolicy | None = None,
        refused_delay: float = 30.0,
        open_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_frame_bytes: int = _MAX_FRAME_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        session: aiohttp.ClientSession | None = None,
        rtc_factory: PeerFactory | None = None,
        media_devices: MediaDevices | None = None,
    ) -> None:
        """Prepare a client; nothing connects until :meth:`connect_realtime`.

        Args:
            url: The hub's WebSocket URL, ``ws[s]://HOST:PORT/ws``, or the URLs of several
                hub nodes to try in turn.
            token: The JWT the hub issued (``edge-agent token --user NAME``).
            http_url: Base of the HTTP API; derived from the URL in use
                (``http[s]://HOST:PORT``).
            keepalive_interval: Seconds between ``keepAlive`` frames (the hosted service's 15).
            backoff: Factory of plain reconnect delays (see :func:`agent.retry.backoff`)
                instead of the outage-aware schedule; for tests and comparisons.
            reconnect: The numbers of the reconnect schedule (:class:`agent.retry.Reconnect`).
            refused_delay: Ceiling of the delay after the hub refused the token.
            open_timeout: Seconds allowed for one connection's opening handshake.
            request_timeout: Seconds allowed for one HTTP call.
            max_frame_bytes: Largest frame this client sends (the hub closes on bigger).
            ssl_context: TLS settings for ``wss``/``https`` (e.g. a LAN hub's own CA).
            session: An ``aiohttp`` session to use for HTTP calls (not closed here).
            rtc_factory: Makes the peer connections of calls: ICE servers, host addresses,
                certificate (default: no ICE servers, every address; closed with the client
                only when made here).
            media_devices: This side's camera and microphone for ``media`` flags in
                ``connect_rtc`` (default: none, so a flag raises DEVICE_NOT_FOUND).

        Raises:
            RealtimeError: INVALID_PARAMETER when the URL or token is malformed.
        """
        urls = [url] if isinstance(url, str) else list(url) if isinstance(url, Sequence) else [url]
        if not urls:
            raise RealtimeError(Codes.INVALID_PARAMETER, '"url" needs at least one hub URL.')
        self._urls = tuple(_check_ws_url(u) for u in urls)
        self._url = self._urls[0]
        # The hub address the last connection used: the next attempt starts after it.
        self._last: tuple[str, str | None] | None = None
        if not isinstance(token, str) or not token:
            raise RealtimeError(Codes.INVALID_PARAMETER, '"token" must be a non-empty string.')
        if keepalive_interval <= 0:
            raise RealtimeError(Codes.INVALID_PARAMETER, '"keepalive_interval" must be > 0.')
        self._token = token
        self._http_fixed = http_url
        self._http_url = (http_url or _http_base(self._url)).rstrip("/")
        self._keepalive_interval = keepalive_interval
        self._backoff = backoff
        self._reconnect = reconnect or retry.ReconnectPolicy(refused_seconds=refused_delay)
        self._refused_delay = refused_delay
        self._open_timeout = open_timeout
        self._request_timeout = request_timeout
        self._max_frame_bytes = max_frame_bytes
        self._ssl = ssl_context
        self._http_session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._state = ConnectionState.IDLE
        self._groups: list[str] = []
        self._join_lock = asyncio.Lock()
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[BaseException | None] | None = None
        self._callback_queue: MessageQueue | None = None
        self._streams: weakref.WeakSet[MessageStream] = weakref.WeakSet()
        self._rtc_handler: RtcHandler | None = None
        self._rtc_factory = rtc_factory
        self._media_devices = media_devices
        self._rtc: RtcEngine | None = None
        self._own_factory: PeerFactory | None = None

    def __repr__(self) -> str:
        return f"<RealtimeClient {self._url} {self._state.value}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_realtime()

    # -- public API --------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """Where the connection stands."""
        return self._state

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups this client is in (and rejoins after a reconnect), in join order."""
        return tuple(self._groups)

    @property
    def url(self) -> str:
        """The WebSocket URL in use (or to try first), without the token."""
        return self._url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every hub URL this client tries, in the order given."""
        return self._urls

    @property
    def http_url(self) -> str:
        """The base URL of the hub's HTTP API."""
        return self._http_url

    @property
    def user_id(self) -> str | None:
        """This client's user id (the ``sub`` of its token), if the token says."""
        return _token_subject(self._token)

    async def connect_realtime(self, callback: Callback) -> None:
        """Connect and keep connected, reporting to ``callback`` (sync or async).

        Returns once the first connection attempt has finished, opened or not; the client
        keeps retrying in the background until :meth:`close_realtime`. Calling it again
        while connected returns at once and keeps the first callback. Cancelling it before
        the first attempt finishes closes the client.

        Raises:
            RealtimeError: INVALID_REQUEST "Callback must be a function." when ``callback``
                is not callable; ERROR when the URL cannot be connected to at all.
        """
        if not callable(callback):
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.CALLBACK)
        if self._runner is not None and self._runner.done():
            await self.close_realtime()  # it gave up earlier: start afresh
        if self._runner is None:
            self._start(callback)
        first = self._first_attempt
        if first is None:  # close_realtime() ran in between
            return
        try:
            error = await asyncio.shield(first)
        except asyncio.CancelledError:
            if not first.done():
                await self.close_realtime()
            raise
        if error is not None:
            raise RealtimeError(Codes.ERROR, Texts.CONNECTION_ERROR) from error

    def messages(self, *, maxsize: int = 256) -> MessageStream:
        """Every message from now on, as an async iterator that ends after ``close``.

        Each stream has its own queue of ``maxsize``; when the consumer falls behind, the
        oldest message is dropped and an ``error`` message with code ``MESSAGES_DROPPED``
        comes next. Close the stream (or leave ``async with``) to stop receiving.
        """
        stream = MessageStream(MessageQueue(maxsize), self._streams.discard)
        self._streams.add(stream)
        return stream

    async def join_realtime(self, group: str | None, *, keep: bool = False) -> dict[str, str]:
        """Join ``group`` (switching away from the others unless ``keep``); ``None`` leaves all.

        Joining while the connection is reopening is recorded and sent once it is open.

        Raises:
            RealtimeError: INVALID_REQUEST when :meth:`connect_realtime` was not called;
                INVALID_PARAMETER when ``group`` is not a string or ``None`` or is too long.
        """
        self._require_connection()
        if group is not None and not isinstance(group, str):
            raise RealtimeError(Codes.INVALID_PARAMETER, '"group" must be a string | null.')
        if not group:
            return await self._leave_all()
        _check_action(JoinRoom(group, keep=keep))
        async with self._join_lock:
            if not keep:
                self._groups.clear()
            if group not in self._groups:
                self._groups.append(group)
            await self._send_if_open(JoinRoom(group, keep=keep))
        return {"type": "success", "message": f'Joined realtime message group: "{group}".'}

    async def leave_realtime(self, group: str) -> dict[str, str]:
        """Leave one group and stay in the others.

        Raises:
            RealtimeError: INVALID_REQUEST when :meth:`connect_realtime` was not called;
                INVALID_PARAMETER when ``group`` is not a non-empty string.
        """
        self._require_connection()
        if not isinstance(group, str) or not group:
            raise RealtimeError(Codes.INVALID_PARAMETER, '"group" must be a non-empty string.')
        async with self._join_lock:
            if group in self._groups:
                self._groups.remove(group)
                await self._send_if_open(LeaveRoom(group))
        return {"type": "success", "message": f'Left realtime message group: "{group}".'}

    async def post_realtime(
        self,
        message: Any,
        recipient: str,
        notification: Mapping[str, Any] | Notification | None = None,
    ) -> dict[str, str]:
        """Send ``message`` to a user (UUID-shaped ``recipient``) or to a joined group.

        Args:
            message: Any JSON-serializable value.
            recipient: A user id, or the name of a group this client has joined.
            notification: ``{"title", "body", "config": {"always"}}`` for a push alert.

        Returns:
            ``{"type": "success", "message": "Message sent."}``

        Raises:
            RealtimeError: INVALID_REQUEST with the reference's texts when there is no
                connection, it is not open, or the group was not joined; INVALID_PARAMETER
                for an unserializable message, a bad notification or an oversized frame.
        """
        self._require_connection()
        if not isinstance(recipient, str) or not recipient:
            raise RealtimeError(Codes.INVALID_REQUEST, "No recipient.")
        if self._state is not ConnectionState.OPEN:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN)
        note = _notification(notification)
        action: ClientAction
        if is_user_id(recipient):
            action = SendMessage(recipient, message, note)
        elif recipient in self._groups:
            action = Broadcast(recipient, message, note)
        else:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.not_joined(recipient))
        await self._send(action)
        return dict(_SENT)

    async def get_realtime_groups(
        self,
        params: Mapping[str, Any] | None = None,
        fetch_options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """List groups: ``params`` as the reference's (searchFor, value, condition, range).

        Returns:
            ``{"list": [{"group", "number_of_users"}], "startKey", "endOfList"}``

        Raises:
            RealtimeError: the hub's code and message when it refuses the query; ERROR when
                the hub cannot be reached.
        """
        if params is not None and not isinstance(params, Mapping):
            raise RealtimeError(Codes.INVALID_PARAMETER, '"params" must be an object or null.')
        body = {**(params or {}), **_fetch_body(fetch_options)}
        return await self._post("/api/realtime/groups", body)

    async def get_realtime_users(
        self,
        group: str | None = None,
        user_id: str | None = None,
        fetch_options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """List the connections in ``group`` (default: the first joined group).

        Returns:
            ``{"list": [{"user_id", "connection_id"}], "startKey", "endOfList"}``

        Raises:
            RealtimeError: INVALID_REQUEST when no group is given or joined; the hub's code
                and message when it refuses the query; ERROR when it cannot be reached.
        """
        group = group or (self._groups[0] if self._groups else None)
        if group is None:
            raise RealtimeError(
                Codes.INVALID_REQUEST, 'No group has been joined. Otherwise "group" is required.'
            )
        body: dict[str, Any] = {"group": group, **_fetch_body(fetch_options)}
        if user_id is not None:
            body["user_id"] = user_id
        return await self._post("/api/realtime/users", body)

    async def close_realtime(self) -> None:
        """Hang up calls, stop reconnecting, close the connection and emit ``close``.

        Safe to call twice.
        """
        await self._close_rtc()
        runner, self._runner = self._runner, None
        if runner is not None:
            if not runner.done():
                runner.cancel()
                await asyncio.wait([runner])
            self._finish()
            await self._drain_callback()
        await self._close_http()

    # -- hooks for calls (rtc) -----------------------------------------------------------------

    def set_rtc_handler(self, handler: RtcHandler | None) -> None:
        """Route ``#rtc`` frames to ``handler``; it runs on the reader, so it must not block."""
        self._rtc_handler = handler

    def on_rtc_frame(self, frame: HubFrame) -> None:
        """Handle one ``#rtc`` frame: the registered handler's, else the calls'. Overridable."""
        if self._rtc_handler is not None:
            self._rtc_handler(frame)
        else:
            self.rtc.handle_frame(frame)

    def use_rtc_factory(self, factory: PeerFactory) -> None:
        """Make this client's calls with ``factory``, given after construction (a device
        that loads aiortc only when a call first needs it builds its factory then).

        Raises:
            RealtimeError: INVALID_REQUEST once the calls exist: they keep their factory.
        """
        if self._rtc is not None:
            raise RealtimeError(
                Codes.INVALID_REQUEST, "The calls of this client exist already; set it before."
            )
        self._rtc_factory = factory

    @property
    def rtc(self) -> RtcEngine:
        """This client's calls (made on first use)."""
        if self._rtc is None:
            from agent.rtc.engine import RtcEngine
            from agent.rtc.ice import HubIceServers
            from agent.rtc.peer import PeerFactory

            factory = self._rtc_factory
            if factory is None:
                factory = self._own_factory = PeerFactory()
            self._rtc = RtcEngine(
                self.send_rtc,
                local_id=self.user_id or "",
                factory=factory,
                media_devices=self._media_devices,
                on_incoming=self._ring,
                on_closed=self._rtc_closed,
                # Fresh TURN credentials from the hub for calls placed and answered.
                ice_source=HubIceServers(self.get_ice_servers, factory.options).get,
            )
        return self._rtc

    async def connect_rtc(
        self,
        *,
        cid: str,
        ice: Any = None,
        media: Any = None,
        channels: Any = None,
        callback: EventCallback | None = None,
    ) -> RtcConnector:
        """Call connection ``cid`` (the reference's connectRTC); returns once the offer is sent.

        Args:
            cid: The connection to call, ``cid:...`` (a ``sender_cid``, or a
                ``connection_id`` from :meth:`get_realtime_users`).
            ice: ICE servers: a URL, or a list of URLs or ``{urls, username, credential}``
                (default: the hub's, with fresh TURN credentials from ``/api/ice-servers``
                reused for half their lifetime, then the factory's; never an implicit
                public server).
            media: ``{"video": X, "audio": Y}`` with each ``True`` (this side's device),
                a track, or ``False`` (receive only); a ``LocalMedia``; or None for data
                channels only. See :mod:`agent.rtc.media`.
            channels: Presets (``"text-chat"``, ``"file-transfer"``, ``"video-chat"``,
                ``"voice-chat"``, ``"gaming"``) or options dicts; default one ordered
                channel with protocol ``"default"``.
            callback: Receives the RTC events (track, connectionstatechange, icecandidate,
                open, message, close, ...) as dicts, in order; sync or async.

        Returns:
            An ``RtcConnector``: ``await connector.connection`` resolves on pickup to an
            ``RtcConnection`` (``target``, ``channels``, ``media``, ``hangup()``);
            ``connector.hangup()`` cancels the call.

        Raises:
            RealtimeError: INVALID_REQUEST with the reference's texts when there is no
                open connection or a channel protocol repeats; DEVICE_NOT_FOUND when
                ``media`` asks for a device this side does not have; INVALID_PARAMETER
                for a malformed ``cid``, ``ice``, ``media`` or channel option.
        """
        self._require_connection()
        if self._state is not ConnectionState.OPEN:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN)
        return await self.rtc.dial(cid, ice=ice, media=media, channels=channels, callback=callback)

    async def send_rtc(self, cid: str, content: dict[str, Any]) -> None:
        """Send an ``rtc`` signaling frame to connection ``cid`` (``cid:...``).

        Raises:
            RealtimeError: INVALID_REQUEST with the reference's texts when there is no open
                connection; INVALID_PARAMETER when the frame is malformed.
        """
        self._require_connection()
        if self._state is not ConnectionState.OPEN:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN)
        action = Rtc(scid_of(cid), content)
        _check_action(action)
        await self._send(action)

    def _ring(self, incoming: Any) -> None:
        self.emit(
            RealtimeMessage(
                MessageType.RTC_INCOMING,
                sender=incoming.user_id,
                sender_cid=incoming.cid,
                connect_rtc=incoming.connect_rtc,
                hangup=incoming.hangup,
            )
        )

    def _rtc_closed(self, cid: str, user_id: str | None, content: dict[str, Any]) -> None:
        self.emit(RealtimeMessage(MessageType.RTC_CLOSED, content, user_id, cid))

    async def _close_rtc(self) -> None:
        engine, self._rtc = self._rtc, None
        if engine is not None:
            await engine.close()
        factory, self._own_factory = self._own_factory, None
        if factory is not None:
            factory.close()

    def emit(self, message: RealtimeMessage) -> None:
        """Deliver ``message`` to the callback and every stream (never blocks)."""
        if self._callback_queue is not None:
            self._callback_queue.put(message)
        for stream in list(self._streams):
            stream.feed(message)

    # -- connection loop ---------------------------------------------------------------------

    def _start(self, callback: Callback) -> None:
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        self._callback_queue = MessageQueue(_CALLBACK_QUEUE)
        self._dispatcher = loop.create_task(self._deliver(self._callback_queue, callback))
        self._set_state(ConnectionState.CONNECTING)
        self._runner = loop.create_task(self._supervise(), name=f"realtime {self._url}")

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
        schedule = self._schedule()
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
            if retry.classify(error) is retry.Verdict.GIVE_UP:
                self._give_up(error)
                return
            delay = schedule.delay(error, loop.time())
            attempt += 1
            self._set_state(ConnectionState.RECONNECTING)
            self._report_retry(error, delay, attempt)
            await asyncio.sleep(delay)

    def _schedule(self) -> retry.ReconnectSchedule:
        if self._backoff is not None:
            return retry.FixedBackoff(self._backoff, refused_seconds=self._refused_delay)
        return retry.Reconnect(self._reconnect)

    async def _open(self) -> ClientConnection:
        """Connect to the first hub address that accepts, starting after the last used."""
        candidates = _after(await _candidates(self._urls), self._last)
        errors: list[Exception] = []
        for url, address in candidates:
            try:
                ws = await self._connect(url, address)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next address may work; the caller classifies
                errors.append(exc)
                if len(candidates) > 1:
                    log.info("hub %s: %s; trying the next", _where(url, address), _describe(exc))
                continue
            self._last = (url, address)
            if url != self._url:
                self._url = url
                self._http_url = (self._http_fixed or _http_base(url)).rstrip("/")
            return ws
        raise _most_telling(errors)

    async def _connect(self, url: str, address: str | None) -> ClientConnection:
        # ``host`` only changes where the TCP connection goes: the Host header and the
        # TLS server name stay the URL's (websockets' connect passes it to the loop).
        destination: dict[str, Any] = {} if address is None else {"host": address}
        return await connect(
            _with_token(url, self._token),
            open_timeout=self._open_timeout,
            close_timeout=_CLOSE_SECONDS,
            ssl=self._ssl if url.startswith("wss:") else None,
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
        self.emit(RealtimeMessage(MessageType.SUCCESS, _CONNECTED_TEXT))

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
        if frame.kind is FrameKind.RTC:
            try:
                self.on_rtc_frame(frame)
            except Exception:
                log.exception("rtc handler failed")
            return
        message = message_from_frame(frame)
        if message is not None:
            self.emit(message)

    async def _keep_alive(self, ws: ClientConnection) -> None:
        frame = encode_client_action(KeepAlive())
        while True:
            await asyncio.sleep(self._keepalive_interval)
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return

    def _report_retry(self, error: Exception, delay: float, attempt: int) -> None:
        reason = _describe(error)
        code = retry.refusal_code(error)
        if code is not None:
            log.warning("hub refused the connection (%s): %s", code, reason)
            self.emit(RealtimeMessage(MessageType.ERROR, reason, code=code))
        else:
            log.info("hub connection: %s; retrying in %.1f s", reason, delay)
        text = f"{reason}; reconnecting in {delay:.1f} s (attempt {attempt})."
        self.emit(RealtimeMessage(MessageType.RECONNECT, text))

    def _settle_first_attempt(self, error: Exception | None) -> None:
        first = self._first_attempt
        if first is None or first.done():
            return
        fatal = error is not None and retry.classify(error) is retry.Verdict.GIVE_UP
        first.set_result(error if fatal else None)

    def _give_up(self, error: Exception) -> None:
        log.error("hub connection given up: %s", _describe(error))
        self.emit(RealtimeMessage(MessageType.ERROR, Texts.CONNECTION_ERROR, code=Codes.ERROR))
        self._settle_first_attempt(error)
        self._finish()

    def _finish(self) -> None:
        # Whoever waits in connect_realtime() returns: the client was closed meanwhile.
        self._settle_first_attempt(None)
        self._groups.clear()
        if self._state is not ConnectionState.CLOSED:
            self._set_state(ConnectionState.CLOSED)
            self.emit(RealtimeMessage(MessageType.CLOSE, _CLOSED_TEXT))

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            log.debug("realtime %s: %s -> %s", self._url, self._state.value, state.value)
            self._state = state

    # -- delivery ----------------------------------------------------------------------------

    async def _deliver(self, queue: MessageQueue, callback: Callback) -> None:
        while True:
            message = await queue.get()
            try:
                result = callback(message)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("realtime callback failed on a %s message", message.type)
            if message.type is MessageType.CLOSE:
                return

    async def _drain_callback(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        self._callback_queue = None
        if dispatcher is None or dispatcher is asyncio.current_task():
            return
        _done, pending = await asyncio.wait([dispatcher], timeout=_DRAIN_SECONDS)
        if pending:
            log.warning("realtime callback still busy after close; cancelling it")
            dispatcher.cancel()
            await asyncio.wait([dispatcher])

    # -- sending -----------------------------------------------------------------------------

    def _require_connection(self) -> None:
        if self._runner is None or self._state is ConnectionState.CLOSED:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NO_CONNECTION)

    async def _leave_all(self) -> dict[str, str]:
        async with self._join_lock:
            if self._groups:
                self._groups.clear()
                await self._send_if_open(JoinRoom(None))
        return {"type": "success", "message": _LEFT_ALL_TEXT}

    async def _send_if_open(self, action: ClientAction) -> None:
        # Group changes are remembered either way: a closed connection is rejoined with
        # the current groups when it reopens.
        if self._state is ConnectionState.OPEN:
            with contextlib.suppress(RealtimeError):
                await self._send(action)

    async def _send(self, action: ClientAction) -> None:
        try:
            text = encode_client_action(action)
        except (TypeError, ValueError) as exc:
            raise RealtimeError(
                Codes.INVALID_PARAMETER, f"Message must be JSON-serializable: {exc}"
            ) from exc
        size = len(text.encode())
        if size > self._max_frame_bytes:
            raise RealtimeError(
                Codes.INVALID_PARAMETER,
                f"Message frame is {size} bytes; the hub accepts up to {self._max_frame_bytes}.",
            )
        ws = self._ws
        if ws is None:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN)
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.NOT_OPEN) from exc

    # -- HTTP --------------------------------------------------------------------------------

    async def get_ice_servers(self) -> dict[str, Any]:
        """STUN and TURN servers for a call, TURN credentials minted now by the hub.

        Returns:
            ``{"iceServers": [{urls, username, credential}, ...], "ttl": SECONDS,
            "iceTransportPolicy": "all" | "relay"}``.

        Raises:
            RealtimeError: UNAUTHORIZED for a refused token; NOT_FOUND from a hub that
                does not hand out ICE servers.
        """
        payload = await self._request("GET", "/api/ice-servers")
        if not isinstance(payload, dict) or not isinstance(payload.get("iceServers"), list):
            raise RealtimeError(Codes.ERROR, "The hub's answer to /api/ice-servers has no list.")
        return payload

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """Name and role of an account (``{user_id, name, role}``); admins and devices only.

        Raises:
            RealtimeError: FORBIDDEN for a user-role token, NOT_FOUND for an unknown id.
        """
        payload = await self._request("GET", f"/api/users/{quote(user_id, safe='')}")
        if not isinstance(payload, dict) or not isinstance(payload.get("role"), str):
            raise RealtimeError(Codes.ERROR, "The hub's answer to /api/users has no role.")
        return payload

    async def upload_snapshot(self, jpeg: bytes) -> str:
        """Store a JPEG on the hub for alerts to link to; the link (``/api/snapshots/ID``).

        Raises:
            RealtimeError: INVALID_PARAMETER for a non-JPEG or oversized image; FORBIDDEN
                for a user-role token.
        """
        # A stream: aiohttp warns that a large bytes body is copied on the event loop.
        payload = await self._request("POST", "/api/snapshots", data=io.BytesIO(jpeg))
        if not isinstance(payload, dict) or not isinstance(payload.get("url"), str):
            raise RealtimeError(Codes.ERROR, "The hub's answer to /api/snapshots has no url.")
        return str(payload["url"])

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = await self._request("POST", path, body)
        if not isinstance(payload, dict) or not isinstance(payload.get("list"), list):
            raise RealtimeError(Codes.ERROR, f"The hub's answer to {path} has no list.")
        return payload

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        data: io.BytesIO | None = None,
    ) -> Any:
        try:
            async with self._http().request(
                method,
                self._http_url + path,
                json=body,
                data=data,
                headers={"Authorization": f"Bearer {self._token}"},
                ssl=self._ssl if self._ssl is not None else True,
            ) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RealtimeError(
                Codes.ERROR,
                f"Cannot reach the hub at {self._http_url}: {str(exc) or type(exc).__name__}",
            ) from exc
        payload = _json_or_none(raw)
        if status >= 400:
            raise _http_error(status, payload)
        return payload

    def _http(self) -> aiohttp.ClientSession:
        if self._http_session is not None:
            return self._http_session
        if self._own_session is None or self._own_session.closed:
            timeout = aiohttp.ClientTimeout(total=self._request_timeout)
            self._own_session = aiohttp.ClientSession(timeout=timeout)
        return self._own_session

    async def _close_http(self) -> None:
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Hands records to ``websockets``' logger with the token removed from the text."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self.logger.log(level, redact(text), **kwargs)


def _token_subject(token: str) -> str | None:
    """The ``sub`` claim of a JWT, read without verifying it (it is our own token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) else None


def _check_ws_url(url: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        port_ok = parts is not None and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number or out of range
        port_ok = False
    if not port_ok or parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise RealtimeError(
            Codes.INVALID_PARAMETER, f'"url" must be ws[s]://HOST[:PORT]/ws, got {url!r}.'
        )
    if "token=" in parts.query:
        raise RealtimeError(Codes.INVALID_PARAMETER, 'Pass the token as token=..., not in "url".')
    return url


async def _candidates(urls: Sequence[str]) -> list[tuple[str, str | None]]:
    """(URL, address) pairs to try: every address of a name that resolves to several, else
    the URL alone (``None``: connect resolves it, as for a single hub)."""
    loop = asyncio.get_running_loop()
    found: list[tuple[str, str | None]] = []
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []  # connect reports the resolver's error itself
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(addresses) > 1:
            found += [(url, address) for address in addresses]
        else:
            found.append((url, None))
    return found


def _after(
    candidates: list[tuple[str, str | None]], last: tuple[str, str | None] | None
) -> list[tuple[str, str | None]]:
    """``candidates`` starting after ``last`` (tried last): a lost node is not tried first."""
    if last not in candidates:
        return candidates
    start = candidates.index(last) + 1
    return candidates[start:] + candidates[:start]


def _most_telling(errors: list[Exception]) -> Exception:
    """The error an attempt over several hubs reports: a refusal (the token) before an
    outage, an outage before a setting no retry fixes (which is reported only if every
    hub failed that way)."""
    for wanted in (retry.Verdict.RETRY_AT_CAP, retry.Verdict.RETRY):
        for error in errors:
            if retry.classify(error) is wanted:
                return error
    return errors[0]


def _where(url: str, address: str | None) -> str:
    return url if address is None else f"{url} at {address}"


def _http_base(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    path = parts.path.rstrip("/")
    path = path.removesuffix("/ws")
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _with_token(ws_url: str, token: str) -> str:
    parts = urlsplit(ws_url)
    query = [*parse_qsl(parts.query), ("token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _check_action(action: ClientAction) -> None:
    """Refuse locally what the hub's parser would refuse (same code, same limits)."""
    parsed = parse_client_frame(encode_client_action(action))
    if isinstance(parsed, ProtocolError):
        raise RealtimeError(parsed.code, parsed.message)


def _notification(value: Mapping[str, Any] | Notification | None) -> Notification | None:
    if value is None or isinstance(value, Notification):
        return value
    if not isinstance(value, Mapping):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"notification" must be {title, body}.')
    title, body = value.get("title", ""), value.get("body", "")
    config = value.get("config") or {}
    if not isinstance(title, str) or not isinstance(body, str) or not isinstance(config, dict):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"notification" must be {title, body}.')
    return Notification(title, body, always=config.get("always") is True)


def _fetch_body(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"fetch_options" must be an object.')
    unknown = sorted(set(options) - set(_FETCH_KEYS))
    if unknown:
        raise RealtimeError(
            Codes.INVALID_PARAMETER,
            f"Unknown fetch option(s): {', '.join(unknown)}. Use limit, startKey, ascending.",
        )
    return {_FETCH_KEYS[key]: value for key, value in options.items()}


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _http_error(status: int, payload: Any) -> RealtimeError:
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        code = payload.get("code")
        return RealtimeError(code if isinstance(code, str) else Codes.ERROR, payload["message"])
    detail = payload.get("detail") if isinstance(payload, dict) else None
    return RealtimeError(Codes.ERROR, f"The hub answered HTTP {status}: {detail or 'no detail'}.")


def _describe(error: BaseException) -> str:
    if isinstance(error, InvalidStatus):
        payload = _json_or_none(bytes(error.response.body or b""))
        said = payload.get("message") if isinstance(payload, dict) else None
        status = error.response.status_code
        return f"the hub refused the connection (HTTP {status})" + (f": {said}" if said else "")
    if isinstance(error, ConnectionClosed):
        close = error.rcvd
        if close is None:
            return "the connection was lost"
        reason = f" {close.reason}" if close.reason else ""
        return f"the hub closed the connection ({close.code}{reason})"
    if isinstance(error, TimeoutError):
        return "the hub did not answer in time"
    if isinstance(error, OSError):
        return f"cannot reach the hub: {error.strerror or error}"
    # Never str() an arbitrary error here: some carry the URL, and the URL carries the token.
    return f"connection failed ({type(error).__name__})"
