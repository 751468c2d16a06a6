"""The parts of a NAT test, each a real process in its namespace of :class:`NatLab`.

* :class:`Coturn`: Debian's coturn on the public host (192.0.2.1), ``use-auth-secret``
  with a secret made for the run, private peer ranges denied as in production;
* :class:`HubProcess`: ``edge-agent hub`` on the public host, ``[hub.turn]`` sharing that
  secret through a 0600 file, STUN from ``[[hub.ice_servers]]``;
* :class:`DeviceProcess`: ``edge-agent run`` behind the home NAT, connected to that hub,
  with a test pattern, a tone, and its talk-back going to a WAV file;
* :func:`run_caller`: ``tests/nat/caller.py`` (a Python caller) behind the carrier NAT.

Every process writes its output to a log in the run's directory (shown when a test
fails) and is awaited by what it prints, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .lab import SERVER_IP, NatLab

__all__ = [
    "HUB_PORT",
    "HUB_URL",
    "PASSWORD",
    "TURN_PORT",
    "WAIT",
    "Caller",
    "Coturn",
    "DeviceProcess",
    "HubProcess",
    "LoggedProcess",
]

ROOT: Final = Path(__file__).resolve().parents[2]
CALLER: Final = Path(__file__).with_name("caller.py")
WAIT: Final = 30.0  # generous: the machine is shared
HUB_PORT: Final = 8080  # a fresh namespace has every port free
HUB_URL: Final = f"http://{SERVER_IP}:{HUB_PORT}"
TURN_PORT: Final = 3478
PASSWORD: Final = "a-long-test-password"
# RFC 1918 and RFC 6598 (carrier-grade NAT) ranges: never relayed to, as in production.
DENIED_PEERS: Final = (
    "10.0.0.0-10.255.255.255",
    "172.16.0.0-172.31.255.255",
    "192.168.0.0-192.168.255.255",
    "100.64.0.0-100.127.255.255",
)


class LoggedProcess:
    """A process whose output lines are kept, written to a log, and can be waited for."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def start(self, command: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        """Start ``command``; stdout and stderr both go to the log."""
        self.process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())

    async def wait_for(self, pattern: str, *, seconds: float = WAIT) -> re.Match[str]:
        """The first line matching ``pattern``, waiting for it if needed."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := regex.search(line))), None)

        try:
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(lambda: found() is not None or self.exited)
        except TimeoutError:
            raise AssertionError(f"{self.name} never printed {pattern!r}:\n{self.tail()}") from None
        match = found()
        if match is None:
            raise AssertionError(f"{self.name} exited before {pattern!r}:\n{self.tail()}")
        return match

    @property
    def exited(self) -> bool:
        """Whether the process has ended (its output read to the end)."""
        return self._reader is not None and self._reader.done()

    def tail(self, count: int = 30) -> str:
        """The last lines it printed."""
        return "\n".join(self.lines[-count:])

    async def stop(self) -> None:
        """SIGTERM (the whole process group: ``ip netns exec`` and its child), then SIGKILL."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with self.log.open("w") as log:
            while raw := await self.process.stdout.readline():
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                async with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()


class Coturn(LoggedProcess):
    """coturn on the public host, checking TURN REST API credentials with ``secret``."""

    def __init__(self, lab: NatLab, directory: Path) -> None:
        super().__init__("coturn", directory / "coturn.log")
        self.lab = lab
        self.directory = directory
        self.secret = secrets.token_hex(24)
        self.realm = "edge-agent.test"

    async def run(self) -> None:
        """Write its configuration (0600: it holds the secret) and start it."""
        config = self.directory / "turnserver.conf"
        lines = [
            f"listening-ip={SERVER_IP}",
            f"relay-ip={SERVER_IP}",
            f"listening-port={TURN_PORT}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            f"realm={self.realm}",
            "fingerprint",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-multicast-peers",
            "min-port=49152",
            "max-port=65535",
            f"userdb={self.directory / 'turndb'}",
            f"pidfile={self.directory / 'turnserver.pid'}",
            "log-file=stdout",
            "simple-log",
            *(f"denied-peer-ip={peers}" for peers in DENIED_PEERS),
        ]
        config.touch(mode=0o600)
        config.write_text("\n".join(lines) + "\n")
        await self.start([*self.lab.prefix("pub"), "turnserver", "-c", str(config)])
        await self.wait_for(r"Total General servers")

    def secret_file(self) -> Path:
        """The secret in a 0600 file, as the hub reads it (``[hub.turn] secret_file``)."""
        path = self.directory / "turn-secret"
        path.touch(mode=0o600)
        path.write_text(self.secret + "\n")
        return path


class HubProcess(LoggedProcess):
    """``edge-agent hub`` on the public host with ``[hub.turn]`` and a STUN server."""

    def __init__(self, lab: NatLab, directory: Path) -> None:
        super().__init__("hub", directory / "hub.log")
        self.lab = lab
        self.state = directory / "hub-state"
        self.config = directory / "hub.toml"
        self.env = _clean_env(EDGE_AGENT_STATE_DIR=str(self.state))

    async def run(
        self, coturn: Coturn, *, turn: bool = True, ttl: str = "1h", relay_policy: bool = False
    ) -> None:
        """Write its settings (``[hub.turn]`` unless ``turn`` is false: STUN only), make the
        accounts and start it."""
        turn_section = (
            "[hub.turn]\n"
            f'urls = ["turn:{SERVER_IP}:{TURN_PORT}?transport=udp", '
            f'"turn:{SERVER_IP}:{TURN_PORT}?transport=tcp"]\n'
            f'secret_file = "{coturn.secret_file()}"\n'
            f'ttl = "{ttl}"\n\n'
        )
        self.config.write_text(
            "[hub]\n"
            f'host = "{SERVER_IP}"\n'
            f"port = {HUB_PORT}\n\n"
            "[[hub.ice_servers]]\n"
            f'urls = ["stun:{SERVER_IP}:{TURN_PORT}"]\n\n'
            + (turn_section if turn else "")
            + "[calls]\n"
            f'ice_transport_policy = "{"relay" if relay_policy else "all"}"\n'
        )
        await self.cli("user", "add", "porch", "--role", "device", "--groups", "devices")
        await self.cli(
            "user", "add", "alice", "--groups", "devices", "--password-stdin", stdin=PASSWORD
        )
        command = [sys.executable, "-m", "agent.cli", "hub", "--config", str(self.config)]
        await self.start([*self.lab.prefix("pub"), *command], env=self.env)
        await self.wait_for(r"hub listening on")

    async def token(self, name: str) -> str:
        """A fresh token for account ``name``."""
        return await self.cli("token", "--user", name)

    async def cli(self, *args: str, stdin: str = "") -> str:
        """``edge-agent ARGS`` on the hub's state (outside the namespaces: files only)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", *args, "--config", str(self.config),
            cwd=ROOT, env=self.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate(stdin.encode() + b"\n" if stdin else b"")
        if process.returncode != 0:
            raise AssertionError(f"edge-agent {' '.join(args)} failed: {err.decode()}")
        return out.decode().strip()


