"""Login throttling shared by hub nodes on one real Redis: failures counted through any node
lock a name or an address out on every node after the tries a single hub allows, a success
through one clears the name on all, the Redis store computes the pure tables' delays, its
records expire, and a node whose Redis is away keeps throttling on its own."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import HubSettings, Settings
from agent.errors import Codes
from agent.hub.backplane_redis import LinkState, RedisBackplane
from agent.hub.backplane_redis.throttle import RedisThrottleStore
from agent.hub.login import (
    ADDRESS_POLICY,
    NAME_POLICY,
    FailureThrottle,
    LoginThrottle,
    MemoryThrottleStore,
    ThrottleKind,
    ThrottlePolicy,
    ThrottleStore,
)
from agent.hub.server import HubServer

from .redis_server import RedisServer

PASSWORD = "correct horse battery"
WAIT = 30.0
# The hub's numbers of free tries and forgiveness, with a lockout long enough that no slow
# machine sees it end mid-test.
SLOW_NAME = ThrottlePolicy(
    free_failures=NAME_POLICY.free_failures,
    base_delay=600.0,
    max_delay=900.0,
    forgive_seconds=NAME_POLICY.forgive_seconds,
)
SLOW_ADDRESS = ThrottlePolicy(
    free_failures=ADDRESS_POLICY.free_failures,
    base_delay=600.0,
    max_delay=900.0,
    forgive_seconds=ADDRESS_POLICY.forgive_seconds,
)
# Small numbers: the same steps as the pure table's own tests.
POLICY = ThrottlePolicy(free_failures=3, base_delay=1.0, max_delay=8.0, forgive_seconds=10.0)
ODD_KEY = "ä\n*:{x}\udc80 " + "z" * 5000  # newline, glob and brace characters, a lone surrogate


def tries_before_lockout(policy: ThrottlePolicy) -> int:
    """How many failures one hub alone counts before it refuses a key."""
    table, tries = FailureThrottle(policy), 0
    while table.retry_after("k", 0.0) == 0.0:
        table.failed("k", 0.0)
        tries += 1
    return tries


def slow_throttle(node: HubServer) -> RedisThrottleStore:
    """Give ``node`` the slow policies, shared and local; its shared store."""
    assert isinstance(node.backplane, RedisBackplane)
    shared = RedisThrottleStore.of(
        node.backplane, name_policy=SLOW_NAME, address_policy=SLOW_ADDRESS
    )
    node.login_guard.shared = shared
    node.login_guard.local = MemoryThrottleStore(
        LoginThrottle(name_policy=SLOW_NAME, address_policy=SLOW_ADDRESS)
    )
    return shared


async def start_node(tmp_path: Path, index: int, redis_url: str, database_url: str) -> HubServer:
    hub = HubSettings(host="127.0.0.1", port=0, backplane=redis_url, database=database_url)
    node = HubServer(Settings(state_dir=tmp_path / f"node{index}", hub=hub))
    await node.start()
    # The hub on a Redis backplane shares its throttle through that Redis.
    assert isinstance(node.login_guard.shared, RedisThrottleStore)
    return node


@pytest.fixture
async def cluster(
    tmp_path: Path, redis_url: str, database_url: str
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Three nodes on one Redis and one database, with the slow policies, and an account
    ``alice``; an HTTP client per node."""
    nodes: list[HubServer] = []
    clients: list[httpx.AsyncClient] = []
    try:
        for index in range(3):
            node = await start_node(tmp_path, index, redis_url, database_url)
            nodes.append(node)
            slow_throttle(node)
            clients.append(httpx.AsyncClient(base_url=node.http_url, timeout=WAIT))
        await asyncio.to_thread(nodes[0].accounts.add, "alice", PASSWORD)
        yield clients
    finally:
        for client in clients:
            await client.aclose()
        for node in nodes:
            await node.stop()


