"""The daemon's supervision: parts that fail while running or while stopping.

The supervisor runs real tasks; the agent runs with an embedded hub on loopback and a real
sd_notify socket, and must close everything whatever a part raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.config import Settings
from agent.daemon import Agent
from agent.supervisor import Policy, Supervisor, closing
from agent.systemd import Notifier

WAIT = 30.0


def fast() -> Iterator[float]:
    return itertools.repeat(0.0)


async def test_a_part_that_fails_is_restarted_and_the_others_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    third = asyncio.Event()
    steady = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"boom {runs}")
        third.set()
        await asyncio.Event().wait()

    async def calm() -> None:
        steady.set()
        await asyncio.Event().wait()

    fatal: list[str] = []
    supervisor = Supervisor(on_fatal=lambda name, _exc: fatal.append(name), delays=fast)
    supervisor.start("flaky", flaky)
    supervisor.start("calm", calm)
    async with asyncio.timeout(WAIT):
        await third.wait()
        await steady.wait()
    assert supervisor.restarts == {"flaky": 2}
    assert sorted(supervisor.running) == ["calm", "flaky"]
    assert fatal == []
    assert "flaky failed" in caplog.text
    assert "boom 1" in caplog.text
    await supervisor.aclose()
    assert supervisor.running == []


async def test_a_stop_policy_failure_reaches_on_fatal_once() -> None:
    failed: asyncio.Queue[str] = asyncio.Queue()

    async def broken() -> None:
        raise OSError("the watchdog socket is gone")

    supervisor = Supervisor(on_fatal=lambda name, _exc: failed.put_nowait(name), delays=fast)
    supervisor.start("watchdog", broken, policy=Policy.STOP)
    async with asyncio.timeout(WAIT):
        assert await failed.get() == "watchdog"
    await asyncio.sleep(0)
    assert failed.empty()
    assert supervisor.restarts == {}
    await supervisor.aclose()


async def test_close_cancels_parts_even_one_that_raises_while_stopping() -> None:
    cancelled: list[str] = []
    started = asyncio.Event()

    async def stubborn() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            cancelled.append("stubborn")
            raise RuntimeError("cannot stop cleanly")

    async def polite() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.append("polite")

    supervisor = Supervisor(on_fatal=lambda *_: None, delays=fast)
    supervisor.start("stubborn", stubborn)
    supervisor.start("polite", polite)
    async with asyncio.timeout(WAIT):
        await started.wait()
        await supervisor.aclose()
    assert sorted(cancelled) == ["polite", "stubborn"]


async def test_a_close_step_that_raises_does_not_end_the_teardown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []

    async def close(name: str, *, fails: bool = False) -> None:
        closed.append(name)
        if fails:
            raise RuntimeError(f"{name} would not close")

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(closing("first", lambda: close("first")))
        stack.push_async_callback(closing("middle", lambda: close("middle", fails=True)))
        stack.push_async_callback(closing("last", lambda: close("last")))
    assert closed == ["last", "middle", "first"]
    assert "closing middle failed; closing the rest" in caplog.text


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    with tempfile.TemporaryDirectory(prefix="sd-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield path, sock
        finally:
            sock.close()


def received(sock: socket.socket) -> list[str]:
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(sock.recv(4096).decode())
    return got


async def test_a_part_failing_for_good_stops_the_agent_and_everything_is_closed(
    tmp_path: Path, notify_socket: tuple[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path, sock = notify_socket
    settings = Settings.model_validate(
        {
            "name": "porch",
            "groups": ["home"],
            "state_dir": str(tmp_path / "state"),
            "hub": {"port": 0},
            "metrics": {"enabled": False},
            "calls": {"enabled": False},
        }
    )
    agent = Agent(settings, notifier=Notifier(path))
    running = asyncio.create_task(agent.run())
    async with asyncio.timeout(WAIT):
        await agent.wait_connected()
    supervisor = agent.supervisor
    assert supervisor is not None
    assert agent.hub is not None
    health = f"{agent.hub.http_url}/health"

    stopping_fails = asyncio.Event()

    async def fails_while_stopping() -> None:
        try:
            stopping_fails.set()
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("a part that raises as it is cancelled")

    async def fails_for_good() -> None:
        await stopping_fails.wait()
        raise RuntimeError("a part that cannot go on")

    supervisor.start("stubborn", fails_while_stopping)
    supervisor.start("essential", fails_for_good, policy=Policy.STOP)
    async with asyncio.timeout(WAIT):
        await running  # the agent stops by itself, without an exception
    assert agent.failed_part == "essential"
    assert "essential failed for good; stopping the agent" in caplog.text
    # The embedded hub was stopped after the failures: nothing listens any more.
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(health)
    messages = received(sock)
    assert any(m.startswith("READY=1") for m in messages)
    assert any("STOPPING=1" in m for m in messages)
