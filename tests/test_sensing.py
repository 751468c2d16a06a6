"""Serial port -> event rule -> group member and durable alert, through a real hub."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sensors.ptys import PtyDevice

from agent import RealtimeClient
from agent.client import RealtimeMessage
from agent.config import Settings
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.sensing import Sensing

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(Settings(hub={"port": 0}), state_dir=tmp_path / "hub")
    await server.start()
    yield server
    await server.stop()


async def connect(hub: HubServer, name: str, role: Role, inbox: Any = None) -> RealtimeClient:
    account = hub.accounts.add(name, None, role)
    client = RealtimeClient(hub.ws_url, token=hub.tokens.issue(account, 3600))
    await client.connect_realtime(inbox.put_nowait if inbox else (lambda _m: None))
    await client.join_realtime("home")
    return client


async def event_named(inbox: asyncio.Queue[RealtimeMessage], name: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await inbox.get()
            body = message.message
            if message.type == "message" and isinstance(body, dict) and body.get("name") == name:
                return body


async def test_a_serial_alarm_reaches_the_group_and_the_outbox_delivers_the_alert(
    hub: HubServer, tmp_path: Path
) -> None:
    meter = PtyDevice(tmp_path / "meter")
    settings = Settings.model_validate(
        {
            "name": "porch",
            "groups": ["home"],
            "serial": [{"name": "meter", "port": meter.path, "parse": r"T=(?P<temp>[0-9.]+)"}],
            "events": [
                {
                    "name": "alarm",
                    "trigger": {"type": "line", "match": "ALARM"},
                    "actions": [
                        {"type": "post"},
                        {"type": "push", "to": ["alice"], "title": "Alarm", "body": "{line}"},
                    ],
                },
                {"name": "bell", "trigger": {"type": "manual"}, "actions": [{"type": "post"}]},
            ],
        }
    )
    inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
    alice = await connect(hub, "alice", Role.USER, inbox)
    device = await connect(hub, "porch", Role.DEVICE)
    state = tmp_path / "agent"
    state.mkdir(mode=0o700)
    opened = asyncio.Event()
    sensing = Sensing(
        settings, state_dir=state, client=device, on_port=lambda _name, up: up and opened.set()
    )
    await sensing.start()
    try:
        # Bytes written before the agent opens the port would be flushed by its open.
        await asyncio.wait_for(opened.wait(), TIMEOUT)
        meter.send(b"T=21.5\nALARM smoke\n")
        event = await event_named(inbox, "alarm")
        assert (event["device"], event["trigger"]) == ("porch", "line")
        # The alert went through the outbox to the hub, which accepted it.
        async with asyncio.timeout(TIMEOUT):
            await sensing.engine.drain()  # the push action has handed it to the outbox
            await sensing.outbox.wait_empty()
        stats = sensing.outbox.stats()
        assert (stats.delivered, stats.depth) == (1, 0)
        assert sensing.sensors.latest()["meter"].line == "ALARM smoke"
        metrics = sensing.metrics()
        assert 'edge_agent_events_fired_total{rule="alarm"} 1' in metrics
        assert 'edge_agent_sensor_readings_total{port="meter"} 2' in metrics
        assert 'edge_agent_sensor_up{port="meter"} 1' in metrics

        # `edge-agent trigger` reaches the running agent through its control socket.
        trigger = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "trigger", "bell", "--state-dir", str(state),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        out, err = await trigger.communicate()
        assert (trigger.returncode, err) == (0, b"")
        assert b"fired" in out
        assert (await event_named(inbox, "bell"))["trigger"] == "manual"
    finally:
        await sensing.close()
        await device.close_realtime()
        await alice.close_realtime()
        meter.close()
