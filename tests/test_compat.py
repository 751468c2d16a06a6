"""agent.compat: every hook is present in the installed libraries, and a missing one is
named with the package, its installed version and the supported range."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aioice
import aioice.ice
import aioice.turn
import aiortc
import aiortc.sdp
import pytest
import uvicorn
import uvicorn.config

from agent import compat
from agent.compat import SUPPORTED, DependencyMismatchError
from agent.errors import EdgeAgentError

ROOT = Path(__file__).resolve().parent.parent
CHECKS: list[Callable[[], None]] = [
    getattr(compat, name) for name in compat.__all__ if name.startswith("check_")
]


def _without_assignment(*_args: Any, **_kwargs: Any) -> None:
    """An ``__init__`` of a release that no longer sets the private attribute."""


@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
def test_every_hook_is_present_in_the_installed_versions(check: Callable[[], None]) -> None:
    check()


def test_the_hooking_modules_import_with_their_checks() -> None:
    # Each module runs its check at import; a fresh interpreter proves they pass there.
    modules = (
        "agent.media.fanout",
        "agent.rtc.peer",
        "agent.rtc.gather",
        "agent.rtc.callstats",
        "agent.rtc.ice",
        "agent.hub.server",
        "agent.hub.connection",
        "agent.hub.wsprotocol",
    )
    code = "import " + ", ".join(modules)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_supported_ranges_are_the_ones_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {}
    for requirement in declared:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement)
        assert found is not None
        ranges[found.group(1).lower()] = found.group(2).replace(" ", "")
    for package, supported in SUPPORTED.items():
        assert ranges[package] == supported, package
    # Imported by the code, so declared too (they came in through aiortc before).
    assert {"aioice", "ifaddr"} <= set(ranges)
    assert "<" in ranges["ifaddr"]


def _installed(package: str) -> str:
    return importlib.metadata.version(package)


@pytest.mark.parametrize(
    ("remove", "check", "package", "missing"),
    [
        (
            lambda mp: mp.delattr(aiortc.RTCRtpSender, "_handle_rtcp_packet"),
            compat.check_sender_hooks,
            "aiortc",
            "RTCRtpSender._handle_rtcp_packet",
        ),
        (
            lambda mp: mp.setattr(aiortc.RTCRtpSender, "__init__", _without_assignment),
            compat.check_sender_hooks,
            "aiortc",
            "RTCRtpSender._ssrc",
        ),
        (
            lambda mp: mp.setattr(aiortc.RTCPeerConnection, "__init__", _without_assignment),
            compat.check_certificate_hook,
            "aiortc",
            "RTCPeerConnection.__certificates",
        ),
        (
            lambda mp: mp.setattr(aioice.Connection, "__init__", _without_assignment),
            compat.check_gather_hooks,
            "aioice",
            "Connection._components",
        ),
        (
            lambda mp: mp.delattr(aioice.ice, "relayed_candidate"),
            compat.check_gather_hooks,
            "aioice",
            "aioice.ice.relayed_candidate",
        ),
        (
            lambda mp: mp.delattr(aioice.turn, "TurnClientTcpProtocol"),
            compat.check_pair_hooks,
            "aioice",
            "aioice.turn.TurnClientTcpProtocol",
        ),
        (
            lambda mp: mp.delattr(aiortc.sdp, "candidate_from_sdp"),
            compat.check_sdp_hooks,
            "aiortc",
            "aiortc.sdp.candidate_from_sdp",
        ),
        (
            lambda mp: mp.delattr(uvicorn.Server, "main_loop"),
            compat.check_server_hooks,
            "uvicorn",
            "Server.main_loop",
        ),
        (
            lambda mp: mp.setattr(uvicorn.config, "WS_PROTOCOLS", {"wsproto": "x:y"}),
            compat.check_asgi_send_hook,
            "uvicorn",
            "a websockets WebSocket protocol",
        ),
        (
            lambda mp: mp.setattr(_sansio(), "__init__", _without_assignment),
            compat.check_ws_protocol_hooks,
            "uvicorn",
            "WebSocketsSansIOProtocol.queue",
        ),
        (
            lambda mp: mp.setattr(_sansio(), "receive", _receive_without_wait),
            compat.check_ws_protocol_hooks,
            "uvicorn",
            "WebSocketsSansIOProtocol.receive using queue, get, empty",
        ),
        (
            lambda mp: mp.setattr(_sansio(), "shutdown", _shutdown_with_put),
            compat.check_ws_protocol_hooks,
            "uvicorn",
            "WebSocketsSansIOProtocol.shutdown using only put_nowait/get/empty",
        ),
    ],
    ids=[
        "sender-rtcp",
        "sender-ssrc",
        "certificate",
        "gather-connection",
        "gather-relay",
        "pair-turn",
        "sdp",
        "server",
        "asgi-send",
        "ws-queue",
        "ws-receive",
        "ws-queue-use",
    ],
)
def test_a_missing_hook_names_package_version_and_range(
    monkeypatch: pytest.MonkeyPatch,
    remove: Callable[[pytest.MonkeyPatch], None],
    check: Callable[[], None],
    package: str,
    missing: str,
) -> None:
    remove(monkeypatch)
    with pytest.raises(DependencyMismatchError) as raised:
        check()
    error = raised.value
    version, supported = _installed(package), SUPPORTED[package]
    assert (error.package, error.version, error.supported) == (package, version, supported)
    assert str(error).startswith(
        f"{package} {version} is installed, but edge-agent supports {package}{supported}: {missing}"
    )
    assert str(error).endswith(f"pip install '{package}{supported}'")
    # An import error of the edge-agent tree: the CLI prints it as one line.
    assert isinstance(error, EdgeAgentError)
    assert isinstance(error, ImportError)


def _sansio() -> type:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return WebSocketsSansIOProtocol


async def _receive_without_wait(self: Any) -> Any:
    """A release whose receive takes events without waiting (a queue API the inbox lacks)."""
    return self.queue.get_nowait()


def _shutdown_with_put(self: Any) -> None:
    """A release that feeds the queue with a blocking put (the inbox has no ``put``)."""
    self.tasks.add(self.queue.put({"type": "websocket.disconnect", "code": 1012}))


def test_a_changed_signature_is_a_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    async def startup(self: uvicorn.Server) -> None:  # lost its ``sockets`` parameter
        """A release whose startup binds by itself."""

    monkeypatch.setattr(uvicorn.Server, "startup", startup)
    with pytest.raises(DependencyMismatchError, match=r"Server\.startup\(sockets\)"):
        compat.check_server_hooks()


def test_a_send_that_is_no_coroutine_is_a_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    def send(self: Any, message: Any) -> None:
        """A release whose send returns a future, which cannot be stepped by hand."""

    monkeypatch.setattr(WebSocketsSansIOProtocol, "send", send)
    with pytest.raises(DependencyMismatchError, match="as a coroutine function"):
        compat.check_asgi_send_hook()


@pytest.mark.parametrize("ipv6", [False, True])
def test_host_addresses_from_ifaddr_match_aioices_own_choice(ipv6: bool) -> None:
    # agent.rtc.peer gathers on these instead of calling aioice's private helper.
    from agent.rtc.ice import all_host_addresses, system_addresses

    ours = all_host_addresses(system_addresses(), ipv6=ipv6)
    theirs = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=ipv6)
    assert ours == list(dict.fromkeys(theirs))
    assert all_host_addresses(
        [("lo", "127.0.0.1"), ("lo", "::1"), ("eth0", "192.0.2.7"), ("eth0", "2001:db8::7")],
        ipv6=ipv6,
    ) == ["192.0.2.7", *(["2001:db8::7"] if ipv6 else [])]
