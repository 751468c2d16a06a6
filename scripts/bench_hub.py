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
import math
import os
import platform
import resource
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final, Protocol

from _bench_ws import BenchError, RawClient, Tally, abort_all, encode_client_frame, open_clients

HOST: Final = "127.0.0.1"
GROUP: Final = "bench"
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
STEP_SECONDS: Final = 60.0  # one message reaching every member, or joins settling
BURST_SECONDS: Final = 300.0
SETTLE_POLL_SECONDS: Final = 0.05
STOP_SECONDS: Final = 15.0
WARM_CONNECTIONS: Final = 20
WARM_MESSAGES: Final = 20
FD_MARGIN: Final = 256
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
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def _kill_started() -> None:
    for pid in _STARTED:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def wait_step(server: Server, tally: Tally, seconds: float, what: str) -> None:
    """Until ``tally``'s step completes; ``BenchError`` on a timeout or a client failure,
    saying so if the server process has died."""
    try:
        async with asyncio.timeout(seconds):
            await tally.wait()
    except TimeoutError:
        error = BenchError(
            f"{tally.label}: timed out after {seconds:.0f} s waiting {what} "
            f"({tally.remaining} clients still waiting)"
        )
    except BenchError as exc:
        error = exc
    else:
        return
    if not server.alive():
        raise BenchError(f"the {server.kind} server process died while waiting {what} ({error})")
    raise error


# --- fan-out ---


@dataclass
class Side:
    """One server's members, ready to measure: the first client sends."""

    name: str
    server: Server
    clients: list[RawClient]
    tally: Tally
    message: bytes  # the sender's frame, encoded once
    frame_in: int  # payload bytes, sender -> server
    frame_out: int  # payload bytes, server -> each member
    sample: str  # one frame as the members receive it


@dataclass
class Round:
    """One server's figures in one round."""

    name: str
    seq_rate: float
    p50_ms: float
    p99_ms: float
    seq_cpu_us: float
    burst_rate: float
    burst_cpu_us: float


def _marker() -> str:
    return "sync" + secrets.token_hex(6)


async def _sync(
    server: Server, clients: list[RawClient], tally: Tally, payload: bytes, marker: str
) -> bytes:
    """Send ``payload`` (it contains ``marker``) from the first client and wait until every
    client has the frame it causes; returns that frame as the last client received it.

    Frames on one connection arrive in order: once every member has this one, the notices
    and messages before it have all arrived too.
    """
    tally.expect(len(clients), marker=marker.encode())
    clients[0].send(encode_client_frame(payload))
    await wait_step(server, tally, STEP_SECONDS, "for the sync broadcast")
    tally.expect(0)
    return clients[-1].seen


def _hub_broadcast(content: str) -> bytes:
    return json.dumps({"action": "broadcast", "rid": GROUP, "content": content}).encode()


async def setup_hub(server: Server, members: int, content_bytes: int) -> Side:
    """``members`` hub clients in GROUP, every join notice delivered."""
    tally = Tally("hub")
    clients = await open_clients(server.port, server.path, members, tally)
    join = encode_client_frame(json.dumps({"action": "joinRoom", "rid": GROUP}).encode())
    for client in clients:
        client.send(join)
    await server.settle(members=members)
    marker = _marker()
    sync = _hub_broadcast(marker.ljust(content_bytes, "x"))
    seen = await _sync(server, clients, tally, sync, marker)
    payload = _hub_broadcast("x" * content_bytes)
    return Side(
        name="hub",
        server=server,
        clients=clients,
        tally=tally,
        message=encode_client_frame(payload),
        frame_in=len(payload),
        frame_out=len(seen),
        sample=seen.decode().replace(marker, "x" * len(marker)),
    )


async def setup_bare(server: Server, members: int, frame_bytes: int) -> Side:
    """``members`` baseline clients; its frames are ``frame_bytes`` long, as the hub's."""
    tally = Tally("bare")
    clients = await open_clients(server.port, server.path, members, tally)
    await server.settle(connections=members)
    marker = _marker()
    seen = await _sync(server, clients, tally, marker.ljust(frame_bytes, "x").encode(), marker)
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


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Sequential:
    """One server's share of an interleaved sequential run."""

    busy: float = 0.0  # seconds from a send until every member had that message
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)


