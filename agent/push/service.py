"""Web push on the hub: VAPID keys, subscriptions, and sending with retries.

:class:`PushService` is what the hub's HTTP routes (``agent/hub/push_api.py``) and its
realtime path call:

- ``subscribe``/``unsubscribe`` store or delete a browser subscription of the caller;
- ``send`` checks a ``/api/push/send`` request (size, who may push to whom), drops an alert
  id it has already accepted (an agent's resend after a lost answer), and hands one
  delivery per subscription to a background task: the caller's answer does not wait for
  push services;
- ``notify_users`` is the realtime path's hook: the ``notification`` of a message reaches a
  recipient who is not connected, or every recipient with ``config.always``.

A delivery follows :mod:`agent.push.policy`: 2xx done; 404/410 remove the subscription;
413 logged as our bug; 429 waits ``Retry-After``; 5xx and no answer back off
(:func:`agent.retry.backoff`); all within ``max_attempts`` and the message's TTL, each
retry sent with the TTL that is left. Sends are bounded by ``max_concurrent``.
Nothing blocks the event loop: SQLite runs in threads, HTTP on the injected session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from agent import retry
from agent.errors import Codes, RealtimeError
from agent.protocol import Notification
from agent.push.message import PushMessage, message_from_notification, parse_send_request
from agent.push.metrics import PushMetrics
from agent.push.policy import PushOutcome, classify_push_status, retry_after_seconds
from agent.push.recipients import AccountLike, resolve_recipients
from agent.push.sender import PushResponse, PushSender, WebPushSender, make_session
from agent.push.settings import PushSettings
from agent.push.store import PUSH_DB_FILE, StoredSubscription, SubscriptionStore
from agent.push.subscriptions import Subscription, check_endpoint, parse_subscription
from agent.push.vapid import VapidKeys, VapidSigner

__all__ = ["AccountDirectory", "IsConnected", "PushService"]

log = logging.getLogger(__name__)

# Deliveries waiting or in flight; beyond this a send is refused (RATE_LIMITED).
_MAX_PENDING: Final = 10_000
# On stop, deliveries in flight get this long before they are cancelled.
_CLOSE_GRACE_SECONDS: Final = 2.0

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
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.store = store
        self.metrics = PushMetrics()
        self._accounts = accounts
        self._signer = VapidSigner(keys, settings.subject)
        self._session = session  # injected: its owner closes it
        self._own_session: aiohttp.ClientSession | None = None
        self._sender = sender
        self._slots = asyncio.Semaphore(settings.max_concurrent)
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

    @property
    def public_key(self) -> str:
        """The VAPID public key, base64url of the uncompressed P-256 point."""
        return self.keys.public_key

    @property
    def pending(self) -> int:
        """Deliveries waiting or in flight."""
        return len(self._tasks)

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
        """Check and accept a send request; how many deliveries it started.

        Raises:
            RealtimeError: INVALID_PARAMETER (bad or over 3 KB), FORBIDDEN (may not push to
                them), RATE_LIMITED (too many deliveries pending).
        """
        request = parse_send_request(body, default_ttl=self.settings.default_ttl_seconds)
        accounts = await asyncio.to_thread(self._accounts.list)
        subscribed = await asyncio.to_thread(self.store.subscribed_users)
        resolution = resolve_recipients(
            caller,
            request.recipients,
            accounts=accounts,
            subscribed=subscribed,
            device_rules=self.settings.device_recipients,
        )
        if resolution.unknown:
            log.info(
                "push from %s names no account: %s", caller.name, ", ".join(resolution.unknown)
            )
        alert_id = request.alert_id
        if alert_id is not None and not await self._first_time(caller, alert_id):
            return 0
        try:
            return await self._fan_out(resolution.user_ids, request.message)
        except Exception:
            if alert_id is not None:  # not handed on: the resend must not be dropped
                await asyncio.to_thread(self.store.forget_alert, caller.user_id, alert_id)
            raise

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
        is the number of deliveries started.
        """
        users = list(dict.fromkeys(user_ids))
        return self._spawn(self._notify(users, notification, is_connected), "push-notify")

    async def drain(self) -> None:
        """Wait until every delivery started so far has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Let deliveries in flight finish briefly, cancel the rest, close what is ours."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE_SECONDS):
                await self.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()
        self._sender = None
        self.store.close()

    # -- internals -----------------------------------------------------------------------------

    async def _first_time(self, caller: AccountLike, alert_id: str) -> bool:
        first = await asyncio.to_thread(
            self.store.remember_alert,
            caller.user_id,
            alert_id,
            keep_seconds=self.settings.dedup_seconds,
        )
        if not first:
            self.metrics.deduplicated += 1
            log.info("alert %s from %s was accepted before; not sent again", alert_id, caller.name)
        return first

    async def _notify(
        self, users: list[str], note: Notification, is_connected: IsConnected | None
    ) -> int:
        message = message_from_notification(note, ttl=self.settings.default_ttl_seconds)
        if not note.always and is_connected is not None:
            users = [user for user in users if not await is_connected(user)]
        if not users:
            return 0
        try:
            return await self._fan_out(users, message)
        except RealtimeError as exc:
            log.warning("realtime notification not pushed: %s", exc.message)
            return 0

    async def _fan_out(self, user_ids: Iterable[str], message: PushMessage) -> int:
        subs = await asyncio.to_thread(self.store.for_users, user_ids)
        if len(self._tasks) + len(subs) > _MAX_PENDING:
            self.metrics.dropped += len(subs)
            raise RealtimeError(
                Codes.RATE_LIMITED, "Too many push deliveries are pending; try again later."
            )
        for stored in subs:
            self._spawn(self._deliver(stored, message), "push-delivery")
        return len(subs)

    async def _deliver(self, stored: StoredSubscription, message: PushMessage) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + message.ttl
        delays = self._delays()
        for attempt in range(1, self.settings.max_attempts + 1):
            ttl = max(0, math.floor(deadline - loop.time()))
            response = await self._attempt(stored, message, ttl)
            delay = await self._settle(stored, response, delays)
            if delay is None:
                return
            if attempt == self.settings.max_attempts or loop.time() + delay > deadline:
                break
            self.metrics.retries += 1
            await asyncio.sleep(delay)
        self.metrics.given_up += 1
        log.warning(
            "push to %s given up: no success within %d attempt(s) and the TTL of %d s",
            _who(stored),
            self.settings.max_attempts,
            message.ttl,
        )

    async def _attempt(
        self, stored: StoredSubscription, message: PushMessage, ttl: int
    ) -> PushResponse | None:
        async with self._slots:
            try:
                return await self._get_sender().send(stored.subscription, message, ttl=ttl)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Never str() the error: some carry the endpoint, a capability URL.
                log.info("push to %s got no answer (%s)", _who(stored), type(exc).__name__)
                return None

    async def _settle(
        self, stored: StoredSubscription, response: PushResponse | None, delays: Iterator[float]
    ) -> float | None:
        """Act on an answer; the delay before a retry, or ``None`` when this delivery is over."""
        status = None if response is None else response.status
        outcome = classify_push_status(status)
        if outcome is PushOutcome.DELIVERED:
            self.metrics.sent += 1
            return None
        self.metrics.failed[str(status) if status is not None else "error"] += 1
        if outcome is PushOutcome.RATE_LIMITED:
            retry_after = response.retry_after if response is not None else None
            wait = retry_after_seconds(retry_after, now=time.time())
            delay = next(delays) if wait is None else wait
            log.info(
                "push service of %s asks to slow down; retrying in %.1f s", _who(stored), delay
            )
            return delay
        if outcome is PushOutcome.RETRY:
            return next(delays)
        await self._finish(stored, outcome, response)
        return None

    async def _finish(
        self, stored: StoredSubscription, outcome: PushOutcome, response: PushResponse | None
    ) -> None:
        status = response.status if response is not None else None
        detail = response.detail[:200] if response is not None else ""
        if outcome is PushOutcome.GONE:
            sub = stored.subscription
            await asyncio.to_thread(self.store.remove_endpoint, sub.endpoint, p256dh=sub.p256dh)
            self.metrics.removed += 1
            log.info(
                "push subscription at %s removed: the service answered %s", _who(stored), status
            )
            return
        self.metrics.given_up += 1
        if outcome is PushOutcome.TOO_LARGE:
            log.error(
                "push service of %s refused a message as too large (413): a bug, the 3 KB "
                "cap should prevent this: %s",
                _who(stored),
                detail,
            )
        else:
            log.warning(
                "push service of %s rejected a message (%s): %s", _who(stored), status, detail
            )

    def _delays(self) -> Iterator[float]:
        return retry.backoff(
            self.settings.retry_initial_seconds, 2.0, self.settings.retry_cap_seconds
        )

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
        task.add_done_callback(self._tasks.discard)
        return task


async def _logged(work: Coroutine[Any, Any, Any], name: str) -> Any:
    try:
        return await work
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug in one delivery must not go unseen, nor stop the others
        log.exception("%s failed", name)
        return 0


def _who(stored: StoredSubscription) -> str:
    # The origin and the user, never the endpoint: its path is a capability.
    return f"{stored.subscription.origin} (user {stored.user_id})"
