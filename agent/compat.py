"""The parts of aiortc, aioice and uvicorn that edge-agent uses beyond their public API.

Where a library has no public way to do what a call or the hub needs, the code reaches
into it (each place says why): the fan-out hooks aiortc's RTP sender for PLI/FIR and
REMB, calls share one DTLS certificate and gather their own candidates through aioice's
connection, call figures read the nominated pair, and the hub drives uvicorn's server
without its signal handling and steps its ASGI ``send`` by hand. pyproject.toml bounds
these libraries to the releases the tests pass on (:data:`SUPPORTED`, kept equal by a
test); a release that slips past the bounds (a source checkout, ``pip install
--no-deps``) must fail at import with one clear message, not with an ``AttributeError``
in the middle of a call.

Each ``check_*`` function verifies one hook (the attribute exists, a method has the
parameters used, ``__init__`` still sets the private attribute read later) and is called
at import by the module that relies on it. A failure raises
:class:`DependencyMismatchError` naming the package, its installed version and the
supported range.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Final

from agent.errors import EdgeAgentError

__all__ = [
    "SUPPORTED",
    "DependencyMismatchError",
    "check_asgi_send_hook",
    "check_certificate_hook",
    "check_check_hooks",
    "check_gather_hooks",
    "check_pair_hooks",
    "check_sdp_hooks",
    "check_sender_hooks",
    "check_server_hooks",
    "check_ws_protocol_hooks",
]

# The version ranges of pyproject.toml's dependencies whose internals are hooked.
SUPPORTED: Final = {
    "aiortc": ">=1.16,<1.17",
    "aioice": ">=0.13,<0.14",
    "uvicorn": ">=0.35,<0.56",
}


class DependencyMismatchError(EdgeAgentError, ImportError):
    """An installed library lacks a part edge-agent hooks (raised while importing).

    ``package``, ``version`` (installed) and ``supported`` (range) name the mismatch;
    ``missing`` is the part not found and ``user`` the module that needs it.
    """

    def __init__(self, package: str, missing: str, *, user: str) -> None:
        self.package = package
        self.version = installed_version(package)
        self.supported = SUPPORTED[package]
        self.missing = missing
        self.user = user
        super().__init__(
            f"{package} {self.version} is installed, but edge-agent supports "
            f"{package}{self.supported}: {missing}, which {user} relies on, is not in this "
            f"release. Install a supported one: pip install '{package}{self.supported}'"
        )


def installed_version(package: str) -> str:
    """The installed version of ``package``, or ``"(version unknown)"``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def check_sender_hooks() -> None:
    """agent.media.fanout wraps ``RTCRtpSender.send`` (to learn the negotiated codec) and
    ``_handle_rtcp_packet`` (PLI/FIR and REMB for the shared encoder), reading ``_ssrc``."""
    from aiortc import RTCRtpSender

    user = "agent.media.fanout"
    _coroutine("aiortc", RTCRtpSender, "send", ("parameters",), user=user)
    _coroutine("aiortc", RTCRtpSender, "_handle_rtcp_packet", ("packet",), user=user)
    _sets("aiortc", RTCRtpSender, "_ssrc", user=user)


def check_certificate_hook() -> None:
    """agent.rtc.peer replaces the DTLS certificate ``RTCPeerConnection`` makes for itself
    (aiortc has no ``RTCConfiguration.certificates``), so every call shares one."""
    from aiortc import RTCPeerConnection

    _sets("aiortc", RTCPeerConnection, "_RTCPeerConnection__certificates", user="agent.rtc.peer")


def check_gather_hooks() -> None:
    """agent.rtc.gather fills the candidates of aioice's ``Connection`` behind aiortc's
    ``RTCIceGatherer`` itself (restricted host addresses, a relay on every TURN URL)."""
    from aioice import Connection, candidate, ice, turn
    from aiortc import RTCIceGatherer

    user = "agent.rtc.gather"
    _sets("aiortc", RTCIceGatherer, "_connection", user=user)
    for name in (
        "_components",
        "_local_candidates",
        "_local_candidates_start",
        "_local_candidates_end",
        "_protocols",
    ):
        _sets("aioice", Connection, name, user=user)
    _has("aioice", ice, "StunProtocol", user=user)
    _has("aioice", turn, "UDP_SOCKET_BUFFER_SIZE", user=user)
    foundation = ("candidate_type", "candidate_transport", "base_address")
    _function("aioice", candidate, "candidate_foundation", foundation, user=user)
    priority = ("candidate_component", "candidate_type", "local_pref")
    _function("aioice", candidate, "candidate_priority", priority, user=user)
    _function("aioice", ice, "server_reflexive_candidate", ("protocol", "stun_server"), user=user)
    _function(
        "aioice",
        ice,
        "relayed_candidate",
        (
            "component",
            "hide_related_address",
            "protocol_factory",
            "turn_server",
            "turn_username",
            "turn_password",
            "turn_ssl",
            "turn_transport",
        ),
        user=user,
    )


