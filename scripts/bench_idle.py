"""An idle agent's memory, its start to READY, and its first call, lazy against preloaded.

Each run starts a real ``edge-agent run`` process and follows it through one life:

1. spawn -> ``READY=1`` on a real ``NOTIFY_SOCKET`` (a datagram socket of this script, as
   systemd's sd_notify(3) protocol has it);
2. idle: once the agent has joined its group and a few seconds have passed, its resident
   memory (``VmRSS``) and peak (``VmHWM``) from ``/proc/PID/status``;
3. the first call after idle, from a Python caller in this process (as in
   ``scripts/bench_call_setup.py``): offer sent -> first decoded video frame; the agent's
   status then says how long the media stack took to load (``media_stack.load_seconds``)
   and its memory during the call.

Two configurations, each in two modes measured in the same run:

* ``remote hub``: the agent connects to a hub this script runs on 127.0.0.1;
* ``embedded hub``: the agent runs its own hub (and the caller connects to it);
* ``lazy``: the default, the media stack loads when the first call needs it;
* ``preload``: ``EDGE_AGENT_CALLS__PRELOAD=true``, the stack loads at start, which is what
  every agent did before it was lazy (the baseline).

Everything is on loopback: host candidates on 127.0.0.1 only, no ICE servers. The
embedded hub's state directory gets its admin account beforehand, so no run pays the
first start's password hashing (a one-off scrypt that would inflate the peak).

    .venv/bin/python scripts/bench_idle.py [--runs 3] [--settle 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from _call_timing import first_video_frame

from agent.client import RealtimeClient, RealtimeMessage
from agent.config import load_settings
from agent.events.control import control_socket_path, request
from agent.hub.accounts import AccountStore, Role
from agent.hub.server import HubServer
from agent.hub.tokens import TokenIssuer
from agent.rtc.ice import IceOptions
from agent.rtc.peer import PeerFactory

ROOT = Path(__file__).resolve().parent.parent
GROUP = "devices"
DEVICE = "porch"
LOOPBACK = IceOptions(addresses=("127.0.0.1",), mdns=False)
WAIT = 60.0
URL_RE = re.compile(r"embedded hub and viewer at (http://\S+?)/?$")
GOALS = {
    "start -> READY (ms)": 1000,
    "idle RSS (MB)": 60,
    "idle RSS, embedded hub (MB)": 90,
    "first call: offer -> first frame (ms)": 300,
}


class BenchError(Exception):
    """A run that did not get as far as its figures."""


@dataclass
class Life:
    """The figures of one agent process."""

    ready_ms: float
    idle_rss_mb: float
    idle_hwm_mb: float
    first_frame_ms: float
    load_ms: float | None
    call_rss_mb: float


@dataclass
class Case:
    """One configuration in one mode, over several runs."""

    embedded: bool
    preload: bool
    lives: list[Life] = field(default_factory=list)


class Notify:
    """A unixgram socket standing in for systemd's notify socket."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)

    async def ready(self) -> float:
        """Wait for a datagram with ``READY=1``; the moment it came (perf_counter)."""
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            if b"READY=1" in data.split(b"\n"):
                return time.perf_counter()

    def close(self) -> None:
        self.sock.close()