async def login(
    http: httpx.AsyncClient, name: str, password: str, *, client: str
) -> httpx.Response:
    """POST /api/login from ``client`` (X-Forwarded-For, trusted from loopback)."""
    return await http.post(
        "/api/login",
        json={"name": name, "password": password},
        headers={"X-Forwarded-For": client},
    )


def retry_after(response: httpx.Response) -> int:
    """A 429's Retry-After, after checking its shape."""
    assert response.status_code == 429, response.text
    assert response.json()["code"] == Codes.RATE_LIMITED
    return int(response.headers["Retry-After"])


async def test_failures_over_three_nodes_lock_the_name_out_on_all(
    cluster: list[httpx.AsyncClient],
) -> None:
    allowed = tries_before_lockout(SLOW_NAME)
    for attempt in range(allowed):  # each from another address: only the name adds up
        node = cluster[attempt % 3]
        wrong = await login(node, "alice", f"guess {attempt}", client=f"198.51.100.{attempt}")
        assert wrong.status_code == 401, (attempt, wrong.text)
    for node in cluster:
        refused = await login(node, "alice", PASSWORD, client="203.0.113.9")
        assert 590 <= retry_after(refused) <= 600
    other = await login(cluster[1], "bob", "a wrong password", client="203.0.113.9")
    assert other.status_code == 401  # another name is not locked


async def test_a_success_through_one_node_clears_the_name_on_all(
    cluster: list[httpx.AsyncClient],
) -> None:
    free = SLOW_NAME.free_failures
    for attempt in range(free):
        node = cluster[attempt % 3]
        assert (await login(node, "alice", "wrong", client=f"10.0.0.{attempt}")).status_code == 401
    assert (await login(cluster[0], "alice", PASSWORD, client="10.0.1.1")).status_code == 200
    # Without the clear, the name would now hold 2 * free failures and be locked.
    for attempt in range(free):
        node = cluster[(attempt + 1) % 3]
        assert (await login(node, "alice", "wrong", client=f"10.0.2.{attempt}")).status_code == 401
    assert (await login(cluster[2], "alice", PASSWORD, client="10.0.3.1")).status_code == 200


async def test_one_address_guessing_names_is_locked_out_on_every_node(
    cluster: list[httpx.AsyncClient],
) -> None:
    allowed = tries_before_lockout(SLOW_ADDRESS)
    for attempt in range(allowed):
        node = cluster[attempt % 3]
        wrong = await login(node, f"name{attempt}", "a wrong password", client="192.0.2.7")
        assert wrong.status_code == 401, (attempt, wrong.text)
    for node in cluster:
        assert 590 <= retry_after(await login(node, "alice", PASSWORD, client="192.0.2.7")) <= 600
    # Another address is not locked out, and its success leaves the locked address locked.
    assert (await login(cluster[2], "alice", PASSWORD, client="192.0.2.8")).status_code == 200
    retry_after(await login(cluster[0], "carol", "a wrong password", client="192.0.2.7"))


# -- the store itself, both implementations --------------------------------------------------


@pytest.fixture
async def plane(redis_url: str) -> AsyncIterator[RedisBackplane]:
    """A started node's backplane (its link carries the store's scripts)."""
    backplane = RedisBackplane(redis_url)
    await backplane.start()
    yield backplane
    await backplane.close()


StoreAt = Callable[[list[float]], ThrottleStore]


@pytest.fixture(params=["memory", "redis"])
def store_at(request: pytest.FixtureRequest) -> StoreAt:
    """A store under POLICY (both kinds) reading the hand-driven clock ``now[0]``."""
    backplane: RedisBackplane | None = (
        request.getfixturevalue("plane") if request.param == "redis" else None
    )

    def make(now: list[float]) -> ThrottleStore:
        if backplane is None:
            throttle = LoginThrottle(name_policy=POLICY, address_policy=POLICY)
            return MemoryThrottleStore(throttle, clock=lambda: now[0])
        return RedisThrottleStore.of(
            backplane, name_policy=POLICY, address_policy=POLICY, clock=lambda: now[0]
        )

    return make


