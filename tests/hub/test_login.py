"""Logins: the pure throttle with a hand-driven clock, the KDF pool, and a real hub over HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from agent.config import HubLoginSettings, HubSettings, Settings
from agent.errors import AuthError, Codes
from agent.hub.accounts import ACCOUNTS_FILE, AccountStore
from agent.hub.login import (
    ADDRESS_POLICY,
    NAME_POLICY,
    WRONG_CREDENTIALS,
    FailureThrottle,
    KdfPool,
    LoginGuard,
    LoginRefused,
    LoginThrottle,
    MemoryThrottleStore,
    ThrottleKind,
    ThrottlePolicy,
)
from agent.hub.server import HubServer

from .conftest import TIMEOUT, Hub

PASSWORD = "correct horse battery"
POLICY = ThrottlePolicy(free_failures=3, base_delay=1.0, max_delay=8.0, forgive_seconds=10.0)
FROZEN = 1000.0


# -- the pure throttle ------------------------------------------------------------------------


def test_the_delay_doubles_after_the_free_failures_up_to_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(1, 9)] == [0, 0, 0, 1, 2, 4, 8, 8]
    assert POLICY.delay(10**9) == 8.0  # no overflow however long it goes on


def test_a_key_is_locked_out_for_longer_after_each_failure_past_the_free_ones() -> None:
    throttle = FailureThrottle(POLICY)
    now = 0.0
    assert [throttle.failed("k", now) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.retry_after("k", now) == 0.0
    assert throttle.failed("k", now) == 1.0
    assert throttle.retry_after("k", now) == 1.0
    assert throttle.retry_after("k", now + 0.25) == 0.75
    assert throttle.retry_after("k", now + 1.0) == 0.0
    assert throttle.failed("k", now + 1.0) == pytest.approx(2.0 * 2 ** (-0.1))  # 0.1 forgiven
    assert throttle.retry_after("other", now) == 0.0


def test_failures_are_forgiven_with_time_and_forgotten_when_none_is_left() -> None:
    throttle = FailureThrottle(POLICY)
    for _ in range(5):
        throttle.failed("k", 0.0)
    assert throttle.failures("k", 0.0) == 5.0
    assert throttle.failures("k", 25.0) == 2.5  # one per forgive_seconds (10 s)
    assert throttle.failed("k", 25.0) == 1.0  # 3.5 failures: past the free ones, the base
    assert throttle.retry_after("k", 100.0) == 0.0
    assert len(throttle) == 0  # fully forgiven: nothing kept


def test_success_forgets_a_key() -> None:
    throttle = FailureThrottle(POLICY)
    for _ in range(4):
        throttle.failed("k", 0.0)
    assert throttle.retry_after("k", 0.0) == 1.0
    throttle.succeeded("k")
    throttle.succeeded("never-seen")
    assert throttle.retry_after("k", 0.0) == 0.0
    assert throttle.failures("k", 0.0) == 0.0


def test_a_flood_of_names_keeps_only_the_most_recent_keys() -> None:
    throttle = FailureThrottle(POLICY, max_keys=100)
    for _ in range(4):
        throttle.failed("victim", 0.0)
    for i in range(10_000):
        throttle.failed(f"made-up-{i}", 1.0)
    assert len(throttle) == 100
    assert throttle.failures("made-up-9999", 1.0) == 1.0
    assert throttle.failures("made-up-0", 1.0) == 0.0  # least recently failed went first
    assert throttle.failures("victim", 1.0) == 0.0
    with pytest.raises(ValueError, match="max_keys"):
        FailureThrottle(POLICY, max_keys=0)


def test_a_refailed_key_becomes_the_newest() -> None:
    throttle = FailureThrottle(POLICY, max_keys=2)
    throttle.failed("a", 0.0)
    throttle.failed("b", 0.0)
    throttle.failed("a", 0.0)  # a is now newer than b
    throttle.failed("c", 0.0)
    assert (throttle.failures("a", 0.0), throttle.failures("b", 0.0)) == (2.0, 0.0)


def test_names_and_addresses_are_throttled_separately() -> None:
    throttle = LoginThrottle(name_policy=POLICY, address_policy=POLICY)
    # One name from many addresses: the name is locked, from any address.
    assert [throttle.failed("alice", f"10.0.0.{i}", 0.0) for i in range(4)] == [0, 0, 0, 1]
    assert throttle.retry_after("alice", "10.0.0.99", 0.0) == 1
    assert throttle.retry_after("bob", "10.0.0.1", 0.0) == 0
    # Many names from one address: the address is locked, for any name.
    for i in range(4):
        throttle.failed(f"user{i}", "192.0.2.1", 0.0)
    assert throttle.retry_after("carol", "192.0.2.1", 0.5) == 1  # whole seconds, rounded up
    assert throttle.retry_after("carol", "192.0.2.2", 0.5) == 0


def test_a_success_forgets_the_name_but_not_the_address() -> None:
    throttle = LoginThrottle(name_policy=POLICY, address_policy=POLICY)
    for _ in range(3):
        throttle.failed("alice", "192.0.2.1", 0.0)
    throttle.succeeded("alice")
    assert throttle.names.failures("alice", 0.0) == 0.0
    # Holding one account does not wipe the record of guesses at others.
    assert throttle.addresses.failures("192.0.2.1", 0.0) == 3.0
    assert throttle.failed("bob", "192.0.2.1", 0.0) == 1


def test_the_hub_policies() -> None:
    assert (NAME_POLICY.free_failures, ADDRESS_POLICY.free_failures) == (5, 10)
    assert NAME_POLICY.delay(6) == ADDRESS_POLICY.delay(11) == 1.0
    assert NAME_POLICY.delay(100) == ADDRESS_POLICY.delay(100) == 900.0


# -- the KDF pool --------------------------------------------------------------------------


async def test_the_pool_refuses_at_once_beyond_its_queue_and_uses_its_own_threads() -> None:
    pool = KdfPool(threads=1, queue=1)
    release = threading.Event()

    def work(tag: str) -> tuple[str, str]:
        assert release.wait(TIMEOUT)
        return tag, threading.current_thread().name

    try:
        running = asyncio.ensure_future(pool.run(work, "first"))
        queued = asyncio.ensure_future(pool.run(work, "second"))
        await asyncio.sleep(0)  # both have taken their slots
        assert pool.busy == 2
        with pytest.raises(LoginRefused) as refused:
            await pool.run(work, "third")
        assert (refused.value.status, refused.value.retry_after) == (503, 1)
        assert refused.value.code == Codes.RATE_LIMITED
        release.set()
        results = await asyncio.wait_for(asyncio.gather(running, queued), TIMEOUT)
        assert [tag for tag, _ in results] == ["first", "second"]
        assert all(thread.startswith("hub-kdf") for _, thread in results)
        assert pool.busy == 0
    finally:
        release.set()
        pool.close()


async def test_a_cancelled_wait_frees_its_slot_only_when_its_work_is_done() -> None:
    pool = KdfPool(threads=1, queue=1)
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        assert release.wait(TIMEOUT)

    try:
        running = asyncio.ensure_future(pool.run(hold))
        queued = asyncio.ensure_future(pool.run(hold))
        assert await asyncio.to_thread(started.wait, TIMEOUT)
        queued.cancel()
        running.cancel()  # its thread is still busy: the slot stays taken
        await asyncio.gather(running, queued, return_exceptions=True)
        assert pool.busy == 1
        release.set()
        assert await pool.run(lambda: "free again") == "free again"
        assert pool.busy == 0
    finally:
        release.set()
        pool.close()
    with pytest.raises(ValueError, match="at least 1 thread"):
        KdfPool(threads=0, queue=0)


async def test_the_guard_refuses_even_the_right_password_while_locked(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / ACCOUNTS_FILE)
    store.add("alice", PASSWORD)
    now = [FROZEN]
    guard = LoginGuard(
        store,
        kdf_threads=1,
        kdf_queue=4,
        throttle=LoginThrottle(name_policy=POLICY, address_policy=ADDRESS_POLICY),
        clock=lambda: now[0],
    )
    try:
        for _ in range(POLICY.free_failures + 1):
            with pytest.raises(AuthError, match=WRONG_CREDENTIALS):
                await guard.verify("alice", "not it", "192.0.2.1")
        with pytest.raises(LoginRefused) as refused:
            await guard.verify("alice", PASSWORD, "192.0.2.2")
        assert (refused.value.status, refused.value.retry_after) == (429, 1)
        now[0] += 1.0
        account = await guard.verify("alice", PASSWORD, "192.0.2.2")
        assert account.name == "alice"
        assert guard.throttle.names.failures("alice", now[0]) == 0.0
    finally:
        guard.close()
        store.close()


async def test_the_memory_store_is_the_pure_tables_at_its_clock() -> None:
    now = [0.0]
    store = MemoryThrottleStore(
        LoginThrottle(name_policy=POLICY, address_policy=ADDRESS_POLICY), clock=lambda: now[0]
    )
    assert [await store.failed(ThrottleKind.NAME, "k") for _ in range(4)] == [0, 0, 0, 1.0]
    assert await store.failed(ThrottleKind.ADDRESS, "k") == 0.0  # the other table
    now[0] = 0.5
    assert await store.retry_after(ThrottleKind.NAME, "k") == 0.5
    assert store.table(ThrottleKind.ADDRESS).failures("k", 0.0) == 1.0
    await store.succeeded(ThrottleKind.NAME, "k")
    assert await store.retry_after(ThrottleKind.NAME, "k") == 0.0


async def test_guards_sharing_a_store_count_failures_together(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / ACCOUNTS_FILE)
    store.add("alice", PASSWORD)
    shared = MemoryThrottleStore(
        LoginThrottle(name_policy=POLICY, address_policy=ADDRESS_POLICY), clock=lambda: FROZEN
    )
    guards = [
        LoginGuard(store, kdf_threads=1, kdf_queue=4, shared=shared, clock=lambda: FROZEN)
        for _ in range(2)
    ]
    try:
        for attempt in range(POLICY.free_failures + 1):
            with pytest.raises(AuthError):
                await guards[attempt % 2].verify("alice", "not it", f"192.0.2.{attempt}")
        for guard in guards:
            with pytest.raises(LoginRefused):
                await guard.verify("alice", PASSWORD, "198.51.100.1")
            # Each guard's own table was not used: the shared store is the one that counts.
            assert len(guard.throttle.names) == 0
    finally:
        for guard in guards:
            guard.close()
        store.close()


# -- a real hub ------------------------------------------------------------------------------


HubMaker = Callable[..., Any]


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[HubMaker]:
    """Start hubs with ``[hub]`` settings; with ``frozen=True`` their throttle's clock stands
    still, so a lockout lasts however slow the machine is."""
    servers: list[HubServer] = []

    async def start(*, frozen: bool = True, **hub: Any) -> Hub:
        settings = Settings(
            state_dir=tmp_path / f"state{len(servers)}",
            hub=HubSettings(host="127.0.0.1", port=0, **hub),
        )
        if frozen:
            with mock.patch("agent.hub.login.monotonic", autospec=True, return_value=FROZEN):
                server = HubServer(settings)
        else:
            server = HubServer(settings)
        servers.append(server)
        await server.start()
        return Hub(server)

    yield start
    for server in servers:
        await server.stop()


async def login(
    http: httpx.AsyncClient, name: str, password: str, *, client: str | None = None
) -> httpx.Response:
    """POST /api/login; ``client`` is sent as X-Forwarded-For (trusted from loopback)."""
    headers = {"X-Forwarded-For": client} if client else {}
    return await http.post("/api/login", json={"name": name, "password": password}, headers=headers)


def assert_rate_limited(response: httpx.Response, status: int = 429) -> int:
    """The refusal's shape; its Retry-After in seconds."""
    assert response.status_code == status, response.text
    assert response.json()["code"] == Codes.RATE_LIMITED
    assert "try again in" in response.json()["message"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


async def test_wrong_passwords_lock_the_account_even_for_the_right_one(make_hub: HubMaker) -> None:
    hub = await make_hub()
    assert hub.server.login_guard.shared is None  # a single hub counts on its own
    hub.server.accounts.add("alice", PASSWORD)
    async with hub.http() as http:
        for attempt in range(NAME_POLICY.free_failures + 1):
            wrong = await login(http, "alice", f"guess number {attempt}")
            assert wrong.status_code == 401, attempt
        locked = await login(http, "alice", "one more guess")
        assert assert_rate_limited(locked) == 1
        assert assert_rate_limited(await login(http, "alice", PASSWORD)) == 1
        # From anywhere: the lock is on the account, not on this client.
        assert_rate_limited(await login(http, "alice", PASSWORD, client="198.51.100.7"))
        # Another account from the same client is not locked.
        assert (await login(http, "bob", "a wrong password")).status_code == 401


async def test_one_client_guessing_many_names_is_locked_out(make_hub: HubMaker) -> None:
    hub = await make_hub()
    hub.server.accounts.add("alice", PASSWORD)
    async with hub.http() as http:
        for i in range(ADDRESS_POLICY.free_failures + 1):
            assert (await login(http, f"name{i}", "a wrong password")).status_code == 401
        assert_rate_limited(await login(http, "yet-another-name", "a wrong password"))
        assert_rate_limited(await login(http, "alice", PASSWORD))
        # Another client (named by the trusted loopback proxy) is not locked out.
        assert (await login(http, "alice", PASSWORD, client="198.51.100.7")).status_code == 200


async def test_without_trusted_proxies_a_client_cannot_pick_its_address(
    make_hub: HubMaker,
) -> None:
    hub = await make_hub(trusted_proxies=[])
    async with hub.http() as http:
        for i in range(ADDRESS_POLICY.free_failures + 1):
            response = await login(http, f"name{i}", "a wrong password", client=f"192.0.2.{i}")
            assert response.status_code == 401
        assert_rate_limited(await login(http, "other", "a wrong password", client="192.0.2.99"))


async def test_unknown_names_and_empty_or_wrong_passwords_get_the_same_401(
    make_hub: HubMaker,
) -> None:
    hub = await make_hub()
    hub.server.accounts.add("alice", PASSWORD)
    hub.server.accounts.add("cam", None)  # token-only account
    cases = [
        ("nosuchuser", ""),  # was a 500 with a traceback
        ("nosuchuser", "some password"),
        ("alice", ""),
        ("alice", "the wrong password"),
        ("cam", ""),
        ("", ""),
    ]
    async with hub.http() as http:
        answers = [await login(http, name, password) for name, password in cases]
    for response in answers:
        assert response.status_code == 401
        assert response.json() == {"code": Codes.UNAUTHORIZED, "message": WRONG_CREDENTIALS}
        assert response.headers["WWW-Authenticate"] == answers[0].headers["WWW-Authenticate"]
        assert response.headers["content-length"] == answers[0].headers["content-length"]


async def test_logins_beyond_the_kdf_queue_are_refused_at_once(make_hub: HubMaker) -> None:
    hub = await make_hub(login=HubLoginSettings(kdf_threads=1, kdf_queue=0))
    hub.server.accounts.add("alice", PASSWORD)
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=hub.server.http_url, timeout=TIMEOUT, limits=limits
    ) as http:
        answers = await asyncio.gather(
            *(login(http, f"user{i}", "a wrong password", client=f"10.1.0.{i}") for i in range(24))
        )
        statuses = [response.status_code for response in answers]
        assert set(statuses) <= {401, 503}, statuses
        assert 503 in statuses, statuses
        for response in answers:
            if response.status_code == 503:
                assert assert_rate_limited(response, 503) == 1
        # Nothing is left queued: the next login is checked.
        assert (await login(http, "alice", PASSWORD, client="10.2.0.1")).status_code == 200


async def test_logins_do_not_wait_for_the_shared_executor(make_hub: HubMaker) -> None:
    hub = await make_hub()
    hub.server.accounts.add("alice", PASSWORD)
    loop = asyncio.get_running_loop()
    shared = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(shared)
    release = threading.Event()
    blocked = loop.run_in_executor(None, release.wait, TIMEOUT)
    try:
        async with hub.http() as http:
            # The only thread of the shared executor is busy; the login has its own.
            response = await asyncio.wait_for(login(http, "alice", PASSWORD), TIMEOUT)
            assert response.status_code == 200
            assert not blocked.done()
    finally:
        release.set()
        await blocked


async def test_the_openapi_document_declares_the_refusals(make_hub: HubMaker) -> None:
    hub = await make_hub(frozen=False)
    async with hub.http() as http:
        document = (await http.get("/openapi.json")).json()
    answers = document["paths"]["/api/login"]["post"]["responses"]
    assert {"200", "401", "429", "503"} <= set(answers)
