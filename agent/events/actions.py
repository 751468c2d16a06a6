"""What a fired event does: its posts and alerts committed, its snapshot taken, its call readied.

The engine (:mod:`agent.events.engine`) decides that a rule fires and builds the
:class:`Event`; an :class:`ActionRun` then carries out the rule's actions through the
injected callables (:class:`ActionHandlers`): the durable alert outbox and post queue plug
in there. Each action fails alone: a failure is logged and counted, and the others run.

"Fired" means durable: the event's posts and alerts are committed first, side by side,
and the run resolves its ``committed`` future (what ``edge-agent trigger`` waits for) only
once they are. A snapshot is slow (a camera to open, an upload), so with handlers that can
hold (``ActionHandlers.holds``) the posts and alerts are committed held, the picture is
taken after, and its link is filled in when they are released (within ``HOLD_SECONDS``;
without a picture they go as they are). With plain handlers the snapshot is taken first
and the link goes into what is committed after it. The call action runs last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from agent.errors import ConfigError
from agent.events.settings import CallAction, EventRule, PostAction, PushAction, TriggerKind
from agent.events.templates import render

__all__ = [
    "ACTION_TIMEOUT",
    "HOLD_SECONDS",
    "ActionHandlers",
    "ActionRun",
    "Alert",
    "Event",
    "Held",
    "PostFn",
    "PushFn",
    "check_handlers",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# One action that hangs (a hub that accepts and never answers) must not pile up tasks.
ACTION_TIMEOUT: Final = 30.0
# Posts and alerts held for a snapshot wait this long for its link at most.
HOLD_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Event:
    """An event that fired: what groups receive, and what alerts are built from."""

    name: str
    device: str
    time: float
    trigger: TriggerKind
    details: Mapping[str, Any]
    readings: Mapping[str, Mapping[str, Any]]
    snapshot: str | None = None
    call: bool = False
    at: str = ""  # when it happened, ISO 8601 with the local offset (for people to read)

    def as_json(self) -> dict[str, Any]:
        """The event as posted to groups."""
        return {
            "type": "event",
            "name": self.name,
            "device": self.device,
            "time": self.time,
            "at": self.at,
            "trigger": self.trigger.value,
            "details": dict(self.details),
            "readings": {port: dict(reading) for port, reading in self.readings.items()},
            "snapshot": self.snapshot,
            "call": self.call,
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A push alert: a small ``payload`` for the phone, delivery options for the sender."""

    event: str
    device: str
    time: float
    title: str
    body: str
    users: tuple[str, ...]
    roles: tuple[str, ...]
    urgency: str
    ttl_seconds: int
    topic: str | None = None
    snapshot: str | None = None
    call: bool = False

    def payload(self) -> dict[str, Any]:
        """What the phone receives (RFC 8291 caps a push message near 4 KB: keep it small)."""
        return {
            "title": self.title,
            "body": self.body,
            "device": self.device,
            "event": self.event,
            "time": self.time,
            "snapshot": self.snapshot,
            "call": self.call,
        }

    def as_json(self) -> dict[str, Any]:
        """Everything, for a durable outbox to store and send later."""
        return dataclasses.asdict(self) | {"users": list(self.users), "roles": list(self.roles)}


