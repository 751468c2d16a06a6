"""Hostile frames against the hub: too deep, not finite, or anything at all.

First a real hub on 127.0.0.1 and ``websockets`` clients: a 1,000-deep frame and ``NaN`` in a
broadcast get ``#error``, nothing reaches other members, and the connection stays usable.
Then a property-based fuzz of the realtime endpoint driven in-process through ASGI
receive/send callables (no socket, so a few hundred connections take seconds):
whatever a connection sends, every answer is a well-formed frame or a close code, every
frame the parser refuses gets its ``#error``, and a member of the group only ever receives
frames a browser's ``JSON.parse`` accepts. ``scripts/fuzz_frames.py`` runs the same
property for 100,000+ frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_fuzz import GROUP, frame_texts

from agent.config import HubLimits, HubSettings, Settings
from agent.errors import Codes
from agent.hub.accounts import Role
from agent.hub.limits import CloseCode
from agent.hub.server import HubServer
from agent.protocol import (
    FrameKind,
    HubFrame,
    Limits,
    ProtocolError,
    decode_frame_text,
    parse_client_frame,
    parse_hub_frame,
)

from .conftest import Hub, HubFactory, join, recv, recv_until, send

DEEP: Final = "[" * 1000 + "]" * 1000  # 2 KB, far inside every size limit
CATCH_ALL_TEXT: Final = "could not decode the frame"
# Only the limits that would end the fuzzed connection early are raised.
FUZZ_LIMITS: Final = {"rate_burst": 10**9, "rate_per_second": 1e9, "max_errors": 10**9}


# --- a real hub on loopback -------------------------------------------------------------------


async def test_a_1000_deep_frame_gets_an_error_naming_the_limit_and_the_connection_stays(
    hub: Hub,
) -> None:
    alice = hub.user("alice")
    ws = await hub.connect(alice)
    await join(ws, GROUP, alice)
    text = json.dumps({"action": "broadcast", "rid": GROUP, "content": "x"})
    deep = text.replace('"x"', DEEP)
    assert len(deep.encode()) < 2100
    await ws.send(deep)
    error = await recv(ws)
    assert error == {
        "#error": "Frame nests arrays and objects more than 32 levels deep; the limit is 32.",
        "#code": Codes.INVALID_REQUEST,
    }
    await send(ws, {"action": "broadcast", "rid": GROUP, "content": "still here"})
    assert (await recv(ws))["#message"] == "still here"


@pytest.mark.parametrize("literal", ["[1e999, NaN]", "Infinity", "-Infinity", '{"a": NaN}'])
@pytest.mark.parametrize("action", ["broadcast", "sendMessage"])
async def test_nan_and_infinity_are_refused_and_reach_no_member(
    hub: Hub, literal: str, action: str
) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    sender, member = await hub.connect(alice), await hub.connect(bob)
    await join(sender, GROUP, alice)
    await join(member, GROUP, bob)
    await recv_until(sender, "#notice", **{"#user_id": bob.user_id})
    frame = {"action": action, "rid": GROUP, "uid": bob.user_id, "content": "x"}
    await sender.send(json.dumps(frame).replace('"x"', literal))
    error = await recv(sender)
    assert error["#code"] == Codes.INVALID_REQUEST
    assert ("which JSON does not allow" in error["#error"]) or (
        "beyond the range of a double" in error["#error"]
    )
    # The next frame bob gets is the one sent after: nothing came before it.
    await send(sender, {**frame, "content": "after"})
    raw = await asyncio.wait_for(member.recv(), 10)
    assert isinstance(raw, str)
    assert "NaN" not in raw
    assert "Infinity" not in raw
    after = decode_frame_text(raw)
    assert after["#message" if action == "broadcast" else "#private"] == "after"


async def test_the_depth_limit_is_a_setting(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_json_depth=4)
    alice = hub.user("alice")
    ws = await hub.connect(alice)
    await join(ws, GROUP, alice)
    await send(ws, {"action": "broadcast", "rid": GROUP, "content": [[["three"]]]})
    assert (await recv(ws))["#message"] == [[["three"]]]
    await send(ws, {"action": "broadcast", "rid": GROUP, "content": [[[["four"]]]]})
    assert (await recv(ws))["#error"] == (
        "Frame nests arrays and objects more than 4 levels deep; the limit is 4."
    )


@pytest.mark.parametrize("path", ["/api/realtime/groups", "/api/realtime/users"])
@pytest.mark.parametrize("key", [b"[" * 50_000, b"[[1]]", b"[NaN]", b"[1e999]"])
async def test_a_hostile_start_key_is_a_clear_400(hub: Hub, path: str, key: bytes) -> None:
    # The same bounded decoder reads the listings' paging keys (a key is one flat list).
    admin = hub.user("root", role=Role.ADMIN)
    body = {"startKey": base64.urlsafe_b64encode(key).decode()}
    if path.endswith("users"):
        body["group"] = GROUP
    async with hub.http(admin) as http:
        answer = await http.post(path, json=body)
    assert answer.status_code == 400
    assert answer.json() == {"code": Codes.INVALID_PARAMETER, "message": '"startKey" is invalid.'}


# --- the realtime endpoint through ASGI callables ---------------------------------------------

Event = MutableMapping[str, Any]


@dataclass
class Exchange:
    """What one fuzzed connection sent and what it and a fellow member of its group got."""

    frames: Sequence[str | bytes]
    sent: list[Event] = field(default_factory=list)
    observed: list[Event] = field(default_factory=list)


class EndpointHarness:
    """A hub's realtime endpoint (never listening) on an event loop of its own.

    The loop is the harness's own so that the same property runs under pytest and from
    ``scripts/fuzz_frames.py`` alike. Two admin accounts (admins hold every group): the
    fuzzer and an observer that stays in the fuzzer's group for the whole connection.
    Errors logged and exceptions the loop saw are collected per exchange.
    """

    def __init__(self, state_dir: Path, **limits: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.logged = _ErrorLog()
        logging.getLogger().addHandler(self.logged)
        hub_limits = HubLimits(**limits)
        self.limits = Limits(
            max_frame_bytes=hub_limits.max_frame_bytes,
            max_content_bytes=hub_limits.max_content_bytes,
            max_json_depth=hub_limits.max_json_depth,
        )
        settings = Settings(state_dir=state_dir, hub=HubSettings(port=0, limits=hub_limits))
        self.server = self.loop.run_until_complete(_make_hub(settings))
        accounts, tokens = self.server.accounts, self.server.tokens
        self._fuzzer = tokens.issue(accounts.add("fuzzer", None, Role.ADMIN), 3600)
        self._observer = tokens.issue(accounts.add("observer", None, Role.ADMIN), 3600)

    def exchange(self, frames: Sequence[str | bytes]) -> Exchange:
        """Join ``GROUP``, send ``frames``, disconnect; what was sent and observed."""
        self.loop_errors.clear()
        self.logged.records.clear()
        return self.loop.run_until_complete(self._exchange(Exchange(frames)))

    def close(self) -> None:
        """Stop the hub and the loop (and its thread pool)."""
        logging.getLogger().removeHandler(self.logged)
        self.loop.run_until_complete(self.server.stop())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    async def _exchange(self, exchange: Exchange) -> Exchange:
        endpoint = self.server.app.realtime
        in_group, leave = asyncio.Event(), asyncio.Event()

        async def observe(event: Event) -> None:
            exchange.observed.append(event)
            in_group.set()  # its first frame is the notice of its own join

        observer = asyncio.create_task(
            endpoint(_scope(self._observer), _observer_receive(leave), observe)
        )
        try:
            await asyncio.wait_for(in_group.wait(), 10)
            events = [_text({"action": "joinRoom", "rid": GROUP}), *map(_event, exchange.frames)]
            await endpoint(_scope(self._fuzzer), _feed(events), _record(exchange.sent))
        finally:
            leave.set()
            await observer
        return exchange


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _make_hub(settings: Settings) -> HubServer:
    return HubServer(settings)  # some of its parts bind to the running loop


def check_exchange(harness: EndpointHarness, frames: Sequence[str | bytes]) -> None:
    """Send ``frames`` on one connection; the answers and the hub's logs are in order."""
    exchange = harness.exchange(frames)
    check_hub_handles(exchange, harness.limits)
    assert harness.loop_errors == []
    assert [r.getMessage() for r in harness.logged.records] == []


