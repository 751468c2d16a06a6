"""Three ``edge-agent hub`` processes on one Redis: one is SIGKILLed, Redis restarts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from recovery.processes import HubProcess, make_accounts
from rtc.conftest import Inbox

from agent.client import RealtimeClient
from agent.hub.accounts import Role

from .redis_server import RedisServer

GROUP = "home"  # make_accounts grants it
WAIT = 30.0
GONE_WITHIN = 10.0  # a killed node's connections leave listings and are announced by then
_BACK_UP = re.compile(r"Redis link down -> up")


class Cluster:
    """Hub processes sharing a state directory and a Redis, and clients of them."""

    def __init__(self, tmp_path: Path, redis_url: str, names: tuple[str, ...]) -> None:
        self.state = tmp_path / "hub"
        self.accounts = make_accounts(self.state, *((name, Role.USER) for name in names))
        config = tmp_path / "hub.toml"
        config.write_text(f'[hub]\nbackplane = "{redis_url}"\n')
        self.nodes = [HubProcess(tmp_path, config, self.state) for _ in range(3)]
        self.clients: list[RealtimeClient] = []

    async def start(self) -> None:
        await asyncio.gather(*(node.start() for node in self.nodes))

    async def client(self, name: str, urls: list[str]) -> tuple[RealtimeClient, Inbox]:
        client = RealtimeClient(urls, token=self.accounts[name].token)
        self.clients.append(client)
        inbox = Inbox()
        await client.connect_realtime(inbox)
        await client.join_realtime(GROUP)
        await inbox.wait_for("notice", sender=self.accounts[name].user_id, code="USER_JOINED")
        return client, inbox

    async def close(self) -> None:
        for client in self.clients:
            await client.close_realtime()
        for node in self.nodes:
            if node.running:
                assert await node.stop() == 0


@pytest.fixture
async def cluster(tmp_path: Path, redis_url: str) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, redis_url, ("dora", "ed", "fay"))
    await made.start()
    yield made
    await made.close()


async def until(inbox: Inbox, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT), inbox._changed:
        await inbox._changed.wait_for(predicate)


def count(inbox: Inbox, **match: Any) -> int:
    return sum(all(getattr(m, k) == v for k, v in match.items()) for m in inbox.messages)


async def test_a_killed_nodes_clients_move_and_presence_converges(cluster: Cluster) -> None:
    one, two, three = (node.ws_url for node in cluster.nodes)
    dora, dora_in = await cluster.client("dora", [one, two, three])
    _, ed_in = await cluster.client("ed", [two])
    fay, fay_in = await cluster.client("fay", [three])
    dora_id = cluster.accounts["dora"].user_id
    before = await fay.get_realtime_users(GROUP, dora_id)
    [old_cid] = [u["connection_id"] for u in before["list"]]
    loop = asyncio.get_running_loop()

    await cluster.nodes[0].kill()
    killed = loop.time()
    # Dora's client is back (on node two or three) within the reconnect goal.
    await until(dora_in, lambda: count(dora_in, type="success") == 2)
    assert dora.url in (two, three)
    assert loop.time() - killed < 5
    # Every member elsewhere hears that her old connection is gone, and listings drop it.
    for inbox in (ed_in, fay_in):
        await until(inbox, lambda i=inbox: count(i, sender=dora_id, code="USER_DISCONNECTED") == 1)
    assert loop.time() - killed < GONE_WITHIN
    now = await fay.get_realtime_users(GROUP, dora_id)
    assert old_cid not in [u["connection_id"] for u in now["list"]]
    assert len(now["list"]) == 1  # her new connection only
    groups = await fay.get_realtime_groups()
    assert groups["list"] == [{"group": GROUP, "number_of_users": 3}]
    await dora.post_realtime({"after": "the loss"}, GROUP)
    for inbox in (ed_in, fay_in):
        got = await inbox.wait_for("message", sender=dora_id)
        assert got.message == {"after": "the loss"}


async def test_routing_recovers_when_redis_restarts(tmp_path: Path, own_redis: RedisServer) -> None:
    cluster = Cluster(tmp_path, own_redis.url, ("dora", "ed"))
    await cluster.start()
    try:
        one, two = cluster.nodes[0].ws_url, cluster.nodes[1].ws_url
        _, dora_in = await cluster.client("dora", [one])
        ed, ed_in = await cluster.client("ed", [two])
        ed_id = cluster.accounts["ed"].user_id
        await own_redis.restart()  # empty: presence and subscriptions are gone
        for node in cluster.nodes:
            await node.wait_log(_BACK_UP)
        await ed.post_realtime({"n": 1}, GROUP)
        got = await dora_in.wait_for("message", sender=ed_id)
        assert got.message == {"n": 1}
        users = await ed.get_realtime_users(GROUP)
        assert len(users["list"]) == 2  # both nodes registered their connections again
        assert count(ed_in, code="USER_DISCONNECTED") == 0
        assert all(node.running for node in cluster.nodes)
    finally:
        await cluster.close()
