"""The Redis backplane against a real redis-server: two or three nodes in one process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent.hub.backplane import BackplaneError, Member
from agent.hub.backplane_redis import LinkState, RedisBackplane

from .redis_server import RedisServer, free_port

UID_A = "0b6e4c9a-2f55-4c1e-9d7e-3a1b2c3d4e5f"
UID_B = "1c7f5dab-3066-4d2f-8e8f-4b2c3d4e5f60"
UID_C = "2d8a6ebc-4177-4e30-9f90-5c3d4e5f6071"
WAIT = 20.0
FAST = {"heartbeat_seconds": 0.2, "ttl_seconds": 0.8, "reap_seconds": 0.2}


class Inbox:
    """A sink that records frames and lets a test wait for them."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self._changed = asyncio.Event()

    def deliver(self, text: str) -> None:
        self.frames.append(text)
        self._changed.set()

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(WAIT):
            while len(self.frames) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.frames


Nodes = Callable[..., Awaitable[RedisBackplane]]


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[Nodes]:
    """``await nodes(**options)``: a started node on the shared Redis; all closed after."""
    made: list[RedisBackplane] = []

    async def make(url: str = redis_url, **options: Any) -> RedisBackplane:
        plane = RedisBackplane(url, **options)
        made.append(plane)
        await plane.start()
        return plane

    yield make
    for plane in made:
        await plane.close()


async def attach(plane: RedisBackplane, uid: str, scid: str, name: str, cap: int = 10) -> Inbox:
    inbox = Inbox()
    assert await plane.attach(Member(uid, scid, name), inbox, max_per_user=cap)
    return inbox


