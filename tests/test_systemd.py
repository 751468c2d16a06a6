"""sd_notify: the pure encoder, a real notify socket, the watchdog and the status board."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import signal
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.systemd import (
    MAX_STATUS_CHARS,
    AgentStatus,
    HubLink,
    Notifier,
    NotifyError,
    StatusBoard,
    monotonic_usec,
    notify_address,
    notify_message,
    parse_watchdog_usec,
    run_watchdog,
    start_watchdog,
    status_text,
    watchdog_interval,
)

# --- pure encoder -----------------------------------------------------------------------


def test_encoder_joins_fields_in_order_with_newlines() -> None:
    assert notify_message(READY=1, STATUS="hub connected") == b"READY=1\nSTATUS=hub connected"


def test_encoder_maps_booleans_to_digits() -> None:
    assert notify_message(WATCHDOG=True, STOPPING=False) == b"WATCHDOG=1\nSTOPPING=0"


def test_encoder_keeps_unicode_as_utf8() -> None:
    assert notify_message(STATUS="caméra ok") == "STATUS=caméra ok".encode()


def test_reloading_carries_monotonic_usec() -> None:
    assert notify_message(RELOADING=1, MONOTONIC_USEC=1234) == b"RELOADING=1\nMONOTONIC_USEC=1234"


def test_reloading_without_monotonic_usec_is_refused() -> None:
    with pytest.raises(NotifyError, match="MONOTONIC_USEC"):
        notify_message(RELOADING=1)


def test_reloading_zero_needs_no_timestamp() -> None:
    assert notify_message(RELOADING=0) == b"RELOADING=0"


@pytest.mark.parametrize("value", ["two\nlines", "nul\0byte"])
def test_encoder_refuses_multiline_values(value: str) -> None:
    with pytest.raises(NotifyError, match="STATUS"):
        notify_message(STATUS=value)


@pytest.mark.parametrize("name", ["ready", "1READY", "READY-NOW", "_READY", ""])
def test_encoder_refuses_bad_names(name: str) -> None:
    with pytest.raises(NotifyError, match="field name"):
        notify_message(**{name: 1})


def test_encoder_needs_a_field() -> None:
    with pytest.raises(NotifyError, match="at least one"):
        notify_message()


def test_notify_error_is_a_value_error() -> None:
    assert issubclass(NotifyError, ValueError)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@sd-notify", b"\0sd-notify"),
        (None, None),
        ("", None),
        ("@", None),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_notify_address(value: str | None, address: str | bytes | None) -> None:
    assert notify_address(value) == address


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),
        ("30000000", "4242", 15.0),
        ("30000000", "4243", None),
        ("1000", "", 0.0005),
        (None, "4242", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_our_pid(
    usec: str | None, pid: str | None, interval: float | None
) -> None:
    assert parse_watchdog_usec(usec, pid, 4242) == interval


def test_watchdog_interval_reads_the_environment() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 1.0
    assert watchdog_interval({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    assert before <= value <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# --- status words ------------------------------------------------------------------------


def test_status_text_tells_the_story() -> None:
    status = AgentStatus(
        hub=HubLink.CONNECTED,
        groups=("devices", "porch"),
        calls=1,
        sensors=(("door", True), ("temp", False)),
        outbox=3,
    )
    assert status_text(status) == (
        "hub connected; groups devices, porch; 1 active call; sensors 1/2 up (down: temp); outbox 3"
    )


def test_status_text_when_retrying_and_idle() -> None:
    status = AgentStatus(hub=HubLink.RETRYING, retry_in=7.6)
    assert status_text(status) == (
        "hub unreachable, retrying in 8s; no groups; 0 active calls; outbox 0"
    )
    assert status_text(AgentStatus(hub=HubLink.RETRYING)).startswith("hub unreachable, retrying;")


def test_status_text_puts_the_note_first_and_stays_one_line() -> None:
    status = AgentStatus(hub=HubLink.EMBEDDED, note="reload failed:\nagent.toml line 3")
    assert status_text(status).startswith("reload failed: agent.toml line 3; hub embedded;")


def test_status_text_shortens_long_lists() -> None:
    groups = tuple(f"group-{i}" for i in range(8))
    sensors = tuple((f"s{i}", False) for i in range(5))
    text = status_text(AgentStatus(groups=groups, sensors=sensors))
    assert "group-4 (+3 more)" in text
    assert "group-5" not in text
    assert "sensors 0/5 up (down: s0, s1, s2 +2 more)" in text


def test_status_text_is_capped() -> None:
    text = status_text(AgentStatus(note="x" * 1000))
    assert len(text) == MAX_STATUS_CHARS
    assert text.endswith("...")


# --- a real notify socket ----------------------------------------------------------------


# Linux's SO_TIMESTAMPNS (asm-generic/socket.h); the socket module does not export it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


@dataclass
class Datagram:
    """One notification as received, with the kernel's arrival time."""

    fields: dict[str, str]
    arrived: float


