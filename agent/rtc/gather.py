"""Gathering a call's local candidates: host sockets, STUN, and a relay on every TURN URL.

aiortc gathers inside ``setLocalDescription`` through aioice's ``gather_candidates``,
which knows one STUN and one TURN server (the first URL of each kind), waits up to five
seconds for the slowest of them, and takes every address of the machine. A connection
that has gathered already skips that step, so :func:`gather` does it first, with aioice's
own building blocks, and:

* binds host candidates on the addresses it is given (``[calls] host_addresses`` /
  ``host_interfaces``; loopback in tests), none under the ``relay`` policy (RFC 9429
  section 3.5.3);
* allocates a relay on *every* TURN URL (``turn:...?transport=udp`` and ``...=tcp``, as a
  browser does), so a network that drops UDP still gets a relay over TCP; relays over TCP
  and TLS rank below UDP ones (RFC 8445 section 5.1.2.1: local preference);
* stops waiting a short while after the first relay is allocated: an allocation over a
  blocked transport only ever times out, and the call would wait for it.

:func:`gather_plan` is the pure part: which servers to ask, from the call's ICE servers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol, relayed_candidate, server_reflexive_candidate
from aioice.turn import UDP_SOCKET_BUFFER_SIZE
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceGatherer, parse_stun_turn_uri

from agent.compat import check_gather_hooks
from agent.rtc.checks import adopt
from agent.rtc.ice import IceServer

__all__ = ["GatherPlan", "TurnServer", "gather", "gather_plan", "local_candidates"]

check_gather_hooks()  # _gather fills aioice's Connection itself

log = logging.getLogger(__name__)

# aioice's own bound on a STUN or TURN server's answer during gathering.
SERVER_TIMEOUT: Final = 5.0
# After the first relay, the other servers get this long: a transport that is blocked
# (UDP on many corporate and some mobile networks) would only time out.
RELAY_GRACE: Final = 0.3
MAX_RELAYS: Final = 4
# RFC 8445 section 5.1.2.1: local preference orders candidates of one type; a relay
# reached over UDP is preferred, then TCP, then TLS (what browsers do too).
_RELAY_PREFERENCE: Final = {("udp", False): 65535, ("tcp", False): 32767, ("tcp", True): 16383}

_Result = tuple[Candidate, StunProtocol | None]


@dataclass(frozen=True, slots=True)
class TurnServer:
    """One TURN URL with its credentials (never shown: see ``__repr__``)."""

    host: str
    port: int
    transport: str  # "udp" or "tcp"
    tls: bool
    username: str | None
    credential: str | None

    def __repr__(self) -> str:
        return f"<TurnServer {self.url}>"

    @property
    def url(self) -> str:
        """The URL, without credentials (for logs)."""
        scheme = "turns" if self.tls else "turn"
        return f"{scheme}:{self.host}:{self.port}?transport={self.transport}"


@dataclass(frozen=True, slots=True)
class GatherPlan:
    """What to gather for one call."""

    stun: tuple[str, int] | None = None
    turn: tuple[TurnServer, ...] = ()
    relay_only: bool = False


def gather_plan(servers: Iterable[IceServer], *, relay_only: bool = False) -> GatherPlan:
    """The first STUN server and every distinct TURN URL of ``servers`` (at most 4)."""
    stun_server: tuple[str, int] | None = None
    turn: list[TurnServer] = []
    for server in servers:
        for url in server.urls:
            parsed = parse_stun_turn_uri(url)  # checked when the server was accepted
            scheme, host, port = parsed["scheme"], parsed["host"], int(parsed["port"])
            if scheme == "stun" and stun_server is None:
                stun_server = (host, port)
            elif scheme in ("turn", "turns"):
                tls = scheme == "turns"
                relay = TurnServer(
                    host, port, parsed["transport"], tls, server.username, server.credential
                )
                if relay not in turn and len(turn) < MAX_RELAYS:
                    turn.append(relay)
    return GatherPlan(stun_server, tuple(turn), relay_only)


async def gather(pc: RTCPeerConnection, plan: GatherPlan, addresses: Sequence[str]) -> None:
    """Gather ``pc``'s candidates per ``plan``, host ones on ``addresses`` (before
    setLocalDescription, which then finds the gathering done)."""
    gatherers = [g for g in _gatherers(pc) if g.state == "new"]
    await asyncio.gather(*(_gather(g, plan, addresses) for g in gatherers))


def local_candidates(pc: RTCPeerConnection) -> list[RTCIceCandidate]:
    """Every local candidate gathered for ``pc`` so far."""
    found: list[RTCIceCandidate] = []
    for gatherer in _gatherers(pc):
        found += gatherer.getLocalCandidates()
    return found


def _gatherers(pc: RTCPeerConnection) -> list[RTCIceGatherer]:
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    gatherers: list[RTCIceGatherer] = []
    for dtls in transports:
        gatherer = dtls.transport.iceGatherer
        if gatherer not in gatherers:
            gatherers.append(gatherer)
    return gatherers


async def _gather(gatherer: RTCIceGatherer, plan: GatherPlan, addresses: Sequence[str]) -> None:
    # What aioice 0.13 Connection.gather_candidates does, with the choices above.
    connection: Connection = gatherer._connection
    if connection._local_candidates_start:
        return
    adopt(connection)  # RFC 8445 triggered checks: agent/rtc/checks.py
    connection._local_candidates_start = True
    for component in sorted(connection._components):
        hosts = [] if plan.relay_only else await _hosts(connection, component, addresses)
        connection._protocols += hosts
        connection._local_candidates += [p.local_candidate for p in hosts]
        for candidate, relay in await _from_servers(connection, component, hosts, plan):
            connection._local_candidates.append(candidate)
            if relay is not None:
                connection._protocols.append(relay)
    connection._local_candidates_end = True


async def _hosts(
    connection: Connection, component: int, addresses: Sequence[str]
) -> list[StunProtocol]:
    loop = asyncio.get_running_loop()
    protocols = []
    for address in addresses:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(connection), local_addr=(address, 0)
            )
        except OSError as exc:
            log.info("no host candidate on %s: %s", address, exc)
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
        host, port = transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        protocols.append(protocol)
    return protocols


async def _from_servers(
    connection: Connection, component: int, hosts: Sequence[StunProtocol], plan: GatherPlan
) -> list[_Result]:
    """Server-reflexive and relayed candidates, each server's failure logged, not raised."""
    asking: dict[asyncio.Task[_Result], str] = {}
    if plan.stun is not None:
        url = f"stun:{plan.stun[0]}:{plan.stun[1]}"
        for host in hosts:
            if ipaddress.ip_address(host.local_candidate.host).version == 4:
                asking[asyncio.ensure_future(server_reflexive_candidate(host, plan.stun))] = url
    for turn in plan.turn:
        asking[asyncio.ensure_future(_relay(connection, component, turn, plan))] = turn.url
    if not asking:
        return []
    finished = await _settle(list(asking))
    results = []
    for task, url in asking.items():
        if task not in finished:
            log.info("ICE server %s did not answer in time; going on without it", url)
        elif (error := task.exception()) is not None:
            log.warning("ICE server %s: %s", url, _describe(error))
        else:
            results.append(task.result())
    return results


