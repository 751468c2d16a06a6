"""The pure parts of web push: validation, messages, recipients, answer policy, VAPID, store."""

from __future__ import annotations

import email.utils
import json
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import VapidException
from pydantic import ValidationError
from pywebpush import WebPusher

from agent.errors import Codes, RealtimeError
from agent.protocol import Notification
from agent.push.errors import VapidKeyError
from agent.push.message import (
    PushMessage,
    Recipients,
    Urgency,
    message_from_notification,
    parse_send_request,
)
from agent.push.metrics import PushMetrics
from agent.push.policy import (
    PushOutcome,
    classify_push_status,
    hub_rejected_for_good,
    retry_after_seconds,
)
from agent.push.recipients import allowed_for_device, resolve_recipients
from agent.push.sender import PublicOnlyResolver
from agent.push.settings import OutboxSettings, PushSettings
from agent.push.store import SubscriptionStore
from agent.push.subscriptions import Subscription, origin_of, parse_subscription
from agent.push.vapid import VapidKeys, VapidSigner

from .loopback import Browser, b64url, verify_vapid

# -- subscriptions -----------------------------------------------------------------------------


def test_a_browser_subscription_is_accepted_and_keys_normalised() -> None:
    browser = Browser()
    keys = browser.keys()
    padded = {"p256dh": keys["p256dh"] + "=", "auth": keys["auth"] + "=="}
    sub = parse_subscription({"endpoint": "https://fcm.googleapis.com/fcm/send/x", "keys": padded})
    assert sub == Subscription("https://fcm.googleapis.com/fcm/send/x", **keys)
    assert sub.origin == "https://fcm.googleapis.com"


def test_loopback_is_refused_unless_allowed() -> None:
    body = {"endpoint": "https://127.0.0.1:8443/x", "keys": Browser().keys()}
    with pytest.raises(RealtimeError) as caught:
        parse_subscription(body)
    assert caught.value.code == Codes.INVALID_PARAMETER
    assert parse_subscription(body, allow_private=True).endpoint == body["endpoint"]


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://push.example.com/a/b?c", "https://push.example.com"),
        ("https://push.example.com:443/a", "https://push.example.com"),
        ("https://Push.Example.com:8443/a", "https://push.example.com:8443"),
        ("https://[2001:db8::1]:9/a", "https://[2001:db8::1]:9"),
    ],
)
def test_the_audience_is_the_endpoint_origin(url: str, origin: str) -> None:
    assert origin_of(url) == origin


# -- messages ----------------------------------------------------------------------------------


def test_a_full_send_request() -> None:
    request = parse_send_request(
        {
            "id": "a-1",
            "title": "Ring",
            "body": "front door",
            "users": ["alice"],
            "roles": ["admin"],
            "urgency": "high",
            "ttl": 120,
            "topic": "door",
            "device": "door 1",
            "event": "ring",
            "time": 1700000000.5,
            "snapshot": "/api/snapshots/1.jpg",
            "call": True,
        },
        default_ttl=86400,
    )
    assert request.alert_id == "a-1"
    assert request.recipients == Recipients((), ("alice",), ("admin",))
    message = request.message
    assert (message.ttl, message.urgency, message.topic) == (120, Urgency.HIGH, "door")
    assert json.loads(message.data) == {
        "title": "Ring",
        "body": "front door",
        "id": "a-1",
        "device": "door 1",
        "event": "ring",
        "time": 1700000000.5,
        "snapshot": "/api/snapshots/1.jpg",
        "call": True,
        "url": "/?device=door%201&call=1",
    }


