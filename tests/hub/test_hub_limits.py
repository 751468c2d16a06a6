"""Every limit and bad input: the offender's outcome, and a bystander that kept receiving."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from itertools import count

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from agent.errors import Codes, Texts
from agent.hub.limits import CloseCode
from agent.hub.realtime import MAX_GROUPS_PER_CONNECTION
from agent.hub.tokens import SECRET_FILE

from .conftest import Hub, HubFactory, User, closed_code, join, recv, recv_until, send

_serial = count()


async def _bystanders(hub: Hub, group: str = "room") -> tuple[ClientConnection, ClientConnection]:
    """A sender and a listener in ``group``, both well-behaved."""
    sender_user, listener_user = hub.user(f"sender{next(_serial)}"), hub.user(f"ok{next(_serial)}")
    sender, listener = await hub.connect(sender_user), await hub.connect(listener_user)
    await join(sender, group, sender_user)
    await join(listener, group, listener_user)
    await recv_until(sender, "#notice", **{"#user_id": listener_user.user_id})
    return sender, listener


async def _still_delivers(sender: ClientConnection, listener: ClientConnection) -> None:
    """A broadcast from ``sender`` reaches ``listener`` (and the sender's echo)."""
    note = f"alive-{next(_serial)}"
    await send(sender, {"action": "broadcast", "rid": "room", "content": note})
    for ws in (listener, sender):
        frame = await recv_until(ws, "#message", **{"#message": note})
        assert frame["#srid"] == "room"


async def _offender(hub: Hub, **kwargs: object) -> tuple[User, ClientConnection]:
    user = hub.user(f"offender{next(_serial)}")
    return user, await hub.connect(user, **kwargs)


async def test_a_frame_over_the_limit_closes_with_1009(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_frame_bytes=2048, max_content_bytes=1024)
    sender, listener = await _bystanders(hub)
    _, bad = await _offender(hub)
    await bad.send("x" * 4096)
    assert await closed_code(bad) == 1009
    await _still_delivers(sender, listener)


async def test_content_over_the_limit_is_refused_and_the_connection_kept(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(max_frame_bytes=4096, max_content_bytes=1024)
    sender, listener = await _bystanders(hub)
    user, bad = await _offender(hub)
    await join(bad, "room", user)
    await send(bad, {"action": "broadcast", "rid": "room", "content": "y" * 2000})
    error = await recv_until(bad, "#error")
    assert error == {
        "#error": "Message content is 2002 bytes; the limit is 1024.",
        "#code": Codes.INVALID_PARAMETER,
    }
    await send(bad, {"action": "broadcast", "rid": "room", "content": "small"})
    assert (await recv_until(listener, "#message"))["#message"] == "small"
    await _still_delivers(sender, listener)


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        ("{not json", Codes.INVALID_REQUEST, "Frame is not valid JSON"),
        ("[1, 2]", Codes.INVALID_REQUEST, "Frame must be a JSON object."),
        ('{"action": "dance"}', Codes.INVALID_REQUEST, "Unknown action 'dance'"),
        ('{"rid": "room"}', Codes.INVALID_REQUEST, "Unknown action None"),
        ('{"action": "joinRoom"}', Codes.INVALID_PARAMETER, '"rid" is required'),
        ('{"action": "broadcast", "rid": "room"}', Codes.INVALID_PARAMETER, '"content" is'),
        ('{"action": "sendMessage", "content": 1}', Codes.INVALID_PARAMETER, '"uid" must be'),
        ('{"action": "rtc", "uid": "cid:x", "content": 1}', Codes.INVALID_PARAMETER, "rtc"),
        ('{"action": "broadcast", "rid": "nope", "content": 1}', Codes.INVALID_REQUEST,
         Texts.not_joined("nope")),
        ('{"action": "sendMessage", "uid": "ghost", "content": 1}', Codes.NOT_FOUND,
         'Recipient "ghost" is not connected.'),
        ('{"action": "broadcast", "rid": "room", "content": "\\ud800"}', Codes.INVALID_REQUEST,
         "lone UTF-16 surrogate"),
        ('{"action": "joinRoom", "rid": "\\udfff"}', Codes.INVALID_REQUEST, "surrogate"),
    ],
)  # fmt: skip
async def test_bad_frames_get_an_error_and_keep_the_connection(
    hub: Hub, frame: str, code: str, text: str
) -> None:
    sender, listener = await _bystanders(hub)
    user, bad = await _offender(hub)
    await bad.send(frame)
    error = await recv(bad)
    assert error["#code"] == code
    assert text in error["#error"]
    assert set(error) == {"#error", "#code"}
    await join(bad, "room", user)  # still connected and served
    await _still_delivers(sender, listener)