class NotifyReceiver:
    """The service manager's end: a bound AF_UNIX datagram socket with arrival stamps."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self._queue: deque[Datagram] = deque()
        self.seen: list[Datagram] = []  # every datagram handed out by next(), in order
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)

    def drain(self) -> list[Datagram]:
        """Read every datagram queued in the kernel right now, without waiting."""
        got: list[Datagram] = []
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except BlockingIOError:
                break
            got.append(Datagram(_parse(data), _arrival(ancdata)))
        self._queue.extend(got)
        return got

    async def next(self, within: float = 10.0) -> Datagram:
        """The next datagram, waiting for it if need be."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while not self._queue and not self.drain():
                readable = loop.create_future()
                loop.add_reader(self.sock, readable.set_result, None)
                try:
                    await readable
                finally:
                    loop.remove_reader(self.sock)
        datagram = self._queue.popleft()
        self.seen.append(datagram)
        return datagram

    async def wait_for(self, key: str, within: float = 10.0) -> Datagram:
        """The next datagram carrying ``key``, skipping the others."""
        async with asyncio.timeout(within):
            while True:
                datagram = await self.next(within)
                if key in datagram.fields:
                    return datagram


def _parse(data: bytes) -> dict[str, str]:
    text = data.decode()
    assert "\n\n" not in text
    return dict(line.split("=", 1) for line in text.split("\n"))


