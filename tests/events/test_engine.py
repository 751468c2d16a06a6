"""The events engine: each trigger fires its actions once per cooldown; events and alerts."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.events import (
    ActionHandlers,
    Alert,
    Event,
    EventEngine,
    EventRule,
    FireOutcome,
    UnknownRuleError,
)
from agent.sensors import Reading, SerialPortSettings

START = datetime.datetime(2024, 5, 3, 12, 0, 0, tzinfo=datetime.UTC)
ENV = SerialPortSettings(name="env", port="/dev/null", parse=r"T=(?P<temp>\S+)")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime.datetime:
        return START + datetime.timedelta(seconds=self.seconds - 1000.0)

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


class Recorder:
    """Action handlers that record what they were given."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.alerts: list[Alert] = []
        self.calls: list[Event] = []
        self.snapshots: list[Event] = []

    def handlers(self, **replace: Any) -> ActionHandlers:
        async def post(group: str, payload: dict[str, Any]) -> None:
            self.posts.append((group, payload))

        async def push(alert: Alert) -> None:
            self.alerts.append(alert)

        async def snapshot(event: Event) -> str | None:
            self.snapshots.append(event)
            return f"https://hub.example/snapshots/{event.name}.jpg"

        async def call(event: Event) -> None:
            self.calls.append(event)

        handlers = {"post": post, "push": push, "snapshot": snapshot, "call": call}
        return ActionHandlers(**{**handlers, **replace})


def rule(trigger: dict[str, Any], **more: Any) -> EventRule:
    data = {"name": "r", "trigger": trigger, "actions": [{"type": "post"}], **more}
    return EventRule.model_validate(data)


def engine_for(
    rules: list[EventRule], recorder: Recorder, clock: FakeClock, **options: Any
) -> EventEngine:
    options.setdefault("actions", recorder.handlers())
    return EventEngine(
        rules, device="porch", groups=["family"], serial=[ENV], clock=clock, **options
    )


def line(text: str, port: str = "env", **fields: Any) -> Reading:
    return Reading(port, 1.0, fields=fields or None, line=text)


# --- one firing per cooldown, for every trigger type ------------------------------------------


def fire_line(engine: EventEngine) -> None:
    engine.on_reading(line("DING"))


def fire_threshold(engine: EventEngine) -> None:
    engine.on_reading(line("T=20", temp=20))  # back below: re-armed
    engine.on_reading(line("T=35", temp=35))


def fire_device(engine: EventEngine) -> None:
    engine.on_device("camera", "cam0", True)
    engine.on_device("camera", "cam0", False)


def fire_motion(engine: EventEngine) -> None:
    engine.on_motion(0.02)  # under the threshold: nothing
    engine.on_motion(0.4)


def fire_button(engine: EventEngine) -> None:
    engine.on_button(18)  # another pin: nothing
    engine.on_button(17)


def fire_manual(engine: EventEngine) -> None:
    engine.trigger("r")


TRIGGERS: dict[str, tuple[dict[str, Any], Callable[[EventEngine], None]]] = {
    "line": ({"type": "line", "port": "env", "match": "DING"}, fire_line),
    "threshold": (
        {"type": "threshold", "port": "env", "field": "temp", "above": 30, "hysteresis": 2},
        fire_threshold,
    ),
    "device": ({"type": "device", "kind": "camera"}, fire_device),
    "motion": ({"type": "motion", "threshold": 0.1}, fire_motion),
    "button": ({"type": "button", "pin": 17}, fire_button),
    "manual": ({"type": "manual"}, fire_manual),
}


