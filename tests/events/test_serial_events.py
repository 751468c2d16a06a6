"""Serial ports (real ptys) wired to the events engine as the daemon wires them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sensors.ptys import PtyDevice

from agent.events import ActionHandlers, EventEngine, EventRule
from agent.sensors import ReopenPolicy, SensorHub, SerialPortSettings

TIMEOUT = 10.0


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[tuple[PtyDevice, PtyDevice]]:
    door, env = PtyDevice(tmp_path / "door"), PtyDevice(tmp_path / "env")
    yield door, env
    door.close()
    env.close()


def rules() -> list[EventRule]:
    return [
        EventRule.model_validate(item)
        for item in [
            {
                "name": "ring",
                "trigger": {"type": "line", "port": "door", "match": "^RING (?P<who>\\w+)"},
                "actions": [{"type": "post"}],
                "cooldown": "1h",
            },
            {
                "name": "hot",
                "trigger": {
                    "type": "threshold",
                    "port": "env",
                    "field": "temp",
                    "above": 30,
                    "hysteresis": 2,
                },
                "actions": [{"type": "post"}],
            },
            {
                "name": "env-port",
                "trigger": {"type": "device", "kind": "serial", "name": "env", "when": "change"},
                "actions": [{"type": "post"}],
            },
        ]
    ]


async def test_serial_triggers_end_to_end(devices: tuple[PtyDevice, PtyDevice]) -> None:
    door, env = devices
    ports = [
        SerialPortSettings(name="door", port=door.path),
        SerialPortSettings(name="env", port=env.path, parse=r"T=(?P<temp>\S+)"),
    ]
    posted: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def post(group: str, payload: dict[str, Any]) -> None:
        posted.put_nowait(payload)

    engine = EventEngine(
        rules(), device="field1", groups=["ops"], serial=ports, actions=ActionHandlers(post=post)
    )
    up: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    def presence(name: str, present: bool) -> None:
        engine.on_device("serial", name, present)
        up.put_nowait((name, present))

    hub = SensorHub(ports, on_presence=presence, reopen=ReopenPolicy(initial=0.01, cap=0.05))
    hub.add_listener(engine.on_reading)

    async def next_event() -> dict[str, Any]:
        return await asyncio.wait_for(posted.get(), TIMEOUT)

    async with engine, hub:
        assert {await up.get(), await up.get()} == {("door", True), ("env", True)}
        with hub.subscribe() as stream:
            door.send(b"RING alice\nRING bob\nEND\n")
            while (await asyncio.wait_for(stream.get(), TIMEOUT)).line != "END":
                pass  # the engine has seen every line before the stream gets the next
            ring = await next_event()
            assert (ring["name"], ring["details"]["groups"]) == ("ring", {"who": "alice"})
            assert engine.status()["ring"]["cooldown"] == 1

            env.send(b"T=25\nT=31\nT=32\nT=27\nT=33\n")
            first, second = await next_event(), await next_event()
            assert [first["details"]["value"], second["details"]["value"]] == [31.0, 33.0]
            assert second["readings"]["env"]["fields"] == {"temp": 33}

            env.unplug()
            assert await asyncio.wait_for(up.get(), TIMEOUT) == ("env", False)
            gone = await next_event()
            env.plug()
            assert await asyncio.wait_for(up.get(), TIMEOUT) == ("env", True)
            back = await next_event()
    assert (gone["name"], gone["details"]) == (
        "env-port",
        {"kind": "serial", "source": "env", "state": "gone"},
    )
    assert back["details"]["state"] == "back"
    assert posted.empty()
