"""Hub counters and their Prometheus text exposition (format 0.0.4). No I/O.

Gauges are read when scraped (connections, groups); counters are plain integers bumped on
the hot path, so counting costs an attribute increment and nothing more.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from agent.exposition import CONTENT_TYPE, Exposition, labelled

__all__ = ["CONTENT_TYPE", "HubMetrics"]

_PREFIX: Final = "edge_hub_"


@dataclass(slots=True)
class HubMetrics:
    """Counters of one hub node."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    connections_opened: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def render(self, *, connections: int, groups: int) -> str:
        """The Prometheus text exposition of these counters and the given gauges."""
        out = Exposition(_PREFIX)
        out.add("connections", "gauge", "Open WebSocket connections.", connections)
        out.add("groups", "gauge", "Groups with at least one member.", groups)
        out.add("connections_total", "counter", "Connections accepted.", self.connections_opened)
        out.add("frames_in_total", "counter", "Frames received from clients.", self.frames_in)
        out.add("frames_out_total", "counter", "Frames queued to clients.", self.frames_out)
        out.add("bytes_out_total", "counter", "Bytes queued to clients.", self.bytes_out)
        out.add(
            "errors_total", "counter", "#error frames sent, by code.", labelled("code", self.errors)
        )
        out.add(
            "closes_total",
            "counter",
            "Connections closed by the hub, by close code.",
            labelled("code", self.closes),
        )
        out.add(
            "refused_total",
            "counter",
            "Connections refused before the upgrade, by reason.",
            labelled("reason", self.refused),
        )
        return out.render()