async def until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll a cluster-wide view: it lives in Redis, so there is no local event to await."""
    async with asyncio.timeout(WAIT):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def crash(plane: RedisBackplane) -> None:
    """What SIGKILL leaves behind: the node stops without removing anything from Redis."""
    for task in plane._tasks:
        task.cancel()
    await asyncio.gather(*plane._tasks, return_exceptions=True)
    plane._tasks = []
    await plane._link.close()


async def test_the_connection_limit_holds_across_nodes(nodes: Nodes) -> None:
    one, two = await nodes(), await nodes()
    await attach(one, UID_A, "a1", "alice", cap=2)
    await attach(two, UID_A, "a2", "alice", cap=2)
    assert not await one.attach(Member(UID_A, "a3", "alice"), Inbox(), max_per_user=2)
    assert not await two.attach(Member(UID_A, "a3", "alice"), Inbox(), max_per_user=2)
    assert await one.connection("a3") is None
    await two.detach("a2")
    assert await one.attach(Member(UID_A, "a3", "alice"), Inbox(), max_per_user=2)
    assert sorted(await two.user_connections(UID_A)) == ["a1", "a3"]


async def test_every_node_sees_the_same_presence(nodes: Nodes) -> None:
    one, two = await nodes(), await nodes()
    await attach(one, UID_A, "a1", "alice")
    await attach(two, UID_B, "b1", "bob")
    assert await one.join("a1", "g1")
    assert not await one.join("a1", "g1")
    assert not await one.join("unknown", "g1")
    assert await two.join("b1", "g1")
    assert await one.join("a1", "g2")
    for plane in (one, two):
        assert [m.scid for m in await plane.members("g1")] == ["a1", "b1"]
        assert await plane.group_counts() == {"g1": 2, "g2": 1}
        assert await plane.stats() == (2, 2)
        assert await plane.groups_of("a1") == ["g1", "g2"]
        assert await plane.connection("b1") == Member(UID_B, "b1", "bob")
        assert await plane.resolve_name("bob") == UID_B
    assert await one.leave("a1", "g2")
    assert not await one.leave("a1", "g2")
    assert await two.group_counts() == {"g1": 2}
    assert await two.detach("b1") == ["g1"]
    assert await one.detach("b1") == []  # not this node's: nothing to do here
    assert await one.resolve_name("bob") is None
    assert await one.members("g1") == [Member(UID_A, "a1", "alice")]


async def test_frames_cross_nodes_in_order(nodes: Nodes) -> None:
    one, two = await nodes(), await nodes()
    a = await attach(one, UID_A, "a1", "alice")
    b1 = await attach(two, UID_B, "b1", "bob")
    b2 = await attach(two, UID_B, "b2", "bob")
    for scid, plane in (("a1", one), ("b1", two)):
        await plane.join(scid, "g")
    sent = [f"m{i}" for i in range(200)]
    for text in sent:
        assert await one.publish_group("g", text) == 2
    assert await a.until(200) == sent
    assert await b1.until(200) == sent
    assert await two.publish_group("g", "not-a1", exclude="a1") == 1
    assert await one.publish_user(UID_B, "to-bob", exclude="b2") == 1
    assert await one.publish_connection("b2", "to-b2")
    assert not await one.publish_connection("nobody", "lost")
    assert await one.publish_group("empty", "lost") == 0
    assert await one.publish_user(UID_C, "lost") == 0
    assert (await b1.until(202))[200:] == ["not-a1", "to-bob"]
    assert await b2.until(1) == ["to-b2"]
    assert len(a.frames) == 200


async def test_group_names_round_trip_whatever_they_hold(nodes: Nodes) -> None:
    one, two = await nodes(), await nodes()
    name = "caf\u00e9 \u2603\nline two\t\U0001f6aa"
    a = await attach(one, UID_A, "a1", "alice")
    await attach(two, UID_B, "b1", "bob")
    await one.join("a1", name)
    await two.join("b1", name)
    assert await two.group_counts() == {name: 2}
    assert await two.groups_of("a1") == [name]
    assert await two.publish_group(name, "hi") == 2
    assert await a.until(1) == ["hi"]


async def test_a_killed_node_is_reaped_and_its_groups_are_told(nodes: Nodes) -> None:
    survivor, doomed = await nodes(**FAST), await nodes(**FAST)
    lost: list[tuple[Member, list[str]]] = []
    told = asyncio.Event()

    async def on_lost(member: Member, groups: list[str]) -> None:
        lost.append((member, groups))
        told.set()

    survivor.on_lost(on_lost)
    await attach(survivor, UID_A, "a1", "alice")
    await attach(doomed, UID_B, "b1", "bob")
    await doomed.join("b1", "g")
    await doomed.join("b1", "h")
    await survivor.join("a1", "g")
    await crash(doomed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(WAIT):
        await told.wait()
    assert loop.time() - started < 5
    assert lost == [(Member(UID_B, "b1", "bob"), ["g", "h"])]
    assert [m.scid for m in await survivor.members("g")] == ["a1"]
    assert await survivor.stats() == (1, 1)
    assert await survivor.resolve_name("bob") is None


async def test_a_node_that_stalled_past_its_expiry_registers_again(nodes: Nodes) -> None:
    one, two = await nodes(**FAST), await nodes(**FAST)
    await attach(two, UID_B, "b1", "bob")
    await two.join("b1", "g")
    # The reaper of node one takes node two's records while two's heartbeat is held up.
    for task in two._tasks:
        task.cancel()
    await until(lambda: _empty(one, "g"))
    two._tasks = []
    two._start_tasks()
    await until(lambda: _has(one, "g", "b1"))


async def _empty(plane: RedisBackplane, group: str) -> bool:
    return not await plane.members(group)


async def _has(plane: RedisBackplane, group: str, scid: str) -> bool:
    return scid in [m.scid for m in await plane.members(group)]


async def test_routing_recovers_after_a_redis_restart(own_redis: RedisServer, nodes: Nodes) -> None:
    one, two = await nodes(own_redis.url), await nodes(own_redis.url)
    a = await attach(one, UID_A, "a1", "alice")
    b = await attach(two, UID_B, "b1", "bob")
    await one.join("a1", "g")
    await two.join("b1", "g")
    await own_redis.restart()  # empty: every key and subscription gone
    await until(lambda: _both_up(one, two))
    assert sorted(m.scid for m in await one.members("g")) == ["a1", "b1"]
    assert await two.publish_group("g", "after") == 2
    assert await a.until(1) == ["after"]
    assert await b.until(1) == ["after"]
    assert await one.resolve_name("bob") == UID_B


async def _both_up(*planes: RedisBackplane) -> bool:
    if any(p.link_state is not LinkState.UP for p in planes):
        return False
    return all([(await p.stats())[0] == 2 for p in planes])


async def test_without_redis_a_node_serves_its_own_connections(
    own_redis: RedisServer, nodes: Nodes
) -> None:
    one = await nodes(own_redis.url)
    a1 = await attach(one, UID_A, "a1", "alice", cap=2)
    await one.join("a1", "g")
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: _state(one, LinkState.DOWN))
    a2 = await attach(one, UID_A, "a2", "alice", cap=2)
    assert not await one.attach(Member(UID_A, "a3", "alice"), Inbox(), max_per_user=2)
    await one.join("a2", "g")
    assert await one.publish_group("g", "alone") == 2
    assert await one.publish_user(UID_A, "private", exclude="a1") == 1
    assert a1.frames == ["alone"]
    assert a2.frames == ["alone", "private"]
    assert [m.scid for m in await one.members("g")] == ["a1", "a2"]
    assert await one.stats() == (2, 1)
    await asyncio.to_thread(own_redis.start)
    await until(lambda: _state(one, LinkState.UP))
    await until(lambda: _count(one, 2))
    assert [m.scid for m in await one.members("g")] == ["a1", "a2"]


async def _state(plane: RedisBackplane, state: LinkState) -> bool:
    return plane.link_state is state


async def _count(plane: RedisBackplane, connections: int) -> bool:
    return (await plane.stats())[0] == connections


async def test_an_unreachable_redis_fails_the_start_clearly() -> None:
    plane = RedisBackplane(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BackplaneError, match="cannot use Redis"):
        await plane.start()
    await plane.close()


async def test_a_wrong_password_fails_the_start_and_is_not_shown(tmp_path: Any) -> None:
    server = RedisServer(tmp_path / "redis", password="right-password-123")
    await asyncio.to_thread(server.start)
    try:
        plane = RedisBackplane(server.url, password="wrong-password-456")
        with pytest.raises(BackplaneError, match="refused the password") as caught:
            await plane.start()
        assert "wrong-password" not in str(caught.value)
        good = RedisBackplane(server.url, password="right-password-123")
        await good.start()
        assert await good.stats() == (0, 0)
        await good.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_clean_stop_leaves_nothing_behind(nodes: Nodes, redis_server: RedisServer) -> None:
    one = await nodes()
    await attach(one, UID_A, "a1", "alice")
    await one.join("a1", "g")
    await one.detach("a1")
    await one.close()
    assert redis_server.command("DBSIZE") == b":1"  # the sequence counter only
