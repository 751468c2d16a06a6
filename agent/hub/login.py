"""Password logins that cannot be brute-forced or used to starve the hub.

Three parts, one pure and two thin:

- :class:`LoginThrottle` counts failed logins per account name and per client address and
  locks a key out for an exponentially growing delay once its free failures are used up
  (OWASP Authentication Cheat Sheet, "Protect against automated attacks"). It does no I/O
  and reads no clock: every call takes ``now``. Its memory is bounded: each table keeps at
  most ``max_keys`` keys and forgets the least recently failed one first, so a flood of
  made-up names cannot grow the hub without end.
- :class:`ThrottleStore` is where the guard keeps those counts: :class:`MemoryThrottleStore`
  (the pure tables and this node's monotonic clock) on a single hub, or a store every node
  shares (``agent.hub.backplane_redis.throttle``: one atomic script per step, Redis's own
  clock) when the hub runs as a cluster, so that N nodes behind a load balancer do not give
  a guesser N times the tries.
- :class:`KdfPool` runs the password hash (scrypt, deliberately slow and memory-hard) on a
  few threads of its own with a bounded number of logins waiting; one more is refused at
  once. The shared default executor (``asyncio.to_thread``) stays free for everything else,
  so a login flood cannot delay other requests or hold one scrypt buffer per pool thread.

:class:`LoginGuard` puts them in front of :meth:`AccountStore.verify_password`. Unknown
names, empty and wrong passwords all cost one scrypt and get the same :class:`AuthError`.

When the shared store cannot be reached (Redis restarting, the network cut), the guard fails
*closed to the node*: it counts and refuses with this node's own tables until the store
answers again (logged once each way). A login is never answered 500 and never goes
unthrottled; for the length of the outage a guesser spreading tries over N nodes gets up to
N times the free tries, and the node's counts are dropped from use once the store is back
(the shared counts are the cluster's truth).

The client address is the ASGI client host: behind a reverse proxy, the proxy's address,
unless the proxy is listed in ``[hub] trusted_proxies`` and sends ``X-Forwarded-For``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from time import monotonic
from typing import Final, ParamSpec, Protocol, TypeVar

from agent.errors import AuthError, Codes, EdgeAgentError, RealtimeError
from agent.hub.accounts import Account, AccountStore

__all__ = [
    "ADDRESS_POLICY",
    "NAME_POLICY",
    "WRONG_CREDENTIALS",
    "FailureThrottle",
    "KdfPool",
    "LoginGuard",
    "LoginRefused",
    "LoginThrottle",
    "MemoryThrottleStore",
    "ThrottleKind",
    "ThrottlePolicy",
    "ThrottleStore",
    "ThrottleStoreDown",
    "client_address",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

WRONG_CREDENTIALS: Final = "Wrong name or password."
# Keys each table remembers; a record is ~200 bytes, so a full table is a few megabytes.
_MAX_KEYS: Final = 10_000
# 2**62 seconds is past any cap; bounds the exponent so the float never overflows.
_MAX_EXPONENT: Final = 62
# A refused login is worth retrying about when one queued scrypt has finished.
_BUSY_RETRY_SECONDS: Final = 1


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How failures of one key turn into a lockout.

    The first ``free_failures`` cost nothing; failure ``free_failures + k`` locks the key for
    ``base_delay * 2**(k-1)`` seconds, at most ``max_delay``. One failure is forgiven for
    every ``forgive_seconds`` that pass, so a patient guesser is held to about one guess per
    ``forgive_seconds`` for good, while a person who mistyped is soon back to free tries.
    """

    free_failures: int
    base_delay: float
    max_delay: float
    forgive_seconds: float

    def delay(self, failures: float) -> float:
        """Seconds of lockout after the failure that made the count ``failures``."""
        over = failures - self.free_failures
        if over <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** min(max(0.0, over - 1), _MAX_EXPONENT))


# An account: 5 free tries, then 1 s, 2 s, 4 s ... up to 15 min; one forgiven per 5 min.
NAME_POLICY: Final = ThrottlePolicy(
    free_failures=5, base_delay=1.0, max_delay=900.0, forgive_seconds=300.0
)
# An address may be a household or an office behind one NAT: more free tries, faster
# forgiveness; it stops one client from trying many names.
ADDRESS_POLICY: Final = ThrottlePolicy(
    free_failures=10, base_delay=1.0, max_delay=900.0, forgive_seconds=60.0
)


class LoginRefused(RealtimeError):
    """A login that was not tried: ``status`` 429 (locked out) or 503 (KDF pool full).

    ``retry_after`` is the whole number of seconds to wait (HTTP ``Retry-After``,
    RFC 9110 s. 10.2.3).
    """

    def __init__(self, message: str, *, status: int, retry_after: int) -> None:
        super().__init__(Codes.RATE_LIMITED, message)
        self.status = status
        self.retry_after = retry_after


@dataclass(slots=True)
class _Record:
    failures: float
    updated: float
    locked_until: float


