"""RealtimeClient: pure parts, then against the real hub over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from agent.client import (
    DROPPED_CODE,
    ConnectionState,
    MessageType,
    RealtimeClient,
    RealtimeMessage,
    message_from_frame,
)
from agent.config import Settings, load_settings
from agent.errors import Codes, RealtimeError, Texts
from agent.hub.accounts import ACCOUNTS_FILE, Account, AccountStore, Role
from agent.hub.server import HubServer
from agent.hub.tokens import TokenIssuer
from agent.protocol import FrameKind, HubFrame, encode_hub_frame, parse_hub_frame
from agent.retry import backoff

# -- pure: frames to messages, URLs, argument checks (no socket) ------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (FrameKind.MESSAGE, MessageType.MESSAGE),
        (FrameKind.PRIVATE, MessageType.PRIVATE),
        (FrameKind.NOTICE, MessageType.NOTICE),
    ],
)
def test_message_from_frame_carries_the_sender(kind: FrameKind, expected: MessageType) -> None:
    text = encode_hub_frame(
        HubFrame(kind, {"t": "100% ünïcode"}, user_id="u-1", scid="abc", srid="g", code="X")
    )
    assert "%" in text  # percent-encoded like JavaScript's encodeURI
    frame = parse_hub_frame(text)
    assert isinstance(frame, HubFrame)
    assert message_from_frame(frame) == RealtimeMessage(
        type=expected,
        message={"t": "100% ünïcode"},
        sender="u-1",
        sender_cid="cid:abc",
        sender_rid="g",
        code="X",
    )


def test_message_from_plain_json_frame_without_sender() -> None:
    frame = parse_hub_frame('{"#message": "hi"}')
    assert isinstance(frame, HubFrame)
    assert message_from_frame(frame) == RealtimeMessage(MessageType.MESSAGE, "hi")


def test_error_frames_take_code_and_text_from_either_shape() -> None:
    as_object = HubFrame(FrameKind.ERROR, {"code": "INVALID_PARAMETER", "message": "bad"})
    as_text = HubFrame(FrameKind.ERROR, "bad", code="NOT_FOUND")
    assert message_from_frame(as_object) == RealtimeMessage(
        MessageType.ERROR, "bad", code="INVALID_PARAMETER"
    )
    assert message_from_frame(as_text) == RealtimeMessage(
        MessageType.ERROR, "bad", code="NOT_FOUND"
    )


def test_rtc_frames_are_not_callback_messages() -> None:
    assert message_from_frame(HubFrame(FrameKind.RTC, {"candidate": {}}, scid="abc")) is None


def test_message_types_compare_equal_to_the_reference_strings() -> None:
    as_text: str = MessageType.RTC_INCOMING
    assert as_text == "rtc:incoming"
    assert {t.value for t in MessageType} >= {
        "message", "private", "notice", "error", "success", "close", "reconnect", "rtc:closed"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("url", "http_url"),
    [
        ("ws://127.0.0.1:8080/ws", "http://127.0.0.1:8080"),
        ("wss://hub.local:8443/ws", "https://hub.local:8443"),
        ("wss://example.com/edge/ws/", "https://example.com/edge"),
        ("ws://[::1]:9/ws", "http://[::1]:9"),
    ],
)
def test_http_url_is_derived_from_the_websocket_url(url: str, http_url: str) -> None:
    client = RealtimeClient(url, token="t")
    assert client.http_url == http_url
    assert client.url == url


def test_explicit_http_url_wins() -> None:
    client = RealtimeClient("ws://a:1/ws", token="t", http_url="http://b:2/api-base/")
    assert client.http_url == "http://b:2/api-base"


@pytest.mark.parametrize(
    ("url", "token", "match"),
    [
        ("http://127.0.0.1/ws", "t", '"url" must be ws'),
        ("ws:///ws", "t", '"url" must be ws'),
        ("127.0.0.1:8080", "t", '"url" must be ws'),
        ("ws://127.0.0.1:99999/ws", "t", '"url" must be ws'),
        ("ws://127.0.0.1:port/ws", "t", '"url" must be ws'),
        ("ws://h/ws?token=abc", "t", "Pass the token"),
        ("ws://h/ws", "", '"token" must be'),
    ],
)
def test_constructor_names_the_bad_argument(url: str, token: str, match: str) -> None:
    with pytest.raises(RealtimeError, match=match) as info:
        RealtimeClient(url, token=token)
    assert info.value.code == Codes.INVALID_PARAMETER


def test_the_token_stays_out_of_repr() -> None:
    client = RealtimeClient("ws://h:1/ws", token="sekrit-token")
    assert "sekrit" not in repr(client)


@pytest.mark.parametrize("callback", [None, "print", 42, {"a": 1}])
async def test_callback_must_be_a_function(callback: Any) -> None:
    client = RealtimeClient("ws://127.0.0.1:9/ws", token="t")
    with pytest.raises(RealtimeError) as info:
        await client.connect_realtime(callback)
    assert info.value.as_dict() == {"code": "INVALID_REQUEST", "message": Texts.CALLBACK}
    assert client.state is ConnectionState.IDLE


async def test_every_call_before_connect_says_no_connection() -> None:
    client = RealtimeClient("ws://127.0.0.1:9/ws", token="t")
    calls = [
        client.join_realtime("g"),
        client.join_realtime(None),
        client.leave_realtime("g"),
        client.post_realtime("hi", "g"),
        client.post_realtime("hi", str(uuid.uuid4())),
        client.send_rtc("cid:abc", {"hungup": "x"}),
    ]
    for call in calls:
        with pytest.raises(RealtimeError) as info:
            await call
        assert info.value.as_dict() == {"code": "INVALID_REQUEST", "message": Texts.NO_CONNECTION}
    await client.close_realtime()  # closing a client that never connected is fine


async def test_listing_arguments_are_checked_before_any_request() -> None:
    client = RealtimeClient("ws://127.0.0.1:9/ws", token="t")
    with pytest.raises(RealtimeError, match='"group" is required') as info:
        await client.get_realtime_users()
    assert info.value.code == Codes.INVALID_REQUEST
    with pytest.raises(RealtimeError, match=r"Unknown fetch option.*fetchMore") as info:
        await client.get_realtime_groups(None, {"fetchMore": True})
    assert info.value.code == Codes.INVALID_PARAMETER
    with pytest.raises(RealtimeError, match='"params" must be an object'):
        await client.get_realtime_groups(["group"])  # type: ignore[arg-type]


async def test_a_stream_that_falls_behind_drops_the_oldest_and_says_so() -> None:
    client = RealtimeClient("ws://127.0.0.1:9/ws", token="t")
    stream = client.messages(maxsize=2)
    for n in range(5):
        client.emit(RealtimeMessage(MessageType.MESSAGE, n))
    client.emit(RealtimeMessage(MessageType.CLOSE, "WebSocket connection closed."))
    received = [m async for m in stream]
    assert received[0].type is MessageType.ERROR
    assert received[0].code == DROPPED_CODE
    assert received[0].message.startswith("4 message(s) dropped")
    assert [m.message for m in received[1:]] == [4, "WebSocket connection closed."]
    # The stream ended with "close" and no longer receives.
    client.emit(RealtimeMessage(MessageType.MESSAGE, "late"))
    assert [m async for m in stream] == []


async def test_streams_are_independent_and_closable() -> None:
    client = RealtimeClient("ws://127.0.0.1:9/ws", token="t")
    fast, gone = client.messages(), client.messages()
    async with gone:
        pass
    client.emit(RealtimeMessage(MessageType.NOTICE, "n"))
    assert await anext(fast) == RealtimeMessage(MessageType.NOTICE, "n")
    assert [m async for m in gone] == []


# -- against the real hub over real sockets ---------------------------------------------------


def _fast_backoff() -> Iterator[float]:
    return backoff(initial=0.05, factor=2, cap=0.5)


Predicate = Callable[[RealtimeMessage], bool]


class Recorder:
    """A sync callback that keeps every message and lets a test await the one it expects."""

    def __init__(self) -> None:
        self.messages: list[RealtimeMessage] = []
        self._changed = asyncio.Event()

    def __call__(self, message: RealtimeMessage) -> None:
        self.messages.append(message)
        self._changed.set()

    def types(self) -> list[str]:
        return [m.type for m in self.messages]

    def mark(self) -> int:
        return len(self.messages)

    async def wait_for(self, predicate: Predicate, *, after: int = 0) -> RealtimeMessage:
        seen = after
        async with asyncio.timeout(_WAIT):
            while True:
                for message in self.messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self.messages)
                self._changed.clear()
                await self._changed.wait()


class AsyncRecorder(Recorder):
    """The same, as an async callback (the client awaits it in order)."""

    async def __call__(self, message: RealtimeMessage) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().__call__(message)


_WAIT = 10.0


def of(kind: str, **fields: Any) -> Predicate:
    """A predicate: a message of type ``kind`` whose attributes equal ``fields``."""
    return lambda m: m.type == kind and all(getattr(m, k) == v for k, v in fields.items())


@dataclass
class Peer:
    client: RealtimeClient
    inbox: Recorder
    account: Account
    token: str

    @property
    def user_id(self) -> str:
        return self.account.user_id


PeerFactory = Callable[..., Awaitable[Peer]]


def _hub_settings(state_dir: Path, **limits: Any) -> Settings:
    return load_settings(
        None, state_dir=state_dir, hub={"host": "127.0.0.1", "port": 0, "limits": limits}
    )


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(_hub_settings(tmp_path / "hub"), state_dir=tmp_path / "hub")
    await server.start()
    yield server
    await server.stop()


async def _token(hub: HubServer, name: str) -> tuple[Account, str]:
    account = await asyncio.to_thread(hub.accounts.get_by_name, name)
    if account is None:
        account = await asyncio.to_thread(hub.accounts.add, name, None, Role.DEVICE, groups=["*"])
    return account, hub.tokens.issue(account, 3600)


@pytest.fixture
async def peer(hub: HubServer) -> AsyncIterator[PeerFactory]:
    clients: list[RealtimeClient] = []

    async def connect(name: str, inbox: Recorder | None = None, **options: Any) -> Peer:
        account, token = await _token(hub, name)
        options.setdefault("backoff", _fast_backoff)
        client = RealtimeClient(hub.ws_url, token=token, **options)
        clients.append(client)
        inbox = inbox if inbox is not None else Recorder()
        await client.connect_realtime(inbox)
        return Peer(client, inbox, account, token)

    yield connect
    for client in clients:
        await client.close_realtime()


async def _join(peer: Peer, group: str, *, keep: bool = False) -> None:
    """Join and wait for the hub's own USER_JOINED notice (it confirms the join)."""
    mark = peer.inbox.mark()
    answer = await peer.client.join_realtime(group, keep=keep)
    assert answer == {"type": "success", "message": f'Joined realtime message group: "{group}".'}
    await peer.inbox.wait_for(
        of("notice", code="USER_JOINED", sender=peer.user_id, sender_rid=group), after=mark
    )


