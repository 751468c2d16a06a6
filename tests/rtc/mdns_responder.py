"""A multicast DNS responder that answers like Chromium does for its ICE candidate names.

Chromium answers an A question for one of its ``UUID.local`` names with the A record
(cache-flush bit set) and an NSEC record in the additional section whose "next domain
name" is a compression pointer to the answer's name. dnspython refuses that message
(``DecompressionForbidden``), which is why aioice cannot resolve browsers' candidates.
Only for tests and benchmarks, inside a network namespace.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from agent.rtc.mdns import MDNS_ADDRESS, MDNS_PORT, TYPE_A

__all__ = ["ChromiumLikeResponder", "chromium_answer"]

_HEADER = struct.Struct("!HHHHHH")
_TYPE_NSEC = 47
_CACHE_FLUSH_IN = 0x8001


def chromium_answer(name: str, address: str) -> bytes:
    """Chromium's answer for ``name`` -> ``address`` (IPv4)."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    answer = labels + struct.pack("!HHIH", TYPE_A, _CACHE_FLUSH_IN, 120, 4)
    answer += socket.inet_aton(address)
    # NSEC (RFC 4034 section 4): next name as a pointer to offset 12, bitmap "A only".
    nsec_rdata = b"\xc0\x0c" + b"\x00\x01\x40"
    nsec = b"\xc0\x0c" + struct.pack("!HHIH", _TYPE_NSEC, _CACHE_FLUSH_IN, 120, len(nsec_rdata))
    return _HEADER.pack(0, 0x8400, 0, 1, 0, 1) + answer + nsec + nsec_rdata


def _questions(data: bytes) -> list[tuple[str, int]]:
    _id, flags, count, *_ = _HEADER.unpack_from(data)
    if flags & 0x8000:
        return []
    found, offset = [], _HEADER.size
    for _ in range(count):
        labels = []
        while data[offset]:
            length = data[offset]
            labels.append(data[offset + 1 : offset + 1 + length].decode())
            offset += length + 1
        qtype, _qclass = struct.unpack_from("!HH", data, offset + 1)
        offset += 5
        found.append((".".join(labels).lower(), qtype))
    return found


class ChromiumLikeResponder(asyncio.DatagramProtocol):
    """Answers A questions for published names on one interface."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.questions = 0
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def start(cls, interface: str) -> ChromiumLikeResponder:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("", MDNS_PORT))
        membership = socket.inet_aton(MDNS_ADDRESS) + socket.inet_aton(interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        loop = asyncio.get_running_loop()
        _, responder = await loop.create_datagram_endpoint(cls, sock=sock)
        return responder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def publish(self, name: str, address: str) -> None:
        self.names[name.lower()] = address

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            questions = _questions(data)
        except (IndexError, struct.error, UnicodeDecodeError):
            return
        for name, qtype in questions:
            address = self.names.get(name)
            if address is not None and qtype == TYPE_A and self.transport is not None:
                self.questions += 1
                self.transport.sendto(chromium_answer(name, address), (MDNS_ADDRESS, MDNS_PORT))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
