"""Pure naming of the Redis backplane: keys, pub/sub channels and the payloads they carry.

Everything a node writes to Redis starts with one prefix (``edge-agent:`` by default), so
a Redis shared with other programs, or several clusters on one Redis, never collide:

    {P}conn               hash  scid -> JSON [node, user_id, name, [groups in join order]]
    {P}user:{user_id}     zset  scid, scored by a cluster-wide sequence (attach order)
    {P}name:{name}        string user_id, while that account has a connection
    {P}group:{group}      zset  scid, scored by the sequence (join order)
    {P}groups             hash  group -> number of connections in it
    {P}node:{node}        string, with an expiry each live node refreshes (its heartbeat)
    {P}nodes              set   nodes that registered (a reaper checks their keys)
    {P}node-conns:{node}  set   scids of that node, to reap them when it dies
    {P}seq                the sequence
    {P}login:name:{hmac}  hash  a failed-login record (agent.hub.backplane_redis.throttle)
    {P}login:address:{hmac}

Channels: ``{P}to-group:{group}``, ``{P}to-user:{user_id}`` and ``{P}to-node:{node}``. A
group or user payload is ``EXCLUDE "\\n" FRAME`` (EXCLUDE is a connection id or empty); a
node payload is ``SCID "\\n" FRAME``. Frames are the hub's already-encoded text, which is
ASCII without raw newlines (percent-encoded as ``encodeURI`` does), so the first newline
always ends the head.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_PREFIX",
    "Names",
    "Route",
    "RouteKind",
    "group_bytes",
    "payload",
    "split_payload",
]

DEFAULT_PREFIX: Final = "edge-agent:"


class RouteKind(enum.Enum):
    """What a channel delivers to on the node that receives it."""

    GROUP = "group"
    USER = "user"
    NODE = "node"


@dataclass(frozen=True, slots=True)
class Route:
    """Where the messages of one channel go: local members of a group, connections of a
    user, or (node channel) the connection named in each payload."""

    kind: RouteKind
    target: str


def group_bytes(group: str) -> bytes:
    """A group name as Redis stores it (any string the protocol admits round-trips)."""
    return group.encode("utf-8", "surrogatepass")


class Names:
    """Channel names under one prefix, and the way back from a channel to its route."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self._group = (prefix + "to-group:").encode()
        self._user = (prefix + "to-user:").encode()
        self._node = (prefix + "to-node:").encode()

    def group_channel(self, group: str) -> bytes:
        """The channel of a group's broadcasts and notices."""
        return self._group + group_bytes(group)

    def user_channel(self, user_id: str) -> bytes:
        """The channel of private messages to a user's connections."""
        return self._user + user_id.encode()

    def node_channel(self, node: str) -> bytes:
        """The channel of frames for single connections of ``node`` (``rtc`` relay)."""
        return self._node + node.encode()

    def route(self, channel: bytes) -> Route | None:
        """The route of a channel of this prefix; ``None`` for anything else."""
        for head, kind in (
            (self._group, RouteKind.GROUP),
            (self._user, RouteKind.USER),
            (self._node, RouteKind.NODE),
        ):
            if channel.startswith(head):
                return Route(kind, channel[len(head) :].decode("utf-8", "surrogatepass"))
        return None


def payload(head: str | None, frame: str) -> bytes:
    """``head "\\n" frame`` as published (head: an excluded or addressed connection id)."""
    return f"{head or ''}\n{frame}".encode()


def split_payload(data: bytes) -> tuple[str | None, str]:
    """(head or ``None``, frame) of a published payload."""
    head, _, frame = data.decode("utf-8", "replace").partition("\n")
    return head or None, frame
