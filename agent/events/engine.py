"""The events engine: inputs in (readings, device changes, motion, buttons, names), actions out.

Inputs are plain synchronous calls that never raise, so any part of the agent can feed them:

* ``on_reading(reading)``: every serial reading (``SensorHub.add_listener``);
* ``on_device(kind, name, present)``: cameras, microphones and serial ports appearing and
  disappearing (``SensorHub(on_presence=...)`` for ports; media for the rest);
* ``on_motion(score, region)``: frame-difference scores (``motion_analyzer()`` makes them);
* ``on_button(pin)``: GPIO presses (``start()`` wires gpiozero when rules use buttons);
* ``trigger(name)``: manual rules, e.g. from the control socket (``control_handlers()``).

A hit becomes an event when the rule's conditions hold and its cooldown has passed; the
rule's actions then run as a task (:class:`agent.events.actions.ActionRun`), each failure
logged on its own. Actions are injected callables (``ActionHandlers``): the durable alert
outbox and post queue plug in there. "Fired" means durable: :meth:`EventEngine.fire` (what
``edge-agent trigger`` waits for) returns only once the event's posts and alerts are
committed; :mod:`agent.events.actions` says in which order around a snapshot.

This module keeps the inputs, the decision (enabled, conditions, cooldown), the counters
and the lifecycle; ``Event``, ``Alert`` and ``ActionHandlers`` are re-exported from
:mod:`agent.events.actions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Protocol, Self

from agent.errors import ConfigError
from agent.events.actions import (
    ActionHandlers,
    ActionRun,
    Alert,
    Event,
    check_handlers,
)
from agent.events.conditions import conditions_hold
from agent.events.errors import UnknownRuleError
from agent.events.gpio import GpioButtons
from agent.events.motion import MotionAnalyzer
from agent.events.settings import (
    ButtonTrigger,
    DeviceKind,
    DeviceTrigger,
    EventRule,
    LineTrigger,
    ManualTrigger,
    MotionTrigger,
    Region,
    ThresholdTrigger,
    check_rules,
)
from agent.events.triggers import (
    DeviceMatcher,
    Hit,
    LineMatcher,
    PresenceTracker,
    ThresholdMatcher,
    match_motion,
)
from agent.sensors.framing import Reading
from agent.sensors.settings import SerialPortSettings

__all__ = [
    "ActionHandlers",
    "Alert",
    "Clock",
    "Event",
    "EventEngine",
    "FireOutcome",
    "RuleCounters",
    "SystemClock",
    "UnknownRuleError",
]

log = logging.getLogger(__name__)

# On shutdown, running actions get this long to finish before they are cancelled.
DRAIN_TIMEOUT: Final = 5.0


class Clock(Protocol):
    """Time for the engine: monotonic seconds for cooldowns, local wall time for events."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def now(self) -> datetime.datetime:
        """The local time, timezone-aware."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def now(self) -> datetime.datetime:
        """The local time, aware of its timezone."""
        return datetime.datetime.now().astimezone()


class FireOutcome(enum.StrEnum):
    """What became of a trigger that fired."""

    FIRED = "fired"
    COOLDOWN = "cooldown"  # fired within the cooldown of the last event: dropped
    CONDITIONS = "conditions"  # a condition did not hold
    DISABLED = "disabled"  # the rule has enabled = false


@dataclass
class RuleCounters:
    """What one rule has done since start."""

    fired: int = 0
    cooldown: int = 0
    conditions: int = 0
    disabled: int = 0
    action_errors: int = 0

    def count(self, outcome: FireOutcome) -> None:
        """Count one outcome."""
        name = outcome.value
        setattr(self, name, getattr(self, name) + 1)

    def count_failure(self) -> None:
        """Count one action that failed."""
        self.action_errors += 1


@dataclass
class _Rule:
    rule: EventRule
    counters: RuleCounters = field(default_factory=RuleCounters)
    last_fired: float | None = None


class EventEngine:
    """Runs the ``[[events]]`` rules of one agent."""

    def __init__(
        self,
        rules: Sequence[EventRule],
        *,
        device: str,
        actions: ActionHandlers,
        groups: Sequence[str] = (),
        serial: Sequence[SerialPortSettings] = (),
        clock: Clock | None = None,
        pin_factory: Any = None,
    ) -> None:
        try:
            check_rules(rules, serial)
        except ValueError as exc:
            raise ConfigError(str(exc), key="events") from None
        check_handlers(rules, actions, groups)
        self.device = device
        self._actions = actions
        self._groups = tuple(groups)
        self._clock: Clock = clock or SystemClock()
        self._pin_factory = pin_factory
        self._rules = {rule.name: _Rule(rule) for rule in rules}
        self._line = [
            (r, LineMatcher(r.trigger)) for r in rules if isinstance(r.trigger, LineTrigger)
        ]
        self._threshold = [
            (r, ThresholdMatcher(r.trigger))
            for r in rules
            if isinstance(r.trigger, ThresholdTrigger)
        ]
        self._device = [
            (r, DeviceMatcher(r.trigger)) for r in rules if isinstance(r.trigger, DeviceTrigger)
        ]
        self._presence = PresenceTracker()
        self._latest: dict[str, Reading] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._buttons: GpioButtons | None = None

    # -- inputs ----------------------------------------------------------------------------

    def on_reading(self, reading: Reading) -> None:
        """A serial reading: line and threshold triggers."""
        self._latest[reading.port] = reading
        for rule, line in self._line:
            self._maybe_fire(rule, line.match(reading))
        for rule, threshold in self._threshold:
            self._maybe_fire(rule, threshold.match(reading))

    def on_device(self, kind: DeviceKind | str, name: str, present: bool) -> None:
        """A device is present or not; changes fire device triggers."""
        try:
            change = self._presence.update(DeviceKind(kind), name, present)
        except ValueError:
            log.warning("ignored presence of an unknown kind of device %r (%r)", kind, name)
            return
        if change is None:
            return
        for rule, matcher in self._device:
            self._maybe_fire(rule, matcher.match(change))

    def on_motion(self, score: float, region: Region | None = None) -> None:
        """A motion score (0 to 1) for ``region`` (``None``: the whole frame)."""
        for compiled in self._rules.values():
            trigger = compiled.rule.trigger
            if isinstance(trigger, MotionTrigger):
                self._maybe_fire(compiled.rule, match_motion(trigger, score, region))

    def on_button(self, pin: int | str) -> None:
        """A GPIO button press on ``pin``."""
        for compiled in self._rules.values():
            trigger = compiled.rule.trigger
            if isinstance(trigger, ButtonTrigger) and trigger.pin == pin:
                self._maybe_fire(compiled.rule, Hit({"pin": pin}, {"pin": pin}))

    def trigger(self, name: str) -> FireOutcome:
        """Fire the manual rule ``name``; ``UnknownRuleError`` if there is none.

        Returns at once; :meth:`fire` waits until the event's posts and alerts are stored.
        """
        return self._fire(self._manual(name), Hit({}))[0]

    async def fire(self, name: str) -> tuple[FireOutcome, list[str]]:
        """Fire the manual rule ``name`` and wait until its posts and alerts are committed.

        Returns the outcome and the actions that could not be committed (empty when all
        were). Raises ``UnknownRuleError`` if there is no such rule.
        """
        outcome, committed = self._fire(self._manual(name), Hit({}))
        return outcome, ([] if committed is None else await asyncio.shield(committed))

    # -- for the daemon --------------------------------------------------------------------

    def manual_rules(self) -> list[str]:
        """Names ``trigger`` accepts."""
        return [
            name
            for name, compiled in self._rules.items()
            if isinstance(compiled.rule.trigger, ManualTrigger)
        ]

    def motion_analyzer(self) -> MotionAnalyzer | None:
        """An analyzer for the camera frames, when any rule watches motion."""
        triggers = [
            c.rule.trigger
            for c in self._rules.values()
            if isinstance(c.rule.trigger, MotionTrigger)
        ]
        if not triggers:
            return None
        return MotionAnalyzer(
            self.on_motion,
            regions=[trigger.region for trigger in triggers],
            interval_seconds=min(trigger.interval_seconds for trigger in triggers),
            clock=self._clock.monotonic,
        )

    def control_handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        """Operations for the control socket: ``trigger`` (``{"name": ...}``)."""
        return {"trigger": self._control_trigger}

    def status(self) -> dict[str, Any]:
        """Per rule: trigger type, counters, and seconds of cooldown left."""
        now = self._clock.monotonic()
        return {
            name: {
                "trigger": compiled.rule.kind.value,
                "enabled": compiled.rule.enabled,
                "cooldown_left": round(self._cooldown_left(compiled, now), 3),
                **dataclasses.asdict(compiled.counters),
            }
            for name, compiled in self._rules.items()
        }

    async def start(self) -> None:
        """Start the GPIO buttons that rules use (none: nothing to start)."""
        buttons = [
            c.rule.trigger
            for c in self._rules.values()
            if isinstance(c.rule.trigger, ButtonTrigger)
        ]
        if buttons and self._buttons is None:
            self._buttons = GpioButtons(buttons, self.on_button, pin_factory=self._pin_factory)
            self._buttons.start(asyncio.get_running_loop())

    async def drain(self) -> None:
        """Wait until the actions of events fired so far have finished."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the buttons; let running actions finish briefly, then cancel them."""
        if self._buttons is not None:
            self._buttons.close()
            self._buttons = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- firing ----------------------------------------------------------------------------

    def _manual(self, name: str) -> _Rule:
        compiled = self._rules.get(name)
        if compiled is None or not isinstance(compiled.rule.trigger, ManualTrigger):
            raise UnknownRuleError(name, self.manual_rules())
        return compiled

    def _maybe_fire(self, rule: EventRule, hit: Hit | None) -> None:
        if hit is not None:
            self._fire(self._rules[rule.name], hit)

    def _fire(
        self, compiled: _Rule, hit: Hit
    ) -> tuple[FireOutcome, asyncio.Future[list[str]] | None]:
        outcome = self._decide(compiled)
        compiled.counters.count(outcome)
        if outcome is not FireOutcome.FIRED:
            log.debug("event %r not fired: %s", compiled.rule.name, outcome.value)
            return outcome, None
        compiled.last_fired = self._clock.monotonic()
        event, values = self._event(compiled.rule, hit)
        log.info("event %r fired (%s)", event.name, event.trigger.value)
        committed: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        run = ActionRun(
            handlers=self._actions,
            rule=compiled.rule,
            groups=self._groups,
            values=values,
            on_failure=compiled.counters.count_failure,
        )
        self._spawn(run(event, committed), event.name)
        return outcome, committed

    def _decide(self, compiled: _Rule) -> FireOutcome:
        rule = compiled.rule
        if not rule.enabled:
            return FireOutcome.DISABLED
        if not conditions_hold(rule.conditions, now=self._clock.now(), readings=self._latest):
            return FireOutcome.CONDITIONS
        if self._cooldown_left(compiled, self._clock.monotonic()) > 0:
            return FireOutcome.COOLDOWN
        return FireOutcome.FIRED

    def _cooldown_left(self, compiled: _Rule, now: float) -> float:
        if compiled.last_fired is None:
            return 0.0
        return max(0.0, compiled.last_fired + compiled.rule.cooldown - now)

    def _event(self, rule: EventRule, hit: Hit) -> tuple[Event, dict[str, Any]]:
        now = self._clock.now()
        event = Event(
            name=rule.name,
            device=self.device,
            time=now.timestamp(),
            trigger=rule.kind,
            details=dict(hit.details),
            readings={port: reading.as_json() for port, reading in sorted(self._latest.items())},
            at=now.isoformat(timespec="milliseconds"),
        )
        base = {
            "name": rule.name,
            "device": self.device,
            "time": now.strftime("%Y-%m-%d %H:%M:%S"),
            "ts": event.time,
            "trigger": rule.kind.value,
        }
        return event, {**hit.values, **base}

    def _spawn(self, action: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(action, name=f"event:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _control_trigger(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("name")
        if not isinstance(name, str) or not name:
            return {"ok": False, "error": 'trigger needs a rule name: {"name": "..."}'}
        try:
            outcome, failed = await self.fire(name)
        except UnknownRuleError as exc:
            return {"ok": False, "error": exc.message}
        if failed:
            return {
                "ok": False,
                "outcome": outcome.value,
                "error": f"event {name!r} fired, but its {', '.join(failed)} could not be "
                "stored; see the agent's log",
            }
        return {"ok": True, "outcome": outcome.value, "message": _outcome_text(name, outcome)}


def _outcome_text(name: str, outcome: FireOutcome) -> str:
    return {
        FireOutcome.FIRED: f"event {name!r} fired",
        FireOutcome.COOLDOWN: f"event {name!r} not fired: it fired recently (cooldown)",
        FireOutcome.CONDITIONS: f"event {name!r} not fired: its conditions do not hold now",
        FireOutcome.DISABLED: f"event {name!r} not fired: the rule is disabled",
    }[outcome]
