"""Nothing lost: a real hub process, a real agent process and the loopback HTTPS push
service (which checks VAPID and decrypts), through crashes and outages of each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from linkproxy import LinkProxy
from push.loopback import LoopbackPushService, TlsFiles, once_each

from agent.client import RealtimeClient, RealtimeMessage
from agent.hub.accounts import Role

from .processes import (
    AgentProcess,
    HubProcess,
    agent_config,
    equals,
    hub_config,
    make_accounts,
    poll,
)

WAIT = 30.0


class Site:
    """A hub, a doorbell agent, alice with a phone subscribed, and the push service."""

    def __init__(self, tmp_path: Path, tls: TlsFiles, service: LoopbackPushService) -> None:
        self.tmp_path = tmp_path
        self.tls = tls
        self.service = service
        hub_state = tmp_path / "hub"
        self.accounts = make_accounts(hub_state, ("door", Role.DEVICE), ("alice", Role.USER))
        self.hub = HubProcess(tmp_path, tmp_path / "hub.toml", hub_state)
        self.agent: AgentProcess | None = None
        self.proxy: LinkProxy | None = None

    async def start(self, *, retry_cap: float = 0.5, via_proxy: bool = False) -> AgentProcess:
        hub_config(self.hub.config, ca_file=self.tls.cert, retry_cap=retry_cap)
        await self.hub.start()
        async with httpx.AsyncClient(base_url=self.hub.http_url, timeout=10) as http:
            alice = {"Authorization": f"Bearer {self.accounts['alice'].token}"}
            key = await http.get("/api/push/vapid-public-key", headers=alice)
            self.service.vapid_public_key = key.json()["VAPIDPublicKey"]
            phone = self.service.subscribe("alice-phone")
            assert (await http.post("/api/push/subscribe", json=phone, headers=alice)).is_success
        port = self.hub.port
        if via_proxy:
            self.proxy = LinkProxy(self.hub.port)
            await self.proxy.start()
            port = self.proxy.port
        config = agent_config(
            self.tmp_path / "agent.toml",
            state_dir=self.tmp_path / "agent",
            hub_url=f"ws://127.0.0.1:{port}/ws",
            token=self.accounts["door"].token,
        )
        self.agent = AgentProcess(self.tmp_path, config, self.tmp_path / "agent")
        await self.agent.start()
        return self.agent

    async def close(self) -> None:
        if self.agent is not None and self.agent.running:
            assert await self.agent.stop() == 0
        if self.hub.running:
            assert await self.hub.stop() == 0
        if self.proxy is not None:
            await self.proxy.stop()


@pytest.fixture
async def site(tmp_path: Path, tls: TlsFiles, service: LoopbackPushService) -> AsyncIterator[Site]:
    made = Site(tmp_path, tls, service)
    yield made
    await made.close()


class Inbox:
    """Every message a client got, kept in order; a test awaits the ones it expects."""

    def __init__(self) -> None:
        self.messages: list[RealtimeMessage] = []
        self._changed = asyncio.Event()

    def __call__(self, message: RealtimeMessage) -> None:
        self.messages.append(message)
        self._changed.set()

    async def wait(self, found: Callable[[list[RealtimeMessage]], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not found(self.messages):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not within {WAIT:g} s: {what}") from None

    def events(self) -> list[dict[str, Any]]:
        return [
            m.message
            for m in self.messages
            if m.type == "message"
            and isinstance(m.message, dict)
            and m.message.get("type") == "event"
        ]

    def joined(self, me: str) -> int:
        return sum(
            1
            for m in self.messages
            if m.type == "notice" and m.code == "USER_JOINED" and m.sender == me
        )


async def test_hub_killed_while_the_push_service_is_down_then_both_back_delivers_10_once(
    site: Site, service: LoopbackPushService
) -> None:
    agent = await site.start()
    await service.stop()  # the push service is down
    for _ in range(10):
        await agent.trigger("ring")
    await poll(lambda: equals(agent.outbox_depth(), 0), "the hub took every alert")
    assert await site.hub.metric("edge_hub_push_queue_depth") == 10
    await site.hub.kill()  # with 10 accepted and undelivered alerts
    await service.start()
    await site.hub.start()
    received = await service.wait_for(10, within=WAIT)
    await poll(lambda: equals(site.hub.metric("edge_hub_push_queue_depth"), 0), "drained")
    assert len(once_each(service.received)) == 10
    assert {r.headers["Urgency"] for r in received} == {"high"}


async def test_a_60_second_push_outage_delivers_all_10(
    site: Site, service: LoopbackPushService
) -> None:
    agent = await site.start(retry_cap=2.0)
    await service.stop()
    down_at = time.monotonic()
    for _ in range(10):
        await agent.trigger("ring")
    await poll(lambda: equals(agent.outbox_depth(), 0), "the hub took every alert")
    # The outage itself: a minute of real time in which every attempt is refused.
    await asyncio.sleep(60 - (time.monotonic() - down_at))
    assert await site.hub.metric("edge_hub_push_queue_depth") == 10
    assert await site.hub.metric("edge_hub_push_queue_oldest_age_seconds") >= 55
    assert await site.hub.metric("edge_hub_push_given_up_total") == 0
    await service.start()
    await service.wait_for(10, within=WAIT)
    assert len(once_each(service.received)) == 10


async def test_an_agent_killed_1_ms_after_fired_keeps_every_alert(
    site: Site, service: LoopbackPushService
) -> None:
    agent = await site.start()
    for _round in range(4):
        if not agent.running:
            await agent.start()
        # Five rings at once; the agent dies 1 ms after the last one was answered.
        answers = await asyncio.gather(*(agent.trigger("ring") for _ in range(5)))
        await asyncio.sleep(0.001)
        await agent.kill()
        assert len(answers) == 5
    await agent.start()
    await service.wait_for(20, within=WAIT)
    await poll(lambda: equals(agent.outbox_depth(), 0), "the outbox emptied")
    assert len(once_each(service.received)) == 20


async def test_hub_killed_and_restarted_during_100_triggers_loses_and_repeats_nothing(
    site: Site, service: LoopbackPushService
) -> None:
    agent = await site.start(via_proxy=True)
    assert site.proxy is not None
    alice = site.accounts["alice"].user_id
    watcher = RealtimeClient(site.hub.ws_url, token=site.accounts["alice"].token)
    inbox = Inbox()
    await watcher.connect_realtime(inbox)
    await watcher.join_realtime("home")
    await inbox.wait(lambda _m: inbox.joined(alice) == 1, "alice joined")
    try:
        for n in range(100):
            await agent.trigger("ring")
            if n == 30:
                await _kill_hub_between_deliveries(site, service)
            if n == 60:
                await site.hub.start()  # same port, same state
                await inbox.wait(lambda _m: inbox.joined(alice) == 2, "alice back")
                service.outage_status = None
                site.proxy.restore()  # the agent may come back now that alice is there
        received = await service.wait_for(100, within=WAIT)
        await inbox.wait(lambda _m: len(inbox.events()) >= 100, "100 posts")
        posts = inbox.events()
    finally:
        await watcher.close_realtime()
    ids = once_each(received)
    times = [r.payload["time"] for r in received]
    assert times == sorted(times), "alerts out of order"
    assert len({p["id"] for p in posts}) == 100, "a post was lost or came twice"
    assert [p["time"] for p in posts] == sorted(p["time"] for p in posts), "posts out of order"
    assert len(ids) == 100


async def _kill_hub_between_deliveries(site: Site, service: LoopbackPushService) -> None:
    """SIGKILL the hub at a moment no push is between the service's 201 and the hub's
    commit (the one window in which a push can be sent twice, as documented)."""
    assert site.proxy is not None
    service.outage_status = 503  # the service fails every push from now on

    async def settled() -> bool:
        sent = await site.hub.metric("edge_hub_push_sent_total")
        return sent == len(service.received)

    await poll(settled, "every accepted push recorded by the hub")
    site.proxy.cut()  # the agent stays away until alice is back (see the caller)
    await site.hub.kill()