@pytest.mark.parametrize("kind", list(TRIGGERS))
async def test_each_trigger_fires_once_per_cooldown(kind: str) -> None:
    trigger, fire = TRIGGERS[kind]
    recorder, clock = Recorder(), FakeClock()
    engine = engine_for([rule(trigger, cooldown=60)], recorder, clock)
    fire(engine)
    await engine.drain()
    assert len(recorder.posts) == 1
    fire(engine)  # within the cooldown
    clock.advance(59)
    fire(engine)
    await engine.drain()
    assert len(recorder.posts) == 1
    clock.advance(1)  # the cooldown has passed
    fire(engine)
    await engine.drain()
    assert len(recorder.posts) == 2
    status = engine.status()["r"]
    assert (status["trigger"], status["fired"], status["cooldown"]) == (kind, 2, 2)
    assert status["cooldown_left"] == 60.0
    group, payload = recorder.posts[0]
    assert group == "family"
    assert (payload["type"], payload["name"], payload["device"], payload["trigger"]) == (
        "event",
        "r",
        "porch",
        kind,
    )
    assert payload["time"] == START.timestamp()


async def test_event_carries_latest_readings_and_trigger_details() -> None:
    recorder, clock = Recorder(), FakeClock()
    trigger = {"type": "threshold", "port": "env", "field": "temp", "above": 30}
    engine = engine_for([rule(trigger)], recorder, clock)
    engine.on_reading(Reading("env", 5.0, fields={"temp": 31}, line="T=31"))
    await engine.drain()
    ((_, payload),) = recorder.posts
    assert payload["readings"] == {"env": {"port": "env", "ts": 5.0, "fields": {"temp": 31}}}
    assert payload["details"] == {
        "port": "env",
        "field": "temp",
        "value": 31.0,
        "threshold": 30.0,
        "direction": "above",
    }
    assert payload["snapshot"] is None
    assert payload["call"] is False


async def test_snapshot_push_and_call_make_one_alert() -> None:
    recorder, clock = Recorder(), FakeClock()
    doorbell = rule(
        {"type": "line", "port": "env", "match": r"RING (?P<times>\d+)"},
        name="doorbell",
        actions=[
            {"type": "post", "groups": ["family", "ops"]},
            {
                "type": "push",
                "to": ["alice"],
                "roles": ["admin"],
                "title": "{device}: doorbell ({times}x)",
                "body": "{name} at {time} on {port}: {line}",
                "topic": "doorbell",
            },
            {"type": "snapshot"},
            {"type": "call", "ttl_seconds": 60},
        ],
    )
    engine = engine_for([doorbell], recorder, clock)
    engine.on_reading(line("RING 2"))
    await engine.drain()
    (alert,) = recorder.alerts
    link = "https://hub.example/snapshots/doorbell.jpg"
    assert alert.title == "porch: doorbell (2x)"
    assert alert.body == "doorbell at 2024-05-03 12:00:00 on env: RING 2"
    assert (alert.users, alert.roles, alert.topic) == (("alice",), ("admin",), "doorbell")
    assert (alert.urgency, alert.ttl_seconds, alert.call, alert.snapshot) == (
        "high",
        60,
        True,
        link,
    )
    assert alert.payload() == {
        "title": "porch: doorbell (2x)",
        "body": "doorbell at 2024-05-03 12:00:00 on env: RING 2",
        "device": "porch",
        "event": "doorbell",
        "time": START.timestamp(),
        "snapshot": link,
        "call": True,
    }
    assert alert.as_json()["users"] == ["alice"]
    assert sorted(group for group, _ in recorder.posts) == ["family", "ops"]
    assert all(payload["snapshot"] == link and payload["call"] for _, payload in recorder.posts)
    (called,) = recorder.calls
    assert called.snapshot == link
    assert len(recorder.snapshots) == 1


async def test_push_without_call_keeps_its_own_delivery_options() -> None:
    recorder, clock = Recorder(), FakeClock()
    engine = engine_for(
        [
            rule(
                {"type": "manual"},
                actions=[{"type": "push", "roles": ["user"], "title": "t", "ttl_seconds": 600}],
            )
        ],
        recorder,
        clock,
    )
    engine.trigger("r")
    await engine.drain()
    (alert,) = recorder.alerts
    assert (alert.urgency, alert.ttl_seconds, alert.call, alert.snapshot) == (
        "normal",
        600,
        False,
        None,
    )


