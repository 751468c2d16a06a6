"""scripts/install.sh into scratch roots: the files it makes, idempotence, uninstall."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.hub.turn import load_turn_secret, mint_credential

CHECKOUT = Path(__file__).resolve().parent.parent
INSTALL = CHECKOUT / "scripts" / "install.sh"
# Debian's interpreter, as on the device; it brings setuptools and wheel for the offline build.
DEBIAN_PYTHON = "/usr/bin/python3"
HOST_ACCOUNTS = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")


def install(
    root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--python", DEBIAN_PYTHON, *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        env=env,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` with its mode and content hash (or link target)."""
    found: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = ""
            found[str(path.relative_to(root))] = (st.st_mode, what)
    return found


def host_accounts() -> dict[str, str]:
    return {
        name: hashlib.sha256(Path(name).read_bytes()).hexdigest()
        for name in HOST_ACCOUNTS
        if Path(name).exists()
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(tmp_path: Path) -> Path:
    """A still copy of the checkout, so edits made meanwhile cannot change the project."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("agent", "systemd"):
        shutil.copytree(CHECKOUT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (CHECKOUT / name).exists():
            shutil.copy2(CHECKOUT / name, source / name)
    return source


def test_install_with_pip_into_a_scratch_root_twice(tmp_path: Path) -> None:
    accounts = host_accounts()
    root, source = tmp_path / "root", snapshot(tmp_path)
    first = install(root, "--pip-offline", "--source", str(source))
    after_first = tree(root)
    second = install(root, "--pip-offline", "--source", str(source))

    assert tree(root) == after_first  # nothing changed: not a byte, not a mode
    assert "project unchanged since the last install" in second.stdout
    assert "kept existing" in second.stdout
    # The project is really installed, from this checkout, with its command.
    venv = root / "opt/edge-agent/venv"
    assert os.access(venv / "bin/edge-agent", os.X_OK)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for module in ("systemd.py", "logs.py", "config.py"):
        assert (site / "agent" / module).read_bytes() == (source / "agent" / module).read_bytes()
    assert "installed the project" in first.stdout
    # Debian's setuptools predates SPDX license strings; the build still names the license.
    metadata = next(site.glob("edge_agent-*.dist-info")) / "METADATA"
    assert "Apache-2.0" in metadata.read_text()
    # A scratch root is not this machine: its users and packages are left alone.
    assert "skipping accounts; the system needs user edge-agent" in first.stdout
    assert "skipping apt" in first.stdout
    assert host_accounts() == accounts


def test_installed_files_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv")
    etc = root / "etc/edge-agent"
    assert mode(etc) == 0o750
    for name in ("agent.toml", "hub.toml"):
        assert mode(etc / name) == 0o640
    units = root / "etc/systemd/system"
    for unit in ("edge-agent.service", "edge-hub.service"):
        assert mode(units / unit) == 0o644
        assert (units / unit).read_text() == (CHECKOUT / "systemd" / unit).read_text()
    wants = units / "multi-user.target.wants"
    assert os.readlink(wants / "edge-agent.service") == "/etc/systemd/system/edge-agent.service"
    assert not (wants / "edge-hub.service").exists()  # the hub only with --hub
    assert not (root / "opt/edge-agent").exists()  # --no-venv


def test_starter_settings_load(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv", "--no-enable")
    agent = load_settings(root / "etc/edge-agent/agent.toml")
    assert agent.groups == ["devices"]
    assert agent.connect.url is None
    assert agent.log_level == "info"
    hub = load_settings(root / "etc/edge-agent/hub.toml")
    assert hub.hub.host == "127.0.0.1"


def test_prefix_and_hub_options(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--skip-pip", "--prefix", "/srv/edge", "--hub")
    units = root / "etc/systemd/system"
    assert (
        "ExecStart=/srv/edge/venv/bin/edge-agent run --config /etc/edge-agent/agent.toml"
        in (units / "edge-agent.service").read_text()
    )
    assert "/opt/edge-agent" not in (units / "edge-hub.service").read_text()
    assert (units / "multi-user.target.wants/edge-hub.service").is_symlink()
    assert (root / "srv/edge/venv/bin/python").exists()


def test_existing_settings_are_never_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "root"
    settings = root / "etc/edge-agent/agent.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text('name = "mine"\n')
    settings.chmod(0o600)
    result = install(root, "--no-venv", "--no-enable")
    assert settings.read_text() == 'name = "mine"\n'
    assert mode(settings) == 0o600
    assert f"kept existing {settings}" in result.stdout


def test_rerun_repairs_an_edited_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv")
    unit = root / "etc/systemd/system/edge-agent.service"
    unit.write_text("[Service]\nExecStart=/bin/false\n")
    result = install(root, "--no-venv")
    assert unit.read_text() == (CHECKOUT / "systemd/edge-agent.service").read_text()
    assert f"installed {unit}" in result.stdout


def test_uninstall_keeps_settings_and_purge_removes_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--skip-pip", "--hub")
    assert (root / "opt/edge-agent/venv").is_dir()
    state = root / "var/lib/edge-agent"
    state.mkdir(parents=True)  # what systemd's StateDirectory= would have made
    (state / "outbox.db").write_bytes(b"")

    install(root, "--uninstall")
    units = root / "etc/systemd/system"
    assert not (units / "edge-agent.service").exists()
    assert not (units / "edge-hub.service").exists()
    assert not (units / "multi-user.target.wants/edge-agent.service").is_symlink()
    assert not (units / "multi-user.target.wants/edge-hub.service").is_symlink()
    assert not (root / "opt/edge-agent").exists()
    assert (root / "etc/edge-agent/agent.toml").exists()
    assert (state / "outbox.db").exists()

    install(root, "--uninstall", "--purge")
    assert not (root / "etc/edge-agent").exists()
    assert not state.exists()
    install(root, "--uninstall", "--purge")  # nothing left to remove is not an error


def test_uninstall_leaves_a_prefix_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / "root"
    foreign = root / "opt/other"
    foreign.mkdir(parents=True)
    (foreign / "data").write_text("keep me")
    result = install(root, "--uninstall", "--prefix", "/opt/other", check=False)
    assert result.returncode != 0
    assert "does not look like an edge-agent install" in result.stderr
    assert (foreign / "data").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix", "opt/x"], "--prefix must be absolute"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--frobnicate"], "unknown option: --frobnicate"),
        (["--turn", "--turn-listen", "192.0.2.10"], "--turn goes with --hub"),
        (["--hub", "--turn"], "--turn needs --turn-listen ADDRESS"),
        (["--hub", "--turn", "--turn-listen", "eth0"], "not an IP address: eth0"),
        (["--turn-listen", "192.0.2.10"], "go with --turn"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    result = install(tmp_path / "root", *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "root/etc").exists()


def machine(tmp_path: Path, uname_m: str, long_bit: str) -> dict[str, str]:
    """An environment whose ``uname -m`` and ``getconf LONG_BIT`` say what a Pi would."""
    shims = tmp_path / "shims"
    shims.mkdir(parents=True)
    for name, option, answer in (("uname", "-m", uname_m), ("getconf", "LONG_BIT", long_bit)):
        real = shutil.which(name)
        assert real is not None
        script = (
            f'#!/bin/sh\n[ "$1" = {option} ] && {{ echo {answer}; exit 0; }}\nexec {real} "$@"\n'
        )
        (shims / name).write_text(script)
        (shims / name).chmod(0o755)
    return {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("uname_m", "long_bit", "named"),
    [
        ("armv7l", "32", "(armv7l)"),
        ("armv6l", "32", "(armv6l)"),
        # Pi OS 32-bit boots a 64-bit kernel on a Pi 4 or 5: uname says aarch64.
        ("aarch64", "32", "(aarch64 kernel, 32-bit user space)"),
    ],
)
def test_32_bit_raspberry_pi_os_is_refused(
    tmp_path: Path, uname_m: str, long_bit: str, named: str
) -> None:
    root = tmp_path / "root"
    result = install(root, "--no-venv", check=False, env=machine(tmp_path, uname_m, long_bit))
    assert result.returncode == 1
    assert result.stderr == (
        f"install: error: 32-bit Raspberry Pi OS {named} is not supported: av and pylibsrtp "
        "publish no armv7l (32-bit ARM) wheels. Install the 64-bit Raspberry Pi OS (aarch64) "
        "and run this again.\n"
    )
    assert not (root / "etc").exists()  # refused before anything was written


def test_64_bit_raspberry_pi_os_installs_and_32_bit_may_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv", env=machine(tmp_path / "arm64", "aarch64", "64"))
    assert (root / "etc/edge-agent/agent.toml").exists()
    install(root, "--uninstall", env=machine(tmp_path / "armhf", "armv7l", "32"))
    assert not (root / "etc/systemd/system/edge-agent.service").exists()


TURN_ARGS = ("--hub", "--turn", "--turn-listen", "192.0.2.10", "--turn-host", "turn.example.net")


def test_hub_with_turn_shares_one_generated_secret_with_coturn(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(root, "--no-venv", *TURN_ARGS)
    secret_file = root / "etc/edge-agent/turn-secret"
    assert mode(secret_file) == 0o600
    secret = secret_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert secret not in first.stdout + first.stderr
    conf_file = root / "etc/turnserver-edge-agent.conf"
    assert mode(conf_file) == 0o640
    conf = conf_file.read_text().splitlines()
    assert f"static-auth-secret={secret}" in conf
    for line in ("use-auth-secret", "listening-ip=192.0.2.10", "relay-ip=192.0.2.10", "no-cli"):
        assert line in conf
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in conf
    assert "denied-peer-ip=100.64.0.0-100.127.255.255" in conf
    dropin = (root / "etc/systemd/system/coturn.service.d/edge-agent.conf").read_text()
    assert "ExecStart=\nExecStart=/usr/bin/turnserver -c /etc/turnserver-edge-agent.conf" in dropin
    # The hub reads the same secret and hands out URLs for the host callers reach.
    settings = load_settings(root / "etc/edge-agent/hub.toml")
    turn = settings.hub.turn
    assert turn is not None
    assert turn.urls == [
        "turn:turn.example.net:3478?transport=udp",
        "turn:turn.example.net:3478?transport=tcp",
    ]
    assert turn.secret_file == Path("/etc/edge-agent/turn-secret")
    in_root = turn.model_copy(update={"secret_file": secret_file})
    assert load_turn_secret(in_root) == secret.encode()
    assert settings.hub.ice_servers[0].urls == ["stun:turn.example.net:3478"]
    # The ports to open are named.
    assert "3478/udp and 3478/tcp" in first.stdout
    assert "49152-65535/udp" in first.stdout
    # Again: nothing changes, the secret included.
    before = tree(root)
    install(root, "--no-venv", *TURN_ARGS)
    assert tree(root) == before
    install(root, "--uninstall", "--purge")
    assert not conf_file.exists()
    assert not (root / "etc/systemd/system/coturn.service.d").exists()


def test_an_existing_hub_toml_is_kept_and_told_what_to_add(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv", "--hub")
    hub_toml = root / "etc/edge-agent/hub.toml"
    kept = hub_toml.read_bytes()
    result = install(root, "--no-venv", *TURN_ARGS)
    assert hub_toml.read_bytes() == kept
    assert "has no [hub.turn]; add these lines to it:" in result.stdout
    assert 'secret_file = "/etc/edge-agent/turn-secret"' in result.stdout


def test_coturn_with_the_installed_settings_accepts_the_hubs_credentials(
    tmp_path: Path,
) -> None:
    """The generated coturn settings, run by coturn in a namespace made for this test."""
    root = tmp_path / "root"
    install(root, "--no-venv", *TURN_ARGS)
    settings = load_settings(root / "etc/edge-agent/hub.toml")
    assert settings.hub.turn is not None
    turn = settings.hub.turn.model_copy(update={"secret_file": root / "etc/edge-agent/turn-secret"})
    secret = load_turn_secret(turn)
    fresh = mint_credential(secret, "probe", now=time.time(), ttl=600)
    forged = mint_credential(secrets.token_bytes(16), "probe", now=time.time(), ttl=600)
    namespace = f"ea-install-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    coturn = None
    try:
        inside = ["ip", "netns", "exec", namespace]
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        address = ["ip", "-n", namespace, "addr", "add", "192.0.2.10/32", "dev", "lo"]
        subprocess.run(address, check=True)
        # It logs to syslog as configured; the probe's STUN retransmissions wait for it.
        coturn = subprocess.Popen(
            [*inside, "turnserver", "-c", str(root / "etc/turnserver-edge-agent.conf"),
             "--pidfile=", f"--db={tmp_path / 'turndb'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        probe = subprocess.run(
            [*inside, sys.executable, "-c", _ALLOCATE, json.dumps([fresh.username,
             fresh.credential, forged.username, forged.credential])],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout) == ["allocated", 401]
    finally:
        if coturn is not None:
            coturn.terminate()
            coturn.wait(timeout=10)
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


# A TURN allocation with each (username, credential): "allocated", or the error code.
_ALLOCATE = """
import asyncio, json, sys
from aioice import stun, turn
from aioice.ice import StunProtocol
async def allocate(username, credential):
    try:
        transport, _ = await turn.create_turn_endpoint(
            lambda: StunProtocol(None), server_addr=("192.0.2.10", 3478),
            username=username, password=credential)
    except stun.TransactionFailed as exc:
        return exc.response.attributes["ERROR-CODE"][0]
    transport.close()
    return "allocated"
async def main():
    a, b, c, d = json.loads(sys.argv[1])
    print(json.dumps([await allocate(a, b), await allocate(c, d)]))
asyncio.run(main())
"""
