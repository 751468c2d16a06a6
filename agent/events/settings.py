"""Settings of event rules ([[events]]): a trigger, optional conditions, actions, a cooldown.

In TOML::

    [[events]]
    name = "too-hot"
    trigger = { type = "threshold", port = "env", field = "temp", above = 30, hysteresis = 1 }
    conditions = [{ type = "time", after = "07:00", before = "22:00" }]
    actions = [
      { type = "snapshot" },
      { type = "push", roles = ["admin"], title = "{device}: {temp} °C", body = "at {time}" },
      { type = "post", groups = ["ops"] },
    ]
    cooldown = "10m"

Triggers: ``line`` (a serial line matches a regex), ``threshold`` (a field crosses a value,
with hysteresis), ``device`` (a camera, microphone or serial port goes away or comes back),
``motion`` (frame difference in the camera image), ``button`` (a GPIO button, needs gpiozero)
and ``manual`` (``edge-agent trigger NAME``). Conditions: ``time`` (between hours, on some
days) and ``field`` (a comparison with the latest reading of a port). Actions: ``post`` (to
groups), ``push`` (a web push alert to users or roles), ``snapshot`` (attached to the alert)
and ``call`` (the alert opens the viewer ready to call this device).

``check_rules`` checks what one rule cannot see on its own (unique names, serial ports and
fields that exist, template names the event will have); ``agent.config.Settings`` runs it.
"""

from __future__ import annotations

import datetime
import enum
import importlib.util
import re
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.durations import parse_duration
from agent.events.templates import template_names
from agent.sensors.settings import Framing, SerialPortSettings

__all__ = [
    "BASE_TEMPLATE_NAMES",
    "Action",
    "ButtonTrigger",
    "CallAction",
    "Condition",
    "DeviceKind",
    "DeviceTrigger",
    "EventRule",
    "FieldCondition",
    "LineTrigger",
    "ManualTrigger",
    "MotionTrigger",
    "PostAction",
    "PushAction",
    "Region",
    "SnapshotAction",
    "ThresholdTrigger",
    "TimeCondition",
    "Trigger",
    "TriggerKind",
    "check_rules",
    "trigger_template_names",
]

_RULE_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# RFC 8030 section 5.4: a Topic is at most 32 characters of the URL-safe base64 alphabet.
_TOPIC: Final = r"^[A-Za-z0-9_-]{1,32}$"
# Names every event offers to templates, whatever its trigger.
BASE_TEMPLATE_NAMES: Final = frozenset({"name", "device", "time", "ts", "trigger"})
_MAX_TTL: Final = 28 * 24 * 3600

Region = tuple[float, float, float, float]


class TriggerKind(enum.StrEnum):
    """What starts an event."""

    LINE = "line"
    THRESHOLD = "threshold"
    DEVICE = "device"
    MOTION = "motion"
    BUTTON = "button"
    MANUAL = "manual"


class DeviceKind(enum.StrEnum):
    """Devices whose going away or coming back is an event."""

    CAMERA = "camera"
    MICROPHONE = "microphone"
    SERIAL = "serial"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- triggers ----------------------------------------------------------------------------------


class LineTrigger(_Model):
    """A line from a serial port (any port, or ``port``) matches ``match`` (re.search)."""

    type: Literal["line"]
    port: str | None = None
    match: str

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"match regex {value!r} does not compile: {exc}") from None
        return value

    @property
    def groups(self) -> tuple[str, ...]:
        """Named groups of ``match``: they become template names."""
        return tuple(re.compile(self.match).groupindex)


class ThresholdTrigger(_Model):
    """A numeric field crosses ``above`` (or ``below``); re-arms past it by ``hysteresis``."""

    type: Literal["threshold"]
    port: str
    field: str
    above: float | None = None
    below: float | None = None
    hysteresis: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_direction(self) -> ThresholdTrigger:
        if (self.above is None) == (self.below is None):
            raise ValueError("a threshold trigger takes exactly one of above or below")
        return self


class DeviceTrigger(_Model):
    """A device of ``kind`` (any, or the one named ``name``) goes away or comes back."""

    type: Literal["device"]
    kind: DeviceKind
    name: str | None = None
    when: Literal["gone", "back", "change"] = "gone"


