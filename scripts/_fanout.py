"""Group fan-out measured from the client side, shared by ``bench_hub.py`` and ``bench_cluster.py``.

Both benchmarks put two sides side by side (the hub and a bare broadcast loop; one node and
a cluster) and run the same workload on each, taking turns so that a load from other
processes weighs on both alike:

- members connected (spread evenly over a side's nodes), joined to ``GROUP``, and a marked
  broadcast seen by all of them before anything is measured (:func:`join_group`);
- sequential messages, one at a time, latency send -> each member received
  (:func:`sequential`), then bursts written at once (:func:`bursts`); :func:`measure` runs
  one round of both and prints its line;
- idle connections held open for memory: RSS after a gc, against the RSS before the first
  connection (:func:`idle_baseline`, :func:`settled_rss`).

A side's server is anything with the :class:`Measured` surface (one hub process, or three
nodes and their Redis); the nodes clients connect to have the :class:`Node` surface (the
benchmark's server subprocess handle in ``bench_hub.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from _bench_ws import BenchError, RawClient, Tally, abort_all, encode_client_frame, open_clients

__all__ = [
    "BURST_SECONDS",
    "GROUP",
    "ROUND_HEAD",
    "STEP_SECONDS",
    "WARM_CONNECTIONS",
    "WARM_MESSAGES",
    "Burst",
    "Measured",
    "Node",
    "Round",
    "Sequential",
    "Side",
    "burst",
    "bursts",
    "fanout_parser",
    "fill_sizes",
    "hub_broadcast",
    "idle_baseline",
    "join_group",
    "max_outbound",
    "measure",
    "new_marker",
    "percentile",
    "process_cpu_seconds",
    "raise_nofile",
    "round_line",
    "sequential",
    "settled_rss",
    "spread",
    "sync",
    "wait_step",
]

GROUP: Final = "bench"
STEP_SECONDS: Final = 60.0  # one message reaching every member, or joins settling
BURST_SECONDS: Final = 300.0
WARM_CONNECTIONS: Final = 20
WARM_MESSAGES: Final = 20
FD_MARGIN: Final = 256
ROUND_HEAD: Final = (
    "  round server  seq deliveries/s  p50 ms  p99 ms  CPU us/delivery | "
    "burst deliveries/s  CPU us/delivery"
)


class Measured(Protocol):
    """What a side's server is to the measuring code: a name, a CPU clock, a pulse."""

    @property
    def kind(self) -> str: ...
    def cpu_seconds(self) -> float: ...
    def alive(self) -> bool: ...


class Node(Measured, Protocol):
    """One server process clients connect to, with its control commands."""

    @property
    def port(self) -> int: ...
    @property
    def path(self) -> str: ...
    async def ask(self, command: str) -> dict[str, Any]: ...
    async def settle(
        self, *, connections: int | None = None, members: int | None = None
    ) -> None: ...
    def rss_kb(self) -> int: ...


@dataclass
class Side:
    """One server's members, ready to measure: the first client sends."""

    name: str
    server: Measured
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


async def wait_step(server: Measured, tally: Tally, seconds: float, what: str) -> None:
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


def new_marker() -> str:
    """A string no other frame of the run contains."""
    return "sync" + secrets.token_hex(6)


def hub_broadcast(content: str) -> bytes:
    """The hub's broadcast action to ``GROUP``, as a client sends it."""
    return json.dumps({"action": "broadcast", "rid": GROUP, "content": content}).encode()


async def sync(
    server: Measured, clients: list[RawClient], tally: Tally, payload: bytes, marker: str
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


def spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as whole numbers allow, the first ones larger."""
    return [total // parts + (index < total % parts) for index in range(parts)]


async def join_group(
    name: str, server: Measured, nodes: Sequence[Node], members: int, content: int
) -> Side:
    """``members`` hub clients spread over ``nodes``, all in GROUP, every join delivered;
    the side sends broadcasts of ``content`` bytes."""
    tally = Tally(name)
    clients: list[RawClient] = []
    for node, count in zip(nodes, spread(members, len(nodes)), strict=True):
        clients += await open_clients(node.port, nodes[0].path, count, tally)
    join = encode_client_frame(json.dumps({"action": "joinRoom", "rid": GROUP}).encode())
    for client in clients:
        client.send(join)
    await nodes[0].settle(members=members)
    marker = new_marker()
    seen = await sync(server, clients, tally, hub_broadcast(marker.ljust(content, "x")), marker)
    payload = hub_broadcast("x" * content)
    return Side(
        name=name,
        server=server,
        clients=clients,
        tally=tally,
        message=encode_client_frame(payload),
        frame_in=len(payload),
        frame_out=len(seen),
        sample=seen.decode().replace(marker, "x" * len(marker)),
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


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
    """One round (``args``: messages, burst, bursts): interleaved sequential messages, then
    bursts (odd rounds start with the first side, even rounds with the second); prints
    each side's line."""
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
        print(round_line(number, rounds[-1]))
    return rounds[0], rounds[1]


def round_line(number: int, r: Round) -> str:
    """One side's figures in one round, under ``ROUND_HEAD``."""
    return (
        f"  {number:>5} {r.name:<6} {r.seq_rate:>16,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
        f"{r.seq_cpu_us:>16.1f} | {r.burst_rate:>18,.0f} {r.burst_cpu_us:>16.1f}"
    )


def max_outbound(burst: int, content: int) -> int:
    """The hub's outbound queue bound for the run."""
    # It must hold a whole burst for a member that reads slowly (frames are the content
    # plus an envelope of well under 1 KiB).
    return max(1 << 20, 4 * burst * (content + 1024))


async def idle_baseline(nodes: Sequence[Node], tally: Tally) -> list[int]:
    """Each node's RSS (KiB) after a gc, once warm-up connections have come and gone: what
    idle connections are measured against."""
    for node in nodes:  # lazy imports and first-use caches are not a connection's cost
        abort_all(await open_clients(node.port, nodes[0].path, WARM_CONNECTIONS, tally))
    for node in nodes:
        await node.settle(connections=0)
        await node.ask("gc")
    return [node.rss_kb() for node in nodes]


async def settled_rss(nodes: Sequence[Node], counts: Sequence[int]) -> list[int]:
    """Each node's RSS (KiB) after a gc, once it holds its number of ``counts`` connections."""
    for node, count in zip(nodes, counts, strict=True):
        await node.settle(connections=count)
        await node.ask("gc")
    return [node.rss_kb() for node in nodes]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (proc(5), /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile(connections: int) -> int:
    """Raise this process's (and so the servers') open-file limit to hold ``connections``
    client sockets and a margin; returns the soft limit now."""
    need = connections + FD_MARGIN
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


_SIZE_HELP: Final = {
    "members": "group size",
    "messages": "sequential messages per round",
    "burst": "messages per burst",
    "bursts": "bursts per side per round",
    "repeat": "rounds",
}


def fanout_parser(doc: str | None, full: Mapping[str, object]) -> argparse.ArgumentParser:
    """A benchmark's options: described by the first paragraph of ``doc``, with the fan-out
    sizes (``--members`` ... ``--repeat``, defaults from ``full``) and ``--only``."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, text in _SIZE_HELP.items():
        parser.add_argument(f"--{name}", type=int, help=f"{text} (default {full[name]})")
    parser.add_argument("--only", choices=("fanout", "memory"), help="run one part only")
    return parser


def fill_sizes(args: argparse.Namespace, defaults: Mapping[str, object]) -> None:
    """Give every size option not on the command line its value from ``defaults``."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
