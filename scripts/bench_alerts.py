#!/usr/bin/env python3
"""Alert latency benchmark: event fired -> group member has it, and -> push service has it.

Everything is real and on 127.0.0.1: a hub (HubServer, port 0) with web push, two realtime
clients (the device and a group member), the events engine, the durable outbox (SQLite,
synchronous=FULL) and an HTTPS push service that checks the VAPID JWT and decrypts every
message (tests/push/loopback.py). Events fire one at a time; each latency is measured
from ``engine.trigger()`` to the arrival.

Paths, median and p99 over N events each (aims: group <= 20 ms, push <= 100 ms):

- event -> group member: engine post action -> post_realtime -> hub -> member callback
- event -> push service: engine push action -> outbox (fsync) -> hub /api/push/send ->
  encrypt + VAPID -> HTTPS POST to the push service

Baselines measured in the same run:

- post_realtime -> member callback, without the engine
- push_notification -> push service, without the engine and outbox (the hub's part)
- one HTTPS POST of an encrypted message straight to the push service (no hub)

    .venv/bin/python scripts/bench_alerts.py              # 200 events per path
    .venv/bin/python scripts/bench_alerts.py --events 500
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from push.loopback import LoopbackPushService, TlsFiles  # noqa: E402

from agent.client import RealtimeClient, RealtimeMessage  # noqa: E402
from agent.config import HubLimits, HubSettings, Settings  # noqa: E402
from agent.events import ActionHandlers, EventEngine, EventRule  # noqa: E402
from agent.hub import app as hub_app  # noqa: E402
from agent.hub.accounts import Role  # noqa: E402
from agent.hub.push_api import add_push_routes, has_push_routes  # noqa: E402
from agent.hub.server import HubServer  # noqa: E402
from agent.push.message import PushMessage  # noqa: E402
from agent.push.outbox import OUTBOX_FILE, Outbox  # noqa: E402
from agent.push.sender import WebPushSender, make_session  # noqa: E402
from agent.push.service import PushService  # noqa: E402
from agent.push.settings import OutboxSettings, PushSettings  # noqa: E402
from agent.push.subscriptions import Subscription  # noqa: E402
from agent.push.vapid import VapidSigner  # noqa: E402

GROUP = "devices"
TIMEOUT = 10.0


class Stack:
    """Hub, push service, clients, engine and outbox, started on loopback."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tls = TlsFiles.make(workdir)
        self.service = LoopbackPushService(self.tls)
        self.settings = PushSettings(allow_private_endpoints=True, ca_file=self.tls.cert)
        self.arrivals: asyncio.Queue[float] = asyncio.Queue()
        self.clients: list[Any] = []

    async def start(self) -> None:
        await self.service.start()
        self.hub, self.push = await _start_hub(self.workdir / "hub", self.settings)
        self.service.vapid_public_key = self.push.public_key
        alice = self.hub.accounts.add("alice", None, Role.USER, groups=[GROUP])
        door = self.hub.accounts.add("door", None, Role.DEVICE, groups=[GROUP])
        root = self.hub.accounts.add("root", None, Role.ADMIN)
        self.member = await self._client(self.hub.tokens.issue(alice, 3600), self._on_member)
        self.device = await self._client(self.hub.tokens.issue(door, 3600), None)
        self.admin = RealtimeClient(self.hub.ws_url, token=self.hub.tokens.issue(root, 3600))
        self.clients.append(self.admin)
        self.subscription = self.service.subscribe("alice-phone")
        await self.member.subscribe_notification(self.subscription)
        self.outbox = Outbox(
            self.workdir / OUTBOX_FILE, deliver=self.device.push_alert, settings=OutboxSettings()
        )
        await self.outbox.start()
        self.engine = EventEngine(
            _rules(),
            device="door",
            groups=[GROUP],
            actions=ActionHandlers(post=self._post, push=self.outbox.push),
        )

    async def stop(self) -> None:
        await self.engine.aclose()
        await self.outbox.aclose()
        for client in self.clients:
            await client.close_realtime()
        await self.hub.stop()
        await self.push.aclose()
        await self.service.stop()

    async def _client(self, token: str, callback: Callable[[RealtimeMessage], None] | None) -> Any:
        client = RealtimeClient(self.hub.ws_url, token=token)
        self.clients.append(client)
        await client.connect_realtime(callback or (lambda message: None))
        await client.join_realtime(GROUP)
        return client

    def _on_member(self, message: RealtimeMessage) -> None:
        if message.type == "message" and isinstance(message.message, dict):
            self.arrivals.put_nowait(time.perf_counter())

    async def _post(self, group: str, payload: dict[str, Any]) -> None:
        await self.device.post_realtime(payload, group)