def test_the_reference_shape_needs_only_title_and_body() -> None:
    request = parse_send_request({"title": "t", "body": "b", "user_ids": None}, default_ttl=60)
    assert request.recipients.everyone
    assert request.message == PushMessage({"title": "t", "body": "b"}, ttl=60)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "must be an object"),
        ({"title": 1}, '"title" and "body" must be strings'),
        ({"title": "t", "extra": 1}, "Unknown field(s): extra"),
        ({"title": "t", "user_ids": "bob"}, "'bob' is not one"),
        ({"title": "t", "user_ids": []}, '"user_ids" is empty'),
        ({"title": "t", "users": ["no spaces"]}, '"users" must be a list of account names'),
        ({"title": "t", "roles": ["owner"]}, '"roles" must be a list of roles'),
        ({"title": "t", "urgency": "urgent"}, '"urgency" must be one of'),
        ({"title": "t", "ttl": -1}, '"ttl" must be whole seconds'),
        ({"title": "t", "ttl": True}, '"ttl" must be whole seconds'),
        ({"title": "t", "topic": "has space"}, '"topic" must be 1 to 32'),
        ({"title": "t", "topic": "x" * 33}, '"topic" must be 1 to 32'),
        ({"title": "t", "id": "bad id"}, '"id" must be'),
        ({"title": "t", "url": "https://evil.example/"}, '"url" must be a path on the hub'),
        ({"title": "t", "url": "//evil.example/"}, '"url" must be a path on the hub'),
        ({"title": "t", "snapshot": "javascript:x"}, '"snapshot" must be a path'),
        ({"title": "t", "call": "yes"}, '"call" must be true or false'),
        ({"title": "t", "time": "noon"}, '"time" must be a Unix time'),
        ({"title": "é" * 1600}, "Notification size exceeds 3kb."),
    ],
)
def test_bad_send_requests_name_what_is_wrong(body: Any, says: str) -> None:
    with pytest.raises(RealtimeError) as caught:
        parse_send_request(body, default_ttl=60)
    assert caught.value.code == Codes.INVALID_PARAMETER
    assert says in caught.value.message


def test_a_realtime_notification_becomes_a_title_and_body_message() -> None:
    message = message_from_notification(Notification("t", "b", always=True), ttl=30)
    assert message == PushMessage({"title": "t", "body": "b"}, ttl=30)


# -- recipients --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acct:
    user_id: str
    name: str
    role: str


ADMIN = Acct("00000000-0000-4000-8000-000000000001", "root", "admin")
ALICE = Acct("00000000-0000-4000-8000-000000000002", "alice", "user")
BOB = Acct("00000000-0000-4000-8000-000000000003", "bob", "user")
DOOR = Acct("00000000-0000-4000-8000-000000000004", "door", "device")
CAM = Acct("00000000-0000-4000-8000-000000000005", "cam", "device")
EVERYONE = [ADMIN, ALICE, BOB, DOOR, CAM]
DEFAULT_RULES = PushSettings().device_recipients


def resolve(caller: Acct, recipients: Recipients, rules: Any = DEFAULT_RULES) -> Any:
    return resolve_recipients(
        caller, recipients, accounts=EVERYONE, subscribed=[BOB.user_id], device_rules=rules
    )


def test_admins_reach_anyone_and_everyone_subscribed() -> None:
    named = resolve(ADMIN, Recipients((CAM.user_id,), ("alice", "nobody"), ("admin",)))
    assert named.user_ids == {CAM.user_id, ALICE.user_id, ADMIN.user_id}
    assert named.unknown == ("nobody",)
    assert resolve(ADMIN, Recipients()).user_ids == {BOB.user_id}


def test_devices_reach_people_by_default() -> None:
    assert resolve(DOOR, Recipients()).user_ids == {ADMIN.user_id, ALICE.user_id, BOB.user_id}
    assert resolve(DOOR, Recipients(roles=("user", "device"))).user_ids == {
        ALICE.user_id,
        BOB.user_id,
    }
    with pytest.raises(RealtimeError) as caught:
        resolve(DOOR, Recipients(names=("cam",)))
    assert caught.value.code == Codes.FORBIDDEN


def test_a_devices_own_rule_wins_over_the_default() -> None:
    rules = {"*": ["role:admin"], "door": ["alice", "role:device"]}
    assert allowed_for_device("door", EVERYONE, rules) == {
        ALICE.user_id,
        DOOR.user_id,
        CAM.user_id,
    }
    assert allowed_for_device("cam", EVERYONE, rules) == {ADMIN.user_id}


def test_users_may_not_push_at_all() -> None:
    with pytest.raises(RealtimeError) as caught:
        resolve(ALICE, Recipients(names=("bob",)))
    assert caught.value.code == Codes.FORBIDDEN