class FailureThrottle:
    """Failure counts and lockouts of keys under one :class:`ThrottlePolicy`. Pure."""

    def __init__(self, policy: ThrottlePolicy, *, max_keys: int = _MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.policy = policy
        self.max_keys = max_keys
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._records)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds ``key`` stays locked out at ``now``; 0.0 when it may try."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        if record.locked_until <= now and self._forgiven(record, now) == 0.0:
            del self._records[key]  # nothing left to remember
            return 0.0
        return max(0.0, record.locked_until - now)

    def failed(self, key: str, now: float) -> float:
        """Count a failure of ``key`` at ``now``; the lockout it starts (0.0 if none)."""
        record = self._records.pop(key, None)
        failures = 1.0 if record is None else self._forgiven(record, now) + 1.0
        delay = self.policy.delay(failures)
        self._records[key] = _Record(failures, now, now + delay)  # newest last
        while len(self._records) > self.max_keys:
            self._records.popitem(last=False)
        return delay

    def succeeded(self, key: str) -> None:
        """Forget the failures of ``key``."""
        self._records.pop(key, None)

    def failures(self, key: str, now: float) -> float:
        """The failure count of ``key`` at ``now``, after forgiveness."""
        record = self._records.get(key)
        return 0.0 if record is None else self._forgiven(record, now)

    def _forgiven(self, record: _Record, now: float) -> float:
        forgiven = max(0.0, now - record.updated) / self.policy.forgive_seconds
        return max(0.0, record.failures - forgiven)


class LoginThrottle:
    """Failed logins counted per account name and per client address. Pure.

    A success forgets the name's failures but not the address's: a client that holds one
    account must not be able to wipe its record between guesses at other accounts.
    """

    def __init__(
        self,
        *,
        name_policy: ThrottlePolicy = NAME_POLICY,
        address_policy: ThrottlePolicy = ADDRESS_POLICY,
        max_keys: int = _MAX_KEYS,
    ) -> None:
        self.names = FailureThrottle(name_policy, max_keys=max_keys)
        self.addresses = FailureThrottle(address_policy, max_keys=max_keys)

    def retry_after(self, name: str, address: str, now: float) -> int:
        """Whole seconds until ``name`` from ``address`` may try again; 0 if it may now."""
        wait = max(self.names.retry_after(name, now), self.addresses.retry_after(address, now))
        return math.ceil(wait)

    def failed(self, name: str, address: str, now: float) -> int:
        """Count a failed login; the whole seconds of lockout it starts (0 if none)."""
        wait = max(self.names.failed(name, now), self.addresses.failed(address, now))
        return math.ceil(wait)

    def succeeded(self, name: str) -> None:
        """A login of ``name`` succeeded: forget its failures."""
        self.names.succeeded(name)


class ThrottleKind(enum.Enum):
    """The two tables of failed logins: per account name and per client address."""

    NAME = "name"
    ADDRESS = "address"


class ThrottleStoreDown(EdgeAgentError):
    """A shared :class:`ThrottleStore` cannot be used now; the guard uses its node's own."""


class ThrottleStore(Protocol):
    """Failure counts and lockouts of both tables, each method one atomic step.

    The semantics are :class:`FailureThrottle`'s under the store's policy per kind, at the
    store's own clock. A shared store raises :class:`ThrottleStoreDown` when it cannot
    answer; it never half-applies a step.
    """

    async def retry_after(self, kind: ThrottleKind, key: str) -> float:
        """Seconds ``key`` stays locked out now; 0.0 when it may try."""

    async def failed(self, kind: ThrottleKind, key: str) -> float:
        """Count a failure of ``key`` now; the lockout it starts (0.0 if none)."""

    async def succeeded(self, kind: ThrottleKind, key: str) -> None:
        """Forget the failures of ``key``."""


