"""Serial ports over real pseudo-terminals: framing, bad data, unplug and replug, writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from agent.sensors import (
    BadDataKind,
    PortState,
    ReadingFilter,
    ReopenPolicy,
    SensorHub,
    SerialPortSettings,
    SerialWriteError,
    UnknownPortError,
    WriteRefusal,
)
from sensors.ptys import PtyDevice

TIMEOUT = 10.0
FAST_REOPEN = ReopenPolicy(initial=0.01, factor=2.0, cap=0.05)
MakeDevice = Callable[..., PtyDevice]


class Presence:
    """Records on_presence calls so a test can await them in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    def __call__(self, name: str, present: bool) -> None:
        self.queue.put_nowait((name, present))

    async def next(self) -> tuple[str, bool]:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)


def settings(device: PtyDevice, name: str = "env", **options: Any) -> SerialPortSettings:
    return SerialPortSettings(name=name, port=device.path, **options)


def make_hub(ports: list[SerialPortSettings], presence: Presence, **options: Any) -> SensorHub:
    return SensorHub(ports, on_presence=presence, reopen=FAST_REOPEN, device="dev1", **options)


async def test_lines_are_parsed_and_streamed(make_device: MakeDevice) -> None:
    device = make_device()
    presence = Presence()
    hub = make_hub([settings(device, parse=r"T=(?P<temp>\S+) H=(?P<hum>\S+)")], presence)
    async with hub:
        assert await presence.next() == ("env", True)
        assert hub.ports["env"].state is PortState.OPEN
        with hub.subscribe() as stream:
            device.send(b"T=21.5 H=40\r\nhello\n")
            first = await asyncio.wait_for(stream.get(), TIMEOUT)
            second = await asyncio.wait_for(stream.get(), TIMEOUT)
    assert first.fields == {"temp": 21.5, "hum": 40}
    assert (second.fields, second.line) == (None, "hello")
    assert hub.latest()["env"] == second
    assert hub.ports["env"].state is PortState.STOPPED
    counters = hub.ports["env"].counters
    assert (counters.readings, counters.bytes_read) == (2, 19)


