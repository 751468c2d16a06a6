"""Snapshots that alerts link to, over the hub's real HTTP API."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent import RealtimeClient, RealtimeError
from agent.client import RealtimeMessage
from agent.config import Settings
from agent.errors import Codes
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.hub.snapshots import MAX_BYTES, SnapshotStore
from agent.sensing import Sensing

JPEG = b"\xff\xd8\xff\xe0" + b"picture" * 100 + b"\xff\xd9"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(Settings(hub={"port": 0}), state_dir=tmp_path / "hub")
    await server.start()
    yield server
    await server.stop()


def client_for(
    hub: HubServer, name: str, role: Role, groups: tuple[str, ...] = ("home",)
) -> RealtimeClient:
    account = hub.accounts.add(name, None, role, groups=groups)
    return RealtimeClient(hub.ws_url, token=hub.tokens.issue(account, 600))


async def fetch(hub: HubServer, client: RealtimeClient, link: str) -> tuple[int, bytes]:
    token = client._token  # the test reads the image as the viewer does, with its token
    async with (
        aiohttp.ClientSession() as http,
        http.get(hub.http_url + link, headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        return answer.status, await answer.read()


async def test_a_device_uploads_and_people_fetch(hub: HubServer) -> None:
    device, alice = client_for(hub, "porch", Role.DEVICE), client_for(hub, "alice", Role.USER)
    try:
        link = await device.upload_snapshot(JPEG)
        assert link.startswith("/api/snapshots/")
        assert await fetch(hub, alice, link) == (200, JPEG)
        # Someone who shares no group with the device reads it as missing.
        stranger = client_for(hub, "mallory", Role.USER, groups=("elsewhere",))
        assert (await fetch(hub, stranger, link))[0] == 404
        assert stat.S_IMODE((hub.state_dir / "snapshots.db").stat().st_mode) == 0o600
        assert (await fetch(hub, alice, "/api/snapshots/" + "0" * 32))[0] == 404
        assert (await fetch(hub, alice, "/api/snapshots/..%2Faccounts.db"))[0] == 404
        for bad, code in ((b"GIF89a", Codes.INVALID_PARAMETER), (JPEG, Codes.FORBIDDEN)):
            uploader = device if bad != JPEG else alice
            with pytest.raises(RealtimeError) as caught:
                await uploader.upload_snapshot(bad)
            assert caught.value.code == code
        with pytest.raises(RealtimeError) as caught:
            await device.upload_snapshot(JPEG + b"x" * MAX_BYTES)
        assert "limit" in caught.value.message
    finally:
        await device.close_realtime()
        await alice.close_realtime()


def test_the_store_keeps_the_newest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots.db", max_files=2)
    owner = "7c0e8a52-4b8f-4a54-9d1e-0d1f4c3a2b10"
    ids = [store.put(JPEG + bytes([n]), owner=owner) for n in range(3)]
    with pytest.raises(RealtimeError):
        store.get(ids[0])  # the oldest went first
    jpeg, stored_owner = store.get(ids[2])
    assert jpeg.endswith(b"\x02")
    assert stored_owner == owner
    assert stat.S_IMODE((tmp_path / "snapshots.db").stat().st_mode) == 0o600
    store.close()


async def test_a_snapshot_action_links_the_picture_from_the_event(
    hub: HubServer, tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {
            "name": "porch",
            "groups": ["home"],
            "events": [
                {
                    "name": "ring",
                    "trigger": {"type": "manual"},
                    "actions": [{"type": "snapshot"}, {"type": "post"}],
                }
            ],
        }
    )
    device, alice = client_for(hub, "porch", Role.DEVICE), client_for(hub, "alice", Role.USER)
    inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
    await alice.connect_realtime(inbox.put_nowait)
    await alice.join_realtime("home")
    await device.connect_realtime(lambda _m: None)
    await device.join_realtime("home")
    state = tmp_path / "agent"
    state.mkdir(mode=0o700)

    async def camera() -> bytes:
        return JPEG

    sensing = Sensing(settings, state_dir=state, client=device, camera=camera)
    await sensing.start()
    try:
        assert sensing.engine.trigger("ring").value == "fired"
        event: dict[str, Any] = {}
        async with asyncio.timeout(60):
            while not event:
                message = await inbox.get()
                if message.type == "message" and isinstance(message.message, dict):
                    event = message.message
        assert await fetch(hub, alice, event["snapshot"]) == (200, JPEG)
    finally:
        await sensing.close()
        await device.close_realtime()
        await alice.close_realtime()