def check_hub_handles(exchange: Exchange, limits: Limits) -> None:
    """Answers are frames or close codes; every refused frame got its ``#error``, in order."""
    assert exchange.sent[0] == {"type": "websocket.accept"}
    errors: list[str] = []
    for event in exchange.sent[1:]:
        frame = _hub_frame(event)
        if frame is not None and frame.kind is FrameKind.ERROR:
            assert frame.content != CATCH_ALL_TEXT, exchange.frames
            errors.append(frame.content)
    refused = iter(errors)
    for text in exchange.frames:
        expected = _refusal(text, limits)
        if expected is not None:
            assert expected in refused, (expected, errors)  # consumes up to the match
    for event in exchange.observed[1:]:
        _hub_frame(event)


def _hub_frame(event: Event) -> HubFrame | None:
    """The frame a send event carries (``None`` for a close), asserting it is well formed."""
    if event["type"] == "websocket.close":
        assert event["code"] in set(CloseCode), event
        return None
    assert event["type"] == "websocket.send", event
    frame = parse_hub_frame(event["text"])  # refuses NaN, Infinity and deep nesting
    assert isinstance(frame, HubFrame), (frame, event["text"][:300])
    return frame


def _refusal(frame: str | bytes, limits: Limits) -> str | None:
    if isinstance(frame, bytes):
        return "Binary frames are not accepted; send JSON text."
    parsed = parse_client_frame(frame, limits)
    return parsed.message if isinstance(parsed, ProtocolError) else None


