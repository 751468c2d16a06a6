"""Calls across two real NATs: only the relay gets through, and it does.

The device sits behind a home NAT, the viewer behind a carrier NAT with random ports
(lab.py); the hub and coturn are on the public host. The device answers as it does in
production (``edge-agent run`` with its hub's ICE servers); the callers are the Python
client and Chromium, inside the viewer's namespace. Chromium's page comes from the hub,
fetches fresh TURN credentials before the call (``/api/ice-servers``), and its own
``getStats()`` names the route.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
from playwright.async_api import Page

from agent.hub.turn import mint_credential

from .conftest import CallerFactory, World
from .rig import WAIT
from .viewer import CALL, call_porch, stats, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_the_python_caller_gets_video_audio_and_data_through_the_relay(
    call: CallerFactory, world: World
) -> None:
    caller, report = await call("hub")
    assert "timed_out" not in report, report
    assert report["frames"]["video"] > 0
    assert report["frames"]["audio"] >= 10
    assert report["control"]["ok"] is True
    assert report["control"]["result"]["device"] == "porch"
    # The ICE servers came from the hub: fresh TURN first (both transports), then STUN.
    assert report["ice_servers"][0] == [
        "turn:192.0.2.1:3478?transport=udp",
        "turn:192.0.2.1:3478?transport=tcp",
    ]
    assert report["route"] == "relay"
    # Either relay carries it: the caller's own, or the device's (its allocation lets the
    # caller's carrier-NAT address in, so a host candidate of the caller may win the race).
    if report["local"] == "relay":
        assert report["relay_protocol"] == "udp"
    else:
        assert report["remote"] == "relay", report
    # The device says so too: in `edge-agent status` and in its metrics.
    line = await _status_line(world, r"route (\w+)")
    assert line.group(1) == "relay"
    metrics = await world.device.metrics()
    assert 'edge_agent_calls_by_route{route="relay"} 1' in metrics
    done = await caller.finish()
    assert done["frames"]["video"] >= report["frames"]["video"]


async def test_with_udp_blocked_the_relay_is_reached_over_tcp(
    call: CallerFactory, world: World
) -> None:
    world.lab.block_udp("view")
    try:
        started = time.perf_counter()
        caller, report = await call("hub")
        elapsed = time.perf_counter() - started
    finally:
        world.lab.unblock_udp("view")
    assert "timed_out" not in report, report
    assert report["frames"]["video"] > 0
    assert report["route"] == "relay"
    assert report["relay_protocol"] == "tcp"
    # The UDP allocation that never answers costs the call a short grace, not aioice's
    # five-second gathering timeout.
    assert report["ms_to_first_frame"] < 4000, report
    assert elapsed < WAIT
    await caller.finish()


async def test_coturn_refuses_expired_and_forged_credentials(
    call: CallerFactory, world: World
) -> None:
    secret = world.coturn.secret.encode()
    expired = mint_credential(secret, "alice", now=time.time() - 7200, ttl=3600)
    forged = mint_credential(b"not-the-shared-secret", "alice", now=time.time(), ttl=3600)
    fresh = mint_credential(secret, "alice", now=time.time(), ttl=3600)
    tries = [
        {"label": "expired", "username": expired.username, "credential": expired.credential},
        {"label": "forged", "username": forged.username, "credential": forged.credential},
        {"label": "stretched", "username": _later(fresh.username), "credential": fresh.credential},
    ]
    caller, report = await call("allocate", json.dumps(tries))
    assert report["outcomes"] == {
        "hub": "allocated 192.0.2.1",
        "expired": 401,
        "forged": 401,
        "stretched": 401,  # a username given a later expiry no longer matches its HMAC
    }
    await caller.finish()


@pytest.mark.browser
async def test_chromium_gets_video_audio_and_data_through_the_relay(
    page: Page, world: World
) -> None:
    await call_porch(page)
    summary = await stats(page)
    # Either side's relay (ICE prefers the viewer's own address toward the device's relay,
    # when the carrier NAT lets the answers back in, to the viewer's relay): the route
    # the viewer shows says which.
    assert "relay" in (summary["localType"], summary["remoteType"]), summary
    assert "relay" in summary["route"]
    assert summary["width"] == 320
    assert summary["audioBytes"] > 0
    # The credentials were fetched for this call: the viewer's settings hold none.
    servers = await page.evaluate(f"{CALL}.pc.getConfiguration().iceServers")
    assert servers[0]["urls"][0] == "turn:192.0.2.1:3478?transport=udp"
    assert servers[0]["username"].endswith(":" + await page.evaluate("window.viewer.user.user_id"))
    assert await page.evaluate("window.viewer.config.iceServers") == [
        {"urls": ["stun:192.0.2.1:3478"], "username": None, "credential": None}
    ]
    # The data channel: the control channel's status command answers over the relay.
    await wait_until(page, "!document.getElementById('cmd-status').disabled")
    await page.click("#cmd-status")
    await wait_until(page, "document.getElementById('control-out').textContent.includes('porch')")
    await page.click("#hangup")
    await wait_until(page, "window.viewer.call === null")


@pytest.mark.browser
async def test_with_udp_blocked_chromium_reaches_the_relay_over_tcp(
    page: Page, world: World
) -> None:
    world.lab.block_udp("view")
    try:
        await call_porch(page)
        summary = await stats(page)
    finally:
        world.lab.unblock_udp("view")
    assert summary["localType"] == "relay", summary
    assert "relay over tcp" in summary["route"]
    await page.click("#hangup")
    await wait_until(page, "window.viewer.call === null")


def _later(username: str) -> str:
    expiry, user = username.split(":", 1)
    return f"{int(expiry) + 86400}:{user}"


async def _status_line(world: World, pattern: str) -> re.Match[str]:
    """The device's status line matching ``pattern`` (its call figures refresh every 5 s)."""
    regex = re.compile(pattern)
    async with asyncio.timeout(WAIT):
        while True:
            status: dict[str, Any] = await world.device.status()
            for line in status.get("lines", []):
                if line.startswith("call ") and (match := regex.search(line)):
                    return match
            await asyncio.sleep(0.5)  # status is a snapshot: nothing to wait on
