"""The hub's durable push queue: its store on a real SQLite file, and the service sending
to the loopback HTTPS push service through a real hub."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest

from agent.client import RealtimeClient
from agent.errors import Codes
from agent.hub.accounts import Role
from agent.push.message import PushMessage, Urgency
from agent.push.policy import next_attempt_delay
from agent.push.queue import DatabaseDeliveryQueue, QueueFullError
from agent.push.store import StoredSubscription, SubscriptionStore
from agent.push.subscriptions import Subscription

from .conftest import HubFactory, PushHub
from .loopback import Answer, LoopbackPushService, b64url
from .test_push_e2e import send, subscribe

# -- the next attempt (pure) ----------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_on_429_and_503(status: int) -> None:
    delay = next_attempt_delay(
        status, attempts=5, retry_after="2", now=0.0, initial=1, cap=60, jitter=lambda: 0.0
    )
    assert delay == 2.0


def test_retry_after_on_other_answers_or_unreadable_falls_back_to_full_jitter() -> None:
    for status, header in ((500, "2"), (None, None), (429, "soon"), (503, None)):
        delay = next_attempt_delay(
            status, attempts=3, retry_after=header, now=0.0, initial=1, cap=60, jitter=lambda: 1.0
        )
        assert delay == 8.0  # 1 * 2**3
    capped = next_attempt_delay(
        500, attempts=40, retry_after=None, now=0.0, initial=1, cap=60, jitter=lambda: 0.5
    )
    assert capped == 30.0


# -- the store --------------------------------------------------------------------------------


def sub(n: int, user: str = "u1") -> StoredSubscription:
    subscription = Subscription(
        f"https://push.example.com/{n}", b64url(b"\x04" + b"\x01" * 64), "A" * 22
    )
    return StoredSubscription(user, subscription, 0.0)


def message(title: str, ttl: int = 60) -> PushMessage:
    return PushMessage({"title": title, "body": ""}, ttl=ttl, urgency=Urgency.HIGH, topic="t1")


@pytest.fixture
def queue(tmp_path: Path) -> DatabaseDeliveryQueue:
    store = SubscriptionStore(tmp_path / "push.db")
    for n in (1, 2):
        store.add("u1", sub(n).subscription, max_per_user=10)
    return DatabaseDeliveryQueue(store)


def test_an_alert_and_its_deliveries_are_committed_together_once(
    queue: DatabaseDeliveryQueue,
) -> None:
    subs = [sub(1), sub(2)]
    alert = ("door", "a1")
    assert queue.accept(subs, message("ring"), now=100.0, alert=alert, max_rows=10) == 2
    assert queue.accept(subs, message("ring"), now=101.0, alert=alert, max_rows=10) is None
    assert queue.stats().depth == 2
    assert queue.stats().oldest_created_at == 100.0
    # Full: nothing is queued and the id is not recorded, so the sender's retry is new.
    with pytest.raises(QueueFullError):
        queue.accept(subs, message("knock"), now=102.0, alert=("door", "a2"), max_rows=3)
    assert queue.stats().depth == 2
    assert queue.accept([sub(1)], message("knock"), now=103, alert=("door", "a2"), max_rows=3)


def test_only_the_oldest_row_of_each_subscription_is_claimed_and_leases_hold(
    queue: DatabaseDeliveryQueue,
) -> None:
    for title in ("one", "two", "three"):
        queue.accept([sub(1), sub(2)], message(title), now=10.0, max_rows=100)
    first = queue.claim(10.0, 10, lease_seconds=30)
    assert [(d.subscription.endpoint[-1], d.message.payload["title"]) for d in first] == [
        ("1", "one"),
        ("2", "one"),
    ]
    delivery = first[0]
    assert (delivery.message.urgency, delivery.message.topic, delivery.attempts) == (
        Urgency.HIGH,
        "t1",
        0,
    )
    assert delivery.ttl_left(25.5) == 44
    assert queue.claim(11.0, 10, lease_seconds=30) == []  # leased, and the rest wait behind
    assert queue.next_due() == 40.0  # when the leases end
    queue.delivered(first[0].id)
    queue.retry_at(first[1].id, 50.0)
    again = queue.claim(12.0, 10, lease_seconds=30)
    assert [(d.subscription.endpoint[-1], d.message.payload["title"]) for d in again] == [
        ("1", "two")
    ]
    assert queue.next_due() == 42.0
    queue.release_leases()  # a restart: the lease's holder is gone
    assert [d.message.payload["title"] for d in queue.claim(13.0, 10, lease_seconds=30)] == ["two"]
    # At 50 the lease taken at 13 has run out (its holder hung): claimed again, beside the
    # retry that fell due.
    later = queue.claim(50.0, 10, lease_seconds=30)
    assert [(d.message.payload["title"], d.attempts) for d in later] == [("two", 0), ("one", 1)]


def test_rows_of_a_removed_or_moved_subscription_are_dropped_not_sent(
    tmp_path: Path,
) -> None:
    store = SubscriptionStore(tmp_path / "push.db")
    queue = DatabaseDeliveryQueue(store)
    for n in (1, 2):
        store.add("u1", sub(n).subscription, max_per_user=10)
    queue.accept([sub(1), sub(2)], message("x"), now=1.0, max_rows=10)
    store.remove("u1", sub(1).subscription.endpoint)
    store.add("u2", sub(2).subscription, max_per_user=10)  # the browser changed hands
    assert queue.claim(2.0, 10, lease_seconds=30) == []
    assert queue.stats().depth == 0


def test_a_gone_subscription_takes_its_queued_rows_with_it(queue: DatabaseDeliveryQueue) -> None:
    for title in ("one", "two"):
        queue.accept([sub(1), sub(2)], message(title), now=1.0, max_rows=10)
    endpoint = sub(1).subscription.endpoint
    assert queue.drop_endpoint(endpoint, p256dh="renewed-keys") == 0  # re-subscribed since
    assert queue.drop_endpoint(endpoint, p256dh=sub(1).subscription.p256dh) == 2
    assert queue.endpoints() == [sub(2).subscription.endpoint] * 2


def test_the_queue_survives_reopening_the_file(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "push.db")
    store.add("u1", sub(1).subscription, max_per_user=10)
    DatabaseDeliveryQueue(store).accept([sub(1)], message("kept"), now=1.0, max_rows=10)
    store.close()
    reopened = DatabaseDeliveryQueue(SubscriptionStore(tmp_path / "push.db"))
    [delivery] = reopened.claim(2.0, 10, lease_seconds=30)
    assert delivery.message.payload == {"title": "kept", "body": ""}


# -- the service, through a real hub ------------------------------------------------------------


async def test_429_with_retry_after_2_waits_at_least_2_seconds(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "busy")
    service.answer("busy", Answer(429, {"Retry-After": "2"}))
    await send(hub, admin, title="patience", body="")
    [got] = await service.wait_for(1)
    first, second = service.attempts["busy"]
    assert second - first >= 2.0
    assert got.payload["title"] == "patience"
    await hub.push.drain()
    assert (hub.push.metrics.retries, hub.push.metrics.sent) == (1, 1)


async def test_503_with_retry_after_is_honoured_too(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "maintenance")
    service.answer("maintenance", Answer(503, {"Retry-After": "1"}))
    await send(hub, admin, title="later", body="")
    await service.wait_for(1)
    first, second = service.attempts["maintenance"]
    assert second - first >= 1.0


async def test_a_410_subscription_is_pruned_after_one_try_with_its_queued_messages(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin, alice = hub.user("root", Role.ADMIN), hub.user("alice")
    await subscribe(hub, service, alice, "gone")
    await subscribe(hub, service, alice, "alive")
    service.answer("gone", Answer(410))
    for title in ("one", "two", "three"):
        await send(hub, admin, title=title, body="", user_ids=[alice.user_id])
    await hub.push.drain()
    assert len(service.attempts["gone"]) == 1
    assert [s.subscription.endpoint for s in hub.push.store.all()] == [f"{service.origin}/alive"]
    assert [r.payload["title"] for r in service.for_path("alive")] == ["one", "two", "three"]
    assert hub.push.metrics.removed == 1


async def test_a_failing_subscription_keeps_its_messages_in_order(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "flaky")
    service.answer("flaky", Answer(500), Answer(502), Answer(503))
    for n in range(5):
        await send(hub, admin, title=f"m{n}", body="")
    received = await service.wait_for(5)
    assert [r.payload["title"] for r in received] == [f"m{n}" for n in range(5)]
    assert len(service.attempts["flaky"]) == 8


async def test_retries_carry_the_ttl_that_is_left_and_stop_when_it_runs_out(
    hub_factory: HubFactory, service: LoopbackPushService, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await hub_factory(retry_initial_seconds=0.4, retry_cap_seconds=0.4)
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "down")
    service.outage_status = 500
    with caplog.at_level(logging.WARNING, logger="agent.push.worker"):
        await send(hub, admin, title="brief", body="", ttl=2)
        accepted_by = time.monotonic()  # the TTL counts from before this
        await hub.push.drain()
    tries = service.attempts["down"]
    assert tries
    assert tries[-1] < accepted_by + 2.0 + 0.2  # none once the 2 s are over (0.2: transit)
    assert hub.push.metrics.given_up == 1
    assert any("TTL of 2 s runs out" in r.getMessage() for r in caplog.records)
    service.outage_status = None
    service.answer("down", Answer(500))
    await send(hub, admin, title="long", body="", ttl=600)
    [got] = await service.wait_for(1)
    assert 590 <= int(got.headers["TTL"]) < 600  # the retry's TTL: what was left of 600


async def test_queued_deliveries_survive_a_hub_restart_and_go_out_on_start(
    hub_factory: HubFactory, service: LoopbackPushService
) -> None:
    hub = await hub_factory(state="kept")
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "phone")
    service.outage_status = 503
    for n in range(3):
        await send(hub, admin, id=f"alert-{n}", title=f"a{n}", body="")
    await service.wait_for_attempts("phone", 1)
    await hub.stop()
    service.outage_status = None
    again = await hub_factory(state="kept")
    received = await service.wait_for(3)
    assert [r.payload["title"] for r in received] == ["a0", "a1", "a2"]
    # The resent ids are still known after the restart: nothing is queued twice.
    assert (await send(again, admin, id="alert-1", title="a1", body=""))["status"] == 200
    await again.push.drain()
    assert len(service.received) == 3


async def test_queue_depth_and_oldest_age_are_in_the_hub_metrics(
    hub: PushHub, service: LoopbackPushService
) -> None:
    admin = hub.user("root", Role.ADMIN)
    await subscribe(hub, service, admin, "slow")
    service.outage_status = 503
    await send(hub, admin, title="waiting", body="")
    await service.wait_for_attempts("slow", 1)
    async with httpx.AsyncClient(base_url=hub.server.http_url) as http:
        text = (await http.get("/metrics")).text
    assert "edge_hub_push_queue_depth 1\n" in text
    assert "# TYPE edge_hub_push_queue_oldest_age_seconds gauge" in text
    age = float(text.split("\nedge_hub_push_queue_oldest_age_seconds ")[1].split()[0])
    assert 0 < age < 60


# -- batches: an agent catching up after an outage ------------------------------------------------


async def test_a_batch_is_accepted_in_order_with_one_answer_per_alert(
    hub: PushHub, service: LoopbackPushService
) -> None:
    door, alice = hub.user("door", Role.DEVICE), hub.user("alice")
    await subscribe(hub, service, alice, "alice-phone")
    await send(hub, door, id="seen", title="earlier", body="", users=["alice"])
    alerts = [
        {"id": "b1", "title": "one", "body": "", "users": ["alice"]},
        {"id": "b2", "title": "two", "body": "", "users": ["alice"], "urgency": "loud"},
        {"id": "seen", "title": "earlier", "body": "", "users": ["alice"]},
        {"id": "b3", "title": "three", "body": "", "users": ["alice"]},
    ]
    response = await hub.call(door, "send-batch", {"alerts": alerts})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 200, 200]
    assert results[1]["code"] == Codes.INVALID_PARAMETER
    assert "urgency" in results[1]["message"]
    received = await service.wait_for(3)
    assert [r.payload["title"] for r in received] == ["earlier", "one", "three"]
    assert hub.push.metrics.deduplicated == 1


@pytest.mark.parametrize(
    "alerts", [[], None, "x", [{"title": "t", "body": ""}] * 101, [{"title": "t"}, [None]]]
)
async def test_a_batch_that_is_not_a_list_of_1_to_100_is_refused(
    hub: PushHub, alerts: object
) -> None:
    response = await hub.call(hub.user("door", Role.DEVICE), "send-batch", {"alerts": alerts})
    assert response.status_code == 400
    assert response.json()["code"] == Codes.INVALID_PARAMETER


async def test_the_client_sends_a_batch_and_reads_one_result_per_alert(
    hub: PushHub, service: LoopbackPushService
) -> None:
    door, alice = hub.user("door", Role.DEVICE), hub.user("alice")
    await subscribe(hub, service, alice, "alice-phone")
    client = RealtimeClient(hub.server.ws_url, token=door.token)
    try:
        results = await client.push_alerts(
            [{"id": f"c{n}", "title": f"t{n}", "body": "", "users": ["alice"]} for n in range(3)]
            + [{"id": "bad", "title": "x", "body": "", "users": ["nobody"], "roles": ["root"]}]
        )
    finally:
        await client.close_realtime()
    assert [r["status"] for r in results] == [200, 200, 200, 400]
    assert [r.payload["title"] for r in await service.wait_for(3)] == ["t0", "t1", "t2"]