# -- answer policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (201, PushOutcome.DELIVERED),
        (202, PushOutcome.DELIVERED),
        (404, PushOutcome.GONE),
        (410, PushOutcome.GONE),
        (413, PushOutcome.TOO_LARGE),
        (429, PushOutcome.RATE_LIMITED),
        (500, PushOutcome.RETRY),
        (503, PushOutcome.RETRY),
        (408, PushOutcome.RETRY),
        (None, PushOutcome.RETRY),
        (400, PushOutcome.REJECTED),
        (403, PushOutcome.REJECTED),
        (301, PushOutcome.REJECTED),
    ],
)
def test_push_service_answers(status: int | None, outcome: PushOutcome) -> None:
    assert classify_push_status(status) is outcome


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("7", now=now) == 7.0
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None, now=now) is None
    assert retry_after_seconds("999999999", now=now) == 24 * 3600.0


@pytest.mark.parametrize(
    ("status", "final"),
    [(400, True), (403, True), (413, True), (None, False), (401, False), (404, False),
     (429, False), (500, False), (503, False)],
)  # fmt: skip
def test_which_hub_answers_drop_an_alert(status: int | None, final: bool) -> None:
    assert hub_rejected_for_good(status) is final


# -- VAPID -------------------------------------------------------------------------------------


def test_vapid_headers_verify_and_are_reused_until_an_hour_before_expiry(tmp_path: Path) -> None:
    keys = VapidKeys.from_state_dir(tmp_path)
    now = [1_700_000_000.0]
    signer = VapidSigner(keys, "mailto:ops@example.com", clock=lambda: now[0])
    first = signer.authorization("https://push.example.com")
    claims = verify_vapid(first, keys.public_key)
    assert claims == {
        "aud": "https://push.example.com",
        "exp": 1_700_000_000 + 12 * 3600,
        "sub": "mailto:ops@example.com",
    }
    now[0] += 10 * 3600
    assert signer.authorization("https://push.example.com") == first
    assert signer.authorization("https://other.example.com") != first
    now[0] += 1.5 * 3600
    renewed = signer.authorization("https://push.example.com")
    assert renewed != first
    assert verify_vapid(renewed, keys.public_key)["exp"] == int(now[0]) + 12 * 3600


