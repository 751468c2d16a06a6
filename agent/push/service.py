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

Sending is the :class:`~agent.push.worker.DeliveryWorker`'s (``start``): it claims due
rows and sends them, retrying as :mod:`agent.push.policy` says until a delivery succeeds,
is refused for good, or its TTL runs out; rows left by a stopped or crashed hub are sent
again within a second of the next start. This module accepts; that one sends.

What can arrive twice: a message the push service accepted (201) when the hub died before
deleting its row is sent again after the restart (the window is one SQLite commit). The
viewer's service worker tags notifications with the alert id, so the phone shows it once.

Nothing blocks the event loop: SQLite runs in threads.
"""

from __future__ import annotations

import asyncio
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
from agent.push.queue import Accepted, DatabaseDeliveryQueue, NewSend, QueueFullError
from agent.push.recipients import AccountLike, Reaches, resolve_recipients
from agent.push.sender import PushSender
from agent.push.settings import PushSettings
from agent.push.store import PUSH_DB_FILE, StoredSubscription, SubscriptionStore
from agent.push.subscriptions import Subscription, check_endpoint, parse_subscription
from agent.push.vapid import VapidKeys, VapidSigner
from agent.push.worker import CLOSE_GRACE_SECONDS, DeliveryWorker, finish_or_cancel

__all__ = ["MAX_BATCH", "AccountDirectory", "IsConnected", "PushService", "check_batch"]

log = logging.getLogger(__name__)

# Send requests one batch may carry (an agent's outbox flushing after an outage).
MAX_BATCH: Final = 100
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
        self._clock = clock
        self._changed = asyncio.Event()
        self.worker = DeliveryWorker(
            settings,
            queue=self.queue,
            metrics=self.metrics,
            signer=VapidSigner(keys, settings.subject),
            changed=self._changed,
            session=session,
            sender=sender,
            clock=clock,
            jitter=jitter,
        )
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
        await self.worker.start()

    async def drain(self) -> None:
        """Wait until the queue is empty (everything delivered, dropped or expired)."""
        while True:
            self._changed.clear()
            stats = await asyncio.to_thread(self.queue.stats)
            self.worker.record(stats)
            if stats.depth == 0 and not self.worker.busy and not self._tasks:
                return
            await self._changed.wait()

    async def aclose(self) -> None:
        """Stop the worker, let attempts in flight finish briefly, close what is ours.

        What is still queued stays on disk for the next start.
        """
        await asyncio.gather(
            self.worker.aclose(), finish_or_cancel(self._tasks, CLOSE_GRACE_SECONDS)
        )
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
            self.worker.wake()
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
            self.worker.wake()
        return queued

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
