"""The realtime WebSocket endpoint ``/ws?token=JWT``: a plain ASGI app.

A connection is authenticated before the upgrade: a missing, bad or expired token, or an
account that no longer exists, is answered with HTTP 401 and the user's connection limit
with HTTP 429 (the ASGI "websocket.http.response" extension; a server without it gets an
accepted connection closed with 4401/4429 instead). Then each text frame is rate-limited,
parsed by :mod:`agent.protocol` and dispatched to the backplane.

Notices (``#notice`` with ``#code``): USER_JOINED goes to every member of the group, the
joiner included (as the hosted service does; the joiner's own notice also tells it the
join is done); USER_LEFT goes to every member, the leaver included, before it is removed;
USER_DISCONNECTED goes to the remaining members. Every outbound frame is encoded once and
the same text is queued to each recipient.

Access follows the grants (:mod:`agent.hub.access`): a join to a group the account is not
granted, and a private message or ``rtc`` frame to someone the sender shares no granted
group with, get ``#error`` FORBIDDEN and nothing else happens. The account's current role
and grants are looked up for every frame. When accounts change (removed, grants revoked,
tokens revoked) the open connections are brought in line at once: a removed account's or a
revoked token's connections close with 4401; a connection leaves a group it is no longer
granted (members get the usual USER_LEFT notice) and is told with ``#error`` FORBIDDEN.

``#error`` frames (``{"#error": TEXT, "#code": CODE}``; the connection stays open):
INVALID_REQUEST for malformed JSON, an unknown action, a binary frame, a broadcast to a
group not joined (the reference's text), too many groups; INVALID_PARAMETER for a missing
or malformed field and content over the limit; NOT_FOUND for a recipient or connection id
that is not connected; RATE_LIMITED for a frame dropped by the rate limit (the only error
not counted towards ``max_errors``).

The hub closes with 1008 after more than ``max_errors`` errors in ``error_window_seconds``,
1009 for a frame over ``max_frame_bytes``, 4408 when idle, 4409 when the outbound queue
overflows, and 1012 when it stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qs

from agent.errors import AuthError, Codes, Texts
from agent.hub.access import Access, AccessTable
from agent.hub.accounts import AccountStore
from agent.hub.backplane import Backplane, Member
from agent.hub.connection import WRITE_TEXT_EXTENSION, ASGISend, Connection, ConnState
from agent.hub.limits import CloseCode, LimitSettings
from agent.hub.metrics import HubMetrics
from agent.hub.tokens import TokenIssuer
from agent.protocol import (
    CID_PREFIX,
    Broadcast,
    ClientAction,
    FrameKind,
    HubFrame,
    JoinRoom,
    KeepAlive,
    LeaveRoom,
    Limits,
    Notice,
    ProtocolError,
    Rtc,
    SendMessage,
    encode_hub_frame,
    is_user_id,
    notice_text,
    parse_client_frame,
)
from agent.push.service import PushService

__all__ = ["MAX_GROUPS_PER_CONNECTION", "ASGIReceive", "RealtimeEndpoint"]

log = logging.getLogger(__name__)

ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
# A connection's groups are bounded so that joins cannot grow the hub's memory without end.
MAX_GROUPS_PER_CONNECTION: Final = 100
_SCID_BYTES: Final = 12


class _Refusal(Exception):
    """A connection refused before the upgrade."""

    def __init__(self, status: int, code: str, message: str, close_code: CloseCode) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close_code = close_code


class RealtimeEndpoint:
    """ASGI app of the realtime WebSocket."""

    def __init__(
        self,
        *,
        backplane: Backplane,
        tokens: TokenIssuer,
        accounts: AccountStore,
        access: AccessTable,
        limits: LimitSettings,
        metrics: HubMetrics,
        push: PushService | None = None,
    ) -> None:
        self._push = push
        self._access = access
        # Told of every group post after its fan-out, and of every connection opening and
        # closing (the event history and device presence); they must not block.
        self.on_group_post: Callable[[Member, str, Any], None] | None = None
        self.on_presence: Callable[[Member, bool], None] | None = None
        # This node's open connections and the token generation each was opened with.
        self._local: dict[str, tuple[Connection, int]] = {}
        access.subscribe(self._apply_access)
        self._backplane = backplane
        backplane.on_lost(self._announce_disconnect)
        self._tokens = tokens
        self._accounts = accounts
        self._limits = limits
        self._metrics = metrics
        self._protocol_limits = Limits(
            max_frame_bytes=limits.max_frame_bytes,
            max_content_bytes=limits.max_content_bytes,
            max_json_depth=limits.max_json_depth,
        )

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        """Serve one WebSocket connection from handshake to close."""
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            conn = await self._open(scope, send)
        except _Refusal as refusal:
            await self._refuse(scope, send, refusal)
            return
        try:
            await send({"type": "websocket.accept"})
        except OSError:
            await self._backplane.detach(conn.scid)
            return
        await self._serve(conn, receive)

    async def _open(self, scope: MutableMapping[str, Any], send: ASGISend) -> Connection:
        account = await self._authenticate(scope)
        member = Member(account.user_id, secrets.token_urlsafe(_SCID_BYTES), account.name)
        extension = scope.get("extensions", {}).get(WRITE_TEXT_EXTENSION) or {}
        conn = Connection(
            member,
            send,
            limits=self._limits,
            metrics=self._metrics,
            write_text=extension.get("write_text"),
        )
        cap = self._limits.max_connections_per_user
        if not await self._backplane.attach(member, conn, max_per_user=cap):
            raise _Refusal(
                429,
                Codes.RATE_LIMITED,
                f'User "{account.name}" already has {cap} connections; close one first.',
                CloseCode.TOO_MANY_CONNECTIONS,
            )
        self._local[member.scid] = (conn, account.token_generation)
        if self.on_presence is not None:
            self.on_presence(member, True)
        return conn

    async def _authenticate(self, scope: MutableMapping[str, Any]) -> Access:
        token = _token_of(scope)
        if not token:
            raise _unauthorized("A token is required: connect to /ws?token=JWT.")
        try:
            claims = self._tokens.verify(token)
        except AuthError as exc:
            raise _unauthorized(exc.message) from exc
        # The access table answers without a database round trip (a fleet reconnecting
        # after a restart pays this per connection); an account it does not know yet, or a
        # generation it has not seen, is a change the next poll would bring: bring it now.
        account = self._access.get(claims.user_id)
        if account is None or account.token_generation != claims.generation:
            await self._access.refresh()
            account = self._access.get(claims.user_id)
        if account is None:
            raise _unauthorized("The token's account no longer exists.")
        if claims.generation != account.token_generation:
            raise _unauthorized("The token has been revoked; get a new one.")
        return account

    async def _refuse(
        self, scope: MutableMapping[str, Any], send: ASGISend, refusal: _Refusal
    ) -> None:
        self._metrics.refused[refusal.code] += 1
        log.info("realtime connection refused (%d): %s", refusal.status, refusal.message)
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.accept"})
            reason = refusal.message.encode()[:120].decode(errors="ignore")
            await send({"type": "websocket.close", "code": refusal.close_code, "reason": reason})
            return
        body = json.dumps({"code": refusal.code, "message": refusal.message}).encode()
        headers = [(b"content-type", b"application/json")]
        if refusal.status == 401:
            # RFC 6750 s. 3: a 401 for a bearer token names the scheme.
            headers.append((b"www-authenticate", b'Bearer realm="edge-agent"'))
        await send(
            {"type": "websocket.http.response.start", "status": refusal.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})

    async def _serve(self, conn: Connection, receive: ASGIReceive) -> None:
        self._metrics.connections_opened += 1
        conn.reader = asyncio.current_task()
        conn.start_idle_timer()
        log.debug("connection %s opened for %s", conn.scid, conn.member.name)
        try:
            await self._read_frames(conn, receive)
        except asyncio.CancelledError:
            if not conn.reader_cancelled_by_fail():
                raise
        finally:
            self._local.pop(conn.scid, None)
            await self._disconnect(conn)
            await conn.finish()

    async def _read_frames(self, conn: Connection, receive: ASGIReceive) -> None:
        while conn.state is ConnState.OPEN:
            # Yield once per frame: receive() does not suspend while frames are buffered, and
            # a burst from one sender must not starve other readers, nor the socket writes
            # of recipients whose transports had paused (their queues would overflow).
            await asyncio.sleep(0)
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            if not conn.admit():
                conn.rate_limited()
                continue
            text = message.get("text")
            if text is None:
                conn.error(Codes.INVALID_REQUEST, "Binary frames are not accepted; send JSON text.")
                continue
            await self._handle_text(conn, text)

    async def _handle_text(self, conn: Connection, text: str) -> None:
        try:
            action = parse_client_frame(text, self._protocol_limits)
        except Exception:  # a parser bug must cost one #error, not the connection
            log.debug("connection %s: could not decode a frame", conn.scid, exc_info=True)
            conn.error(Codes.INVALID_REQUEST, "could not decode the frame")
            return
        if isinstance(action, ProtocolError):
            conn.error(action.code, action.message)
        else:
            await self._dispatch(conn, action)

    async def _dispatch(self, conn: Connection, action: ClientAction) -> None:
        access = self._access.get(conn.member.user_id)
        if access is None:
            conn.fail(CloseCode.UNAUTHORIZED, "The account no longer exists.")
            return
        match action:
            case Broadcast():
                await self._broadcast(conn, access, action)
            case SendMessage():
                await self._private(conn, access, action)
            case Rtc():
                await self._rtc(conn, access, action)
            case JoinRoom():
                await self._join(conn, access, action)
            case LeaveRoom():
                await self._leave(conn, action.rid)
            case KeepAlive():
                pass  # admit() already refreshed the idle clock

    async def _broadcast(self, conn: Connection, access: Access, action: Broadcast) -> None:
        if action.rid not in conn.groups:
            conn.error(Codes.INVALID_REQUEST, Texts.not_joined(action.rid))
            return
        if not access.may_use(action.rid):
            _refuse_group(conn, action.rid)
            return
        frame = HubFrame(
            FrameKind.MESSAGE, action.content, conn.member.user_id, conn.scid, action.rid
        )
        await self._backplane.publish_group(action.rid, encode_hub_frame(frame))
        if self.on_group_post is not None:
            self.on_group_post(conn.member, action.rid, action.content)
        if action.notification is not None and self._push is not None:
            # Members are connected by definition: only an "always" notification pushes.
            members = await self._backplane.members(action.rid)
            others = {m.user_id for m in members} - {conn.member.user_id}
            self._push.notify_users(others, action.notification, is_connected=self._connected)

    async def _private(self, conn: Connection, access: Access, action: SendMessage) -> None:
        pushing = action.notification is not None and self._push is not None
        recipient = await self._recipient_id(action.uid, offline_too=pushing)
        # An id no account has is left to the NOT_FOUND answer below.
        known = await self._access_of(recipient) if recipient is not None else None
        if known is not None and not self._may_reach(access, known):
            conn.error(Codes.FORBIDDEN, _no_shared_group(action.uid))
            return
        frame = HubFrame(FrameKind.PRIVATE, action.content, conn.member.user_id, conn.scid)
        text = encode_hub_frame(frame)
        reached = 0
        if recipient is not None:
            reached = await self._backplane.publish_user(recipient, text, exclude=conn.scid)
            if pushing and self._push is not None and action.notification is not None:
                self._push.notify_users(
                    [recipient], action.notification, is_connected=self._connected
                )
        if reached == 0 and recipient != conn.member.user_id and not (pushing and recipient):
            conn.error(Codes.NOT_FOUND, f'Recipient "{action.uid}" is not connected.')
            return
        conn.deliver(text)  # the echo: the sender's own views render from it

    async def _recipient_id(self, uid: str, *, offline_too: bool = False) -> str | None:
        if is_user_id(uid):
            return uid.lower()
        found = await self._backplane.resolve_name(uid)
        if found is None and offline_too:
            # A notification reaches users who are not connected, so look at every account.
            account = await asyncio.to_thread(self._accounts.get_by_name, uid)
            found = account.user_id if account is not None else None
        return found

    async def _access_of(self, user_id: str) -> Access | None:
        """The access of ``user_id``; an account this node has not seen yet (one made
        through another hub node since the last poll) is looked up now."""
        known = self._access.get(user_id)
        if known is None:
            await self._access.refresh()
            known = self._access.get(user_id)
        return known

    async def _connected(self, user_id: str) -> bool:
        return bool(await self._backplane.user_connections(user_id))

    @staticmethod
    def _may_reach(access: Access, recipient: Access) -> bool:
        return recipient.user_id == access.user_id or access.shares_group_with(recipient)

    async def _rtc(self, conn: Connection, access: Access, action: Rtc) -> None:
        cid = f"{CID_PREFIX}{action.scid}"
        target = await self._backplane.connection(action.scid)
        if target is None:
            conn.error(Codes.NOT_FOUND, f'Connection "{cid}" is not connected.')
            return
        recipient = await self._access_of(target.user_id)
        if recipient is None or not self._may_reach(access, recipient):
            conn.error(Codes.FORBIDDEN, _no_shared_group(cid))
            return
        frame = HubFrame(FrameKind.RTC, action.content, conn.member.user_id, conn.scid)
        if not await self._backplane.publish_connection(action.scid, encode_hub_frame(frame)):
            conn.error(Codes.NOT_FOUND, f'Connection "{cid}" is not connected.')

    async def _join(self, conn: Connection, access: Access, action: JoinRoom) -> None:
        if action.rid is not None and not access.may_use(action.rid):
            _refuse_group(conn, action.rid)  # before leaving anything: a refusal changes nothing
            return
        for group in list(conn.groups):
            if action.rid is None or (not action.keep and group != action.rid):
                await self._leave(conn, group)
        if action.rid is None or action.rid in conn.groups:
            return
        if len(conn.groups) >= MAX_GROUPS_PER_CONNECTION:
            conn.error(
                Codes.INVALID_REQUEST,
                f"A connection may be in at most {MAX_GROUPS_PER_CONNECTION} groups; "
                "leave one first.",
            )
            return
        notice = self._notice(conn.member, action.rid, Notice.USER_JOINED)
        await self._backplane.join(conn.scid, action.rid)
        conn.groups.add(action.rid)
        await self._backplane.publish_group(action.rid, notice)

    async def _leave(self, conn: Connection, group: str) -> None:
        if group not in conn.groups:
            return  # leaving is idempotent: a client may leave what a restart already dropped
        await self._backplane.publish_group(
            group, self._notice(conn.member, group, Notice.USER_LEFT)
        )
        conn.groups.discard(group)
        await self._backplane.leave(conn.scid, group)

    async def _disconnect(self, conn: Connection) -> None:
        groups = await self._backplane.detach(conn.scid)
        conn.groups.clear()
        if self.on_presence is not None:
            self.on_presence(conn.member, False)
        await self._announce_disconnect(conn.member, groups)

    async def _announce_disconnect(self, member: Member, groups: list[str]) -> None:
        """USER_DISCONNECTED to ``groups``: for a connection closed here, or lost with its node."""
        for group in groups:
            notice = self._notice(member, group, Notice.USER_DISCONNECTED)
            await self._backplane.publish_group(group, notice)

    async def _apply_access(self, table: AccessTable) -> None:
        """Bring this node's open connections in line with changed accounts."""
        for conn, generation in list(self._local.values()):
            access = table.get(conn.member.user_id)
            if access is None:
                conn.fail(CloseCode.UNAUTHORIZED, "The account was removed.")
            elif access.token_generation != generation:
                conn.fail(CloseCode.UNAUTHORIZED, "The token was revoked; sign in again.")
            else:
                for group in [g for g in conn.groups if not access.may_use(g)]:
                    await self._leave(conn, group)
                    conn.error(
                        Codes.FORBIDDEN,
                        f'Group "{group}" is no longer granted to "{access.name}".',
                        counts=False,
                    )

    @staticmethod
    def _notice(member: Member, group: str, notice: Notice) -> str:
        frame = HubFrame(
            FrameKind.NOTICE,
            notice_text(notice, member.user_id),
            member.user_id,
            member.scid,
            group,
            notice.value,
        )
        return encode_hub_frame(frame)


def _token_of(scope: MutableMapping[str, Any]) -> str | None:
    raw: bytes = scope.get("query_string", b"")
    tokens = parse_qs(raw.decode("latin-1")).get("token")
    if tokens:
        return tokens[0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip() or None
    return None


def _refuse_group(conn: Connection, group: str) -> None:
    conn.error(
        Codes.FORBIDDEN,
        f'Group "{group}" is not granted to "{conn.member.name}"; '
        f"an admin can run: edge-agent user grant {conn.member.name} {group}",
    )


def _no_shared_group(recipient: str) -> str:
    return f'"{recipient}" shares no group you are granted; nothing was sent.'


def _unauthorized(message: str) -> _Refusal:
    return _Refusal(401, Codes.UNAUTHORIZED, message, CloseCode.UNAUTHORIZED)
