"""Routing and presence of the hub behind one interface; the in-memory implementation.

Two halves, kept apart so that a Redis backplane drops in for a cluster of hub nodes:

- :class:`LocalDelivery` holds this node's connections (``Sink`` objects) indexed by
  connection id, user and group, and writes an already-encoded frame to the local ones.
  Every node has one, whatever the backplane.
- :class:`Backplane` is the cluster view: who is connected where, who is in which group,
  and ``publish_*`` that routes a frame to every node that has a recipient. The memory
  implementation is the cluster of one node, so routing is a direct call into its
  ``LocalDelivery``. A Redis implementation keeps presence in keys with an expiry that each
  node refreshes (so a dead node's connections vanish) and routes with pub/sub channels per
  group, user and node, whose subscriber calls the same ``LocalDelivery`` methods.

Every method is ``async`` because the Redis one does I/O; the memory one never suspends, so
a join or a publish here is atomic with respect to other connections.

A node that dies takes its connections with it without detaching them; the backplane that
notices (Redis: a surviving node whose reaper sees the node's presence key expire) hands
each lost connection and its groups to the handler set with :meth:`Backplane.on_lost`, so
that their members are told (USER_DISCONNECTED) exactly as for a connection closed here.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypeVar

from agent.errors import EdgeAgentError

__all__ = [
    "Backplane",
    "BackplaneError",
    "LocalDelivery",
    "LostHandler",
    "Member",
    "MemoryBackplane",
    "Sink",
]

V = TypeVar("V")


class BackplaneError(EdgeAgentError):
    """The backplane cannot work: its engine is unreachable or refuses this node."""


class Sink(Protocol):
    """Where a connection's outbound frames go (a non-blocking enqueue)."""

    def deliver(self, text: str) -> None:
        """Queue ``text``; never blocks, never raises, never edits the indexes here."""


@dataclass(frozen=True, slots=True)
class Member:
    """One connection as presence sees it."""

    user_id: str
    scid: str
    name: str


class LocalDelivery:
    """This node's connections, indexed for fan-out."""

    def __init__(self) -> None:
        self._sinks: dict[str, Sink] = {}
        self._users: dict[str, dict[str, Sink]] = {}
        self._groups: dict[str, dict[str, Sink]] = {}

    def __len__(self) -> int:
        return len(self._sinks)

    def add(self, member: Member, sink: Sink) -> None:
        """Register a connection of this node."""
        self._sinks[member.scid] = sink
        self._users.setdefault(member.user_id, {})[member.scid] = sink

    def remove(self, member: Member) -> None:
        """Forget a connection (its group entries must have been removed first)."""
        self._sinks.pop(member.scid, None)
        _discard(self._users, member.user_id, member.scid)

    def add_to_group(self, scid: str, group: str) -> None:
        """Index a local connection under ``group``."""
        sink = self._sinks.get(scid)
        if sink is not None:
            self._groups.setdefault(group, {})[scid] = sink

    def remove_from_group(self, scid: str, group: str) -> None:
        """Drop a local connection from ``group``'s index."""
        _discard(self._groups, group, scid)

    def to_group(self, group: str, text: str, *, exclude: str | None = None) -> int:
        """Deliver ``text`` to the local members of ``group``; how many got it."""
        return _deliver(self._groups.get(group), text, exclude)

    def to_user(self, user_id: str, text: str, *, exclude: str | None = None) -> int:
        """Deliver ``text`` to the local connections of ``user_id``; how many got it."""
        return _deliver(self._users.get(user_id), text, exclude)

    def to_connection(self, scid: str, text: str) -> bool:
        """Deliver ``text`` to one local connection; whether it is here."""
        sink = self._sinks.get(scid)
        if sink is None:
            return False
        sink.deliver(text)
        return True


LostHandler: TypeAlias = Callable[["Member", list[str]], Awaitable[None]]


class Backplane(abc.ABC):
    """Cluster-wide presence and routing of realtime frames."""

    local: LocalDelivery
    _lost: LostHandler | None = None

    async def start(self) -> None:  # noqa: B027 (optional hook: memory has nothing to open)
        """Open what the backplane needs before the hub serves; ``BackplaneError`` if it can't."""

    def on_lost(self, handler: LostHandler) -> None:
        """Have ``handler(member, groups)`` called for each connection lost with its node."""
        self._lost = handler

    @abc.abstractmethod
    async def attach(self, member: Member, sink: Sink, *, max_per_user: int) -> bool:
        """Register a new connection; ``False`` if its user already has ``max_per_user``."""

    @abc.abstractmethod
    async def detach(self, scid: str) -> list[str]:
        """Forget a connection; the groups it was in (their members were not notified)."""

    @abc.abstractmethod
    async def join(self, scid: str, group: str) -> bool:
        """Add a connection to ``group``; ``False`` if it was already a member."""

    @abc.abstractmethod
    async def leave(self, scid: str, group: str) -> bool:
        """Remove a connection from ``group``; ``False`` if it was not a member."""

    @abc.abstractmethod
    async def groups_of(self, scid: str) -> list[str]:
        """The groups a connection is in, in the order it joined them."""

    @abc.abstractmethod
    async def members(self, group: str) -> list[Member]:
        """The connections in ``group``."""

    @abc.abstractmethod
    async def group_counts(self) -> dict[str, int]:
        """Every non-empty group and how many connections are in it."""

    @abc.abstractmethod
    async def user_connections(self, user_id: str) -> list[str]:
        """The connection ids of ``user_id``."""

    @abc.abstractmethod
    async def connection(self, scid: str) -> Member | None:
        """The connection ``scid``, if it is connected anywhere."""

    @abc.abstractmethod
    async def resolve_name(self, name: str) -> str | None:
        """The user id of the connected account called ``name``."""

    @abc.abstractmethod
    async def publish_group(self, group: str, text: str, *, exclude: str | None = None) -> int:
        """Route ``text`` to every member of ``group``; recipients reached (0 if none)."""

    @abc.abstractmethod
    async def publish_user(self, user_id: str, text: str, *, exclude: str | None = None) -> int:
        """Route ``text`` to every connection of ``user_id``; recipients reached."""

    @abc.abstractmethod
    async def publish_connection(self, scid: str, text: str) -> bool:
        """Route ``text`` to one connection; ``False`` if it is not connected."""

    @abc.abstractmethod
    async def stats(self) -> tuple[int, int]:
        """(connections, groups) of the whole cluster."""

    async def close(self) -> None:  # noqa: B027 (optional hook: memory holds nothing)
        """Release what the backplane holds (connections to Redis, ...)."""


