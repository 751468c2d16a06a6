"""The client's push calls against a real hub: the reference's return values and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.client import RealtimeClient
from agent.errors import Codes
from agent.hub.accounts import Role
from agent.push.errors import HubRequestError

from .conftest import PushHub, User
from .loopback import LoopbackPushService

ClientFactory = Callable[[User], Any]


@pytest.fixture
async def clients(hub: PushHub) -> AsyncIterator[ClientFactory]:
    made: list[Any] = []

    def make(user: User) -> Any:
        client = RealtimeClient(hub.server.ws_url, token=user.token)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close_realtime()


async def test_vapid_public_key_is_the_hubs(hub: PushHub, clients: ClientFactory) -> None:
    client = clients(hub.user("alice"))
    assert await client.vapid_public_key() == {"VAPIDPublicKey": hub.push.public_key}


async def test_subscribe_unsubscribe_and_push_return_the_reference_strings(
    hub: PushHub, service: LoopbackPushService, clients: ClientFactory
) -> None:
    alice, admin = clients(hub.user("alice")), clients(hub.user("root", Role.ADMIN))
    subscription = service.subscribe("alice-phone")
    answer = await alice.subscribe_notification({"params": subscription})
    assert answer == "SUCCESS: Subscribed to receive notifications."
    answer = await admin.push_notification(
        {"title": "Hello", "body": "Alice"}, user_ids=hub.user("alice").user_id
    )
    assert answer == "SUCCESS: Notification sent."
    [got] = await service.wait_for(1)
    assert got.payload == {"title": "Hello", "body": "Alice"}
    answer = await alice.unsubscribe_notification(endpoint=subscription["endpoint"])
    assert answer == "SUCCESS: Unsubscribed from notifications."
    assert hub.push.store.all() == []


async def test_keyword_arguments_work_as_well_as_params(
    hub: PushHub, service: LoopbackPushService, clients: ClientFactory
) -> None:
    alice = clients(hub.user("alice"))
    subscription = service.subscribe("alice-laptop")
    answer = await alice.subscribe_notification(
        endpoint=subscription["endpoint"], keys=subscription["keys"]
    )
    assert answer == "SUCCESS: Subscribed to receive notifications."
    assert len(hub.push.store.all()) == 1


async def test_errors_carry_the_hubs_code_message_and_status(
    hub: PushHub, service: LoopbackPushService, clients: ClientFactory
) -> None:
    alice = clients(hub.user("alice"))
    with pytest.raises(HubRequestError) as refused:
        await alice.push_notification({"title": "hi", "body": ""})
    assert (refused.value.code, refused.value.status) == (Codes.FORBIDDEN, 403)
    bad = service.subscribe("phone") | {"endpoint": "http://127.0.0.1/x"}
    with pytest.raises(HubRequestError) as invalid:
        await alice.subscribe_notification(bad)
    assert (invalid.value.code, invalid.value.status) == (Codes.INVALID_PARAMETER, 400)
    admin = clients(hub.user("root", Role.ADMIN))
    with pytest.raises(HubRequestError) as big:
        await admin.push_notification({"title": "x" * 4000, "body": ""})
    assert big.value.message == "Notification size exceeds 3kb."


async def test_bad_arguments_are_refused_before_any_request(
    hub: PushHub, clients: ClientFactory
) -> None:
    alice = clients(hub.user("alice"))
    with pytest.raises(HubRequestError) as caught:
        await alice.subscribe_notification({"endpoint": "https://push.example.com/x"})
    assert caught.value.code == Codes.INVALID_PARAMETER
    assert caught.value.status is None
    with pytest.raises(HubRequestError):
        await alice.unsubscribe_notification({})


async def test_an_unreachable_hub_is_an_error_without_status(hub: PushHub) -> None:
    client = RealtimeClient("ws://127.0.0.1:9/ws", token=hub.user("alice").token)
    try:
        with pytest.raises(HubRequestError) as caught:
            await client.vapid_public_key()
    finally:
        await client.close_realtime()
    assert (caught.value.code, caught.value.status) == (Codes.ERROR, None)
    assert "Cannot reach the hub at http://127.0.0.1:9" in caught.value.message
