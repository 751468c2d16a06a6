"""Pure fan-out decisions: key-frame gate, per-viewer queues, backoff, shared bitrate."""

from __future__ import annotations

import itertools
import re

import pytest

from agent import retry
from agent.media.config import BackoffConfig
from agent.media.policy import (
    Backoff,
    KeyframeGate,
    Offer,
    RequestLimiter,
    ViewerQueue,
    shared_bitrate,
)


def test_gate_forces_once_per_interval_and_coalesces() -> None:
    gate = KeyframeGate(min_interval=1.0)
    assert not gate.take(0.0)  # nothing asked
    gate.request()
    gate.request()
    assert gate.pending
    assert gate.take(0.0)
    assert not gate.take(0.1)  # both requests served by one key frame
    gate.request()
    assert not gate.take(0.5)  # too soon: stays pending
    assert gate.pending
    assert gate.take(1.0)
    assert gate.forced == 2


def test_gate_is_satisfied_by_a_scheduled_key_frame() -> None:
    gate = KeyframeGate(min_interval=1.0)
    gate.request()
    gate.keyframe_sent(5.0)
    assert not gate.pending
    gate.request()
    assert not gate.take(5.5)  # a key frame just went out
    assert gate.take(6.0)


def test_request_limiter() -> None:
    limiter = RequestLimiter(2.0)
    assert [limiter.allow(t) for t in (0.0, 1.0, 1.9, 2.0, 3.0, 4.5)] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]


def test_video_queue_waits_for_a_key_frame_first() -> None:
    queue: ViewerQueue[str] = ViewerQueue(3, needs_key=True)
    assert queue.offer("p", key=False) is Offer.WAITING_FOR_KEY
    assert queue.offer("k", key=True) is Offer.QUEUED
    assert queue.offer("p1", key=False) is Offer.QUEUED
    assert (queue.pop(), queue.pop(), queue.pop()) == ("k", "p1", None)
    assert queue.skipped == 1


def test_video_queue_overflow_drops_everything_until_the_next_key() -> None:
    queue: ViewerQueue[str] = ViewerQueue(2, needs_key=True)
    queue.offer("k", key=True)
    queue.offer("p1", key=False)
    assert queue.offer("p2", key=False) is Offer.OVERFLOW
    assert len(queue) == 0
    assert queue.waiting_for_key
    assert queue.dropped == 3
    assert queue.offer("p3", key=False) is Offer.WAITING_FOR_KEY
    assert queue.offer("k2", key=True) is Offer.QUEUED
    assert queue.pop() == "k2"


def test_video_queue_overflow_with_a_key_frame_keeps_the_key() -> None:
    queue: ViewerQueue[str] = ViewerQueue(2, needs_key=True)
    queue.offer("k", key=True)
    queue.offer("p1", key=False)
    assert queue.offer("k2", key=True) is Offer.OVERFLOW
    assert (queue.pop(), queue.pop()) == ("k2", None)
    assert queue.dropped == 2


def test_audio_queue_drops_the_oldest() -> None:
    queue: ViewerQueue[int] = ViewerQueue(2, needs_key=False)
    assert [queue.offer(i, key=False) for i in range(4)] == [
        Offer.QUEUED,
        Offer.QUEUED,
        Offer.OVERFLOW,
        Offer.OVERFLOW,
    ]
    assert (queue.pop(), queue.pop()) == (2, 3)
    assert queue.dropped == 2
    queue.resync()
    assert not queue.waiting_for_key


def test_queue_needs_room() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ViewerQueue(0, needs_key=True)


def test_backoff_grows_caps_jitters_below_the_ceiling_and_resets() -> None:
    config = BackoffConfig(initial=1.0, maximum=5.0, factor=2.0, jitter=0.5)
    highest = Backoff(config, rng=lambda: 1.0)  # beyond random()'s range: the ceilings
    assert list(itertools.islice(highest, 5)) == [1.0, 2.0, 4.0, 5.0, 5.0]
    highest.reset()
    assert highest.next_delay() == 1.0
    lowest = Backoff(config, rng=lambda: 0.0)  # jitter 0.5: half of each ceiling is drawn
    assert list(itertools.islice(lowest, 4)) == [0.5, 1.0, 2.0, 2.5]
    drawn = list(itertools.islice(Backoff(config), 200))  # real random draws
    ceilings = [min(5.0, 2.0**n) for n in range(200)]
    assert all(c / 2 <= d <= c for d, c in zip(drawn, ceilings, strict=True))
    assert len(set(drawn)) > 100  # jittered, not the ceilings


def test_backoff_is_the_shared_schedule() -> None:
    # Full jitter (1.0) with the same draws gives exactly agent.retry.backoff's delays.
    config = BackoffConfig(initial=0.5, maximum=30.0, factor=2.0, jitter=1.0)
    draws = [0.25, 0.75, 0.0, 0.5, 0.9, 0.1, 0.6, 0.3]
    ours = Backoff(config, rng=iter(draws).__next__)
    shared = retry.backoff(0.5, 2.0, 30.0, jitter=iter(draws).__next__)
    assert list(itertools.islice(ours, 8)) == list(itertools.islice(shared, 8))
    # No jitter: the ceilings themselves, whatever the draws (what tests of devices use).
    fixed = Backoff(BackoffConfig(initial=0.1, maximum=0.3, jitter=0.0))
    assert list(itertools.islice(fixed, 4)) == [0.1, 0.2, 0.3, 0.3]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"initial": 0.0}, "initial must be above 0 (got 0.0)"),
        ({"factor": 0.5}, "factor must be at least 1"),
        ({"initial": 5.0, "maximum": 1.0}, "maximum must be >= initial"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1 (got 1.5)"),
        ({"jitter": -0.1}, "jitter must be between 0 and 1"),
        ({"stable_after": -1.0}, "stable_after must be >= 0"),
    ],
)
def test_backoff_config_names_what_no_schedule_can_follow(
    fields: dict[str, float], named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        BackoffConfig(**fields)


def test_shared_bitrate_follows_the_slowest_reasonable_viewer() -> None:
    assert shared_bitrate([], configured=1_000_000, floor=150_000) == 1_000_000
    assert shared_bitrate([800_000, 2_000_000], configured=1_000_000, floor=150_000) == 800_000
    assert shared_bitrate([3_000_000], configured=1_000_000, floor=150_000) == 1_000_000
    # A viewer on a hopeless link is ignored: it drops frames instead of degrading everyone.
    assert shared_bitrate([50_000, 900_000], configured=1_000_000, floor=150_000) == 900_000
    assert shared_bitrate([50_000], configured=1_000_000, floor=150_000) == 1_000_000