class MemoryBackplane(Backplane):
    """The backplane of a single hub node: presence in dictionaries, routing by calls."""

    def __init__(self) -> None:
        self.local = LocalDelivery()
        self._members: dict[str, Member] = {}
        # Ordered dicts used as ordered sets: join order is kept for listings and notices.
        self._memberships: dict[str, dict[str, None]] = {}
        self._groups: dict[str, dict[str, Member]] = {}
        self._users: dict[str, dict[str, None]] = {}
        self._names: dict[str, str] = {}

    async def attach(self, member: Member, sink: Sink, *, max_per_user: int) -> bool:
        """Register a new connection; ``False`` if its user already has ``max_per_user``."""
        conns = self._users.get(member.user_id, {})
        if len(conns) >= max_per_user:
            return False
        self._members[member.scid] = member
        self._memberships[member.scid] = {}
        self._users.setdefault(member.user_id, {})[member.scid] = None
        self._names[member.name] = member.user_id
        self.local.add(member, sink)
        return True

    async def detach(self, scid: str) -> list[str]:
        """Forget a connection; the groups it was in."""
        member = self._members.pop(scid, None)
        if member is None:
            return []
        groups = list(self._memberships.pop(scid, {}))
        for group in groups:
            self._drop_membership(scid, group)
        _discard(self._users, member.user_id, scid)
        if member.user_id not in self._users:
            self._names.pop(member.name, None)
        self.local.remove(member)
        return groups

    async def join(self, scid: str, group: str) -> bool:
        """Add a connection to ``group``; ``False`` if it was already a member."""
        memberships = self._memberships.get(scid)
        if memberships is None or group in memberships:
            return False
        memberships[group] = None
        self._groups.setdefault(group, {})[scid] = self._members[scid]
        self.local.add_to_group(scid, group)
        return True

    async def leave(self, scid: str, group: str) -> bool:
        """Remove a connection from ``group``; ``False`` if it was not a member."""
        memberships = self._memberships.get(scid)
        if memberships is None or group not in memberships:
            return False
        del memberships[group]
        self._drop_membership(scid, group)
        return True

    async def groups_of(self, scid: str) -> list[str]:
        """The groups a connection is in, in the order it joined them."""
        return list(self._memberships.get(scid, {}))

    async def members(self, group: str) -> list[Member]:
        """The connections in ``group``."""
        return list(self._groups.get(group, {}).values())

    async def group_counts(self) -> dict[str, int]:
        """Every non-empty group and how many connections are in it."""
        return {group: len(members) for group, members in self._groups.items()}

    async def user_connections(self, user_id: str) -> list[str]:
        """The connection ids of ``user_id``."""
        return list(self._users.get(user_id, {}))

    async def connection(self, scid: str) -> Member | None:
        """The connection ``scid``, if connected."""
        return self._members.get(scid)

    async def resolve_name(self, name: str) -> str | None:
        """The user id of the connected account called ``name``."""
        return self._names.get(name)

    async def publish_group(self, group: str, text: str, *, exclude: str | None = None) -> int:
        """Deliver ``text`` to every member of ``group``."""
        return self.local.to_group(group, text, exclude=exclude)

    async def publish_user(self, user_id: str, text: str, *, exclude: str | None = None) -> int:
        """Deliver ``text`` to every connection of ``user_id``."""
        return self.local.to_user(user_id, text, exclude=exclude)

    async def publish_connection(self, scid: str, text: str) -> bool:
        """Deliver ``text`` to one connection."""
        return self.local.to_connection(scid, text)

    async def stats(self) -> tuple[int, int]:
        """(connections, groups)."""
        return len(self._members), len(self._groups)

    def snapshot(self) -> list[tuple[Member, list[str]]]:
        """Every connection and its groups in join order, read at once (never suspends)."""
        return [(m, list(self._memberships.get(scid, {}))) for scid, m in self._members.items()]

    def _drop_membership(self, scid: str, group: str) -> None:
        _discard(self._groups, group, scid)
        self.local.remove_from_group(scid, group)


def _deliver(sinks: dict[str, Sink] | None, text: str, exclude: str | None) -> int:
    if not sinks:
        return 0
    if exclude is None or exclude not in sinks:
        for sink in sinks.values():
            sink.deliver(text)
        return len(sinks)
    for scid, sink in sinks.items():
        if scid != exclude:
            sink.deliver(text)
    return len(sinks) - 1


def _discard(index: dict[str, dict[str, V]], key: str, item: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(item, None)
        if not bucket:
            del index[key]
