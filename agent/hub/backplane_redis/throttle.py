"""The login throttle every node of a cluster shares, in Redis.

A :class:`agent.hub.login.ThrottleStore` whose steps are each one atomic script
(:data:`.scripts.THROTTLE_RETRY_AFTER`, :data:`.scripts.THROTTLE_FAILED`; a success is one
``DEL``), so failures counted through any node lock a name or an address out on all of them
after the number of tries a single hub allows, and a success through one clears the name on
all. The scripts do :class:`agent.hub.login.FailureThrottle`'s arithmetic with the same
:class:`agent.hub.login.ThrottlePolicy` numbers, passed as arguments, at Redis's own clock
(``TIME``): the nodes' clocks, which need not agree, are never read.

Keys, under the backplane's prefix (:mod:`.naming`)::

    {P}login:name:{HMAC-SHA256 of the name}        hash  f failures, u updated, l locked until
    {P}login:address:{HMAC-SHA256 of the address}

Hashing makes any string a safe, bounded key, and keeps what people type into the name field
(sometimes their password) out of Redis in clear; the hash is keyed (``hash_key``, which the
hub derives from the secret its nodes share), so whoever reads Redis cannot test guesses
against it either. Each record expires once it is unlocked and
fully forgiven, so Redis holds at most what the logins of the last forgiveness period left.

Redis unreachable or refusing is :class:`agent.hub.login.ThrottleStoreDown`; the guard then
throttles with its node's own tables (see :mod:`agent.hub.login`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from agent.hub.backplane_redis import scripts
from agent.hub.backplane_redis.link import BackplaneDown, RedisLink
from agent.hub.backplane_redis.naming import DEFAULT_PREFIX
from agent.hub.backplane_redis.plane import RedisBackplane
from agent.hub.login import (
    ADDRESS_POLICY,
    NAME_POLICY,
    ThrottleKind,
    ThrottlePolicy,
    ThrottleStoreDown,
)

__all__ = ["RedisThrottleStore"]


class RedisThrottleStore:
    """Failed logins counted in Redis for the whole cluster (a ``ThrottleStore``).

    ``clock`` replaces Redis's ``TIME`` (tests drive it by hand); leave it out otherwise.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str = DEFAULT_PREFIX,
        name_policy: ThrottlePolicy = NAME_POLICY,
        address_policy: ThrottlePolicy = ADDRESS_POLICY,
        clock: Callable[[], float] | None = None,
        hash_key: bytes = b"",
    ) -> None:
        self._link = link
        self._hash_key = hash_key
        self._prefix = prefix + "login:"
        self._policies = {ThrottleKind.NAME: name_policy, ThrottleKind.ADDRESS: address_policy}
        self._clock = clock

    @classmethod
    def of(cls, backplane: RedisBackplane, **options: Any) -> RedisThrottleStore:
        """The store on ``backplane``'s connection and under its prefix."""
        return cls(backplane.link, prefix=backplane.prefix, **options)

    def record_key(self, kind: ThrottleKind, key: str) -> str:
        """The Redis key of ``key``'s record in the ``kind`` table."""
        data = key.encode("utf-8", "surrogatepass")
        digest = hmac.new(self._hash_key, data, hashlib.sha256).hexdigest()
        return f"{self._prefix}{kind.value}:{digest}"

    async def retry_after(self, kind: ThrottleKind, key: str) -> float:
        """Seconds ``key`` stays locked out now; 0.0 when it may try."""
        forgive = self._policies[kind].forgive_seconds
        return float(await self._run(scripts.THROTTLE_RETRY_AFTER, kind, key, forgive))

    async def failed(self, kind: ThrottleKind, key: str) -> float:
        """Count a failure of ``key`` now; the lockout it starts (0.0 if none)."""
        policy = self._policies[kind]
        numbers = (policy.free_failures, policy.base_delay, policy.max_delay)
        return float(
            await self._run(scripts.THROTTLE_FAILED, kind, key, *numbers, policy.forgive_seconds)
        )

    async def succeeded(self, kind: ThrottleKind, key: str) -> None:
        """Forget the failures of ``key``."""
        await self._send(("DEL", self.record_key(kind, key)))

    async def _run(self, script: scripts.Script, kind: ThrottleKind, key: str, *args: Any) -> Any:
        now = "" if self._clock is None else repr(self._clock())
        record = self.record_key(kind, key)
        return await self._send(("EVALSHA", script.sha, 1, record, now, *map(repr, args)))

    async def _send(self, command: tuple[Any, ...]) -> Any:
        try:
            return await self._link.send(command)
        except (BackplaneDown, RedisError) as exc:
            raise ThrottleStoreDown(f"Redis: {exc}") from exc
