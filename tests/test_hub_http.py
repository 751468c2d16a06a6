"""One error mapping for every HTTP call: realtime and push calls fail alike.

Against the real hub on 127.0.0.1 port 0; a 5xx comes from a loopback reverse proxy in
front of it whose upstream goes away (what nginx answers then: 502 with an HTML page).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.client import RealtimeClient
from agent.config import load_settings
from agent.errors import Codes, HubRequestError, RealtimeError
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.push.errors import HubRequestError as PushHubRequestError

Call = Callable[[RealtimeClient], Awaitable[Any]]

# One realtime HTTP call and one push call, each refused for a user-role account.
CALLS: dict[str, Call] = {
    "realtime": lambda client: client.get_user(str(uuid.uuid4())),
    "push": lambda client: client.push_notification({"title": "hi", "body": ""}),
}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    settings = load_settings(None, state_dir=tmp_path, hub={"host": "127.0.0.1", "port": 0})
    server = HubServer(settings, state_dir=tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def token(hub: HubServer) -> str:
    account = await asyncio.to_thread(hub.accounts.add, "alice", None, Role.USER, groups=["*"])
    return hub.tokens.issue(account, 3600)


class Proxy:
    """A reverse proxy on 127.0.0.1 that forwards to the hub until ``upstream_down``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.upstream_down = False
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        assert self._runner is not None
        assert self._session is not None
        await self._session.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        if self.upstream_down:
            html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(status=502, text=html, content_type="text/html")
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers={
                name: request.headers[name]
                for name in ("Authorization", "Content-Type")
                if name in request.headers
            },
            data=await request.read() or None,
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=answer.content_type)


@pytest.fixture
async def proxy(hub: HubServer) -> AsyncIterator[Proxy]:
    front = Proxy(hub.http_url)
    await front.start()
    yield front
    await front.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., RealtimeClient]]:
    made: list[RealtimeClient] = []

    def make(url: str, **options: Any) -> RealtimeClient:
        made.append(RealtimeClient(url, **options))
        return made[-1]

    yield make
    for client in made:
        await client.close_realtime()


async def _failures(client: RealtimeClient) -> dict[str, HubRequestError]:
    """The error of each call in CALLS, by name (each call must fail)."""
    caught: dict[str, HubRequestError] = {}
    for name, call in CALLS.items():
        with pytest.raises(HubRequestError) as info:
            await call(client)
        caught[name] = info.value
    return caught


def _fields(error: HubRequestError) -> tuple[type, str, int | None, str]:
    return type(error), error.code, error.status, error.message


async def test_a_refusal_with_the_hubs_code_is_the_same_for_realtime_and_push(
    hub: HubServer, token: str, clients: Callable[..., RealtimeClient]
) -> None:
    caught = await _failures(clients(hub.ws_url, token=token))
    for error in caught.values():
        assert (error.code, error.status) == (Codes.FORBIDDEN, 403)
        assert error.message  # the hub's own words
        assert isinstance(error, RealtimeError)  # callers catching either keep working
        assert isinstance(error, PushHubRequestError)
        assert token not in str(error)


async def test_a_5xx_is_the_same_for_realtime_and_push_and_keeps_its_status(
    hub: HubServer, token: str, proxy: Proxy, clients: Callable[..., RealtimeClient]
) -> None:
    client = clients(hub.ws_url, token=token, http_url=proxy.url)
    # Through the proxy while the hub is up: the hub's answers and refusals come back.
    assert (await client.vapid_public_key())["VAPIDPublicKey"]
    with pytest.raises(HubRequestError) as refused:
        await CALLS["push"](client)
    assert (refused.value.code, refused.value.status) == (Codes.FORBIDDEN, 403)
    proxy.upstream_down = True
    caught = await _failures(client)
    assert _fields(caught["realtime"]) == _fields(caught["push"])
    assert _fields(caught["push"]) == (
        HubRequestError,
        Codes.ERROR,
        502,
        "The hub answered HTTP 502: no detail.",
    )


async def test_an_unreachable_hub_is_the_same_for_realtime_and_push(
    token: str, clients: Callable[..., RealtimeClient]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caught = await _failures(clients(f"ws://127.0.0.1:{port}/ws", token=token))
    for error in caught.values():
        assert (error.code, error.status) == (Codes.ERROR, None)
        assert error.message.startswith(f"Cannot reach the hub at http://127.0.0.1:{port}: ")
        assert token not in error.message
    assert caught["realtime"].message == caught["push"].message
