"""The event history, device tiles and recent telemetry: a real hub, real sockets, real SQLite.

Devices post over the realtime WebSocket exactly as the agent's events engine and sensors
do; people read ``/api/events``, ``/api/devices/overview`` and ``/api/telemetry`` over HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from agent.config import HubEventSettings, Settings
from agent.errors import Codes
from agent.hub.accounts import Role
from agent.hub.history import (
    DatabaseEventStore,
    EventQuery,
    EventRecord,
    event_post,
    event_time,
    parse_cursor,
)
from agent.hub.recorder import TelemetryWindow
from agent.hub.server import HubServer

from .conftest import Hub, User, join, recv_until, send

SNAPSHOT = "/api/snapshots/" + "ab" * 16


def event(name: str, when: float, **extra: Any) -> dict[str, Any]:
    """An event post as the agent's engine makes it (Event.as_json plus the post id)."""
    return {
        "type": "event",
        "name": name,
        "device": "claimed-name",
        "time": when,
        "at": "2025-05-01T10:00:00.000+02:00",
        "trigger": "manual",
        "details": {},
        "readings": {"env": {"port": "env", "ts": when, "fields": {"temp": 21.5}}},
        "snapshot": None,
        "call": False,
        "id": f"post-{name}-{when}",
        **extra,
    }


async def post(ws: ClientConnection, group: str, content: dict[str, Any]) -> None:
    """Broadcast ``content`` to ``group`` and wait for the hub's echo (the fan-out is done)."""
    await send(ws, {"action": "broadcast", "rid": group, "content": content})
    await recv_until(ws, "#message", **{"#srid": group})


async def online(hub: Hub, user: User, *groups: str) -> ClientConnection:
    ws = await hub.connect(user)
    for index, group in enumerate(groups):
        await join(ws, group, user, keep=index > 0)
    return ws


async def events(hub: Hub, user: User | None, **params: Any) -> tuple[int, dict[str, Any]]:
    async with hub.http(user) as http:
        answer = await http.get("/api/events", params=params)
    return answer.status_code, answer.json()


def names(page: dict[str, Any]) -> list[str]:
    return [item["name"] for item in page["list"]]


async def flushed(hub: Hub) -> None:
    assert hub.server.history is not None
    await hub.server.history.flush()


async def test_device_event_posts_are_kept_and_listed_newest_first(hub: Hub) -> None:
    porch = hub.user("porch", role=Role.DEVICE, groups=("home", "porch"))
    alice = hub.user("alice", groups=("home",))
    ws = await online(hub, porch, "home", "porch")
    now = hub.server.history.now() if hub.server.history else 0.0
    await post(ws, "home", event("bell", now - 30, snapshot=SNAPSHOT, call=True))
    await post(ws, "home", event("motion", now - 20))
    await post(ws, "home", event("motion", now - 20))  # sent again: its echo was lost
    await post(ws, "porch", event("motion", now - 20))  # the same event, to its other group
    await post(ws, "home", {"type": "chat", "text": "not an event"})
    await post(ws, "home", {"type": "event", "name": "no time"})  # not an event's shape
    await flushed(hub)

    status, page = await events(hub, alice)
    assert status == 200
    assert names(page) == ["motion", "bell"]
    motion, bell = page["list"]
    assert motion["groups"] == ["home"]  # porch is not alice's: not shown to her
    assert bell["device"] == "porch"  # the sending account, not what the content claims
    assert bell["device_id"] == porch.user_id
    assert bell["snapshot"] == SNAPSHOT
    assert bell["call"] is True
    assert bell["readings"]["env"]["fields"] == {"temp": 21.5}
    assert bell["time"] == pytest.approx(now - 30)
    assert page["endOfList"] is True
    assert page["startKey"] is None

    root = hub.user("root", role=Role.ADMIN, groups=())
    _, everything = await events(hub, root)
    assert [item["groups"] for item in everything["list"]] == [["home", "porch"], ["home"]]


async def test_only_devices_make_history(hub: Hub) -> None:
    alice = hub.user("alice", groups=("home",))
    ws = await online(hub, alice, "home")
    await post(ws, "home", event("forged", 1.0e9))
    await flushed(hub)
    assert names((await events(hub, alice))[1]) == []


