"""Counters of web push on the hub, and their Prometheus text exposition. No I/O."""

from __future__ import annotations

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
    dropped: int = 0  # deliveries refused because too many were pending

    def render(self, *, pending: int = 0) -> str:
        """Prometheus text exposition of these counters and the deliveries in flight."""
        out = Exposition(_PREFIX)
        out.add("pending", "gauge", "Push deliveries waiting or in flight.", pending)
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
            "dropped_total", "counter", "Push deliveries refused: too many pending.", self.dropped
        )
        return out.render()
