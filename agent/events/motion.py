"""Motion in the camera image: frame difference of small grayscale frames, at a low rate.

The score of a frame is the share of pixels (in a region, or the whole frame) whose brightness
changed by more than ``PIXEL_DELTA`` since the last analysed frame. Frames are first brought
down to about ``ANALYSIS_SIZE`` pixels (by libswscale for camera frames, by sampling for byte
buffers), so scoring costs the same whatever the camera's resolution, and only one frame per
interval is analysed: motion needs no more, and a Pi's CPU is busy encoding.

``motion_score`` is pure (bytes in, a number out) and needs no numpy; ``MotionAnalyzer``
decides which frames to look at and hands scores to the events engine; its ``watch`` loop
takes pictures from the camera's snapshot path and decodes them with PyAV, imported on the
first picture so that an agent without a motion rule never loads it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

from agent.errors import EdgeAgentError
from agent.events.settings import Region

__all__ = ["ANALYSIS_SIZE", "PIXEL_DELTA", "MotionAnalyzer", "decode_jpeg", "motion_score"]

log = logging.getLogger(__name__)

# A change of a tenth of the brightness range: above sensor noise in daylight and indoors.
PIXEL_DELTA: Final = 25
ANALYSIS_SIZE: Final = (64, 48)
# After a picture that could not be taken: the camera is reopened, no need to hurry.
RETRY_SECONDS: Final = 1.0

MotionSink = Callable[[float, Region | None], None]


def motion_score(
    previous: bytes,
    current: bytes,
    *,
    width: int,
    height: int,
    stride: int | None = None,
    region: Region | None = None,
    step: int = 1,
    pixel_delta: int = PIXEL_DELTA,
) -> float:
    """Share (0 to 1) of sampled pixels in ``region`` that changed by more than ``pixel_delta``.

    Both buffers hold 8-bit grayscale rows of ``width`` pixels, ``stride`` bytes apart (the
    line size of a video plane; default ``width``). Every ``step``-th pixel of every
    ``step``-th row is compared. ``region`` is (x, y, width, height) in fractions of the frame.
    """
    stride = width if stride is None else stride
    _check_buffer(previous, width, height, stride, step)
    _check_buffer(current, width, height, stride, step)
    left, top, right, bottom = _pixel_box(region, width, height)
    changed = total = 0
    for row in range(top, bottom, step):
        start = row * stride
        before = previous[start + left : start + right : step]
        after = current[start + left : start + right : step]
        changed += sum(abs(old - new) > pixel_delta for old, new in zip(before, after, strict=True))
        total += len(after)
    return changed / total if total else 0.0


class MotionAnalyzer:
    """Scores camera frames for the regions motion rules watch, one frame per interval."""

    def __init__(
        self,
        sink: MotionSink,
        *,
        regions: Collection[Region | None],
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._regions = tuple(dict.fromkeys(regions))
        self._interval = interval_seconds
        self._clock = clock
        self._due = float("-inf")
        self._previous: tuple[bytes, int, int, int] | None = None

    def due(self) -> bool:
        """Whether the next frame will be analysed (callers may skip converting it)."""
        return self._clock() >= self._due

    def seconds_until_due(self) -> float:
        """How long until the next frame is wanted (0 when it is due now)."""
        return max(0.0, self._due - self._clock()) if self._due != float("-inf") else 0.0

    def feed_frame(self, frame: Any) -> bool:
        """Analyse a PyAV ``VideoFrame`` if due; whether it was."""
        if not self.due():
            return False
        width, height = ANALYSIS_SIZE
        gray = frame.reformat(width=width, height=height, format="gray")
        plane = gray.planes[0]
        return self.feed_gray(bytes(plane), width, height, stride=plane.line_size)

    def feed_gray(
        self, buffer: bytes, width: int, height: int, *, stride: int | None = None
    ) -> bool:
        """Analyse an 8-bit grayscale buffer if due; whether it was."""
        if not self.due():
            return False
        self._due = self._clock() + self._interval
        stride = width if stride is None else stride
        shape = (width, height, stride)
        previous, self._previous = self._previous, (buffer, *shape)
        if previous is None or previous[1:] != shape:
            return True  # the first frame, or the camera changed resolution: a new baseline
        step = max(1, min(width // ANALYSIS_SIZE[0], height // ANALYSIS_SIZE[1]))
        for region in self._regions:
            score = motion_score(
                previous[0],
                buffer,
                width=width,
                height=height,
                stride=stride,
                region=region,
                step=step,
            )
            self._sink(score, region)
        return True

    async def watch(
        self, snapshot: Callable[[], Awaitable[bytes]], *, retry_seconds: float = RETRY_SECONDS
    ) -> None:
        """Score one picture per interval, until cancelled.

        Pictures come through the snapshot path, which keeps the camera open while they
        are asked for more often than it lingers; each JPEG is decoded off the loop. A
        picture that cannot be had or decoded is logged and tried again after
        ``retry_seconds``.
        """
        while True:
            try:
                jpeg = await snapshot()
                frame = await asyncio.to_thread(decode_jpeg, jpeg)
            except (TimeoutError, EdgeAgentError, ValueError) as exc:
                log.warning("motion: no picture this round: %s", exc)
                await asyncio.sleep(retry_seconds)
                continue
            self.feed_frame(frame)
            await asyncio.sleep(self.seconds_until_due())


def decode_jpeg(jpeg: bytes) -> Any:
    """The first picture of a JPEG as a PyAV ``VideoFrame`` (blocking: run it off the loop).

    PyAV is imported here, not at the top: the media stack loads on first need.

    Raises:
        ValueError: the bytes hold no picture (PyAV's ``InvalidDataError`` is one too).
    """
    import av

    with av.open(io.BytesIO(jpeg), mode="r", format="mjpeg") as container:
        for frame in container.decode(video=0):
            return frame
    # Not StopIteration: it cannot cross asyncio.to_thread's future.
    raise ValueError(f"no picture in {len(jpeg)} bytes of JPEG")


def _check_buffer(buffer: bytes, width: int, height: int, stride: int, step: int) -> None:
    if width <= 0 or height <= 0 or stride < width or step < 1:
        raise ValueError(
            f"bad frame shape: width {width}, height {height}, stride {stride}, step {step}"
        )
    needed = stride * (height - 1) + width
    if len(buffer) < needed:
        raise ValueError(f"a {width}x{height} frame needs {needed} bytes, got {len(buffer)}")


def _pixel_box(region: Region | None, width: int, height: int) -> tuple[int, int, int, int]:
    if region is None:
        return 0, 0, width, height
    x, y, w, h = region
    left, top = int(x * width), int(y * height)
    right = max(left + 1, min(width, round((x + w) * width)))
    bottom = max(top + 1, min(height, round((y + h) * height)))
    return left, top, right, bottom
