"""The realtime endpoint driven as a bare ASGI app: paths a real uvicorn never takes."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

import agent.hub
from agent.config import HubLimits
from agent.hub.access import AccessTable
from agent.hub.accounts import ACCOUNTS_FILE, AccountStore
from agent.hub.backplane import MemoryBackplane
from agent.hub.metrics import HubMetrics
from agent.hub.realtime import RealtimeEndpoint
from agent.hub.server import HubServer
from agent.hub.tokens import TokenIssuer


class FakeServer:
    """Feeds ASGI events and records what the app sends."""

    def __init__(self, *events: MutableMapping[str, Any]) -> None:
        self.events = list(events)
        self.sent: list[MutableMapping[str, Any]] = []

    async def receive(self) -> MutableMapping[str, Any]:
        return self.events.pop(0) if self.events else {"type": "websocket.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AccountStore]:
    accounts = AccountStore(tmp_path / ACCOUNTS_FILE)
    yield accounts
    accounts.close()


@pytest.fixture
def backplane() -> MemoryBackplane:
    return MemoryBackplane()


@pytest.fixture
def endpoint(tmp_path: Path, store: AccountStore, backplane: MemoryBackplane) -> RealtimeEndpoint:
    return RealtimeEndpoint(
        backplane=backplane,
        tokens=TokenIssuer.from_state_dir(tmp_path),
        accounts=store,
        access=AccessTable(store),
        limits=HubLimits(),
        metrics=HubMetrics(),
    )


def _scope(query: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {"type": "websocket", "path": "/ws", "query_string": query, "headers": [], **extra}


async def test_without_the_http_response_extension_a_refusal_is_a_4401_close(
    endpoint: RealtimeEndpoint,
) -> None:
    server = FakeServer({"type": "websocket.connect"})
    await endpoint(_scope(), server.receive, server.send)
    assert server.sent == [
        {"type": "websocket.accept"},
        {
            "type": "websocket.close",
            "code": 4401,
            "reason": "A token is required: connect to /ws?token=JWT.",
        },
    ]


async def test_with_the_extension_a_refusal_is_an_http_401(endpoint: RealtimeEndpoint) -> None:
    server = FakeServer({"type": "websocket.connect"})
    scope = _scope(b"token=bad", extensions={"websocket.http.response": {}})
    await endpoint(scope, server.receive, server.send)
    start, body = server.sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 401
    assert json.loads(body["body"])["message"] == "The token is not valid."


async def test_a_connection_that_is_not_a_connect_event_is_ignored(
    endpoint: RealtimeEndpoint,
) -> None:
    server = FakeServer({"type": "websocket.disconnect"})
    await endpoint(_scope(), server.receive, server.send)
    assert server.sent == []


async def test_a_peer_gone_before_the_accept_is_forgotten(
    endpoint: RealtimeEndpoint, store: AccountStore, backplane: MemoryBackplane, tmp_path: Path
) -> None:
    token = TokenIssuer.from_state_dir(tmp_path).issue(store.add("alice", None), 60)

    async def vanished(message: MutableMapping[str, Any]) -> None:
        raise ConnectionResetError

    server = FakeServer({"type": "websocket.connect"})
    await endpoint(_scope(f"token={token}".encode()), server.receive, vanished)
    assert await backplane.stats() == (0, 0)


def test_the_package_exports_the_server_lazily() -> None:
    assert agent.hub.HubServer is HubServer
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = agent.hub.nothing