class DeviceProcess(LoggedProcess):
    """``edge-agent run`` behind the home NAT, a client of the hub on the public host."""

    def __init__(self, lab: NatLab, directory: Path) -> None:
        super().__init__("device", directory / "device.log")
        self.lab = lab
        self.state = directory / "device-state"
        self.talkback = directory / "talkback.wav"

    async def run(self, token: str, **settings: str) -> None:
        """Start it (``settings``: more EDGE_AGENT_* variables) and wait for its hub link."""
        env = _clean_env(
            **{
                "EDGE_AGENT_LOG_LEVEL": "info",
                **settings,
                "EDGE_AGENT_STATE_DIR": str(self.state),
                "EDGE_AGENT_NAME": "porch",
                "EDGE_AGENT_CONNECT__URL": f"ws://{SERVER_IP}:{HUB_PORT}/ws",
                "EDGE_AGENT_CONNECT__TOKEN": token,
                "EDGE_AGENT_VIDEO__WIDTH": "320",
                "EDGE_AGENT_VIDEO__HEIGHT": "240",
                "EDGE_AGENT_VIDEO__FPS": "15",
                "EDGE_AGENT_AUDIO__SINK": "file",
                "EDGE_AGENT_AUDIO__FILE": str(self.talkback),
            }
        )
        command = [sys.executable, "-m", "agent.cli", "run"]
        await self.start([*self.lab.prefix("dev"), *command], env=env)
        await self.wait_for(r"hub link \S+ -> connected")

    async def status(self) -> dict[str, Any]:
        """``edge-agent status --json`` (over its control socket: a file, no namespace)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "status", "--json", "--state-dir", str(self.state),
            cwd=ROOT, env=_clean_env(), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        if process.returncode != 0:
            raise AssertionError(f"edge-agent status failed: {err.decode()}")
        answer: dict[str, Any] = json.loads(out)
        return answer

    async def metrics(self) -> str:
        """Its Prometheus text, fetched inside its namespace (it listens on 127.0.0.1)."""
        fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9464/metrics').read().decode())"
        process = await asyncio.create_subprocess_exec(
            *self.lab.prefix("dev"), sys.executable, "-c", fetch,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        if process.returncode != 0:
            raise AssertionError(f"metrics not fetched: {err.decode()}")
        return out.decode()


class Caller(LoggedProcess):
    """``tests/nat/caller.py`` in the viewer's namespace (or ``role``'s): JSON lines."""

    def __init__(self, lab: NatLab, directory: Path, tag: str, *, role: str = "view") -> None:
        super().__init__(f"caller {tag}", directory / f"caller-{tag}.log")
        self.lab = lab
        self.role = role

    async def call(self, token: str, mode: str, *args: str) -> dict[str, Any]:
        """Start a call in ``mode`` and return its first report (the call is kept up)."""
        command = [sys.executable, str(CALLER), HUB_URL, token, mode, *args]
        await self.start([*self.lab.prefix(self.role), *command], env=_clean_env())
        return await self.report("call")

    async def report(self, kind: str, *, seconds: float = 60.0) -> dict[str, Any]:
        """The caller's JSON line ``{"report": kind, ...}``."""
        match = await self.wait_for(rf'^\{{"report": "{kind}".*\}}$', seconds=seconds)
        result: dict[str, Any] = json.loads(match.group(0))
        return result

    async def finish(self) -> dict[str, Any]:
        """Hang up (a line on its stdin) and return its last report."""
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(b"hangup\n")
        await self.process.stdin.drain()
        return await self.report("done")


def _clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **values}