async def test_filters_and_paging(hub: Hub) -> None:
    porch = hub.user("porch", role=Role.DEVICE, groups=("home",))
    gate = hub.user("gate", role=Role.DEVICE, groups=("home",))
    alice = hub.user("alice", groups=("home",))
    start = hub.server.history.now() - 100 if hub.server.history else 0.0
    porch_ws, gate_ws = await online(hub, porch, "home"), await online(hub, gate, "home")
    for n in range(5):
        await post(porch_ws, "home", event(f"p{n}", start + n))
        await post(gate_ws, "home", event(f"g{n}", start + n + 0.5))
    await flushed(hub)

    _, first = await events(hub, alice, limit=3)
    assert names(first) == ["g4", "p4", "g3"]
    assert first["endOfList"] is False
    _, second = await events(hub, alice, limit=3, startKey=first["startKey"])
    assert names(second) == ["p3", "g2", "p2"]
    seen, key = [], None
    while True:
        _, page = await events(hub, alice, limit=4, **({"startKey": key} if key else {}))
        seen += names(page)
        if page["endOfList"]:
            break
        key = page["startKey"]
    assert len(seen) == len(set(seen)) == 10

    _, from_porch = await events(hub, alice, device="porch")
    assert names(from_porch) == [f"p{n}" for n in reversed(range(5))]
    _, window = await events(hub, alice, since=start + 1, until=start + 2.5)
    assert names(window) == ["g2", "p2", "g1", "p1"]
    iso = "1970-01-01T00:00:00+00:00"
    _, everything = await events(hub, alice, since=iso)
    assert len(everything["list"]) == 10


async def test_bad_parameters_are_named(hub: Hub) -> None:
    alice = hub.user("alice", groups=("home",))
    for params, named in (
        ({"since": "yesterday"}, '"since"'),
        ({"until": "nan"}, '"until"'),
        ({"startKey": "not-a-cursor"}, '"startKey"'),
        ({"limit": "0"}, "limit"),
    ):
        status, answer = await events(hub, alice, **params)
        assert status == 400, params
        assert answer["code"] == Codes.INVALID_PARAMETER
        assert named in answer["message"]


async def test_refusals_follow_the_grants(hub: Hub) -> None:
    """Without a token: 401. A group not granted: refused with 403 when asked for by name,
    left out (filtered) otherwise."""
    porch = hub.user("porch", role=Role.DEVICE, groups=("home", "garage"))
    alice = hub.user("alice", groups=("home",))
    ws = await online(hub, porch, "home", "garage")
    now = hub.server.history.now() if hub.server.history else 0.0
    await post(ws, "home", event("bell", now - 2))
    await post(ws, "garage", event("door", now - 1))
    await flushed(hub)

    status, answer = await events(hub, None)
    assert status == 401
    assert answer["code"] == Codes.UNAUTHORIZED
    status, answer = await events(hub, alice, group="garage")
    assert status == 403
    assert answer["code"] == Codes.FORBIDDEN
    assert '"garage"' in answer["message"]
    assert names((await events(hub, alice))[1]) == ["bell"]
    assert names((await events(hub, alice, group="home"))[1]) == ["bell"]
    stranger = hub.user("mallory", groups=("elsewhere",))
    assert names((await events(hub, stranger))[1]) == []
    assert names((await events(hub, stranger, device="porch"))[1]) == []