class MemoryThrottleStore:
    """A :class:`ThrottleStore` over a :class:`LoginThrottle`'s pure tables, read at
    ``clock()`` (monotonic by default): this node's counts only."""

    def __init__(
        self, throttle: LoginThrottle | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self._clock = clock if clock is not None else monotonic

    def table(self, kind: ThrottleKind) -> FailureThrottle:
        """The pure table of ``kind``."""
        return self.throttle.names if kind is ThrottleKind.NAME else self.throttle.addresses

    async def retry_after(self, kind: ThrottleKind, key: str) -> float:
        """Seconds ``key`` stays locked out now; 0.0 when it may try."""
        return self.table(kind).retry_after(key, self._clock())

    async def failed(self, kind: ThrottleKind, key: str) -> float:
        """Count a failure of ``key`` now; the lockout it starts (0.0 if none)."""
        return self.table(kind).failed(key, self._clock())

    async def succeeded(self, kind: ThrottleKind, key: str) -> None:
        """Forget the failures of ``key``."""
        self.table(kind).succeeded(key)


class KdfPool:
    """Runs key derivations on ``threads`` threads of its own, ``queue`` more waiting.

    One call more than that raises :class:`LoginRefused` (503) at once. A slot is freed when
    the work has really finished (or was cancelled before it started), not when its caller
    gave up, so the bound holds even when clients disconnect mid-login.
    """

    def __init__(self, *, threads: int, queue: int) -> None:
        if threads < 1 or queue < 0:
            raise ValueError("a KDF pool needs at least 1 thread and a queue of 0 or more")
        self.capacity = threads + queue
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hub-kdf")
        self._lock = threading.Lock()  # done-callbacks run on the pool's threads
        self._busy = 0

    @property
    def busy(self) -> int:
        """Calls running or waiting."""
        return self._busy

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the pool; ``LoginRefused`` (503) when it is full."""
        with self._lock:
            if self._busy >= self.capacity:
                raise LoginRefused(
                    f"The hub is busy with other logins; try again in {_BUSY_RETRY_SECONDS} s.",
                    status=503,
                    retry_after=_BUSY_RETRY_SECONDS,
                )
            self._busy += 1
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop the threads once their current work is done; queued work is dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _release(self, _future: Future[T] | None) -> None:
        with self._lock:
            self._busy -= 1


def client_address(client: tuple[str, int] | None) -> str:
    """The host of an ASGI ``client`` (``(host, port)``, or none on a Unix socket): what
    logins are throttled by. Behind a reverse proxy it is the proxy's, unless the proxy is
    trusted (``[hub] trusted_proxies``) and the server took the client from X-Forwarded-For.
    """
    return client[0] if client else ""


class LoginGuard:
    """Password checks behind a :class:`ThrottleStore` and a :class:`KdfPool`.

    ``shared`` is the cluster's store (none on a single hub); ``throttle`` and ``clock`` make
    this node's own store, used alone without ``shared`` and in its place while it is down.
    """

    def __init__(
        self,
        accounts: AccountStore,
        *,
        kdf_threads: int,
        kdf_queue: int,
        throttle: LoginThrottle | None = None,
        clock: Callable[[], float] | None = None,
        shared: ThrottleStore | None = None,
    ) -> None:
        self.accounts = accounts
        self.pool = KdfPool(threads=kdf_threads, queue=kdf_queue)
        self.local = MemoryThrottleStore(throttle, clock=clock)
        self.shared = shared
        self._alone = False  # the shared store failed: logged until it answers again

    @property
    def throttle(self) -> LoginThrottle:
        """This node's own tables."""
        return self.local.throttle

    async def verify(self, name: str, password: str, address: str) -> Account:
        """The account ``name`` if ``password`` is right.

        Raises:
            LoginRefused: locked out after failures (429) or too many logins at once (503);
                no password was checked.
            AuthError: wrong name or password, the same answer for both.
        """
        wait = await self._retry_after(name, address)
        if wait:
            raise LoginRefused(
                f"Too many failed logins; try again in {wait} s.", status=429, retry_after=wait
            )
        account = await self.pool.run(self.accounts.verify_password, name, password)
        if account is None:
            await self._failed(name, address)
            raise AuthError(WRONG_CREDENTIALS, reason="invalid")
        await self._use(lambda store: store.succeeded(ThrottleKind.NAME, name))
        return account

    def close(self) -> None:
        """Release the KDF threads."""
        self.pool.close()

    async def _retry_after(self, name: str, address: str) -> int:
        """Whole seconds until ``name`` from ``address`` may try again; 0 if it may now."""
        waits = await asyncio.gather(
            self._use(lambda store: store.retry_after(ThrottleKind.NAME, name)),
            self._use(lambda store: store.retry_after(ThrottleKind.ADDRESS, address)),
        )
        return math.ceil(max(waits))

    async def _failed(self, name: str, address: str) -> None:
        # Logins already under way when the lockout began fail into it: they count (each was
        # a guess) but do not log again. The name is left out of the log: people type their
        # password into the name field.
        already = await self._retry_after(name, address)
        delays = await asyncio.gather(
            self._use(lambda store: store.failed(ThrottleKind.NAME, name)),
            self._use(lambda store: store.failed(ThrottleKind.ADDRESS, address)),
        )
        locked = math.ceil(max(delays))
        if locked and not already:
            log.warning(
                "login: repeated failures, the last from %s; "
                "that name or that address is refused for %d s",
                address or "an unknown address",
                locked,
            )

    async def _use(self, step: Callable[[ThrottleStore], Awaitable[T]]) -> T:
        """``step`` on the shared store, or on this node's own while that one is down."""
        shared = self.shared
        if shared is not None:
            try:
                result = await step(shared)
            except ThrottleStoreDown as exc:
                if not self._alone:
                    self._alone = True
                    log.warning(
                        "login: the shared throttle cannot be used (%s); this node counts "
                        "failed logins on its own until it can",
                        exc,
                    )
            else:
                if self._alone:
                    self._alone = False
                    log.info("login: the shared throttle answers again")
                return result
        return await step(self.local)
