#!/usr/bin/env python3
"""Hub benchmark: group fan-out against a bare ``websockets`` broadcast loop, and memory per
idle connection, both measured in the same run.

Fan-out: M members join one group; one of them broadcasts and every member, the sender
included, receives each message (M deliveries per message). Each round has two workloads:

- sequential: one message at a time, the next sent when every member has the previous
  one. The two servers take turns message by message (hub, bare, bare, hub, ...), so a
  load from other processes weighs on both alike. A server's rate is its deliveries over
  the sum of its turns; latency is send -> each member received, p50 and p99 over all
  deliveries (the clients' own scheduling is included, alike for both servers);
- burst: B messages written at once, until every member has them all; the servers take
  turns burst by burst (A B B A A B B A ...), several bursts each per round.

The baseline is the same workload on a bare ``websockets.asyncio.server`` whose handler
calls ``broadcast()`` for every message it receives. The hub's frames are percent-encoded
JSON envelopes (``{"#message": ..., "#user_id": ..., "#scid": ..., "#srid": ...}``); the
baseline's payload is padded to the same number of bytes, so both servers write the same
bytes per delivery. The figure is the ratio hub/bare of deliveries per second, per round
and its median (the aim is >= 0.8). Each server's CPU time per delivery (from
``/proc/PID/stat``) is printed too: it varies less than wall-clock rates on a shared CPU.

Memory: N idle connections (upgraded, not in a group) to a fresh server; its RSS
(``VmRSS`` in ``/proc/PID/status``) after ``gc.collect()`` in the server, minus the RSS
before the first connection, divided by N (the aim for the hub is <= 20 KB). Kernel
socket buffers are not in RSS and not counted, for either server.

Fairness: each server runs alone in a subprocess on the default asyncio event loop, with
compression off, the same maximum frame size (the hub's 64 KiB) and the same listen
backlog. The clients (raw asyncio protocols that count frames, see ``_bench_ws.py``) run
in this process, all on 127.0.0.1. For the hub, only the limits that would throttle the
benchmark itself are raised: the per-connection rate limit, connections per user (every
client is one account), the idle timeout, and the outbound queue bound (to fit a burst).

    .venv/bin/python scripts/bench_hub.py --quick      # about 15 s
    .venv/bin/python scripts/bench_hub.py              # 1,000 members, 1k/5k/10k conns, ~2 min
    .venv/bin/python scripts/bench_hub.py --only fanout --members 2000 --messages 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final, Protocol

from _bench_ws import BenchError, RawClient, Tally, abort_all, encode_client_frame, open_clients
from _fanout import (
    GROUP,
    ROUND_HEAD,
    STEP_SECONDS,
    WARM_MESSAGES,
    Round,
    Side,
    fanout_parser,
    fill_sizes,
    idle_baseline,
    join_group,
    max_outbound,
    measure,
    new_marker,
    process_cpu_seconds,
    raise_nofile,
    sequential,
    settled_rss,
    sync,
)

HOST: Final = "127.0.0.1"
KINDS: Final = ("hub", "bare")
BACKLOG: Final = 2048  # the hub's listen backlog (agent/hub/server.py), given to both
MAX_FRAME: Final = 65536  # the hub's default max_frame_bytes, given to both
FULL: Final = {
    "members": 1000,
    "messages": 200,
    "burst": 50,
    "bursts": 4,
    "repeat": 3,
    "conns": "1000,5000,10000",
}
QUICK: Final = {
    "members": 200,
    "messages": 50,
    "burst": 25,
    "bursts": 2,
    "repeat": 1,
    "conns": "1000,2000",
}
START_SECONDS: Final = 60.0
SETTLE_POLL_SECONDS: Final = 0.05
STOP_SECONDS: Final = 15.0
FANOUT_AIM: Final = 0.8
MEMORY_AIM_KB: Final = 20.0


# --- the servers under test (run in a subprocess: ``bench_hub.py --serve hub|bare``) ---


class UnderTest(Protocol):
    """A server under test, as its control loop sees it."""

    port: int
    path: str

    async def start(self) -> None: ...
    async def stats(self) -> tuple[int, int]: ...  # (connections, members of GROUP)
    async def stop(self) -> None: ...


class HubUnderTest:
    """The hub, with one account whose token every client uses."""

    def __init__(
        self,
        state_dir: Path,
        max_outbound: int,
        backplane: str = "memory",
        database: str = "sqlite",
    ) -> None:
        from agent.config import HubLimits, HubSettings, Settings
        from agent.hub.server import HubServer

        limits = HubLimits(
            max_frame_bytes=MAX_FRAME,
            rate_burst=10**9,
            rate_per_second=1e9,
            max_connections_per_user=10**7,
            idle_timeout_seconds=3600.0,
            max_outbound_bytes=max_outbound,
        )
        hub = HubSettings(host=HOST, port=0, limits=limits, backplane=backplane, database=database)
        self.hub = HubServer(Settings(name="bench", state_dir=state_dir, hub=hub))
        self.port, self.path = 0, ""

    async def start(self) -> None:
        """Start the hub and mint the clients' token."""
        await self.hub.start()
        # Nodes of a cluster share the database: the first one makes the account.
        accounts = self.hub.accounts
        account = accounts.get_by_name("bench") or accounts.add("bench", None, groups=[GROUP])
        self.port = self.hub.port
        self.path = "/ws?token=" + self.hub.tokens.issue(account, 3600)

    async def stats(self) -> tuple[int, int]:
        """Connections open on this node, and members of the benchmark group (cluster-wide
        with a Redis backplane)."""
        return len(self.hub.backplane.local), len(await self.hub.backplane.members(GROUP))

    async def stop(self) -> None:
        """Stop the hub."""
        await self.hub.stop()