async def test_connect_reports_success_and_opens(peer: PeerFactory) -> None:
    alice = await peer("alice")
    assert alice.client.state is ConnectionState.OPEN
    await alice.inbox.wait_for(of("success", message="Connected to WebSocket server."))


async def test_join_notices_broadcast_leave_and_disconnect(peer: PeerFactory) -> None:
    alice, bob, carol = await peer("alice"), await peer("bob"), await peer("carol")
    await _join(alice, "lobby")
    mark = alice.inbox.mark()
    await _join(bob, "lobby")
    joined = await alice.inbox.wait_for(of("notice", code="USER_JOINED", sender=bob.user_id))
    assert joined.message == f'User "{bob.user_id}" has joined the message group.'
    assert joined.sender_rid == "lobby"
    assert joined.sender_cid is not None
    assert joined.sender_cid.startswith("cid:")

    content = {"text": "100% done, ünïcode ok", "n": [1, 2]}
    assert await bob.client.post_realtime(content, "lobby") == {
        "type": "success",
        "message": "Message sent.",
    }
    for member in (alice, bob):  # every member, the sender included
        got = await member.inbox.wait_for(of("message", sender=bob.user_id), after=mark)
        assert got.message == content
        assert got.sender_rid == "lobby"
        assert got.sender_cid == joined.sender_cid
    assert not any(m.type == "message" for m in carol.inbox.messages)

    assert await bob.client.leave_realtime("lobby") == {
        "type": "success",
        "message": 'Left realtime message group: "lobby".',
    }
    left = await alice.inbox.wait_for(of("notice", code="USER_LEFT", sender=bob.user_id))
    assert "has left the message group" in left.message
    assert bob.client.groups == ()

    await _join(carol, "lobby")
    await carol.client.close_realtime()
    gone = await alice.inbox.wait_for(of("notice", code="USER_DISCONNECTED", sender=carol.user_id))
    assert gone.message.endswith("has been disconnected.")