# (time, step, kind, key, answer): the pure table's own test sequence, and then some.
NAME, ADDRESS = ThrottleKind.NAME, ThrottleKind.ADDRESS
STEPS: list[tuple[float, str, ThrottleKind, str, float | None]] = [
    (0.0, "failed", NAME, "k", 0.0),
    (0.0, "failed", NAME, "k", 0.0),
    (0.0, "failed", NAME, "k", 0.0),
    (0.0, "retry_after", NAME, "k", 0.0),
    (0.0, "failed", NAME, "k", 1.0),  # past the free failures: the base delay
    (0.0, "retry_after", NAME, "k", 1.0),
    (0.0, "retry_after", ADDRESS, "k", 0.0),  # the tables are apart
    (0.25, "retry_after", NAME, "k", 0.75),
    (1.0, "retry_after", NAME, "k", 0.0),
    (1.0, "failed", NAME, "k", 2.0 * 2 ** (-0.1)),  # 0.1 failure forgiven meanwhile
    (2.0, "failed", NAME, "k", 2.0 * 2 ** (0.8)),
    (2.0, "failed", NAME, "k", 8.0 * 2 ** (-0.2)),
    (2.0, "failed", NAME, "k", 8.0),  # the cap
    (2.0, "failed", ADDRESS, ODD_KEY, 0.0),
    (2.0, "succeeded", NAME, "k", None),
    (2.0, "retry_after", NAME, "k", 0.0),
    (2.0, "failed", NAME, "k", 0.0),  # counted from one again
    (2.0, "succeeded", NAME, "never seen", None),
    (2.0, "failed", ADDRESS, ODD_KEY, 0.0),
    (2.0, "failed", ADDRESS, ODD_KEY, 0.0),
    (2.0, "failed", ADDRESS, ODD_KEY, 1.0),
    (30.0, "failed", ADDRESS, ODD_KEY, 0.0),  # 2.8 forgiven: 1.2 + 1 is within the free
    (1000.0, "retry_after", ADDRESS, ODD_KEY, 0.0),  # all forgiven
    (1000.0, "failed", ADDRESS, ODD_KEY, 0.0),
]


async def test_the_memory_and_redis_stores_give_the_same_delays(store_at: StoreAt) -> None:
    now = [0.0]
    store = store_at(now)
    answers: list[float | None] = []
    for at, step, kind, key, _ in STEPS:
        now[0] = at
        answers.append(await getattr(store, step)(kind, key))
    expected = [a if a is None else pytest.approx(a, rel=1e-12, abs=1e-12) for *_, a in STEPS]
    assert answers == expected


async def test_records_expire_once_unlocked_and_forgiven(plane: RedisBackplane) -> None:
    now = [100.0]
    store = RedisThrottleStore.of(
        plane, name_policy=POLICY, address_policy=POLICY, clock=lambda: now[0]
    )
    record = store.record_key(NAME, "k")
    for _ in range(4):
        await store.failed(NAME, "k")
    fields = await plane.link.call("HGETALL", record)
    stored = dict(zip(fields[::2], fields[1::2], strict=True))
    assert {k: float(v) for k, v in stored.items()} == {b"f": 4.0, b"u": 100.0, b"l": 101.0}
    # Four failures take 40 s to forgive; the lockout only 1 s: the key lives 40 s.
    assert 39_000 < await plane.link.call("PTTL", record) <= 40_001
    now[0] = 200.0  # all forgiven: asking forgets the record at once
    assert await store.retry_after(NAME, "k") == 0.0
    assert await plane.link.call("EXISTS", record) == 0
    await store.failed(NAME, "k")
    await store.succeeded(NAME, "k")
    assert await plane.link.call("EXISTS", record) == 0


