"""Prometheus text exposition (format 0.0.4), shared by the hub and the agent. No I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["CONTENT_TYPE", "Exposition", "labelled"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Number = int | float


class Exposition:
    """Collects metric families under one name prefix and renders them as text."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lines: list[str] = []

    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[str, Number]] | Number,
    ) -> None:
        """Add one family; ``samples`` is a bare value or ``(labels, value)`` pairs."""
        full = self._prefix + name
        self._lines.append(f"# HELP {full} {help_text}")
        self._lines.append(f"# TYPE {full} {kind}")
        pairs = [("", samples)] if isinstance(samples, int | float) else samples
        self._lines.extend(f"{full}{labels} {_number(value)}" for labels, value in pairs)

    def render(self) -> str:
        """The exposition text, ending with a newline."""
        return "\n".join(self._lines) + "\n"


def labelled(
    label: str, counts: Mapping[str, Number] | Mapping[int, Number]
) -> list[tuple[str, Number]]:
    """``(labels, value)`` pairs for one label, sorted by its value."""
    return [(f'{{{label}="{_escape(str(k))}"}}', v) for k, v in sorted(counts.items())]


def _number(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escape(value: str) -> str:
    # Label values escape backslash, double quote and newline (exposition format spec).
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
