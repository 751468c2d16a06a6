"""Three hub nodes in this process on one Redis and one PostgreSQL database, each with its
own state directory: members spread over the nodes talk, list and call as if they were on one
hub, and an account added, granted or removed through one node takes effect on all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rtc.conftest import LOOPBACK, Inbox, Party, Viewer, small_pattern

from agent.client import RealtimeClient
from agent.config import HubSettings, Settings
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.media import MediaHub, TalkbackSink
from agent.rtc.desk import AccountDirectory, CallDesk
from agent.rtc.peer import PeerFactory
from agent.rtc.policy import CallPolicy

GROUP = "home"
WAIT = 30.0
PASSWORD = "correct horse battery"


@dataclass
class Member(Party):
    """A client connected to one node, and its account."""

    node: HubServer

    def texts(self, kind: str) -> list[Any]:
        return [m.message for m in self.inbox.messages if m.type == kind]


Join = Callable[..., Awaitable[Member]]


@pytest.fixture
async def cluster(
    tmp_path: Path, redis_url: str, database_url: str
) -> AsyncIterator[list[HubServer]]:
    """Three started nodes sharing nothing but Redis and the database; stopped after."""
    nodes: list[HubServer] = []
    for index in range(3):
        hub = HubSettings(host="127.0.0.1", port=0, backplane=redis_url, database=database_url)
        node = HubServer(Settings(state_dir=tmp_path / f"node{index}", hub=hub))
        await node.start()
        nodes.append(node)
    yield nodes
    for node in nodes:
        await node.stop()


@pytest.fixture
async def join(cluster: list[HubServer]) -> AsyncIterator[Join]:
    """``await join(name, node_index)``: a client of a new account on that node, in GROUP."""
    clients: list[RealtimeClient] = []

    async def make(
        name: str,
        index: int,
        *,
        role: Role = Role.USER,
        grants: tuple[str, ...] = ("*",),
        **kw: Any,
    ) -> Member:
        node = cluster[index]
        account = await asyncio.to_thread(node.accounts.add, name, None, role, groups=grants)
        client = RealtimeClient(node.ws_url, token=node.tokens.issue(account, 3600), **kw)
        clients.append(client)
        inbox = Inbox()
        await client.connect_realtime(inbox)
        await client.join_realtime(GROUP)
        await inbox.wait_for("notice", sender=account.user_id)
        return Member(client, account, inbox, node)

    yield make
    for client in clients:
        await client.close_realtime()


async def until(inbox: Inbox, predicate: Callable[[], bool]) -> None:
    """Wait, woken by each message ``inbox`` gets, until ``predicate()``."""
    async with asyncio.timeout(WAIT), inbox._changed:
        await inbox._changed.wait_for(predicate)


async def test_members_on_different_nodes_get_messages_in_order(join: Join) -> None:
    alice, bob, carol = await join("alice", 0), await join("bob", 1), await join("carol", 2)
    for index in range(40):
        await alice.client.post_realtime({"n": index}, GROUP)
        if index % 4 == 0:
            await bob.client.post_realtime({"to": "carol", "n": index}, carol.user_id)
    group = [{"n": index} for index in range(40)]
    private = [{"to": "carol", "n": index} for index in range(0, 40, 4)]
    for member in (alice, bob, carol):
        await until(member.inbox, lambda m=member: len(m.texts("message")) >= 40)
        assert member.texts("message") == group
    await until(carol.inbox, lambda: len(carol.texts("private")) >= len(private))
    assert carol.texts("private") == private
    assert bob.texts("private") == private  # the sender's echo
    assert alice.texts("private") == []
    joined = {m.sender for m in alice.inbox.messages if m.type == "notice"}
    assert joined == {alice.user_id, bob.user_id, carol.user_id}  # joins on other nodes


async def test_listings_agree_on_every_node(join: Join, cluster: list[HubServer]) -> None:
    members = [await join(name, index) for index, name in enumerate(("ann", "ben", "cat"))]
    await members[1].client.join_realtime("garage", keep=True)
    await members[1].inbox.wait_for("notice", sender_rid="garage")
    views = []
    for member in members:
        groups = await member.client.get_realtime_groups()
        users = await member.client.get_realtime_users(GROUP)
        views.append((groups["list"], sorted(u["user_id"] for u in users["list"])))
    expected_users = sorted(m.user_id for m in members)
    for groups, users in views:
        assert users == expected_users
        assert {g["group"]: g["number_of_users"] for g in groups} == {GROUP: 3, "garage": 1}
    for node in cluster:
        assert await node.backplane.stats() == (3, 2)


async def test_a_device_on_one_node_answers_a_caller_on_another(
    join: Join, cluster: list[HubServer]
) -> None:
    factory = PeerFactory(LOOPBACK)
    device = await join("porch", 0, role=Role.DEVICE, rtc_factory=factory)
    caller = await join("alice", 1, rtc_factory=factory)
    media = MediaHub(small_pattern())
    sink = TalkbackSink()
    desk = CallDesk(
        device.client,
        device="porch",
        media=media,
        talkback=sink,
        directory=AccountDirectory(cluster[0].accounts),
        policy=CallPolicy.of(),
    )
    desk.start()
    viewer = Viewer()
    try:
        listing = await caller.client.get_realtime_users(GROUP, device.user_id)
        cid = listing["list"][0]["connection_id"]
        connector = await caller.client.connect_rtc(
            cid=cid, callback=viewer, media={"video": False, "audio": False}
        )
        async with asyncio.timeout(WAIT):
            viewer.connection = await connector.connection
        await viewer.until(lambda: viewer.frames["video"] >= 3)  # media: peer to peer
        await viewer.connection.hangup()
    finally:
        await viewer.close()
        await desk.stop()
        await media.close()
        await sink.close()


async def test_a_grant_revoked_through_one_node_reaches_a_member_on_another(
    join: Join, cluster: list[HubServer]
) -> None:
    alice, bob = await join("alice", 0, grants=(GROUP,)), await join("bob", 1)
    await asyncio.to_thread(cluster[2].accounts.revoke, "alice", [GROUP])
    await alice.inbox.wait_for("error", code="FORBIDDEN")
    left = await bob.inbox.wait_for("notice", sender=alice.user_id, code="USER_LEFT")
    assert left.sender_rid == GROUP
    users = await bob.client.get_realtime_users(GROUP)
    assert [u["user_id"] for u in users["list"]] == [bob.user_id]


async def reloaded(node: HubServer) -> asyncio.Event:
    """Set when ``node`` next applies a change of the accounts (its poll of the database)."""
    changed = asyncio.Event()

    async def listener(_table: object) -> None:
        changed.set()

    node.access.subscribe(listener)
    return changed


async def me(node: HubServer, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=WAIT) as http:
        return await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})


async def test_an_account_added_through_node_3_works_on_every_node(
    cluster: list[HubServer],
) -> None:
    add = cluster[2].accounts.add
    account = await asyncio.to_thread(add, "gail", PASSWORD, Role.USER, groups=[GROUP])
    # Her password works on node 1, and a token of node 3 on every node: one store, one secret.
    async with httpx.AsyncClient(base_url=cluster[0].http_url, timeout=WAIT) as http:
        login = await http.post("/api/login", json={"name": "gail", "password": PASSWORD})
    assert login.status_code == 200, login.text
    assert login.json()["user_id"] == account.user_id
    tokens = [login.json()["token"], cluster[2].tokens.issue(account, 600)]
    for node in cluster:
        for token in tokens:
            answer = await me(node, token)
            assert answer.status_code == 200, answer.text
            assert answer.json()["user_id"] == account.user_id
    client, inbox = RealtimeClient(cluster[1].ws_url, token=tokens[1]), Inbox()
    try:
        await client.connect_realtime(inbox)
        await client.join_realtime(GROUP)
        await inbox.wait_for("notice", sender=account.user_id, code="USER_JOINED")
    finally:
        await client.close_realtime()


async def test_a_grant_added_through_node_3_lets_a_member_on_node_1_in(
    join: Join, cluster: list[HubServer]
) -> None:
    alice = await join("alice", 0, grants=(GROUP,))
    await alice.client.join_realtime("garage", keep=True)
    await alice.inbox.wait_for("error", code="FORBIDDEN")
    changed = await reloaded(cluster[0])
    await asyncio.to_thread(cluster[2].accounts.grant, "alice", ["garage"])
    async with asyncio.timeout(WAIT):
        await changed.wait()  # node 1 saw the shared revision move
    access = cluster[0].access.get(alice.user_id)
    assert access is not None
    assert access.may_use("garage")
    await alice.client.join_realtime("garage", keep=True)
    await alice.inbox.wait_for("notice", sender=alice.user_id, sender_rid="garage")


async def test_an_account_removed_through_node_3_is_gone_on_every_node(
    join: Join, cluster: list[HubServer]
) -> None:
    temp, bob = await join("temp", 0), await join("bob", 1)
    token = cluster[2].tokens.issue(temp.account, 600)
    assert (await me(cluster[0], token)).status_code == 200
    await asyncio.to_thread(cluster[2].accounts.remove, "temp")
    await temp.inbox.wait_for("error", code="UNAUTHORIZED")  # node 1 closed her connection
    await bob.inbox.wait_for("notice", sender=temp.user_id, code="USER_DISCONNECTED")
    users = await bob.client.get_realtime_users(GROUP)
    assert [u["user_id"] for u in users["list"]] == [bob.user_id]
    for node in cluster:
        assert (await me(node, token)).status_code == 401