async def test_json_nmea_and_bad_data_are_counted_and_logged(
    make_device: MakeDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agent.sensors")
    meter, gps = make_device("meter"), make_device("gps")
    presence = Presence()
    ports = [
        settings(meter, "meter", framing="json", max_line_bytes=32),
        settings(gps, "gps", framing="nmea"),
    ]
    async with make_hub(ports, presence) as hub:
        assert {await presence.next(), await presence.next()} == {("meter", True), ("gps", True)}
        with hub.subscribe() as stream:
            meter.send(b"\xff\xfe\x00garbage\n" + b'{"kwh": ' + b"9" * 64 + b"}\n[1]\n{bad\n")
            meter.send(b'{"kwh": 12.5}\n')
            reading = await asyncio.wait_for(stream.get(), TIMEOUT)
            assert reading.fields == {"kwh": 12.5}
            gps.send(b"$GPZDA,201530.00,04,07,2002,00,00*61\r\n")  # wrong checksum
            gps.send(b"$GPZDA,201530.00,04,07,2002,00,00*60\r\n")
            reading = await asyncio.wait_for(stream.get(), TIMEOUT)
    assert reading.port == "gps"
    assert reading.fields == {
        "talker": "GP",
        "sentence": "ZDA",
        "values": ["201530.00", "04", "07", "2002", "00", "00"],
    }
    assert hub.ports["meter"].counters.bad_data == {
        BadDataKind.UNDECODABLE: 1,
        BadDataKind.OVERSIZE: 1,
        BadDataKind.NOT_OBJECT: 1,
        BadDataKind.BAD_JSON: 1,
    }
    assert hub.ports["gps"].counters.bad_data == {BadDataKind.BAD_CHECKSUM: 1}
    logged = [record.getMessage() for record in caplog.records]
    assert any("'meter'" in line and "not valid utf-8" in line for line in logged)
    assert any("'gps'" in line and "checksum 61" in line for line in logged)


async def test_raw_chunks(make_device: MakeDevice) -> None:
    device = make_device()
    presence = Presence()
    async with make_hub([settings(device, framing="raw")], presence) as hub:
        await presence.next()
        with hub.subscribe() as stream:
            device.send(b"\x00\x01\xff")
            received = b""
            while len(received) < 3:
                received += (await asyncio.wait_for(stream.get(), TIMEOUT)).raw or b""
    assert received == b"\x00\x01\xff"


async def test_missing_at_start_then_plugged(make_device: MakeDevice) -> None:
    device = make_device(plugged=False)
    presence = Presence()
    async with make_hub([settings(device)], presence) as hub:
        assert await presence.next() == ("env", False)
        port = hub.ports["env"]
        assert port.state is PortState.DOWN
        assert port.status()["down_reason"].startswith("cannot open")
        device.plug()
        assert await presence.next() == ("env", True)
        with hub.subscribe() as stream:
            device.send(b"late\n")
            assert (await asyncio.wait_for(stream.get(), TIMEOUT)).line == "late"
    assert port.counters.outages == 1
    assert port.counters.open_failures >= 1


async def test_unplug_and_replug_while_streaming(make_device: MakeDevice) -> None:
    device = make_device()
    presence = Presence()
    async with make_hub([settings(device)], presence) as hub:
        assert await presence.next() == ("env", True)
        with hub.subscribe() as stream:
            device.send(b"before\n")
            assert (await asyncio.wait_for(stream.get(), TIMEOUT)).line == "before"
            device.unplug()
            assert await presence.next() == ("env", False)
            port = hub.ports["env"]
            assert port.state is PortState.DOWN
            assert port.status()["down_reason"].startswith("lost")
            device.plug()
            assert await presence.next() == ("env", True)
            device.send(b"after\n")
            assert (await asyncio.wait_for(stream.get(), TIMEOUT)).line == "after"
            # Unplug and replug once more: every outage is reported once.
            device.unplug()
            assert await presence.next() == ("env", False)
            device.plug()
            assert await presence.next() == ("env", True)
            device.send(b"again\n")
            assert (await asyncio.wait_for(stream.get(), TIMEOUT)).line == "again"
    assert port.counters.outages == 2
    assert port.counters.readings == 3


async def test_writes_reach_the_device_only_when_allowed(make_device: MakeDevice) -> None:
    relay, sensor = make_device("relay"), make_device("sensor")
    presence = Presence()
    ports = [
        settings(relay, "relay", writable=True, allow=["LED (ON|OFF)", "FAN [0-9]{1,3}"]),
        settings(sensor, "sensor"),
    ]
    async with make_hub(ports, presence) as hub:
        await presence.next()
        await presence.next()
        await hub.write("relay", "LED ON")
        assert await asyncio.wait_for(relay.read_line(), TIMEOUT) == b"LED ON\n"

        with pytest.raises(SerialWriteError) as refused:
            await hub.write("relay", "REBOOT")
        assert refused.value.reason is WriteRefusal.NOT_ALLOWED
        assert "'REBOOT'" in str(refused.value)
        assert "'relay'" in str(refused.value)
        with pytest.raises(SerialWriteError) as refused:
            await hub.write("sensor", "LED ON")
        assert refused.value.reason is WriteRefusal.NOT_WRITABLE
        with pytest.raises(UnknownPortError, match=r"'nope'.*'relay', 'sensor'"):
            await hub.write("nope", "LED ON")

        # Nothing refused reached the device: the next line it reads is the next allowed one.
        await hub.write("relay", b"FAN 80\n")
        assert await asyncio.wait_for(relay.read_line(), TIMEOUT) == b"FAN 80\n"
        assert hub.ports["relay"].counters.writes == 2
        assert hub.ports["relay"].counters.refused_writes == 1

        relay.unplug()
        assert await presence.next() == ("relay", False)
        with pytest.raises(SerialWriteError) as refused:
            await hub.write("relay", "LED OFF")
        assert refused.value.reason is WriteRefusal.PORT_DOWN
        assert "is down" in str(refused.value)


async def test_bridge_reads_one_port_and_writes_it(make_device: MakeDevice) -> None:
    relay, sensor = make_device("relay"), make_device("sensor")
    presence = Presence()
    ports = [settings(relay, "relay", writable=True), settings(sensor, "sensor")]
    async with make_hub(ports, presence) as hub:
        await presence.next()
        await presence.next()
        with pytest.raises(SerialWriteError, match="cannot be opened for remote control"):
            hub.bridge("sensor")
        with hub.bridge("relay") as bridge:
            sensor.send(b"not for the bridge\n")
            relay.send(b"relay: ready\n")
            reading = await asyncio.wait_for(bridge.readings.get(), TIMEOUT)
            assert (reading.port, reading.line) == ("relay", "relay: ready")
            await bridge.write("STATUS")
            assert await asyncio.wait_for(relay.read_line(), TIMEOUT) == b"STATUS\n"


async def test_a_slow_subscriber_drops_alone(make_device: MakeDevice) -> None:
    device = make_device()
    presence = Presence()
    async with make_hub([settings(device)], presence) as hub:
        await presence.next()
        with hub.subscribe() as fast, hub.subscribe(maxsize=2) as slow:
            device.send(b"".join(b"line %d\n" % n for n in range(10)))
            got = [(await asyncio.wait_for(fast.get(), TIMEOUT)).line for _ in range(10)]
            assert got == [f"line {n}" for n in range(10)]
            assert fast.dropped == 0
            assert slow.dropped == 8
            assert [(await slow.get()).line for _ in range(2)] == ["line 8", "line 9"]


async def test_filtered_subscription(make_device: MakeDevice) -> None:
    a, b = make_device("a"), make_device("b")
    presence = Presence()
    parse = r"t=(?P<temp>\S+) h=(?P<hum>\S+)"
    async with make_hub(
        [settings(a, "a", parse=parse), settings(b, "b", parse=parse)], presence
    ) as hub:
        await presence.next()
        await presence.next()
        with pytest.raises(UnknownPortError):
            hub.subscribe(ReadingFilter(ports=frozenset({"c"})))
        wanted = ReadingFilter.from_json({"ports": ["a"], "fields": ["temp"]})
        with hub.subscribe(wanted) as stream, hub.subscribe() as everything:
            b.send(b"t=1 h=2\n")
            await asyncio.wait_for(everything.get(), TIMEOUT)
            a.send(b"no fields\nt=3 h=4\n")
            reading = await asyncio.wait_for(stream.get(), TIMEOUT)
    assert (reading.port, reading.fields) == ("a", {"temp": 3})


async def test_subscriptions_end_when_the_hub_stops(make_device: MakeDevice) -> None:
    device = make_device()
    presence = Presence()
    hub = make_hub([settings(device)], presence)
    async with hub:
        await presence.next()
        stream = hub.subscribe()
        waiter = asyncio.create_task(anext(stream, None))
    assert await asyncio.wait_for(waiter, TIMEOUT) is None


async def test_telemetry_posts_latest_readings_and_survives_failures(
    make_device: MakeDevice,
) -> None:
    device = make_device()
    presence = Presence()
    posts: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    failures = ["hub down"]

    async def post(group: str, payload: dict[str, Any]) -> None:
        if failures:
            raise ConnectionError(failures.pop())
        posts.put_nowait((group, payload))

    hub = make_hub(
        [settings(device, parse=r"t=(?P<temp>\S+)")],
        presence,
        post=post,
        telemetry_seconds=0.02,
        telemetry_groups=["ops", "family"],
        clock=lambda: 1234.5,
    )
    assert hub.telemetry_payload() is None
    async with hub:
        await presence.next()
        device.send(b"t=20\n")
        first = await asyncio.wait_for(posts.get(), TIMEOUT)
        second = await asyncio.wait_for(posts.get(), TIMEOUT)
    assert failures == []
    assert {first[0], second[0]} == {"ops", "family"}
    assert first[1] == {
        "type": "telemetry",
        "device": "dev1",
        "ts": 1234.5,
        "readings": {"env": {"port": "env", "ts": 1234.5, "fields": {"temp": 20}}},
        "ports": {
            "env": {"state": "open", "readings": 1, "bad_data": 0, "outages": 0, "units": {}}
        },
    }


async def test_a_failing_listener_does_not_stop_readings(
    make_device: MakeDevice, caplog: pytest.LogCaptureFixture
) -> None:
    device = make_device()
    presence = Presence()
    seen: list[str | None] = []

    def broken(_reading: object) -> None:
        raise RuntimeError("listener bug")

    async with make_hub([settings(device)], presence) as hub:
        await presence.next()
        remove = hub.add_listener(broken)
        hub.add_listener(lambda reading: seen.append(reading.line))
        with hub.subscribe() as stream:
            device.send(b"one\n")
            await asyncio.wait_for(stream.get(), TIMEOUT)
            remove()
            device.send(b"two\n")
            await asyncio.wait_for(stream.get(), TIMEOUT)
    assert seen == ["one", "two"]
    assert sum("listener failed" in record.getMessage() for record in caplog.records) == 1


async def test_status_reports_each_port(make_device: MakeDevice) -> None:
    device = make_device()
    presence = Presence()
    async with make_hub([settings(device, writable=True)], presence) as hub:
        await presence.next()
        with hub.subscribe() as stream:
            device.send(b"x\n")
            await asyncio.wait_for(stream.get(), TIMEOUT)
        status = hub.status()["env"]
    assert status["state"] == "open"
    assert status["writable"] is True
    assert status["framing"] == "lines"
    assert status["latest"]["raw"] == "x"
    assert status["readings"] == 1
    assert status["down_reason"] is None
