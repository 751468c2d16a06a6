"""`edge-agent run` as a real process against a real hub on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import RealtimeClient
from agent.client import RealtimeMessage
from agent.hub.accounts import AccountStore, Role
from agent.hub.tokens import TokenIssuer

ROOT = Path(__file__).resolve().parent.parent
URL_RE = re.compile(r"https?://127\.0\.0\.1:\d+")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    for key in ("STATE_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        env.pop(key, None)
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


async def read_url(proc: asyncio.subprocess.Process, stream: str) -> str:
    """The first http URL the process prints on ``stream`` (stdout or stderr)."""
    reader = proc.stdout if stream == "stdout" else proc.stderr
    assert reader is not None
    seen = []
    async with asyncio.timeout(60):
        while line := (await reader.readline()).decode():
            seen.append(line)
            if found := URL_RE.search(line):
                return found.group(0)
    raise AssertionError("process ended before printing its URL:\n" + "".join(seen))


async def stop(proc: asyncio.subprocess.Process) -> int:
    code, _ = await stop_with_output(proc)
    return code


async def stop_with_output(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM, then the exit code and what the process printed from here on."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mint(
    state_dir: Path, name: str, role: Role = Role.USER, groups: tuple[str, ...] = ("site",)
) -> tuple[str, str]:
    """An account granted ``groups`` and a token for it, made in the hub's state directory."""
    store = AccountStore(state_dir / "accounts.db")
    try:
        account = store.get_by_name(name) or store.add(name, None, role, groups=groups)
    finally:
        store.close()
    return account.user_id, TokenIssuer.from_state_dir(state_dir).issue(account, 3600)


@pytest.fixture
async def watcher_factory() -> AsyncIterator[list[RealtimeClient]]:
    clients: list[RealtimeClient] = []
    yield clients
    for client in clients:
        await client.close_realtime()


async def next_message(
    queue: asyncio.Queue[RealtimeMessage], kind: str, text: str = ""
) -> RealtimeMessage:
    async with asyncio.timeout(60):
        while True:
            message = await queue.get()
            if message.type == kind and text in str(message.message):
                return message


async def test_run_with_embedded_hub_joins_groups_and_exits_0(
    tmp_path: Path, watcher_factory: list[RealtimeClient]
) -> None:
    state = tmp_path / "state"
    metrics_port = free_port()
    env = clean_env(
        tmp_path,
        EDGE_AGENT_NAME="porch-cam",
        EDGE_AGENT_GROUPS='["home", "porch"]',
        EDGE_AGENT_STATE_DIR=str(state),
        EDGE_AGENT_HUB__PORT="0",
        EDGE_AGENT_METRICS__PORT=str(metrics_port),
    )
    agent = await start("run", env=env)
    try:
        http_url = await read_url(agent, "stdout")
        password_file = state / "admin-password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        viewer_id, token = mint(state, "viewer", groups=("home", "porch"))
        inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
        viewer = RealtimeClient(http_url.replace("http", "ws") + "/ws", token=token)
        watcher_factory.append(viewer)
        await viewer.connect_realtime(inbox.put_nowait)
        await viewer.join_realtime("porch")
        device_id = await wait_for_member(viewer, inbox, "porch", viewer_id)
        groups = await viewer.get_realtime_groups()
        names = {g["group"]: g["number_of_users"] for g in groups["list"]}
        assert names == {"home": 1, "porch": 2}
        store = AccountStore(state / "accounts.db")
        try:
            device = store.get_by_name("porch-cam")
        finally:
            store.close()
        assert device is not None
        assert (device.role, device.user_id) == (Role.DEVICE, device_id)
        assert device.grants == ("home", "porch")  # the embedded hub grants its own groups
        # The password is kept out of everything the agent printed.
        password = password_file.read_text().strip()

        # `edge-agent status` asks the running agent through its control socket.
        status = await start("status", "--state-dir", str(state), env=env)
        out, err = await status.communicate()
        assert (status.returncode, err) == (0, b"")
        assert "hub connected" in out.decode().splitlines()[0]
        assert "home, porch" in out.decode()

        # Prometheus text on the local metrics port.
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        metrics = (await reader.read()).decode()
        writer.close()
        assert "edge_agent_hub_connected 1" in metrics
        assert "edge_agent_calls_active 0" in metrics
    finally:
        code, printed = await stop_with_output(agent)
    assert code == 0
    assert password
    assert password not in printed


