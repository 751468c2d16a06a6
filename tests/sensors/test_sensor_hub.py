"""Pieces of the sensor hub without ports: filters, bounded subscriptions, a loop:// port."""

from __future__ import annotations

import asyncio

import pytest

from agent.sensors import Reading, ReadingFilter, SensorHub, SerialPortSettings
from agent.sensors.hub import Subscription
from agent.sensors.port import _Throttle

TS = 100.0


def test_filter_from_json() -> None:
    assert ReadingFilter.from_json(None) == ReadingFilter()
    assert ReadingFilter.from_json({}) == ReadingFilter()
    assert ReadingFilter.from_json({"ports": ["a", "b"]}).ports == {"a", "b"}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (["a"], "a JSON object"),
        ({"port": ["a"]}, "unknown sensors filter key(s) ['port']"),
        ({"ports": "a"}, "'ports' must be a list of names"),
        ({"fields": [1]}, "'fields' must be a list of names"),
    ],
)
def test_filter_from_bad_json(value: object, words: str) -> None:
    with pytest.raises(ValueError, match="sensors filter") as info:
        ReadingFilter.from_json(value)
    assert words in str(info.value)


def test_filter_apply() -> None:
    reading = Reading("a", TS, fields={"temp": 1, "hum": 2}, line="t=1 h=2")
    assert ReadingFilter().apply(reading) is reading
    assert ReadingFilter(ports=frozenset({"b"})).apply(reading) is None
    assert ReadingFilter(fields=frozenset({"hum"})).apply(reading) == Reading(
        "a", TS, fields={"hum": 2}, line="t=1 h=2"
    )
    assert ReadingFilter(fields=frozenset({"wind"})).apply(reading) is None
    assert ReadingFilter(fields=frozenset({"hum"})).apply(Reading("a", TS, line="x")) is None


async def test_subscription_close_is_idempotent_and_ends_readers() -> None:
    closed: list[Subscription] = []
    stream = Subscription(ReadingFilter(), 1, closed.append)
    stream.offer(Reading("a", TS, line="x"))
    stream.close()
    stream.close()
    stream.offer(Reading("a", TS, line="late"))
    assert closed == [stream]
    assert [reading async for reading in stream] == []  # the full queue gave way to the end
    with pytest.raises(StopAsyncIteration):
        await stream.get()


def test_throttle_holds_back_repeats() -> None:
    throttle = _Throttle(10.0)
    assert throttle.allow("k", 0.0) == 0
    assert throttle.allow("k", 1.0) is None
    assert throttle.allow("k", 2.0) is None
    assert throttle.allow("other", 2.0) == 0
    assert throttle.allow("k", 11.0) == 2


async def test_loop_url_port_echoes_writes_as_readings() -> None:
    # pyserial's loop:// is an in-memory port: what is written comes back as read.
    port = SerialPortSettings(name="echo", port="loop://", writable=True)
    up = asyncio.Event()
    async with SensorHub([port], on_presence=lambda _name, present: up.set()) as hub:
        await asyncio.wait_for(up.wait(), 10)
        with hub.subscribe() as stream:
            await hub.write("echo", "PING")
            reading = await asyncio.wait_for(stream.get(), 10)
    assert reading.line == "PING"


def test_duplicate_port_names_are_refused() -> None:
    port = SerialPortSettings(name="a", port="loop://")
    with pytest.raises(ValueError, match="named 'a'"):
        SensorHub([port, port])