async def test_tiles_show_presence_last_event_picture_and_telemetry(hub: Hub) -> None:
    porch = hub.user("porch", role=Role.DEVICE, groups=("home",))
    hub.user("attic", role=Role.DEVICE, groups=("attic",))  # not alice's: no tile
    alice = hub.user("alice", groups=("home",))
    ws = await online(hub, porch, "home")
    now = hub.server.history.now() if hub.server.history else 0.0
    await post(ws, "home", event("bell", now - 5, snapshot=SNAPSHOT))
    await post(ws, "home", event("motion", now - 1))
    telemetry = {
        "type": "telemetry",
        "device": "porch",
        "ts": now,
        "readings": {"env": {"port": "env", "ts": now, "fields": {"temp": 22.0}}},
        "ports": {"env": {"state": "open", "bad_data": 0, "outages": 0, "units": {"temp": "°C"}}},
    }
    await post(ws, "home", telemetry)
    await flushed(hub)

    async with hub.http(alice) as http:
        overview = (await http.get("/api/devices/overview")).json()
    assert overview["thumbnail_seconds"] == 60
    [tile] = overview["devices"]
    assert tile["name"] == "porch"
    assert tile["online"] is True
    assert tile["groups"] == ["home"]
    assert tile["connection_ids"] == [
        f"cid:{_only(await hub.server.backplane.user_connections(porch.user_id))}"
    ]
    assert now - 10 < tile["since"] <= now + 1
    assert tile["last_event"]["name"] == "motion"
    assert tile["snapshot"] == {"url": SNAPSHOT, "time": pytest.approx(now - 5), "event": "bell"}
    assert tile["telemetry"]["readings"]["env"]["fields"] == {"temp": 22.0}
    assert tile["telemetry"]["ports"]["env"]["units"] == {"temp": "°C"}

    async with hub.http(alice) as http:
        series = (await http.get("/api/telemetry", params={"device": "porch"})).json()
        missing = await http.get("/api/telemetry", params={"device": "attic"})
    assert [p["ts"] for p in series["points"]] == [now]
    assert series["window_seconds"] == 600
    assert missing.status_code == 404  # not shared with alice: the same as no such device

    await _gone(hub, ws, watcher=await online(hub, alice, "home"))
    async with hub.http(alice) as http:
        [gone] = (await http.get("/api/devices/overview")).json()["devices"]
    assert gone["online"] is False
    assert gone["connection_ids"] == gone["groups"] == []
    assert gone["since"] >= tile["since"]


async def test_history_and_offline_since_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, hub={"host": "127.0.0.1", "port": 0})
    first = Hub(HubServer(settings))
    await first.server.start()
    try:
        porch = first.user("porch", role=Role.DEVICE, groups=("home",))
        alice = first.user("alice", groups=("home",))
        ws = await online(first, porch, "home")
        now = first.server.history.now() if first.server.history else 0.0
        await post(ws, "home", event("bell", now - 1))
        await _gone(first, ws, watcher=await online(first, alice, "home"))
        async with first.http(alice) as http:
            [before] = (await http.get("/api/devices/overview")).json()["devices"]
    finally:
        await first.close_clients()
        await first.server.stop()
    second = Hub(HubServer(settings))
    await second.server.start()
    try:
        token = second.server.tokens.issue(alice.account, 600)
        again = User(alice.account, token)
        assert names((await events(second, again))[1]) == ["bell"]
        async with second.http(again) as http:
            [after] = (await http.get("/api/devices/overview")).json()["devices"]
        assert after["online"] is False
        assert after["since"] == before["since"]
        assert after["last_event"]["name"] == "bell"
    finally:
        await second.server.stop()


async def test_a_slow_disk_never_holds_up_the_broadcast(tmp_path: Path) -> None:
    """The history is written by its own task: a store stuck on the disk delays nobody."""
    settings = Settings(state_dir=tmp_path, hub={"host": "127.0.0.1", "port": 0})
    server = HubServer(settings)
    assert server.history is not None
    gate = threading.Event()
    real_add = server.history.store.add

    def stuck_add(records: Sequence[EventRecord]) -> int:
        gate.wait(30)
        return real_add(records)

    server.history.store.add = stuck_add  # type: ignore[method-assign]
    hub = Hub(server)
    await server.start()
    try:
        porch = hub.user("porch", role=Role.DEVICE, groups=("home",))
        alice = hub.user("alice", groups=("home",))
        device, person = await online(hub, porch, "home"), await online(hub, alice, "home")
        now = server.history.now()
        for n in range(20):  # each is fanned out while the first write is still stuck
            await post(device, "home", event(f"e{n}", now - 30 + n))
            frame = await recv_until(person, "#message")
            assert frame["#message"]["name"] == f"e{n}"
        assert names((await events(hub, alice))[1]) == []  # nothing written yet
        gate.set()
        await server.history.flush()
        assert len((await events(hub, alice))[1]["list"]) == 20
    finally:
        gate.set()
        await hub.close_clients()
        await server.stop()


