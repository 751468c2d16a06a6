"""Real processes for the recovery tests: ``edge-agent hub`` and ``edge-agent run``, their
settings files, accounts, and the ways a test talks to them (control socket, /metrics,
``poll`` until what they report holds)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.events.control import control_socket_path
from agent.hub.accounts import AccountStore, Role
from agent.hub.tokens import TokenIssuer

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
POLL_TIMEOUT = 30.0
_LISTENING = re.compile(r"hub listening on http://127\.0\.0\.1:(\d+)")


def clean_env(home: Path) -> dict[str, str]:
    """The environment without anything that would configure the child from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    for key in ("STATE_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        env.pop(key, None)
    env["XDG_STATE_HOME"] = str(home / "xdg")
    return env


class Process:
    """A child ``python -m agent.cli ...`` whose log (stderr) is kept and can be awaited."""

    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.home = home
        self.log: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._line = asyncio.Condition()

    async def spawn(self, *args: str) -> None:
        assert self._proc is None, f"{self.name} is running"
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=clean_env(self.home), cwd=ROOT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self._proc))

    async def wait_log(self, pattern: re.Pattern[str], *, after: int = 0) -> re.Match[str]:
        """The first log line from line ``after`` on that matches ``pattern``."""
        async with asyncio.timeout(START_TIMEOUT), self._line:
            while True:
                for line in self.log[after:]:
                    if found := pattern.search(line):
                        return found
                after = len(self.log)
                if self._reader is None or self._reader.done():  # its stderr has ended
                    raise AssertionError(f"{self.name} exited:\n" + "".join(self.log[-40:]))
                await self._line.wait()

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no flush, connections just die."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> int:
        """SIGTERM, the clean stop; its exit code."""
        return await self._end(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _end(self, sig: int) -> int:
        proc, reader = self._proc, self._reader
        if proc is None:
            return 0
        self._proc = self._reader = None
        if proc.returncode is None:
            proc.send_signal(sig)
        async with asyncio.timeout(START_TIMEOUT):
            code = await proc.wait()
            if reader is not None:
                await reader
        if sig == signal.SIGTERM:
            assert not any("Traceback" in line for line in self.log), "".join(self.log)
        return code

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            async with self._line:
                self.log.append(line.decode(errors="replace"))
                self._line.notify_all()
        async with self._line:
            self._line.notify_all()


class HubProcess(Process):
    """``edge-agent hub`` with a settings file, on a fixed port once it has one."""

    def __init__(self, home: Path, config: Path, state_dir: Path) -> None:
        super().__init__("hub", home)
        self.config = config
        self.state_dir = state_dir
        self.port = 0

    async def start(self) -> None:
        mark = len(self.log)
        await self.spawn(
            "hub", "--config", str(self.config), "--state-dir", str(self.state_dir),
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info",
        )  # fmt: skip
        found = await self.wait_log(_LISTENING, after=mark)
        self.port = int(found.group(1))

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def metric(self, name: str) -> float:
        """One unlabelled sample of the hub's /metrics."""
        async with httpx.AsyncClient(base_url=self.http_url, timeout=10) as http:
            text = (await http.get("/metrics")).text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert found is not None, f"{name} is not in /metrics"
        return float(found.group(1))


class AgentProcess(Process):
    """``edge-agent run`` with a settings file; its control socket is how a test triggers."""

    def __init__(self, home: Path, config: Path, state_dir: Path) -> None:
        super().__init__("agent", home)
        self.config = config
        self.socket = control_socket_path(state_dir)

    async def start(self) -> None:
        mark = len(self.log)
        await self.spawn("run", "--config", str(self.config), "--log-level", "info")
        await self.wait_log(re.compile(r"control socket at"), after=mark)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One control request, over the socket as ``edge-agent trigger`` sends it."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            async with asyncio.timeout(START_TIMEOUT):
                answer: dict[str, Any] = json.loads(await reader.readline())
        finally:
            writer.close()
        return answer

    async def trigger(self, name: str) -> dict[str, Any]:
        answer = await self.request({"op": "trigger", "name": name})
        assert answer.get("outcome") == "fired", answer
        return answer

    async def outbox_depth(self) -> int:
        status = await self.request({"op": "status"})
        return int(status["outbox"]["depth"])


@dataclass
class Account:
    user_id: str
    token: str


def make_accounts(state_dir: Path, *names: tuple[str, Role]) -> dict[str, Account]:
    """Accounts granted the group ``home``, made in the hub's state directory, with tokens."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = AccountStore(state_dir / "accounts.db")
    issuer = TokenIssuer.from_state_dir(state_dir)
    made = {}
    try:
        for name, role in names:
            account = store.add(name, None, role, groups=["home"])
            made[name] = Account(account.user_id, issuer.issue(account, 3600))
    finally:
        store.close()
    return made


def hub_config(path: Path, *, ca_file: Path, retry_cap: float = 0.5) -> Path:
    """Hub settings: the loopback push service is trusted, retries are quick."""
    path.write_text(
        f"""
[push]
subject = "mailto:ops@example.com"
allow_private_endpoints = true
ca_file = "{ca_file}"
retry_initial_seconds = 0.05
retry_cap_seconds = {retry_cap}
timeout_seconds = 5
"""
    )
    return path


def agent_config(path: Path, *, state_dir: Path, hub_url: str, token: str) -> Path:
    """A doorbell: ``ring`` posts to ``home`` and alerts alice; no calls, no metrics port."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token_file = state_dir / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    path.write_text(
        f"""
name = "door"
groups = ["home"]
state_dir = "{state_dir}"

[connect]
url = "{hub_url}"
token_file = "{token_file}"

[calls]
enabled = false

[metrics]
enabled = false

[push.outbox]
retry_initial_seconds = 0.05
retry_cap_seconds = 0.5

[[events]]
name = "ring"
trigger = {{ type = "manual" }}
actions = [
  {{ type = "post" }},
  {{ type = "push", to = ["alice"], title = "Ring", body = "at {{time}}", urgency = "high" }},
]
cooldown = 0
"""
    )
    return path


async def poll(
    check: Callable[[], Awaitable[bool]], what: str, within: float = POLL_TIMEOUT
) -> None:
    """Ask other processes until ``check`` holds (they cannot tell us by themselves); an
    ``AssertionError`` naming ``what`` if it does not within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while not await check():  # noqa: ASYNC110 (other processes: nothing to await)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within:g} s: {what}") from None


async def equals(value: Awaitable[float], expected: float) -> bool:
    """A ``poll`` check: the figure a process reports is ``expected``."""
    return await value == expected


async def at_least(value: Awaitable[float], minimum: float) -> bool:
    """A ``poll`` check: the figure a process reports is ``minimum`` or more."""
    return await value >= minimum
