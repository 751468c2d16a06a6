"""Groups, notices, broadcast, private messages and rtc relay over real sockets."""

from __future__ import annotations

import uuid

from websockets.asyncio.client import ClientConnection

from agent.errors import Codes, Texts
from agent.protocol import Notice, notice_text

from .conftest import Hub, User, join, recv, recv_until, send


async def _sentinel(ws: ClientConnection, to: User, note: str) -> None:
    """Send a private message; the recipient's next frame proves nothing came before it."""
    await send(ws, {"action": "sendMessage", "uid": to.user_id, "content": note})


async def _next_is_sentinel(ws: ClientConnection, note: str) -> None:
    frame = await recv(ws)
    assert frame.get("#private") == note, frame


async def test_join_notice_reaches_every_member_including_the_joiner(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    own = await join(a, "lobby", alice)
    assert own["#notice"] == notice_text(Notice.USER_JOINED, alice.user_id)
    assert own["#notice"] == f'User "{alice.user_id}" has joined the message group.'
    assert own["#code"] == "USER_JOINED"
    assert own["#srid"] == "lobby"
    assert len(own["#scid"]) >= 16

    bob_own = await join(b, "lobby", bob)
    seen_by_alice = await recv(a)
    assert seen_by_alice == bob_own
    assert seen_by_alice["#user_id"] == bob.user_id


async def test_broadcast_reaches_members_and_the_sender_but_no_one_else(hub: Hub) -> None:
    alice, bob, carol = hub.user("alice"), hub.user("bob"), hub.user("carol")
    a, b, c = await hub.connect(alice), await hub.connect(bob), await hub.connect(carol)
    a_scid = (await join(a, "lobby", alice))["#scid"]
    await join(b, "lobby", bob)
    await recv_until(a, "#notice", **{"#user_id": bob.user_id})
    await join(c, "elsewhere", carol)

    await send(a, {"action": "broadcast", "rid": "lobby", "content": {"n": 1}})
    expected = {"#message": {"n": 1}, "#user_id": alice.user_id, "#scid": a_scid, "#srid": "lobby"}
    assert await recv(a) == expected
    assert await recv(b) == expected
    await _sentinel(a, carol, "after")
    await _next_is_sentinel(c, "after")


async def test_broadcast_to_a_group_not_joined_is_an_error_naming_it(hub: Hub) -> None:
    alice = hub.user("alice")
    a = await hub.connect(alice)
    await send(a, {"action": "broadcast", "rid": "lobby", "content": "hi"})
    assert await recv(a) == {"#error": Texts.not_joined("lobby"), "#code": Codes.INVALID_REQUEST}


async def test_private_reaches_every_connection_of_the_recipient_and_echoes(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a1, a2 = await hub.connect(alice), await hub.connect(alice)
    b1, b2 = await hub.connect(bob), await hub.connect(bob)
    a1_scid = (await join(a1, "x", alice))["#scid"]

    await send(a1, {"action": "sendMessage", "uid": bob.user_id, "content": "psst"})
    expected = {"#private": "psst", "#user_id": alice.user_id, "#scid": a1_scid}
    assert await recv(b1) == expected
    assert await recv(b2) == expected
    assert await recv(a1) == expected  # the echo
    # The sender's other connection is not a recipient.
    await _sentinel(b1, alice, "only-this")
    await _next_is_sentinel(a2, "only-this")


async def test_private_by_account_name_resolves_to_the_user_id(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    await send(a, {"action": "sendMessage", "uid": "bob", "content": 7})
    frame = await recv(b)
    assert frame["#private"] == 7
    assert frame["#user_id"] == alice.user_id
    assert (await recv(a))["#private"] == 7


async def test_private_to_oneself_is_delivered_once_per_connection(hub: Hub) -> None:
    alice = hub.user("alice")
    a1, a2 = await hub.connect(alice), await hub.connect(alice)
    await send(a1, {"action": "sendMessage", "uid": alice.user_id, "content": "me"})
    assert (await recv(a1))["#private"] == "me"
    assert (await recv(a2))["#private"] == "me"
    await _sentinel(a2, alice, "next")
    await _next_is_sentinel(a1, "next")


async def test_private_to_unknown_or_absent_recipient_is_not_found(hub: Hub) -> None:
    alice = hub.user("alice")
    hub.user("offline")
    a = await hub.connect(alice)
    stranger = str(uuid.uuid4())
    for uid in (stranger, "offline", "nobody"):
        await send(a, {"action": "sendMessage", "uid": uid, "content": "?"})
        assert await recv(a) == {
            "#error": f'Recipient "{uid}" is not connected.',
            "#code": Codes.NOT_FOUND,
        }


async def test_rtc_is_relayed_to_exactly_one_connection(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a = await hub.connect(alice)
    b1, b2 = await hub.connect(bob), await hub.connect(bob)
    a_scid = (await join(a, "call", alice))["#scid"]
    b1_scid = (await join(b1, "call", bob))["#scid"]

    offer = {"sdpoffer": {"type": "offer", "sdp": "v=0\r\n"}}
    await send(a, {"action": "rtc", "uid": f"cid:{b1_scid}", "content": offer})
    assert await recv_until(b1, "#rtc") == {
        "#rtc": offer,
        "#user_id": alice.user_id,
        "#scid": a_scid,
    }
    # The hosted client writes connection ids as "scid:..."; both prefixes reach it.
    await send(a, {"action": "rtc", "uid": f"scid:{b1_scid}", "content": {"pickup": True}})
    assert (await recv(b1))["#rtc"] == {"pickup": True}
    await _sentinel(a, bob, "done")
    await _next_is_sentinel(b2, "done")


async def test_rtc_to_an_unknown_connection_is_not_found(hub: Hub) -> None:
    alice = hub.user("alice")
    a = await hub.connect(alice)
    await send(a, {"action": "rtc", "uid": "cid:nope", "content": {"hungup": "x"}})
    assert await recv(a) == {
        "#error": 'Connection "cid:nope" is not connected.',
        "#code": "NOT_FOUND",
    }


async def test_joining_another_group_switches_and_tells_both_groups(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    a_scid = (await join(a, "one", alice))["#scid"]
    await join(b, "one", bob)
    await recv_until(a, "#notice", **{"#user_id": bob.user_id})

    await send(a, {"action": "joinRoom", "rid": "two"})
    left = {
        "#notice": notice_text(Notice.USER_LEFT, alice.user_id),
        "#user_id": alice.user_id,
        "#scid": a_scid,
        "#srid": "one",
        "#code": "USER_LEFT",
    }
    assert await recv(a) == left  # the leaver hears it too, then its join
    assert (await recv(a))["#code"] == "USER_JOINED"
    assert await recv(b) == left

    await send(a, {"action": "broadcast", "rid": "one", "content": "stale"})
    assert (await recv(a))["#error"] == Texts.not_joined("one")


async def test_keep_adds_a_group_and_leave_room_leaves_one(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    await join(a, "one", alice)
    await join(a, "two", alice, keep=True)
    await join(b, "two", bob)
    await recv_until(a, "#notice", **{"#user_id": bob.user_id})

    for group in ("one", "two"):
        await send(a, {"action": "broadcast", "rid": group, "content": group})
        assert (await recv(a))["#srid"] == group
    assert (await recv(b))["#message"] == "two"

    await send(a, {"action": "leaveRoom", "rid": "two"})
    assert (await recv(a))["#code"] == "USER_LEFT"
    notice = await recv(b)
    assert notice["#code"] == "USER_LEFT"
    assert notice["#user_id"] == alice.user_id
    await send(a, {"action": "broadcast", "rid": "one", "content": "still"})
    assert (await recv(a))["#message"] == "still"


async def test_join_null_leaves_every_group(hub: Hub) -> None:
    alice = hub.user("alice")
    a = await hub.connect(alice)
    await join(a, "one", alice)
    await join(a, "two", alice, keep=True)
    await send(a, {"action": "joinRoom", "rid": None})
    left = {(await recv(a))["#srid"], (await recv(a))["#srid"]}
    assert left == {"one", "two"}
    await send(a, {"action": "broadcast", "rid": "one", "content": "x"})
    assert (await recv(a))["#code"] == Codes.INVALID_REQUEST


async def test_joining_a_group_twice_sends_no_second_notice(hub: Hub) -> None:
    alice = hub.user("alice")
    a = await hub.connect(alice)
    await join(a, "one", alice)
    await send(a, {"action": "joinRoom", "rid": "one"})
    await send(a, {"action": "leaveRoom", "rid": "never-joined"})
    await _sentinel(a, alice, "quiet")
    await _next_is_sentinel(a, "quiet")


async def test_disconnect_notice_reaches_the_remaining_members(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    a_scid = (await join(a, "one", alice))["#scid"]
    await join(b, "one", bob)
    await a.close()
    notice = await recv_until(b, "#notice", **{"#code": "USER_DISCONNECTED"})
    assert notice == {
        "#notice": f'User "{alice.user_id}" left the message group and has been disconnected.',
        "#user_id": alice.user_id,
        "#scid": a_scid,
        "#srid": "one",
        "#code": "USER_DISCONNECTED",
    }


async def test_fields_the_hub_does_not_use_are_ignored(hub: Hub) -> None:
    alice = hub.user("alice")
    a = await hub.connect(alice)
    extra = {"token": alice.token, "notification": {"title": "t", "body": "b"}}
    await send(a, {"action": "joinRoom", "rid": "one", **extra})
    assert (await recv(a))["#code"] == "USER_JOINED"
    await send(a, {"action": "keepAlive", **extra})
    await send(
        a,
        {
            "action": "broadcast",
            "rid": "one",
            "content": "hello",
            "notificationConfig": {"always": True},
            **extra,
        },
    )
    assert (await recv(a))["#message"] == "hello"
