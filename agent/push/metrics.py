"""Counters of web push on the hub, and their Prometheus text exposition. No I/O."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from agent.exposition import Exposition, labelled

__all__ = ["PushMetrics"]

_PREFIX: Final = "edge_hub_push_"


@dataclass(slots=True)
class PushMetrics:
    """What the hub's push sending has done since start."""

    sent: int = 0  # push service accepted (2xx)
    failed: Counter[str] = field(default_factory=Counter)  # by status, "error" for no answer
    removed: int = 0  # subscriptions removed after 404/410
    retries: int = 0  # attempts after a 429 or 5xx or no answer
    given_up: int = 0  # deliveries abandoned (attempts or TTL used up, or rejected)
    deduplicated: int = 0  # resent alerts acknowledged without sending again
    dropped: int = 0  # deliveries refused because the queue was full
    queue_depth: int = 0  # deliveries on disk, waiting or in flight
    oldest_created_at: float | None = None  # when the oldest of them was accepted (Unix time)

    def render(self, *, pending: int = 0, now: float | None = None) -> str:
        """Prometheus text exposition of these counters and of the queue."""
        out = Exposition(_PREFIX)
        out.add("pending", "gauge", "Push deliveries waiting or in flight.", pending)
        out.add(
            "queue_depth",
            "gauge",
            "Push deliveries on disk, waiting or in flight.",
            self.queue_depth,
        )
        oldest = self.oldest_created_at
        age = 0.0 if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)
        out.add(
            "queue_oldest_age_seconds",
            "gauge",
            "Seconds since the oldest queued push delivery was accepted (0 when empty).",
            round(age, 3),
        )
        out.add("sent_total", "counter", "Push messages the push service accepted.", self.sent)
        out.add(
            "failed_total",
            "counter",
            "Push requests that failed, by HTTP status (error: no answer).",
            labelled("status", self.failed),
        )
        out.add("removed_total", "counter", "Subscriptions removed after 404 or 410.", self.removed)
        out.add(
            "retries_total", "counter", "Push requests retried (429, 5xx, no answer).", self.retries
        )
        out.add("given_up_total", "counter", "Push deliveries abandoned.", self.given_up)
        out.add(
            "deduplicated_total", "counter", "Resent alerts acknowledged again.", self.deduplicated
        )
        out.add(
            "dropped_total", "counter", "Push deliveries refused: the queue was full.", self.dropped
        )
        return out.render()
