"""Resolving the mDNS ``.local`` names that browsers put in ICE candidates.

Browsers hide their host addresses behind random ``UUID.local`` names (RFC 8838's mDNS
ICE candidates, draft-ietf-rtcweb-mdns-ice-candidates) and answer multicast DNS queries
for them (RFC 6762). aioice resolves these with dnspython, whose current releases refuse
the answer Chromium sends: Chromium appends an NSEC record whose "next domain name" uses
name compression, dnspython raises ``DecompressionForbidden`` for the whole message, and
every such candidate waits out aioice's one-second timeout before it is dropped.

This module parses only what it needs (A and AAAA answers, any other record skipped by
its length) and so reads Chromium's answers as they are:

* :func:`encode_query` and :func:`parse_answers` are pure and never raise;
* :class:`MdnsResolver` sends one-shot queries from port 5353 (Chromium answers neither
  legacy unicast queries from other ports nor QU questions, RFC 6762 sections 5.4 and
  6.7) on each allowed interface, caches answers and announcements for their TTL, and
  resolves concurrent lookups of one name with one query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

__all__ = [
    "MDNS_ADDRESS",
    "MDNS_PORT",
    "MdnsRecord",
    "MdnsResolver",
    "encode_query",
    "is_mdns_name",
    "parse_answers",
]

log = logging.getLogger(__name__)

MDNS_ADDRESS: Final = "224.0.0.251"
MDNS_PORT: Final = 5353
TYPE_A: Final = 1
TYPE_AAAA: Final = 28
_CLASS_IN: Final = 1
_CACHE_FLUSH: Final = 0x8000  # RFC 6762 section 10.2: the top bit of an answer's class
_FLAG_RESPONSE: Final = 0x8000
_HEADER: Final = struct.Struct("!HHHHHH")
_RR: Final = struct.Struct("!HHIH")
_QUESTION: Final = struct.Struct("!HH")
_MAX_MESSAGE: Final = 9000  # RFC 6762 section 17
_MAX_POINTERS: Final = 16
_MAX_NAME: Final = 255
_MAX_RECORDS: Final = 64
_MAX_TTL: Final = 120.0  # what browsers publish; an answer is not trusted for longer
_NAME_RE: Final = re.compile(r"^(?:[A-Za-z0-9-]{1,63}\.)+local\.?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class MdnsRecord:
    """One address answer: ``name`` lower-cased without the final dot."""

    name: str
    address: str
    ttl: int


def is_mdns_name(host: str) -> bool:
    """Whether ``host`` is an mDNS name (``something.local``)."""
    return len(host) <= 253 and _NAME_RE.match(host) is not None


def encode_query(name: str, qtype: int = TYPE_A) -> bytes:
    """A one-shot query (id 0, QM) for ``name`` (RFC 6762 sections 5.1 and 18)."""
    question = b"".join(bytes([len(label)]) + label.encode("ascii") for label in _labels(name))
    return _HEADER.pack(0, 0, 1, 0, 0, 0) + question + b"\x00" + _QUESTION.pack(qtype, _CLASS_IN)


def parse_answers(data: bytes) -> list[MdnsRecord]:
    """The A and AAAA records of an mDNS response; ``[]`` for anything else or malformed."""
    if len(data) > _MAX_MESSAGE or len(data) < _HEADER.size:
        return []
    _id, flags, questions, *counts = _HEADER.unpack_from(data)
    if not flags & _FLAG_RESPONSE:
        return []
    try:
        offset = _HEADER.size
        for _ in range(questions):
            _name, offset = _read_name(data, offset)
            offset += _QUESTION.size
        return _read_records(data, offset, min(sum(counts), _MAX_RECORDS))
    except (ValueError, IndexError, struct.error):
        return []


def _read_records(data: bytes, offset: int, count: int) -> list[MdnsRecord]:
    records = []
    for _ in range(count):
        name, offset = _read_name(data, offset)
        rtype, rclass, ttl, length = _RR.unpack_from(data, offset)
        offset += _RR.size
        rdata = data[offset : offset + length]
        if len(rdata) != length:
            raise ValueError("record runs past the message")
        offset += length
        if rclass & ~_CACHE_FLUSH != _CLASS_IN:
            continue
        if rtype == TYPE_A and length == 4:
            records.append(MdnsRecord(name, socket.inet_ntop(socket.AF_INET, rdata), ttl))
        elif rtype == TYPE_AAAA and length == 16:
            records.append(MdnsRecord(name, socket.inet_ntop(socket.AF_INET6, rdata), ttl))
    return records


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed, RFC 1035 section 4.1.4) name and the offset after it."""
    labels: list[str] = []
    end: int | None = None
    size = 0
    for _ in range(_MAX_POINTERS + _MAX_NAME):
        length = data[offset]
        if length == 0:
            return ".".join(labels).lower(), (end if end is not None else offset + 1)
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length & 0xC0:
            raise ValueError("unknown label type")
        label = data[offset + 1 : offset + 1 + length]
        size += length + 1
        if len(label) != length or size > _MAX_NAME:
            raise ValueError("bad label")
        labels.append(label.decode("ascii", errors="replace"))
        offset += length + 1
    raise ValueError("name has too many labels or pointers")