async def test_join_switches_groups_unless_keep_and_none_leaves_all(peer: PeerFactory) -> None:
    alice = await peer("alice")
    await _join(alice, "a")
    await _join(alice, "b", keep=True)
    assert alice.client.groups == ("a", "b")
    mark = alice.inbox.mark()
    await _join(alice, "c")  # without keep: the reference's switch
    assert list(alice.client.groups) == ["c"]
    await alice.inbox.wait_for(of("notice", code="USER_LEFT", sender_rid="a"), after=mark)
    await alice.inbox.wait_for(of("notice", code="USER_LEFT", sender_rid="b"), after=mark)
    assert await alice.client.join_realtime(None) == {
        "type": "success",
        "message": "Left realtime message group.",
    }
    await alice.inbox.wait_for(of("notice", code="USER_LEFT", sender_rid="c"), after=mark)
    assert not alice.client.groups
    groups = await alice.client.get_realtime_groups()
    assert groups["list"] == []


async def test_private_message_reaches_every_connection_and_echoes(peer: PeerFactory) -> None:
    alice, bob, bob_again = await peer("alice"), await peer("bob"), await peer("bob")
    answer = await alice.client.post_realtime({"hi": "bob"}, bob.user_id)
    assert answer == {"type": "success", "message": "Message sent."}
    for inbox in (bob.inbox, bob_again.inbox, alice.inbox):  # alice gets the echo
        got = await inbox.wait_for(of("private", sender=alice.user_id))
        assert got.message == {"hi": "bob"}
        assert got.sender_rid is None
        assert got.sender_cid is not None
        assert got.sender_cid.startswith("cid:")


