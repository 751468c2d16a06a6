"""The Redis backplane: several hub nodes share presence and routing through one Redis.

- :mod:`.naming`: keys, channels and payloads (pure).
- :mod:`.scripts`: the Lua scripts, one per change of presence or routed publish.
- :mod:`.link`: the node's two connections (commands in order, pub/sub) and reconnecting.
- :mod:`.plane`: :class:`RedisBackplane`, the :class:`agent.hub.backplane.Backplane`.

Select it with ``[hub] backplane = "redis://HOST:6379/0"`` (``rediss://`` for TLS) on every
node; a password goes in the URL or in ``backplane_password_file``.
"""

from __future__ import annotations

from pathlib import Path

from agent.hub.backplane_redis.link import BackplaneDown, LinkState
from agent.hub.backplane_redis.plane import RedisBackplane
from agent.statedir import read_secret_file

__all__ = ["BackplaneDown", "LinkState", "RedisBackplane", "read_password_file"]


def read_password_file(path: Path) -> str:
    """The Redis password in ``path``; ``ConfigError`` naming ``hub.backplane_password_file``
    when it is unreadable or empty (a warning when others may read it)."""
    return read_secret_file(path, what="Redis password", key="hub.backplane_password_file")
