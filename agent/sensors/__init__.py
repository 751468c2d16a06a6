"""Serial sensors and actuators: framing, ports that reopen themselves, fan-out, writes.

The daemon builds one ``SensorHub`` from the ``[[serial]]`` settings and runs it; the events
engine listens to it, data channels subscribe to it, telemetry posts from it.

Names are imported on first use: loading the settings models (as ``agent.config`` does)
does not load the adapters and their dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lazy import lazy_exports

if TYPE_CHECKING:
    from agent.sensors.errors import SensorError, SerialWriteError, UnknownPortError, WriteRefusal
    from agent.sensors.framing import BadData, BadDataKind, Reading, make_framer
    from agent.sensors.hub import PostFn, ReadingFilter, SensorHub, SerialBridge, Subscription
    from agent.sensors.port import PortState, ReopenPolicy, SerialPort
    from agent.sensors.settings import Framing, Parity, SensorsSettings, SerialPortSettings

__all__ = [
    "BadData",
    "BadDataKind",
    "Framing",
    "Parity",
    "PortState",
    "PostFn",
    "Reading",
    "ReadingFilter",
    "ReopenPolicy",
    "SensorError",
    "SensorHub",
    "SensorsSettings",
    "SerialBridge",
    "SerialPort",
    "SerialPortSettings",
    "SerialWriteError",
    "Subscription",
    "UnknownPortError",
    "WriteRefusal",
    "make_framer",
]

_HOMES = {
    "BadData": "agent.sensors.framing",
    "BadDataKind": "agent.sensors.framing",
    "Framing": "agent.sensors.settings",
    "Parity": "agent.sensors.settings",
    "PortState": "agent.sensors.port",
    "PostFn": "agent.sensors.hub",
    "Reading": "agent.sensors.framing",
    "ReadingFilter": "agent.sensors.hub",
    "ReopenPolicy": "agent.sensors.port",
    "SensorError": "agent.sensors.errors",
    "SensorHub": "agent.sensors.hub",
    "SensorsSettings": "agent.sensors.settings",
    "SerialBridge": "agent.sensors.hub",
    "SerialPort": "agent.sensors.port",
    "SerialPortSettings": "agent.sensors.settings",
    "SerialWriteError": "agent.sensors.errors",
    "Subscription": "agent.sensors.hub",
    "UnknownPortError": "agent.sensors.errors",
    "WriteRefusal": "agent.sensors.errors",
    "make_framer": "agent.sensors.framing",
}


__getattr__ = lazy_exports(__name__, _HOMES)