@dataclass
class Burst:
    """One server's bursts in a round."""

    deliveries: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0


async def sequential(sides: Sequence[Side], messages: int, *, first: int = 0) -> list[Sequential]:
    """One message at a time, taking turns: message k goes to one server, then the same
    message to the other (the order alternates), so both see the same background load.

    Each server only works during its own turns, so its CPU time over the run is its cost.
    """
    for side in sides:
        for client in side.clients:
            client.frames, client.stamps = 0, []
    results = [Sequential() for _ in sides]
    sent: list[list[float]] = [[] for _ in sides]
    cpu = [side.server.cpu_seconds() for side in sides]
    for k in range(messages):
        for i in (0, 1) if (k + first) % 2 == 0 else (1, 0):
            side = sides[i]
            side.tally.expect(len(side.clients), target=k + 1)
            start = time.perf_counter()
            sent[i].append(start)
            side.clients[0].send(side.message)
            await wait_step(
                side.server, side.tally, STEP_SECONDS, f"for message {k + 1} to reach every member"
            )
            results[i].busy += time.perf_counter() - start
    for i, side in enumerate(sides):
        results[i].cpu = side.server.cpu_seconds() - cpu[i]
        results[i].latencies = sorted(
            stamp - sent[i][k]
            for client in side.clients
            for k, stamp in enumerate(client.stamps or ())
        )
        for client in side.clients:
            client.stamps = None
    return results


async def burst(side: Side, messages: int) -> tuple[float, float]:
    """All messages written at once, until every member has them all: (seconds, CPU s)."""
    clients, tally = side.clients, side.tally
    for client in clients:
        client.frames = 0
    tally.expect(len(clients), target=messages)
    cpu, start = side.server.cpu_seconds(), time.perf_counter()
    clients[0].send(side.message * messages)
    await wait_step(
        side.server, tally, BURST_SECONDS, f"for a burst of {messages} to reach every member"
    )
    return time.perf_counter() - start, side.server.cpu_seconds() - cpu


async def bursts(sides: Sequence[Side], size: int, count: int, *, first: int = 0) -> list[Burst]:
    """``count`` bursts of ``size`` messages on each server, taking turns A B B A A B ...,
    so that a load that comes and goes during the round weighs on both alike."""
    a, b = (0, 1) if first == 0 else (1, 0)
    results = [Burst() for _ in sides]
    for i in [i for turn in range(count) for i in ((a, b) if turn % 2 == 0 else (b, a))]:
        elapsed, cpu = await burst(sides[i], size)
        results[i].deliveries += len(sides[i].clients) * size
        results[i].elapsed += elapsed
        results[i].cpu += cpu
    return results


async def measure(
    number: int, sides: Sequence[Side], args: argparse.Namespace
) -> tuple[Round, Round]:
    """One round: interleaved sequential messages, then bursts (odd rounds start with the
    hub, even rounds with the baseline)."""
    first = (number + 1) % 2
    messages = args.messages
    seq = await sequential(sides, messages, first=first)
    bursted = await bursts(sides, args.burst, args.bursts, first=first)
    rounds = []
    for i, side in enumerate(sides):
        deliveries = len(side.clients) * messages
        rounds.append(
            Round(
                name=side.name,
                seq_rate=deliveries / seq[i].busy,
                p50_ms=percentile(seq[i].latencies, 0.50) * 1e3,
                p99_ms=percentile(seq[i].latencies, 0.99) * 1e3,
                seq_cpu_us=seq[i].cpu / deliveries * 1e6,
                burst_rate=bursted[i].deliveries / bursted[i].elapsed,
                burst_cpu_us=bursted[i].cpu / bursted[i].deliveries * 1e6,
            )
        )
        print(_round_line(number, rounds[-1]))
    return rounds[0], rounds[1]


