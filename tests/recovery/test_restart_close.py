"""A hub that stops on purpose says so: SIGTERM closes every connection with 1012 (service
restart), for ``edge-agent hub`` and for the hub embedded in ``edge-agent run``, and
clients take that as "back in under a second"."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.client import RealtimeClient, RealtimeMessage
from agent.hub.accounts import Role

from .processes import AgentProcess, HubProcess, make_accounts

WAIT = 30.0


async def closed_code(url: str, stop: asyncio.Future[None]) -> int | None:
    """Connect, then wait for the server to close; the code it closed with."""
    async with connect(url) as ws:
        stop.set_result(None)
        try:
            async with asyncio.timeout(WAIT):
                await ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
    raise AssertionError("the server sent a frame instead of closing")


async def test_sigterm_of_edge_agent_hub_closes_with_1012_and_clients_return_quickly(
    tmp_path: Path,
) -> None:
    state = tmp_path / "hub"
    accounts = make_accounts(state, ("door", Role.DEVICE), ("viewer", Role.USER))
    config = tmp_path / "hub.toml"
    config.write_text("")
    hub = HubProcess(tmp_path, config, state)
    await hub.start()
    messages: asyncio.Queue[RealtimeMessage] = asyncio.Queue()
    client = RealtimeClient(hub.ws_url, token=accounts["door"].token)
    await client.connect_realtime(messages.put_nowait)
    try:
        connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        raw = asyncio.create_task(
            closed_code(f"{hub.ws_url}?token={accounts['viewer'].token}", connected)
        )
        await connected
        assert await hub.stop() == 0
        assert await raw == 1012
        reconnect = await _next(messages, "reconnect")
        # "... reconnecting in 0.4 s (attempt 1).": a restart is retried within a second.
        delay = float(re.search(r"reconnecting in ([0-9.]+) s", str(reconnect.message))[1])
        assert delay <= 1.0  # drawn below 1 s, printed to a tenth
        assert "1012" in str(reconnect.message)
    finally:
        await client.close_realtime()


async def test_sigterm_of_an_agent_with_an_embedded_hub_closes_viewers_with_1012(
    tmp_path: Path,
) -> None:
    state = tmp_path / "agent"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'name = "porch"\ngroups = ["home"]\nstate_dir = "{state}"\n\n'
        '[hub]\nhost = "127.0.0.1"\nport = 0\n\n[calls]\nenabled = false\n\n'
        "[metrics]\nenabled = false\n"
    )
    agent = AgentProcess(tmp_path, config, state)
    await agent.start()
    try:
        found = await agent.wait_log(re.compile(r"hub listening on (http://127\.0\.0\.1:\d+)"))
        viewer = make_accounts(state, ("viewer", Role.USER))["viewer"]
        ws_url = found.group(1).replace("http", "ws") + f"/ws?token={viewer.token}"
        connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        raw = asyncio.create_task(closed_code(ws_url, connected))
        await connected
    finally:
        assert await agent.stop() == 0
    assert await raw == 1012


async def _next(messages: asyncio.Queue[RealtimeMessage], kind: str) -> RealtimeMessage:
    async with asyncio.timeout(WAIT):
        while True:
            message = await messages.get()
            if message.type == kind:
                return message
