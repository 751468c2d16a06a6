"""Web push on the hub: VAPID keys, subscriptions, and a durable queue of deliveries.

:class:`PushService` is what the hub's HTTP routes (``agent/hub/push_api.py``) and its
realtime path call:

- ``subscribe``/``unsubscribe`` store or delete a browser subscription of the caller;
- ``send`` checks a ``/api/push/send`` request (size, who may push to whom) and commits one
  delivery per subscription to the queue (:mod:`agent.push.queue`) in the same transaction
  as the alert's id, before the caller gets its answer: an accepted alert is on disk, and a
  resent one (an agent whose answer was lost) is acknowledged without being queued again;
  ``send_many`` does the same for up to ``MAX_BATCH`` requests in one transaction (an
  agent's outbox after an outage: one commit rather than a hundred);
- ``notify_users`` is the realtime path's hook: the ``notification`` of a message reaches a
  recipient who is not connected, or every recipient with ``config.always``.

One worker task (``start``) claims due rows and sends them, at most ``max_concurrent`` at
once and one at a time per subscription, following :mod:`agent.push.policy`: 2xx done;
404/410 remove the subscription and its queued rows; 400/403/413 and other refusals drop
the message; 429 and 503 wait what ``Retry-After`` says; 5xx and no answer back off with
full jitter up to ``retry_cap_seconds``. A delivery is retried until one of those ends it
or its TTL runs out (each retry is sent with the TTL that is left; ``max_attempts``, when
set, also ends it). Rows left by a stopped or crashed hub are sent again within a second
of the next start.

What can arrive twice: a message the push service accepted (201) when the hub died before
deleting its row is sent again after the restart (the window is one SQLite commit). The
viewer's service worker tags notifications with the alert id, so the phone shows it once.

Nothing blocks the event loop: SQLite runs in threads, HTTP on the injected session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from agent.database import Database, SecretStore
from agent.errors import Codes, RealtimeError
from agent.protocol import Notification
from agent.push.message import (
    PushMessage,
    SendRequest,
    message_from_notification,
    parse_send_request,
)
from agent.push.metrics import PushMetrics
from agent.push.policy import PushOutcome, classify_push_status, next_attempt_delay
from agent.push.queue import (
    Accepted,
    DatabaseDeliveryQueue,
    Delivery,
    NewSend,
    QueueFullError,
    QueueStats,
)
from agent.push.recipients import AccountLike, Reaches, resolve_recipients
from agent.push.sender import PushResponse, PushSender, WebPushSender, make_session
from agent.push.settings import PushSettings
from agent.push.store import PUSH_DB_FILE, StoredSubscription, SubscriptionStore
from agent.push.subscriptions import Subscription, check_endpoint, parse_subscription
from agent.push.vapid import VapidKeys, VapidSigner

__all__ = ["MAX_BATCH", "AccountDirectory", "IsConnected", "PushService", "check_batch"]

log = logging.getLogger(__name__)

# Send requests one batch may carry (an agent's outbox flushing after an outage).
MAX_BATCH: Final = 100
# On stop, deliveries in flight get this long to record their outcome before they are
# cancelled (a cancelled one is sent again by the next start).
_CLOSE_GRACE_SECONDS: Final = 2.0
# A row never tried yet is still sent this long after its TTL ran out (with TTL 0): a
# message with a TTL of 0 means "now or never", and its first try is "now".
_FIRST_TRY_GRACE_SECONDS: Final = 10.0
# The worker looks at the queue at least this often, whatever it expects.
_MAX_IDLE_SECONDS: Final = 30.0
# After an unexpected failure of the worker's own loop (a full disk), before trying again.
_WORKER_PAUSE_SECONDS: Final = 1.0

IsConnected = Callable[[str], Awaitable[bool]]


class AccountDirectory(Protocol):
    """The accounts push resolves names and roles against (``AccountStore`` fits)."""

    def list(self) -> Sequence[AccountLike]:
        """Every account (called in a thread)."""
        ...


class PushService:
    """Web push on the hub (see the module docstring)."""

    def __init__(
        self,
        settings: PushSettings,
        *,
        keys: VapidKeys,
        store: SubscriptionStore,
        accounts: AccountDirectory,
        session: aiohttp.ClientSession | None = None,
        sender: PushSender | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.store = store
        self.queue = DatabaseDeliveryQueue(store)
        self.metrics = PushMetrics()
        self._accounts = accounts
        # Whom a device may alert beyond [push] device_recipients: the hub sets its grant rule.
        self.reaches: Reaches | None = None
        self._signer = VapidSigner(keys, settings.subject)
        self._session = session  # injected: its owner closes it
        self._own_session: aiohttp.ClientSession | None = None
        self._sender = sender
        self._clock = clock
        self._jitter = jitter
        self._lease_seconds = 2 * settings.timeout_seconds + 10
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_state_dir(
        cls,
        state_dir: Path,
        settings: PushSettings,
        *,
        accounts: AccountDirectory,
        session: aiohttp.ClientSession | None = None,
    ) -> PushService:
        """The service with its key (made on first start) and database in ``state_dir``."""
        return cls(
            settings,
            keys=VapidKeys.from_state_dir(state_dir),
            store=SubscriptionStore(state_dir / PUSH_DB_FILE),
            accounts=accounts,
            session=session,
        )

    @classmethod
    def from_database(
        cls,
        database: Database,
        secrets: SecretStore,
        settings: PushSettings,
        *,
        accounts: AccountDirectory,
    ) -> PushService:
        """The service on a database and key store the hub nodes share."""
        return cls(
            settings,
            keys=VapidKeys.from_secrets(secrets),
            store=SubscriptionStore(database),
            accounts=accounts,
        )

    @property
    def public_key(self) -> str:
        """The VAPID public key, base64url of the uncompressed P-256 point."""
        return self.keys.public_key

    @property
    def pending(self) -> int:
        """Deliveries on disk, waiting or in flight."""
        return self.metrics.queue_depth

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start sending: rows left by an earlier run first, at once."""
        if self._worker is None:
            await asyncio.to_thread(self.queue.release_leases)
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="push-queue")

    async def drain(self) -> None:
        """Wait until the queue is empty (everything delivered, dropped or expired)."""
        while True:
            self._changed.clear()
            stats = await asyncio.to_thread(self.queue.stats)
            self._set_stats(stats)
            if stats.depth == 0 and not self._attempts and not self._tasks:
                return
            await self._changed.wait()

    async def aclose(self) -> None:
        """Stop the worker, let attempts in flight finish briefly, close what is ours.

        What is still queued stays on disk for the next start.
        """
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        busy = self._attempts | self._tasks
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=_CLOSE_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()
        self._sender = None
        self.store.close()

    # -- subscriptions -------------------------------------------------------------------------

    async def subscribe(self, user_id: str, body: Any) -> Subscription:
        """Store the subscription in ``body`` for ``user_id``; INVALID_PARAMETER if bad."""
        sub = parse_subscription(body, allow_private=self.settings.allow_private_endpoints)
        evicted = await asyncio.to_thread(
            self.store.add, user_id, sub, max_per_user=self.settings.max_subscriptions_per_user
        )
        for old in evicted:
            log.info(
                "push subscription at %s of user %s evicted (newest kept)", old.origin, user_id
            )
        return sub

    async def unsubscribe(self, user_id: str, body: Any) -> bool:
        """Delete ``user_id``'s subscription named by ``body["endpoint"]``; whether it existed."""
        endpoint = body.get("endpoint") if isinstance(body, dict) else None
        endpoint = check_endpoint(endpoint, allow_private=True)  # the shape only
        return await asyncio.to_thread(self.store.remove, user_id, endpoint)

    # -- sending -------------------------------------------------------------------------------

    async def send(self, caller: AccountLike, body: Any) -> int:
        """Check a send request and commit its deliveries; how many were queued.

        Raises:
            RealtimeError: INVALID_PARAMETER (bad or over 3 KB), FORBIDDEN (may not push to
                them), RATE_LIMITED (the queue is full).
        """
        [result] = await self._accept(caller, [body])
        if isinstance(result, RealtimeError):
            raise result
        return result

    async def send_many(self, caller: AccountLike, bodies: Any) -> list[int | RealtimeError]:
        """Check and commit several send requests, in order, in one transaction.

        For each request: the number of deliveries queued (0 for an alert accepted before),
        or the error that refused it (as :meth:`send` would have raised it).

        Raises:
            RealtimeError: INVALID_PARAMETER when ``bodies`` is not a list of 1 to
                ``MAX_BATCH`` objects.
        """
        return await self._accept(caller, check_batch(bodies))

    def notify_users(
        self,
        user_ids: Iterable[str],
        notification: Notification,
        *,
        is_connected: IsConnected | None = None,
    ) -> asyncio.Task[int]:
        """Push a realtime message's ``notification`` to recipients who are not connected.

        With ``notification.always`` (the reference's ``config.always``), or without an
        ``is_connected`` check, every recipient gets it. Returns at once; the task's result
        is the number of deliveries queued.
        """
        users = list(dict.fromkeys(user_ids))
        return self._spawn(self._notify(users, notification, is_connected), "push-notify")

    # -- internals: accepting ------------------------------------------------------------------

    async def _notify(
        self, users: list[str], note: Notification, is_connected: IsConnected | None
    ) -> int:
        message = message_from_notification(note, ttl=self.settings.default_ttl_seconds)
        if not note.always and is_connected is not None:
            users = [user for user in users if not await is_connected(user)]
        if not users:
            return 0
        try:
            return await self._enqueue(users, message, None) or 0
        except RealtimeError as exc:
            log.warning("realtime notification not pushed: %s", exc.message)
            return 0

    async def _accept(self, caller: AccountLike, bodies: list[Any]) -> list[int | RealtimeError]:
        accounts, subscribed = await asyncio.to_thread(self._directory)
        checked = [self._check(caller, body, accounts, subscribed) for body in bodies]
        wanted = {u for c in checked if not isinstance(c, RealtimeError) for u in c[1]}
        by_user: dict[str, list[StoredSubscription]] = {}
        for stored in await asyncio.to_thread(self.store.for_users, wanted):
            by_user.setdefault(stored.user_id, []).append(stored)
        sends = [
            NewSend(
                [s for user in users for s in by_user.get(user, ())],
                request.message,
                None if request.alert_id is None else (caller.user_id, request.alert_id),
            )
            for request, users in (c for c in checked if not isinstance(c, RealtimeError))
        ]
        accepted = await asyncio.to_thread(
            self.queue.accept_many,
            sends,
            now=self._clock(),
            keep_seconds=self.settings.dedup_seconds,
            max_rows=self.settings.max_queued,
        )
        outcomes = iter(zip(sends, accepted, strict=True))
        return [
            c if isinstance(c, RealtimeError) else self._accepted(caller, c[0], *next(outcomes))
            for c in checked
        ]

    def _directory(self) -> tuple[Sequence[AccountLike], list[str]]:
        # One thread hop for the two reads every send needs.
        return self._accounts.list(), self.store.subscribed_users()

    def _check(
        self,
        caller: AccountLike,
        body: Any,
        accounts: Sequence[AccountLike],
        subscribed: list[str],
    ) -> tuple[SendRequest, list[str]] | RealtimeError:
        """A parsed request and its recipients' user ids, or why it is refused."""
        try:
            request = parse_send_request(body, default_ttl=self.settings.default_ttl_seconds)
            resolution = resolve_recipients(
                caller,
                request.recipients,
                accounts=accounts,
                subscribed=subscribed,
                device_rules=self.settings.device_recipients,
                reaches=self.reaches,
            )
        except RealtimeError as exc:
            return exc
        if resolution.unknown:
            log.info(
                "push from %s names no account: %s", caller.name, ", ".join(resolution.unknown)
            )
        return request, list(resolution.user_ids)

    def _accepted(
        self, caller: AccountLike, request: SendRequest, send: NewSend, result: Accepted
    ) -> int | RealtimeError:
        if isinstance(result, QueueFullError):
            self.metrics.dropped += len(send.subs)
            return RealtimeError(
                Codes.RATE_LIMITED, "Too many push deliveries are pending; try again later."
            )
        if result is None:
            self.metrics.deduplicated += 1
            log.info(
                "alert %s from %s was accepted before; not sent again",
                request.alert_id,
                caller.name,
            )
            return 0
        if result:
            self.metrics.queue_depth += result
            self._wake.set()
        return result

    async def _enqueue(
        self, user_ids: Iterable[str], message: PushMessage, alert: tuple[str, str] | None
    ) -> int | None:
        subs = await asyncio.to_thread(self.store.for_users, user_ids)
        try:
            queued = await asyncio.to_thread(
                self.queue.accept,
                subs,
                message,
                now=self._clock(),
                alert=alert,
                keep_seconds=self.settings.dedup_seconds,
                max_rows=self.settings.max_queued,
            )
        except QueueFullError:
            self.metrics.dropped += len(subs)
            raise RealtimeError(
                Codes.RATE_LIMITED, "Too many push deliveries are pending; try again later."
            ) from None
        if queued:
            self.metrics.queue_depth += queued
            self._wake.set()
        return queued

    # -- internals: the worker -----------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            try:
                wait = await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database failed (a full disk): say so, try again soon
                log.exception("push queue: could not read the queue")
                wait = _WORKER_PAUSE_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _poll(self) -> float | None:
        """Claim and start what is due; how long to wait before looking again."""
        self._wake.clear()  # before reading: a send or a finished attempt from now on wakes
        free = self.settings.max_concurrent - len(self._attempts)
        now = self._clock()
        claimed, next_due, stats = await asyncio.to_thread(self._read_queue, now, free)
        self._set_stats(stats)
        for delivery in claimed:
            task = asyncio.get_running_loop().create_task(
                self._attempt(delivery), name="push-delivery"
            )
            self._attempts.add(task)
            task.add_done_callback(self._attempt_done)
        if len(claimed) == free:
            return None  # every slot is busy: a finished attempt wakes the worker
        if next_due is None:
            return _MAX_IDLE_SECONDS  # empty: a send wakes the worker
        return min(_MAX_IDLE_SECONDS, max(0.0, next_due - self._clock()))

    def _read_queue(self, now: float, free: int) -> tuple[list[Delivery], float | None, QueueStats]:
        # One thread hop for the three reads of a round.
        claimed = self.queue.claim(now, free, lease_seconds=self._lease_seconds) if free > 0 else []
        return claimed, self.queue.next_due(), self.queue.stats()

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        self._wake.set()
        self._changed.set()

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            now = self._clock()
            if self._expired(delivery, now):
                await self._give_up(delivery, "its TTL ran out")
                return
            response = await self._post(delivery, delivery.ttl_left(now))
            await self._settle(delivery, response)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one delivery must not go unseen, nor stop the others
            log.exception("push to %s failed", _who(delivery))

    def _expired(self, delivery: Delivery, now: float) -> bool:
        if delivery.attempts == 0:
            return now >= delivery.expires_at + _FIRST_TRY_GRACE_SECONDS
        return now >= delivery.expires_at

    async def _post(self, delivery: Delivery, ttl: int) -> PushResponse | None:
        try:
            return await self._get_sender().send(delivery.subscription, delivery.message, ttl=ttl)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Never str() the error: some carry the endpoint, a capability URL.
            log.info("push to %s got no answer (%s)", _who(delivery), type(exc).__name__)
            return None

    async def _settle(self, delivery: Delivery, response: PushResponse | None) -> None:
        """Record what the push service's answer means for this row."""
        status = None if response is None else response.status
        outcome = classify_push_status(status)
        if outcome is PushOutcome.DELIVERED:
            await asyncio.to_thread(self.queue.delivered, delivery.id)
            self.metrics.sent += 1  # after the commit: "sent" rows are off the disk
            return
        self.metrics.failed[str(status) if status is not None else "error"] += 1
        if outcome in (PushOutcome.RETRY, PushOutcome.RATE_LIMITED):
            await self._retry(delivery, status, response)
        elif outcome is PushOutcome.GONE:
            await self._gone(delivery, status)
        else:
            await self._refused(delivery, outcome, response)

    async def _retry(
        self, delivery: Delivery, status: int | None, response: PushResponse | None
    ) -> None:
        settings, now = self.settings, self._clock()
        delay = next_attempt_delay(
            status,
            attempts=delivery.attempts,
            retry_after=response.retry_after if response is not None else None,
            now=now,
            initial=settings.retry_initial_seconds,
            cap=settings.retry_cap_seconds,
            jitter=self._jitter,
        )
        tried = delivery.attempts + 1
        if settings.max_attempts is not None and tried >= settings.max_attempts:
            await self._give_up(delivery, f"no success in {tried} attempt(s)")
            return
        if now + delay >= delivery.expires_at:
            await self._give_up(delivery, f"its TTL of {delivery.message.ttl} s runs out first")
            return
        await asyncio.to_thread(self.queue.retry_at, delivery.id, now + delay)
        self.metrics.retries += 1
        log.info(
            "push to %s: %s; retrying in %.1f s",
            _who(delivery),
            "no answer" if status is None else f"the service answered {status}",
            delay,
        )

    async def _gone(self, delivery: Delivery, status: int | None) -> None:
        sub = delivery.subscription
        dropped = await asyncio.to_thread(self.queue.drop_endpoint, sub.endpoint, p256dh=sub.p256dh)
        self.metrics.removed += 1
        log.info(
            "push subscription at %s removed with %d queued message(s): the service answered %s",
            _who(delivery),
            dropped,
            status,
        )

    async def _refused(
        self, delivery: Delivery, outcome: PushOutcome, response: PushResponse | None
    ) -> None:
        status = response.status if response is not None else None
        detail = response.detail[:200] if response is not None else ""
        if outcome is PushOutcome.TOO_LARGE:
            log.error(
                "push service of %s refused a message as too large (413): a bug, the 3 KB "
                "cap should prevent this: %s",
                _who(delivery),
                detail,
            )
        else:
            log.warning(
                "push service of %s rejected a message (%s): %s", _who(delivery), status, detail
            )
        await asyncio.to_thread(self.queue.delivered, delivery.id)
        self.metrics.given_up += 1

    async def _give_up(self, delivery: Delivery, why: str) -> None:
        await asyncio.to_thread(self.queue.delivered, delivery.id)
        self.metrics.given_up += 1
        log.warning("push to %s given up: %s", _who(delivery), why)

    def _set_stats(self, stats: QueueStats) -> None:
        self.metrics.queue_depth = stats.depth
        self.metrics.oldest_created_at = stats.oldest_created_at

    def _get_sender(self) -> PushSender:
        if self._sender is None:
            session = self._session
            if session is None:
                self._own_session = session = make_session(self.settings)
            self._sender = WebPushSender(
                self._signer, session, timeout=self.settings.timeout_seconds
            )
        return self._sender

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(_logged(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._changed.set()


def check_batch(bodies: Any) -> list[dict[str, Any]]:
    """``bodies`` if it is a list of 1 to ``MAX_BATCH`` objects; INVALID_PARAMETER if not.

    Only the shape of the batch: each request is checked on its own, as ``send`` would.
    """
    if (
        not isinstance(bodies, list)
        or not 0 < len(bodies) <= MAX_BATCH
        or not all(isinstance(body, dict) for body in bodies)
    ):
        raise RealtimeError(
            Codes.INVALID_PARAMETER,
            f'"alerts" must be a list of 1 to {MAX_BATCH} send requests (objects).',
        )
    return bodies


async def _logged(work: Coroutine[Any, Any, Any], name: str) -> Any:
    try:
        return await work
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug in one task must not go unseen
        log.exception("%s failed", name)
        return 0


def _who(delivery: Delivery) -> str:
    # The origin and the user, never the endpoint: its path is a capability.
    return f"{delivery.subscription.origin} (user {delivery.user_id})"