async def bench_fanout(args: argparse.Namespace) -> list[tuple[Round, Round]]:
    """Both servers up with their members, then the rounds."""
    print(
        f"\nFan-out: {args.members:,} members of one group, {args.messages} sequential "
        f"messages and {args.bursts} bursts of {args.burst} per server per round, "
        f"{args.repeat} round(s)"
    )
    servers: list[Server] = []
    sides: list[Side] = []
    try:
        servers.append(await Server.start("hub", _max_outbound(args)))
        sides.append(await setup_hub(servers[0], args.members, args.content_bytes))
        servers.append(await Server.start("bare", _max_outbound(args)))
        sides.append(await setup_bare(servers[1], args.members, sides[0].frame_out))
        _print_frames(sides)
        await sequential(sides, WARM_MESSAGES)  # not reported
        print(_ROUND_HEAD)
        return [await measure(number, sides, args) for number in range(1, args.repeat + 1)]
    finally:
        for side in sides:
            abort_all(side.clients)
        for server in servers:
            await server.stop()


def _max_outbound(args: argparse.Namespace) -> int:
    # The hub's outbound queue bound must hold a whole burst for a member that reads slowly
    # (frames are the content plus an envelope of well under 1 KiB).
    return max(1 << 20, 4 * int(args.burst) * (int(args.content_bytes) + 1024))


def _print_frames(sides: Sequence[Side]) -> None:
    hub, bare = sides
    print(
        f"  hub  frames: in {hub.frame_in} B (broadcast action, {len(hub.message)} B on the "
        f"wire), out {hub.frame_out} B (percent-encoded JSON envelope)\n"
        f"       e.g. {hub.sample[:150]}{'...' if len(hub.sample) > 150 else ''}\n"
        f"  bare frames: in {bare.frame_in} B, out {bare.frame_out} B (payload padded to the "
        "hub's outbound frame size, so both write the same bytes per delivery)"
    )


_ROUND_HEAD: Final = (
    "  round server  seq deliveries/s  p50 ms  p99 ms  CPU us/delivery | "
    "burst deliveries/s  CPU us/delivery"
)


def _round_line(number: int, r: Round) -> str:
    return (
        f"  {number:>5} {r.name:<6} {r.seq_rate:>16,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
        f"{r.seq_cpu_us:>16.1f} | {r.burst_rate:>18,.0f} {r.burst_cpu_us:>16.1f}"
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
        # Lazy imports and first-use caches are not a connection's cost.
        abort_all(await open_clients(server.port, server.path, WARM_CONNECTIONS, tally))
        await server.settle(connections=0)
        await server.ask("gc")
        base = server.rss_kb()
        points: list[MemoryPoint] = []
        for count in counts:
            clients += await open_clients(server.port, server.path, count - len(clients), tally)
            await server.settle(connections=count)
            await server.ask("gc")
            points.append(MemoryPoint(kind, count, base, server.rss_kb()))
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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--members", type=int, help="fan-out group size (default 1000)")
    parser.add_argument("--messages", type=int, help="sequential messages per round (default 200)")
    parser.add_argument("--burst", type=int, help="messages per burst (default 50)")
    parser.add_argument("--bursts", type=int, help="bursts per server per round (default 4)")
    parser.add_argument("--repeat", type=int, help="fan-out rounds per server (default 3)")
    parser.add_argument(
        "--conns", help="idle connection counts for memory (default 1000,5000,10000)"
    )
    parser.add_argument(
        "--content-bytes", type=int, default=100, help="broadcast content length (default 100)"
    )
    parser.add_argument("--only", choices=("fanout", "memory"), help="run one part only")
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
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
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


def raise_nofile(args: argparse.Namespace) -> int:
    """Raise this process's (and so the servers') open-file limit to what the run needs."""
    fanout = 2 * args.members if args.only != "memory" else 0
    memory = max(args.conns) if args.only != "fanout" else 0
    need = max(fanout, memory) + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise BenchError(
            f"this run needs {need} open files but the hard limit (ulimit -Hn) is {hard}: "
            "raise it or lower --members / --conns"
        )
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        soft = need
    return soft


async def run(args: argparse.Namespace) -> None:
    """Fan-out, then memory for each server, then the summary."""
    nofile = raise_nofile(args)
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
    started = time.monotonic()
    try:
        asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench_hub: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_hub: interrupted", file=sys.stderr)
        return 130
    finally:
        _kill_started()
    print(f"\nTotal time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