class MotionTrigger(_Model):
    """Motion in the camera image: the share of changed pixels reaches ``threshold``."""

    type: Literal["motion"]
    threshold: float = Field(0.05, gt=0, le=1)
    # x, y, width, height as fractions of the frame; unset: the whole frame.
    region: Region | None = None
    # Frames are compared this often at most: motion needs no more, and a Pi has little CPU.
    interval_seconds: float = Field(0.5, ge=0.05, le=60)

    @field_validator("region")
    @classmethod
    def _inside_frame(cls, value: Region | None) -> Region | None:
        if value is None:
            return None
        x, y, width, height = value
        if min(value) < 0 or width <= 0 or height <= 0 or x + width > 1 or y + height > 1:
            raise ValueError(
                f"region {list(value)} must be [x, y, width, height] as fractions of the "
                "frame (0 to 1), with a non-empty width and height inside the frame"
            )
        return value


class ButtonTrigger(_Model):
    """A GPIO button press (gpiozero pin numbering: 17, "GPIO17", "BOARD11")."""

    type: Literal["button"]
    pin: int | str
    pull_up: bool = True
    bounce_seconds: float | None = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _gpiozero_installed(self) -> ButtonTrigger:
        if importlib.util.find_spec("gpiozero") is None:
            raise ValueError(
                "GPIO button triggers need the gpiozero package, which is not installed "
                "(pip install 'edge-agent[gpio]', or apt install python3-gpiozero)"
            )
        return self


class ManualTrigger(_Model):
    """Fired by name: ``edge-agent trigger NAME`` through the control socket."""

    type: Literal["manual"]


Trigger = Annotated[
    LineTrigger | ThresholdTrigger | DeviceTrigger | MotionTrigger | ButtonTrigger | ManualTrigger,
    Field(discriminator="type"),
]

# -- conditions --------------------------------------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class TimeCondition(_Model):
    """Local time is from ``after`` up to ``before`` (across midnight when after > before)."""

    type: Literal["time"]
    after: datetime.time
    before: datetime.time
    days: list[Weekday] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> TimeCondition:
        if self.after == self.before:
            raise ValueError("a time condition needs after and before to differ")
        return self


class FieldCondition(_Model):
    """The latest reading of ``port`` has ``field`` compared by ``op`` to ``value``."""

    type: Literal["field"]
    port: str
    field: str
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: float | bool | str


Condition = Annotated[TimeCondition | FieldCondition, Field(discriminator="type")]

# -- actions -----------------------------------------------------------------------------------


class PostAction(_Model):
    """Post the event as JSON to groups (unset: the agent's own groups)."""

    type: Literal["post"]
    groups: list[str] | None = None


class PushAction(_Model):
    """A web push alert to users (by name) and roles; title and body are templates."""

    type: Literal["push"]
    to: list[str] = Field(default_factory=list)
    roles: list[Literal["admin", "user", "device"]] = Field(default_factory=list)
    title: str = Field(min_length=1, max_length=200)
    body: str = Field("", max_length=1000)
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"  # RFC 8030 section 5.3
    ttl_seconds: int = Field(86400, ge=0, le=_MAX_TTL)
    # A newer alert with the same topic replaces an unread older one (RFC 8030 section 5.4).
    topic: str | None = Field(None, pattern=_TOPIC)

    @field_validator("title", "body")
    @classmethod
    def _template(cls, value: str) -> str:
        template_names(value)
        return value

    @model_validator(mode="after")
    def _recipients(self) -> PushAction:
        if not self.to and not self.roles:
            raise ValueError("a push action needs recipients: to = [names] and/or roles = [...]")
        return self


class SnapshotAction(_Model):
    """Take a camera snapshot, store it on the hub, and link it from the alert and post."""

    type: Literal["snapshot"]


class CallAction(_Model):
    """Ask for a call: alerts open the viewer ready to call this device, urgently."""

    type: Literal["call"]
    # A call alert is stale soon: it is not delivered after this long.
    ttl_seconds: int = Field(120, ge=0, le=3600)


Action = Annotated[
    PostAction | PushAction | SnapshotAction | CallAction,
    Field(discriminator="type"),
]

# -- the rule ----------------------------------------------------------------------------------


