"""The wiring connects the agent's parts: what each part publishes reaches the agent's
``/metrics`` and ``edge-agent status``, and events of one part reach another.

Real parts throughout: an in-process agent with its embedded hub on loopback, its metrics
endpoint scraped over HTTP, its control socket asked like the CLI does, a hub client that
watches the posts of its rules, and a camera that is not there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.client import RealtimeClient
from agent.config import Settings
from agent.daemon import Agent
from agent.errors import Codes, RealtimeError
from agent.events.control import control_socket_path, request, send_trigger
from agent.hub.accounts import Role
from agent.messages import MessageType, RealtimeMessage
from agent.systemd import HubLink, Notifier, StatusBoard
from agent.wiring import HubLinkWatch

WAIT = 60.0
GROUP = "yard"


def agent_settings(tmp_path: Path, **more: Any) -> Settings:
    return Settings.model_validate({
        "name": "gate",
        "groups": [GROUP],
        "state_dir": tmp_path / "state",
        "hub": {"host": "127.0.0.1", "port": 0},
        "metrics": {"enabled": False},
        "calls": {"host_addresses": ["127.0.0.1"], "mdns": False},
        "audio": {"enabled": False, "talkback": False},
        **more,
    })  # fmt: skip


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Agent]:
    """A connected agent, stopped (and awaited) on the way out."""
    agent = Agent(settings, notifier=Notifier(None))
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(WAIT):
            await agent.wait_connected()
        yield agent
    finally:
        agent.request_stop()
        async with asyncio.timeout(WAIT):
            await task
    assert agent.failed_part is None


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(WAIT):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 "), head
    return body


async def watcher(agent: Agent) -> tuple[RealtimeClient, asyncio.Queue[RealtimeMessage]]:
    """A user in the agent's group; its queue receives what the group hears."""
    assert agent.hub is not None
    account = await asyncio.to_thread(
        agent.hub.accounts.add, "watcher", None, Role.USER, groups=[GROUP]
    )
    client = RealtimeClient(agent.hub.ws_url, token=agent.hub.tokens.issue(account, 600))
    inbox: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
    await client.connect_realtime(inbox.put_nowait)
    await client.join_realtime(GROUP)
    return client, inbox


async def post_of(inbox: asyncio.Queue[RealtimeMessage], rule: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            message = await inbox.get()
            body = message.message
            if message.type == "message" and isinstance(body, dict) and body.get("name") == rule:
                return body


async def test_every_part_publishes_through_the_agents_metrics_and_status(
    tmp_path: Path,
) -> None:
    settings = agent_settings(
        tmp_path,
        metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
        serial=[{"name": "left", "port": str(tmp_path / "missing-tty")}],
        events=[{"name": "bell", "trigger": {"type": "manual"}, "actions": [{"type": "post"}]}],
    )
    async with running(settings) as agent:
        assert agent.metrics is not None
        socket_path = control_socket_path(tmp_path / "state")
        assert (await asyncio.to_thread(send_trigger, socket_path, "bell"))["ok"] is True
        metrics = await scrape(agent.metrics.port)
        status = await asyncio.to_thread(request, socket_path, {"op": "status"})
        board_text = agent.board.text
    in_order = [
        "edge_agent_hub_connected 1",  # the hub link
        "edge_agent_media_stack_loaded 0",  # the calls part, idle
        "edge_agent_calls_active 0",
        "# TYPE edge_agent_calls_by_route gauge",  # its per-call figures (none yet)
        'edge_agent_sensor_up{port="left"} 0',  # sensing: ports, rules, outbox, posts
        'edge_agent_events_fired_total{rule="bell"} 1',
        "edge_agent_outbox_depth ",
        "edge_agent_posts_queued ",
        "process_resident_memory_bytes ",  # the process
    ]
    found = [metrics.find(text) for text in in_order]
    assert -1 not in found, [t for t, at in zip(in_order, found, strict=True) if at < 0]
    assert found == sorted(found)

    lines = status["lines"]
    assert lines[0] == board_text
    assert lines[0].startswith("hub connected")
    # The port's state is "opening" or "down" by now: the tty is not there.
    assert lines[1].startswith("serial left: ")
    assert lines[1].endswith(" (0 readings)")
    assert lines[2] == "event bell: fired once"
    assert lines[-1].startswith("memory: ")
    assert lines[-1].endswith("; media stack not loaded (loads on the first call or snapshot)")
    assert (status["hub"], status["groups"]) == ("connected", [GROUP])
    assert status["events"]["bell"]["fired"] == 1
    assert status["media_stack"]["loaded"] is False
    assert status["memory"]["resident_bytes"] > 0


async def test_a_camera_that_cannot_open_reaches_the_device_rules(tmp_path: Path) -> None:
    settings = agent_settings(
        tmp_path,
        video={"source": "v4l2", "device": str(tmp_path / "video9"), "width": 160, "height": 120},
        events=[{
            "name": "camera-gone",
            "trigger": {"type": "device", "kind": "camera", "when": "gone"},
            "actions": [{"type": "post"}],
        }],
    )  # fmt: skip
    async with running(settings) as agent:
        client, inbox = await watcher(agent)
        assert agent.calls is not None
        assert agent.sensing is not None
        assert agent.sensing.status()["events"]["camera-gone"]["fired"] == 0
        # A snapshot opens the camera (loading the media stack); whatever it answers, the
        # calls part tells the wiring that the camera failed, and the wiring tells the rules.
        with contextlib.suppress(RealtimeError):
            async with asyncio.timeout(WAIT):
                await agent.calls.snapshot()
        body = await post_of(inbox, "camera-gone")
        assert (body["trigger"], body["device"]) == ("device", "gate")
        assert agent.sensing.status()["events"]["camera-gone"]["fired"] == 1
        await client.close_realtime()


def test_the_hub_link_watch_keeps_the_board_and_says_each_refusal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    link = HubLinkWatch(StatusBoard(Notifier(None)))
    link.set(HubLink.CONNECTING)
    link.on_message(RealtimeMessage(type=MessageType.SUCCESS))
    assert link.connected.is_set()
    assert link.status()["hub"] == "connected"
    link.on_message(RealtimeMessage(type=MessageType.RECONNECT))
    assert not link.connected.is_set()
    assert link.status()["hub"] == HubLink.RETRYING.value
    refusal = RealtimeMessage(
        type=MessageType.ERROR, message="not granted group 'x'", code=Codes.FORBIDDEN
    )
    link.on_message(refusal)
    link.on_message(refusal)
    assert caplog.text.count("hub refused: not granted group 'x'") == 1
    metrics = link.render_metrics()
    assert "edge_agent_hub_connected 0\n" in metrics
    assert "edge_agent_hub_reconnects_total 1\n" in metrics
    assert link.status_lines() == [link.board.text]