async def test_a_failing_action_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder, clock = Recorder(), FakeClock()

    async def broken_post(group: str, payload: dict[str, Any]) -> None:
        raise ConnectionError("hub down")

    async def broken_snapshot(event: Event) -> str | None:
        raise OSError("no camera")

    engine = engine_for(
        [
            rule(
                {"type": "manual"},
                actions=[
                    {"type": "snapshot"},
                    {"type": "post"},
                    {"type": "push", "to": ["bob"], "title": "t"},
                ],
            )
        ],
        recorder,
        clock,
        actions=recorder.handlers(post=broken_post, snapshot=broken_snapshot),
    )
    assert engine.trigger("r") is FireOutcome.FIRED
    await engine.drain()
    assert len(recorder.alerts) == 1
    assert recorder.alerts[0].snapshot is None
    assert engine.status()["r"]["action_errors"] == 2
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "the post to 'family' action failed" in logged
    assert "the snapshot action failed" in logged


async def test_conditions_gate_firing_and_do_not_start_the_cooldown() -> None:
    recorder, clock = Recorder(), FakeClock()
    night = rule(
        {"type": "manual"},
        cooldown=60,
        conditions=[
            {"type": "time", "after": "22:00", "before": "06:00"},
            {"type": "field", "port": "env", "field": "temp", "op": ">", "value": 0},
        ],
    )
    engine = engine_for([night], recorder, clock)
    assert engine.trigger("r") is FireOutcome.CONDITIONS  # noon
    clock.advance(11 * 3600)  # 23:00
    assert engine.trigger("r") is FireOutcome.CONDITIONS  # no temperature reading yet
    engine.on_reading(line("T=5", temp=5))
    assert engine.trigger("r") is FireOutcome.FIRED
    assert engine.trigger("r") is FireOutcome.COOLDOWN
    await engine.drain()
    assert len(recorder.posts) == 1
    assert engine.status()["r"]["conditions"] == 2


async def test_disabled_rules_do_not_fire() -> None:
    recorder, clock = Recorder(), FakeClock()
    engine = engine_for([rule({"type": "manual"}, enabled=False)], recorder, clock)
    assert engine.trigger("r") is FireOutcome.DISABLED
    await engine.drain()
    assert recorder.posts == []


async def test_serial_port_outage_fires_device_rules() -> None:
    recorder, clock = Recorder(), FakeClock()
    engine = engine_for(
        [rule({"type": "device", "kind": "serial", "name": "env", "when": "change"})],
        recorder,
        clock,
    )
    engine.on_device("serial", "env", True)
    engine.on_device("serial", "env", False)
    clock.advance(1)
    engine.on_device("serial", "env", True)
    engine.on_device("toaster", "t1", False)  # not a kind of device: ignored
    await engine.drain()
    states = [payload["details"]["state"] for _, payload in recorder.posts]
    assert states == ["gone", "back"]


async def test_manual_trigger_of_an_unknown_rule() -> None:
    recorder, clock = Recorder(), FakeClock()
    engine = engine_for(
        [
            rule({"type": "manual"}, name="bell"),
            rule({"type": "motion"}, name="move"),
        ],
        recorder,
        clock,
    )
    assert engine.manual_rules() == ["bell"]
    for name in ["nope", "move"]:
        with pytest.raises(
            UnknownRuleError, match=r"no manual rule named .* \(manual rules: 'bell'\)"
        ):
            engine.trigger(name)


def test_actions_without_handlers_are_refused_at_load() -> None:
    recorder, clock = Recorder(), FakeClock()
    push = rule({"type": "manual"}, actions=[{"type": "push", "to": ["a"], "title": "t"}])
    with pytest.raises(ConfigError, match="has a push action, but this agent does not offer"):
        engine_for([push], recorder, clock, actions=recorder.handlers(push=None))
    with pytest.raises(ConfigError, match="neither the action nor the agent names any"):
        EventEngine([rule({"type": "manual"})], device="d", actions=recorder.handlers())


