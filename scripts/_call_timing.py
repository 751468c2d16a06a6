"""When a call's first video frame arrives, for the benchmarks that time call setup
(``bench_call_setup.py``, ``bench_idle.py``).

The caller asks for a receive-only call, every incoming video track is read, and the first
decoded frame ends the measurement; the call is hung up after. Times are
``time.perf_counter()`` readings, so a benchmark picks the interval it reports.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from agent.client import RealtimeClient

__all__ = ["CallTiming", "first_video_frame"]


@dataclass(frozen=True)
class CallTiming:
    """perf_counter() readings of one call."""

    asked: float  # before connect_rtc
    offer_sent: float  # connect_rtc returned: the offer is on its way
    first_frame: float  # the first video frame was decoded

    @property
    def from_asked_ms(self) -> float:
        """connect_rtc -> first frame, in milliseconds."""
        return (self.first_frame - self.asked) * 1000

    @property
    def from_offer_ms(self) -> float:
        """Offer sent -> first frame, in milliseconds."""
        return (self.first_frame - self.offer_sent) * 1000


async def first_video_frame(client: RealtimeClient, cid: str, *, seconds: float) -> CallTiming:
    """Call ``cid`` (nothing sent, media received) until its first video frame; then hang
    up. ``TimeoutError`` if the call or the frame takes longer than ``seconds``."""
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    readers: list[asyncio.Task[None]] = []

    async def read_one(track: Any) -> None:
        await track.recv()
        if not first.done():
            first.set_result(time.perf_counter())

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "track" and event["track"].kind == "video":
            readers.append(asyncio.create_task(read_one(event["track"])))

    asked = time.perf_counter()
    connector = await client.connect_rtc(
        cid=cid, media={"video": False, "audio": False}, callback=on_event
    )
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            connection = await connector.connection
            frame_at = await first
        await connection.hangup()
    finally:
        for reader in readers:
            reader.cancel()
    return CallTiming(asked, sent, frame_at)
