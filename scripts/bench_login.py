#!/usr/bin/env python3
"""Login flood benchmark: does a wrong-password flood slow the rest of the hub down?

A real hub runs alone in a subprocess on 127.0.0.1. This process asks ``GET /api/me`` one
request at a time (keep-alive) and records each latency: first with the hub idle, then
while a second subprocess floods ``POST /api/login`` with wrong passwords from W concurrent
workers. The hub's RSS (``VmRSS`` of its process) is read before the flood and sampled
through it; the growth is the peak during the flood minus the idle figure. One login is
done before the idle phase, so the first scrypt's memory is in the idle figure alike for
every hub.

Three hubs, measured in the same run, one after the other:

- ``shared``: the baseline, the old behaviour: scrypt in the shared default executor (the
  one ``asyncio.to_thread`` uses, which ``/api/me`` needs too), and no throttle;
- ``pool``: the hub as shipped, flooded from a different client address (X-Forwarded-For,
  trusted from loopback) and name on every request, so the throttle never trips and every
  login costs a scrypt or a 503: the KDF pool alone keeps the hub responsive;
- ``pool-1-client``: the hub as shipped, flooded from one address at one name: the
  throttle answers 429 after the free failures without running scrypt.

Aims (issue 8): under the flood ``/api/me`` p99 within 20 ms of its idle p99, and RSS
growth <= 20 MB.

Then, when ``redis-server`` is installed, one more line: what the throttle adds to a login
on a cluster (issue 12), its steps for one successful and one failed login timed against a
throwaway Redis on loopback, with this node's in-memory store as the baseline in the same run
(the scrypt itself, the same for both, is left out).

    .venv/bin/python scripts/bench_login.py               # 10 s floods, 16 workers, ~1 min
    .venv/bin/python scripts/bench_login.py --seconds 3   # quicker
    .venv/bin/python scripts/bench_login.py --kdf-threads 2
    .venv/bin/python scripts/bench_login.py --throttle-only   # the Redis line alone, ~2 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import HubLoginSettings, HubSettings, Settings  # noqa: E402
from agent.hub.accounts import ACCOUNTS_FILE, AccountStore  # noqa: E402

HOST: Final = "127.0.0.1"
NAME: Final = "bench"
PASSWORD: Final = "bench password, long enough"  # noqa: S105 (a throwaway account)
KINDS: Final = ("shared", "pool", "pool-1-client")
P99_AIM_MS: Final = 20.0
RSS_AIM_MB: Final = 20.0
START_TIMEOUT: Final = 30.0
RSS_EVERY: Final = 0.1


@dataclass
class Phase:
    """Latencies of /api/me in one phase, in milliseconds."""

    latencies: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class Result:
    """One hub's figures."""

    kind: str
    idle: Phase
    flood: Phase
    rss_idle_mb: float
    rss_peak_mb: float
    answers: dict[str, int]
    logins_per_second: float

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_idle_mb

    @property
    def p99_rise_ms(self) -> float:
        return self.flood.p99 - self.idle.p99


def main() -> int:
    """Run the benchmark, or one of its subprocesses (``--serve``, ``--flood``)."""
    args = _parser().parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, Path(args.state), args.kdf_threads, args.kdf_queue))
        return 0
    if args.flood:
        print(json.dumps(asyncio.run(_flood(args.flood, args))), flush=True)
        return 0
    if not args.throttle_only:
        _report([_measure(kind, args) for kind in KINDS], args)
    if shutil.which("redis-server") is None:
        print("cluster throttle: skipped (redis-server is not installed)")
    else:
        print(asyncio.run(_throttle_latency(args.throttle_logins)))
    return 0


def _parser() -> argparse.ArgumentParser:
    defaults = HubLoginSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--workers", type=int, default=16, help="concurrent flooders")
    parser.add_argument("--kdf-threads", type=int, default=defaults.kdf_threads)
    parser.add_argument("--kdf-queue", type=int, default=defaults.kdf_queue)
    parser.add_argument(
        "--throttle-only", action="store_true", help="only the cluster throttle's line"
    )
    parser.add_argument("--throttle-logins", type=int, default=2000, help="logins timed")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--flood", help=argparse.SUPPRESS)
    parser.add_argument("--one-client", action="store_true", help=argparse.SUPPRESS)
    return parser


# -- the hub subprocess ------------------------------------------------------------------------