def _arrival(ancdata: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanos = struct.unpack("qq", data[:16])
            return int(seconds) + int(nanos) / 1e9
    raise AssertionError("no arrival time on the datagram")


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sd-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            yield NotifyReceiver(sock, path)
        finally:
            sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[NotifyReceiver]:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        yield NotifyReceiver(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture
def notifier(receiver: NotifyReceiver) -> Iterator[Notifier]:
    with Notifier(receiver.env_value) as notifier:
        yield notifier


async def test_notifier_sends_ready_status_watchdog_stopping(receiver: NotifyReceiver) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": receiver.env_value})
    assert notifier.enabled
    assert notifier.ready(status="starting up")
    assert notifier.status("hub connected")
    assert notifier.watchdog()
    assert notifier.stopping()
    notifier.close()
    got = [(await receiver.next()).fields for _ in range(4)]
    assert got == [
        {"READY": "1", "STATUS": "starting up"},
        {"STATUS": "hub connected"},
        {"WATCHDOG": "1"},
        {"STOPPING": "1"},
    ]


async def test_notifier_reloading_stamps_the_monotonic_clock(
    receiver: NotifyReceiver, notifier: Notifier
) -> None:
    before = monotonic_usec()
    assert notifier.reloading(status="reloading settings")
    fields = (await receiver.next()).fields
    assert fields["RELOADING"] == "1"
    assert fields["STATUS"] == "reloading settings"
    assert before <= int(fields["MONOTONIC_USEC"]) <= monotonic_usec()


async def test_notifier_flattens_status_lines(receiver: NotifyReceiver, notifier: Notifier) -> None:
    notifier.status("config error:\n  line 3")
    assert (await receiver.next()).fields == {"STATUS": "config error: line 3"}


async def test_notifier_reaches_an_abstract_socket(abstract_receiver: NotifyReceiver) -> None:
    assert abstract_receiver.env_value.startswith("@")
    with Notifier.from_environ({"NOTIFY_SOCKET": abstract_receiver.env_value}) as notifier:
        assert notifier.ready()
    assert (await abstract_receiver.next()).fields == {"READY": "1"}


def test_notifier_without_socket_is_a_silent_no_op(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert caplog.records == []
    # Bad input is still bad input, even with nowhere to send it.
    with pytest.raises(NotifyError):
        notifier.send(STATUS="a\nb")


def test_notifier_to_a_missing_socket_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        Notifier(str(tmp_path / "gone")) as notifier,
        caplog.at_level(logging.WARNING, logger="agent.systemd"),
    ):
        assert not notifier.ready()
        assert not notifier.watchdog()
    assert len(caplog.records) == 1
    assert "cannot notify systemd" in caplog.records[0].getMessage()


def test_from_environ_can_hide_the_socket_from_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    notifier = Notifier.from_environ(unset=True)
    assert notifier.enabled
    assert "NOTIFY_SOCKET" not in os.environ


# --- watchdog ----------------------------------------------------------------------------


async def test_watchdog_pings_at_half_the_timeout(
    receiver: NotifyReceiver, notifier: Notifier
) -> None:
    interval = watchdog_interval({"WATCHDOG_USEC": "200000"})
    assert interval == 0.1
    task = asyncio.create_task(run_watchdog(notifier, interval))
    try:
        pings = [await receiver.wait_for("WATCHDOG") for _ in range(5)]
    finally:
        task.cancel()
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(pings)]
    # Never faster than the interval (the kernel stamps arrival); on average well inside
    # the timeout, with room for a loaded machine.
    assert min(gaps) >= interval * 0.9
    assert sum(gaps) / len(gaps) < interval * 4


async def test_watchdog_pings_stop_while_the_loop_is_blocked(
    receiver: NotifyReceiver, notifier: Notifier
) -> None:
    interval = 0.05
    task = asyncio.create_task(run_watchdog(notifier, interval))
    try:
        for _ in range(2):
            await receiver.wait_for("WATCHDOG")
        receiver.drain()
        time.sleep(interval * 6)  # noqa: ASYNC251 - the point: a stalled event loop
        assert receiver.drain() == []  # not a single ping while the loop was stuck
        resumed = await receiver.wait_for("WATCHDOG")
        assert resumed.fields == {"WATCHDOG": "1"}
    finally:
        task.cancel()


async def test_watchdog_withholds_pings_while_unhealthy(
    receiver: NotifyReceiver, notifier: Notifier
) -> None:
    healthy = asyncio.Event()
    ticks = 0

    def check() -> bool:
        nonlocal ticks
        ticks += 1
        if ticks >= 3:
            healthy.set()
        return healthy.is_set()

    task = asyncio.create_task(run_watchdog(notifier, 0.01, healthy=check))
    try:
        await receiver.wait_for("WATCHDOG")
    finally:
        task.cancel()
    assert ticks >= 3  # the first two checks said unhealthy, and nothing was sent for them


async def test_start_watchdog_only_when_asked(receiver: NotifyReceiver, notifier: Notifier) -> None:
    assert start_watchdog(notifier, {}) is None
    assert start_watchdog(Notifier(None), {"WATCHDOG_USEC": "20000"}) is None
    task = start_watchdog(notifier, {"WATCHDOG_USEC": "20000"})
    assert task is not None
    try:
        assert (await receiver.wait_for("WATCHDOG")).fields == {"WATCHDOG": "1"}
    finally:
        task.cancel()


async def test_watchdog_refuses_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        await run_watchdog(Notifier(None), 0)


async def test_watchdog_ends_on_cancel(receiver: NotifyReceiver, notifier: Notifier) -> None:
    task = asyncio.create_task(run_watchdog(notifier, 0.01))
    await receiver.wait_for("WATCHDOG")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- status board ------------------------------------------------------------------------


async def test_status_board_sends_only_changes(
    receiver: NotifyReceiver, notifier: Notifier
) -> None:
    board = StatusBoard(notifier)
    assert board.update(hub=HubLink.CONNECTED, groups=["devices"])
    assert not board.update(hub=HubLink.CONNECTED)  # same words: nothing sent
    assert board.update(calls=2)
    assert board.set_sensor("door", up=True)
    assert not board.set_sensor("door", up=True)
    assert board.set_sensor("door", up=False)
    assert board.remove_sensor("door")
    assert board.update(outbox=4, note="reload failed: bad group")
    assert board.update(note=None)
    texts = [(await receiver.next()).fields["STATUS"] for _ in range(7)]
    assert texts == [
        "hub connected; groups devices; 0 active calls; outbox 0",
        "hub connected; groups devices; 2 active calls; outbox 0",
        "hub connected; groups devices; 2 active calls; sensors 1/1 up; outbox 0",
        "hub connected; groups devices; 2 active calls; sensors 0/1 up (down: door); outbox 0",
        "hub connected; groups devices; 2 active calls; outbox 0",
        "reload failed: bad group; hub connected; groups devices; 2 active calls; outbox 4",
        "hub connected; groups devices; 2 active calls; outbox 4",
    ]
    assert receiver.drain() == []


def test_status_board_clears_retry_delay_with_a_new_hub_state() -> None:
    board = StatusBoard(Notifier(None))
    board.update(hub=HubLink.RETRYING, retry_in=4)
    assert board.status.retry_in == 4
    board.update(retry_in=8)
    assert board.text.startswith("hub unreachable, retrying in 8s")
    board.update(hub=HubLink.CONNECTED)
    assert board.status.retry_in is None
    assert board.text.startswith("hub connected;")


async def test_status_board_publish_can_force_a_resend(
    receiver: NotifyReceiver, notifier: Notifier
) -> None:
    board = StatusBoard(notifier, AgentStatus(hub=HubLink.EMBEDDED))
    assert board.publish()
    assert not board.publish()
    assert board.publish(force=True)
    first, second = await receiver.next(), await receiver.next()
    assert first.fields == second.fields == {"STATUS": board.text}


# --- end to end: `edge-agent run` under a notify socket ---------------------------------

EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
WATCHDOG_USEC = 400_000
STALL_SECONDS = 1.5
# Installed only in the agent started by the test (PYTHONPATH): SIGUSR2 stalls the main
# thread, where the event loop runs, between two markers on the notify socket. A ping
# between the markers could only come from somewhere other than the event loop.
SITECUSTOMIZE = """
import os, signal, socket, time

_ADDRESS = os.environ["NOTIFY_SOCKET"]
_SECONDS = float(os.environ["EDGE_AGENT_TEST_STALL_SECONDS"])


def _stall(signum, frame):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"TEST_STALL=begin", _ADDRESS)
        time.sleep(_SECONDS)
        sock.sendto(b"TEST_STALL=end", _ADDRESS)


signal.signal(signal.SIGUSR2, _stall)
"""


def agent_settings(path: Path, state: Path, groups: list[str]) -> None:
    quoted = ", ".join(f'"{g}"' for g in groups)
    path.write_text(
        f'name = "porch-cam"\ngroups = [{quoted}]\nstate_dir = "{state}"\nlog_level = "info"\n'
        '[hub]\nhost = "127.0.0.1"\nport = 0\n'
    )


class AgentProcess:
    """`edge-agent run` with its output collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.hub_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.stdout)),
            asyncio.create_task(self._read(proc.stderr, self.stderr)),
        ]

    async def _read(self, stream: asyncio.StreamReader | None, lines: list[str]) -> None:
        assert stream is not None
        while line := (await stream.readline()).decode():
            lines.append(line)
            found = re.search(r"embedded hub and viewer at (http://\S+?)/?$", line)
            if found and not self.hub_url.done():
                self.hub_url.set_result(found.group(1))

    async def finish(self) -> int:
        async with asyncio.timeout(30):
            code = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return code

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


@pytest.fixture
async def agent_run(
    receiver: NotifyReceiver, tmp_path: Path
) -> AsyncIterator[tuple[AgentProcess, Path]]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    settings, state = tmp_path / "agent.toml", tmp_path / "state"
    agent_settings(settings, state, ["alpha"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "JOURNAL"))}
    env.update(
        NOTIFY_SOCKET=receiver.env_value,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
        PYTHONPATH=str(site),
        EDGE_AGENT_TEST_STALL_SECONDS=str(STALL_SECONDS),
    )
    proc = await asyncio.create_subprocess_exec(
        str(EDGE_AGENT),
        "run",
        "--config",
        str(settings),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    agent = AgentProcess(proc)
    try:
        yield agent, settings
    finally:
        if proc.returncode is None:
            proc.kill()
            await agent.finish()


async def hub_groups(hub_url: str, state: Path) -> dict[str, int]:
    """Groups and member counts as the embedded hub reports them to its admin."""
    password = (state / "admin-password").read_text().strip()
    async with httpx.AsyncClient(base_url=hub_url, timeout=10) as http:
        login = await http.post("/api/login", json={"name": "admin", "password": password})
        login.raise_for_status()
        auth = {"Authorization": f"Bearer {login.json()['token']}"}
        page = await http.post("/api/realtime/groups", json={}, headers=auth)
        page.raise_for_status()
    return {item["group"]: item["number_of_users"] for item in page.json()["list"]}


async def wait_for_groups(hub_url: str, state: Path, expected: dict[str, int]) -> None:
    # Another process applies the change and nothing tells us when: ask its hub, bounded.
    groups: dict[str, int] = {}
    for _ in range(100):
        groups = await hub_groups(hub_url, state)
        if groups == expected:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"hub groups stayed {groups}, expected {expected}")


async def test_edge_agent_run_under_systemd(
    receiver: NotifyReceiver, agent_run: tuple[AgentProcess, Path], tmp_path: Path
) -> None:
    agent, settings = agent_run
    state = tmp_path / "state"
    interval = WATCHDOG_USEC / 2e6

    # READY=1 once up, with the story told in STATUS=.
    ready = await receiver.wait_for("READY", within=30)
    assert ready.fields["READY"] == "1"
    statuses = [d.fields["STATUS"] for d in receiver.seen if "STATUS" in d.fields]
    assert statuses, "no STATUS= before READY=1"
    hub_url = await asyncio.wait_for(agent.hub_url, 10)
    await wait_for_groups(hub_url, state, {"alpha": 1})

    # WATCHDOG=1 at half of WATCHDOG_USEC, never faster, on average inside the timeout.
    pings = [await receiver.wait_for("WATCHDOG") for _ in range(5)]
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(pings)]
    assert min(gaps) >= interval * 0.9
    assert sum(gaps) / len(gaps) < WATCHDOG_USEC / 1e6

    # A stalled event loop sends no pings; they come back when it runs again.
    agent.proc.send_signal(signal.SIGUSR2)
    await receiver.wait_for("TEST_STALL", within=10)
    end = await receiver.wait_for("TEST_STALL", within=10)  # skips nothing but pings
    assert end.fields == {"TEST_STALL": "end"}
    between = receiver.seen[receiver.seen.index(end) - 1]
    assert between.fields == {"TEST_STALL": "begin"}, "pinged while the loop was stalled"
    await receiver.wait_for("WATCHDOG")

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1, and the new group is joined.
    agent_settings(settings, state, ["beta"])
    before = monotonic_usec()
    agent.proc.send_signal(signal.SIGHUP)
    reloading = await receiver.wait_for("RELOADING")
    assert reloading.fields["RELOADING"] == "1"
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= monotonic_usec()
    assert (await receiver.wait_for("READY")).fields["READY"] == "1"
    await wait_for_groups(hub_url, state, {"beta": 1})

    # A broken file on SIGHUP keeps the running settings.
    settings.write_text("groups = [unquoted\n")
    agent.proc.send_signal(signal.SIGHUP)
    await receiver.wait_for("RELOADING")
    await receiver.wait_for("READY")
    assert await hub_groups(hub_url, state) == {"beta": 1}

    # SIGTERM: STOPPING=1, then exit 0.
    agent.proc.send_signal(signal.SIGTERM)
    await receiver.wait_for("STOPPING", within=20)
    assert await agent.finish() == 0, agent.output()
    assert "agent.toml" in agent.output()  # the refused reload named the file


async def test_edge_agent_hub_under_systemd(receiver: NotifyReceiver, tmp_path: Path) -> None:
    # edge-hub.service is Type=notify with WatchdogSec=: without READY=1 systemd gives up on
    # the start, and without pings it restarts the hub.
    (tmp_path / "hub.toml").write_text('[hub]\nhost = "127.0.0.1"\nport = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "JOURNAL"))}
    env.update(NOTIFY_SOCKET=receiver.env_value, WATCHDOG_USEC=str(WATCHDOG_USEC))
    proc = await asyncio.create_subprocess_exec(
        str(EDGE_AGENT), "hub", "--config", str(tmp_path / "hub.toml"),
        "--state-dir", str(tmp_path / "state"), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert (await receiver.wait_for("READY", within=30)).fields["READY"] == "1"
        pings = [await receiver.wait_for("WATCHDOG") for _ in range(3)]
        gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(pings)]
        assert min(gaps) >= WATCHDOG_USEC / 2e6 * 0.9
        proc.send_signal(signal.SIGTERM)
        await receiver.wait_for("STOPPING", within=20)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
