"""A connection's outbound path against an ASGI ``send`` that can be made to stall."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any

import pytest

from agent.config import HubLimits
from agent.hub.backplane import Member
from agent.hub.connection import Connection, ConnState
from agent.hub.limits import CloseCode
from agent.hub.metrics import HubMetrics

MEMBER = Member("0b6e4c9a-2f55-4c1e-9d7e-3a1b2c3d4e5f", "scid1", "alice")


class Transport:
    """An ASGI send whose writes stall while ``writable`` is clear, like uvicorn's."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent: list[MutableMapping[str, Any]] = []
        self.fail_with: Exception | None = None
        self.yield_first = False

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self.yield_first:
            await asyncio.sleep(0)
        await self.writable.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(message)

    @property
    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]


def _connection(transport: Transport, **limits: Any) -> tuple[Connection, HubMetrics]:
    metrics = HubMetrics()
    conn = Connection(MEMBER, transport.send, limits=HubLimits(**limits), metrics=metrics)
    return conn, metrics


async def _drained(conn: Connection) -> None:
    # Watches a private attribute: the slow path has no public "done" signal to wait on.
    while conn._drainer is not None:
        await asyncio.wait([conn._drainer])


async def test_writes_go_straight_out_while_the_transport_takes_them() -> None:
    transport = Transport()
    conn, metrics = _connection(transport)
    conn.deliver("a")
    conn.deliver("bc")
    assert transport.texts == ["a", "bc"]  # no await in between: written synchronously
    assert (metrics.frames_out, metrics.bytes_out) == (2, 3)


async def test_a_stalled_transport_queues_frames_in_order_until_it_resumes() -> None:
    transport = Transport()
    conn, _ = _connection(transport)
    transport.writable.clear()
    for text in ("1", "2", "3"):
        conn.deliver(text)
    await asyncio.sleep(0)
    assert transport.texts == []
    transport.writable.set()
    await _drained(conn)
    assert transport.texts == ["1", "2", "3"]
    conn.deliver("4")
    assert transport.texts[-1] == "4"


async def test_a_send_that_yields_to_the_loop_is_finished_by_the_drainer() -> None:
    transport = Transport()
    transport.yield_first = True
    conn, _ = _connection(transport)
    conn.deliver("x")
    await _drained(conn)
    assert transport.texts == ["x"]


async def test_queue_overflow_closes_this_connection_with_4409() -> None:
    transport = Transport()
    conn, metrics = _connection(transport, max_outbound_bytes=10)
    transport.writable.clear()
    conn.deliver("first")  # in flight, stalled
    conn.deliver("12345")
    conn.deliver("123456")  # 11 bytes queued: over
    assert conn.state is ConnState.CLOSING
    assert conn.close_code is CloseCode.SLOW_READER
    assert metrics.closes[4409] == 1
    conn.deliver("ignored")
    transport.writable.set()
    await conn.finish()
    assert transport.texts == []  # the stalled frame was abandoned
    assert transport.sent[-1] == {
        "type": "websocket.close",
        "code": 4409,
        "reason": "Outbound queue overflow: the client reads too slowly.",
    }
    assert conn.state is ConnState.CLOSED


async def test_a_peer_that_went_away_stops_the_connection_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = Transport()
    conn, _ = _connection(transport)
    transport.fail_with = ConnectionResetError("gone")
    conn.deliver("x")
    assert conn.state is ConnState.CLOSING
    assert conn.close_code is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_unexpected_send_error_is_logged_and_never_reaches_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = Transport()
    conn, _ = _connection(transport)
    transport.writable.clear()
    conn.deliver("x")
    transport.fail_with = RuntimeError("bug")
    transport.writable.set()
    await _drained(conn)
    assert conn.state is ConnState.CLOSING
    assert "send failed" in caplog.text


async def test_a_direct_write_that_fails_stops_only_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_data: bytes) -> bool:
        raise RuntimeError("bug in the direct write")

    written: list[bytes] = []

    def direct(data: bytes) -> bool:
        written.append(data)
        return True

    metrics = HubMetrics()
    failing = Connection(MEMBER, Transport().send, limits=HubLimits(), metrics=metrics)
    failing._write_text = broken  # what the server's write_text extension would be
    other_member = Member(MEMBER.user_id, "scid2", "alice")
    healthy = Connection(
        other_member, Transport().send, limits=HubLimits(), metrics=metrics, write_text=direct
    )
    for conn in (failing, healthy):  # a fan-out: the failure must not reach this loop
        conn.deliver("frame")
    assert failing.state is ConnState.CLOSING
    assert "send failed" in caplog.text
    assert (healthy.state, written) == (ConnState.OPEN, [b"frame"])


async def test_a_direct_write_refused_goes_through_the_asgi_send_in_order() -> None:
    transport = Transport()
    taken: list[bytes] = []
    open_now = [True]

    def direct(data: bytes) -> bool:
        if open_now[0]:
            taken.append(data)
        return open_now[0]

    metrics = HubMetrics()
    conn = Connection(
        MEMBER, transport.send, limits=HubLimits(), metrics=metrics, write_text=direct
    )
    conn.deliver("1")
    open_now[0] = False  # the transport paused: the ASGI send waits, later frames queue
    transport.writable.clear()
    conn.deliver("2")
    conn.deliver("3")
    transport.writable.set()
    await _drained(conn)
    assert (taken, transport.texts) == ([b"1"], ["2", "3"])


async def test_errors_count_towards_the_policy_close_but_rate_limits_do_not() -> None:
    transport = Transport()
    conn, metrics = _connection(transport, max_errors=2, rate_burst=1, rate_per_second=0.001)
    assert conn.admit()
    assert not conn.admit()
    for _ in range(5):
        conn.rate_limited()
    assert conn.state is ConnState.OPEN
    conn.error("INVALID_REQUEST", "one")
    conn.error("INVALID_REQUEST", "two")
    assert conn.state is ConnState.OPEN
    conn.error("INVALID_REQUEST", "three")
    assert conn.close_code is CloseCode.POLICY
    assert metrics.errors == {"RATE_LIMITED": 5, "INVALID_REQUEST": 3}
    assert metrics.frames_in == 2