def check_check_hooks() -> None:
    """agent.rtc.checks gives aiortc's aioice ``Connection`` a subclass (by its class) that
    triggers a check on an incoming one and prunes public-relay/private-address pairs."""
    from aioice import Candidate, Connection, ice

    user = "agent.rtc.checks"
    _function("aioice", Connection, "check_incoming", ("message", "addr", "protocol"), user=user)
    _function("aioice", Connection, "_pair_remote_candidate", ("remote_candidate",), user=user)
    _function("aioice", Connection, "check_state", ("pair", "state"), user=user)
    _sets("aioice", Connection, "_check_list", user=user)
    _sets("aioice", ice.CandidatePair, "task", user=user)
    _sets("aioice", Candidate, "_network_host", user=user)
    for state in ("IN_PROGRESS", "WAITING"):
        _has("aioice", ice.CandidatePair.State, state, user=user)


def check_pair_hooks() -> None:
    """agent.rtc.callstats reads the nominated candidate pair of aioice's ``Connection``
    and the TURN client protocol inside a ``TurnTransport`` (the route a call took)."""
    from aioice import Connection, turn

    user = "agent.rtc.callstats"
    _sets("aioice", Connection, "_nominated", user=user)
    _has("aioice", turn, "TurnClientTcpProtocol", user=user)
    _has("aioice", turn, "TurnTransport", user=user)
    _sets("aioice", turn.TurnTransport, "_TurnTransport__inner_protocol", user=user)


def check_sdp_hooks() -> None:
    """agent.rtc.ice and agent.rtc.peer convert candidates to and from SDP lines, and check
    ICE server URLs, with aiortc's own (not exported) parsers."""
    user = "agent.rtc.ice"
    sdp = importlib.import_module("aiortc.sdp")
    transport = importlib.import_module("aiortc.rtcicetransport")
    _function("aiortc", sdp, "candidate_from_sdp", ("sdp",), user=user)
    _function("aiortc", sdp, "candidate_to_sdp", ("candidate",), user=user)
    _function("aiortc", transport, "parse_stun_turn_uri", ("uri",), user=user)


def check_server_hooks() -> None:
    """agent.hub.server drives ``uvicorn.Server`` step by step on its own socket (start,
    main loop, shutdown) so that whoever embeds the hub keeps the signal handlers."""
    import uvicorn
    import uvicorn.config

    user = "agent.hub.server"
    _sets("uvicorn", uvicorn.Config, "lifespan_class", method="load", user=user)
    _sets("uvicorn", uvicorn.Server, "should_exit", user=user)
    _coroutine("uvicorn", uvicorn.Server, "startup", ("sockets",), user=user)
    _coroutine("uvicorn", uvicorn.Server, "main_loop", (), user=user)
    _coroutine("uvicorn", uvicorn.Server, "shutdown", ("sockets",), user=user)
    # startup() uses the lifespan that serve() would have made; the hub makes it itself.
    _sets("uvicorn", uvicorn.Server, "lifespan", method="startup", user=user)


def check_asgi_send_hook() -> None:
    """agent.hub.connection steps the ASGI ``send`` of uvicorn's WebSocket protocol by hand
    (``coro.send(None)``), so that callable must return a coroutine."""
    import uvicorn.config

    user = "agent.hub.connection"
    protocols: dict[str, str | None] = uvicorn.config.WS_PROTOCOLS
    for impl in ("websockets-sansio", "websockets"):
        path = protocols.get(impl)
        if path is not None:
            module, _, name = path.partition(":")
            protocol = getattr(importlib.import_module(module), name)
            _coroutine("uvicorn", protocol, _asgi_send_name(protocol), ("message",), user=user)
            return
    raise DependencyMismatchError("uvicorn", "a websockets WebSocket protocol", user=user)


