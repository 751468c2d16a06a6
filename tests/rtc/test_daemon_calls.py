"""The agent daemon answers calls as its settings say (embedded hub, test pattern)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.client import RealtimeClient
from agent.config import Settings
from agent.daemon import Agent
from agent.hub.accounts import Role
from agent.rtc.peer import PeerFactory
from agent.systemd import Notifier

from .conftest import LOOPBACK, WAIT, Inbox, Viewer


async def test_the_agent_answers_with_its_configured_camera_and_counts_calls(
    tmp_path: Path,
) -> None:
    settings = Settings.model_validate({
        "name": "porch",
        "state_dir": tmp_path / "state",
        "hub": {"host": "127.0.0.1", "port": 0},
        "calls": {"host_addresses": ["127.0.0.1"], "mdns": False, "max_calls": 2},
        "video": {"width": 176, "height": 144, "fps": 15},
    })  # fmt: skip
    agent = Agent(settings, notifier=Notifier(None))
    running = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(WAIT):
            await agent.wait_connected()
        assert agent.hub is not None
        assert agent.desk is None  # built when the first call rings
        account = await asyncio.to_thread(
            agent.hub.accounts.add, "alice", None, Role.USER, groups=["devices"]
        )
        alice = RealtimeClient(
            agent.hub.ws_url,
            token=agent.hub.tokens.issue(account, 600),
            rtc_factory=PeerFactory(LOOPBACK),
        )
        await alice.connect_realtime(Inbox())
        device_id = (await asyncio.to_thread(agent.hub.accounts.get_by_name, "porch")).user_id
        listing = await alice.get_realtime_users("devices", device_id)
        viewer = Viewer()
        connector = await alice.connect_rtc(
            cid=listing["list"][0]["connection_id"],
            media={"video": False, "audio": False},
            channels=[{"protocol": "control"}],
            callback=viewer,
        )
        viewer.connection = await asyncio.wait_for(connector.connection, WAIT)
        await viewer.until(lambda: viewer.frames["video"] >= 5)
        assert agent.desk is not None
        assert viewer.sizes == {(176, 144)}
        assert agent.board.status.calls == 1
        [status] = await viewer.command("status", 1)
        assert status["result"]["hub"] == "connected"
        assert status["result"]["calls"]["max"] == 2

        # Per-call figures for metrics and `edge-agent status`.
        [first] = await agent.desk.call_figures()
        assert first.candidate_type == "host"
        assert first.ice_setup_seconds is not None
        assert first.first_frame_seconds is not None
        assert 0 < first.ice_setup_seconds <= first.first_frame_seconds < WAIT
        assert first.bytes_sent > 0
        sent_before = viewer.frames["video"]
        await viewer.until(lambda: viewer.frames["video"] >= sent_before + 5)
        [second] = await agent.desk.call_figures()
        assert second.bitrate_bps is not None
        assert second.bitrate_bps > 0
        # The calls part keeps them fresh for /metrics (read now rather than in 5 s).
        assert agent.calls is not None
        await agent.calls.figures.refresh()
        assert [f.cid for f in agent.calls.figures.figures] == [second.cid]
        metrics = agent.parts.render_metrics()
        assert f'edge_agent_call_ice_setup_seconds{{call="{second.cid}"}}' in metrics
        assert 'edge_agent_calls_by_route{route="host"} 1' in metrics
        assert "edge_agent_calls_total 1" in metrics
        await viewer.connection.hangup()
        await viewer.close()
        await alice.close_realtime()
    finally:
        agent.request_stop()
        async with asyncio.timeout(WAIT):
            await running
    assert agent.board.status.calls == 0
