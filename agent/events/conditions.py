"""Rule conditions as pure code: the local time and the latest readings in, a yes or no out."""

from __future__ import annotations

import datetime
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from agent.events.settings import Condition, FieldCondition, TimeCondition
from agent.sensors.framing import Reading

__all__ = ["condition_holds", "conditions_hold"]

_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def conditions_hold(
    conditions: Sequence[Condition], *, now: datetime.datetime, readings: Mapping[str, Reading]
) -> bool:
    """Whether every condition holds (no conditions: yes)."""
    return all(condition_holds(item, now=now, readings=readings) for item in conditions)


def condition_holds(
    condition: Condition, *, now: datetime.datetime, readings: Mapping[str, Reading]
) -> bool:
    """Whether one condition holds at local time ``now`` with these latest readings."""
    if isinstance(condition, TimeCondition):
        return _time_holds(condition, now)
    return _field_holds(condition, readings)


def _time_holds(condition: TimeCondition, now: datetime.datetime) -> bool:
    # ``days`` name the day the clock shows now: with days = ["fri"], a 22:00-06:00 window
    # holds on Friday from midnight to 06:00 and from 22:00 on, not on Saturday morning.
    if condition.days is not None and _DAYS[now.weekday()] not in condition.days:
        return False
    clock = now.time().replace(tzinfo=None)
    after, before = condition.after, condition.before
    if after < before:
        return after <= clock < before
    return clock >= after or clock < before


def _field_holds(condition: FieldCondition, readings: Mapping[str, Reading]) -> bool:
    reading = readings.get(condition.port)
    fields = reading.fields if reading is not None else None
    if fields is None or condition.field not in fields:
        return False
    value, wanted = fields[condition.field], condition.value
    if condition.op == "==":
        return bool(value == wanted)
    if condition.op == "!=":
        return bool(value != wanted)
    if not (_is_number(value) and _is_number(wanted)):
        return False  # "<" between text or booleans says nothing useful about a sensor
    return _ORDER[condition.op](value, wanted)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