def test_rules_that_do_not_fit_the_ports_are_refused_at_load() -> None:
    recorder, clock = Recorder(), FakeClock()
    bad = rule(
        {"type": "manual"},
        actions=[{"type": "push", "to": ["a"], "title": "{temp}"}],
    )
    with pytest.raises(ConfigError, match=r"\{temp\} is not a value of this event") as info:
        engine_for([bad], recorder, clock)
    assert info.value.key == "events"


async def test_motion_analyzer_feeds_motion_rules() -> None:
    recorder, clock = Recorder(), FakeClock()
    corner = [0.0, 0.0, 0.5, 0.5]
    engine = engine_for(
        [
            rule({"type": "motion", "threshold": 0.2, "interval_seconds": 2}, name="any"),
            rule({"type": "motion", "threshold": 0.2, "region": corner}, name="corner"),
        ],
        recorder,
        clock,
    )
    analyzer = engine.motion_analyzer()
    assert analyzer is not None
    width, height = 8, 8
    analyzer.feed_gray(bytes(width * height), width, height)
    clock.advance(1)
    # The bottom-right quarter changes: a quarter of the frame, none of the top-left corner.
    moved = bytes(255 if x >= 4 and y >= 4 else 0 for y in range(height) for x in range(width))
    assert analyzer.feed_gray(moved, width, height)
    await engine.drain()
    assert [payload["name"] for _, payload in recorder.posts] == ["any"]
    assert engine_for([rule({"type": "manual"})], recorder, clock).motion_analyzer() is None


async def test_aclose_waits_for_running_actions_then_cancels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder, clock = Recorder(), FakeClock()
    started, never = asyncio.Event(), asyncio.Event()

    async def stuck_post(group: str, payload: dict[str, Any]) -> None:
        started.set()
        await never.wait()

    monkeypatch.setattr("agent.events.engine.DRAIN_TIMEOUT", 0.05)
    engine = engine_for(
        [rule({"type": "manual"})], recorder, clock, actions=recorder.handlers(post=stuck_post)
    )
    async with engine:
        engine.trigger("r")
        await asyncio.wait_for(started.wait(), 10)
    assert engine.status()["r"]["fired"] == 1
    await engine.drain()  # nothing left running


async def test_control_handler_answers() -> None:
    recorder, clock = Recorder(), FakeClock()
    engine = engine_for([rule({"type": "manual"}, name="bell", cooldown=10)], recorder, clock)
    trigger = engine.control_handlers()["trigger"]
    assert await trigger({"op": "trigger", "name": "bell"}) == {
        "ok": True,
        "outcome": "fired",
        "message": "event 'bell' fired",
    }
    answer = await trigger({"op": "trigger", "name": "bell"})
    assert (answer["outcome"], answer["message"]) == (
        "cooldown",
        "event 'bell' not fired: it fired recently (cooldown)",
    )
    assert (await trigger({"op": "trigger", "name": "x"}))["error"].startswith(
        "no manual rule named 'x'"
    )
    assert "needs a rule name" in (await trigger({"op": "trigger"}))["error"]
    await engine.drain()


# --- "fired" means committed -----------------------------------------------------------------