async def test_binary_frames_are_refused_with_an_error(hub: Hub) -> None:
    sender, listener = await _bystanders(hub)
    _, bad = await _offender(hub)
    await bad.send(b'{"action": "keepAlive"}')
    assert await recv(bad) == {
        "#error": "Binary frames are not accepted; send JSON text.",
        "#code": Codes.INVALID_REQUEST,
    }
    await _still_delivers(sender, listener)


async def test_frames_over_the_rate_are_dropped_with_rate_limited(hub_factory: HubFactory) -> None:
    hub = await hub_factory(rate_burst=5, rate_per_second=0.001)
    sender, listener = await _bystanders(hub)  # 1 frame each so far
    user, bad = await _offender(hub)
    await join(bad, "room", user)
    for _ in range(4):
        await send(bad, {"action": "keepAlive"})  # 5 frames: the burst is spent
    await send(bad, {"action": "broadcast", "rid": "room", "content": "dropped"})
    error = await recv_until(bad, "#error")
    assert error["#code"] == Codes.RATE_LIMITED
    assert "dropped" in error["#error"]
    # The dropped broadcast never reached the group; the bystanders' own buckets are full.
    await _still_delivers(sender, listener)
    assert bad.close_code is None


async def test_too_many_errors_in_the_window_close_with_policy(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_errors=3, error_window_seconds=60)
    sender, listener = await _bystanders(hub)
    _, bad = await _offender(hub)
    for _ in range(4):
        await bad.send("garbage")
    assert await closed_code(bad) == CloseCode.POLICY == 1008
    await _still_delivers(sender, listener)


async def test_errors_spread_out_stay_under_the_window(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_errors=1, error_window_seconds=0.05)
    _, bad = await _offender(hub)
    for _ in range(3):
        await bad.send("garbage")
        assert (await recv(bad))["#code"] == Codes.INVALID_REQUEST
        # Let the window pass: the point of this test is time passing between errors.
        await asyncio.sleep(0.06)
    await send(bad, {"action": "sendMessage", "uid": "ghost", "content": 1})
    assert (await recv(bad))["#code"] == Codes.NOT_FOUND


async def test_an_idle_connection_is_closed_with_4408(hub_factory: HubFactory) -> None:
    hub = await hub_factory(idle_timeout_seconds=0.5)
    sender, listener = await _bystanders(hub)
    _, idle = await _offender(hub)

    async def keep_alive(ws: ClientConnection) -> None:
        while True:
            await send(ws, {"action": "keepAlive"})
            await asyncio.sleep(0.1)  # the client's keep-alive interval, scaled down

    tasks = [asyncio.create_task(keep_alive(ws)) for ws in (sender, listener)]
    try:
        assert await closed_code(idle) == CloseCode.IDLE == 4408
        assert idle.close_reason == "No frame for 0.5 s."
        await _still_delivers(sender, listener)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_connections_over_the_user_limit_are_refused_with_429(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(max_connections_per_user=2)
    sender, listener = await _bystanders(hub)
    user = hub.user("greedy")
    first = await hub.connect(user)
    await hub.connect(user)
    with pytest.raises(InvalidStatus) as refused:
        await hub.connect(user)
    assert refused.value.response.status_code == 429
    assert json.loads(refused.value.response.body) == {
        "code": Codes.RATE_LIMITED,
        "message": 'User "greedy" already has 2 connections; close one first.',
    }
    await _still_delivers(sender, listener)
    # Closing one frees a place; the bystander's notice proves the hub has processed it.
    await join(first, "room", user)
    await first.close()
    await recv_until(listener, "#notice", **{"#code": "USER_DISCONNECTED"})
    await hub.connect(user)


async def test_a_slow_reader_is_closed_alone_when_its_queue_overflows(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(max_outbound_bytes=64 * 1024, rate_burst=10_000)
    sender, listener = await _bystanders(hub)
    user = hub.user("slow")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.server.port))
    slow = await connect(f"{hub.server.ws_url}?token={user.token}", sock=sock, max_queue=1)
    await join(slow, "room", user)
    await recv_until(listener, "#notice", **{"#user_id": user.user_id})

    # The slow client stops reading; 300 x 16 KB is far more than the socket buffers hold.
    blob = "z" * 16_000

    async def broadcast_all() -> None:
        for i in range(300):
            await send(sender, {"action": "broadcast", "rid": "room", "content": f"{i}:{blob}"})

    async def read_all(ws: ClientConnection) -> None:
        for i in range(300):
            assert (await recv_until(ws, "#message"))["#message"].startswith(f"{i}:")

    # The sender reads its echoes as it goes: it is a member, and a reader that keeps up.
    await asyncio.gather(broadcast_all(), read_all(sender), read_all(listener))
    assert await closed_code(slow) == CloseCode.SLOW_READER == 4409
    await _still_delivers(sender, listener)