def test_each_group_keeps_its_own_bounds(tmp_path: Path) -> None:
    settings = HubEventSettings(
        max_events=3, max_age="1h", groups={"porch": {"max_events": 1, "max_age": "1d"}}
    )
    store = DatabaseEventStore(tmp_path / "events.db", retention=settings.retention)
    now = 1_000_000.0
    try:
        store.add([_record(f"h{n}", now - 100 + n, ("home",)) for n in range(5)])
        store.add([_record(f"p{n}", now - 100 + n, ("porch",)) for n in range(3)])
        store.add([_record("both", now - 10, ("home", "porch"))])
        assert _listed(store, ("home",)) == ["both", "h4", "h3"]
        assert _listed(store, ("porch",)) == ["both"]
        assert _listed(store, None) == ["both", "h4", "h3"]  # the rest were cut as they came
        store.add([_record("old", now - 7200, ("attic",)), _record("new", now - 60, ("attic",))])
        assert store.prune(now) == 1  # "old" is past the default hour
        assert _listed(store, ("attic",)) == ["new"]
        settings.max_age = 3 * 86400
        assert store.prune(now + 2 * 86400) == 0  # porch keeps a day; home keeps "both" on
        assert _listed(store, None) == ["both", "new", "h4", "h3"]
        assert _listed(store, ("porch",)) == []
    finally:
        store.close()
    assert (tmp_path / "events.db").stat().st_mode & 0o777 == 0o600


def test_an_event_post_is_read_only_from_its_shape() -> None:
    received = 2_000_000.0
    kept = event_post(
        event("bell", received - 5, snapshot="https://elsewhere.example/x.jpg", at=7),
        device_id="d",
        device="porch",
        group="home",
        received=received,
    )
    assert kept is not None
    assert kept.snapshot is None  # only this hub's snapshot links are kept
    assert kept.at == ""
    assert kept.groups == ("home",)
    for content in (
        None,
        [],
        {"type": "telemetry"},
        event("", 1.0),
        event("x", float("nan")),
        event("x", True),
        event("x" * 200, 1.0),
        {**event("x", 1.0), "trigger": 5},
    ):
        assert event_post(content, device_id="d", device="p", group="g", received=1.0) is None


def test_an_implausible_device_clock_gives_way_to_the_hubs() -> None:
    assert event_time(1000.0, 1010.0) == 1000.0
    assert event_time(5.0, 1_700_000_000.0) == 1_700_000_000.0  # a board still in 1970
    assert event_time(1_700_000_000.0 + 3600, 1_700_000_000.0) == 1_700_000_000.0


def test_cursors_are_checked() -> None:
    assert parse_cursor("12.5:7") == (12.5, 7)
    for bad in ("", "12.5", "x:1", "1:y", "inf:3"):
        with pytest.raises(ValueError, match="cursor"):
            parse_cursor(bad)


def test_telemetry_is_windowed_and_posted_once_for_many_groups() -> None:
    window = TelemetryWindow(window=60)
    payload = {"type": "telemetry", "ts": 100.0, "readings": {"env": {"fields": {"t": 1}}}}
    assert window.add("d", "home", payload, now=100.0)
    assert window.add("d", "porch", payload, now=100.0)  # the same post, to another group
    assert not window.add("d", "home", {"type": "event"}, now=100.0)
    assert window.add("d", "home", {**payload, "ts": 150.0}, now=150.0)
    [first, _] = window.points("d", 150.0, lambda group: True)
    assert first.groups == {"home", "porch"}
    assert [p.ts for p in window.points("d", 150.0, lambda group: group == "porch")] == [100.0]
    assert [p.ts for p in window.points("d", 200.0, lambda group: True)] == [150.0]


# -- helpers ------------------------------------------------------------------------------


def _record(name: str, when: float, groups: tuple[str, ...]) -> EventRecord:
    return EventRecord("d", "porch", name, "manual", when, when, when, groups=groups)


def _listed(store: DatabaseEventStore, groups: tuple[str, ...] | None) -> list[str]:
    return [r.name for r in store.page(EventQuery(groups, limit=100)).items]


async def _gone(hub: Hub, ws: ClientConnection, *, watcher: ClientConnection) -> None:
    """Close a device's connection and wait until the hub has recorded it offline: another
    member of its group hears USER_DISCONNECTED after the hub has let the history know."""
    await ws.close()
    await recv_until(watcher, "#notice", **{"#code": "USER_DISCONNECTED"})
    assert hub.server.history is not None
    await hub.server.history.flush()


def _only(items: list[str]) -> str:
    [item] = items
    return item
