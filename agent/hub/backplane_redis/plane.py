"""The Redis backplane: presence in Redis, routing by pub/sub, this node's view as fallback.

Each node keeps its own connections in a :class:`MemoryBackplane` (the "mirror": its
``LocalDelivery`` is this backplane's) and every change is made there first, then in Redis
by one atomic script. So the mirror is always what this node really has, and it is what
the node registers again whenever Redis lost it (a restart, an expired heartbeat).

Routing: a publish is one script that counts the recipients and publishes once to the
channel of the group, user or node; every node subscribed to that channel (it has a local
recipient) writes the same text to its local ones. Frames travel already encoded, so a
frame is encoded once for the whole cluster. Redis delivers the messages of every
publisher in order, and each node publishes in the order it acted (:mod:`.link`), so one
sender's frames reach everyone in order, wherever they are.

Liveness: each node refreshes ``node:{id}`` (expiry ``ttl_seconds``) every
``heartbeat_seconds``; every node runs a reaper about every ``reap_seconds`` that takes the
connections of nodes whose key expired out of presence (one script: only one reaper gets
each) and hands them to the ``on_lost`` handler, which tells their groups. With the
defaults a killed node's connections are gone, and announced, within ~8 s.

Without Redis (down, restarting) the node serves its own connections alone: publishes
reach local members, listings show local connections, the connection limit counts local
ones. The link reconnects and the node registers its connections again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from redis.asyncio.connection import AbstractConnection, Connection, parse_url

from agent.hub.backplane import Backplane, Member, MemoryBackplane, Sink
from agent.hub.backplane_redis import scripts
from agent.hub.backplane_redis.link import BackplaneDown, Command, LinkState, RedisLink
from agent.hub.backplane_redis.naming import (
    DEFAULT_PREFIX,
    Names,
    Route,
    RouteKind,
    group_bytes,
    payload,
    split_payload,
)

__all__ = ["RedisBackplane"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# The mirror never refuses on its own while Redis counts connections for the cluster.
_NO_LIMIT: Final = 1 << 30
# Connections per ADD_MANY script when registering a node again (short scripts keep Redis
# responsive to the other nodes meanwhile).
_RESTORE_CHUNK: Final = 500
_CONNECT_SECONDS: Final = 5.0


class RedisBackplane(Backplane):
    """Presence and routing for a cluster of hub nodes sharing one Redis."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        node: str | None = None,
        heartbeat_seconds: float = 2.0,
        ttl_seconds: float = 6.0,
        reap_seconds: float = 1.0,
        timeout_seconds: float = 5.0,
    ) -> None:
        if not 0 < heartbeat_seconds < ttl_seconds:
            raise ValueError("the heartbeat must come more often than the key expires")
        self.node = node or _node_id()
        self._mine = MemoryBackplane()
        self.local = self._mine.local
        self._names = Names(prefix)
        self._prefix = prefix
        self._ttl_ms = int(ttl_seconds * 1000)
        self._heartbeat = heartbeat_seconds
        self._reap_every = reap_seconds
        self._routes: dict[bytes, Route] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._link = RedisLink(
            _connection_factory(url, password, self.node),
            scripts=scripts.ALL,
            on_message=self._deliver,
            on_up=self._registration,
            timeout=timeout_seconds,
        )

    @property
    def link(self) -> RedisLink:
        """This node's commands to Redis, for other shared state of the hub (logins)."""
        return self._link

    @property
    def prefix(self) -> str:
        """What every key and channel of this cluster starts with."""
        return self._prefix

    @property
    def link_state(self) -> LinkState:
        """Whether this node is connected to Redis (UP) or serving alone (DOWN)."""
        return self._link.state

    async def start(self) -> None:
        """Connect to Redis and register this node; ``BackplaneError`` if Redis can't be used."""
        await self._hold(self._names.node_channel(self.node), Route(RouteKind.NODE, self.node))
        await self._link.start()
        self._start_tasks()
        log.info("backplane: node %s on Redis", self.node)

    def _start_tasks(self) -> None:
        for loop, name in ((self._beat, "heartbeat"), (self._reap, "reaper")):
            self._tasks.append(asyncio.create_task(_forever(loop), name=f"backplane-{name}"))

    async def close(self) -> None:
        """Forget this node's records in Redis (if reachable) and disconnect."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._link.up:
            with contextlib.suppress(BackplaneDown, TimeoutError):
                async with asyncio.timeout(_CONNECT_SECONDS):
                    await self._script(scripts.CLEAR_NODE, self.node, 0)
        await self._link.close()

    # -- presence ----------------------------------------------------------------------

    async def attach(self, member: Member, sink: Sink, *, max_per_user: int) -> bool:
        """Register a new connection; ``False`` if its user has ``max_per_user`` anywhere."""
        alone = not self._link.up
        limit = max_per_user if alone else _NO_LIMIT
        if not await self._mine.attach(member, sink, max_per_user=limit):
            return False
        if not alone:
            args = (self.node, member.scid, member.user_id, member.name, max_per_user)
            if await self._try(self._script(scripts.ATTACH, *args), 1) == 0:
                await self._mine.detach(member.scid)
                return False
        route = Route(RouteKind.USER, member.user_id)
        await self._hold(self._names.user_channel(member.user_id), route)
        return True

    async def detach(self, scid: str) -> list[str]:
        """Forget a connection; the groups it was in."""
        member = await self._mine.connection(scid)
        if member is None:
            return []
        groups = await self._mine.detach(scid)
        await self._try(self._script(scripts.DETACH, scid), None)
        for group in groups:
            await self._link.release(self._names.group_channel(group))
        await self._link.release(self._names.user_channel(member.user_id))
        return groups

    async def join(self, scid: str, group: str) -> bool:
        """Add a connection to ``group``; ``False`` if it was already a member."""
        if not await self._mine.join(scid, group):
            return False
        await self._hold(self._names.group_channel(group), Route(RouteKind.GROUP, group))
        await self._try(self._script(scripts.JOIN, scid, group_bytes(group)), None)
        return True

    async def leave(self, scid: str, group: str) -> bool:
        """Remove a connection from ``group``; ``False`` if it was not a member."""
        if not await self._mine.leave(scid, group):
            return False
        await self._try(self._script(scripts.LEAVE, scid, group_bytes(group)), None)
        await self._link.release(self._names.group_channel(group))
        return True

    # -- the cluster's view ------------------------------------------------------------

    async def groups_of(self, scid: str) -> list[str]:
        """The groups a connection is in, in the order it joined them."""
        if await self._mine.connection(scid) is not None:
            return await self._mine.groups_of(scid)
        record = await self._record(scid)
        return [] if record is None else _groups(record[3])

    async def members(self, group: str) -> list[Member]:
        """The connections in ``group``, in join order."""
        try:
            flat = await self._script(scripts.MEMBERS, group_bytes(group))
        except BackplaneDown:
            return await self._mine.members(group)
        return [
            Member(uid.decode(), scid.decode(), name.decode())
            for scid, uid, name in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
        ]

    async def group_counts(self) -> dict[str, int]:
        """Every non-empty group and how many connections are in it."""
        try:
            counts = await self._link.call("HGETALL", self._prefix + "groups")
        except BackplaneDown:
            return await self._mine.group_counts()
        found = {
            group.decode("utf-8", "surrogatepass"): int(n)
            for group, n in zip(counts[::2], counts[1::2], strict=True)
        }
        return {group: n for group, n in found.items() if n > 0}

    async def user_connections(self, user_id: str) -> list[str]:
        """The connection ids of ``user_id``, anywhere."""
        try:
            found = await self._link.call("ZRANGE", self._prefix + "user:" + user_id, 0, -1)
        except BackplaneDown:
            return await self._mine.user_connections(user_id)
        return [scid.decode() for scid in found]

    async def connection(self, scid: str) -> Member | None:
        """The connection ``scid``, if it is connected anywhere."""
        mine = await self._mine.connection(scid)
        if mine is not None:
            return mine
        record = await self._record(scid)
        return None if record is None else Member(record[1], scid, record[2])

    async def resolve_name(self, name: str) -> str | None:
        """The user id of the connected account called ``name``."""
        try:
            found = await self._link.call("GET", self._prefix + "name:" + name)
        except BackplaneDown:
            return await self._mine.resolve_name(name)
        return None if found is None else str(found.decode())

    async def stats(self) -> tuple[int, int]:
        """(connections, groups) of the whole cluster."""
        try:
            connections, groups = await self._script(scripts.STATS)
        except BackplaneDown:
            return await self._mine.stats()
        return int(connections), int(groups)

    # -- routing -------------------------------------------------------------------------

    async def publish_group(self, group: str, text: str, *, exclude: str | None = None) -> int:
        """Route ``text`` to every member of ``group``; recipients reached (0 if none)."""
        try:
            reached = await self._script(
                scripts.PUBLISH_GROUP, group_bytes(group), exclude or "", payload(exclude, text)
            )
        except BackplaneDown:
            return self.local.to_group(group, text, exclude=exclude)
        return int(reached)

    async def publish_user(self, user_id: str, text: str, *, exclude: str | None = None) -> int:
        """Route ``text`` to every connection of ``user_id``; recipients reached."""
        try:
            reached = await self._script(
                scripts.PUBLISH_USER, user_id, exclude or "", payload(exclude, text)
            )
        except BackplaneDown:
            return self.local.to_user(user_id, text, exclude=exclude)
        return int(reached)

    async def publish_connection(self, scid: str, text: str) -> bool:
        """Route ``text`` to one connection; ``False`` if it is not connected."""
        try:
            nodes = await self._script(scripts.PUBLISH_CONNECTION, scid, payload(scid, text))
        except BackplaneDown:
            return self.local.to_connection(scid, text)
        return int(nodes) > 0

    def _deliver(self, channel: bytes, data: bytes) -> None:
        """A message from Redis: hand the frame to the local recipients of its channel."""
        route = self._routes.get(channel)
        if route is None:
            return  # unsubscribed meanwhile: nobody here wants it any more
        head, frame = split_payload(data)
        if route.kind is RouteKind.GROUP:
            self.local.to_group(route.target, frame, exclude=head)
        elif route.kind is RouteKind.USER:
            self.local.to_user(route.target, frame, exclude=head)
        elif head is not None:
            self.local.to_connection(head, frame)

    # -- this node's registration, heartbeat and reaper -----------------------------------

    def _registration(self) -> list[Command]:
        """Commands that make Redis hold exactly this node's connections and groups."""
        prefix, node = self._prefix, self.node
        commands: list[Command] = [self._command(scripts.CLEAR_NODE, node, self._ttl_ms)]
        batch: list[Any] = []
        for index, (member, groups) in enumerate(self._mine.snapshot(), start=1):
            batch += [member.scid, member.user_id, member.name, len(groups)]
            batch += [group_bytes(group) for group in groups]
            if index % _RESTORE_CHUNK == 0:
                commands.append(self._command(scripts.ADD_MANY, node, *batch))
                batch = []
        if batch:
            commands.append(self._command(scripts.ADD_MANY, node, *batch))
        log.debug("backplane: registering node %s under %s", node, prefix)
        return commands

    async def _beat(self) -> None:
        await asyncio.sleep(self._heartbeat)
        with contextlib.suppress(BackplaneDown):
            if await self._script(scripts.HEARTBEAT, self.node, self._ttl_ms) == 0:
                log.warning(
                    "backplane: node %s had expired in Redis (a stall, or Redis lost data); "
                    "registering its connections again",
                    self.node,
                )
                self._link.resync()

    async def _reap(self) -> None:
        # Jitter: the nodes do not all ask at the same moment.
        await asyncio.sleep(self._reap_every * (0.5 + random.random()))  # noqa: S311
        try:
            flat = await self._script(scripts.REAP, self.node)
        except BackplaneDown:
            return
        quads = zip(flat[::4], flat[1::4], flat[2::4], flat[3::4], strict=True)
        for scid, uid, name, groups in quads:
            member = Member(uid.decode(), scid.decode(), name.decode())
            lost = _groups(groups)
            log.info("backplane: connection %s (%s) lost with its node", member.scid, member.name)
            if self._lost is not None and lost:
                await self._lost(member, lost)

    # -- helpers -------------------------------------------------------------------------

    async def _hold(self, channel: bytes, route: Route) -> None:
        self._routes[channel] = route
        await self._link.hold(channel)

    async def _record(self, scid: str) -> list[Any] | None:
        try:
            raw = await self._link.call("HGET", self._prefix + "conn", scid)
        except BackplaneDown:
            return None
        if raw is None:
            return None
        record = json.loads(raw.decode("utf-8", "surrogatepass"))
        return record if isinstance(record, list) and len(record) == 4 else None

    def _command(self, script: scripts.Script, *args: Any) -> Command:
        return ("EVALSHA", script.sha, 0, self._prefix, *args)

    def _script(self, script: scripts.Script, *args: Any) -> asyncio.Future[Any]:
        return self._link.send(self._command(script, *args))

    @staticmethod
    async def _try(pending: Awaitable[T], fallback: T) -> T:
        try:
            return await pending
        except BackplaneDown:
            return fallback


def _groups(raw: bytes | str | list[Any] | dict[str, Any]) -> list[str]:
    """Group names from a record's JSON list (``{}`` is cjson's empty list)."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "surrogatepass")
    found = json.loads(raw) if isinstance(raw, str) else raw
    return [g for g in found if isinstance(g, str)] if isinstance(found, list) else []


def _node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _connection_factory(
    url: str, password: str | None, node: str
) -> Callable[[], AbstractConnection]:
    options: dict[str, Any] = dict(parse_url(url))
    kind: type[AbstractConnection] = options.pop("connection_class", Connection)
    if password is not None:
        options["password"] = password
    options.update(
        # RESP2: pub/sub messages are plain replies on the connection that subscribed (the
        # link reads them itself). No socket timeout: the link times its own waits, and a
        # quiet subscription is not a dead one.
        protocol=2,
        socket_timeout=None,
        socket_connect_timeout=_CONNECT_SECONDS,
        socket_keepalive=True,
        client_name=f"edge-agent-hub-{node}",
    )
    return lambda: kind(**options)


async def _forever(step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` again and again; a failing step is logged, not the end of the loop."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("backplane: %s failed", getattr(step, "__name__", "a task"))
            await asyncio.sleep(1.0)