hub_exchanges = st.lists(frame_texts | st.binary(max_size=16), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointHarness]:
    running = EndpointHarness(tmp_path_factory.mktemp("fuzz-hub"), **FUZZ_LIMITS)
    yield running
    running.close()


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(frames=hub_exchanges)
def test_the_hub_answers_any_frames_without_a_traceback(
    harness: EndpointHarness, frames: list[str | bytes]
) -> None:
    check_exchange(harness, frames)


# --- ASGI plumbing ----------------------------------------------------------------------------


def _scope(token: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/ws",
        "query_string": f"token={token}".encode(),
        "headers": [],
    }


def _text(frame: dict[str, Any]) -> Event:
    return {"type": "websocket.receive", "text": json.dumps(frame)}


def _event(frame: str | bytes) -> Event:
    if isinstance(frame, bytes):
        return {"type": "websocket.receive", "bytes": frame}
    return {"type": "websocket.receive", "text": frame}


def _feed(events: list[Event]) -> Callable[[], Awaitable[Event]]:
    """An ASGI receive: connect, ``events``, then a disconnect for ever."""
    pending = [{"type": "websocket.connect"}, *events]

    async def receive() -> Event:
        return pending.pop(0) if pending else {"type": "websocket.disconnect", "code": 1000}

    return receive


def _observer_receive(leave: asyncio.Event) -> Callable[[], Awaitable[Event]]:
    """An ASGI receive: connect, join ``GROUP``, then nothing until ``leave`` is set."""
    join_then_wait = _feed([_text({"action": "joinRoom", "rid": GROUP})])

    async def receive() -> Event:
        event = await join_then_wait()
        if event["type"] == "websocket.disconnect":
            await leave.wait()
        return event

    return receive


def _record(events: list[Event]) -> Callable[[Event], Coroutine[Any, Any, None]]:
    async def send(event: Event) -> None:
        events.append(event)

    return send
