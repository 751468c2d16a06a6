"""A lighter idle agent: the media stack (aiortc, PyAV, the camera pipeline) loads on need.

A real ``edge-agent run`` process against a real hub on loopback shows it idle without
aiortc and av in ``sys.modules`` (through ``edge-agent status --json``), with its resident
memory in the status and the metrics; its first call, which loads the stack while the
offer waits, still brings video and a data channel. In-process agents show the preload
setting and what a stack that cannot load does to a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rtc.conftest import LOOPBACK, WAIT, Inbox, Viewer

from agent.client import RealtimeClient
from agent.config import Settings, load_settings
from agent.daemon import Agent
from agent.errors import RealtimeError
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.metrics import process_metrics, resident_memory_bytes
from agent.rtc import standby
from agent.rtc.errors import CallEndedError, StackLoadError
from agent.rtc.peer import PeerFactory
from agent.systemd import Notifier

ROOT = Path(__file__).resolve().parent.parent
GROUP = "devices"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    settings = load_settings(None, state_dir=tmp_path / "hub", hub={"host": "127.0.0.1", "port": 0})
    server = HubServer(settings, state_dir=tmp_path / "hub")
    await server.start()
    yield server
    await server.stop()


async def caller(hub: HubServer, name: str = "alice") -> tuple[RealtimeClient, Inbox]:
    account = await asyncio.to_thread(hub.accounts.add, name, None, Role.USER, groups=[GROUP])
    client = RealtimeClient(
        hub.ws_url, token=hub.tokens.issue(account, 600), rtc_factory=PeerFactory(LOOPBACK)
    )
    inbox = Inbox()
    await client.connect_realtime(inbox)
    await client.join_realtime(GROUP)
    return client, inbox


async def cli(*args: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    async with asyncio.timeout(WAIT):
        out, err = await proc.communicate()
    assert (proc.returncode, err) == (0, b""), err.decode()
    return out.decode()


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return text


async def place_call(client: RealtimeClient, cid: str) -> Viewer:
    viewer = Viewer()
    connector = await client.connect_rtc(
        cid=cid,
        media={"video": False, "audio": False},
        channels=[{"protocol": "control"}],
        callback=viewer,
    )
    async with asyncio.timeout(WAIT):
        viewer.connection = await connector.connection
    return viewer


async def test_an_idle_agent_has_no_media_stack_and_its_first_call_loads_it(
    tmp_path: Path, hub: HubServer
) -> None:
    alice, inbox = await caller(hub)
    device = await asyncio.to_thread(hub.accounts.add, "porch", None, Role.DEVICE, groups=[GROUP])
    state, metrics_port = tmp_path / "state", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update(
        EDGE_AGENT_NAME="porch",
        EDGE_AGENT_GROUPS=f'["{GROUP}"]',
        EDGE_AGENT_STATE_DIR=str(state),
        EDGE_AGENT_CONNECT__URL=hub.ws_url,
        EDGE_AGENT_CONNECT__TOKEN=hub.tokens.issue(device, 600),
        EDGE_AGENT_METRICS__PORT=str(metrics_port),
        EDGE_AGENT_CALLS__HOST_ADDRESSES='["127.0.0.1"]',
        EDGE_AGENT_CALLS__MDNS="false",
        EDGE_AGENT_VIDEO__WIDTH="160",
        EDGE_AGENT_VIDEO__HEIGHT="120",
        EDGE_AGENT_VIDEO__FPS="15",
    )
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "run",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    viewer: Viewer | None = None
    try:
        await inbox.wait_for("notice", sender=device.user_id)  # the agent joined: it is idle

        idle = json.loads(await cli("status", "--json", "--state-dir", str(state), env=env))
        assert idle["media_stack"]["modules"] == {"aiortc": False, "av": False, "aioice": False}
        assert idle["media_stack"]["loaded"] is False
        assert idle["memory"]["resident_bytes"] > 10_000_000
        memory_line = next(line for line in idle["lines"] if line.startswith("memory: "))
        assert "MB resident; media stack not loaded" in memory_line
        metrics = await scrape(metrics_port)
        assert "edge_agent_media_stack_loaded 0" in metrics
        assert "edge_agent_calls_active 0" in metrics
        assert "\nprocess_resident_memory_bytes " in metrics

        # The offer is the first #rtc frame the agent sees: it waits while the stack loads.
        listing = await alice.get_realtime_users(GROUP, device.user_id)
        viewer = await place_call(alice, listing["list"][0]["connection_id"])
        await viewer.until(lambda: viewer.frames["video"] >= 5)
        assert viewer.sizes == {(160, 120)}
        [answer] = await viewer.command("status", 1)
        assert answer["ok"] is True
        assert answer["result"]["calls"]["active"] == 1

        busy = json.loads(await cli("status", "--json", "--state-dir", str(state), env=env))
        assert busy["media_stack"]["modules"] == {"aiortc": True, "av": True, "aioice": True}
        assert 0 < busy["media_stack"]["load_seconds"] < WAIT
        assert busy["memory"]["resident_bytes"] > idle["memory"]["resident_bytes"]
        metrics = await scrape(metrics_port)
        assert "edge_agent_media_stack_loaded 1" in metrics
        assert "edge_agent_media_stack_load_seconds " in metrics
        assert "edge_agent_calls_total 1" in metrics
    finally:
        if viewer is not None:
            await viewer.close()
        await alice.close_realtime()
        if agent.returncode is None:
            agent.terminate()
        async with asyncio.timeout(WAIT):
            _, err = await agent.communicate()
    assert agent.returncode == 0
    assert b"Traceback" not in err, err.decode()


async def test_importing_the_agent_loads_neither_aiortc_nor_av() -> None:
    probe = (
        "import sys, agent.client.realtime, agent.daemon, agent.sensing, agent.rtc.standby; "
        "print(sorted(m for m in ('aiortc', 'av', 'aioice') if m in sys.modules))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, _ = await proc.communicate()
    assert out.decode().strip() == "[]"


def agent_settings(tmp_path: Path, **calls: Any) -> Settings:
    return Settings.model_validate({
        "name": "porch",
        "state_dir": tmp_path / "state",
        "hub": {"host": "127.0.0.1", "port": 0},
        "metrics": {"enabled": False},
        "calls": {"host_addresses": ["127.0.0.1"], "mdns": False, **calls},
        "video": {"width": 160, "height": 120, "fps": 15},
        "audio": {"enabled": False, "talkback": False},
    })  # fmt: skip


@contextlib.asynccontextmanager
async def started(agent: Agent) -> AsyncIterator[Agent]:
    """``agent`` running and connected to its embedded hub; stopped when the block ends."""
    running = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(WAIT):
            await agent.wait_connected()
        yield agent
    finally:
        agent.request_stop()
        async with asyncio.timeout(WAIT):
            await running


async def device_connection(agent: Agent, client: RealtimeClient) -> str:
    """The connection id of ``agent``'s device ("porch"), as ``client`` lists it."""
    assert agent.hub is not None
    device = await asyncio.to_thread(agent.hub.accounts.get_by_name, "porch")
    assert device is not None
    listing = await client.get_realtime_users(GROUP, device.user_id)
    return str(listing["list"][0]["connection_id"])


