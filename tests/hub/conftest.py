"""A real hub on 127.0.0.1 port 0 and raw ``websockets`` clients that speak its frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent.config import HubLimits, HubSettings, Settings
from agent.hub.accounts import Account, Role
from agent.hub.server import HubServer
from agent.protocol import decode_frame_text

TIMEOUT = 10.0


@dataclass
class User:
    """An account of the test hub and a token for it."""

    account: Account
    token: str

    @property
    def user_id(self) -> str:
        return self.account.user_id


class Hub:
    """A started hub with helpers to make users and connections."""

    def __init__(self, server: HubServer) -> None:
        self.server = server
        self._clients: list[ClientConnection] = []

    def user(
        self,
        name: str,
        *,
        role: Role = Role.USER,
        password: str | None = None,
        groups: tuple[str, ...] = ("*",),
    ) -> User:
        """An account granted ``groups``: every group unless a test is about grants."""
        account = self.server.accounts.add(name, password, role, groups=groups)
        return User(account, self.server.tokens.issue(account, 600))

    async def connect(self, user: User, **kwargs: Any) -> ClientConnection:
        ws = await connect(f"{self.server.ws_url}?token={user.token}", **kwargs)
        self._clients.append(ws)
        return ws

    def http(self, user: User | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {user.token}"} if user else {}
        return httpx.AsyncClient(base_url=self.server.http_url, headers=headers, timeout=TIMEOUT)

    async def close_clients(self) -> None:
        for ws in self._clients:
            await ws.close()


def make_settings(
    state_dir: Path, *, tls: tuple[Path, Path] | None = None, **limits: Any
) -> Settings:
    """Settings for a hub on 127.0.0.1 port 0 with ``limits`` overriding the defaults."""
    cert, key = tls if tls is not None else (None, None)
    hub = HubSettings(
        host="127.0.0.1", port=0, tls_cert=cert, tls_key=key, limits=HubLimits(**limits)
    )
    return Settings(state_dir=state_dir, hub=hub)


HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def hub_factory(tmp_path: Path) -> AsyncIterator[HubFactory]:
    """Start hubs with given limits (``tls=(cert, key)`` for HTTPS); all stopped after."""
    hubs: list[Hub] = []

    async def start(*, tls: tuple[Path, Path] | None = None, **limits: Any) -> Hub:
        settings = make_settings(tmp_path / f"state{len(hubs)}", tls=tls, **limits)
        server = HubServer(settings)
        await server.start()
        hub = Hub(server)
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        await hub.close_clients()
        await hub.server.stop()


@pytest.fixture
async def hub(hub_factory: HubFactory) -> Hub:
    """A hub with default limits."""
    return await hub_factory()


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    """Send one client frame as plain JSON."""
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    """The next hub frame, decoded from its percent-encoded JSON."""
    text = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(text, str)
    frame = decode_frame_text(text)
    assert isinstance(frame, dict)
    return frame


async def recv_until(ws: ClientConnection, key: str, **match: Any) -> dict[str, Any]:
    """Skip frames until one with ``key`` (and ``match`` on its other keys) arrives."""
    while True:
        frame = await recv(ws)
        if key in frame and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def join(ws: ClientConnection, group: str, user: User, **extra: Any) -> dict[str, Any]:
    """Join ``group`` and wait for the connection's own USER_JOINED notice."""
    await send(ws, {"action": "joinRoom", "rid": group, **extra})
    return await recv_until(ws, "#notice", **{"#srid": group, "#user_id": user.user_id})


async def closed_code(ws: ClientConnection) -> int | None:
    """Read until the hub closes the connection; the close code it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed:
        return ws.close_code