async def _relay(
    connection: Connection, component: int, turn: TurnServer, plan: GatherPlan
) -> _Result:
    candidate, protocol = await relayed_candidate(
        component=component,
        hide_related_address=plan.relay_only,
        protocol_factory=lambda: StunProtocol(connection),
        turn_server=(turn.host, turn.port),
        turn_username=turn.username,
        turn_password=turn.credential,
        turn_ssl=turn.tls,
        turn_transport=turn.transport,
    )
    # aioice gives every relay of one address the same foundation and priority; one per
    # transport lets ICE tell them apart and prefer UDP (RFC 8445 sections 5.1.1.3, 5.1.2).
    candidate.foundation = candidate_foundation("relay", turn.url, candidate.host)
    candidate.priority = candidate_priority(
        component, "relay", _RELAY_PREFERENCE[turn.transport, turn.tls]
    )
    return candidate, protocol


async def _settle(tasks: list[asyncio.Task[_Result]]) -> set[asyncio.Task[_Result]]:
    """Wait for ``tasks`` until all are done, the deadline passes, or the relay grace ends;
    cancel the rest (closing their sockets) and return the finished ones."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVER_TIMEOUT
    finished: set[asyncio.Task[_Result]] = set()
    pending = set(tasks)
    while pending:
        if any(_relayed(t) for t in finished):
            deadline = min(deadline, loop.time() + RELAY_GRACE)
        timeout = deadline - loop.time()
        if timeout <= 0:
            break
        done, pending = await asyncio.wait(
            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        finished |= done
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    return finished


def _relayed(task: asyncio.Task[_Result]) -> bool:
    return not task.cancelled() and task.exception() is None and task.result()[1] is not None


def _describe(error: BaseException) -> str:
    """What went wrong with a server, without credentials (a TURN 401 names only its code)."""
    if isinstance(error, stun.TransactionFailed):
        code: Any = error.response.attributes.get("ERROR-CODE")
        if code and code[0] == 401:
            return "refused the credentials (401): expired, or a different secret"
        if code:
            return f"answered error {code[0]} {code[1]}"
    if isinstance(error, stun.TransactionTimeout):
        return "no answer (timed out)"
    return str(error) or type(error).__name__