class BareUnderTest:
    """The baseline: a websockets server that broadcasts every message to every client."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.server: Any = None
        self.port, self.path = 0, "/"

    async def start(self) -> None:
        """Start serving; the handler is the whole server."""
        from websockets.asyncio.server import ServerConnection, broadcast, serve
        from websockets.exceptions import ConnectionClosed

        connections = self.connections

        async def handler(websocket: ServerConnection) -> None:
            connections.add(websocket)
            try:
                async for message in websocket:
                    broadcast(connections, message)
            except ConnectionClosed:
                pass  # the benchmark drops its clients without a closing handshake
            finally:
                connections.discard(websocket)

        self.server = await serve(
            handler, HOST, 0, compression=None, max_size=MAX_FRAME, backlog=BACKLOG
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]

    async def stats(self) -> tuple[int, int]:
        """Open connections (every connection is a member)."""
        return len(self.connections), len(self.connections)

    async def stop(self) -> None:
        """Close the server and its connections."""
        self.server.close()
        await self.server.wait_closed()


def serve(
    kind: str,
    max_outbound: int,
    *,
    backplane: str = "memory",
    database: str = "sqlite",
    state_dir: str | None = None,
) -> int:
    """The subprocess: start the server, print its address, obey stdin until EOF."""
    # The benchmark drops its clients with a reset; writes already on their way to them
    # make asyncio warn "socket.send() raised exception." by the thousand. Errors still show.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as own_dir:
        where = Path(state_dir or own_dir)
        server = (
            HubUnderTest(where, max_outbound, backplane, database)
            if kind == "hub"
            else BareUnderTest()
        )
        asyncio.run(_serve(server))
    return 0


async def _serve(server: UnderTest) -> None:
    await server.start()
    _reply({"port": server.port, "path": server.path})
    try:
        await _control_loop(server)
    finally:
        await server.stop()


async def _control_loop(server: UnderTest) -> None:
    # One command a line: "stats" -> connection counts, "gc" -> collect. EOF ends it, so
    # the server also goes away when the benchmark dies.
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while command := (await reader.readline()).strip():
        if command == b"gc":
            gc.collect()
            _reply({"ok": True})
        elif command == b"stats":
            connections, members = await server.stats()
            _reply({"connections": connections, "members": members})
        else:
            _reply({"error": f"unknown command {command!r}"})


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- the benchmark process: servers as subprocesses ---

_STARTED: set[int] = set()  # pids, killed on any exit


class Server:
    """A server under test in its subprocess, seen from the benchmark."""

    def __init__(self, kind: str, proc: asyncio.subprocess.Process) -> None:
        self.kind = kind
        self.proc = proc
        self.port = 0
        self.path = ""

    @classmethod
    async def start(cls, kind: str, max_outbound: int, *extra: str) -> Server:
        """Start ``kind`` in a subprocess (``extra``: more options) and wait for its address."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--max-outbound",
            str(max_outbound),
            *extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops it
        )
        _STARTED.add(proc.pid)
        server = cls(kind, proc)
        hello = await server._read(START_SECONDS, "starting")
        server.port, server.path = hello["port"], hello["path"]
        return server

    async def ask(self, command: str) -> dict[str, Any]:
        """Send one control command and return its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._read(STEP_SECONDS, f"answering {command!r}")

    async def _read(self, seconds: float, what: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(seconds):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            raise BenchError(f"the {self.kind} server timed out {what}") from None
        if not line:
            code = await self.proc.wait()
            raise BenchError(f"the {self.kind} server exited ({code}) while {what}; see above")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def settle(self, *, connections: int | None = None, members: int | None = None) -> None:
        """Until the server counts ``connections`` open and ``members`` in the group."""
        deadline = time.monotonic() + STEP_SECONDS
        while True:
            stats = await self.ask("stats")
            if connections in (None, stats["connections"]) and members in (None, stats["members"]):
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the {self.kind} server has {stats} after {STEP_SECONDS:.0f} s; "
                    f"expected connections={connections} members={members}"
                )
            await asyncio.sleep(SETTLE_POLL_SECONDS)

    def rss_kb(self) -> int:
        """Resident set size of the server process (KiB)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError(f"no VmRSS in /proc/{self.proc.pid}/status")

    def alive(self) -> bool:
        """Whether the server process is still running (not gone, not a zombie)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat[stat.rindex(")") + 2] not in "ZX"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        return process_cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        """EOF on its stdin stops it; killed if it takes too long."""
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                async with asyncio.timeout(STOP_SECONDS):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        _STARTED.discard(self.proc.pid)


def run_benchmark(prog: str, benchmark: Coroutine[Any, Any, None]) -> int:
    """Run ``benchmark`` to its end and print the total time: the exit status. A
    ``BenchError`` or Ctrl-C is one line on stderr; every server process started is killed
    whatever happens."""
    started = time.monotonic()
    try:
        asyncio.run(benchmark)
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        for pid in _STARTED:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    print(f"\nTotal time {time.monotonic() - started:.0f} s")
    return 0


# --- fan-out ---


async def setup_bare(server: Server, members: int, frame_bytes: int) -> Side:
    """``members`` baseline clients; its frames are ``frame_bytes`` long, as the hub's."""
    tally = Tally("bare")
    clients = await open_clients(server.port, server.path, members, tally)
    await server.settle(connections=members)
    marker = new_marker()
    seen = await sync(server, clients, tally, marker.ljust(frame_bytes, "x").encode(), marker)
    payload = b"x" * frame_bytes
    return Side(
        name="bare",
        server=server,
        clients=clients,
        tally=tally,
        message=encode_client_frame(payload),
        frame_in=len(payload),
        frame_out=len(seen),
        sample=payload.decode(),
    )