async def test_agent_stays_up_through_hub_restarts(
    tmp_path: Path, watcher_factory: list[RealtimeClient]
) -> None:
    state = tmp_path / "hub-state"
    port = free_port()
    hub_args = ("hub", "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state))
    hub_env = clean_env(tmp_path)
    hub = await start(*hub_args, env=hub_env)
    await read_url(hub, "stderr")
    device_id, device_token = mint(state, "field-1", Role.DEVICE)
    viewer_id, viewer_token = mint(state, "viewer")
    agent = await start(
        "run",
        env=clean_env(
            tmp_path,
            EDGE_AGENT_NAME="field-1",
            # "secret" is not granted: the agent says so once, and carries on in "site".
            EDGE_AGENT_GROUPS='["site", "secret"]',
            EDGE_AGENT_CONNECT__URL=f"ws://127.0.0.1:{port}/ws",
            EDGE_AGENT_CONNECT__TOKEN=device_token,
            EDGE_AGENT_STATE_DIR=str(tmp_path / "agent-state"),
        ),
    )
    try:
        for _round in range(2):
            inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
            viewer = RealtimeClient(f"ws://127.0.0.1:{port}/ws", token=viewer_token)
            watcher_factory.append(viewer)
            await viewer.connect_realtime(inbox.put_nowait)
            await viewer.join_realtime("site")
            assert await wait_for_member(viewer, inbox, "site", viewer_id) == device_id
            # The hub goes away and comes back on the same port with the same state.
            assert await stop(hub) == 0
            await next_message(inbox, "reconnect")
            hub = await start(*hub_args, env=hub_env)
            await read_url(hub, "stderr")
            await next_message(inbox, "success")
            assert await wait_for_member(viewer, inbox, "site", viewer_id) == device_id
            await viewer.close_realtime()
        assert agent.returncode is None  # still running after two hub restarts
    finally:
        agent_code, agent_output = await stop_with_output(agent)
        await stop(hub)
    assert agent_code == 0
    refusals = [line for line in agent_output.splitlines() if "not granted" in line]
    assert len(refusals) == 1, refusals  # one line, although it rejoined after each restart
    assert '"secret"' in refusals[0]
    assert "edge-agent user grant field-1 secret" in refusals[0]


async def wait_for_member(
    client: RealtimeClient, inbox: asyncio.Queue[RealtimeMessage], group: str, me: str
) -> str:
    """The user id of the other member of ``group``: listed now, or announced when it joins."""
    users = await client.get_realtime_users(group=group)
    others = [u["user_id"] for u in users["list"] if u["user_id"] != me]
    if others:
        return others[0]
    while True:
        notice = await next_message(inbox, "notice", "has joined the message group")
        if notice.sender not in (None, me):
            return notice.sender


async def test_sighup_reload_restarts_serial_ports_and_rules(tmp_path: Path) -> None:
    from agent.config import Settings
    from agent.daemon import Agent

    def settings(port_name: str) -> Settings:
        return Settings.model_validate(
            {
                "name": "bench",
                "state_dir": str(tmp_path / "state"),
                "hub": {"port": 0},
                "metrics": {"enabled": False},
                "serial": [{"name": port_name, "port": str(tmp_path / "missing-tty")}],
            }
        )

    current = [settings("left")]
    agent = Agent(current[0], reload_settings=lambda: current[0])
    running = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(60):
            await agent.wait_connected()
        assert agent.sensing is not None
        first = agent.sensing
        assert set(first.sensors.ports) == {"left"}
        current[0] = settings("right")
        await agent.reload()
        assert agent.sensing is not first
        assert set(agent.sensing.sensors.ports) == {"right"}
        assert agent.settings.serial[0].name == "right"
        # An unchanged file keeps the running parts as they are.
        second = agent.sensing
        await agent.reload()
        assert agent.sensing is second
    finally:
        agent.request_stop()
        async with asyncio.timeout(30):
            await running


async def test_a_reload_keeps_the_command_line_settings(tmp_path: Path) -> None:
    state = tmp_path / "from-the-command-line"
    config = tmp_path / "agent.toml"

    def write(port_name: str) -> None:
        config.write_text(
            'name = "bench"\n[metrics]\nenabled = false\n'
            f'[[serial]]\nname = "{port_name}"\nport = "{tmp_path / "missing-tty"}"\n'
        )

    write("left")
    env = clean_env(tmp_path)
    agent = await start(
        "run", "--config", str(config), "--state-dir", str(state), "--port", "0", env=env
    )
    try:
        await read_url(agent, "stdout")

        async def ports() -> set[str]:
            status = await start("status", "--json", "--state-dir", str(state), env=env)
            out, _ = await status.communicate()
            if status.returncode != 0:
                return set()
            return set(json.loads(out).get("sensors", {}))

        async def until(wanted: set[str]) -> None:
            # Another process's state: asked again until it reads so (bounded by the timeout).
            async with asyncio.timeout(60):
                for _ in itertools.count():
                    if await ports() == wanted:
                        return
                    await asyncio.sleep(0.1)

        await until({"left"})
        write("right")
        agent.send_signal(signal.SIGHUP)
        # The reload restarts the ports in the same state directory, so the control socket
        # is still where --state-dir put it.
        await until({"right"})
    finally:
        assert await stop(agent) == 0


async def test_motion_in_the_camera_image_fires_its_rule(tmp_path: Path) -> None:
    from agent.config import Settings
    from agent.daemon import Agent
    from agent.systemd import Notifier

    settings = Settings.model_validate(
        {
            "name": "yard",
            "groups": ["yard"],
            "state_dir": str(tmp_path / "state"),
            "hub": {"port": 0},
            "metrics": {"enabled": False},
            "video": {"width": 160, "height": 120, "fps": 15},
            "audio": {"enabled": False, "talkback": False},
            "events": [
                {
                    "name": "movement",
                    # The test pattern moves every frame; any change counts here.
                    "trigger": {"type": "motion", "threshold": 0.001, "interval_seconds": 0.2},
                    "actions": [{"type": "post"}],
                    "cooldown": 60,
                }
            ],
        }
    )
    agent = Agent(settings, notifier=Notifier(None))
    running = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(60):
            await agent.wait_connected()
        assert agent.hub is not None
        inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
        account = await asyncio.to_thread(
            agent.hub.accounts.add, "watcher", None, Role.USER, groups=["yard"]
        )
        watcher = RealtimeClient(agent.hub.ws_url, token=agent.hub.tokens.issue(account, 600))
        await watcher.connect_realtime(inbox.put_nowait)
        await watcher.join_realtime("yard")
        async with asyncio.timeout(60):
            while True:
                message = await inbox.get()
                body = message.message
                if message.type == "message" and isinstance(body, dict):
                    break
        assert (body["name"], body["trigger"], body["device"]) == ("movement", "motion", "yard")
        await watcher.close_realtime()
    finally:
        agent.request_stop()
        async with asyncio.timeout(30):
            await running