async def test_groups_per_connection_are_bounded(hub_factory: HubFactory) -> None:
    hub = await hub_factory(rate_burst=1000)
    user, ws = await _offender(hub)
    for i in range(MAX_GROUPS_PER_CONNECTION):
        await join(ws, f"g{i}", user, keep=True)
    await send(ws, {"action": "joinRoom", "rid": "one-too-many", "keep": True})
    error = await recv(ws)
    assert error["#code"] == Codes.INVALID_REQUEST
    assert f"at most {MAX_GROUPS_PER_CONNECTION} groups" in error["#error"]


def _expect_401(excinfo: pytest.ExceptionInfo[InvalidStatus], message: str) -> None:
    response = excinfo.value.response
    assert response.status_code == 401
    assert json.loads(response.body) == {"code": Codes.UNAUTHORIZED, "message": message}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_missing_bad_or_expired_tokens_are_refused_before_the_upgrade(hub: Hub) -> None:
    sender, listener = await _bystanders(hub)
    url = hub.server.ws_url
    with pytest.raises(InvalidStatus) as missing:
        await connect(url)
    _expect_401(missing, "A token is required: connect to /ws?token=JWT.")
    with pytest.raises(InvalidStatus) as bad:
        await connect(f"{url}?token=not.a.jwt")
    _expect_401(bad, "The token is not valid.")

    secret = (hub.server.state_dir / SECRET_FILE).read_bytes()
    user = hub.user("late")
    past = int(time.time()) - 3600
    claims = {"sub": user.user_id, "name": "late", "role": "user", "iat": past, "exp": past + 60}
    with pytest.raises(InvalidStatus) as expired:
        await connect(f"{url}?token={jwt.encode(claims, secret, algorithm='HS256')}")
    _expect_401(expired, "The token has expired.")

    forged = jwt.encode({**claims, "exp": past + 7200}, b"k" * 32, algorithm="HS256")
    with pytest.raises(InvalidStatus) as wrong_key:
        await connect(f"{url}?token={forged}")
    _expect_401(wrong_key, "The token is not valid.")
    await _still_delivers(sender, listener)


async def test_a_token_of_a_removed_account_is_refused(hub: Hub) -> None:
    user = hub.user("gone")
    hub.server.accounts.remove("gone")
    with pytest.raises(InvalidStatus) as removed:
        await hub.connect(user)
    _expect_401(removed, "The token's account no longer exists.")


async def test_a_bearer_header_is_accepted_instead_of_the_query(hub: Hub) -> None:
    user = hub.user("header")
    ws = await connect(
        hub.server.ws_url, additional_headers={"Authorization": f"Bearer {user.token}"}
    )
    assert (await join(ws, "room", user))["#user_id"] == user.user_id
    await ws.close()
    assert uuid.UUID(user.user_id)
