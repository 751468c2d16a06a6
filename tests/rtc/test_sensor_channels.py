"""A caller opens the sensors and serial:NAME data channels of a running agent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sensors.ptys import PtyDevice

from agent.client import RealtimeClient
from agent.config import Settings
from agent.daemon import Agent
from agent.hub.accounts import Role
from agent.rtc.peer import PeerFactory
from agent.systemd import Notifier

from .conftest import LOOPBACK, WAIT, Inbox, Viewer


def ports_up(agent: Agent, names: tuple[str, ...]) -> asyncio.Event:
    """An event set once every port in ``names`` is open (they may be open already): the
    sensing part tells its listeners after the status board."""
    event = asyncio.Event()

    def changed(_name: str = "", _up: bool = True) -> None:
        if agent.board.status.sensors == tuple((name, True) for name in names):
            event.set()

    assert agent.sensing is not None
    agent.sensing.add_port_listener(changed)
    changed()
    return event


def on(viewer: Viewer, label: str) -> list[dict[str, Any]]:
    return [json.loads(data) for got, data in viewer.messages if got == label]


async def test_sensor_readings_stream_and_serial_writes_are_checked(tmp_path: Path) -> None:
    meter, valve = PtyDevice(tmp_path / "meter"), PtyDevice(tmp_path / "valve")
    settings = Settings.model_validate({
        "name": "station",
        "state_dir": tmp_path / "state",
        "hub": {"host": "127.0.0.1", "port": 0},
        "metrics": {"enabled": False},
        "calls": {"host_addresses": ["127.0.0.1"], "mdns": False},
        "video": {"enabled": False},
        "audio": {"enabled": False, "talkback": False},
        "serial": [
            {"name": "meter", "port": meter.path, "parse": r"T=(?P<temp>[0-9.]+)"},
            {"name": "valve", "port": valve.path, "writable": True, "allow": ["OPEN|CLOSE"]},
        ],
    })  # fmt: skip
    agent = Agent(settings, notifier=Notifier(None))
    running = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(WAIT):
            await agent.wait_connected()
        both_ports_up = ports_up(agent, ("meter", "valve"))
        assert agent.hub is not None
        account = await asyncio.to_thread(agent.hub.accounts.add, "ops", None, Role.ADMIN)
        ops = RealtimeClient(
            agent.hub.ws_url,
            token=agent.hub.tokens.issue(account, 600),
            rtc_factory=PeerFactory(LOOPBACK),
        )
        await ops.connect_realtime(Inbox())
        device = await asyncio.to_thread(agent.hub.accounts.get_by_name, "station")
        listing = await ops.get_realtime_users("devices", device.user_id)
        viewer = Viewer()
        connector = await ops.connect_rtc(
            cid=listing["list"][0]["connection_id"],
            media=None,
            channels=[{"protocol": "sensors"}, {"protocol": "serial:valve"},
                      {"protocol": "serial:meter"}],
            callback=viewer,
        )  # fmt: skip
        viewer.connection = await asyncio.wait_for(connector.connection, WAIT)
        channels = viewer.connection.channels
        await viewer.until(lambda: all(c.readyState == "open" for c in channels.values()))

        # A read-only port refuses a remote-control channel, naming the setting.
        await viewer.until(lambda: bool(on(viewer, "serial:meter")))
        refusal = on(viewer, "serial:meter")[0]
        assert refusal["ok"] is False
        assert "writable" in refusal["error"]["message"]

        # Both ports open (their reader threads report to the status board); bytes written
        # before a port opens would be flushed by the open.
        async with asyncio.timeout(WAIT):
            await both_ports_up.wait()

        # Readings arrive on "sensors".
        meter.send(b"T=21.5\n")
        await viewer.until(lambda: bool(on(viewer, "sensors")))
        assert on(viewer, "sensors")[0]["port"] == "meter"
        assert on(viewer, "sensors")[0]["fields"] == {"temp": 21.5}

        # An allowed command reaches the device; another is refused with a clear error.
        channels["serial:valve"].send("OPEN")
        assert await asyncio.wait_for(valve.read_line(), WAIT) == b"OPEN\n"
        channels["serial:valve"].send("DRAIN")
        await viewer.until(lambda: any(m.get("ok") is False for m in on(viewer, "serial:valve")))
        error = next(m for m in on(viewer, "serial:valve") if m.get("ok") is False)
        assert "DRAIN" in error["error"]["message"]
        await viewer.connection.hangup()
        await viewer.close()
        await ops.close_realtime()
    finally:
        agent.request_stop()
        async with asyncio.timeout(WAIT):
            await running
        meter.close()
        valve.close()
