"""Event rules: triggers (serial lines, thresholds, devices, motion, buttons, names) to actions.

The daemon builds one ``EventEngine`` from the ``[[events]]`` settings with the
``ActionHandlers`` it can offer, feeds it readings and device changes, and serves its
``control_handlers()`` on the ``ControlServer`` in the state directory.

Names are imported on first use: loading the settings models (as ``agent.config`` does)
does not load the adapters and their dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lazy import lazy_exports

if TYPE_CHECKING:
    from agent.events.actions import ActionHandlers, Alert, Event
    from agent.events.control import ControlServer, control_socket_path, send_trigger
    from agent.events.engine import Clock, EventEngine, FireOutcome, SystemClock
    from agent.events.errors import ControlError, EventError, UnknownRuleError
    from agent.events.motion import MotionAnalyzer, motion_score
    from agent.events.settings import DeviceKind, EventRule, TriggerKind, check_rules

__all__ = [
    "ActionHandlers",
    "Alert",
    "Clock",
    "ControlError",
    "ControlServer",
    "DeviceKind",
    "Event",
    "EventEngine",
    "EventError",
    "EventRule",
    "FireOutcome",
    "MotionAnalyzer",
    "SystemClock",
    "TriggerKind",
    "UnknownRuleError",
    "check_rules",
    "control_socket_path",
    "motion_score",
    "send_trigger",
]

_HOMES = {
    "ActionHandlers": "agent.events.actions",
    "Alert": "agent.events.actions",
    "Clock": "agent.events.engine",
    "ControlError": "agent.events.errors",
    "ControlServer": "agent.events.control",
    "DeviceKind": "agent.events.settings",
    "Event": "agent.events.actions",
    "EventEngine": "agent.events.engine",
    "EventError": "agent.events.errors",
    "EventRule": "agent.events.settings",
    "FireOutcome": "agent.events.engine",
    "MotionAnalyzer": "agent.events.motion",
    "SystemClock": "agent.events.engine",
    "TriggerKind": "agent.events.settings",
    "UnknownRuleError": "agent.events.errors",
    "check_rules": "agent.events.settings",
    "control_socket_path": "agent.events.control",
    "motion_score": "agent.events.motion",
    "send_trigger": "agent.events.control",
}


__getattr__ = lazy_exports(__name__, _HOMES)
