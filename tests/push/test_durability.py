"""Durability: alerts fired while the hub is down, across an agent restart, all arrive once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.client import RealtimeClient
from agent.errors import Codes
from agent.events import ActionHandlers, Alert, EventEngine, EventRule
from agent.hub.accounts import Role
from agent.push.errors import HubRequestError
from agent.push.outbox import OUTBOX_FILE, Outbox
from agent.push.settings import OutboxSettings

from .conftest import push_settings, start_hub
from .loopback import LoopbackPushService, TlsFiles

TIMEOUT = 60.0
EVENTS = 100
# The hub is down for a while: keep retrying fast so the test is quick once it is back.
QUICK = OutboxSettings(retry_initial_seconds=0.02, retry_cap_seconds=0.1, timeout_seconds=5.0)


def ring_rule() -> EventRule:
    return EventRule.model_validate(
        {
            "name": "ring",
            "trigger": {"type": "manual"},
            "actions": [
                {
                    "type": "push",
                    "to": ["alice"],
                    "title": "Ring at {device}",
                    "body": "{name} at {ts}",
                    "urgency": "high",
                }
            ],
            "cooldown": 0,
        }
    )


class Agent:
    """The agent's side as the daemon wires it: events -> outbox -> hub push API."""

    def __init__(self, path: Path, deliver: Callable[[dict[str, Any]], Awaitable[object]]) -> None:
        self.path = path
        self.deliver = deliver
        self.outbox: Outbox | None = None
        self.written: dict[str, Alert] = {}

    async def start(self) -> Outbox:
        self.outbox = Outbox(self.path, deliver=self.deliver, settings=QUICK)
        await self.outbox.start()
        return self.outbox

    async def push(self, alert: Alert) -> None:
        assert self.outbox is not None
        self.written[await self.outbox.add(alert)] = alert


async def test_alerts_survive_a_hub_outage_and_an_agent_restart_and_arrive_once(
    tmp_path: Path, tls: TlsFiles, service: LoopbackPushService
) -> None:
    settings = push_settings(tls)
    hub = await start_hub(tmp_path / "hub", settings)
    port = hub.server.port
    alice, door = hub.user("alice"), hub.user("door", Role.DEVICE)
    service.vapid_public_key = hub.push.public_key
    response = await hub.call(alice, "subscribe", service.subscribe("alice-phone"))
    assert response.status_code == 200
    await hub.stop()  # the hub goes down before anything fires

    client = RealtimeClient(f"ws://127.0.0.1:{port}/ws", token=door.token, request_timeout=5.0)
    lost_answers = 3

    async def deliver(request: dict[str, Any]) -> object:
        # The first answers the hub gives are lost on the way back: the outbox must resend
        # those alerts, and the hub must not push them twice.
        nonlocal lost_answers
        answer = await client.push_alert(request)
        if lost_answers > 0:
            lost_answers -= 1
            raise HubRequestError(Codes.ERROR, "the answer was lost")
        return answer

    agent = Agent(tmp_path / "agent" / OUTBOX_FILE, deliver)
    agent.path.parent.mkdir()
    engine = EventEngine([ring_rule()], device="door", actions=ActionHandlers(push=agent.push))
    first = await agent.start()
    for _ in range(EVENTS // 2):
        engine.trigger("ring")
    await engine.drain()
    assert first.depth == EVENTS // 2
    await first.aclose()  # the agent restarts with 50 alerts on disk
    second = await agent.start()
    for _ in range(EVENTS - EVENTS // 2):
        engine.trigger("ring")
    await engine.drain()
    assert second.depth == EVENTS

    back = await start_hub(tmp_path / "hub", settings, port=port)
    try:
        async with asyncio.timeout(TIMEOUT):
            await second.wait_empty()
        await back.push.drain()
        received = await service.wait_for(EVENTS)
    finally:
        await second.aclose()
        await client.close_realtime()
        await back.stop()
    assert len(received) == EVENTS  # none lost, none twice
    assert back.push.metrics.deduplicated == 3
    by_id = {r.payload["id"]: r.payload for r in received}
    assert set(by_id) == set(agent.written)
    for alert_id, alert in agent.written.items():
        payload = by_id[alert_id]
        assert {k: payload[k] for k in ("title", "body", "device", "event", "time")} == {
            "title": alert.title,
            "body": alert.body,
            "device": alert.device,
            "event": alert.event,
            "time": alert.time,
        }
    assert {r.headers["Urgency"] for r in received} == {"high"}
    assert second.stats().delivered == EVENTS