class AgentProcess:
    """``edge-agent run`` with its settings in the environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.hub_url: asyncio.Future[str] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> float:
        """Spawn; the moment just before (perf_counter)."""
        self.hub_url = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.cli", "run",
                stdout=asyncio.subprocess.PIPE, stderr=log, env=self.env, cwd=ROOT,
            )  # fmt: skip
        self._reader = asyncio.create_task(self._read_stdout())
        return started

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB (10^6 bytes, as ``edge-agent status`` says them)."""
        assert self.proc is not None
        found = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024 / 1e6  # proc(5) says kB: KiB
        return found["VmRSS"], found["VmHWM"]

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.terminate()
        async with asyncio.timeout(WAIT):
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
        if self.proc.returncode != 0:
            raise BenchError(f"the agent exited {self.proc.returncode}; see {self.log_path}")

    async def _read_stdout(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        assert self.hub_url is not None
        while line := (await self.proc.stdout.readline()).decode():
            found = URL_RE.search(line.strip())
            if found and not self.hub_url.done():
                self.hub_url.set_result(found.group(1))


class Bench:
    """A remote hub, the caller's account on it, and a fresh directory for every run."""

    def __init__(self, directory: Path, settle: float) -> None:
        self.directory = directory
        self.settle = settle
        self.runs = 0

    async def start(self) -> None:
        state = self.directory / "hub"
        self.hub = HubServer(load_settings(None, state_dir=state, hub={"host": "127.0.0.1"}))
        await self.hub.start()
        accounts = self.hub.accounts
        self.device = await asyncio.to_thread(
            accounts.add, DEVICE, None, Role.DEVICE, groups=[GROUP]
        )
        self.viewer = await asyncio.to_thread(
            accounts.add, "viewer", None, Role.USER, groups=[GROUP]
        )

    async def stop(self) -> None:
        await self.hub.stop()

    async def life(self, case: Case) -> Life:
        """One agent process: start, idle, first call, stop."""
        self.runs += 1
        run_dir = self.directory / f"run{self.runs}"
        run_dir.mkdir()
        state = run_dir / "state"
        notify = Notify(run_dir)
        agent = AgentProcess(self._env(case, state, notify), run_dir / "agent.log")
        try:
            if case.embedded:
                await asyncio.to_thread(_admin_exists, state)
            started = await agent.start()
            async with asyncio.timeout(WAIT):
                ready_at = await notify.ready()
            async with self._caller(case, agent, state) as (client, cid):
                await asyncio.sleep(self.settle)  # let start-up garbage settle, as idle does
                idle_rss, idle_hwm = agent.memory_mb()
                first_frame_ms = (await first_video_frame(client, cid, seconds=WAIT)).from_offer_ms
                status = await asyncio.to_thread(
                    request, control_socket_path(state), {"op": "status"}
                )
                call_rss, _ = agent.memory_mb()
        finally:
            notify.close()
            await agent.stop()
        load = status.get("media_stack", {}).get("load_seconds")
        return Life(
            ready_ms=(ready_at - started) * 1000,
            idle_rss_mb=idle_rss,
            idle_hwm_mb=idle_hwm,
            first_frame_ms=first_frame_ms,
            load_ms=None if load is None else load * 1000,
            call_rss_mb=call_rss,
        )

    def _env(self, case: Case, state: Path, notify: Notify) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        for key in ("STATE_DIRECTORY", "JOURNAL_STREAM", "WATCHDOG_USEC"):
            env.pop(key, None)
        env.update(
            NOTIFY_SOCKET=str(notify.path),
            EDGE_AGENT_NAME=DEVICE,
            EDGE_AGENT_GROUPS=f'["{GROUP}"]',
            EDGE_AGENT_STATE_DIR=str(state),
            EDGE_AGENT_METRICS__ENABLED="false",
            EDGE_AGENT_CALLS__HOST_ADDRESSES='["127.0.0.1"]',
            EDGE_AGENT_CALLS__MDNS="false",
            EDGE_AGENT_CALLS__PRELOAD="true" if case.preload else "false",
            EDGE_AGENT_VIDEO__WIDTH="640",
            EDGE_AGENT_VIDEO__HEIGHT="480",
            EDGE_AGENT_VIDEO__FPS="30",
        )
        if case.embedded:
            env["EDGE_AGENT_HUB__HOST"] = "127.0.0.1"
            env["EDGE_AGENT_HUB__PORT"] = "0"
        else:
            env["EDGE_AGENT_CONNECT__URL"] = self.hub.ws_url
            env["EDGE_AGENT_CONNECT__TOKEN"] = self.hub.tokens.issue(self.device, 3600)
        return env

    @contextlib.asynccontextmanager
    async def _caller(
        self, case: Case, agent: AgentProcess, state: Path
    ) -> AsyncIterator[tuple[RealtimeClient, str]]:
        """A caller connected to the agent's hub, once the agent has joined its group."""
        if case.embedded:
            assert agent.hub_url is not None
            async with asyncio.timeout(WAIT):
                url = (await agent.hub_url).replace("http", "ws", 1) + "/ws"
            device_id, token = await asyncio.to_thread(_mint_viewer, state)
        else:
            url, device_id = self.hub.ws_url, self.device.user_id
            token = self.hub.tokens.issue(self.viewer, 3600)
        inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
        client = RealtimeClient(url, token=token, rtc_factory=PeerFactory(LOOPBACK))
        try:
            await client.connect_realtime(inbox.put_nowait)
            await client.join_realtime(GROUP)
            cid = await _device_connection(client, inbox, device_id)
            yield client, cid
        finally:
            await client.close_realtime()


async def _device_connection(
    client: RealtimeClient, inbox: asyncio.Queue[RealtimeMessage], device_id: str
) -> str:
    """The device's connection id, waiting for it to join the group if it has not yet."""
    async with asyncio.timeout(WAIT):
        while True:
            listing = await client.get_realtime_users(GROUP, device_id)
            if listing["list"]:
                cid: str = listing["list"][0]["connection_id"]
                return cid
            while (await inbox.get()).sender != device_id:
                pass


def _admin_exists(state: Path) -> None:
    """The embedded hub's admin, made beforehand (see the module docstring)."""
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = AccountStore(state / "accounts.db")
    try:
        store.add("admin", "bench-admin-password", Role.ADMIN)
    finally:
        store.close()


def _mint_viewer(state: Path) -> tuple[str, str]:
    """(the device's user id, a token for a viewer) from the embedded hub's state."""
    store = AccountStore(state / "accounts.db")
    try:
        device = store.get_by_name(DEVICE)
        viewer = store.get_by_name("viewer") or store.add("viewer", None, Role.USER, groups=[GROUP])
    finally:
        store.close()
    if device is None:
        raise BenchError("the embedded hub has no device account")
    return device.user_id, TokenIssuer.from_state_dir(state).issue(viewer, 3600)


def _figure(values: list[float | None]) -> str:
    done = sorted(v for v in values if v is not None)
    if not done:
        return "-"
    return f"{statistics.median(done):.1f} ({done[0]:.1f}-{done[-1]:.1f})"


def report(cases: list[Case]) -> list[str]:
    """Rows of figure / lazy / preload: median (min-max) over the runs."""
    rows: list[tuple[str, Callable[[Life], float | None]]] = [
        ("start -> READY (ms)", lambda life: life.ready_ms),
        ("idle RSS (MB)", lambda life: life.idle_rss_mb),
        ("idle peak RSS, VmHWM (MB)", lambda life: life.idle_hwm_mb),
        ("first call: offer -> first frame (ms)", lambda life: life.first_frame_ms),
        ("  of which the media stack loading (ms)", lambda life: life.load_ms),
        ("RSS during the call (MB)", lambda life: life.call_rss_mb),
    ]
    lines = [f"{'figure':<44} {'lazy (default)':>22} {'preload (before)':>22}  goal"]
    for embedded in (False, True):
        lazy, eager = (next(c for c in cases if (c.embedded, c.preload) == (embedded, p))
                       for p in (False, True))  # fmt: skip
        lines.append("embedded hub" if embedded else "remote hub")
        for name, value in rows:
            goal_key = (
                "idle RSS, embedded hub (MB)" if embedded and name == "idle RSS (MB)" else name
            )
            goal = GOALS.get(goal_key)
            lines.append(
                f"  {name:<42} {_figure([value(x) for x in lazy.lives]):>22} "
                f"{_figure([value(x) for x in eager.lives]):>22}"
                + (f"  <= {goal}" if goal is not None else "")
            )
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="agent processes per case")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before RSS")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cases = [Case(embedded, preload) for embedded in (False, True) for preload in (False, True)]
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as directory:
        bench = Bench(Path(directory), args.settle)
        await bench.start()
        try:
            for _ in range(args.runs):  # interleaved, so both modes share the machine's mood
                for case in cases:
                    case.lives.append(await bench.life(case))
        finally:
            await bench.stop()
    print(f"{args.runs} agent processes per case; median (min-max)")
    print("\n".join(report(cases)))


if __name__ == "__main__":
    asyncio.run(main())