async def test_hub_errors_reach_the_callback(peer: PeerFactory) -> None:
    alice = await peer("alice")
    nobody = str(uuid.uuid4())
    await alice.client.post_realtime("anyone there?", nobody)
    error = await alice.inbox.wait_for(of("error", code="NOT_FOUND"))
    assert nobody in error.message


async def test_reference_error_texts(peer: PeerFactory, hub: HubServer) -> None:
    alice = await peer("alice")
    with pytest.raises(RealtimeError) as info:
        await alice.client.post_realtime("hi", "nowhere")
    assert info.value.as_dict() == {
        "code": "INVALID_REQUEST",
        "message": "User has not joined to the recipient group. Run joinRealtime('nowhere')",
    }
    with pytest.raises(RealtimeError, match="No recipient"):
        await alice.client.post_realtime("hi", "")
    with pytest.raises(RealtimeError, match="JSON-serializable") as info:
        await alice.client.post_realtime(object(), alice.user_id)
    assert info.value.code == Codes.INVALID_PARAMETER
    with pytest.raises(RealtimeError, match="the hub accepts up to"):
        await alice.client.post_realtime("x" * 70_000, alice.user_id)
    with pytest.raises(RealtimeError, match='"notification" must be'):
        await alice.client.post_realtime("x", alice.user_id, {"title": 1})
    with pytest.raises(RealtimeError, match='"group" must be a string'):
        await alice.client.join_realtime(7)  # type: ignore[arg-type]
    with pytest.raises(RealtimeError, match='"rid" is 200 characters'):
        await alice.client.join_realtime("g" * 200)

    await hub.stop()  # the connection drops; the client retries
    await alice.inbox.wait_for(of("reconnect"))
    with pytest.raises(RealtimeError) as info:
        await alice.client.post_realtime("hi", alice.user_id)
    assert info.value.as_dict() == {"code": "INVALID_REQUEST", "message": Texts.NOT_OPEN}
    # A group joined while reopening is remembered, not refused.
    assert (await alice.client.join_realtime("later"))["type"] == "success"
    assert alice.client.groups == ("later",)

    await alice.client.close_realtime()
    assert alice.inbox.messages[-1] == RealtimeMessage(MessageType.CLOSE, _CLOSED)
    assert alice.client.state is ConnectionState.CLOSED
    with pytest.raises(RealtimeError) as info:
        await alice.client.join_realtime("g")
    assert info.value.as_dict() == {"code": "INVALID_REQUEST", "message": Texts.NO_CONNECTION}


_CLOSED = "WebSocket connection closed."


