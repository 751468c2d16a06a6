"""Hub counters and their Prometheus text exposition (format 0.0.4). No I/O.

Gauges are read when scraped (connections, groups); counters are plain integers bumped on
the hot path, so counting costs an attribute increment and nothing more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["CONTENT_TYPE", "HubMetrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
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
        lines: list[str] = []
        add = _writer(lines)
        add("connections", "gauge", "Open WebSocket connections.", [("", connections)])
        add("groups", "gauge", "Groups with at least one member.", [("", groups)])
        add(
            "connections_total", "counter", "Connections accepted.", [("", self.connections_opened)]
        )
        add("frames_in_total", "counter", "Frames received from clients.", [("", self.frames_in)])
        add("frames_out_total", "counter", "Frames queued to clients.", [("", self.frames_out)])
        add("bytes_out_total", "counter", "Bytes queued to clients.", [("", self.bytes_out)])
        add(
            "errors_total",
            "counter",
            "#error frames sent, by code.",
            _labelled("code", self.errors),
        )
        add(
            "closes_total",
            "counter",
            "Connections closed by the hub, by close code.",
            _labelled("code", self.closes),
        )
        add(
            "refused_total",
            "counter",
            "Connections refused before the upgrade, by reason.",
            _labelled("reason", self.refused),
        )
        return "\n".join(lines) + "\n"


def _writer(lines: list[str]) -> Callable[[str, str, str, list[tuple[str, int]]], None]:
    def add(name: str, kind: str, help_text: str, samples: list[tuple[str, int]]) -> None:
        full = _PREFIX + name
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        lines.extend(f"{full}{labels} {value}" for labels, value in samples)

    return add


def _labelled(label: str, counts: Counter[str] | Counter[int]) -> list[tuple[str, int]]:
    return [(f'{{{label}="{_escape(str(k))}"}}', v) for k, v in sorted(counts.items())]


def _escape(value: str) -> str:
    # Label values escape backslash, double quote and newline (exposition format spec).
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