class Held(Protocol):
    """A post or alert committed held, waiting for the snapshot's link."""

    async def release(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (``{"snapshot": link}``) and let it be sent."""
        ...


# post(group, event JSON) and push(alert) commit; with ``holds`` they also take
# ``hold_seconds=`` and then return a ``Held``.
PostFn = Callable[..., Awaitable[Any]]
PushFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class ActionHandlers:
    """The callables actions use; a rule whose action has no handler is refused at load."""

    post: PostFn | None = None  # post(group, event JSON): commit a group post
    push: PushFn | None = None  # push(alert): commit an alert to the outbox
    snapshot: Callable[[Event], Awaitable[str | None]] | None = None  # -> link to the image
    call: Callable[[Event], Awaitable[None]] | None = None  # get ready to be called
    holds: bool = False  # post and push take hold_seconds= and return a Held


def check_handlers(
    rules: Sequence[EventRule], actions: ActionHandlers, groups: Sequence[str]
) -> None:
    """Refuse (``ConfigError`` naming the action) a rule whose action nothing can carry out."""
    needs = {
        "post": ("post", "posting to groups (the hub connection)"),
        "push": ("push", "web push alerts"),
        "snapshot": ("snapshot", "camera snapshots"),
        "call": ("call", "calls"),
    }
    for index, rule in enumerate(rules):
        for number, action in enumerate(rule.actions):
            handler, what = needs[action.type]
            key = f"events[{index}].actions[{number}]"
            if getattr(actions, handler) is None:
                raise ConfigError(
                    f"rule {rule.name!r} has a {action.type} action, but this agent does not "
                    f"offer {what}",
                    key=key,
                )
            if isinstance(action, PostAction) and not (action.groups or groups):
                raise ConfigError(
                    f"rule {rule.name!r} posts to groups, but neither the action nor the "
                    "agent names any",
                    key=key,
                )


@dataclass(frozen=True)
class ActionRun:
    """The actions of one fired event, in the order that keeps "fired" durable."""

    handlers: ActionHandlers
    rule: EventRule
    groups: tuple[str, ...]  # the agent's groups: where a post that names none goes
    values: Mapping[str, Any]  # what the alert templates may name
    on_failure: Callable[[], None]  # one action failed (it is logged here)

    async def __call__(self, event: Event, committed: asyncio.Future[list[str]]) -> None:
        """Run every action; ``committed`` gets the labels of posts and alerts not stored."""
        handlers = self.handlers
        call = next((a for a in self.rule.actions if isinstance(a, CallAction)), None)
        event = dataclasses.replace(event, call=call is not None)
        wants = any(a.type == "snapshot" for a in self.rule.actions)
        take = handlers.snapshot if wants else None
        hold = take is not None and handlers.holds
        try:
            if take is not None and not hold:
                link = await self._guarded("snapshot", take(event))
                event = dataclasses.replace(event, snapshot=_value(link))
            outcomes = await self._commit(call, event, hold=hold)
        except BaseException:
            committed.set_result(["posts and alerts"])  # cancelled: nothing was stored
            raise
        committed.set_result([label for label, result in outcomes if result is _FAILED])
        if take is not None and hold:
            await self._release(take, event, [result for _label, result in outcomes])
        if call is not None and handlers.call is not None:
            await self._guarded("call", handlers.call(event))

    async def _commit(
        self, call: CallAction | None, event: Event, *, hold: bool
    ) -> list[tuple[str, Any]]:
        """Commit every post and alert of the event side by side; (label, result) each."""
        extra = {"hold_seconds": HOLD_SECONDS} if hold else {}
        labels, tasks = [], []
        async with asyncio.TaskGroup() as group:
            for label, action in self._durable_calls(call, event, extra):
                labels.append(label)
                tasks.append(group.create_task(self._guarded(label, action)))
        return [(label, task.result()) for label, task in zip(labels, tasks, strict=True)]

    async def _release(
        self, take: Callable[[Event], Awaitable[str | None]], event: Event, held: list[Any]
    ) -> None:
        """Take the snapshot, then let the held posts and alerts go with its link."""
        link = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_SECONDS):
                link = _value(await self._guarded("snapshot", take(event)))
        for item in held:
            if item is not None and item is not _FAILED:
                await self._guarded("release", item.release({"snapshot": link}))

    def _durable_calls(
        self, call: CallAction | None, event: Event, extra: dict[str, Any]
    ) -> list[tuple[str, Awaitable[Any]]]:
        """(label, awaitable) for every post and push the rule's actions make."""
        handlers, calls = self.handlers, []
        for action in self.rule.actions:
            if isinstance(action, PostAction) and handlers.post is not None:
                payload = event.as_json()
                for target in action.groups or self.groups:
                    calls.append((f"post to {target!r}", handlers.post(target, payload, **extra)))
            elif isinstance(action, PushAction) and handlers.push is not None:
                alert = _alert(action, call, event, self.values)
                calls.append(("push", handlers.push(alert, **extra)))
        return calls

    async def _guarded(self, what: str, action: Awaitable[_T]) -> _T | object:
        """The action's result, or ``_FAILED`` (logged and counted) when it failed."""
        try:
            async with asyncio.timeout(ACTION_TIMEOUT):
                return await action
        except Exception:  # each action fails alone; the others still run
            self.on_failure()
            log.exception("event %r: the %s action failed", self.rule.name, what)
            return _FAILED


class _Failed:
    """The result of an action that failed (``None`` is a valid result)."""

    def __repr__(self) -> str:
        return "<failed>"


_FAILED: Final = _Failed()


def _value(result: object) -> Any:
    return None if result is _FAILED else result


def _alert(
    action: PushAction, call: CallAction | None, event: Event, values: Mapping[str, Any]
) -> Alert:
    return Alert(
        event=event.name,
        device=event.device,
        time=event.time,
        title=render(action.title, values),
        body=render(action.body, values),
        users=tuple(action.to),
        roles=tuple(action.roles),
        # A call waits for nobody: deliver it now (RFC 8030 5.3) or not at all.
        urgency="high" if call else action.urgency,
        ttl_seconds=min(action.ttl_seconds, call.ttl_seconds) if call else action.ttl_seconds,
        topic=action.topic,
        snapshot=event.snapshot,
        call=event.call,
    )
