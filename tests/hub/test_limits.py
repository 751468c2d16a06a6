"""Pure tests of the token bucket, the error window and the metrics text."""

from __future__ import annotations

from agent.hub.limits import CloseCode, ErrorWindow, TokenBucket
from agent.hub.metrics import HubMetrics


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.4) is False  # 0.8 tokens so far
    assert bucket.take(100.5) is True  # 1.0
    assert bucket.take(100.5) is False


def test_token_bucket_never_holds_more_than_the_burst() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=2, now=0.0)
    assert bucket.take(0.0, cost=2)
    assert bucket.take(1000.0, cost=2)
    assert not bucket.take(1000.0)


def test_token_bucket_ignores_a_clock_that_steps_back() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.stamp == 10.0


def test_error_window_trips_on_one_more_than_the_limit_within_the_window() -> None:
    window = ErrorWindow(max_errors=2, window=5.0)
    assert not window.record(0.0)
    assert not window.record(1.0)
    assert window.record(4.9)


def test_error_window_forgets_old_errors() -> None:
    window = ErrorWindow(max_errors=2, window=5.0)
    for t in (0.0, 1.0, 5.0, 6.0):
        assert not window.record(t)  # 0.0 and 1.0 have left the window by 5.0 and 6.0
    assert window.record(6.5)


def test_close_codes_are_the_documented_ones() -> None:
    assert (CloseCode.POLICY, CloseCode.TOO_BIG) == (1008, 1009)
    assert (CloseCode.IDLE, CloseCode.SLOW_READER) == (4408, 4409)
    assert (CloseCode.UNAUTHORIZED, CloseCode.TOO_MANY_CONNECTIONS) == (4401, 4429)


def test_metrics_render_the_prometheus_text_format() -> None:
    metrics = HubMetrics(frames_in=3, frames_out=5, bytes_out=70, connections_opened=2)
    metrics.errors["NOT_FOUND"] += 2
    metrics.closes[1008] += 1
    metrics.refused['odd "reason"\n\\'] += 1
    text = metrics.render(connections=1, groups=4)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "# TYPE edge_hub_connections gauge" in lines
    assert "edge_hub_connections 1" in lines
    assert "edge_hub_groups 4" in lines
    assert "edge_hub_frames_in_total 3" in lines
    assert "edge_hub_frames_out_total 5" in lines
    assert "edge_hub_bytes_out_total 70" in lines
    assert "edge_hub_connections_total 2" in lines
    assert 'edge_hub_errors_total{code="NOT_FOUND"} 2' in lines
    assert 'edge_hub_closes_total{code="1008"} 1' in lines
    assert 'edge_hub_refused_total{reason="odd \\"reason\\"\\n\\\\"} 1' in lines
    for line in lines:
        if line.startswith("# HELP"):
            assert len(line.split(" ", 3)) == 4