async def test_a_connection_that_cannot_work_reports_the_reference_error(
    hub: HubServer,
) -> None:
    _account, token = await _token(hub, "alice")
    client = RealtimeClient(hub.ws_url, token=token)
    inbox = Recorder()
    # A failure no retry can fix (here: the WebSocket library refusing its arguments).
    with (
        mock.patch("agent.client.link.connect", autospec=True, side_effect=ValueError("bad")),
        pytest.raises(RealtimeError) as info,
    ):
        await client.connect_realtime(inbox)
    assert info.value.as_dict() == {"code": "ERROR", "message": Texts.CONNECTION_ERROR}
    await inbox.wait_for(of("close"))
    assert inbox.types() == ["error", "close"]
    assert inbox.messages[0].message == Texts.CONNECTION_ERROR
    assert client.state is ConnectionState.CLOSED
    # It can be connected again afterwards.
    await client.connect_realtime(inbox)
    assert client.state.value == "open"
    await client.close_realtime()


async def test_a_refused_token_is_reported_and_retried(hub: HubServer) -> None:
    client = RealtimeClient(hub.ws_url, token="not-a-jwt", refused_delay=0.2)
    inbox = Recorder()
    await client.connect_realtime(inbox)  # returns: the outcome goes to the callback
    error = await inbox.wait_for(of("error", code="UNAUTHORIZED"))
    assert "HTTP 401" in error.message
    await inbox.wait_for(of("reconnect"))
    # Retried at the slow pace, and reported each time.
    await inbox.wait_for(of("error", code="UNAUTHORIZED"), after=inbox.mark())
    assert client.state is ConnectionState.RECONNECTING
    with pytest.raises(RealtimeError, match="not open"):
        await client.post_realtime("hi", str(uuid.uuid4()))
    await client.close_realtime()
    assert inbox.types()[-1] == "close"


async def test_sync_async_and_failing_callbacks(
    peer: PeerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(Recorder):
        def __call__(self, message: RealtimeMessage) -> None:
            super().__call__(message)
            if message.type == "success":
                raise RuntimeError("callback bug")

    sync_peer = await peer("alice", Recorder())
    async_peer = await peer("bob", AsyncRecorder())
    flaky = await peer("carol", Flaky())
    for member in (sync_peer, async_peer, flaky):
        await _join(member, "room", keep=True)
    await sync_peer.client.post_realtime("to all", "room")
    for member in (sync_peer, async_peer, flaky):
        got = await member.inbox.wait_for(of("message", sender=sync_peer.user_id))
        assert got.message == "to all"
    assert "realtime callback failed on a success message" in caplog.text


async def test_messages_iterator(peer: PeerFactory) -> None:
    alice, bob = await peer("alice"), await peer("bob")
    await _join(alice, "room")
    await _join(bob, "room")
    received: list[RealtimeMessage] = []
    async with alice.client.messages() as stream:
        await bob.client.post_realtime("one", "room")
        await bob.client.post_realtime("two", "room")
        async for message in stream:
            if message.type == "message":
                received.append(message)
            if len(received) == 2:
                break
    assert [m.message for m in received] == ["one", "two"]
    assert {m.sender for m in received} == {bob.user_id}

    stream = alice.client.messages()
    await alice.client.close_realtime()
    async with asyncio.timeout(_WAIT):
        rest = [m async for m in stream]  # ends after "close"
    assert rest[-1].type == "close"


async def test_listing_groups_with_conditions_and_paging(peer: PeerFactory) -> None:
    alice, bob, carol = await peer("alice"), await peer("bob"), await peer("carol")
    await _join(alice, "alpha")
    await _join(alice, "beta", keep=True)
    await _join(bob, "alpha")
    await _join(carol, "gamma")

    def names(page: dict[str, Any]) -> list[str]:
        return [row["group"] for row in page["list"]]

    everything = await alice.client.get_realtime_groups()
    assert everything["list"] == [
        {"group": "alpha", "number_of_users": 2},
        {"group": "beta", "number_of_users": 1},
        {"group": "gamma", "number_of_users": 1},
    ]
    assert everything["endOfList"] is True
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"searchFor": "group", "value": "al", "condition": ">="}, ["alpha"]),
        ({"searchFor": "group", "value": "beta"}, ["beta"]),
        ({"searchFor": "group", "value": "beta", "condition": "ne"}, ["alpha", "gamma"]),
        ({"searchFor": "group", "value": "beta", "condition": "<"}, ["alpha"]),
        ({"searchFor": "group", "value": "alpha", "range": "beta"}, ["alpha", "beta"]),
        ({"searchFor": "number_of_users", "value": 2, "condition": "gte"}, ["alpha"]),
        ({"searchFor": "number_of_users", "value": 2, "condition": "<"}, ["beta", "gamma"]),
        ({"searchFor": "number_of_users", "value": 1, "condition": "="}, ["beta", "gamma"]),
    ]
    for params, expected in cases:
        assert sorted(names(await alice.client.get_realtime_groups(params))) == expected, params

    pages: list[str] = []
    options: dict[str, Any] = {"limit": 1}
    while True:
        page = await alice.client.get_realtime_groups(None, options)
        assert len(page["list"]) <= 1
        pages += names(page)
        if page["endOfList"]:
            break
        options = {"limit": 1, "startKey": page["startKey"]}
    assert pages == ["alpha", "beta", "gamma"]
    descending = await alice.client.get_realtime_groups(None, {"ascending": False})
    assert names(descending) == ["gamma", "beta", "alpha"]


