"""The reconnect policy: delays and schedules, pure (no loop, no sockets, no network library).

What a WebSocket failure means (the :class:`Failure` given to a schedule) is tested in
``tests/test_client_failures.py``.
"""

from __future__ import annotations

import itertools
import random

import pytest

from agent.retry import (
    Failure,
    FixedBackoff,
    Reconnect,
    ReconnectPolicy,
    Verdict,
    backoff,
    capped_delay,
    full_jitter,
)

# -- backoff --------------------------------------------------------------------------------


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    delays = list(itertools.islice(backoff(initial=0.5, factor=2, cap=30, jitter=lambda: 1.0), 10))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_is_full_jitter_below_each_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.25, 0.999])
    delays = list(
        itertools.islice(backoff(initial=1, factor=3, cap=5, jitter=lambda: next(draws)), 4)
    )
    assert delays == [0.0, 1.5, 1.25, pytest.approx(4.995)]


def test_backoff_with_a_seeded_source_is_reproducible_and_bounded() -> None:
    # Jitter only spreads reconnects; no secret depends on it.
    first = list(itertools.islice(backoff(jitter=random.Random(7).random), 50))  # noqa: S311
    again = list(itertools.islice(backoff(jitter=random.Random(7).random), 50))  # noqa: S311
    assert first == again
    ceilings = list(itertools.islice(backoff(jitter=lambda: 1.0), 50))
    assert all(0 <= d <= c for d, c in zip(first, ceilings, strict=True))
    assert max(first) <= 30
    # Full jitter spreads the capped delays over the whole window, not near the cap only.
    assert min(first[10:]) < 15 < max(first[10:])


def test_backoff_never_ends() -> None:
    delays = backoff(initial=0.1, cap=0.2, jitter=lambda: 1.0)
    assert list(itertools.islice(delays, 1000))[-1] == 0.2