async def _start_hub(state_dir: Path, settings: PushSettings) -> tuple[HubServer, PushService]:
    extra: dict[str, Any] = {"push": settings} if "push" in Settings.model_fields else {}
    # Events fire back to back here, faster than the per-connection rate limit allows.
    limits = HubLimits(rate_burst=100_000, rate_per_second=100_000.0)
    hub_settings = HubSettings(host="127.0.0.1", port=0, limits=limits)
    server = HubServer(
        Settings(state_dir=state_dir, hub=hub_settings, **extra),
        static_dir=state_dir / "no-viewer",
    )
    push = getattr(server, "push", None)
    if push is None:
        push = PushService.from_state_dir(server.state_dir, settings, accounts=server.accounts)
    if not has_push_routes(server.app.api):
        add_push_routes(server.app.api, push, current_account=hub_app._current_account)
    await server.start()
    return server, push


def _rules() -> list[EventRule]:
    push = {"type": "push", "to": ["alice"], "title": "Ring", "body": "{name} at {ts}"}
    return [
        EventRule.model_validate(
            {"name": "post", "trigger": {"type": "manual"}, "actions": [{"type": "post"}]}
        ),
        EventRule.model_validate(
            {"name": "push", "trigger": {"type": "manual"}, "actions": [push]}
        ),
    ]


async def measure(
    n: int, fire: Callable[[], Awaitable[object] | object], arrived: Callable[[], Awaitable[float]]
) -> list[float]:
    """Latencies in ms of ``n`` sequential firings, each until its arrival."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        result = fire()
        if asyncio.iscoroutine(result):
            await result
        samples.append((await asyncio.wait_for(arrived(), TIMEOUT) - start) * 1000)
    return samples


async def run(events: int) -> list[tuple[str, list[float], float | None]]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        await stack.start()
        try:
            return await _run_paths(stack, events)
        finally:
            await stack.stop()


async def _run_paths(stack: Stack, events: int) -> list[tuple[str, list[float], float | None]]:
    service = stack.service

    # wait_for counts totals: read the count before firing, then wait for one more.
    async def next_push() -> float:
        await service.wait_for(pushed_before[0] + 1)
        pushed_before[0] += 1
        return time.perf_counter()

    pushed_before = [len(service.received)]
    results: list[tuple[str, list[float], float | None]] = []
    results.append(
        (
            "baseline: post_realtime -> member",
            await measure(
                events,
                lambda: stack.device.post_realtime({"n": 1}, GROUP),
                stack.arrivals.get,
            ),
            None,
        )
    )
    results.append(
        (
            "event -> group member",
            await measure(events, lambda: stack.engine.trigger("post"), stack.arrivals.get),
            20.0,
        )
    )
    results.append(("baseline: HTTPS POST -> push service", await _bare_posts(stack, events), None))
    pushed_before[0] = len(service.received)
    results.append(
        (
            "baseline: push_notification -> push service",
            await measure(
                events,
                lambda: stack.admin.push_notification({"title": "x", "body": "y"}),
                next_push,
            ),
            None,
        )
    )
    pushed_before[0] = len(service.received)
    results.append(
        (
            "event -> push service (outbox)",
            await measure(events, lambda: stack.engine.trigger("push"), next_push),
            100.0,
        )
    )
    return results


async def _bare_posts(stack: Stack, events: int) -> list[float]:
    service = stack.service
    sub = Subscription(
        stack.subscription["endpoint"],
        stack.subscription["keys"]["p256dh"],
        stack.subscription["keys"]["auth"],
    )
    async with make_session(stack.settings) as session:
        sender = WebPushSender(
            VapidSigner(stack.push.keys, "mailto:a@b.example"), session, timeout=5
        )
        message = PushMessage({"title": "bare", "body": ""}, ttl=60)
        samples = []
        for _ in range(events):
            before = len(service.received)
            start = time.perf_counter()
            await sender.send(sub, message, ttl=60)
            await service.wait_for(before + 1)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def report(results: list[tuple[str, list[float], float | None]]) -> None:
    print(f"{'path':46} {'n':>5} {'median ms':>10} {'p99 ms':>9}  aim")
    for name, samples, aim in results:
        median = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100, method="inclusive")[98]
        verdict = "" if aim is None else f"<= {aim:.0f} ms: {'ok' if p99 <= aim else 'MISSED'}"
        print(f"{name:46} {len(samples):5d} {median:10.2f} {p99:9.2f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200, help="events per path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report(asyncio.run(run(args.events)))


if __name__ == "__main__":
    main()