def _labels(name: str) -> list[str]:
    if not is_mdns_name(name):
        raise ValueError(f"{name!r} is not an mDNS name")
    return name.rstrip(".").split(".")


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_records: Callable[[list[MdnsRecord]], None]) -> None:
        self._on_records = on_records

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        records = parse_answers(data)
        if records:
            self._on_records(records)

    def error_received(self, exc: Exception) -> None:
        log.debug("mDNS socket error: %s", exc)


class MdnsResolver:
    """Resolves ``.local`` names over multicast DNS, with a cache shared by every call."""

    def __init__(
        self,
        *,
        interfaces: Sequence[str] = (),
        timeout: float = 1.0,
        retry_after: float = 0.25,
        cache_size: int = 256,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Prepare a resolver; its socket opens on the first lookup.

        Args:
            interfaces: IPv4 addresses of the interfaces to query on (default: the
                system's choice for multicast).
            timeout: Seconds to wait for an answer before giving up on a name.
            retry_after: Seconds before the query is sent a second time (lost packets).
            cache_size: Names remembered (answers and announcements heard).
            clock: Monotonic seconds (tests); the event loop's clock by default.
        """
        self._interfaces = tuple(interfaces)
        self._timeout = timeout
        self._retry_after = retry_after
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._opening = asyncio.Lock()
        self._unavailable = False
        self.queries = 0

    async def resolve(self, name: str) -> str | None:
        """The address of ``name``, or None when nobody answered in time."""
        if not is_mdns_name(name):
            return None
        key = _key(name)
        cached = self._cached(key)
        if cached is not None:
            return cached
        transport = await self._open()
        if transport is None:
            return None
        cached = self._cached(key)  # answered while this lookup waited for the socket
        if cached is not None:
            return cached
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        first = key not in self._waiters
        self._waiters.setdefault(key, set()).add(future)
        try:
            return await self._await_answer(transport, key, future, send=first)
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[key]

    def close(self) -> None:
        """Close the socket; pending lookups end with None."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()

    async def _await_answer(
        self,
        transport: asyncio.DatagramTransport,
        key: str,
        future: asyncio.Future[str],
        *,
        send: bool,
    ) -> str | None:
        first_wait = min(self._retry_after, self._timeout)
        if send:
            self._query(transport, key)
        done, _ = await asyncio.wait({future}, timeout=first_wait)
        if not done:
            if send:
                self._query(transport, key)  # once more, in case a packet was lost
            await asyncio.wait({future}, timeout=self._timeout - first_wait)
        if future.done() and not future.cancelled():
            return future.result()
        log.info("mDNS name %s did not resolve within %.1f s", key, self._timeout)
        return None

    def _query(self, transport: asyncio.DatagramTransport, key: str) -> None:
        # Browsers name one address per name; ask for both families and take either.
        packets = [encode_query(key, TYPE_A), encode_query(key, TYPE_AAAA)]
        sock = cast(socket.socket, transport.get_extra_info("socket"))
        for interface in self._interfaces or (None,):
            with contextlib.suppress(OSError):
                if interface is not None:
                    sock.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
                    )
                for packet in packets:
                    transport.sendto(packet, (MDNS_ADDRESS, MDNS_PORT))
        self.queries += 1

    def _heard(self, records: list[MdnsRecord]) -> None:
        now = self._now()
        for record in records:
            if not is_mdns_name(record.name):
                continue
            if record.ttl == 0:  # RFC 6762 section 10.1: a goodbye
                self._cache.pop(record.name, None)
                continue
            self._cache[record.name] = (record.address, now + min(record.ttl, _MAX_TTL))
            self._cache.move_to_end(record.name)
            for future in self._waiters.get(record.name, ()):
                if not future.done():
                    future.set_result(record.address)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _cached(self, key: str) -> str | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        address, expires = entry
        if expires <= self._now():
            del self._cache[key]
            return None
        return address

    async def _open(self) -> asyncio.DatagramTransport | None:
        async with self._opening:
            if self._transport is None and not self._unavailable:
                try:
                    sock = _multicast_socket(self._interfaces)
                    loop = asyncio.get_running_loop()
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Protocol(self._heard), sock=sock
                    )
                except OSError as exc:
                    self._unavailable = True
                    log.warning("mDNS candidates cannot be resolved: %s", exc)
                    return None
                self._transport = transport
        return self._transport

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()


def _multicast_socket(interfaces: Sequence[str]) -> socket.socket:
    """A socket on port 5353 in the mDNS group on ``interfaces`` (RFC 6762 section 11)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # share the port with avahi and browsers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.bind(("", MDNS_PORT))
        _join(sock, interfaces)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _join(sock: socket.socket, interfaces: Sequence[str]) -> None:
    """Join the mDNS group on each interface (the default one if none); OSError if none."""
    any_interface = struct.pack("!I", socket.INADDR_ANY)
    joined = 0
    for interface in interfaces or (None,):
        local = socket.inet_aton(interface) if interface is not None else any_interface
        try:
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(MDNS_ADDRESS) + local
            )
            joined += 1
        except OSError as exc:
            log.debug("mDNS group not joined on %s: %s", interface or "the default", exc)
    if not joined:
        raise OSError("the mDNS group could not be joined on any interface")
