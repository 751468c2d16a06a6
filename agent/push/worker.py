"""The hub's push worker: claims due deliveries from the queue and sends them, durably.

:class:`DeliveryWorker` is the sending half of :class:`agent.push.service.PushService`
(which accepts, checks and queues). One task (``start``) claims due rows and sends them, at
most ``max_concurrent`` at once and one at a time per subscription
(:mod:`agent.push.queue`), following :mod:`agent.push.policy`: 2xx done; 404/410 remove
the subscription and its queued rows; 400/403/413 and other refusals drop the message; 429
and 503 wait what ``Retry-After`` says; 5xx and no answer back off with full jitter up to
``retry_cap_seconds``. A delivery is retried until one of those ends it or its TTL runs
out (each retry is sent with the TTL that is left; ``max_attempts``, when set, also ends
it). Rows left by a stopped or crashed hub are sent again within a second of the next
start. A row's outcome is committed before it counts in the metrics.

Nothing blocks the event loop: SQLite runs in threads, HTTP on the injected session (or
one of its own, made on first send and closed by ``aclose``). Logs name a subscription by
its origin and user, never by its endpoint: the endpoint's path is a capability.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import aiohttp

from agent.push.metrics import PushMetrics
from agent.push.policy import PushOutcome, classify_push_status, next_attempt_delay
from agent.push.queue import DatabaseDeliveryQueue, Delivery, QueueStats
from agent.push.sender import PushResponse, PushSender, WebPushSender, make_session
from agent.push.settings import PushSettings
from agent.push.vapid import VapidSigner

__all__ = ["CLOSE_GRACE_SECONDS", "DeliveryWorker", "finish_or_cancel"]

log = logging.getLogger(__name__)

# On stop, deliveries in flight get this long to record their outcome before they are
# cancelled (a cancelled one is sent again by the next start).
CLOSE_GRACE_SECONDS: Final = 2.0
# A row never tried yet is still sent this long after its TTL ran out (with TTL 0): a
# message with a TTL of 0 means "now or never", and its first try is "now".
_FIRST_TRY_GRACE_SECONDS: Final = 10.0
# The worker looks at the queue at least this often, whatever it expects.
_MAX_IDLE_SECONDS: Final = 30.0
# After an unexpected failure of the worker's own loop (a full disk), before trying again.
_WORKER_PAUSE_SECONDS: Final = 1.0


class DeliveryWorker:
    """Sends what ``queue`` holds as it comes due (see the module docstring)."""

    def __init__(
        self,
        settings: PushSettings,
        *,
        queue: DatabaseDeliveryQueue,
        metrics: PushMetrics,
        signer: VapidSigner,
        changed: asyncio.Event,
        session: aiohttp.ClientSession | None = None,
        sender: PushSender | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self._signer = signer
        self._changed = changed  # set whenever an attempt ends: drain() waits on it
        self._session = session  # injected: its owner closes it
        self._own_session: aiohttp.ClientSession | None = None
        self._sender = sender
        self._clock = clock
        self._jitter = jitter
        self._lease_seconds = 2 * settings.timeout_seconds + 10
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        """Whether a delivery is being attempted right now."""
        return bool(self._attempts)

    async def start(self) -> None:
        """Start sending: rows left by an earlier run first, at once."""
        if self._worker is None:
            await asyncio.to_thread(self.queue.release_leases)
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="push-queue")

    def wake(self) -> None:
        """Deliveries were queued: look at the queue now rather than when it expected to."""
        self._wake.set()

    def record(self, stats: QueueStats) -> None:
        """Show ``stats`` in the metrics (the queue is the truth; the gauges follow it)."""
        self.metrics.queue_depth = stats.depth
        self.metrics.oldest_created_at = stats.oldest_created_at

    async def aclose(self) -> None:
        """Stop claiming, let attempts in flight finish briefly, close the session if ours.

        What is still queued stays on disk for the next start.
        """
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        await finish_or_cancel(self._attempts, CLOSE_GRACE_SECONDS)
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()
        self._sender = None

    # -- the loop ------------------------------------------------------------------------------

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
        self.record(stats)
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

    # -- one attempt ---------------------------------------------------------------------------

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

    def _get_sender(self) -> PushSender:
        if self._sender is None:
            session = self._session
            if session is None:
                self._own_session = session = make_session(self.settings)
            self._sender = WebPushSender(
                self._signer, session, timeout=self.settings.timeout_seconds
            )
        return self._sender


async def finish_or_cancel(tasks: Iterable[asyncio.Task[Any]], grace: float) -> None:
    """Give ``tasks`` ``grace`` seconds to finish, then cancel those still running."""
    busy = set(tasks)
    if not busy:
        return
    _done, pending = await asyncio.wait(busy, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _who(delivery: Delivery) -> str:
    # The origin and the user, never the endpoint: its path is a capability.
    return f"{delivery.subscription.origin} (user {delivery.user_id})"
