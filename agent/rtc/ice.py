"""ICE for calls: explicit servers, host candidates on chosen addresses, mDNS candidates.

* **Servers are always explicit.** aiortc falls back to a public Google STUN server when a
  configuration has no ``iceServers``; offline that costs about five seconds per call, and
  it sends traffic nowhere the operator chose. Every ``RTCConfiguration`` built here lists
  its servers, possibly none.
* **Host candidates can be restricted** to given interfaces or addresses (a camera on a
  LAN that must not offer its VPN or cellular address; loopback for tests). aioice binds
  every address it finds and has no option for this; :mod:`agent.rtc.gather` gathers on
  the addresses chosen here.
* **The transport policy** ``relay`` (W3C WebRTC ``iceTransportPolicy``) offers relayed
  candidates only, for sites that must not expose their addresses to callers.
* **Servers come from the hub per call** (:class:`HubIceServers`): ``GET /api/ice-servers``
  hands out TURN credentials good for an hour or so; an answer is reused for half its
  lifetime, and the configured servers (``[[calls.ice_servers]]``) are added after the
  hub's. A hub without the route, or out of reach, leaves the configured servers alone.
* **mDNS names** in remote candidates (browsers hide host addresses behind them) are
  resolved by :class:`agent.rtc.mdns.MdnsResolver` before aiortc sees them, in SDP and in
  trickled candidates, so they never reach aioice's resolver (see that module for why).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import ifaddr
from aiortc import RTCIceCandidate, RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.sdp import candidate_from_sdp

from agent.compat import check_sdp_hooks
from agent.errors import Codes, RealtimeError
from agent.rtc.mdns import is_mdns_name
from agent.rtc.signaling import IceCandidate

__all__ = [
    "CallIce",
    "HubIceServers",
    "IceOptions",
    "IceServer",
    "all_host_addresses",
    "candidate_to_aiortc",
    "ice_servers",
    "sdp_mdns_names",
    "sdp_with_hosts",
    "select_host_addresses",
    "system_addresses",
]

log = logging.getLogger(__name__)

_CANDIDATE_LINE: Final = "a=candidate:"
_MAX_SERVERS: Final = 8
_FETCH_SECONDS: Final = 5.0  # a call waits this long at most for the hub's answer
_RETRY_SECONDS: Final = 30.0  # after a failed fetch, the configured servers alone this long
_NO_ROUTE_SECONDS: Final = 3600.0  # a hub without /api/ice-servers is asked again after this
_LOOPBACK: Final = ("127.0.0.1", "::1")

check_sdp_hooks()  # candidates and server URLs go through aiortc's own parsers


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server (W3C ``RTCIceServer``)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __repr__(self) -> str:
        # Never a credential in a log line or a traceback.
        hidden = "None" if self.credential is None else "'********'"
        return f"IceServer(urls={self.urls!r}, username={self.username!r}, credential={hidden})"

    def to_aiortc(self) -> RTCIceServer:
        """aiortc's server record."""
        return RTCIceServer(list(self.urls), self.username, self.credential)


@dataclass(frozen=True, slots=True)
class IceOptions:
    """How calls use ICE (from the ``[calls]`` settings; nothing by default)."""

    servers: tuple[IceServer, ...] = ()
    interfaces: tuple[str, ...] = ()  # host candidates only on these interfaces...
    addresses: tuple[str, ...] = ()  # ...and these addresses; neither: every address
    ipv6: bool = True
    mdns: bool = True  # resolve remote mDNS candidates ourselves
    mdns_timeout: float = 1.0
    transport_policy: str = "all"  # "all" | "relay"

    @property
    def relay_only(self) -> bool:
        """Whether only relayed candidates may be used."""
        return self.transport_policy == "relay"


@dataclass(frozen=True, slots=True)
class CallIce:
    """The ICE servers and policy of one call."""

    servers: tuple[IceServer, ...] = ()
    relay_only: bool = False


