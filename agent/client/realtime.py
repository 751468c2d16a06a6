"""RealtimeClient: the reference's realtime API as one object, composed of small parts.

The behaviour users see is described in :mod:`agent.client`; this module holds the public
methods and hands each to its part: the connection and its groups
(:mod:`agent.client.link`), delivery (:mod:`agent.client.delivery`), HTTP
(:mod:`agent.hub_http`), push (:mod:`agent.push.client_methods`) and calls
(:mod:`agent.rtc.client_calls`). Arguments are checked first (:mod:`agent.client.checks`),
before any part is asked.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import quote

import aiohttp

from agent import retry
from agent.client import addresses, checks
from agent.client.delivery import Callback, Delivery
from agent.client.link import ConnectionState, LinkOptions, RealtimeLink
from agent.client.token import token_subject
from agent.errors import Codes, HubRequestError, RealtimeError, Texts
from agent.hub_http import HubHttp
from agent.messages import MessageStream, RealtimeMessage, message_from_frame
from agent.protocol import (
    Broadcast,
    ClientAction,
    FrameKind,
    HubFrame,
    JoinRoom,
    Limits,
    Notification,
    Rtc,
    SendMessage,
    is_user_id,
    scid_of,
)
from agent.push.client_methods import PushCalls
from agent.rtc.client_calls import ClientCalls, RtcHandler

if TYPE_CHECKING:
    from agent.rtc.engine import RtcConnector, RtcEngine
    from agent.rtc.media import MediaDevices
    from agent.rtc.peer import EventCallback, PeerFactory

__all__ = ["RealtimeClient"]

log = logging.getLogger(__name__)

_SENT: Final = {"type": "success", "message": "Message sent."}
_LEFT_ALL_TEXT: Final = "Left realtime message group."
_MAX_FRAME_BYTES: Final = Limits().max_frame_bytes


class RealtimeClient:
    """A connection to a hub with the reference's realtime API (see the module docstring).

    A composition: the hub connection and its groups (:class:`RealtimeLink`), delivery
    to the callback and streams (:class:`Delivery`), HTTP calls with one error mapping
    (:class:`~agent.hub_http.HubHttp`, also behind the push calls of
    :class:`~agent.push.client_methods.PushCalls`) and calls
    (:class:`~agent.rtc.client_calls.ClientCalls`).
    """

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
        checked = [addresses.check_ws_url(u) for u in urls]
        if not isinstance(token, str) or not token:
            raise RealtimeError(Codes.INVALID_PARAMETER, '"token" must be a non-empty string.')
        if keepalive_interval <= 0:
            raise RealtimeError(Codes.INVALID_PARAMETER, '"keepalive_interval" must be > 0.')
        self._token = token
        self._http_fixed = http_url
        self._delivery = Delivery()
        self._link = RealtimeLink(
            checked,
            LinkOptions(
                token=token,
                schedule=_schedule(backoff, reconnect, refused_delay),
                keepalive_interval=keepalive_interval,
                open_timeout=open_timeout,
                max_frame_bytes=max_frame_bytes,
                ssl_context=ssl_context,
            ),
            emit=self.emit,
            on_frame=self._on_frame,
        )
        self._http = HubHttp(
            lambda: self.http_url,
            token=token,
            ssl_context=ssl_context,
            session=session,
            timeout=request_timeout,
        )
        self._push = PushCalls(self._http)
        self._calls = ClientCalls(
            send_rtc=self.send_rtc,
            local_id=self.user_id or "",
            ice_servers=self.get_ice_servers,
            emit=self.emit,
            factory=rtc_factory,
            media_devices=media_devices,
        )

    def __repr__(self) -> str:
        return f"<RealtimeClient {self.url} {self.state.value}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_realtime()

    # -- public API --------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """Where the connection stands."""
        return self._link.state

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups this client is in (and rejoins after a reconnect), in join order."""
        return self._link.groups

    @property
    def url(self) -> str:
        """The WebSocket URL in use (or to try first), without the token."""
        return self._link.url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every hub URL this client tries, in the order given."""
        return self._link.urls

    @property
    def http_url(self) -> str:
        """The base URL of the hub's HTTP API."""
        return (self._http_fixed or addresses.http_base(self._link.url)).rstrip("/")

    @property
    def user_id(self) -> str | None:
        """This client's user id (the ``sub`` of its token), if the token says."""
        return token_subject(self._token)

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
        if self._link.gave_up:
            await self.close_realtime()  # it gave up earlier: start afresh
        if not self._link.started:
            self._delivery.start(callback)
            self._link.start()
        first = self._link.first_attempt
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
        return self._delivery.stream(maxsize)

    async def join_realtime(self, group: str | None, *, keep: bool = False) -> dict[str, str]:
        """Join ``group`` (switching away from the others unless ``keep``); ``None`` leaves all.

        Joining while the connection is reopening is recorded and sent once it is open.

        Raises:
            RealtimeError: INVALID_REQUEST when :meth:`connect_realtime` was not called;
                INVALID_PARAMETER when ``group`` is not a string or ``None`` or is too long.
        """
        self._link.require_started()
        if group is not None and not isinstance(group, str):
            raise RealtimeError(Codes.INVALID_PARAMETER, '"group" must be a string | null.')
        if not group:
            await self._link.leave_all()
            return {"type": "success", "message": _LEFT_ALL_TEXT}
        checks.check_action(JoinRoom(group, keep=keep))
        await self._link.join(group, keep=keep)
        return {"type": "success", "message": f'Joined realtime message group: "{group}".'}

    async def leave_realtime(self, group: str) -> dict[str, str]:
        """Leave one group and stay in the others.

        Raises:
            RealtimeError: INVALID_REQUEST when :meth:`connect_realtime` was not called;
                INVALID_PARAMETER when ``group`` is not a non-empty string.
        """
        self._link.require_started()
        if not isinstance(group, str) or not group:
            raise RealtimeError(Codes.INVALID_PARAMETER, '"group" must be a non-empty string.')
        await self._link.leave(group)
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
        self._link.require_started()
        if not isinstance(recipient, str) or not recipient:
            raise RealtimeError(Codes.INVALID_REQUEST, "No recipient.")
        self._link.require_open()
        note = checks.notification(notification)
        action: ClientAction
        if is_user_id(recipient):
            action = SendMessage(recipient, message, note)
        elif recipient in self._link.groups:
            action = Broadcast(recipient, message, note)
        else:
            raise RealtimeError(Codes.INVALID_REQUEST, Texts.not_joined(recipient))
        await self._link.send(action)
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
            RealtimeError: INVALID_PARAMETER for bad ``params`` or ``fetch_options``.
            HubRequestError: the hub's code, message and HTTP status when it refuses the
                query; ERROR without status when the hub cannot be reached.
        """
        if params is not None and not isinstance(params, Mapping):
            raise RealtimeError(Codes.INVALID_PARAMETER, '"params" must be an object or null.')
        body = {**(params or {}), **checks.fetch_body(fetch_options)}
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
            RealtimeError: INVALID_REQUEST when no group is given or joined.
            HubRequestError: the hub's code, message and HTTP status when it refuses the
                query; ERROR without status when the hub cannot be reached.
        """
        group = group or next(iter(self._link.groups), None)
        if group is None:
            raise RealtimeError(
                Codes.INVALID_REQUEST, 'No group has been joined. Otherwise "group" is required.'
            )
        body: dict[str, Any] = {"group": group, **checks.fetch_body(fetch_options)}
        if user_id is not None:
            body["user_id"] = user_id
        return await self._post("/api/realtime/users", body)

    async def close_realtime(self) -> None:
        """Hang up calls, stop reconnecting, close the connection and emit ``close``.

        Safe to call twice.
        """
        await self._calls.close()
        if await self._link.close():
            await self._delivery.drain()
        await self._http.close()

    def emit(self, message: RealtimeMessage) -> None:
        """Deliver ``message`` to the callback and every stream (never blocks)."""
        self._delivery.emit(message)

    # -- calls (rtc) ---------------------------------------------------------------------------

    def set_rtc_handler(self, handler: RtcHandler | None) -> None:
        """Route ``#rtc`` frames to ``handler``; it runs on the reader, so it must not block."""
        self._calls.set_handler(handler)

    def on_rtc_frame(self, frame: HubFrame) -> None:
        """Handle one ``#rtc`` frame: the registered handler's, else the calls'. Overridable."""
        self._calls.handle_frame(frame)

    def use_rtc_factory(self, factory: PeerFactory) -> None:
        """Make this client's calls with ``factory``, given after construction (a device
        that loads aiortc only when a call first needs it builds its factory then).

        Raises:
            RealtimeError: INVALID_REQUEST once the calls exist: they keep their factory.
        """
        self._calls.use_factory(factory)

    @property
    def rtc(self) -> RtcEngine:
        """This client's calls (made on first use)."""
        return self._calls.engine

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
        self._link.require_open()
        return await self._calls.dial(
            cid, ice=ice, media=media, channels=channels, callback=callback
        )

    async def send_rtc(self, cid: str, content: dict[str, Any]) -> None:
        """Send an ``rtc`` signaling frame to connection ``cid`` (``cid:...``).

        Raises:
            RealtimeError: INVALID_REQUEST with the reference's texts when there is no open
                connection; INVALID_PARAMETER when the frame is malformed.
        """
        self._link.require_open()
        action = Rtc(scid_of(cid), content)
        checks.check_action(action)
        await self._link.send(action)

    # -- HTTP ----------------------------------------------------------------------------------

    async def get_ice_servers(self) -> dict[str, Any]:
        """STUN and TURN servers for a call, TURN credentials minted now by the hub.

        Returns:
            ``{"iceServers": [{urls, username, credential}, ...], "ttl": SECONDS,
            "iceTransportPolicy": "all" | "relay"}``.

        Raises:
            HubRequestError: UNAUTHORIZED for a refused token; NOT_FOUND from a hub that
                does not hand out ICE servers; ERROR when the hub cannot be reached.
        """
        payload = await self._http.request("GET", "/api/ice-servers")
        if not isinstance(payload, dict) or not isinstance(payload.get("iceServers"), list):
            raise HubRequestError(Codes.ERROR, "The hub's answer to /api/ice-servers has no list.")
        return payload

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """Name and role of an account (``{user_id, name, role}``); admins and devices only.

        Raises:
            HubRequestError: FORBIDDEN for a user-role token, NOT_FOUND for an unknown id;
                ERROR when the hub cannot be reached.
        """
        payload = await self._http.request("GET", f"/api/users/{quote(user_id, safe='')}")
        if not isinstance(payload, dict) or not isinstance(payload.get("role"), str):
            raise HubRequestError(Codes.ERROR, "The hub's answer to /api/users has no role.")
        return payload

    async def upload_snapshot(self, jpeg: bytes) -> str:
        """Store a JPEG on the hub for alerts to link to; the link (``/api/snapshots/ID``).

        Raises:
            HubRequestError: INVALID_PARAMETER for a non-JPEG or oversized image; FORBIDDEN
                for a user-role token; ERROR when the hub cannot be reached.
        """
        # A stream: aiohttp warns that a large bytes body is copied on the event loop.
        payload = await self._http.request("POST", "/api/snapshots", data=io.BytesIO(jpeg))
        if not isinstance(payload, dict) or not isinstance(payload.get("url"), str):
            raise HubRequestError(Codes.ERROR, "The hub's answer to /api/snapshots has no url.")
        return str(payload["url"])

    # -- web push (the reference's names; see agent.push.client_methods) ----------------------

    async def vapid_public_key(self) -> dict[str, str]:
        """The hub's VAPID public key: ``{"VAPIDPublicKey": ...}`` (see :class:`PushCalls`)."""
        return await self._push.vapid_public_key()

    async def subscribe_notification(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> str:
        """Store a browser's push subscription for this account (see :class:`PushCalls`)."""
        return await self._push.subscribe_notification(params, endpoint=endpoint, keys=keys)

    async def unsubscribe_notification(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> str:
        """Delete this account's push subscription (see :class:`PushCalls`)."""
        return await self._push.unsubscribe_notification(params, endpoint=endpoint, keys=keys)

    async def push_notification(
        self,
        notification: Mapping[str, Any],
        user_ids: str | Sequence[str] | None = None,
    ) -> str:
        """Push ``{"title", "body"}`` to ``user_ids`` (see :class:`PushCalls`)."""
        return await self._push.push_notification(notification, user_ids)

    async def push_alert(self, request: Mapping[str, Any]) -> str:
        """Send one outbox alert to the hub (see :class:`PushCalls`)."""
        return await self._push.push_alert(request)

    async def push_alerts(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send several outbox alerts in one request (see :class:`PushCalls`)."""
        return await self._push.push_alerts(requests)

    # -- private -------------------------------------------------------------------------------

    def _on_frame(self, frame: HubFrame) -> None:
        if frame.kind is FrameKind.RTC:
            try:
                self.on_rtc_frame(frame)
            except Exception:
                log.exception("rtc handler failed")
            return
        message = message_from_frame(frame)
        if message is not None:
            self.emit(message)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = await self._http.request("POST", path, body)
        if not isinstance(payload, dict) or not isinstance(payload.get("list"), list):
            raise HubRequestError(Codes.ERROR, f"The hub's answer to {path} has no list.")
        return payload


def _schedule(
    backoff: Callable[[], Iterator[float]] | None,
    reconnect: retry.ReconnectPolicy | None,
    refused_delay: float,
) -> Callable[[], retry.ReconnectSchedule]:
    """The factory of reconnect schedules the arguments ask for (one per started link)."""
    if backoff is not None:
        return lambda: retry.FixedBackoff(backoff, refused_seconds=refused_delay)
    policy = reconnect or retry.ReconnectPolicy(refused_seconds=refused_delay)
    return lambda: retry.Reconnect(policy)
