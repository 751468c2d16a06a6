"""A real hub with web push on 127.0.0.1 port 0 (the loopback push service, ``service``,
is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hub.conftest import User

from agent.config import HubSettings, Settings
from agent.hub import app as hub_app
from agent.hub.accounts import Role
from agent.hub.push_api import add_push_routes, has_push_routes
from agent.hub.server import HubServer
from agent.push.service import PushService
from agent.push.settings import PushSettings

from .loopback import LoopbackPushService, TlsFiles

TIMEOUT = 10.0


class PushHub:
    """A started hub whose push service sends to the loopback push service."""

    def __init__(self, server: HubServer, push: PushService, owns_push: bool) -> None:
        self.server = server
        self.push = push
        self._owns_push = owns_push

    def user(self, name: str, role: Role = Role.USER, groups: tuple[str, ...] = ("*",)) -> User:
        """The account ``name`` (made granted ``groups`` if new) and a token for it."""
        account = self.server.accounts.get_by_name(name) or self.server.accounts.add(
            name, None, role, groups=groups
        )
        return User(account, self.server.tokens.issue(account, 3600))

    def http(self, user: User | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {user.token}"} if user else {}
        return httpx.AsyncClient(base_url=self.server.http_url, headers=headers, timeout=TIMEOUT)

    async def call(self, user: User, path: str, body: Any = None) -> httpx.Response:
        async with self.http(user) as http:
            if body is None:
                return await http.get(f"/api/push/{path}")
            return await http.post(f"/api/push/{path}", json=body)

    async def stop(self) -> None:
        await self.server.stop()
        if self._owns_push:
            await self.push.aclose()


async def start_hub(state_dir: Path, settings: PushSettings, *, port: int = 0) -> PushHub:
    """A hub serving the push routes with ``settings``.

    Until the hub wires push itself (``Settings.push``, ``HubServer.push`` and the routes in
    ``create_app``), the service is made and its routes added here.
    """
    extra: dict[str, Any] = {"push": settings} if "push" in Settings.model_fields else {}
    hub_settings = HubSettings(host="127.0.0.1", port=port)
    server = HubServer(
        Settings(state_dir=state_dir, hub=hub_settings, **extra),
        static_dir=state_dir / "no-viewer",  # no catch-all mount in front of added routes
    )
    push: PushService | None = getattr(server, "push", None)
    owns = push is None
    if push is None:
        push = PushService.from_state_dir(server.state_dir, settings, accounts=server.accounts)
    if not has_push_routes(server.app.api):
        add_push_routes(server.app.api, push, current_account=hub_app._current_account)
    await server.start()
    return PushHub(server, push, owns)


def push_settings(tls: TlsFiles, **overrides: Any) -> PushSettings:
    """Settings for tests: the loopback service is trusted, retries are quick."""
    values: dict[str, Any] = {
        "subject": "mailto:ops@example.com",
        "allow_private_endpoints": True,
        "ca_file": tls.cert,
        "retry_initial_seconds": 0.01,
        "retry_cap_seconds": 0.05,
        "timeout_seconds": 5.0,
    }
    return PushSettings(**(values | overrides))


HubFactory = Callable[..., Awaitable[PushHub]]


@pytest.fixture
async def hub_factory(
    tmp_path: Path, tls: TlsFiles, service: LoopbackPushService
) -> AsyncIterator[HubFactory]:
    """Start hubs (``push settings`` as keyword overrides); all stopped after the test."""
    hubs: list[PushHub] = []

    async def start(state: str = "hub", port: int = 0, **overrides: Any) -> PushHub:
        hub = await start_hub(tmp_path / state, push_settings(tls, **overrides), port=port)
        hubs.append(hub)
        service.vapid_public_key = await _public_key(hub)
        return hub

    yield start
    for hub in hubs:
        await hub.stop()


@pytest.fixture
async def hub(hub_factory: HubFactory) -> PushHub:
    return await hub_factory()


async def _public_key(hub: PushHub) -> str:
    # Read the key the way a page does, through the API.
    response = await hub.call(hub.user("keyreader"), "vapid-public-key")
    assert response.status_code == 200
    key = response.json()["VAPIDPublicKey"]
    assert isinstance(key, str)
    return key