class HoldingRecorder(Recorder):
    """Durable handlers that can hold: each commit is recorded with what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.committed: list[tuple[str, dict[str, Any], float | None]] = []
        self.released: list[tuple[str, dict[str, Any]]] = []
        self.snapshot_gate = asyncio.Event()

    def holding(self) -> ActionHandlers:
        recorder = self

        class Held:
            def __init__(self, what: str) -> None:
                self.what = what

            async def release(self, changes: Any) -> None:
                recorder.released.append((self.what, dict(changes)))

        async def post(group: str, payload: dict[str, Any], **hold: float) -> Held | None:
            self.committed.append((f"post {group}", payload, hold.get("hold_seconds")))
            return Held(f"post {group}") if hold else None

        async def push(alert: Alert, **hold: float) -> Held | None:
            self.committed.append(("push", alert.as_json(), hold.get("hold_seconds")))
            return Held("push") if hold else None

        async def snapshot(event: Event) -> str | None:
            await self.snapshot_gate.wait()  # a slow camera
            return "/api/snapshots/abc"

        return ActionHandlers(post=post, push=push, snapshot=snapshot, holds=True)


def doorbell(*actions: dict[str, Any]) -> EventRule:
    push = {"type": "push", "to": ["alice"], "title": "Ring", "body": "at {time}"}
    return rule(
        {"type": "manual"}, name="bell", actions=[{"type": "post"}, push, *actions], cooldown=60
    )


async def test_fire_answers_once_posts_and_alerts_are_committed_not_before() -> None:
    recorder, clock = Recorder(), FakeClock()
    gate = asyncio.Event()

    async def slow_push(alert: Alert) -> None:
        await gate.wait()  # the disk is slow
        recorder.alerts.append(alert)

    engine = engine_for([doorbell()], recorder, clock, actions=recorder.handlers(push=slow_push))
    fired = asyncio.create_task(engine.fire("bell"))
    await asyncio.sleep(0.05)
    assert not fired.done()  # not answered while the alert is not stored
    gate.set()
    assert await fired == (FireOutcome.FIRED, [])
    assert len(recorder.alerts) == 1
    assert [group for group, _ in recorder.posts] == ["family"]
    assert await engine.fire("bell") == (FireOutcome.COOLDOWN, [])
    await engine.drain()


async def test_a_failed_commit_is_reported_by_the_control_answer() -> None:
    recorder, clock = Recorder(), FakeClock()

    async def full_disk(alert: Alert) -> None:
        raise OSError(28, "No space left on device")

    engine = engine_for([doorbell()], recorder, clock, actions=recorder.handlers(push=full_disk))
    answer = await engine.control_handlers()["trigger"]({"name": "bell"})
    assert answer == {
        "ok": False,
        "outcome": "fired",
        "error": "event 'bell' fired, but its push could not be stored; see the agent's log",
    }
    await engine.drain()


async def test_with_holding_handlers_a_snapshot_does_not_delay_the_commit() -> None:
    recorder, clock = HoldingRecorder(), FakeClock()
    engine = engine_for(
        [doorbell({"type": "snapshot"})], recorder, clock, actions=recorder.holding()
    )
    # Answered while the camera is still busy: committed held, link to follow.
    assert await engine.fire("bell") == (FireOutcome.FIRED, [])
    assert [(what, hold) for what, _payload, hold in recorder.committed] == [
        ("post family", 10.0),
        ("push", 10.0),
    ]
    post = recorder.committed[0][1]
    assert post["snapshot"] is None
    assert post["at"] == "2024-05-03T12:00:00.000+00:00"  # when it happened, for people
    assert recorder.released == []
    recorder.snapshot_gate.set()
    await engine.drain()
    assert sorted(recorder.released) == [
        ("post family", {"snapshot": "/api/snapshots/abc"}),
        ("push", {"snapshot": "/api/snapshots/abc"}),
    ]


async def test_without_a_snapshot_nothing_is_held() -> None:
    recorder, clock = HoldingRecorder(), FakeClock()
    engine = engine_for([doorbell()], recorder, clock, actions=recorder.holding())
    assert await engine.fire("bell") == (FireOutcome.FIRED, [])
    await engine.drain()
    assert [hold for _what, _payload, hold in recorder.committed] == [None, None]
    assert recorder.released == []


async def test_a_snapshot_that_never_comes_releases_without_a_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("agent.events.actions.HOLD_SECONDS", 0.05)
    recorder, clock = HoldingRecorder(), FakeClock()
    engine = engine_for(
        [doorbell({"type": "snapshot"})], recorder, clock, actions=recorder.holding()
    )
    await engine.fire("bell")
    await engine.drain()
    assert sorted(recorder.released) == [
        ("post family", {"snapshot": None}),
        ("push", {"snapshot": None}),
    ]
