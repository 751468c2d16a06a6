"""Three ``edge-agent hub`` processes on one Redis and one PostgreSQL database: one is
SIGKILLed (its clients move, presence converges, no alert is lost or sent twice), Redis
restarts (routing recovers without a process restart)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from postgres import PASSWORD
from push.loopback import LoopbackPushService, once_each
from recovery.processes import (
    Account,
    AgentProcess,
    HubProcess,
    agent_config,
    at_least,
    equals,
    poll,
)
from rtc.conftest import Inbox

from agent.client import RealtimeClient
from agent.database import DatabaseSecrets, PostgresDatabase
from agent.hub.accounts import AccountStore, Role
from agent.hub.records import migrate_all
from agent.hub.tokens import TokenIssuer

from .redis_server import RedisServer

GROUP = "home"  # every account is granted it
WAIT = 30.0
GONE_WITHIN = 10.0  # a killed node's connections leave listings and are announced by then
# A dead node's claimed deliveries wait for their lease (2 x timeout_seconds + 10 s).
DRAINED_WITHIN = 60.0
_BACK_UP = re.compile(r"Redis link down -> up")
_LINK_UP = re.compile(r"hub link \w+ -> connected")

# The nodes' push settings: the loopback service is trusted, retries and leases are short.
_PUSH = """
[push]
subject = "mailto:ops@example.com"
allow_private_endpoints = true
ca_file = "{ca_file}"
retry_initial_seconds = 0.05
retry_cap_seconds = 0.5
timeout_seconds = 2
"""


def make_accounts(database_url: str, *names: tuple[str, Role]) -> dict[str, Account]:
    """Accounts granted ``home`` in the shared database, with tokens every node accepts."""
    database = PostgresDatabase(database_url)
    try:
        migrate_all(database)
        store = AccountStore(database)
        issuer = TokenIssuer.from_secrets(DatabaseSecrets(database))
        made = {}
        for name, role in names:
            account = store.add(name, None, role, groups=[GROUP])
            made[name] = Account(account.user_id, issuer.issue(account, 3600))
        return made
    finally:
        database.close()


def database_settings(tmp_path: Path, database_url: str) -> str:
    """``[hub] database`` as the README recipe has it: the password in a 0600 file."""
    parts = urlsplit(database_url)
    assert parts.password == PASSWORD
    secret = tmp_path / "database-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    url = urlunsplit(parts._replace(netloc=netloc))
    return f'database = "{url}"\ndatabase_password_file = "{secret}"\n'


class Cluster:
    """Hub processes sharing a Redis and a database (each its own state directory), and
    clients of them."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        database_url: str,
        names: tuple[tuple[str, Role], ...],
        *,
        push: str = "",
    ) -> None:
        self.database_url = database_url
        self.accounts = make_accounts(database_url, *names)
        config = tmp_path / "hub.toml"
        shared = database_settings(tmp_path, database_url)
        config.write_text(f'[hub]\nbackplane = "{redis_url}"\n{shared}{push}')
        self.nodes = [HubProcess(tmp_path, config, tmp_path / f"node{i}") for i in range(3)]
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

    async def queued(self) -> int:
        """Push deliveries in the shared queue, whichever node accepted or claimed them."""

        def count() -> int:
            with psycopg.connect(self.database_url) as conn:
                row = conn.execute("SELECT count(*) FROM push_queue").fetchone()
            assert row is not None
            return int(row[0])

        return await asyncio.to_thread(count)

    async def close(self) -> None:
        for client in self.clients:
            await client.close_realtime()
        for node in self.nodes:
            if node.running:
                assert await node.stop() == 0


@pytest.fixture
async def cluster(tmp_path: Path, redis_url: str, database_url: str) -> AsyncIterator[Cluster]:
    names = (("dora", Role.USER), ("ed", Role.USER), ("fay", Role.USER))
    made = Cluster(tmp_path, redis_url, database_url, names)
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


async def test_alerts_sent_through_a_node_that_is_killed_arrive_once_each(
    tmp_path: Path, redis_url: str, database_url: str, service: LoopbackPushService
) -> None:
    names = (("door", Role.DEVICE), ("alice", Role.USER))
    push = _PUSH.format(ca_file=service.tls.cert)
    cluster = Cluster(tmp_path, redis_url, database_url, names, push=push)
    await cluster.start()
    agent: AgentProcess | None = None
    try:
        one, two, three = cluster.nodes
        # Alice's phone subscribes through node three; the VAPID key is the same on all.
        async with httpx.AsyncClient(base_url=three.http_url, timeout=WAIT) as http:
            alice = {"Authorization": f"Bearer {cluster.accounts['alice'].token}"}
            key = await http.get("/api/push/vapid-public-key", headers=alice)
            service.vapid_public_key = key.json()["VAPIDPublicKey"]
            phone = service.subscribe("alice-phone")
            assert (await http.post("/api/push/subscribe", json=phone, headers=alice)).is_success
        # The doorbell knows every node and is on node one, the first of its list.
        urls = ", ".join(node.ws_url for node in (one, two, three))
        config = agent_config(
            tmp_path / "agent.toml",
            state_dir=tmp_path / "agent",
            hub_url=urls,
            token=cluster.accounts["door"].token,
        )
        agent = AgentProcess(tmp_path, config, tmp_path / "agent")
        await agent.start()
        await agent.trigger("ring")
        await service.wait_for(1, within=WAIT)  # through node one, as usual
        await poll(lambda: equals(cluster.queued(), 0), "the first alert's row was deleted")

        # A delivery the push service accepted in the instant before its node died is sent
        # again by another node (documented in agent/push/service.py); with the service
        # down across the kill no delivery is in that instant, so the count below is exact.
        await service.stop()
        await asyncio.gather(*(agent.trigger("ring") for _ in range(10)))
        # Node one has taken some (they wait in the shared queue) while the rest are on
        # their way from the agent's outbox: then it dies.
        await poll(lambda: at_least(cluster.queued(), 4), "node one queued alerts")
        mark = len(agent.log)
        await one.kill()
        await asyncio.gather(*(agent.trigger("ring") for _ in range(10)))
        await agent.wait_log(_LINK_UP, after=mark)  # on node two or three now
        await service.start()
        await service.wait_for(21, within=DRAINED_WITHIN)
        await poll(lambda: equals(agent.outbox_depth(), 0), "the outbox emptied")
        await poll(lambda: equals(cluster.queued(), 0), "the nodes drained the queue")
        assert len(once_each(service.received)) == 21
        assert {r.path for r in service.received} == {"alice-phone"}
        assert all(node.running for node in (two, three))
    finally:
        if agent is not None and agent.running:
            assert await agent.stop() == 0
        await cluster.close()


async def test_routing_recovers_when_redis_restarts(
    tmp_path: Path, own_redis: RedisServer, database_url: str
) -> None:
    names = (("dora", Role.USER), ("ed", Role.USER))
    cluster = Cluster(tmp_path, own_redis.url, database_url, names)
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