@pytest.mark.parametrize(
    ("initial", "factor", "cap"), [(0, 2, 30), (-1, 2, 30), (1, 0.5, 30), (10, 2, 5)]
)
def test_backoff_refuses_nonsense(initial: float, factor: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        next(backoff(initial=initial, factor=factor, cap=cap))


def test_capped_delay_stays_in_the_upper_half() -> None:
    assert capped_delay(30, lambda: 0.0) == 15.0
    assert capped_delay(30, lambda: 1.0) == 30.0
    assert capped_delay(10, lambda: 0.5) == 7.5


# -- full jitter ------------------------------------------------------------------------------


def test_full_jitter_is_one_formula_for_every_attempt() -> None:
    ceilings = [full_jitter(n, initial=0.5, cap=30, jitter=lambda: 1.0) for n in range(8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert full_jitter(3, initial=1, factor=3, cap=100, jitter=lambda: 0.5) == 13.5
    # A row retried for days: the exponent stops growing, nothing overflows.
    assert full_jitter(100_000, initial=1, cap=60, jitter=lambda: 1.0) == 60.0


# -- the hub connection's schedule ------------------------------------------------------------

RESTART = Failure(Verdict.RETRY, restart=True)  # the hub closed with 1012 or 1001
LOST = Failure(Verdict.RETRY)  # refused TCP, abnormal closure, a policy close
REFUSED = Failure(Verdict.RETRY_AT_CAP)  # 401/403 on the upgrade, 4401/4403 later


def test_a_hub_restart_is_retried_within_a_second() -> None:
    schedule = Reconnect(jitter=lambda: 0.999)
    schedule.opened(now=0.0)
    # The hub says it restarts after an hour: no backoff left over from anything.
    assert schedule.delay(RESTART, now=3600.0) < 1.0
    assert schedule.outage_since == 3600.0
    assert schedule.delay(LOST, now=3601.0) < 1.0  # still starting up
    schedule.opened(now=3602.0)
    assert schedule.outage_since is None


def test_an_abrupt_loss_stays_under_a_second_for_a_minute_then_backs_off() -> None:
    schedule = Reconnect(jitter=lambda: 1.0)
    schedule.opened(now=0.0)
    now, delays = 100.0, []
    while now < 100.0 + 300:
        delay = schedule.delay(LOST, now=now)
        delays.append((now - 100.0, delay))
        now += delay
    young = [d for t, d in delays if t < 60]
    assert len(young) == 60
    assert max(young) == 1.0  # at most a second apart
    ceilings = dict(delays)
    assert all(a <= b for a, b in itertools.pairwise(d for _t, d in delays))  # only grows
    assert 1.0 < min(d for t, d in delays if t >= 61) < 1.1  # a hub back at 61 s: ~1 s
    assert max(ceilings.values()) == 30.0  # the cap, reached after 3.5 minutes
    assert next(t for t, d in delays if d == 30.0) > 200


@pytest.mark.parametrize(
    ("age", "ceiling"), [(30, 1.0), (60, 1.0), (90, 2.0), (120, 4.0), (400, 30.0)]
)
def test_the_ceiling_doubles_every_30_seconds_of_outage_after_the_first_minute(
    age: float, ceiling: float
) -> None:
    schedule = Reconnect(jitter=lambda: 1.0)
    schedule.delay(LOST, now=0.0)
    assert schedule.delay(LOST, now=age) == pytest.approx(ceiling)


def test_delays_are_full_jitter_below_the_ceiling() -> None:
    draws = iter([0.0, 0.25, 0.5])
    schedule = Reconnect(jitter=lambda: next(draws))
    assert [schedule.delay(LOST, now=t) for t in (0.0, 0.1, 0.2)] == [0.0, 0.25, 0.5]


def test_a_connection_dropped_right_after_opening_does_not_end_the_outage() -> None:
    schedule = Reconnect(jitter=lambda: 1.0)
    schedule.delay(LOST, now=0.0)
    for second in range(1, 70):
        schedule.opened(now=float(second))  # accepted, then closed at once (4429, 1008)
        delay = schedule.delay(LOST, now=second + 0.1)
    assert delay > 1.0  # the outage began at 0 and is over a minute old
    assert schedule.outage_since == 0.0
    schedule.opened(now=100.0)
    assert schedule.delay(LOST, now=100.0 + 10) == 1.0  # lived 10 s: a new outage


def test_a_refused_token_waits_in_the_upper_half_of_its_cap() -> None:
    schedule = Reconnect(ReconnectPolicy(refused_seconds=20), jitter=lambda: 0.0)
    assert schedule.delay(REFUSED, now=0.0) == 10.0
    assert schedule.delay(REFUSED, now=1.0) == 10.0


def test_the_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="reconnect policy"):
        ReconnectPolicy(quick_seconds=0)
    with pytest.raises(ValueError, match="reconnect policy"):
        ReconnectPolicy(quick_seconds=40, cap_seconds=30)
    with pytest.raises(ValueError, match="reconnect policy"):
        ReconnectPolicy(doubling_seconds=0)


def test_fixed_backoff_keeps_doubling_until_a_connection_lasts() -> None:
    schedule = FixedBackoff(lambda: backoff(0.5, 2, 30, jitter=lambda: 1.0), jitter=lambda: 0.0)
    assert [schedule.delay(RESTART, now=float(t)) for t in range(4)] == [0.5, 1, 2, 4]
    schedule.opened(now=10.0)
    assert schedule.delay(LOST, now=12.0) == 8.0  # 2 s up: not stable, keeps growing
    schedule.opened(now=20.0)
    assert schedule.delay(LOST, now=31.0) == 0.5  # 11 s up: starts over
    assert schedule.delay(REFUSED, now=32.0) == 15.0


def test_a_restart_starts_a_new_outage_and_a_quick_loss_after_it_does_not() -> None:
    # The restart is only reported by an open connection: that is what it takes.
    schedule = Reconnect(jitter=lambda: 1.0)
    schedule.delay(LOST, now=0.0)
    schedule.opened(now=100.0)
    schedule.delay(RESTART, now=101.0)
    assert schedule.outage_since == 101.0
    schedule.opened(now=102.0)
    schedule.delay(LOST, now=103.0)
    assert schedule.outage_since == 101.0
