"""Trigger matching as pure code: readings, device changes, motion scores in; hits out.

A ``Hit`` carries the event's ``details`` (JSON for the posted event) and the ``values`` its
templates may use. Matchers keep the little state a trigger needs (a threshold's arming,
the presence of devices) and nothing else: conditions and cooldowns are the engine's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.events.settings import (
    DeviceKind,
    DeviceTrigger,
    LineTrigger,
    MotionTrigger,
    Region,
    ThresholdTrigger,
)
from agent.sensors.framing import Reading

__all__ = [
    "DeviceChange",
    "DeviceMatcher",
    "Hit",
    "LineMatcher",
    "PresenceTracker",
    "ThresholdMatcher",
    "match_motion",
]


@dataclass(frozen=True, slots=True)
class Hit:
    """A trigger that fired: ``details`` for the event JSON, ``values`` for templates."""

    details: Mapping[str, Any]
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """A device went away (``gone``) or came back (``back``)."""

    kind: DeviceKind
    name: str
    state: Literal["gone", "back"]


class LineMatcher:
    """Fires when a line of the port (or any port) matches the regex."""

    def __init__(self, trigger: LineTrigger) -> None:
        self._port = trigger.port
        self._regex = re.compile(trigger.match)

    def match(self, reading: Reading) -> Hit | None:
        """A hit for ``reading``, or ``None``."""
        if reading.line is None or self._port not in (None, reading.port):
            return None
        found = self._regex.search(reading.line)
        if found is None:
            return None
        groups = found.groupdict()
        details = {"port": reading.port, "line": reading.line, "groups": groups}
        values = {**(reading.fields or {}), **groups, "port": reading.port, "line": reading.line}
        return Hit(details, values)


class ThresholdMatcher:
    """Fires when a numeric field crosses the threshold; re-arms once back past hysteresis.

    ``above = 30, hysteresis = 1`` fires at a value over 30, then not again until the value
    has come down to 29 or less and gone over 30 once more. The matcher starts armed, so a
    device that starts in alarm reports it.
    """

    def __init__(self, trigger: ThresholdTrigger) -> None:
        self._port = trigger.port
        self._field = trigger.field
        self._above = trigger.above is not None
        self._threshold = trigger.above if trigger.above is not None else trigger.below or 0.0
        self._hysteresis = trigger.hysteresis
        self.armed = True

    def match(self, reading: Reading) -> Hit | None:
        """A hit when ``reading`` crosses the threshold while armed, else ``None``."""
        value = self._value(reading)
        if value is None:
            return None
        if self.armed and self._past(value):
            self.armed = False
            return self._hit(reading, value)
        if not self.armed and self._rearms(value):
            self.armed = True
        return None

    def _value(self, reading: Reading) -> float | None:
        if reading.port != self._port or reading.fields is None:
            return None
        value = reading.fields.get(self._field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def _past(self, value: float) -> bool:
        return value > self._threshold if self._above else value < self._threshold

    def _rearms(self, value: float) -> bool:
        if self._above:
            return value <= self._threshold - self._hysteresis
        return value >= self._threshold + self._hysteresis

    def _hit(self, reading: Reading, value: float) -> Hit:
        details = {
            "port": self._port,
            "field": self._field,
            "value": value,
            "threshold": self._threshold,
            "direction": "above" if self._above else "below",
        }
        return Hit(details, {**(reading.fields or {}), **details})


class PresenceTracker:
    """Turns presence reports into changes: the first report of a present device is none."""

    def __init__(self) -> None:
        self._present: dict[tuple[DeviceKind, str], bool] = {}

    def update(self, kind: DeviceKind, name: str, present: bool) -> DeviceChange | None:
        """The change this report makes, or ``None`` for a repeat or a first sighting."""
        previous = self._present.get((kind, name))
        self._present[(kind, name)] = present
        if previous is present or (previous is None and present):
            return None
        return DeviceChange(kind, name, "back" if present else "gone")


class DeviceMatcher:
    """Fires on a device change of the configured kind, name and direction."""

    def __init__(self, trigger: DeviceTrigger) -> None:
        self._trigger = trigger

    def match(self, change: DeviceChange) -> Hit | None:
        """A hit for ``change``, or ``None``."""
        trigger = self._trigger
        if change.kind is not trigger.kind or trigger.name not in (None, change.name):
            return None
        if trigger.when not in (change.state, "change"):
            return None
        details = {"kind": change.kind.value, "source": change.name, "state": change.state}
        return Hit(details, details)


def match_motion(trigger: MotionTrigger, score: float, region: Region | None) -> Hit | None:
    """A hit when the score for the trigger's region reaches its threshold."""
    if region != trigger.region or score < trigger.threshold:
        return None
    details = {"score": round(score, 4), "threshold": trigger.threshold, "region": region}
    return Hit(details, {"score": details["score"], "threshold": trigger.threshold})
