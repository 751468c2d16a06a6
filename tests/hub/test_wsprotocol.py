"""The hub's lighter WebSocket protocol: its inbox and write gate keep asyncio's contract
where uvicorn relies on it, and the real server uses the protocol end to end."""

from __future__ import annotations

import asyncio

import pytest

from agent.hub.wsprotocol import Gate, HubWebSocketProtocol, Inbox
from tests.hub.conftest import Hub, join, recv_until, send


async def test_inbox_gives_items_in_order_across_waits() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # the reader waits
    assert not reader.done()
    for item in (1, 2, 3):
        inbox.put_nowait(item)
    assert await reader == 1
    assert inbox.qsize() == 2
    assert [await inbox.get(), await inbox.get()] == [2, 3]
    assert inbox.empty()
    assert inbox.qsize() == 0


async def test_inbox_survives_a_cancelled_reader_and_refuses_a_second_one() -> None:
    inbox: Inbox[str] = Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already has a waiting reader"):
        await inbox.get()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # An item put after the cancellation is not lost: the next reader gets it.
    inbox.put_nowait("after")
    assert await asyncio.wait_for(inbox.get(), 5) == "after"


async def test_an_open_gate_is_passed_without_suspending() -> None:
    gate = Gate()
    gate.set()
    assert gate.is_set()
    coro = _through(gate)
    # One step runs it to the end: nothing was awaited on the loop.
    with pytest.raises(StopIteration):
        coro.send(None)


async def _through(gate: Gate) -> None:
    await gate.wait()


async def test_a_closed_gate_holds_writers_until_it_opens() -> None:
    gate = Gate()
    gate.set()
    gate.clear()
    writers = [asyncio.create_task(gate.wait()) for _ in range(3)]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not any(w.done() for w in writers)
    writers[0].cancel()  # a cancelled writer leaves no waiter behind
    await asyncio.wait([writers[0]])
    gate.set()
    await asyncio.wait_for(asyncio.gather(*writers[1:]), 5)
    assert gate._waiters is None


async def test_the_hub_serves_its_connections_with_the_light_protocol(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    await join(a, "home", alice)
    await join(b, "home", bob)
    await send(a, {"action": "broadcast", "rid": "home", "content": "hi"})
    assert (await recv_until(b, "#message"))["#message"] == "hi"
    protocols = _protocols(hub)
    assert len(protocols) == 2, "the hub did not use HubWebSocketProtocol"
    for protocol in protocols:
        assert isinstance(protocol.queue, Inbox)
        # The upgrade's headers are not kept for the connection's life.
        assert "request" not in vars(protocol)
        assert "response" not in vars(protocol)


async def test_a_paused_transport_gets_its_frames_in_order_once_it_resumes(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    await join(a, "home", alice)
    await join(b, "home", bob)
    await recv_until(a, "#notice", **{"#user_id": bob.user_id})
    (bobs,) = [p for p in _protocols(hub) if bob.token.encode() in p.scope["query_string"]]
    bobs.pause_writing()  # what the transport calls when its buffer passes the high-water mark
    assert bobs.write_text(b'"held"') is False
    for n in (1, 2, 3):
        await send(a, {"action": "broadcast", "rid": "home", "content": n})
    for n in (1, 2, 3):  # the sender's own copies: the fan-out has run
        assert (await recv_until(a, "#message"))["#message"] == n
    bobs.resume_writing()
    assert [(await recv_until(b, "#message"))["#message"] for _ in range(3)] == [1, 2, 3]
    assert bobs.write_text(b'"direct"') is True


def _protocols(hub: Hub) -> list[HubWebSocketProtocol]:
    """The protocol objects of the hub's open connections (uvicorn's server state)."""
    server = hub.server._server
    assert server is not None
    return [p for p in server.server_state.connections if isinstance(p, HubWebSocketProtocol)]