def check_ws_protocol_hooks() -> None:
    """agent.hub.wsprotocol subclasses uvicorn's sans-I/O WebSocket protocol: it replaces
    its ``queue`` (used through ``put_nowait``, ``get`` and ``empty``) and ``writable``
    (``set``, ``clear``, ``wait``), drops ``request`` and ``response`` once
    ``start_keepalive`` runs after the handshake, adds to the ``scope`` made in
    ``handle_connect``, and writes frames as ``send`` does, after its state checks."""
    user = "agent.hub.wsprotocol"
    try:
        module = importlib.import_module("uvicorn.protocols.websockets.websockets_sansio_impl")
    except ImportError:
        raise DependencyMismatchError(
            "uvicorn", "the websockets-sansio protocol", user=user
        ) from None
    protocol = _has("uvicorn", module, "WebSocketsSansIOProtocol", user=user)
    _sets("uvicorn", protocol, "queue", user=user)
    _sets("uvicorn", protocol, "writable", user=user)
    _sets("uvicorn", protocol, "request", method="handle_connect", user=user)
    _sets("uvicorn", protocol, "response", method="handle_connect", user=user)
    _sets("uvicorn", protocol, "start_keepalive", method="send", user=user)
    # write_text: the state send() checks before writing, and the websockets connection.
    for attribute in ("conn", "transport", "disconnected", "close_sent", "handshake_complete"):
        _sets("uvicorn", protocol, attribute, user=user)
    _sets("uvicorn", protocol, "initial_response", user=user)
    _sets("uvicorn", protocol, "scope", method="handle_connect", user=user)
    # Everything the protocol asks of the queue and the event, and nothing more.
    _uses("uvicorn", protocol, "receive", ("queue", "get", "empty"), user=user)
    _uses(
        "uvicorn",
        protocol,
        "connection_lost",
        ("queue", "put_nowait", "writable", "set"),
        user=user,
    )
    _uses("uvicorn", protocol, "pause_writing", ("writable", "clear"), user=user)
    _uses("uvicorn", protocol, "send", ("writable", "wait"), user=user)
    # A method that reads the queue in a way the replacement lacks would fail mid-call.
    for name, method in vars(protocol).items():
        code = getattr(method, "__code__", None)
        if code is not None and "queue" in code.co_names and _QUEUE_ONLY & set(code.co_names):
            missing = f"{_qualified(protocol, name)} using only put_nowait/get/empty"
            raise DependencyMismatchError("uvicorn", missing, user=user)


# asyncio.Queue methods agent.hub.wsprotocol.Inbox does not have (names no other call in
# the protocol uses, so their presence means the queue is used differently).
_QUEUE_ONLY: Final = frozenset({"get_nowait", "put", "task_done", "full", "maxsize"})


# -- checks -------------------------------------------------------------------------------


def _has(package: str, holder: Any, name: str, *, user: str) -> Any:
    found = getattr(holder, name, None)
    if found is None:
        raise DependencyMismatchError(package, _qualified(holder, name), user=user)
    return found


def _function(
    package: str, holder: Any, name: str, parameters: Sequence[str], *, user: str
) -> None:
    found = _has(package, holder, name, user=user)
    _parameters(package, found, _qualified(holder, name), parameters, user=user)


def _coroutine(package: str, cls: type, name: str, parameters: Sequence[str], *, user: str) -> None:
    found = _has(package, cls, name, user=user)
    what = _qualified(cls, name)
    if not inspect.iscoroutinefunction(found):
        raise DependencyMismatchError(package, f"{what} as a coroutine function", user=user)
    _parameters(package, found, what, parameters, user=user)


def _parameters(
    package: str, function: Callable[..., Any], what: str, names: Sequence[str], *, user: str
) -> None:
    try:
        present = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # no signature to read: not the function we know
        present = []
    # In this order too: some are passed by position.
    if [name for name in present if name in names] != list(names):
        listed = ", ".join(names)
        raise DependencyMismatchError(package, f"{what}({listed})", user=user)


def _sets(package: str, cls: type, attribute: str, *, method: str = "__init__", user: str) -> None:
    """``cls.method`` names ``self.attribute``: the instance attribute read later exists."""
    code = getattr(getattr(cls, method, None), "__code__", None)
    if code is None or attribute not in code.co_names:
        raise DependencyMismatchError(package, _qualified(cls, attribute), user=user)


def _uses(package: str, cls: type, method: str, names: Sequence[str], *, user: str) -> None:
    """``cls.method`` still names each of ``names`` (the attributes and methods it calls)."""
    code = getattr(getattr(cls, method, None), "__code__", None)
    if code is None or not set(names) <= set(code.co_names):
        raise DependencyMismatchError(
            package, f"{_qualified(cls, method)} using {', '.join(names)}", user=user
        )


def _asgi_send_name(protocol: type) -> str:
    # The sans-I/O protocol is itself the ASGI send (``send``); the legacy one has
    # ``asgi_send`` beside the websockets library's own ``send``.
    return "asgi_send" if hasattr(protocol, "asgi_send") else "send"


def _qualified(holder: Any, name: str) -> str:
    owner = getattr(holder, "__qualname__", None) or getattr(holder, "__name__", "?")
    if inspect.ismodule(holder):
        return f"{holder.__name__}.{name}"
    return f"{owner}.{_unmangled(name)}"


def _unmangled(name: str) -> str:
    # "_RTCPeerConnection__certificates" reads better as "__certificates".
    head, sep, tail = name.partition("__")
    return f"__{tail}" if sep and head.startswith("_") and head != "_" and tail else name
