"""The systemd units: they verify, score within the exposure budget, and say what they must."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import websockets

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
# Exposure budgets from the issue (0 = locked down, 10 = fully exposed).
BUDGET = {"edge-hub.service": 2.5, "edge-agent-hub@.service": 2.5, "edge-agent.service": 4.0}
VENV_BIN = "/opt/edge-agent/venv/bin/edge-agent"


def directives(unit: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}``, keeping repeated keys (DeviceAllow=, ...)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: str, section: str, key: str) -> list[str]:
    return [v for k, v in directives(unit)[section] if k == key]


def value(unit: str, section: str, key: str) -> str:
    (found,) = values(unit, section, key)
    return found


def verifiable_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here; nothing else changes.

    verify refuses an ExecStart= that is not executable, and /opt/edge-agent is only there
    on an installed device.
    """
    text = (UNITS / unit).read_text()
    copy = tmp_path / unit
    copy.write_text(text.replace(f"ExecStart={VENV_BIN} ", "ExecStart=/bin/true ", 1))
    changed = [
        (a, b)
        for a, b in zip(text.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert len(changed) == 1
    assert changed[0][0].startswith(f"ExecStart={VENV_BIN} ")
    return copy


@pytest.mark.parametrize("unit", sorted(BUDGET))
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(verifiable_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify also prints warnings for things it tolerates; a clean unit has none.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def exposure(unit: str) -> float:
    # A template is scored as one of its instances (the file next to it is the template).
    unit = unit.replace("@.", "@8081.")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.parametrize("unit", sorted(BUDGET))
def test_unit_exposure_is_within_budget(unit: str) -> None:
    score = exposure(unit)
    assert 0.0 < score <= BUDGET[unit], f"{unit} scores {score}"


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("edge-agent.service", f"{VENV_BIN} run --config /etc/edge-agent/agent.toml"),
        ("edge-hub.service", f"{VENV_BIN} hub --config /etc/edge-agent/hub.toml"),
        (
            "edge-agent-hub@.service",
            f"{VENV_BIN} hub --config /etc/edge-agent/hub.toml --port %i",
        ),
    ],
)
def test_unit_runs_the_installed_command_as_a_notify_service(unit: str, command: str) -> None:
    assert value(unit, "Service", "ExecStart") == command
    assert value(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert value(unit, "Service", "Type") == "notify"
    assert value(unit, "Service", "NotifyAccess") == "main"
    assert int(value(unit, "Service", "WatchdogSec")) >= 10
    assert value(unit, "Service", "Restart") == "on-failure"
    assert int(value(unit, "Service", "RestartSec")) >= 1
    assert int(value(unit, "Unit", "StartLimitBurst")) >= 1
    assert int(value(unit, "Unit", "StartLimitIntervalSec")) >= 60
    assert value(unit, "Service", "User") == "edge-agent"
    assert value(unit, "Service", "ConfigurationDirectory") == "edge-agent"
    assert value(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("unit", sorted(BUDGET))
def test_unit_hardening_is_explicit(unit: str) -> None:
    for key, expected in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
    }.items():
        assert value(unit, "Service", key) == expected, key
    assert value(unit, "Service", "MemoryMax").endswith("M")
    assert values(unit, "Service", "SystemCallFilter")
    families = value(unit, "Service", "RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert "AF_PACKET" not in families


def test_agent_reaches_only_its_devices() -> None:
    unit = "edge-agent.service"
    assert value(unit, "Service", "SupplementaryGroups").split() == [
        "video",
        "audio",
        "dialout",
        "gpio",
    ]
    assert value(unit, "Service", "StateDirectory") == "edge-agent"
    allowed = {v.split()[0] for v in values(unit, "Service", "DeviceAllow")}
    assert {"char-video4linux", "char-alsa", "char-ttyUSB", "char-ttyACM"} <= allowed
    assert all(name.startswith("char-") for name in allowed)
    # ICE host candidates come from getifaddrs(3), which asks the kernel over netlink.
    assert "AF_NETLINK" in value(unit, "Service", "RestrictAddressFamilies").split()


@pytest.mark.parametrize("unit", ["edge-hub.service", "edge-agent-hub@.service"])
def test_hub_has_no_devices_and_its_own_state(unit: str) -> None:
    assert value(unit, "Service", "PrivateDevices") == "yes"
    assert value(unit, "Service", "PrivateUsers") == "yes"
    assert value(unit, "Service", "MemoryDenyWriteExecute") == "yes"
    assert value(unit, "Service", "StateDirectory") == "edge-hub"
    assert not values(unit, "Service", "SupplementaryGroups")


def test_cluster_nodes_are_instances_of_one_template() -> None:
    unit = "edge-agent-hub@.service"
    # The instance is the port; one node's own overrides come from its environment file.
    assert value(unit, "Service", "EnvironmentFile") == "-/etc/edge-agent/hub-%i.env"
    assert "%i" in value(unit, "Unit", "Description")
    after = value(unit, "Unit", "After").split()
    assert {"network-online.target", "redis-server.service", "postgresql.service"} <= set(after)
    # Everything else is the single hub's unit: the nodes are the same program.
    single = dict(directives("edge-hub.service")["Service"])
    node = dict(directives(unit)["Service"])
    differing = {key for key in single.keys() | node.keys() if single.get(key) != node.get(key)}
    assert differing == {"ExecStart", "EnvironmentFile"}


# --- MemoryDenyWriteExecute= against the real code -----------------------------------------
# systemd enforces it with seccomp; Linux 6.3+ offers the same rule per process
# (prctl PR_SET_MDWE), which a child process can turn on for itself before anything loads.

MDWE_SITECUSTOMIZE = """
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1 (include/uapi/linux/prctl.h)
if _libc.prctl(65, 1, 0, 0, 0) != 0:
    raise SystemExit("PR_SET_MDWE refused")
"""


@pytest.fixture(scope="module")
def mdwe_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("mdwe-site")
    (site / "sitecustomize.py").write_text(MDWE_SITECUSTOMIZE)
    probe = subprocess.run(
        [sys.executable, "-c", "pass"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"this kernel cannot enforce write-xor-execute per process: {probe.stderr}")
    return site


def under_mdwe(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    return {**env, "PYTHONPATH": str(site)}


def test_agent_dtls_needs_writable_executable_memory(mdwe_site: Path) -> None:
    # What aiortc's RTCDtlsTransport does for every call (aiortc/rtcdtlstransport.py,
    # _create_ssl_context): a pyOpenSSL verify callback, which cffi builds in W+X memory.
    script = (
        "from OpenSSL import SSL\n"
        "SSL.Context(SSL.DTLS_METHOD).set_verify(SSL.VERIFY_PEER, lambda *a: True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=under_mdwe(mdwe_site),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0, (
        "DTLS callbacks now work without W+X memory: set MemoryDenyWriteExecute=yes in "
        "edge-agent.service"
    )
    assert "write+execute memory" in result.stderr
    assert not values("edge-agent.service", "Service", "MemoryDenyWriteExecute")


async def test_hub_serves_under_memory_deny_write_execute(mdwe_site: Path, tmp_path: Path) -> None:
    env = under_mdwe(mdwe_site)
    edge_agent = str(Path(sys.executable).with_name("edge-agent"))
    state = str(tmp_path / "state")
    add_user = await asyncio.create_subprocess_exec(
        edge_agent, "user", "add", "root-admin", "--role", "admin", "--password-stdin",
        "--state-dir", state, env=env, stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.wait_for(add_user.communicate(b"correct horse\n"), 60)
    assert add_user.returncode == 0
    (tmp_path / "hub.toml").write_text('[hub]\nhost = "127.0.0.1"\n')
    proc = await asyncio.create_subprocess_exec(
        edge_agent, "hub", "--config", str(tmp_path / "hub.toml"), "--port", "0",
        "--state-dir", state, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        url = await _hub_url(proc)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200
            login = await http.post(
                "/api/login", json={"name": "root-admin", "password": "correct horse"}
            )
            assert login.status_code == 200, login.text
            token = login.json()["token"]
            me = await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.json()["name"] == "root-admin"
        ws_url = url.replace("http://", "ws://") + f"/ws?token={token}"
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"action": "joinRoom", "rid": "devices"}))
            reply = json.loads(unquote(await asyncio.wait_for(ws.recv(), 10)))
            assert "#error" not in reply, reply
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0


async def _hub_url(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    lines = []
    async with asyncio.timeout(60):
        while line := (await proc.stderr.readline()).decode():
            lines.append(line)
            found = re.search(r"hub listening on (http://\S+)", line)
            if found:
                return found.group(1)
    raise AssertionError("the hub did not start:\n" + "".join(lines))
