"""Per-call figures kept fresh for metrics and ``edge-agent status``.

Reading a call's figures awaits ``getStats()`` on its peer connection (W3C webrtc-stats),
while a Prometheus scrape and the status command answer synchronously: :class:`CallFigureWatch`
reads them every few seconds and keeps the last reading. It holds no aiortc object itself
and imports nothing of the media stack, so it exists from the start of an idle agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from agent.exposition import Exposition, labelled

if TYPE_CHECKING:
    from agent.rtc.callstats import CallFigures
    from agent.rtc.desk import CallDesk

__all__ = ["FIGURES_SECONDS", "CallFigureWatch", "call_line"]

log = logging.getLogger(__name__)

FIGURES_SECONDS: Final = 5.0  # how often figures are read (getStats is not free)


class CallFigureWatch:
    """The latest figures of every call the desk holds (none before the first call)."""

    def __init__(
        self, desk: Callable[[], CallDesk | None], *, interval: float = FIGURES_SECONDS
    ) -> None:
        """Read the calls of ``desk()`` (None until the stack is loaded) every ``interval``."""
        self._desk = desk
        self._interval = interval
        self.figures: list[CallFigures] = []

    async def run(self) -> None:
        """Refresh every interval, until cancelled (a supervised part)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)

    async def refresh(self) -> None:
        """Read every call's figures now; a round that fails keeps the previous ones."""
        desk = self._desk()
        try:
            self.figures = await desk.call_figures() if desk and desk.calls else []
        except Exception:  # a call ending under us: skip this round
            log.debug("call figures not read this round", exc_info=True)

    def lines(self) -> list[str]:
        """One ``edge-agent status`` line per call."""
        return [call_line(f) for f in self.figures]

    def add_metrics(self, out: Exposition) -> None:
        """Per-call gauges labelled by connection id, and calls counted by route."""
        figures = self.figures

        def per_call(value: Callable[[CallFigures], float | None]) -> list[tuple[str, float]]:
            found = {f.cid: value(f) for f in figures}
            return labelled("call", {cid: v for cid, v in found.items() if v is not None})

        for name, help_text, value in _PER_CALL:
            out.add(name, "gauge", help_text, per_call(value))
        routes = Counter(f.candidate_type or "unknown" for f in figures)
        out.add(
            "calls_by_route",
            "gauge",
            "Calls by the local candidate type of their route.",
            labelled("route", dict(routes)),
        )


def call_line(f: CallFigures) -> str:
    """``call cid:..: first frame 180 ms, ICE 90 ms, route host, RTT 2 ms, 480 kbit/s``."""

    def ms(value: float | None) -> str:
        return "?" if value is None else f"{value * 1000:.0f} ms"

    rate = "?" if f.bitrate_bps is None else f"{f.bitrate_bps / 1000:.0f} kbit/s"
    return (
        f"call {f.cid}: first frame {ms(f.first_frame_seconds)}, ICE {ms(f.ice_setup_seconds)}, "
        f"route {f.candidate_type or '?'}, RTT {ms(f.rtt_seconds)}, {rate}"
    )


_PER_CALL: Final[tuple[tuple[str, str, Callable[[CallFigures], float | None]], ...]] = (
    (
        "call_first_frame_seconds",
        "Offer to first video frame sent, per call.",
        lambda f: f.first_frame_seconds,
    ),
    ("call_ice_setup_seconds", "Offer to ICE connected, per call.", lambda f: f.ice_setup_seconds),
    (
        "call_rtt_seconds",
        "Round-trip time reported by the viewer, per call.",
        lambda f: f.rtt_seconds,
    ),
    ("call_bitrate_bps", "Bits per second sent, per call.", lambda f: f.bitrate_bps),
)
