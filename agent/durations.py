"""Durations as people write them in settings and on the command line: ``"90s"``, ``"1h30m"``.

Pure, and imported by every settings model that takes a duration, so that none of them
needs :mod:`agent.config` (which composes them).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_duration"]

_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE: Final = re.compile(r"(?:[0-9]{1,12}[smhdw])+")
_DURATION_PART_RE: Final = re.compile(r"([0-9]{1,12})([smhdw])")
_MAX_DURATION_CHARS: Final = 64


def parse_duration(text: str | int) -> int:
    """Seconds in ``"30d"``, ``"12h"``, ``"15m"``, ``"90s"``, ``"1h30m"`` or ``"3600"``."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    raw = text.strip().lower() if isinstance(text, str) else ""
    if len(raw) <= _MAX_DURATION_CHARS:
        if re.fullmatch(r"[0-9]{1,12}", raw):
            return int(raw)
        if _DURATION_RE.fullmatch(raw):
            parts = _DURATION_PART_RE.findall(raw)
            return sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)
    raise ValueError(
        f"invalid duration {text!r}: use whole seconds (3600) or a number with a unit "
        "s, m, h, d or w (90s, 15m, 12h, 30d, 1h30m)"
    )
