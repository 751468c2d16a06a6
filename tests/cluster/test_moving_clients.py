"""Clients that know several hubs: the next URL, the next address of a name, the next node."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from rtc.conftest import Inbox

from agent.client import ConnectionState, RealtimeClient
from agent.config import HubSettings, Settings
from agent.hub.accounts import Account, Role
from agent.hub.server import HubServer

from .redis_server import free_port

GROUP = "home"
WAIT = 30.0


async def start_node(
    state_dir: Path, backplane: str = "memory", database: str = "sqlite"
) -> HubServer:
    hub = HubSettings(host="127.0.0.1", port=0, backplane=backplane, database=database)
    node = HubServer(Settings(state_dir=state_dir, hub=hub))
    await node.start()
    return node


def token(node: HubServer, name: str) -> tuple[Account, str]:
    account = node.accounts.add(name, None, Role.USER, groups=[GROUP])
    return account, node.tokens.issue(account, 3600)


async def until(inbox: Inbox, predicate: Any) -> None:
    """Wait, woken by each message ``inbox`` gets, until ``predicate()``."""
    async with asyncio.timeout(WAIT), inbox._changed:
        await inbox._changed.wait_for(predicate)


def count(inbox: Inbox, **match: Any) -> int:
    return sum(all(getattr(m, k) == v for k, v in match.items()) for m in inbox.messages)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[HubServer]:
    hub = await start_node(tmp_path / "hub")
    yield hub
    await hub.stop()


async def test_a_url_that_is_down_is_passed_over(node: HubServer) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    _, jwt = token(node, "alice")
    client = RealtimeClient([dead, node.ws_url], token=jwt)
    inbox = Inbox()
    try:
        await client.connect_realtime(inbox)
        assert client.state is ConnectionState.OPEN
        assert client.url == node.ws_url
        assert client.urls == (dead, node.ws_url)
        assert client.http_url == node.http_url  # HTTP calls follow the node in use
        await client.join_realtime(GROUP)
        assert (await client.get_realtime_groups())["list"][0]["group"] == GROUP
    finally:
        await client.close_realtime()


async def test_every_address_of_a_name_is_tried(node: HubServer) -> None:
    # "hub.test" resolves to 127.0.0.2 (a server that answers 503) and then 127.0.0.1 (the hub),
    # on the hub's port: the resolver is the one thing replaced, sockets are real.
    port = node.port
    refusing = await asyncio.start_server(_answer_503, "127.0.0.2", port)
    real = socket.getaddrinfo
    seen: list[str] = []

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hub.test":
            return real(host, *args, **kwargs)
        seen.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    _, jwt = token(node, "alice")
    client = RealtimeClient(f"ws://hub.test:{port}/ws", token=jwt)
    try:
        with mock.patch("socket.getaddrinfo", side_effect=resolve, autospec=True):
            await client.connect_realtime(Inbox())
        assert client.state is ConnectionState.OPEN
        assert seen
        await client.join_realtime(GROUP)
        assert (await node.backplane.stats())[0] == 1
    finally:
        await client.close_realtime()
        refusing.close()
        await refusing.wait_closed()


async def _answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_a_client_moves_to_another_node_when_its_node_stops(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    first = await start_node(tmp_path / "first", redis_url, database_url)
    second = await start_node(tmp_path / "second", redis_url, database_url)
    alice, alice_jwt = token(first, "alice")
    _, bob_jwt = token(first, "bob")
    mover = RealtimeClient([first.ws_url, second.ws_url], token=alice_jwt)
    stayer = RealtimeClient(second.ws_url, token=bob_jwt)
    moved, watching = Inbox(), Inbox()
    try:
        await mover.connect_realtime(moved)
        await stayer.connect_realtime(watching)
        await stayer.join_realtime(GROUP)
        await mover.join_realtime(GROUP)
        await watching.wait_for("notice", sender=alice.user_id, code="USER_JOINED")
        assert mover.url == first.ws_url
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await first.stop()  # 1012 to its clients; the mover goes to the second node
        await until(moved, lambda: count(moved, type="success") == 2)  # connected again
        assert mover.url == second.ws_url
        await until(
            watching, lambda: count(watching, sender=alice.user_id, code="USER_JOINED") == 2
        )
        assert loop.time() - stopped < 5  # the reconnect goal: back within about a second
        await mover.post_realtime({"from": "the second node"}, GROUP)
        got = await watching.wait_for("message", sender=alice.user_id)
        assert got.message == {"from": "the second node"}
    finally:
        await mover.close_realtime()
        await stayer.close_realtime()
        await first.stop()
        await second.stop()
