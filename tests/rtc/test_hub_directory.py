"""A device on a remote hub learns its callers' names and roles from the hub."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import RealtimeClient, RealtimeError
from agent.config import Settings
from agent.errors import Codes
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.rtc.desk import HubDirectory
from agent.rtc.policy import Caller


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(Settings(hub={"port": 0}), state_dir=tmp_path / "hub")
    await server.start()
    yield server
    await server.stop()


def client_for(hub: HubServer, name: str, role: Role) -> RealtimeClient:
    account = hub.accounts.add(name, None, role, groups=["home"])
    return RealtimeClient(hub.ws_url, token=hub.tokens.issue(account, 600))


async def test_a_device_looks_up_callers_through_the_hub(hub: HubServer) -> None:
    device = client_for(hub, "porch", Role.DEVICE)
    alice = hub.accounts.add("alice", None, Role.USER, groups=["home"])
    directory = HubDirectory(device)
    try:
        assert await directory.lookup(alice.user_id) == Caller(alice.user_id, "alice", "user")
        stranger = str(uuid.uuid4())
        assert await directory.lookup(stranger) == Caller(stranger)
    finally:
        await device.close_realtime()


async def test_people_may_not_look_up_accounts(hub: HubServer) -> None:
    bob = client_for(hub, "bob", Role.USER)
    admin = hub.accounts.add("root", None, Role.ADMIN)
    try:
        with pytest.raises(RealtimeError) as caught:
            await bob.get_user(admin.user_id)
        assert caught.value.code == Codes.FORBIDDEN
        with pytest.raises(RealtimeError) as caught:
            await HubDirectory(bob).lookup(admin.user_id)
        assert caught.value.code == Codes.FORBIDDEN
    finally:
        await bob.close_realtime()