async def bench_fanout(args: argparse.Namespace) -> list[tuple[Round, Round]]:
    """Both servers up with their members, then the rounds."""
    print(
        f"\nFan-out: {args.members:,} members of one group, {args.messages} sequential "
        f"messages and {args.bursts} bursts of {args.burst} per server per round, "
        f"{args.repeat} round(s)"
    )
    outbound = max_outbound(args.burst, args.content_bytes)
    servers: list[Server] = []
    sides: list[Side] = []
    try:
        servers.append(await Server.start("hub", outbound))
        sides.append(
            await join_group("hub", servers[0], servers[:1], args.members, args.content_bytes)
        )
        servers.append(await Server.start("bare", outbound))
        sides.append(await setup_bare(servers[1], args.members, sides[0].frame_out))
        _print_frames(sides)
        await sequential(sides, WARM_MESSAGES)  # not reported
        print(ROUND_HEAD)
        return [await measure(number, sides, args) for number in range(1, args.repeat + 1)]
    finally:
        for side in sides:
            abort_all(side.clients)
        for server in servers:
            await server.stop()


def _print_frames(sides: Sequence[Side]) -> None:
    hub, bare = sides
    print(
        f"  hub  frames: in {hub.frame_in} B (broadcast action, {len(hub.message)} B on the "
        f"wire), out {hub.frame_out} B (percent-encoded JSON envelope)\n"
        f"       e.g. {hub.sample[:150]}{'...' if len(hub.sample) > 150 else ''}\n"
        f"  bare frames: in {bare.frame_in} B, out {bare.frame_out} B (payload padded to the "
        "hub's outbound frame size, so both write the same bytes per delivery)"
    )


