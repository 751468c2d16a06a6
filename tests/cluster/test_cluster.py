"""Three hub nodes in this process on one Redis and one state directory: members spread
over the nodes talk, list, call and lose grants as if they were on one hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rtc.conftest import LOOPBACK, Inbox, Viewer, small_pattern

from agent.client import RealtimeClient
from agent.config import HubSettings, Settings
from agent.hub.accounts import Account, Role
from agent.hub.server import HubServer
from agent.media import MediaHub, TalkbackSink
from agent.rtc.desk import AccountDirectory, CallDesk
from agent.rtc.peer import PeerFactory
from agent.rtc.policy import CallPolicy

GROUP = "home"
WAIT = 30.0


@dataclass
class Member:
    """A client connected to one node, and its account."""

    client: RealtimeClient
    account: Account
    inbox: Inbox
    node: HubServer

    @property
    def user_id(self) -> str:
        return self.account.user_id

    def texts(self, kind: str) -> list[Any]:
        return [m.message for m in self.inbox.messages if m.type == kind]


Join = Callable[..., Awaitable[Member]]


@pytest.fixture
async def cluster(tmp_path: Path, redis_url: str) -> AsyncIterator[list[HubServer]]:
    """Three started nodes; stopped after."""
    nodes: list[HubServer] = []
    for _ in range(3):
        hub = HubSettings(host="127.0.0.1", port=0, backplane=redis_url)
        node = HubServer(Settings(state_dir=tmp_path / "hub", hub=hub))
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