async def test_listing_users_with_filter_and_paging(peer: PeerFactory) -> None:
    alice, bob = await peer("alice"), await peer("bob")
    await _join(alice, "alpha")
    mark = alice.inbox.mark()
    await _join(bob, "alpha")
    notice = await alice.inbox.wait_for(of("notice", sender=bob.user_id), after=mark)

    users = await alice.client.get_realtime_users()  # defaults to the joined group
    assert {row["user_id"] for row in users["list"]} == {alice.user_id, bob.user_id}
    assert notice.sender_cid in {row["connection_id"] for row in users["list"]}
    only_bob = await alice.client.get_realtime_users(group="alpha", user_id=bob.user_id)
    assert only_bob["list"] == [{"user_id": bob.user_id, "connection_id": notice.sender_cid}]
    first = await alice.client.get_realtime_users(group="alpha", fetch_options={"limit": 1})
    assert len(first["list"]) == 1
    assert first["endOfList"] is False
    second = await alice.client.get_realtime_users(
        group="alpha", fetch_options={"limit": 1, "startKey": first["startKey"]}
    )
    assert {r["user_id"] for r in first["list"] + second["list"]} == {alice.user_id, bob.user_id}
    assert (await alice.client.get_realtime_users(group="empty"))["list"] == []


async def test_listing_errors_carry_the_hubs_code_and_text(
    peer: PeerFactory, hub: HubServer
) -> None:
    alice = await peer("alice")
    with pytest.raises(RealtimeError) as info:
        await alice.client.get_realtime_groups({"searchFor": "number_of_users", "value": "x"})
    assert info.value.as_dict() == {
        "code": "INVALID_PARAMETER",
        "message": '"value" must be a number.',
    }
    with pytest.raises(RealtimeError) as info:
        await alice.client.get_realtime_users(group="alpha", user_id="not-a-uuid")
    assert info.value.code == Codes.INVALID_PARAMETER
    stranger = RealtimeClient(hub.ws_url, token="not-a-jwt")
    with pytest.raises(RealtimeError) as info:
        await stranger.get_realtime_groups()
    assert info.value.code == Codes.UNAUTHORIZED
    await stranger.close_realtime()
    port = hub.port
    await hub.stop()
    with pytest.raises(RealtimeError, match=f"Cannot reach the hub at http://127.0.0.1:{port}"):
        await alice.client.get_realtime_groups()


