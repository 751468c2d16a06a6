"""``/api/devices`` and ``/api/viewer/config``: a real hub on 127.0.0.1 and real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from agent.config import Settings
from agent.hub.accounts import Account, Role
from agent.hub.app import _current_account
from agent.hub.devices_api import add_device_routes, has_device_routes
from agent.hub.server import HubServer
from agent.protocol import decode_frame_text

TIMEOUT = 10.0


@dataclass
class Person:
    account: Account
    token: str


class Hub:
    """A started hub with the viewer's routes and helpers to connect accounts."""

    def __init__(self, server: HubServer, stack: AsyncExitStack) -> None:
        self.server = server
        self.stack = stack

    def account(self, name: str, role: Role = Role.USER) -> Person:
        account = self.server.accounts.add(name, None, role, groups=["*"])
        return Person(account, self.server.tokens.issue(account, 600))

    async def online(self, person: Person, *groups: str) -> ClientConnection:
        """A connection of ``person`` that joined ``groups`` (each join acknowledged)."""
        ws = await self.stack.enter_async_context(
            connect(f"{self.server.ws_url}?token={person.token}")
        )
        for index, group in enumerate(groups):
            await ws.send(json.dumps({"action": "joinRoom", "rid": group, "keep": index > 0}))
            await _own_join(ws, group, person.account.user_id)
        return ws

    def http(self, person: Person | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {person.token}"} if person else {}
        return httpx.AsyncClient(base_url=self.server.http_url, headers=headers, timeout=TIMEOUT)

    async def devices(self, person: Person, **params: str) -> list[dict[str, Any]]:
        async with self.http(person) as http:
            response = await http.get("/api/devices", params=params)
        assert response.status_code == 200, response.text
        result = response.json()
        assert isinstance(result, list)
        return result


async def _own_join(ws: ClientConnection, group: str, user_id: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = decode_frame_text(str(await ws.recv()))
            joined = "#notice" in frame and frame.get("#srid") == group
            if joined and frame.get("#user_id") == user_id:
                return


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path,
            "hub": {
                "host": "127.0.0.1",
                "port": 0,
                "ice_servers": [
                    {"urls": "turn:turn.example.net:3478", "username": "u", "credential": "c"}
                ],
            },
        }
    )
    server = HubServer(settings)
    await server.start()
    async with AsyncExitStack() as stack:
        yield Hub(server, stack)
    await server.stop()


async def test_devices_need_a_token(hub: Hub) -> None:
    async with hub.http() as http:
        response = await http.get("/api/devices")
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"


async def test_devices_in_my_groups_are_listed_and_nothing_else(hub: Hub) -> None:
    me = hub.account("alice")
    porch = hub.account("porch", Role.DEVICE)
    garage = hub.account("garage", Role.DEVICE)
    shed = hub.account("shed", Role.DEVICE)
    bob = hub.account("bob")
    assert await hub.devices(me) == []  # no group joined yet: no device is mine to see

    mine = await hub.online(me, "devices", "yard")
    porch_ws = [await hub.online(porch, "devices", "yard"), await hub.online(porch, "devices")]
    await hub.online(garage, "yard")
    await hub.online(shed, "elsewhere")
    await hub.online(bob, "devices")

    listed = await hub.devices(me)
    assert [d["name"] for d in listed] == ["garage", "porch"]
    garage_item, porch_item = listed
    assert garage_item["user_id"] == garage.account.user_id
    assert garage_item["groups"] == ["yard"]
    assert porch_item["groups"] == ["devices", "yard"]
    assert len(porch_item["connection_ids"]) == 2
    assert all(cid.startswith("cid:") for cid in porch_item["connection_ids"])
    assert len(set(porch_item["connection_ids"])) == 2
    assert [d["name"] for d in await hub.devices(me, group="yard")] == ["garage", "porch"]
    assert [d["name"] for d in await hub.devices(me, group="devices")] == ["porch"]
    assert await hub.devices(me, group="elsewhere") == []  # not one of mine

    for ws in porch_ws:
        await ws.close()
    # One notice per group of each closed connection, sent once it is gone from presence.
    await _disconnected(mine, porch.account.user_id, count=3)
    assert [d["name"] for d in await hub.devices(me)] == ["garage"]


async def test_a_device_does_not_list_itself(hub: Hub) -> None:
    porch = hub.account("porch", Role.DEVICE)
    garage = hub.account("garage", Role.DEVICE)
    await hub.online(porch, "devices")
    await hub.online(garage, "devices")
    assert [d["name"] for d in await hub.devices(porch)] == ["garage"]


async def test_viewer_config_and_the_viewer_page(hub: Hub) -> None:
    me = hub.account("alice")
    async with hub.http(me) as http:
        config = (await http.get("/api/viewer/config")).json()
        page = await http.get("/")
        worker = await http.get("/sw.js")
    assert config == {
        "iceServers": [
            {"urls": ["turn:turn.example.net:3478"], "username": "u", "credential": "c"}
        ],
        "groups": ["devices"],
        "iceServersUrl": "/api/ice-servers",
        "iceTransportPolicy": "all",
    }
    # The viewer's files are still served at "/" behind the API routes.
    assert page.status_code == 200
    assert "edge-agent viewer" in page.text
    assert worker.status_code == 200
    assert "notificationclick" in worker.text


async def test_adding_the_routes_twice_keeps_one_of_each(hub: Hub) -> None:
    app = hub.server.app.api
    before = len(app.router.routes)
    add_device_routes(app, app.state.services, current_account=_current_account)
    assert has_device_routes(app)
    assert len(app.router.routes) == before


async def _disconnected(ws: ClientConnection, user_id: str, *, count: int) -> None:
    seen = 0
    async with asyncio.timeout(TIMEOUT):
        while seen < count:
            frame = decode_frame_text(str(await ws.recv()))
            if frame.get("#code") == "USER_DISCONNECTED" and frame.get("#user_id") == user_id:
                seen += 1