async def test_preload_loads_the_media_stack_before_ready(tmp_path: Path) -> None:
    async with started(
        Agent(agent_settings(tmp_path, preload=True), notifier=Notifier(None))
    ) as agent:
        assert agent.calls is not None
        assert agent.calls.loaded
        assert agent.desk is not None
        assert agent.media is not None
        assert "edge_agent_media_stack_loaded 1" in agent.parts.render_metrics()


async def test_a_snapshot_rule_loads_the_media_stack_when_it_fires(tmp_path: Path) -> None:
    settings = agent_settings(tmp_path).model_copy(
        update={
            "events": Settings.model_validate({
                "events": [{
                    "name": "ring",
                    "trigger": {"type": "manual"},
                    "actions": [{"type": "snapshot"}, {"type": "post"}],
                }],
            }).events,
        }
    )  # fmt: skip
    async with started(Agent(settings, notifier=Notifier(None))) as agent:
        assert agent.hub is not None
        assert agent.calls is not None
        assert agent.sensing is not None
        assert not agent.calls.loaded
        watcher, inbox = await caller(agent.hub, "watcher")
        assert agent.sensing.engine.trigger("ring").value == "fired"
        posted = await inbox.wait_for("message", sender=agent.client.user_id)
        assert posted.message["snapshot"]  # a link to the picture the camera took
        assert agent.calls.loaded
        assert agent.media is not None
        await watcher.close_realtime()


async def test_a_stack_that_cannot_load_refuses_calls_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken install: one module of the stack is missing.
    monkeypatch.setattr(standby, "_STACK", (*standby._STACK, "agent_test_not_installed"))
    async with started(Agent(agent_settings(tmp_path), notifier=Notifier(None))) as agent:
        assert agent.hub is not None
        alice, _ = await caller(agent.hub)
        cid = await device_connection(agent, alice)
        for _ in range(2):  # refused at once: after the failed load, and without a new one
            connector = await alice.connect_rtc(cid=cid, media=None, callback=Viewer())
            with pytest.raises(CallEndedError):
                async with asyncio.timeout(WAIT):
                    await connector.connection
        assert agent.calls is not None
        status = await agent.parts.control_status({})
        assert "agent_test_not_installed" in status["media_stack"]["failure"]
        assert any("media stack failed to load" in line for line in status["lines"])
        with pytest.raises(StackLoadError):
            await agent.calls.snapshot()
        await alice.close_realtime()
    assert agent.failed_part is None  # the agent itself kept running


async def test_calls_disabled_are_refused_without_loading_the_stack(tmp_path: Path) -> None:
    settings = agent_settings(tmp_path, enabled=False)
    async with started(Agent(settings, notifier=Notifier(None))) as agent:
        assert agent.hub is not None
        alice, _ = await caller(agent.hub)
        connector = await alice.connect_rtc(
            cid=await device_connection(agent, alice), media=None, callback=Viewer()
        )
        with pytest.raises(CallEndedError):
            async with asyncio.timeout(WAIT):
                await connector.connection
        assert agent.calls is not None
        assert not agent.calls.loaded
        assert "edge_agent_calls_active" not in agent.parts.render_metrics()
        await alice.close_realtime()


async def test_the_factory_of_calls_is_set_before_they_exist() -> None:
    client = RealtimeClient("ws://127.0.0.1:9/ws", token="t")
    client.use_rtc_factory(factory := PeerFactory(LOOPBACK))
    assert client.rtc.factory is factory
    with pytest.raises(RealtimeError, match="exist already"):
        client.use_rtc_factory(PeerFactory(LOOPBACK))
    await client.close_realtime()
    factory.close()


def test_resident_memory_is_read_from_procfs() -> None:
    rss = resident_memory_bytes()
    assert rss is not None
    with open("/proc/self/status") as status:
        vm_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
    assert abs(rss - vm_rss) < 16 * 1024 * 1024  # read a moment apart
    text = process_metrics()
    assert "# TYPE process_resident_memory_bytes gauge" in text
    assert int(text.rsplit(" ", 1)[1]) > 0