def test_a_token_from_another_key_does_not_verify(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    keys, other = VapidKeys.from_state_dir(tmp_path / "a"), VapidKeys.from_state_dir(tmp_path / "b")
    header = VapidSigner(other, "mailto:x@example.com").authorization("https://p.example.com")
    forged = header.replace(other.public_key, keys.public_key)
    with pytest.raises(InvalidSignature):
        verify_vapid(forged, keys.public_key)


def test_the_key_file_is_private_and_refused_when_it_is_not_p256(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    keys = VapidKeys.from_state_dir(tmp_path / "a")
    assert stat.S_IMODE((tmp_path / "a" / "vapid-private-key.pem").stat().st_mode) == 0o600
    assert VapidKeys.from_state_dir(tmp_path / "a").public_key == keys.public_key
    (tmp_path / "b").mkdir()
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "b" / "vapid-private-key.pem").write_bytes(other)
    with pytest.raises(VapidKeyError, match="P-256"):
        VapidKeys.from_state_dir(tmp_path / "b")


def test_the_browser_side_decrypts_what_pywebpush_encrypts_and_only_with_its_keys() -> None:
    browser = Browser()
    info = {"endpoint": "https://p.example.com/x", "keys": browser.keys()}
    body = WebPusher(info).encode(b'{"title":"t"}', "aes128gcm")["body"]
    assert browser.decrypt(body) == b'{"title":"t"}'
    stranger = Browser()
    stranger.private_key, stranger.public_point = browser.private_key, browser.public_point
    with pytest.raises(InvalidTag):
        stranger.decrypt(body)  # same key pair, wrong auth secret


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"subject": "ops@example.com"}, "not a VAPID subject"),
        ({"device_recipients": {"door": ["role:owner"]}}, "names no role"),
        ({"device_recipients": {"door": ["bad name"]}}, "neither an account name"),
        ({"retry_initial_seconds": 5, "retry_cap_seconds": 1}, "retry_cap_seconds"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_bad_push_settings(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        PushSettings(**values)


@pytest.mark.parametrize(
    ("subject", "valid"),
    [
        ("mailto:ops@example.com", True),
        ("mailto:admin@localhost", True),
        ("https://example.com", True),
        ("mailto:ops@server", False),
        ("https://example.com/contact", False),
        ("ops@example.com", False),
    ],
)
def test_subjects_are_the_ones_the_vapid_signer_accepts(
    tmp_path: Path, subject: str, valid: bool
) -> None:
    keys = VapidKeys.from_state_dir(tmp_path)
    signer_accepts = True
    try:
        keys.sign({"aud": "https://p.example.com", "exp": 2_000_000_000, "sub": subject})
    except VapidException:
        signer_accepts = False
    assert signer_accepts is valid
    if valid:
        assert PushSettings(subject=subject).subject == subject
    else:
        with pytest.raises(ValidationError, match="not a VAPID subject"):
            PushSettings(subject=subject)


def test_outbox_settings_defaults() -> None:
    assert OutboxSettings().max_rows == 1000
    with pytest.raises(ValidationError):
        OutboxSettings(max_rows=0)


# -- store -------------------------------------------------------------------------------------


def sub(n: int) -> Subscription:
    return Subscription(f"https://push.example.com/{n}", b64url(b"\x04" + b"\x01" * 64), "A" * 22)


def test_the_store_keeps_the_newest_ten_and_is_private(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "push.db")
    evicted = []
    for n in range(12):
        evicted += store.add("u1", sub(n), max_per_user=10)
    assert [s.endpoint for s in evicted] == [sub(0).endpoint, sub(1).endpoint]
    assert [s.subscription for s in store.for_users(["u1"])] == [sub(n) for n in range(2, 12)]
    assert stat.S_IMODE((tmp_path / "push.db").stat().st_mode) == 0o600
    store.close()


def test_a_failed_change_is_rolled_back_whole(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "push.db")
    store.add("u1", sub(1), max_per_user=10)
    with pytest.raises(TypeError):  # raised after the insert, inside the transaction
        store.add("u1", sub(2), max_per_user="ten")  # type: ignore[arg-type]
    assert [s.subscription for s in store.all()] == [sub(1)]
    store.close()


def test_removal_by_endpoint_respects_new_keys(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "push.db")
    store.add("u1", sub(1), max_per_user=10)
    assert not store.remove_endpoint(sub(1).endpoint, p256dh="other")
    assert store.remove_endpoint(sub(1).endpoint, p256dh=sub(1).p256dh)
    assert store.all() == []
    store.close()


def test_alert_ids_are_remembered_per_sender(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "push.db")
    assert store.remember_alert("door", "a1", keep_seconds=60)
    assert not store.remember_alert("door", "a1", keep_seconds=60)
    assert store.remember_alert("cam", "a1", keep_seconds=60)
    store.forget_alert("door", "a1")
    assert store.remember_alert("door", "a1", keep_seconds=60)
    store.close()
    reopened = SubscriptionStore(tmp_path / "push.db")
    assert not reopened.remember_alert("door", "a1", keep_seconds=60)
    reopened.close()


# -- resolver and metrics ----------------------------------------------------------------------


class FixedResolver(AbstractResolver):
    """An in-memory resolver: every name has the given addresses."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_names_that_resolve_inside_the_network_are_not_reached() -> None:
    mixed = PublicOnlyResolver(FixedResolver("10.0.0.5", "93.184.215.14", "::1"))
    assert [r["host"] for r in await mixed.resolve("push.example.com", 443)] == ["93.184.215.14"]
    inside = PublicOnlyResolver(FixedResolver("127.0.0.1", "fe80::1%2"))
    with pytest.raises(OSError, match="non-public"):
        await inside.resolve("rebound.example.com", 443)
    with pytest.raises(OSError, match="non-public"):
        await PublicOnlyResolver().resolve("localhost", 443)


def test_metrics_render_as_prometheus_counters() -> None:
    metrics = PushMetrics(sent=3, removed=1)
    metrics.failed["410"] += 1
    text = metrics.render(pending=2)
    assert "edge_hub_push_pending 2\n" in text
    assert "edge_hub_push_sent_total 3\n" in text
    assert 'edge_hub_push_failed_total{status="410"} 1\n' in text
    assert "# TYPE edge_hub_push_removed_total counter" in text
