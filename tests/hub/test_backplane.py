"""The memory backplane: presence and routing, without sockets."""

from __future__ import annotations

import pytest

from agent.hub.backplane import LocalDelivery, Member, MemoryBackplane
from agent.hub.backplane_redis.naming import Names, Route, RouteKind, payload, split_payload
from agent.hub.server import backplane_for

UID_A = "0b6e4c9a-2f55-4c1e-9d7e-3a1b2c3d4e5f"
UID_B = "1c7f5dab-3066-4d2f-8e8f-4b2c3d4e5f60"


class Inbox:
    """A sink that records what it is given."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    def deliver(self, text: str) -> None:
        self.frames.append(text)


@pytest.fixture
async def plane() -> MemoryBackplane:
    return MemoryBackplane()


async def _attach(plane: MemoryBackplane, uid: str, scid: str, name: str) -> Inbox:
    inbox = Inbox()
    assert await plane.attach(Member(uid, scid, name), inbox, max_per_user=10)
    return inbox


async def test_attach_enforces_the_per_user_limit(plane: MemoryBackplane) -> None:
    first, second = Member(UID_A, "s1", "alice"), Member(UID_A, "s2", "alice")
    assert await plane.attach(first, Inbox(), max_per_user=1)
    assert not await plane.attach(second, Inbox(), max_per_user=1)
    assert await plane.user_connections(UID_A) == ["s1"]
    assert await plane.attach(Member(UID_B, "s3", "bob"), Inbox(), max_per_user=1)


async def test_join_leave_and_membership_views(plane: MemoryBackplane) -> None:
    await _attach(plane, UID_A, "s1", "alice")
    await _attach(plane, UID_B, "s2", "bob")
    assert await plane.join("s1", "g1")
    assert not await plane.join("s1", "g1")
    assert not await plane.join("unknown", "g1")
    assert await plane.join("s1", "g2")
    assert await plane.join("s2", "g1")
    assert await plane.groups_of("s1") == ["g1", "g2"]
    assert [m.scid for m in await plane.members("g1")] == ["s1", "s2"]
    assert await plane.group_counts() == {"g1": 2, "g2": 1}
    assert await plane.stats() == (2, 2)
    assert await plane.leave("s1", "g2")
    assert not await plane.leave("s1", "g2")
    assert not await plane.leave("unknown", "g2")
    assert await plane.group_counts() == {"g1": 2}
    assert await plane.members("g2") == []


async def test_detach_returns_the_groups_and_forgets_everything(plane: MemoryBackplane) -> None:
    await _attach(plane, UID_A, "s1", "alice")
    await plane.join("s1", "g1")
    await plane.join("s1", "g2")
    assert await plane.resolve_name("alice") == UID_A
    assert await plane.detach("s1") == ["g1", "g2"]
    assert await plane.detach("s1") == []
    assert await plane.group_counts() == {}
    assert await plane.connection("s1") is None
    assert await plane.resolve_name("alice") is None
    assert await plane.user_connections(UID_A) == []
    assert len(plane.local) == 0


async def test_a_name_resolves_while_any_connection_of_it_remains(plane: MemoryBackplane) -> None:
    await _attach(plane, UID_A, "s1", "alice")
    await _attach(plane, UID_A, "s2", "alice")
    await plane.detach("s1")
    assert await plane.resolve_name("alice") == UID_A
    assert await plane.connection("s2") == Member(UID_A, "s2", "alice")


async def test_publish_routes_to_groups_users_and_connections(plane: MemoryBackplane) -> None:
    a1 = await _attach(plane, UID_A, "s1", "alice")
    a2 = await _attach(plane, UID_A, "s2", "alice")
    b = await _attach(plane, UID_B, "s3", "bob")
    await plane.join("s1", "g")
    await plane.join("s3", "g")

    assert await plane.publish_group("g", "to-g") == 2
    assert await plane.publish_group("g", "not-s1", exclude="s1") == 1
    assert await plane.publish_group("g", "exclude-stranger", exclude="s9") == 2
    assert await plane.publish_group("nobody", "lost") == 0
    assert await plane.publish_user(UID_A, "to-a") == 2
    assert await plane.publish_user(UID_A, "to-a-but-s2", exclude="s2") == 1
    assert await plane.publish_user(UID_B, "to-b", exclude="s3") == 0
    assert await plane.publish_connection("s2", "to-s2")
    assert not await plane.publish_connection("s9", "lost")

    assert a1.frames == ["to-g", "exclude-stranger", "to-a", "to-a-but-s2"]
    assert a2.frames == ["to-a", "to-s2"]
    assert b.frames == ["to-g", "not-s1", "exclude-stranger"]


async def test_local_delivery_ignores_unknown_connections() -> None:
    local = LocalDelivery()
    local.add_to_group("ghost", "g")
    local.remove_from_group("ghost", "g")
    local.remove(Member(UID_A, "ghost", "alice"))
    assert local.to_group("g", "x") == 0
    assert not local.to_connection("ghost", "x")


async def test_close_is_harmless(plane: MemoryBackplane) -> None:
    await plane.close()


async def test_snapshot_lists_connections_with_their_groups_in_join_order(
    plane: MemoryBackplane,
) -> None:
    await _attach(plane, UID_A, "s1", "alice")
    await _attach(plane, UID_B, "s2", "bob")
    await plane.join("s1", "g2")
    await plane.join("s1", "g1")
    assert plane.snapshot() == [
        (Member(UID_A, "s1", "alice"), ["g2", "g1"]),
        (Member(UID_B, "s2", "bob"), []),
    ]


def test_the_memory_backplane_is_the_default() -> None:
    assert isinstance(backplane_for("memory"), MemoryBackplane)


def test_channels_name_their_route_and_nothing_else() -> None:
    names = Names("p:")
    group = "caf\u00e9\n\ud800"  # a newline and a lone surrogate survive the trip
    assert names.route(names.group_channel(group)) == Route(RouteKind.GROUP, group)
    assert names.route(names.user_channel(UID_A)) == Route(RouteKind.USER, UID_A)
    assert names.route(names.node_channel("n1")) == Route(RouteKind.NODE, "n1")
    assert names.route(b"other:to-group:g") is None
    assert Names().group_channel("g") == b"edge-agent:to-group:g"


def test_payloads_carry_a_head_and_the_frame_untouched() -> None:
    assert split_payload(payload("s1", "%7B%7D")) == ("s1", "%7B%7D")
    assert split_payload(payload(None, "a\nb")) == (None, "a\nb")
    assert split_payload(payload("", "x")) == (None, "x")
