"""HubServer as a server: ports, URLs, TLS, stop and restart, run_hub under signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tls import self_signed
from websockets.asyncio.client import connect

from agent.errors import ConfigError
from agent.hub.limits import CloseCode
from agent.hub.server import HubServer

from .conftest import TIMEOUT, Hub, HubFactory, closed_code, join, make_settings


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    cert_path, key_path = directory / "hub.crt", directory / "hub.key"
    self_signed(cert_path, key_path)
    return cert_path, key_path


async def test_port_zero_binds_a_real_port_and_the_urls_name_it(hub: Hub) -> None:
    server = hub.server
    assert server.port > 0
    assert server.http_url == f"http://127.0.0.1:{server.port}"
    assert server.ws_url == f"ws://127.0.0.1:{server.port}/ws"


async def test_tls_serves_https_and_wss(hub_factory: HubFactory, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    hub = await hub_factory(tls=(cert, key))
    assert hub.server.http_url.startswith("https://127.0.0.1:")
    assert hub.server.ws_url.startswith("wss://127.0.0.1:")
    trust = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(verify=trust, timeout=TIMEOUT) as http:
        health = await http.get(f"{hub.server.http_url}/health")
    assert health.json()["status"] == "ok"
    user = hub.user("alice")
    async with connect(f"{hub.server.ws_url}?token={user.token}", ssl=trust) as ws:
        assert (await join(ws, "secure", user))["#srid"] == "secure"
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:  # default trust store
            await http.get(f"{hub.server.http_url}/health")


async def test_an_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    missing = (tmp_path / "missing.crt", tmp_path / "missing.key")
    server = HubServer(make_settings(tmp_path / "state", tls=missing))
    with pytest.raises(ConfigError) as error:
        await server.start()
    assert error.value.key == "hub.tls_cert"
    await server.stop()  # stopping a hub that never started is harmless


async def test_a_taken_port_is_an_os_error(hub: Hub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "other")
    settings.hub.port = hub.server.port
    second = HubServer(settings)
    with pytest.raises(OSError, match="in use"):
        await second.start()
    await second.stop()


async def test_stop_closes_connections_and_a_restart_gets_the_same_port(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state")
    first = HubServer(settings)
    await first.start()
    user_account = first.accounts.add("alice", None, groups=["*"])
    token = first.tokens.issue(user_account, 600)
    ws = await connect(f"{first.ws_url}?token={token}")
    port = first.port
    await first.stop()
    assert await closed_code(ws) == CloseCode.SERVICE_RESTART == 1012

    settings.hub.port = port
    second = HubServer(settings)
    await second.start()
    try:
        assert second.port == port
        # Same state directory: same secret and accounts, so the old token still works.
        async with connect(f"{second.ws_url}?token={token}") as again:
            await again.send('{"action": "keepAlive"}')
    finally:
        await second.stop()


async def test_run_hub_serves_until_sigterm_and_never_logs_tokens(tmp_path: Path) -> None:
    script = (
        "import logging, sys\n"
        # DEBUG: the per-connection lines (dropped at INFO) are where a token could show.
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
        "from agent.config import load_settings\n"
        "from agent.hub.server import run_hub\n"
        f"sys.exit(run_hub(load_settings(state_dir={str(tmp_path)!r}, hub__port=0)))\n"
    )
    env = {**os.environ, "EDGE_AGENT_CONFIG": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stderr=subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    url = await asyncio.wait_for(_listening_url(proc.stderr), 30)
    try:
        from agent.hub.accounts import ACCOUNTS_FILE, AccountStore
        from agent.hub.tokens import TokenIssuer

        store = AccountStore(tmp_path / ACCOUNTS_FILE)
        token = TokenIssuer.from_state_dir(tmp_path).issue(store.add("alice", None), 600)
        store.close()
        ws_url = url.replace("http://", "ws://") + "/ws"
        async with connect(f"{ws_url}?token={token}") as ws:
            await ws.send('{"action": "keepAlive"}')
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    log = err.decode()
    assert "/ws?token=********" in log
    assert token not in log


async def _listening_url(stream: asyncio.StreamReader) -> str:
    while line := (await stream.readline()).decode():
        if "hub listening on " in line:
            return line.split("hub listening on ", 1)[1].split()[0]
    raise AssertionError("the hub exited before listening")


async def test_debug_logs_never_show_tokens(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    user = hub.user("alice")
    with caplog.at_level(logging.DEBUG):
        async with connect(f"{hub.server.ws_url}?token={user.token}&x=1") as ws:
            await join(ws, "room", user)
        async with connect(
            hub.server.ws_url, additional_headers={"Authorization": f"Bearer {user.token}"}
        ) as ws:
            await join(ws, "room", user)
    # Only the hub's side: the test's own client library logs what it sends.
    hub_log = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("uvicorn", "agent"))
    )
    assert "token=********&x=1" in hub_log
    assert "Bearer ********" in hub_log
    assert user.token not in hub_log
