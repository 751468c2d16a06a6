"""Settings of event rules: triggers, conditions, actions, and checks across rules and ports."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pydantic import ValidationError

from agent.events.settings import (
    DeviceKind,
    EventRule,
    MotionTrigger,
    TriggerKind,
    check_rules,
    trigger_template_names,
)
from agent.sensors.settings import SerialPortSettings

PUSH = {"type": "push", "to": ["alice"], "title": "{device}"}


def rule(
    trigger: dict[str, Any], *, actions: list[dict[str, Any]] | None = None, **more: Any
) -> EventRule:
    data = {
        "name": "r",
        "trigger": trigger,
        "actions": [{"type": "post"}] if actions is None else actions,
        **more,
    }
    return EventRule.model_validate(data)


def refusal(trigger: dict[str, Any], **more: Any) -> str:
    with pytest.raises(ValidationError) as info:
        rule(trigger, **more)
    return str(info.value)


def test_every_trigger_kind_loads() -> None:
    triggers = [
        {"type": "line", "port": "gps", "match": r"^\$GPRMC"},
        {"type": "threshold", "port": "env", "field": "temp", "above": 30, "hysteresis": 1},
        {"type": "device", "kind": "camera", "when": "change"},
        {"type": "motion", "threshold": 0.1, "region": [0.5, 0.5, 0.5, 0.5]},
        {"type": "button", "pin": 17},
        {"type": "manual"},
    ]
    kinds = [rule(trigger).kind for trigger in triggers]
    assert kinds == list(TriggerKind)


def test_cooldown_reads_durations() -> None:
    assert rule({"type": "manual"}, cooldown="5m").cooldown == 300
    assert rule({"type": "manual"}, cooldown=2.5).cooldown == 2.5
    assert "invalid duration 'soon'" in refusal({"type": "manual"}, cooldown="soon")
    assert "cooldown" in refusal({"type": "manual"}, cooldown=-1)


@pytest.mark.parametrize(
    ("trigger", "words"),
    [
        ({"type": "nope"}, "does not match any of the expected tags: 'line'"),
        ({"type": "line", "match": "(x"}, "match regex '(x' does not compile"),
        ({"type": "threshold", "port": "p", "field": "f"}, "exactly one of above or below"),
        ({"type": "threshold", "port": "p", "field": "f", "above": 1, "below": 0}, "exactly one"),
        (
            {"type": "threshold", "port": "p", "field": "f", "above": 1, "hysteresis": -1},
            "hysteresis",
        ),
        ({"type": "device", "kind": "toaster"}, "kind"),
        ({"type": "motion", "threshold": 0}, "threshold"),
        ({"type": "motion", "region": [0.5, 0, 0.6, 1]}, "fractions of the frame"),
        ({"type": "motion", "region": [0, 0, 0, 1]}, "fractions of the frame"),
        ({"type": "motion", "region": [-0.1, 0, 0.5, 0.5]}, "fractions of the frame"),
        ({"type": "manual", "extra": 1}, "extra"),
    ],
)
def test_trigger_refusals(trigger: dict[str, Any], words: str) -> None:
    assert words in refusal(trigger)


def test_button_needs_gpiozero_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # as if it were not installed
    assert "need the gpiozero package" in refusal({"type": "button", "pin": 17})


@pytest.mark.parametrize(
    ("more", "words"),
    [
        ({"actions": []}, "actions"),
        ({"actions": [{"type": "push", "title": "x"}]}, "needs recipients"),
        ({"actions": [{**PUSH, "title": "{a.b}"}]}, "is not a plain name"),
        ({"actions": [{**PUSH, "body": "{"}]}, "is not valid"),
        ({"actions": [{**PUSH, "topic": "has space"}]}, "topic"),
        ({"actions": [{**PUSH, "roles": ["king"]}]}, "roles"),
        ({"actions": [{**PUSH, "urgency": "now"}]}, "urgency"),
        ({"actions": [{"type": "snapshot"}, {"type": "snapshot"}]}, "more than one snapshot"),
        ({"actions": [{"type": "call"}, {"type": "call"}]}, "more than one call"),
        ({"conditions": [{"type": "time", "after": "10:00", "before": "10:00"}]}, "differ"),
        (
            {"conditions": [{"type": "field", "port": "p", "field": "f", "op": "~", "value": 1}]},
            "op",
        ),
        ({"name": "has space"}, "name"),
    ],
)
def test_rule_refusals(more: dict[str, Any], words: str) -> None:
    assert words in refusal({"type": "manual"}, **more)


def test_conditions_load() -> None:
    loaded = rule(
        {"type": "manual"},
        conditions=[
            {"type": "time", "after": "22:00", "before": "06:00", "days": ["fri", "sat"]},
            {"type": "field", "port": "env", "field": "temp", "op": ">=", "value": 20},
        ],
    )
    assert len(loaded.conditions) == 2


def test_template_names_per_trigger() -> None:
    line = rule({"type": "line", "match": "(?P<code>[0-9]+)"}).trigger
    assert trigger_template_names(line) == {"port", "line", "code"}
    assert trigger_template_names(rule({"type": "manual"}).trigger) == frozenset()
    device = rule({"type": "device", "kind": "serial"}).trigger
    assert trigger_template_names(device) == {"kind", "source", "state"}


# --- checks across rules and ports ------------------------------------------------------------

ENV = SerialPortSettings(name="env", port="/dev/ttyUSB0", parse=r"T=(?P<temp>\S+)")
METER = SerialPortSettings(name="meter", port="/dev/ttyUSB1", framing="json")
GPS = SerialPortSettings(name="gps", port="/dev/ttyUSB2", framing="nmea")
PORTS = [ENV, METER, GPS]


def test_check_rules_accepts_fitting_rules() -> None:
    rules = [
        rule(
            {"type": "threshold", "port": "env", "field": "temp", "above": 30},
            actions=[{**PUSH, "title": "{device} {temp} {value} {direction}"}],
        ),
        rule(
            {"type": "line", "port": "meter", "match": "x"},
            actions=[{**PUSH, "title": "{anything}"}],  # JSON fields cannot be known ahead
        ).model_copy(update={"name": "r2"}),
        rule(
            {"type": "line", "match": "(?P<n>x)"},
            actions=[{**PUSH, "title": "{n} {temp}"}],
        ).model_copy(update={"name": "r3"}),
        rule({"type": "device", "kind": "serial", "name": "gps"}).model_copy(update={"name": "r4"}),
        rule(
            {"type": "manual"},
            conditions=[{"type": "field", "port": "meter", "field": "kwh", "op": ">", "value": 1}],
        ).model_copy(update={"name": "r5"}),
        rule({"type": "threshold", "port": "gps", "field": "values", "above": 1}).model_copy(
            update={"name": "r6"}
        ),
    ]
    check_rules(rules, PORTS)


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        ([rule({"type": "manual"}), rule({"type": "manual"})], "another rule has the same name"),
        (
            [rule({"type": "line", "port": "nope", "match": "x"})],
            "events[0] ('r').trigger.port: no [[serial]] port is named 'nope' "
            "(configured: 'env', 'meter', 'gps')",
        ),
        (
            [rule({"type": "threshold", "port": "env", "field": "hum", "above": 1})],
            "events[0] ('r').trigger.field: serial port 'env' has no field 'hum'; its fields: temp",
        ),
        (
            [rule({"type": "device", "kind": "serial", "name": "nope"})],
            "trigger.name: no [[serial]] port is named 'nope'",
        ),
        (
            [
                rule(
                    {"type": "manual"},
                    conditions=[
                        {"type": "field", "port": "env", "field": "x", "op": ">", "value": 1}
                    ],
                )
            ],
            "events[0] ('r').conditions[0].field: serial port 'env' has no field 'x'",
        ),
        (
            [rule({"type": "manual"}, actions=[{**PUSH, "body": "{temp}"}])],
            "events[0] ('r').actions[0].body: {temp} is not a value of this event; "
            "it has device, name, time, trigger, ts",
        ),
        (
            [
                rule(
                    {"type": "line", "port": "env", "match": "x"},
                    actions=[{"type": "post"}, {**PUSH, "title": "{kwh}"}],
                )
            ],
            "actions[1].title: {kwh} is not a value of this event",
        ),
    ],
)
def test_check_rules_refusals(rules: list[EventRule], words: str) -> None:
    with pytest.raises(ValueError, match="events") as info:
        check_rules(rules, PORTS)
    assert words in str(info.value)


def test_check_rules_names_fields_of_a_port_without_parse() -> None:
    plain = SerialPortSettings(name="plain", port="/dev/ttyUSB3")
    with pytest.raises(ValueError, match="none \\(set a parse regex with named groups\\)"):
        check_rules(
            [rule({"type": "threshold", "port": "plain", "field": "t", "above": 1})], [plain]
        )


def test_motion_region_is_a_tuple() -> None:
    trigger = rule({"type": "motion", "region": [0, 0, 0.5, 0.5]}).trigger
    assert isinstance(trigger, MotionTrigger)
    assert trigger.region == (0, 0, 0.5, 0.5)
    whole = rule({"type": "motion", "region": None}).trigger
    assert isinstance(whole, MotionTrigger)
    assert whole.region is None
    assert DeviceKind("serial") is DeviceKind.SERIAL


def test_package_names_load_on_first_use() -> None:
    import agent.events
    import agent.sensors

    assert agent.events.EventRule is EventRule
    assert agent.sensors.SerialPortSettings is SerialPortSettings
    for package in (agent.events, agent.sensors):
        with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
            package.Nope  # noqa: B018