class HubIceServers:
    """ICE servers from the hub (``GET /api/ice-servers``), reused until half their TTL.

    ``fetch`` returns the hub's JSON answer (``{"iceServers": [...], "ttl": N,
    "iceTransportPolicy": ...}``) or raises :class:`RealtimeError`. The servers of
    ``options`` follow the hub's, and the ``relay`` policy of either side wins.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Any]],
        options: IceOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._options = options
        self._clock = clock
        self._cached = CallIce(options.servers, options.relay_only)
        self._until = 0.0  # reuse the cached answer until then
        self._lock = asyncio.Lock()

    async def get(self) -> CallIce:
        """The servers for a call now: cached, fetched, or the configured ones."""
        async with self._lock:
            if self._clock() >= self._until:
                await self._refresh()
            return self._cached

    async def _refresh(self) -> None:
        try:
            async with asyncio.timeout(_FETCH_SECONDS):
                answer = parse_ice_answer(await self._fetch())
        except (RealtimeError, TimeoutError) as exc:
            missing = isinstance(exc, RealtimeError) and exc.code == Codes.NOT_FOUND
            if not missing:
                log.warning("ICE servers not fetched from the hub (%s); using the configured", exc)
            self._cached = CallIce(self._options.servers, self._options.relay_only)
            self._until = self._clock() + (_NO_ROUTE_SECONDS if missing else _RETRY_SECONDS)
            return
        servers, ttl, relay_only = answer
        self._cached = CallIce(
            (*servers, *self._options.servers)[:_MAX_SERVERS],
            relay_only or self._options.relay_only,
        )
        self._until = self._clock() + ttl / 2


def parse_ice_answer(payload: Any) -> tuple[tuple[IceServer, ...], float, bool]:
    """(servers, ttl seconds, relay only) of the hub's ``/api/ice-servers`` answer.

    Raises:
        RealtimeError: ERROR naming what is wrong with the answer.
    """
    if not isinstance(payload, Mapping):
        raise RealtimeError(Codes.ERROR, "The hub's ICE servers answer is not an object.")
    ttl = payload.get("ttl")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
        raise RealtimeError(Codes.ERROR, "The hub's ICE servers answer has no positive ttl.")
    try:
        servers = ice_servers(payload.get("iceServers") or [], ())
    except RealtimeError as exc:
        raise RealtimeError(Codes.ERROR, f"The hub's ICE servers: {exc.message}") from exc
    return tuple(servers), float(ttl), payload.get("iceTransportPolicy") == "relay"


def ice_servers(ice: Any, default: Sequence[IceServer]) -> list[IceServer]:
    """The servers for ``ice`` (a URL, a list of URLs or server dicts, or None: ``default``).

    Raises:
        RealtimeError: INVALID_PARAMETER naming a malformed server.
    """
    if ice is None:
        return list(default)
    items = [ice] if isinstance(ice, str | Mapping | IceServer) else ice
    if not isinstance(items, Iterable):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"ice" must be a URL or a list of servers.')
    servers = [_server(item) for item in items if item != ""]
    if len(servers) > _MAX_SERVERS:
        raise RealtimeError(Codes.INVALID_PARAMETER, f"At most {_MAX_SERVERS} ICE servers.")
    return servers


def _server(item: Any) -> IceServer:
    if isinstance(item, IceServer):
        server = item
    elif isinstance(item, str):
        server = IceServer((item,))
    elif isinstance(item, Mapping):
        urls = item.get("urls")
        urls = (urls,) if isinstance(urls, str) else tuple(urls or ())
        server = IceServer(urls, item.get("username"), item.get("credential"))
    else:
        raise RealtimeError(Codes.INVALID_PARAMETER, "An ICE server is a URL or {urls, ...}.")
    if not server.urls:
        raise RealtimeError(Codes.INVALID_PARAMETER, "An ICE server needs at least one URL.")
    for url in server.urls:
        try:
            parse_stun_turn_uri(url)
        except (ValueError, TypeError) as exc:
            raise RealtimeError(
                Codes.INVALID_PARAMETER, f"Bad ICE server URL {url!r}: {exc}."
            ) from exc
    return server


# -- host addresses ----------------------------------------------------------------------


def system_addresses() -> list[tuple[str, str]]:
    """(interface, address) for every address of this machine (IPv6 only if global)."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.append((str(adapter.nice_name), ip.ip))
            elif ip.ip[2] == 0:  # scope id 0: not link-local, as aioice also requires
                found.append((str(adapter.nice_name), ip.ip[0]))
    return found


def all_host_addresses(available: Iterable[tuple[str, str]], *, ipv6: bool) -> list[str]:
    """Every address of ``available`` to gather on when nothing is restricted: what aioice
    itself would choose (all but 127.0.0.1 and ::1; IPv6 only with ``ipv6``)."""
    chosen: list[str] = []
    for _interface, address in available:
        if address in _LOOPBACK or address in chosen:
            continue
        if ipv6 or ipaddress.ip_address(address).version == 4:
            chosen.append(address)
    return chosen


def select_host_addresses(
    available: Iterable[tuple[str, str]], options: IceOptions
) -> list[str] | None:
    """The addresses to gather host candidates on; None when nothing is restricted."""
    if not options.interfaces and not options.addresses:
        return None
    wanted = {_normal(a) for a in options.addresses}
    chosen: list[str] = []
    for interface, address in available:
        if interface not in options.interfaces and _normal(address) not in wanted:
            continue
        if not options.ipv6 and ipaddress.ip_address(address).version == 6:
            continue
        if address not in chosen:
            chosen.append(address)
    missing = wanted - {_normal(a) for a in chosen}
    if missing:
        log.warning("host candidate address(es) not on this machine: %s", ", ".join(missing))
    return chosen


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


# -- remote candidates -------------------------------------------------------------------


def candidate_to_aiortc(candidate: IceCandidate) -> RTCIceCandidate:
    """aiortc's candidate for a (checked) trickled candidate."""
    result = candidate_from_sdp(candidate.candidate)
    result.sdpMid = candidate.sdp_mid
    result.sdpMLineIndex = candidate.sdp_mline_index
    return result


def sdp_mdns_names(sdp: str) -> set[str]:
    """The mDNS names of the candidates in ``sdp``."""
    names = set()
    for line in sdp.splitlines():
        if line.startswith(_CANDIDATE_LINE):
            fields = line.split()
            if len(fields) > 4 and is_mdns_name(fields[4]):
                names.add(fields[4])
    return names


def sdp_with_hosts(sdp: str, resolved: Mapping[str, str | None]) -> str:
    """``sdp`` with each mDNS candidate's name replaced by its address, or dropped."""
    lines = []
    for line in sdp.splitlines(keepends=True):
        fields = line.split() if line.startswith(_CANDIDATE_LINE) else []
        if len(fields) > 4 and fields[4] in resolved:
            address = resolved[fields[4]]
            if address is None:
                continue
            fields[4] = address
            lines.append(" ".join(fields) + line[len(line.rstrip("\r\n")) :])
        else:
            lines.append(line)
    return "".join(lines)
