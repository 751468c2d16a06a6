"""Pure tests of conditions and trigger matchers: inputs in, hits out, no event loop."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import TypeAdapter

from agent.events.conditions import condition_holds, conditions_hold
from agent.events.settings import (
    Condition,
    DeviceKind,
    DeviceTrigger,
    LineTrigger,
    MotionTrigger,
    ThresholdTrigger,
)
from agent.events.triggers import (
    DeviceChange,
    DeviceMatcher,
    LineMatcher,
    PresenceTracker,
    ThresholdMatcher,
    match_motion,
)
from agent.sensors.framing import Reading

CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)
FRIDAY = datetime.datetime(2024, 5, 3, 12, 0, tzinfo=datetime.UTC)  # a Friday


def at(hour: int, minute: int = 0, day: datetime.datetime = FRIDAY) -> datetime.datetime:
    return day.replace(hour=hour, minute=minute)


def cond(**data: Any) -> Condition:
    return CONDITION.validate_python(data)


def reading(port: str = "env", **fields: Any) -> Reading:
    return Reading(port, 1.0, fields=fields or None, line="t")


# --- conditions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "holds"),
    [(8, 0, True), (12, 30, True), (17, 59, True), (18, 0, False), (7, 59, False)],
)
def test_time_window_within_a_day(hour: int, minute: int, holds: bool) -> None:
    window = cond(type="time", after="08:00", before="18:00")
    assert condition_holds(window, now=at(hour, minute), readings={}) is holds


@pytest.mark.parametrize(
    ("hour", "holds"), [(22, True), (23, True), (0, True), (5, True), (6, False), (12, False)]
)
def test_time_window_across_midnight(hour: int, holds: bool) -> None:
    window = cond(type="time", after="22:00", before="06:00")
    assert condition_holds(window, now=at(hour), readings={}) is holds


def test_time_window_on_some_days() -> None:
    window = cond(type="time", after="00:00", before="23:59", days=["sat", "sun"])
    assert not condition_holds(window, now=at(12), readings={})
    saturday = FRIDAY + datetime.timedelta(days=1)
    assert condition_holds(window, now=at(12, day=saturday), readings={})


@pytest.mark.parametrize(
    ("op", "value", "actual", "holds"),
    [
        (">", 20, 21.5, True),
        (">", 20, 20, False),
        (">=", 20, 20, True),
        ("<", 20, 19, True),
        ("<=", 20, 21, False),
        ("==", "ok", "ok", True),
        ("!=", "ok", "fault", True),
        ("==", True, True, True),
        (">", 20, "n/a", False),  # ordering text says nothing
        (">", 0, True, False),  # nor ordering booleans
    ],
)
def test_field_comparisons(op: str, value: Any, actual: Any, holds: bool) -> None:
    check = cond(type="field", port="env", field="x", op=op, value=value)
    assert condition_holds(check, now=FRIDAY, readings={"env": reading(x=actual)}) is holds


def test_field_condition_without_a_reading_does_not_hold() -> None:
    check = cond(type="field", port="env", field="x", op="==", value=1)
    assert not condition_holds(check, now=FRIDAY, readings={})
    assert not condition_holds(check, now=FRIDAY, readings={"env": reading()})
    assert not condition_holds(check, now=FRIDAY, readings={"env": reading(y=1)})


def test_all_conditions_must_hold() -> None:
    window = cond(type="time", after="08:00", before="18:00")
    hot = cond(type="field", port="env", field="t", op=">", value=30)
    readings = {"env": reading(t=35)}
    assert conditions_hold([], now=FRIDAY, readings={})
    assert conditions_hold([window, hot], now=FRIDAY, readings=readings)
    assert not conditions_hold([window, hot], now=at(20), readings=readings)


# --- line -------------------------------------------------------------------------------------


def test_line_matcher() -> None:
    matcher = LineMatcher(LineTrigger(type="line", port="bell", match=r"RING (?P<times>\d+)"))
    assert matcher.match(Reading("other", 1.0, line="RING 2")) is None
    assert matcher.match(Reading("bell", 1.0, line="quiet")) is None
    assert matcher.match(Reading("bell", 1.0, raw=b"RING 2")) is None
    hit = matcher.match(Reading("bell", 1.0, line="RING 2", fields={"extra": 1}))
    assert hit is not None
    assert hit.details == {"port": "bell", "line": "RING 2", "groups": {"times": "2"}}
    assert hit.values == {"extra": 1, "times": "2", "port": "bell", "line": "RING 2"}


def test_line_matcher_any_port() -> None:
    matcher = LineMatcher(LineTrigger(type="line", match="ALARM"))
    assert matcher.match(Reading("a", 1.0, line="ALARM!")) is not None


# --- threshold --------------------------------------------------------------------------------


def test_threshold_above_with_hysteresis() -> None:
    matcher = ThresholdMatcher(
        ThresholdTrigger(type="threshold", port="env", field="t", above=30, hysteresis=2)
    )
    fired = [
        matcher.match(reading(t=value)) is not None
        for value in [25, 31, 32, 29, 31, 28, 30, 30.5, 27.9, 35]
    ]
    # 31 fires; 29 is not low enough to re-arm; 28 re-arms; 30 is not above; 30.5 fires.
    assert fired == [False, True, False, False, False, False, False, True, False, True]


def test_threshold_below_with_hysteresis() -> None:
    matcher = ThresholdMatcher(
        ThresholdTrigger(type="threshold", port="env", field="t", below=0, hysteresis=1)
    )
    fired = [matcher.match(reading(t=value)) is not None for value in [5, -1, -3, 0.5, -2, 1, -0.1]]
    assert fired == [False, True, False, False, False, False, True]


def test_threshold_details_and_values() -> None:
    matcher = ThresholdMatcher(ThresholdTrigger(type="threshold", port="env", field="t", above=30))
    hit = matcher.match(reading(t=31, h=40))
    assert hit is not None
    assert hit.details == {
        "port": "env",
        "field": "t",
        "value": 31.0,
        "threshold": 30.0,
        "direction": "above",
    }
    assert hit.values["h"] == 40


def test_threshold_ignores_other_ports_missing_and_non_numeric_fields() -> None:
    matcher = ThresholdMatcher(ThresholdTrigger(type="threshold", port="env", field="t", above=30))
    for other in [
        reading("other", t=99),
        reading(),
        reading(h=99),
        reading(t="hot"),
        reading(t=True),
    ]:
        assert matcher.match(other) is None
    assert matcher.armed


# --- devices ----------------------------------------------------------------------------------


def test_presence_tracker() -> None:
    tracker = PresenceTracker()
    cam = DeviceKind.CAMERA
    assert tracker.update(cam, "cam0", True) is None  # first sighting: not a "coming back"
    assert tracker.update(cam, "cam0", True) is None  # a repeat
    assert tracker.update(cam, "cam0", False) == DeviceChange(cam, "cam0", "gone")
    assert tracker.update(cam, "cam0", False) is None
    assert tracker.update(cam, "cam0", True) == DeviceChange(cam, "cam0", "back")
    # Missing at the first report is an outage.
    assert tracker.update(DeviceKind.SERIAL, "gps", False) == DeviceChange(
        DeviceKind.SERIAL, "gps", "gone"
    )


@pytest.mark.parametrize(
    ("trigger", "change", "fires"),
    [
        ({"kind": "camera"}, ("camera", "cam0", "gone"), True),
        ({"kind": "camera"}, ("camera", "cam0", "back"), False),
        ({"kind": "camera", "when": "back"}, ("camera", "cam0", "back"), True),
        ({"kind": "camera", "when": "change"}, ("camera", "cam0", "back"), True),
        ({"kind": "camera", "when": "change"}, ("camera", "cam0", "gone"), True),
        ({"kind": "camera", "name": "cam1"}, ("camera", "cam0", "gone"), False),
        ({"kind": "microphone"}, ("camera", "cam0", "gone"), False),
        ({"kind": "serial", "name": "gps"}, ("serial", "gps", "gone"), True),
    ],
)
def test_device_matcher(trigger: dict[str, Any], change: tuple[str, str, Any], fires: bool) -> None:
    matcher = DeviceMatcher(DeviceTrigger(type="device", **trigger))
    kind, name, state = change
    hit = matcher.match(DeviceChange(DeviceKind(kind), name, state))
    assert (hit is not None) is fires
    if hit is not None:
        assert hit.details == {"kind": kind, "source": name, "state": state}


# --- motion -----------------------------------------------------------------------------------


def test_match_motion() -> None:
    whole = MotionTrigger(type="motion", threshold=0.1)
    corner = MotionTrigger(type="motion", threshold=0.1, region=(0, 0, 0.5, 0.5))
    assert match_motion(whole, 0.05, None) is None
    hit = match_motion(whole, 0.123456, None)
    assert hit is not None
    assert hit.details == {"score": 0.1235, "threshold": 0.1, "region": None}
    assert match_motion(corner, 0.5, None) is None
    assert match_motion(corner, 0.5, (0, 0, 0.5, 0.5)) is not None