class EventRule(_Model):
    """One rule: when ``trigger`` fires and every condition holds, run ``actions``."""

    name: str = Field(pattern=_RULE_NAME)
    trigger: Trigger
    conditions: list[Condition] = Field(default_factory=list)
    actions: list[Action] = Field(min_length=1)
    # At most one firing per this many seconds; "30s", "5m" and "1h" read too.
    cooldown: float = Field(0.0, ge=0)
    enabled: bool = True

    @field_validator("cooldown", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_duration(value)
        return value

    @model_validator(mode="after")
    def _single_actions(self) -> EventRule:
        for kind in ("snapshot", "call"):
            if sum(action.type == kind for action in self.actions) > 1:
                raise ValueError(f"rule {self.name!r} has more than one {kind} action")
        return self

    @property
    def kind(self) -> TriggerKind:
        """The trigger's type."""
        return TriggerKind(self.trigger.type)


def trigger_template_names(trigger: Trigger) -> frozenset[str]:
    """Names an event of ``trigger`` offers to templates besides the base names."""
    names: dict[TriggerKind, frozenset[str]] = {
        TriggerKind.LINE: frozenset({"port", "line"}),
        TriggerKind.THRESHOLD: frozenset({"port", "field", "value", "threshold", "direction"}),
        TriggerKind.DEVICE: frozenset({"kind", "source", "state"}),
        TriggerKind.MOTION: frozenset({"score", "threshold"}),
        TriggerKind.BUTTON: frozenset({"pin"}),
        TriggerKind.MANUAL: frozenset(),
    }
    extra = trigger.groups if isinstance(trigger, LineTrigger) else ()
    return names[TriggerKind(trigger.type)] | frozenset(extra)


def check_rules(rules: Sequence[EventRule], ports: Sequence[SerialPortSettings] = ()) -> None:
    """``ValueError`` naming the rule and key when rules and serial ports do not fit together."""
    by_port = {port.name: port for port in ports}
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        where = f"events[{index}] ({rule.name!r})"
        if rule.name in seen:
            raise ValueError(f"{where}: another rule has the same name; names are unique")
        seen.add(rule.name)
        _check_trigger(rule.trigger, by_port, where)
        for number, condition in enumerate(rule.conditions):
            if isinstance(condition, FieldCondition):
                key = f"{where}.conditions[{number}]"
                _check_field(condition.port, condition.field, by_port, key)
        _check_templates(rule, by_port, where)


def _check_trigger(trigger: Trigger, by_port: dict[str, SerialPortSettings], where: str) -> None:
    if isinstance(trigger, LineTrigger) and trigger.port is not None:
        _known_port(trigger.port, by_port, f"{where}.trigger.port")
    elif isinstance(trigger, ThresholdTrigger):
        _check_field(trigger.port, trigger.field, by_port, f"{where}.trigger")
    elif isinstance(trigger, DeviceTrigger) and trigger.kind is DeviceKind.SERIAL and trigger.name:
        _known_port(trigger.name, by_port, f"{where}.trigger.name")


def _check_field(port: str, field: str, by_port: dict[str, SerialPortSettings], where: str) -> None:
    settings = _known_port(port, by_port, f"{where}.port")
    fields = _port_fields(settings)
    if fields is not None and field not in fields:
        offered = ", ".join(sorted(fields)) or "none (set a parse regex with named groups)"
        raise ValueError(
            f"{where}.field: serial port {port!r} has no field {field!r}; its fields: {offered}"
        )


def _check_templates(rule: EventRule, by_port: dict[str, SerialPortSettings], where: str) -> None:
    allowed = _allowed_names(rule.trigger, by_port)
    for number, action in enumerate(rule.actions):
        if not isinstance(action, PushAction):
            continue
        for key in ("title", "body"):
            template = getattr(action, key)
            unknown = [
                name
                for name in template_names(template)
                if allowed is not None and name not in allowed
            ]
            if unknown:
                raise ValueError(
                    f"{where}.actions[{number}].{key}: {{{unknown[0]}}} is not a value of "
                    f"this event; it has {', '.join(sorted(allowed or ()))}"
                )


def _allowed_names(
    trigger: Trigger, by_port: dict[str, SerialPortSettings]
) -> frozenset[str] | None:
    """Template names an event of ``trigger`` has, or ``None`` when they cannot be known."""
    names = BASE_TEMPLATE_NAMES | trigger_template_names(trigger)
    if not isinstance(trigger, LineTrigger | ThresholdTrigger):
        return names
    ports = [by_port[trigger.port]] if trigger.port in by_port else list(by_port.values())
    for settings in ports:
        fields = _port_fields(settings)
        if fields is None:
            return None  # JSON readings carry whatever fields the device sends
        names |= fields
    return names


def _port_fields(settings: SerialPortSettings) -> frozenset[str] | None:
    if settings.framing is Framing.JSON:
        return None
    if settings.framing is Framing.NMEA:
        return frozenset({"talker", "sentence", "values"})
    return frozenset(settings.parse_groups)


def _known_port(
    name: str, by_port: dict[str, SerialPortSettings], where: str
) -> SerialPortSettings:
    if name not in by_port:
        known = ", ".join(repr(port) for port in by_port) or "none"
        raise ValueError(f"{where}: no [[serial]] port is named {name!r} (configured: {known})")
    return by_port[name]
