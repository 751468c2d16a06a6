"""A real redis-server for tests: on a free loopback port, in a temporary directory,
without persistence (a restart starts empty, like a Redis that lost its data)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

START_SECONDS = 20.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (redis-server cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` bound to 127.0.0.1 only; ``restart`` keeps its port."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is missing: run scripts/setup --test"
        self.binary = binary
        self.directory = directory
        self.password = password
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL hub nodes are given (without the password)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(
            [self.binary, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_SECONDS
        while not self.command("PING").startswith((b"+PONG", b"-NOAUTH")):
            log = self.directory / "redis.log"
            assert self._proc.poll() is None, log.read_text() if log.exists() else "exited"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.02)

    def command(self, *args: str) -> bytes:
        """One inline command; its reply's first line (b"" if the server is not there)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                stream = sock.makefile("rwb")
                if self.password is not None:
                    stream.write(f"AUTH {self.password}\r\n".encode())
                    stream.flush()
                    stream.readline()
                stream.write((" ".join(args) + "\r\n").encode())
                stream.flush()
                return stream.readline().rstrip(b"\r\n")
        except OSError:
            return b""

    def stop(self) -> None:
        """SIGTERM and wait (a SIGKILL if it takes too long)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(START_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def restart(self) -> None:
        """Stop and start again on the same port: every key and subscription is gone."""
        await asyncio.to_thread(self.stop)
        await asyncio.to_thread(self.start)