async def test_keepalive_keeps_an_idle_connection_open(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    hub = HubServer(_hub_settings(state, idle_timeout_seconds=1.0), state_dir=state)
    await hub.start()
    _alice, alice_token = await _token(hub, "alice")
    _bob, bob_token = await _token(hub, "bob")
    chatty = RealtimeClient(hub.ws_url, token=alice_token, keepalive_interval=0.2)
    quiet = RealtimeClient(
        hub.ws_url, token=bob_token, keepalive_interval=60, backoff=_fast_backoff
    )
    chatty_inbox, quiet_inbox = Recorder(), Recorder()
    try:
        await chatty.connect_realtime(chatty_inbox)
        await quiet.connect_realtime(quiet_inbox)
        # The hub closes the quiet one for idling (4408) ...
        dropped = await quiet_inbox.wait_for(of("reconnect"))
        assert "4408" in dropped.message
        # ... while the one sending keepAlive every 0.2 s, idle just as long, stays.
        assert "reconnect" not in chatty_inbox.types()
        assert chatty.state is ConnectionState.OPEN
    finally:
        await chatty.close_realtime()
        await quiet.close_realtime()
        await hub.stop()


async def test_the_token_never_reaches_the_logs(
    peer: PeerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await peer("alice")
    await alice.client.get_realtime_groups()
    await alice.client.close_realtime()
    assert any("GET /ws?token=********" in r.getMessage() for r in caplog.records)
    assert alice.token not in caplog.text


# -- reconnect across a hub process restart ---------------------------------------------------


class HubProcess:
    """``edge-agent hub`` as a child process on 127.0.0.1."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = 0
        self.log: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self, port: int = 0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "hub", "--host", "127.0.0.1",
            "--port", str(port), "--state-dir", str(self.state_dir), "--log-level", "info",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert self._proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self._proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("hub exited:\n" + "".join(self.log))
                self.log.append(line)
                found = re.search(r"hub listening on http://127\.0\.0\.1:(\d+)", line)
                if found:
                    self.port = int(found.group(1))
                    break
        self._drain = asyncio.create_task(self._keep_reading(self._proc.stderr))

    async def _keep_reading(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.log.append(line.decode())

    async def kill(self) -> None:
        """SIGKILL: no close frames, connections just die."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> int:
        """SIGTERM: the clean stop; returns the exit code."""
        return await self._end(signal.SIGTERM)

    async def _end(self, sig: int) -> int:
        proc, drain = self._proc, self._drain
        if proc is None:
            return 0
        self._proc = self._drain = None
        if proc.returncode is None:
            proc.send_signal(sig)
        code = await proc.wait()
        if drain is not None:
            await drain
        return code


async def test_reconnects_rejoins_and_receives_after_a_hub_restart(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    state.mkdir(mode=0o700)
    accounts = AccountStore(state / ACCOUNTS_FILE)
    issuer = TokenIssuer.from_state_dir(state)
    alice = accounts.add("alice", None, Role.DEVICE, groups=["*"])
    bob = accounts.add("bob", None, Role.USER, groups=["*"])
    accounts.close()

    hub = HubProcess(state)
    await hub.start()
    url = f"ws://127.0.0.1:{hub.port}/ws"
    device = RealtimeClient(url, token=issuer.issue(alice, 3600), backoff=_fast_backoff)
    inbox = Recorder()
    viewer = RealtimeClient(url, token=issuer.issue(bob, 3600), backoff=_fast_backoff)
    viewer_inbox = Recorder()
    try:
        await device.connect_realtime(inbox)
        await device.join_realtime("doorbell")
        await device.join_realtime("devices", keep=True)
        for group in ("doorbell", "devices"):
            await inbox.wait_for(of("notice", code="USER_JOINED", sender_rid=group))

        port = hub.port
        await hub.kill()
        mark = inbox.mark()
        await inbox.wait_for(of("reconnect"), after=mark)
        await hub.start(port=port)  # same port, same state directory

        # Back: "success", and the hub confirms both groups were joined again.
        await inbox.wait_for(of("success"), after=mark)
        for group in ("doorbell", "devices"):
            rejoined = await inbox.wait_for(
                of("notice", code="USER_JOINED", sender=alice.user_id, sender_rid=group),
                after=mark,
            )
            assert rejoined.message == f'User "{alice.user_id}" has joined the message group.'
        after = inbox.types()[mark:]
        assert after.index("reconnect") < after.index("success")
        assert device.groups == ("doorbell", "devices")

        # A broadcast sent after the restart, by another client, reaches the device.
        await viewer.connect_realtime(viewer_inbox)
        await viewer.join_realtime("doorbell")
        await viewer_inbox.wait_for(of("notice", code="USER_JOINED", sender=bob.user_id))
        await viewer.post_realtime({"ring": True}, "doorbell")
        got = await inbox.wait_for(of("message", sender=bob.user_id), after=mark)
        assert got.message == {"ring": True}
        assert got.sender_rid == "doorbell"
        users = await viewer.get_realtime_users(group="devices")
        assert [row["user_id"] for row in users["list"]] == [alice.user_id]
    finally:
        await device.close_realtime()
        await viewer.close_realtime()
        assert await hub.stop() == 0
