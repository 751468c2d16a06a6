#!/usr/bin/env python3
"""Cluster benchmark: one hub node (memory backplane, SQLite) against three hub nodes on
Redis and PostgreSQL (as a cluster must run), the same members and workload, measured in the
same run. Redis and PostgreSQL are started here on loopback ports in a temporary directory
(PostgreSQL by tests/postgres.py, Debian's binaries) and removed after.

Fan-out: M members of one group; in the cluster they are spread evenly over the three nodes
and the sender is on the first. The workloads are ``bench_hub.py``'s, from ``_fanout.py``
(sequential messages, then bursts), and the single node and the cluster take turns message
by message and burst by burst, so a load from other processes weighs on both alike. Figures
per round: deliveries per second, p50/p99 latency (send -> each member received), CPU time
per delivery (the cluster's is its three nodes plus redis-server; PostgreSQL has no part in
routing a message, only in accounts, and is not counted), and for the cluster the Redis
commands per delivery (``INFO commandstats``: EVALSHA calls, the round trips the nodes make,
and every command including those the scripts run).

Memory: N idle connections (upgraded, not in a group) to a fresh single node, and N spread
over three fresh nodes: each node's RSS after ``gc.collect()`` minus its RSS before the
first connection, per connection it holds; and Redis's ``used_memory`` per connection.

The aims on this 2-core machine (three nodes and Redis share those cores, so this measures
the cluster's overhead, not its scale): cluster >= 0.6x the single node's deliveries per
second with p99 <= 50 ms, and <= 20 KB per idle connection on every node.

    .venv/bin/python scripts/bench_cluster.py --quick     # about 30 s
    .venv/bin/python scripts/bench_cluster.py             # 1,000 members, 3,000 conns, ~2 min
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _bench_ws import BenchError, RawClient, Tally, abort_all, open_clients  # noqa: E402
from _fanout import (  # noqa: E402
    ROUND_HEAD,
    WARM_MESSAGES,
    Round,
    Side,
    fanout_parser,
    fill_sizes,
    idle_baseline,
    join_group,
    max_outbound,
    measure,
    process_cpu_seconds,
    raise_nofile,
    sequential,
    settled_rss,
    spread,
)
from bench_hub import Server, run_benchmark  # noqa: E402
from postgres import PostgresServer, postgres_server  # noqa: E402

NODES: Final = 3
FULL: Final = {"members": 1000, "messages": 200, "burst": 50, "bursts": 4, "repeat": 3}
QUICK: Final = {"members": 300, "messages": 50, "burst": 25, "bursts": 2, "repeat": 1}
FULL_CONNS: Final = 3000
QUICK_CONNS: Final = 1500
RATIO_AIM: Final = 0.6
P99_AIM_MS: Final = 50.0
MEMORY_AIM_KB: Final = 20.0
REDIS_START_SECONDS: Final = 20.0


class Redis:
    """redis-server on a free loopback port in a temporary directory, no persistence."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is missing (scripts/setup --test installs it)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(directory),
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def ready(self) -> None:
        deadline = time.monotonic() + REDIS_START_SECONDS
        while not (await self.command("PING")).startswith("+PONG"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError("redis-server did not start")
            await asyncio.sleep(0.05)

    async def command(self, *args: str) -> str:
        """One command's whole reply, as text (enough for PING, INFO and FLUSHALL)."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return ""
        try:
            writer.write((" ".join(args) + "\r\n").encode())
            head = (await reader.readline()).decode()
            if not head.startswith("$"):
                return head
            body = await reader.readexactly(int(head[1:]) + 2)
            return body.decode()
        finally:
            writer.close()

    async def info(self, section: str) -> dict[str, str]:
        lines = (await self.command("INFO", section)).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    async def calls(self) -> tuple[int, int]:
        """(EVALSHA calls, every command's calls) so far."""
        stats = await self.info("commandstats")
        counts = {k: int(v.split(",")[0].split("=")[1]) for k, v in stats.items()}
        return counts.get("cmdstat_evalsha", 0), sum(counts.values())

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)


@contextlib.contextmanager
def start_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL on a loopback port (tests/postgres.py), removed after."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(postgres_server())
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            raise BenchError(f"PostgreSQL did not start: {exc}") from exc
        yield server


def postgres_version(server: PostgresServer) -> str:
    import psycopg

    with psycopg.connect(server.url()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


class Cluster:
    """Three hub nodes and their Redis, seen as one server by the measuring code."""

    kind = "cluster"

    def __init__(self, nodes: list[Server], redis: Redis) -> None:
        self.nodes = nodes
        self.redis = redis

    def cpu_seconds(self) -> float:
        return sum(node.cpu_seconds() for node in self.nodes) + self.redis.cpu_seconds()

    def alive(self) -> bool:
        return all(node.alive() for node in self.nodes) and self.redis.alive()


async def start_cluster(redis: Redis, database: str, max_outbound: int) -> list[Server]:
    """Three nodes sharing ``redis`` and ``database`` (the first makes the account), each
    with a state directory of its own."""
    extra = ("--backplane", redis.url, "--database", database)
    first = await Server.start("hub", max_outbound, *extra)
    rest = [await Server.start("hub", max_outbound, *extra) for _ in range(NODES - 1)]
    return [first, *rest]


@dataclass
class RedisCost:
    evalsha: int
    commands: int
    deliveries: int


async def bench_fanout(
    args: argparse.Namespace, redis: Redis, postgres: PostgresServer
) -> tuple[list[tuple[Round, Round]], RedisCost]:
    print(
        f"\nFan-out: {args.members:,} members of one group (on the cluster, spread over "
        f"{NODES} nodes), {args.messages} sequential messages and {args.bursts} bursts of "
        f"{args.burst} per side per round, {args.repeat} round(s)"
    )
    outbound = max_outbound(args.burst, args.content)
    servers: list[Server] = []
    sides: list[Side] = []
    try:
        single = await Server.start("hub", outbound)
        servers.append(single)
        sides.append(await join_group("single", single, [single], args.members, args.content))
        nodes = await start_cluster(redis, postgres.database(), outbound)
        servers += nodes
        cluster = Cluster(nodes, redis)
        sides.append(await join_group("cluster", cluster, nodes, args.members, args.content))
        await sequential(sides, WARM_MESSAGES)  # not reported
        before = await redis.calls()
        print(ROUND_HEAD)
        rounds = [await measure(n, sides, args) for n in range(1, args.repeat + 1)]
        after = await redis.calls()
        per_round = args.members * (args.messages + args.burst * args.bursts)
        cost = RedisCost(after[0] - before[0], after[1] - before[1], per_round * args.repeat)
        return rounds, cost
    finally:
        for side in sides:
            abort_all(side.clients)
        for server in servers:
            await server.stop()


@dataclass
class MemoryFigures:
    single_kb: float
    node_kb: list[float]
    redis_bytes: float


async def idle_kb(nodes: list[Server], total: int) -> list[float]:
    """Each node's RSS growth per idle connection it holds, ``total`` spread over them."""
    tally = Tally("memory")
    base = await idle_baseline(nodes, tally)
    clients: list[RawClient] = []
    try:
        counts = spread(total, len(nodes))
        for node, count in zip(nodes, counts, strict=True):
            clients += await open_clients(node.port, nodes[0].path, count, tally)
        rss = await settled_rss(nodes, counts)
        if tally.error is not None:
            raise tally.error
        return [(r - b) / count for r, b, count in zip(rss, base, counts, strict=True)]
    finally:
        abort_all(clients)


async def bench_memory(total: int, redis: Redis, postgres: PostgresServer) -> MemoryFigures:
    single = await Server.start("hub", 1 << 20)
    try:
        [single_kb] = await idle_kb([single], total)
    finally:
        await single.stop()
    await redis.command("FLUSHALL")
    nodes = await start_cluster(redis, postgres.database(), 1 << 20)
    try:
        used = int((await redis.info("memory"))["used_memory"])
        node_kb = await idle_kb(nodes, total)
        redis_bytes = (int((await redis.info("memory"))["used_memory"]) - used) / total
    finally:
        for node in nodes:
            await node.stop()
    return MemoryFigures(single_kb, node_kb, redis_bytes)


def print_summary(
    rounds: Sequence[tuple[Round, Round]], cost: RedisCost | None, memory: MemoryFigures | None
) -> None:
    print("\nSummary")
    if rounds:
        for label, rate in (("sequential", "seq_rate"), ("burst", "burst_rate")):
            ratios = [getattr(c, rate) / getattr(s, rate) for s, c in rounds]
            print(
                f"  cluster/single deliveries per second, {label}: median "
                f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        p99 = statistics.median(c.p99_ms for _, c in rounds)
        ratio = statistics.median(c.seq_rate / s.seq_rate for s, c in rounds)
        met = ratio >= RATIO_AIM and p99 <= P99_AIM_MS
        print(
            f"  aim: cluster >= {RATIO_AIM}x single at p99 <= {P99_AIM_MS:.0f} ms: "
            f"{'met' if met else 'NOT met'} (sequential {ratio:.2f}x, cluster p99 {p99:.2f} ms)"
        )
        for name, index in (("single", 0), ("cluster", 1)):
            p50 = statistics.median(r[index].p50_ms for r in rounds)
            p99 = statistics.median(r[index].p99_ms for r in rounds)
            seq_cpu = statistics.median(r[index].seq_cpu_us for r in rounds)
            burst_cpu = statistics.median(r[index].burst_cpu_us for r in rounds)
            print(
                f"  {name:<7} latency p50 {p50:.2f} ms, p99 {p99:.2f} ms; CPU per delivery "
                f"{seq_cpu:.1f} us sequential, {burst_cpu:.1f} us burst"
            )
    if cost is not None and cost.deliveries:
        print(
            f"  Redis per delivery: {cost.evalsha / cost.deliveries:.4f} EVALSHA (round "
            f"trips), {cost.commands / cost.deliveries:.4f} commands in all "
            f"({cost.evalsha:,} and {cost.commands:,} for {cost.deliveries:,} deliveries)"
        )
    if memory is not None:
        worst = max(memory.node_kb)
        verdict = "meets the aim" if worst <= MEMORY_AIM_KB else "ABOVE the aim"
        print(
            f"  idle memory per connection: single node {memory.single_kb:.1f} KB; cluster "
            f"nodes {', '.join(f'{kb:.1f}' for kb in memory.node_kb)} KB (aim <= "
            f"{MEMORY_AIM_KB:.0f} KB: {verdict}); Redis {memory.redis_bytes:.0f} B"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = fanout_parser(__doc__, FULL)
    parser.add_argument("--conns", type=int, help="idle connections for memory (3000)")
    parser.add_argument("--content", type=int, default=100, help="broadcast content bytes")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    args = parser.parse_args(argv)
    fill_sizes(args, QUICK if args.quick else FULL)
    if args.conns is None:
        args.conns = QUICK_CONNS if args.quick else FULL_CONNS
    if args.members < NODES or min(args.messages, args.burst, args.bursts, args.repeat) < 1:
        parser.error(f"--members must be >= {NODES}; the other sizes >= 1")
    return args


async def run(args: argparse.Namespace) -> None:
    # Both sides' members are sockets of this process (2 x members), with as many again spare.
    fanout = 4 * args.members if args.only != "memory" else 0
    nofile = raise_nofile(max(fanout, args.conns if args.only != "fanout" else 0))
    print(
        f"edge-agent cluster benchmark: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {platform.python_version()}, "
        f"uvicorn {version('uvicorn')}, redis-py {version('redis')}, open files {nofile}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, start_postgres() as pg:
        redis = Redis(Path(tmp))
        try:
            await redis.ready()
            print(
                f"redis-server {(await redis.info('server')).get('redis_version', '?')}, "
                f"PostgreSQL {postgres_version(pg)} (the cluster's records)"
            )
            rounds, cost = ([], None)
            if args.only != "memory":
                rounds, cost = await bench_fanout(args, redis, pg)
            memory = None
            if args.only != "fanout":
                print(f"\nMemory: {args.conns:,} idle connections (cluster: spread over {NODES})")
                memory = await bench_memory(args.conns, redis, pg)
            print_summary(rounds, cost, memory)
        finally:
            redis.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("bench_cluster", run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
