"""The Redis backplane: several hub nodes share presence and routing through one Redis.

- :mod:`.naming`: keys, channels and payloads (pure).
- :mod:`.scripts`: the Lua scripts, one per change of presence or routed publish.
- :mod:`.link`: the node's two connections (commands in order, pub/sub) and reconnecting.
- :mod:`.plane`: :class:`RedisBackplane`, the :class:`agent.hub.backplane.Backplane`.

Select it with ``[hub] backplane = "redis://HOST:6379/0"`` (``rediss://`` for TLS) on every
node; a password goes in the URL or in ``backplane_password_file``.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from agent.errors import ConfigError
from agent.hub.backplane_redis.link import BackplaneDown, LinkState
from agent.hub.backplane_redis.plane import RedisBackplane

__all__ = ["BackplaneDown", "LinkState", "RedisBackplane", "read_password_file"]

log = logging.getLogger(__name__)


def read_password_file(path: Path) -> str:
    """The Redis password in ``path`` (surrounding whitespace dropped).

    Raises:
        ConfigError: naming ``hub.backplane_password_file`` when it is unreadable or empty.
    """
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read the Redis password file {path}: {reason}",
            key="hub.backplane_password_file",
        ) from exc
    if not text:
        raise ConfigError(
            f"the Redis password file {path} is empty", key="hub.backplane_password_file"
        )
    if mode & 0o077:
        log.warning("the Redis password file %s is readable by others (mode %o)", path, mode)
    return text
