#!/usr/bin/env python3
"""Recovery benchmark: how fast devices are back, and their alerts out, after a hub outage.

Everything is real and on 127.0.0.1: a hub process (``edge-agent hub``) restarted on the
same port and state directory, realtime clients in this process, a doorbell agent process
(``edge-agent run``) and the HTTPS push service of the tests, which checks VAPID and
decrypts (tests/push/loopback.py).

Figures, each beside the previous behaviour measured in the same run (the fixed backoff
the client used before: initial 0.5 s, factor 2, cap 30 s, reset after 10 s connected;
and an alert outbox that waits out its own back-off, 1 s doubling to 60 s):

1. rejoin time: from the hub serving again (its "listening" line) to each client's
   ``success`` (reconnected, groups rejoined), median and max over the clients, for
   outages of 1, 10 and 60 s (``--quick``: 1 and 3 s), hub stopped with SIGTERM (it closes
   with 1012) and with SIGKILL;
2. 100 alerts queued in the agent's outbox during an outage: from the agent's rejoin to
   the 100th alert at the push service;
3. 1,000 clients (one account each) reconnecting to a restarted hub: time until all have
   rejoined, and how many connections the hub refused.

Aims (issue 9): rejoin median <= 1 s and max <= 2 s; 100 alerts within 1 s of the rejoin;
1,000 clients all back within 5 s, none refused.

    .venv/bin/python scripts/bench_recovery.py           # ~6 minutes
    .venv/bin/python scripts/bench_recovery.py --quick   # ~2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from push.loopback import LoopbackPushService, Received, TlsFiles  # noqa: E402
from recovery.processes import (  # noqa: E402
    AgentProcess,
    HubProcess,
    agent_config,
    hub_config,
)

from agent import retry  # noqa: E402
from agent.client import RealtimeClient, RealtimeMessage  # noqa: E402
from agent.hub.accounts import AccountStore, Role  # noqa: E402
from agent.hub.tokens import TokenIssuer  # noqa: E402
from agent.push.outbox import Outbox  # noqa: E402
from agent.push.settings import OutboxSettings  # noqa: E402

WAIT = 120.0
REJOIN_CLIENTS = 20
ALERTS = 100
FLEET = 1000
_REJOINED = re.compile(r"hub link (retrying|connecting) -> connected")


def old_backoff() -> Iterator[float]:
    """What clients did before: capped exponential backoff with full jitter."""
    return retry.backoff(0.5, 2.0, 30.0)


@dataclass
class Population:
    """Clients of one reconnect policy, and when each last reported ``success``."""

    label: str
    clients: list[RealtimeClient] = field(default_factory=list)
    success: dict[int, list[float]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def callback(self, index: int) -> Callable[[RealtimeMessage], None]:
        times = self.success.setdefault(index, [])

        def on_message(message: RealtimeMessage) -> None:
            if message.type == "success":
                times.append(time.monotonic())
                self.changed.set()

        return on_message

    def back_since(self, since: float) -> list[float]:
        """The first success after ``since`` of every client that has one."""
        return [min(t for t in ts if t > since) for ts in self.success.values() if ts[-1] > since]

    async def wait_all_back(self, since: float) -> list[float]:
        async with asyncio.timeout(WAIT):
            while len(self.back_since(since)) < len(self.clients):
                self.changed.clear()
                await self.changed.wait()
        return self.back_since(since)

    async def close(self) -> None:
        await asyncio.gather(*(c.close_realtime() for c in self.clients))


class Bench:
    """The hub process, the push service, the accounts; one measurement per method."""

    def __init__(self, workdir: Path, *, fleet: int) -> None:
        self.workdir = workdir
        self.fleet_size = fleet
        self.tls = TlsFiles.make(workdir)
        self.service = LoopbackPushService(self.tls)
        self.state = workdir / "hub"
        self.hub = HubProcess(
            workdir, hub_config(workdir / "hub.toml", ca_file=self.tls.cert), self.state
        )
        self.tokens: dict[str, str] = {}

    async def setup(self) -> None:
        await asyncio.to_thread(self._accounts)
        await self.service.start()
        await self.hub.start()
        for user, phone in (("alice", "alice-phone"), ("bob", "bob-phone")):
            await self._subscribe(user, phone)

    async def close(self) -> None:
        if self.hub.running:
            await self.hub.stop()
        await self.service.stop()

    async def restart_hub(self, how: str, outage: float) -> float:
        """Stop the hub (``graceful``: SIGTERM, ``kill``: SIGKILL), wait, start it; when it
        was serving again."""
        await (self.hub.stop() if how == "graceful" else self.hub.kill())
        await asyncio.sleep(outage)
        await self.hub.start()
        return time.monotonic()

    async def population(self, count: int, prefix: str, *, old: bool) -> Population:
        """``count`` connected clients with the new schedule, or with the old backoff."""
        tag = "old" if old else "new"
        population = Population("fixed backoff (old)" if old else "outage-aware (new)")
        for index in range(count):
            name = f"{prefix}-{tag}-{index}"
            client = RealtimeClient(
                self.hub.ws_url, token=self.tokens[name], backoff=old_backoff if old else None
            )
            population.clients.append(client)
            await client.connect_realtime(population.callback(index))
            await client.join_realtime(name)
        return population

    async def agent(self, name: str) -> AgentProcess:
        config = agent_config(
            self.workdir / f"{name}.toml",
            state_dir=self.workdir / name,
            hub_url=self.hub.ws_url,
            token=self.tokens["door"],
        )
        agent = AgentProcess(self.workdir, config, self.workdir / name)
        await agent.start()
        return agent

    def _accounts(self) -> None:
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = AccountStore(self.state / "accounts.db")
        issuer = TokenIssuer.from_state_dir(self.state)
        names = [("door", Role.DEVICE), ("alice", Role.USER), ("bob", Role.USER)]
        names += [
            (f"r-{t}-{i}", Role.DEVICE) for t in ("new", "old") for i in range(REJOIN_CLIENTS)
        ]
        names += [
            (f"f-{t}-{i}", Role.DEVICE) for t in ("new", "old") for i in range(self.fleet_size)
        ]
        try:
            for name, role in names:
                # Each device its own group, as a fleet is: no fan-out among them.
                account = store.add(name, None, role, groups=["home", name])
                self.tokens[name] = issuer.issue(account, 24 * 3600)
        finally:
            store.close()

    async def _subscribe(self, user: str, phone: str) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        async with httpx.AsyncClient(base_url=self.hub.http_url, timeout=10) as http:
            key = await http.get("/api/push/vapid-public-key", headers=headers)
            self.service.vapid_public_key = key.json()["VAPIDPublicKey"]
            body = self.service.subscribe(phone)
            (await http.post("/api/push/subscribe", json=body, headers=headers)).raise_for_status()


# -- 1. rejoin times ---------------------------------------------------------------------------


async def rejoin_rounds(bench: Bench, outages: list[float]) -> list[dict[str, Any]]:
    """Both policies side by side, through the same restarts."""
    new = await bench.population(REJOIN_CLIENTS, "r", old=False)
    old = await bench.population(REJOIN_CLIENTS, "r", old=True)
    rows = []
    try:
        for how in ("graceful", "kill"):
            for outage in outages:
                # Both schedules start from a settled connection (the old one resets after
                # 10 s connected).
                await asyncio.sleep(11)
                down = time.monotonic()
                serving = await bench.restart_hub(how, outage)
                for population in (new, old):
                    back = await population.wait_all_back(down)
                    delays = [t - serving for t in back]
                    rows.append(
                        {
                            "restart": how,
                            "outage": outage,
                            "policy": population.label,
                            "median": statistics.median(delays),
                            "max": max(delays),
                        }
                    )
                print(f"  {how} restart after {outage:g} s: measured", file=sys.stderr)
    finally:
        await new.close()
        await old.close()
    return rows


# -- 2. queued alerts drained ----------------------------------------------------------------


async def drain_round(bench: Bench, outage: float) -> dict[str, float]:
    """100 alerts fired during an outage: the agent's outbox (kicked when the link is back),
    then, through a second outage, an outbox that waits out its back-off (the old way)."""
    agent = await bench.agent("door")
    try:
        await bench.hub.kill()
        before = len(bench.service.received)
        for _ in range(ALERTS):
            await agent.trigger("ring")
        await asyncio.sleep(outage)
        mark = len(agent.log)
        await bench.hub.start()
        serving = time.monotonic()
        await agent.wait_log(_REJOINED, after=mark)
        rejoined = time.monotonic()
        new_last = (await _arrivals(bench.service, before, ALERTS))[-1].at
    finally:
        await agent.stop()
    old_client = RealtimeClient(bench.hub.ws_url, token=bench.tokens["door"], backoff=old_backoff)
    await old_client.connect_realtime(lambda _m: None)
    old_box = Outbox(
        bench.workdir / "old-outbox.db",
        deliver=old_client.push_alert,
        settings=OutboxSettings(retry_initial_seconds=1.0, retry_cap_seconds=60.0),
    )
    await old_box.start()
    try:
        await bench.hub.kill()
        before = len(bench.service.received)
        for n in range(ALERTS):
            await old_box.add(_old_alert(n))
        await asyncio.sleep(outage)
        await bench.hub.start()
        old_serving = time.monotonic()
        old_last = (await _arrivals(bench.service, before, ALERTS))[-1].at
    finally:
        await old_box.aclose()
        await old_client.close_realtime()
    return {
        "agent rejoined after serving": rejoined - serving,
        "new: 100th alert after the rejoin": new_last - rejoined,
        "new: 100th alert after the hub served": new_last - serving,
        "old: 100th alert after the hub served": old_last - old_serving,
    }


def _old_alert(n: int) -> dict[str, Any]:
    return {"title": f"old {n}", "body": "", "users": ["bob"], "ttl_seconds": 3600}


async def _arrivals(service: LoopbackPushService, before: int, count: int) -> list[Received]:
    received = await service.wait_for(before + count, within=WAIT)
    return received[before:]


# -- 3. a fleet of 1,000 -----------------------------------------------------------------------


async def fleet_rounds(bench: Bench) -> list[dict[str, Any]]:
    """One policy at a time (a fleet of each at once would double the hub's load)."""
    rows = []
    for old in (False, True):
        fleet = await bench.population(bench.fleet_size, "f", old=old)
        try:
            for how in ("graceful", "kill"):
                await asyncio.sleep(11)
                refused_before = await _refused(bench)
                down = time.monotonic()
                serving = await bench.restart_hub(how, 1.0)
                back = await fleet.wait_all_back(down)
                rows.append(
                    {
                        "restart": how,
                        "policy": fleet.label,
                        "all back": max(back) - serving,
                        "median": statistics.median(t - serving for t in back),
                        "refused": await _refused(bench) - refused_before,
                    }
                )
                print(f"  fleet, {fleet.label}, {how} restart: measured", file=sys.stderr)
        finally:
            await fleet.close()
    return rows


async def _refused(bench: Bench) -> float:
    async with httpx.AsyncClient(base_url=bench.hub.http_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    return sum(float(v) for v in re.findall(r"^edge_hub_refused_total\{[^}]*\} (\S+)$", text, re.M))


# -- report ------------------------------------------------------------------------------------


def report(
    rejoin: list[dict[str, Any]],
    drain: dict[str, float],
    fleet: list[dict[str, Any]],
    fleet_size: int,
) -> None:
    print(f"\n1. Rejoin after the hub serves again ({REJOIN_CLIENTS} clients per policy)")
    print(f"{'restart':<9} {'outage':>7} {'policy':<22} {'median':>8} {'max':>8}")
    for row in rejoin:
        print(
            f"{row['restart']:<9} {row['outage']:>6g}s {row['policy']:<22} "
            f"{row['median']:>7.2f}s {row['max']:>7.2f}s"
        )
    print(f"\n2. {ALERTS} alerts queued through an outage")
    for what, seconds in drain.items():
        print(f"{what:<42} {seconds:>7.2f}s")
    print(f"\n3. {fleet_size} clients reconnecting to a restarted hub (1 s outage)")
    print(f"{'restart':<9} {'policy':<22} {'all back':>9} {'median':>8} {'refused':>8}")
    for row in fleet:
        print(
            f"{row['restart']:<9} {row['policy']:<22} {row['all back']:>8.2f}s "
            f"{row['median']:>7.2f}s {row['refused']:>8g}"
        )


async def main(quick: bool, fleet: int, parts: set[str]) -> None:
    outages = [1.0, 3.0] if quick else [1.0, 10.0, 60.0]
    rejoin: list[dict[str, Any]] = []
    drain: dict[str, float] = {}
    fleet_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), fleet=fleet)
        await bench.setup()
        try:
            if "rejoin" in parts:
                print("rejoin times...", file=sys.stderr)
                rejoin = await rejoin_rounds(bench, outages)
            if "drain" in parts:
                print("queued alerts...", file=sys.stderr)
                drain = await drain_round(bench, outages[-1] if quick else 10.0)
            if "fleet" in parts:
                print(f"{fleet} clients...", file=sys.stderr)
                fleet_rows = await fleet_rounds(bench)
        finally:
            await bench.close()
    report(rejoin, drain, fleet_rows, fleet)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="outages of 1 and 3 s only")
    parser.add_argument("--fleet", type=int, default=FLEET, help="clients in part 3")
    parser.add_argument(
        "--parts", default="rejoin,drain,fleet", help="which parts to run (comma-separated)"
    )
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(options.quick, options.fleet, set(options.parts.split(","))))