async def _serve(kind: str, state: Path, kdf_threads: int, kdf_queue: int) -> None:
    from agent.hub.login import LoginThrottle, MemoryThrottleStore, ThrottlePolicy
    from agent.hub.server import HubServer

    login = HubLoginSettings(kdf_threads=kdf_threads, kdf_queue=kdf_queue)
    settings = Settings(state_dir=state, hub=HubSettings(host=HOST, port=0, login=login))
    hub = HubServer(settings)
    if kind == "shared":
        # The old behaviour: every login's scrypt in the shared default executor, unthrottled.
        async def shared_run(fn: Any, /, *args: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

        never = ThrottlePolicy(free_failures=10**9, base_delay=0, max_delay=0, forgive_seconds=1)
        hub.login_guard.pool.run = shared_run  # type: ignore[method-assign, assignment]
        unthrottled = LoginThrottle(name_policy=never, address_policy=never)
        hub.login_guard.local = MemoryThrottleStore(unthrottled)
    await hub.start()
    print(f"PORT {hub.port}", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    finally:
        await hub.stop()


@contextlib.contextmanager
def _hub(kind: str, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    with tempfile.TemporaryDirectory(prefix="bench-login-") as tmp:
        state = Path(tmp)
        store = AccountStore(state / ACCOUNTS_FILE)
        store.add(NAME, PASSWORD)
        store.close()
        command = [
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--state",
            str(state),
            "--kdf-threads",
            str(args.kdf_threads),
            "--kdf-queue",
            str(args.kdf_queue),
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            port = _read_port(process)
            yield f"http://{HOST}:{port}", process.pid
        finally:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(START_TIMEOUT)


def _read_port(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the hub exited with {process.wait()} before listening")
        if line.startswith("PORT "):
            return int(line.split()[1])
    raise RuntimeError("the hub did not start in time")


# -- the flood subprocess ----------------------------------------------------------------------


async def _flood(url: str, args: argparse.Namespace) -> dict[str, Any]:
    answers: Counter[str] = Counter()
    deadline = time.monotonic() + args.seconds
    limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)

    async def worker(index: int, http: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            if args.one_client:
                name, client = NAME, "192.0.2.1"
            else:  # every request another name and address: the throttle never trips
                name, client = f"guess-{index}-{n}", f"10.{index}.{n // 250 % 250}.{n % 250}"
            try:
                response = await http.post(
                    "/api/login",
                    json={"name": name, "password": "a wrong password"},
                    headers={"X-Forwarded-For": client},
                )
                answers[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                answers[type(exc).__name__] += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as http:
        await asyncio.gather(*(worker(i, http) for i in range(args.workers)))
    return {"answers": dict(answers), "seconds": time.monotonic() - started}


# -- measuring ------------------------------------------------------------------------------------


def _measure(kind: str, args: argparse.Namespace) -> Result:
    print(f"{kind}: starting", file=sys.stderr, flush=True)
    with _hub(kind, args) as (url, pid), httpx.Client(base_url=url, timeout=60.0) as http:
        response = http.post("/api/login", json={"name": NAME, "password": PASSWORD})
        response.raise_for_status()
        http.headers["Authorization"] = f"Bearer {response.json()['token']}"
        _probe(http, pid, 1.0)  # warm up
        idle, _ = _probe(http, pid, args.seconds)
        rss_idle = _rss_mb(pid)
        flood = _start_flood(url, args, one_client=kind == "pool-1-client")
        busy, rss_peak = _probe(http, pid, args.seconds)
        out, _ = flood.communicate(timeout=args.seconds + 120)
        tally = json.loads(out)
    answers = tally["answers"]
    return Result(
        kind,
        idle,
        busy,
        rss_idle,
        max(rss_peak, rss_idle),
        answers,
        sum(answers.values()) / tally["seconds"],
    )


def _start_flood(url: str, args: argparse.Namespace, *, one_client: bool) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--flood", url, "--seconds", str(args.seconds)]
    command += ["--workers", str(args.workers)] + (["--one-client"] if one_client else [])
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _probe(http: httpx.Client, pid: int, seconds: float) -> tuple[Phase, float]:
    """/api/me one at a time for ``seconds``; the latencies and the peak RSS meanwhile."""
    latencies: list[float] = []
    peak = 0.0
    sampled = 0.0
    deadline = time.monotonic() + seconds
    while (now := time.monotonic()) < deadline:
        http.get("/api/me").raise_for_status()
        latencies.append((time.monotonic() - now) * 1000)
        if now - sampled >= RSS_EVERY:
            peak, sampled = max(peak, _rss_mb(pid)), now
    return Phase(latencies), peak


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"# login flood: {args.workers} workers x {args.seconds:g} s; kdf_threads="
        f"{args.kdf_threads} kdf_queue={args.kdf_queue}; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}"
    )
    header = (
        f"{'hub':<14} {'idle p50':>9} {'idle p99':>9} {'flood p50':>10} {'flood p99':>10} "
        f"{'p99 rise':>9} {'RSS idle':>9} {'RSS +':>7} {'logins/s':>9}  answers"
    )
    print(header)
    for r in results:
        answers = " ".join(f"{k}:{v}" for k, v in sorted(r.answers.items()))
        print(
            f"{r.kind:<14} {r.idle.p50:>7.1f}ms {r.idle.p99:>7.1f}ms {r.flood.p50:>8.1f}ms "
            f"{r.flood.p99:>8.1f}ms {r.p99_rise_ms:>7.1f}ms {r.rss_idle_mb:>7.1f}MB "
            f"{r.rss_growth_mb:>5.1f}MB {r.logins_per_second:>9.0f}  {answers}"
        )
    for r in results[1:]:
        p99 = "met" if r.p99_rise_ms <= P99_AIM_MS else "MISSED"
        rss = "met" if r.rss_growth_mb <= RSS_AIM_MB else "MISSED"
        print(
            f"{r.kind}: p99 rise <= {P99_AIM_MS:g} ms {p99}; RSS growth <= {RSS_AIM_MB:g} MB "
            f"{rss} (baseline shared: p99 rise {results[0].p99_rise_ms:.1f} ms, "
            f"RSS growth {results[0].rss_growth_mb:.1f} MB)"
        )


# -- the cluster throttle ---------------------------------------------------------------------


async def _throttle_latency(logins: int) -> str:
    """One line: the throttle steps of a login, in-memory and on Redis, p50/p99 in ms."""
    from agent.hub.backplane_redis import RedisBackplane
    from agent.hub.backplane_redis.throttle import RedisThrottleStore
    from agent.hub.login import MemoryThrottleStore

    with tempfile.TemporaryDirectory(prefix="bench-login-redis-") as tmp, _redis(Path(tmp)) as url:
        plane = RedisBackplane(url)
        await plane.start()
        try:
            memory = await _login_steps(MemoryThrottleStore(), logins)
            redis = await _login_steps(RedisThrottleStore.of(plane), logins)
        finally:
            await plane.close()
    parts = []
    for outcome in ("ok", "failed"):
        base, shared = Phase(memory[outcome]), Phase(redis[outcome])
        parts.append(
            f"{outcome} login p50 {shared.p50:.3f} ms p99 {shared.p99:.3f} ms "
            f"(baseline in-memory p50 {base.p50:.3f} ms p99 {base.p99:.3f} ms; "
            f"added p50 {shared.p50 - base.p50:.3f} ms)"
        )
    return f"cluster throttle on Redis, {logins} logins each: " + "; ".join(parts)


async def _login_steps(store: Any, logins: int) -> dict[str, list[float]]:
    """The store calls LoginGuard makes for a successful and for a failed login, timed."""
    from agent.hub.login import ThrottleKind

    name, address = ThrottleKind.NAME, ThrottleKind.ADDRESS
    times: dict[str, list[float]] = {"ok": [], "failed": []}
    for n in range(logins):
        user, client = f"user{n}", f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        started = time.perf_counter()
        await asyncio.gather(store.retry_after(name, user), store.retry_after(address, client))
        await store.succeeded(name, user)
        times["ok"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for _ in range(2):  # before the password check, and again before counting
            await asyncio.gather(store.retry_after(name, user), store.retry_after(address, client))
        await asyncio.gather(store.failed(name, user), store.failed(address, client))
        times["failed"].append((time.perf_counter() - started) * 1000)
    return times


@contextlib.contextmanager
def _redis(directory: Path) -> Iterator[str]:
    """A redis-server on a free loopback port, without persistence; its URL."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    command = ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(directory)]
    command += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://{HOST}:{port}/0"
    finally:
        process.terminate()
        process.wait(START_TIMEOUT)


if __name__ == "__main__":
    sys.exit(main())