def print_fanout_summary(rounds: Sequence[tuple[Round, Round]]) -> None:
    """Ratios hub/bare per round, their median and spread."""

    def ratios(rate: str) -> list[float]:
        return [getattr(hub, rate) / getattr(bare, rate) for hub, bare in rounds]

    print(f"  hub/bare deliveries per second (aim >= {FANOUT_AIM}):")
    for label, rate in (("sequential", "seq_rate"), ("burst", "burst_rate")):
        values = ratios(rate)
        verdict = "meets the aim" if statistics.median(values) >= FANOUT_AIM else "BELOW the aim"
        print(
            f"    {label:<10} median {statistics.median(values):.2f}  "
            f"(rounds: {', '.join(f'{v:.2f}' for v in values)})  {verdict}"
        )
    for label, cpu in (("sequential", "seq_cpu_us"), ("burst", "burst_cpu_us")):
        values = [getattr(bare, cpu) / getattr(hub, cpu) for hub, bare in rounds]
        print(
            f"  server CPU per delivery, bare/hub, {label}: median {statistics.median(values):.2f}"
            f" (rounds: {', '.join(f'{v:.2f}' for v in values)})"
        )
    for index, name in enumerate(KINDS):
        p50 = statistics.median(r[index].p50_ms for r in rounds)
        p99 = statistics.median(r[index].p99_ms for r in rounds)
        print(f"  {name} latency (median of rounds): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


# --- memory ---


@dataclass
class MemoryPoint:
    """RSS of one server at one number of idle connections."""

    name: str
    connections: int
    base_kb: int
    rss_kb: int

    @property
    def per_connection_kb(self) -> float:
        """(RSS - RSS before any connection) / connections."""
        return (self.rss_kb - self.base_kb) / self.connections


async def bench_memory(kind: str, counts: Sequence[int]) -> list[MemoryPoint]:
    """Idle connections added up to each of ``counts``; RSS after a gc at each."""
    server = await Server.start(kind, 1 << 20)
    tally = Tally(f"{kind} (memory)")
    clients: list[RawClient] = []
    try:
        [base] = await idle_baseline([server], tally)
        points: list[MemoryPoint] = []
        for count in counts:
            clients += await open_clients(server.port, server.path, count - len(clients), tally)
            [rss] = await settled_rss([server], [count])
            points.append(MemoryPoint(kind, count, base, rss))
            if tally.error is not None:
                raise tally.error
            print(_memory_line(points))
        return points
    finally:
        abort_all(clients)
        await server.stop()


def _memory_line(points: Sequence[MemoryPoint]) -> str:
    point = points[-1]
    previous = points[-2] if len(points) > 1 else None
    marginal = ""
    if previous is not None:
        added = point.connections - previous.connections
        marginal = f"{(point.rss_kb - previous.rss_kb) / added:>10.1f}"
    return (
        f"  {point.name:<6} {point.connections:>7,} {point.base_kb / 1024:>10.1f} "
        f"{point.rss_kb / 1024:>8.1f} {point.per_connection_kb:>12.1f} {marginal}"
    )


def print_memory_summary(points: Sequence[MemoryPoint]) -> None:
    """The hub against the aim and against the baseline at each count."""
    bare = {p.connections: p for p in points if p.name == "bare"}
    for hub in (p for p in points if p.name == "hub"):
        verdict = "meets the aim" if hub.per_connection_kb <= MEMORY_AIM_KB else "ABOVE the aim"
        base = bare.get(hub.connections)
        versus = f", bare {base.per_connection_kb:.1f} KB" if base else ""
        print(
            f"  {hub.connections:,} idle connections: hub {hub.per_connection_kb:.1f} KB each "
            f"(aim <= {MEMORY_AIM_KB:.0f} KB: {verdict}){versus}"
        )


# --- command line ---


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options; ``--quick`` changes the defaults of the sizes not given."""
    parser = fanout_parser(__doc__, FULL)
    parser.add_argument(
        "--conns", help="idle connection counts for memory (default 1000,5000,10000)"
    )
    parser.add_argument(
        "--content-bytes", type=int, default=100, help="broadcast content length (default 100)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: 200 members, 50 messages, 2 bursts of 25, 1 round, "
        "1000,2000 connections",
    )
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--max-outbound", type=int, default=1 << 20, help=argparse.SUPPRESS)
    parser.add_argument("--backplane", default="memory", help=argparse.SUPPRESS)
    parser.add_argument("--database", default="sqlite", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    fill_sizes(args, QUICK if args.quick else FULL)
    try:
        args.conns = sorted({int(c) for c in str(args.conns).split(",") if c.strip()})
    except ValueError:
        parser.error(f"--conns must be comma-separated numbers, not {args.conns!r}")
    if not args.conns or min(args.conns) < 1:
        parser.error("--conns needs at least one count, each >= 1")
    if args.members < 2 or min(args.messages, args.burst, args.bursts, args.repeat) < 1:
        parser.error("--members must be >= 2; --messages, --burst, --bursts, --repeat >= 1")
    if not 16 <= args.content_bytes <= 16384:
        parser.error("--content-bytes must be between 16 and 16384")
    return args


async def run(args: argparse.Namespace) -> None:
    """Fan-out, then memory for each server, then the summary."""
    fanout = 2 * args.members if args.only != "memory" else 0
    nofile = raise_nofile(max(fanout, max(args.conns) if args.only != "fanout" else 0))
    print(
        f"edge-agent hub benchmark: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {platform.python_version()}, "
        f"websockets {version('websockets')}, uvicorn {version('uvicorn')}, "
        f"open files {nofile}"
    )
    print(
        f"Servers run in subprocesses; clients (raw asyncio sockets) in this process; {HOST} only."
    )
    rounds = await bench_fanout(args) if args.only != "memory" else []
    points: list[MemoryPoint] = []
    if args.only != "fanout":
        print(
            "\nMemory per idle connection (server RSS after gc.collect(), /proc/PID/status VmRSS)"
            "\n  server    conns  base MiB  RSS MiB  KB/conn all  KB/conn marginal"
        )
        for kind in KINDS:
            points += await bench_memory(kind, args.conns)
    print("\nSummary")
    if rounds:
        print_fanout_summary(rounds)
    if points:
        print_memory_summary(points)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--serve``, be one of its servers)."""
    args = parse_args(argv)
    if args.serve:
        return serve(
            args.serve,
            args.max_outbound,
            backplane=args.backplane,
            database=args.database,
            state_dir=args.state_dir,
        )
    return run_benchmark("bench_hub", run(args))


if __name__ == "__main__":
    sys.exit(main())
