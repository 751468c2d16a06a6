"""Web push end to end: the hub's API, a real HTTPS push service on loopback, decryption."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from agent.errors import Codes
from agent.hub.accounts import Role
from agent.hub.push_api import SENT_TEXT, SUBSCRIBED_TEXT, UNSUBSCRIBED_TEXT
from agent.protocol import Notification, decode_frame_text
from agent.push.vapid import VAPID_KEY_FILE

from .conftest import HubFactory, PushHub, User
from .loopback import Answer, LoopbackPushService, unb64url


async def subscribe(hub: PushHub, service: LoopbackPushService, user: User, path: str) -> None:
    response = await hub.call(user, "subscribe", service.subscribe(path))
    assert response.status_code == 200, response.text
    assert response.json() == SUBSCRIBED_TEXT


async def send(hub: PushHub, user: User, **body: Any) -> dict[str, Any]:
    response = await hub.call(user, "send", body)
    return {"status": response.status_code, "json": response.json()}


async def test_a_push_reaches_the_service_signed_encrypted_and_with_its_options(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin, alice = hub.user("root", Role.ADMIN), hub.user("alice")
    await subscribe(hub, service, alice, "alice-phone")
    answer = await send(
        hub,
        admin,
        title="Front door",
        body="Someone rang ✓",
        user_ids=alice.user_id,
        urgency="high",
        ttl=60,
        topic="front-door",
        device="door1",
        call=True,
    )
    assert answer == {"status": 200, "json": SENT_TEXT}
    [got] = await service.wait_for(1)
    assert got.path == "alice-phone"
    assert got.payload == {
        "title": "Front door",
        "body": "Someone rang ✓",
        "device": "door1",
        "call": True,
        "url": "/?device=door1&call=1",
    }
    assert got.claims["aud"] == service.origin
    assert got.claims["sub"] == "mailto:ops@example.com"
    assert time.time() < got.claims["exp"] <= time.time() + 24 * 3600
    assert 0 < int(got.headers["TTL"]) <= 60
    assert got.headers["Urgency"] == "high"
    assert got.headers["Topic"] == "front-door"
    await hub.push.drain()
    assert hub.push.metrics.sent == 1


async def test_defaults_are_one_day_normal_urgency_and_no_topic(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "admin-laptop")
    assert (await send(hub, admin, title="Hi", body="there"))["status"] == 200
    [got] = await service.wait_for(1)
    assert got.payload == {"title": "Hi", "body": "there"}
    assert 86400 - 60 <= int(got.headers["TTL"]) <= 86400
    assert got.headers["Urgency"] == "normal"
    assert "Topic" not in got.headers


async def test_admin_without_recipients_reaches_every_subscribed_user(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin, alice, bob = hub.user("root", Role.ADMIN), hub.user("alice"), hub.user("bob")
    await subscribe(hub, service, alice, "alice-phone")
    await subscribe(hub, service, alice, "alice-laptop")
    await subscribe(hub, service, bob, "bob-phone")
    assert (await send(hub, admin, title="All", body="hands"))["status"] == 200
    received = await service.wait_for(3)
    assert sorted(r.path for r in received) == ["alice-laptop", "alice-phone", "bob-phone"]


@pytest.mark.parametrize("status", [404, 410])
async def test_404_and_410_remove_the_subscription(
    hub: PushHub, service: LoopbackPushService, status: int
) -> None:
    admin, alice = hub.user("root", Role.ADMIN), hub.user("alice")
    await subscribe(hub, service, alice, "gone")
    await subscribe(hub, service, alice, "alive")
    service.answer("gone", Answer(status))
    await send(hub, admin, title="one", body="", user_ids=[alice.user_id])
    await hub.push.drain()
    left = [s.subscription.endpoint for s in hub.push.store.all()]
    assert left == [f"{service.origin}/alive"]
    assert hub.push.metrics.removed == 1
    assert hub.push.metrics.failed[str(status)] == 1
    await send(hub, admin, title="two", body="", user_ids=[alice.user_id])
    await hub.push.drain()
    assert len(service.attempts["gone"]) == 1  # never tried again
    assert [r.payload["title"] for r in service.for_path("alive")] == ["one", "two"]


async def test_413_is_logged_as_our_bug_and_not_retried(
    hub: PushHub, service: LoopbackPushService, caplog: pytest.LogCaptureFixture
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "small")
    service.answer("small", Answer(413))
    with caplog.at_level(logging.ERROR, logger="agent.push.worker"):
        await send(hub, admin, title="big?", body="no")
        await hub.push.drain()
    assert len(service.attempts["small"]) == 1
    [record] = [r for r in caplog.records if "413" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "bug" in record.getMessage()
    assert len(hub.push.store.all()) == 1  # the subscription is fine; the message was not
    assert hub.push.metrics.given_up == 1


async def test_429_waits_as_long_as_retry_after_says(
    hub: PushHub, service: LoopbackPushService, caplog: pytest.LogCaptureFixture
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "busy")
    service.answer("busy", Answer(429, {"Retry-After": "1"}))
    with caplog.at_level(logging.INFO, logger="agent.push.worker"):
        await send(hub, admin, title="patience", body="")
        [got] = await service.wait_for(1)
    first, second = service.attempts["busy"]
    # A lower bound only: the retry cannot come sooner than the service asked.
    assert second - first >= 1.0
    assert got.payload["title"] == "patience"
    assert any("retrying in 1.0 s" in r.getMessage() for r in caplog.records)
    await hub.push.drain()
    assert (hub.push.metrics.retries, hub.push.metrics.sent) == (1, 1)


async def test_5xx_is_retried_with_backoff_until_it_succeeds(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "flaky")
    service.answer("flaky", Answer(500), Answer(503))
    await send(hub, admin, title="eventually", body="")
    [got] = await service.wait_for(1)
    assert got.payload["title"] == "eventually"
    assert len(service.attempts["flaky"]) == 3
    await hub.push.drain()
    metrics = hub.push.metrics
    assert (metrics.failed["500"], metrics.failed["503"], metrics.retries) == (1, 1, 2)
    assert len(hub.push.store.all()) == 1


async def test_5xx_gives_up_after_max_attempts_and_keeps_the_subscription(
    hub_factory: HubFactory, service: LoopbackPushService
) -> None:
    hub = await hub_factory(max_attempts=3)
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "down")
    service.answer("down", *[Answer(500)] * 5)
    await send(hub, admin, title="lost", body="")
    await hub.push.drain()
    assert len(service.attempts["down"]) == 3
    assert hub.push.metrics.given_up == 1
    assert len(hub.push.store.all()) == 1


async def test_a_ttl_of_zero_is_not_retried(hub: PushHub, service: LoopbackPushService) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "now-or-never")
    service.answer("now-or-never", Answer(503))
    await send(hub, admin, title="ring", body="", ttl=0)
    await hub.push.drain()
    assert len(service.attempts["now-or-never"]) == 1
    assert hub.push.metrics.given_up == 1


async def test_a_notification_over_3kb_is_refused_with_the_reference_text(hub: PushHub) -> None:
    admin = hub.user("root", Role.ADMIN)
    answer = await send(hub, admin, title="x" * 3000, body="y" * 100)
    assert answer == {
        "status": 400,
        "json": {"code": Codes.INVALID_PARAMETER, "message": "Notification size exceeds 3kb."},
    }


async def test_users_may_not_push(hub: PushHub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    answer = await send(hub, alice, title="hi", body="", user_ids=bob.user_id)
    assert answer["status"] == 403
    assert answer["json"]["code"] == Codes.FORBIDDEN


async def test_devices_push_to_people_by_default_but_not_to_other_devices(
    hub: PushHub, service: LoopbackPushService
) -> None:
    door, cam = hub.user("door", Role.DEVICE), hub.user("cam", Role.DEVICE)
    alice = hub.user("alice")
    await subscribe(hub, service, alice, "alice-phone")
    await subscribe(hub, service, cam, "cam-browser")
    ok = await send(hub, door, title="Ring", body="", users=["alice"])
    assert ok == {"status": 200, "json": SENT_TEXT}
    refused = await send(hub, door, title="Ring", body="", user_ids=[cam.user_id])
    assert refused["status"] == 403
    assert refused["json"] == {
        "code": Codes.FORBIDDEN,
        "message": 'This device may not push to "cam" '
        "([push] device_recipients, and a group both are granted).",
    }
    everyone = await send(hub, door, title="Everyone", body="")
    assert everyone["status"] == 200
    await hub.push.drain()
    assert [r.payload["title"] for r in service.received] == ["Ring", "Everyone"]
    assert {r.path for r in service.received} == {"alice-phone"}


async def test_a_device_rule_limits_its_recipients(
    hub_factory: HubFactory, service: LoopbackPushService
) -> None:
    hub = await hub_factory(device_recipients={"gate": ["alice"], "*": ["role:admin"]})
    gate, alice, bob = hub.user("gate", Role.DEVICE), hub.user("alice"), hub.user("bob")
    await subscribe(hub, service, alice, "alice-phone")
    await subscribe(hub, service, bob, "bob-phone")
    assert (await send(hub, gate, title="to bob", body="", users=["bob"]))["status"] == 403
    assert (await send(hub, gate, title="users", body="", roles=["user"]))["status"] == 200
    await hub.push.drain()
    assert [(r.path, r.payload["title"]) for r in service.received] == [("alice-phone", "users")]


async def test_a_device_alerts_only_people_it_shares_a_group_with(
    hub: PushHub, service: LoopbackPushService
) -> None:
    door = hub.user("door", Role.DEVICE, groups=("home",))
    alice = hub.user("alice", groups=("home",))
    mallory = hub.user("mallory", groups=("elsewhere",))
    await subscribe(hub, service, alice, "alice-phone")
    await subscribe(hub, service, mallory, "mallory-phone")
    refused = await send(hub, door, title="Ring", body="", users=["mallory"])
    assert refused["status"] == 403
    assert "a group both are granted" in refused["json"]["message"]
    everyone = await send(hub, door, title="Everyone", body="")
    assert everyone["status"] == 200
    await hub.push.drain()
    assert [(r.path, r.payload["title"]) for r in service.received] == [("alice-phone", "Everyone")]


async def test_a_resent_alert_id_is_acknowledged_but_pushed_once(
    hub: PushHub, service: LoopbackPushService
) -> None:
    door, alice = hub.user("door", Role.DEVICE), hub.user("alice")
    await subscribe(hub, service, alice, "alice-phone")
    for _ in range(2):
        answer = await send(hub, door, id="alert-1", title="Ring", body="", users=["alice"])
        assert answer == {"status": 200, "json": SENT_TEXT}
    await hub.push.drain()
    assert len(service.received) == 1
    assert hub.push.metrics.deduplicated == 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"endpoint": "http://127.0.0.1/x"}, "endpoint"),
        ({"endpoint": "https://user:pw@127.0.0.1/x"}, "endpoint"),
        ({"endpoint": "not a url"}, "endpoint"),
        ({"endpoint": None}, "endpoint"),
        ({"keys": None}, "keys"),
        ({"keys": {"p256dh": "AAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "p256dh"),
        ({"keys": {"auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "p256dh"),
        ({"keys": {"p256dh": "!!!", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "p256dh"),
        ({"auth": "AAAA"}, "auth"),
        ({"p256dh": "BA" + "A" * 85}, "p256dh"),  # 65 bytes, but not a point on P-256
        ({"p256dh": "Aw" + "A" * 85}, "p256dh"),  # 65 bytes, but not uncompressed (0x03)
    ],
)
async def test_subscribe_refuses_bad_input_naming_the_field(
    hub: PushHub, service: LoopbackPushService, change: dict[str, Any], named: str
) -> None:
    alice = hub.user("alice")
    subscription = service.subscribe("phone")
    for key in ("auth", "p256dh"):
        if key in change:
            subscription["keys"][key] = change.pop(key)
    subscription.update(change)
    response = await hub.call(alice, "subscribe", subscription)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == Codes.INVALID_PARAMETER
    assert named in response.json()["message"]
    assert hub.push.store.all() == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "push.localhost",
        "10.1.2.3",
        "192.168.1.10",
        "169.254.0.9",
        "[::1]",
        "[fe80::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",  # noqa: S104 (an endpoint host to refuse, not a bind)
        "100.64.0.1",
    ],
)
async def test_private_and_loopback_endpoints_are_refused_unless_allowed(
    hub_factory: HubFactory, service: LoopbackPushService, host: str
) -> None:
    hub = await hub_factory(allow_private_endpoints=False)
    alice = hub.user("alice")
    subscription = service.subscribe("phone") | {"endpoint": f"https://{host}/push/abc"}
    response = await hub.call(alice, "subscribe", subscription)
    assert response.status_code == 400
    assert "loopback, private or link-local" in response.json()["message"]


async def test_a_public_endpoint_is_accepted_without_resolving_it(
    hub_factory: HubFactory, service: LoopbackPushService
) -> None:
    hub = await hub_factory(allow_private_endpoints=False)
    alice = hub.user("alice")
    subscription = service.subscribe("phone") | {"endpoint": "https://push.example.net/wpush/v2/x"}
    response = await hub.call(alice, "subscribe", subscription)
    assert response.json() == SUBSCRIBED_TEXT


async def test_subscriptions_are_deduplicated_and_capped_at_ten_newest_kept(
    hub: PushHub, service: LoopbackPushService
) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    first = service.subscribe("phone-0")
    for _ in range(2):
        assert (await hub.call(alice, "subscribe", first)).status_code == 200
    assert len(hub.push.store.all()) == 1
    for n in range(1, 11):
        await subscribe(hub, service, alice, f"phone-{n}")
    endpoints = {s.subscription.endpoint for s in hub.push.store.for_users([alice.user_id])}
    assert endpoints == {f"{service.origin}/phone-{n}" for n in range(1, 11)}
    # The same browser subscribed by another account now belongs to that account.
    await hub.call(bob, "subscribe", service.subscribe("phone-10") | {})
    assert [s.user_id for s in hub.push.store.all() if s.subscription.endpoint.endswith("-10")] == [
        bob.user_id
    ]


async def test_unsubscribe_removes_only_the_callers_subscription(
    hub: PushHub, service: LoopbackPushService
) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    await subscribe(hub, service, alice, "alice-phone")
    mine = {"endpoint": f"{service.origin}/alice-phone"}
    response = await hub.call(bob, "unsubscribe", mine)
    assert response.json() == UNSUBSCRIBED_TEXT  # idempotent, and reveals nothing
    assert len(hub.push.store.all()) == 1
    response = await hub.call(alice, "unsubscribe", mine)
    assert response.json() == UNSUBSCRIBED_TEXT
    assert hub.push.store.all() == []


async def test_routes_need_a_token(hub: PushHub) -> None:
    async with hub.http() as http:
        response = await http.get("/api/push/vapid-public-key")
    assert response.status_code == 401
    assert response.json()["code"] == Codes.UNAUTHORIZED


async def test_the_vapid_key_is_made_once_kept_private_and_is_an_uncompressed_point(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(state="keys")
    key = hub.push.public_key
    raw = unb64url(key)
    assert (len(raw), raw[0]) == (65, 0x04)
    path = hub.server.state_dir / VAPID_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await hub.stop()
    again = await hub_factory(state="keys")
    assert again.push.public_key == key


async def test_realtime_notifications_reach_users_who_are_not_connected(
    hub: PushHub, service: LoopbackPushService
) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    await subscribe(hub, service, alice, "alice-phone")
    backplane = hub.server.backplane

    async def is_connected(user_id: str) -> bool:
        return bool(await backplane.user_connections(user_id))

    note = Notification("New message", "from bob")
    async with connect(f"{hub.server.ws_url}?token={bob.token}") as watcher:
        await join(watcher, "room")
        async with connect(f"{hub.server.ws_url}?token={alice.token}") as ws:
            await join(ws, "room")  # the hub registers a connection before accepting it
            assert (
                await hub.push.notify_users([alice.user_id], note, is_connected=is_connected) == 0
            )
            always = Notification("Call", "now", always=True)
            task = hub.push.notify_users([alice.user_id], always, is_connected=is_connected)
            assert await task == 1
            [got] = await service.wait_for(1)
            assert got.payload == {"title": "Call", "body": "now"}
        await notice(watcher, "USER_DISCONNECTED")  # alice is gone from the hub
    assert await hub.push.notify_users([alice.user_id], note, is_connected=is_connected) == 1
    received = await service.wait_for(2)
    assert received[1].payload == {"title": "New message", "body": "from bob"}


async def join(ws: ClientConnection, group: str) -> None:
    await ws.send(json.dumps({"action": "joinRoom", "rid": group}))
    await notice(ws, "USER_JOINED")


async def notice(ws: ClientConnection, code: str) -> None:
    while True:
        frame = decode_frame_text(str(await asyncio.wait_for(ws.recv(), 10)))
        if "#notice" in frame and frame.get("#code") == code:
            return


async def test_the_push_routes_are_described_in_openapi(hub: PushHub) -> None:
    async with hub.http() as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    for route in ("vapid-public-key", "subscribe", "unsubscribe", "send"):
        assert f"/api/push/{route}" in paths
    send_schema = paths["/api/push/send"]["post"]
    assert send_schema["tags"] == ["push"]