async def test_keys_are_namespaced_and_hashed(plane: RedisBackplane) -> None:
    store = RedisThrottleStore.of(plane)
    await store.failed(ADDRESS, ODD_KEY)
    await store.failed(NAME, "alice")
    keys = sorted(k.decode() for k in await plane.link.call("KEYS", plane.prefix + "login:*"))
    assert keys == sorted([store.record_key(ADDRESS, ODD_KEY), store.record_key(NAME, "alice")])
    for key in keys:
        kind, digest = key.removeprefix(plane.prefix + "login:").split(":")
        assert kind in {"name", "address"}
        assert len(digest) == 64
        assert int(digest, 16) >= 0
    assert "alice" not in " ".join(keys)  # what people type stays out of Redis in clear
    # Keyed: without the nodes' key, a guess cannot be tested against what Redis holds.
    plain = hashlib.sha256(b"alice").hexdigest()
    assert not store.record_key(NAME, "alice").endswith(plain)
    other = RedisThrottleStore.of(plane, hash_key=b"another cluster's key")
    assert other.record_key(NAME, "alice") != store.record_key(NAME, "alice")


async def test_redis_time_drives_the_store_and_the_key_expires(plane: RedisBackplane) -> None:
    quick = ThrottlePolicy(free_failures=1, base_delay=100.0, max_delay=900.0, forgive_seconds=0.2)
    store = RedisThrottleStore.of(plane, name_policy=quick, address_policy=quick)
    assert await store.failed(NAME, "k") == 0.0
    # Forgiveness between the two calls is tiny; the lockout is the base delay.
    assert await store.failed(NAME, "k") == pytest.approx(100.0, rel=0.05)
    assert 90.0 < await store.retry_after(NAME, "k") <= 100.0
    ttl = await plane.link.call("PTTL", store.record_key(NAME, "k"))
    assert 90_000 < ttl <= 100_001  # the lockout outlasts the forgiveness
    await store.succeeded(NAME, "k")
    assert await store.failed(ADDRESS, "k") == 0.0
    # One failure is forgiven in 0.2 s: Redis removes the record by itself.
    record = store.record_key(ADDRESS, "k")
    assert 0 < await plane.link.call("PTTL", record) <= 201
    async with asyncio.timeout(WAIT):
        while await plane.link.call("EXISTS", record):  # noqa: ASYNC110 (Redis expires it)
            await asyncio.sleep(0.05)


# -- Redis away ----------------------------------------------------------------------------


async def test_without_redis_a_node_throttles_logins_on_its_own(
    tmp_path: Path, own_redis: RedisServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    node = await start_node(tmp_path, 0, own_redis.url, database_url)
    try:
        slow_throttle(node)
        await asyncio.to_thread(node.accounts.add, "alice", PASSWORD)
        async with httpx.AsyncClient(base_url=node.http_url, timeout=WAIT) as http:
            await asyncio.to_thread(own_redis.stop)
            with caplog.at_level(logging.INFO, logger="agent.hub.login"):
                for attempt in range(tries_before_lockout(SLOW_NAME)):
                    wrong = await login(http, "alice", "wrong", client=f"10.9.0.{attempt}")
                    assert wrong.status_code == 401, (attempt, wrong.text)
                assert retry_after(await login(http, "alice", PASSWORD, client="10.9.1.1")) > 0
                down = [r for r in caplog.records if "cannot be used" in r.getMessage()]
                assert len(down) == 1  # logged once, not per login
                assert down[0].levelno == logging.WARNING
                await asyncio.to_thread(own_redis.start)
                await _until_up(node)
                # Redis came back empty: the cluster's (empty) counts rule again.
                ok = await login(http, "alice", PASSWORD, client="10.9.1.1")
                assert ok.status_code == 200
                assert "answers again" in caplog.text
    finally:
        await node.stop()


async def _until_up(node: HubServer) -> None:
    backplane: Any = node.backplane
    async with asyncio.timeout(WAIT):
        while backplane.link_state is not LinkState.UP:  # noqa: ASYNC110 (no event to await)
            await asyncio.sleep(0.05)
