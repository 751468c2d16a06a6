"""The Prometheus text writer shared by hub and agent."""

from __future__ import annotations

import math

from agent.exposition import Exposition, labelled


def test_families_values_and_labels() -> None:
    out = Exposition("edge_")
    out.add("up", "gauge", "Whether it is up.", 1)
    out.add("rtt_seconds", "gauge", "Round trip.", 0.25)
    out.add("errors_total", "counter", "Errors.", labelled("port", {'b"x\\\n': 2, "a": 1}))
    assert out.render().splitlines() == [
        "# HELP edge_up Whether it is up.",
        "# TYPE edge_up gauge",
        "edge_up 1",
        "# HELP edge_rtt_seconds Round trip.",
        "# TYPE edge_rtt_seconds gauge",
        "edge_rtt_seconds 0.25",
        "# HELP edge_errors_total Errors.",
        "# TYPE edge_errors_total counter",
        'edge_errors_total{port="a"} 1',
        'edge_errors_total{port="b\\"x\\\\\\n"} 2',
    ]


def test_special_floats_use_the_exposition_spelling() -> None:
    out = Exposition("")
    out.add("a", "gauge", "a", [("", math.nan), ('{k="1"}', math.inf), ('{k="2"}', -math.inf)])
    assert out.render().splitlines()[2:] == ["a NaN", 'a{k="1"} +Inf', 'a{k="2"} -Inf']


def test_an_empty_family_still_declares_itself() -> None:
    out = Exposition("x_")
    out.add("drops_total", "counter", "Drops.", labelled("viewer", {}))
    assert out.render() == "# HELP x_drops_total Drops.\n# TYPE x_drops_total counter\n"
