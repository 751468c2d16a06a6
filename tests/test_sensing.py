"""Serial port -> event rule -> group member and durable alert, through a real hub."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from linkproxy import LinkProxy
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
    account = hub.accounts.add(name, None, role, groups=["home"])
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
        metrics = sensing.render_metrics()
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


OUTAGE_SETTINGS: dict[str, Any] = {
    "name": "field",
    "groups": ["home"],
    "sensors": {"telemetry_seconds": 1},
    "events": [
        {
            "name": "bell",
            "trigger": {"type": "manual"},
            "actions": [{"type": "post"}],
            "cooldown": 0,
        }
    ],
}


async def test_posts_wait_out_a_link_outage_in_order_and_telemetry_keeps_the_latest(
    hub: HubServer, tmp_path: Path
) -> None:
    # The device reaches the hub through a link the test cuts; the watcher does not.
    link = LinkProxy(hub.port)
    await link.start()
    meter = PtyDevice(tmp_path / "meter")
    serial = [{"name": "meter", "port": meter.path, "parse": r"T=(?P<temp>[0-9.]+)"}]
    settings = Settings.model_validate(OUTAGE_SETTINGS | {"serial": serial})
    inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
    watcher = await connect(hub, "watcher", Role.USER, inbox)
    account = hub.accounts.add("field", None, Role.DEVICE, groups=["home"])
    device = RealtimeClient(f"ws://127.0.0.1:{link.port}/ws", token=hub.tokens.issue(account, 3600))
    device_inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
    await device.connect_realtime(device_inbox.put_nowait)
    await device.join_realtime("home")
    state = tmp_path / "agent"
    state.mkdir(mode=0o700)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    sensing = Sensing(settings, state_dir=state, client=device)
    sensing.sensors.add_listener(lambda reading: lines.put_nowait(reading.line))
    await sensing.start()
    try:
        await next_of(device_inbox, "notice")  # joined
        link.cut()
        await next_of(device_inbox, "reconnect")
        for _ in range(100):
            outcome, failed = await sensing.engine.fire("bell")
            assert (outcome.value, failed) == ("fired", [])
        for value in (1, 2, 3):  # a telemetry round sees each reading while offline
            meter.send(b"T=%d\n" % value)
            assert await asyncio.wait_for(lines.get(), TIMEOUT) == f"T={value}"
            await asyncio.sleep(1.1)
        assert sensing.posts.depth == 100
        link.restore()

        events, telemetry = await _group_posts(inbox, events=100)
        assert len({e["id"] for e in events}) == 100  # none lost, none twice
        times = [e["time"] for e in events]
        assert times == sorted(times)  # in the order they happened
        assert all(e["at"] and e["name"] == "bell" for e in events)
        # Only the latest reading was kept through the outage.
        assert {t["readings"]["meter"]["fields"]["temp"] for t in telemetry} == {3}
        async with asyncio.timeout(TIMEOUT):
            await sensing.posts.wait_empty()
        assert sensing.posts.stats().delivered == 100
        assert "edge_agent_posts_queued 0" in sensing.render_metrics()
    finally:
        await sensing.close()
        await device.close_realtime()
        await watcher.close_realtime()
        await link.stop()
        meter.close()


async def _group_posts(
    inbox: asyncio.Queue[RealtimeMessage], *, events: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Event posts (as many as ``events``) and at least one telemetry post, as they come."""
    found: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    async with asyncio.timeout(TIMEOUT):
        while len(found[0]) < events or not found[1]:
            message = await inbox.get()
            body = message.message
            if message.type == "message" and isinstance(body, dict):
                found[0 if body.get("type") == "event" else 1].append(body)
    return found


async def next_of(inbox: asyncio.Queue[RealtimeMessage], kind: str) -> RealtimeMessage:
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await inbox.get()
            if message.type == kind:
                return message
