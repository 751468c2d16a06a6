"""A minimal WebSocket client for benchmarks: thousands of them in one process, counting frames.

A full client library per connection (a reader task, a message queue, UTF-8 decoding)
would make the benchmark process the bottleneck and hide the server under test. This one
is an ``asyncio.Protocol`` that does only what RFC 6455 requires of a well-behaved client
here: the opening handshake, masked frames out (section 5.3), pongs to pings (5.5.3).
Incoming data frames are counted, optionally timestamped, and never decoded.

It trusts the server it talks to (no ``Sec-WebSocket-Accept`` check, no fragmented
messages expected): both servers benchmarked are started by the benchmark itself.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Sequence
from typing import Final

__all__ = ["BenchError", "RawClient", "Tally", "abort_all", "encode_client_frame", "open_clients"]

_OP_TEXT: Final = 0x1
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA
_HANDSHAKE_SECONDS: Final = 60.0


class BenchError(Exception):
    """The benchmark could not measure: a server failed, timed out or refused."""


def encode_client_frame(payload: bytes, opcode: int = _OP_TEXT) -> bytes:
    """One final client frame, masked with a fresh key (RFC 6455 section 5.3)."""
    key = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    keystream = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
        size, "big"
    )
    return head + key + masked


class Tally:
    """What a measuring step waits for: every client reaching ``target`` data frames, or
    every client seeing a frame that contains ``marker``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.target = 0
        self.marker: bytes | None = None
        self.remaining = 0
        self.done = asyncio.Event()
        self.error: BenchError | None = None

    def expect(self, clients: int, *, target: int = 0, marker: bytes | None = None) -> None:
        """Start a step over ``clients`` clients."""
        self.target, self.marker, self.remaining = target, marker, clients
        self.done.clear()

    def arrived(self) -> None:
        """One client has what the step waits for."""
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    def fail(self, error: BenchError) -> None:
        """A client saw something that ends the benchmark; the waiter raises it."""
        if self.error is None:
            self.error = error
        self.done.set()

    async def wait(self) -> None:
        """Until the step is complete; raises the first client failure."""
        await self.done.wait()
        if self.error is not None:
            raise self.error


class RawClient(asyncio.Protocol):
    """One client connection: handshake, then counts (and may timestamp) data frames."""

    def __init__(self, tally: Tally, request: bytes) -> None:
        self.tally = tally
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.frames = 0
        # Arrival times (time.perf_counter) of data frames, while a step records them.
        self.stamps: list[float] | None = None
        # The last frame that contained the tally's marker (the server's frame, as sent).
        self.seen = b""
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        """A connection the benchmark did not close ends the benchmark."""
        error = BenchError(f"{self.tally.label}: a client connection was lost ({exc or 'EOF'})")
        if not self.upgraded.done():
            self.upgraded.set_exception(error)
        elif not self.closing:
            self.tally.fail(error)

    def send(self, data: bytes) -> None:
        """Write already-encoded frames."""
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Drop the connection now (RST: no TIME_WAIT left behind on this side)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        """Finish the handshake, then walk the complete frames in the buffer."""
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done() and not self._handshake():
            return
        now = time.perf_counter()
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            size, head = buffer[pos + 1] & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + size:
                break
            opcode = buffer[pos] & 0x0F
            start = pos + head
            pos = start + size
            if opcode < _OP_CLOSE:
                self._data_frame(buffer, start, pos, now)
            else:
                self._control_frame(opcode, bytes(buffer[start:pos]))
        del buffer[:pos]

    def _handshake(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        status = bytes(self.buffer[: self.buffer.find(b"\r\n")])
        del self.buffer[: end + 4]
        if b" 101 " not in status:
            self.closing = True
            self.upgraded.set_exception(
                BenchError(
                    f"{self.tally.label}: upgrade refused: {status.decode(errors='replace')}"
                )
            )
            return False
        self.upgraded.set_result(None)
        return True

    def _data_frame(self, buffer: bytearray, start: int, end: int, now: float) -> None:
        tally = self.tally
        if tally.marker is not None:
            if buffer.find(tally.marker, start, end) >= 0:
                self.seen = bytes(buffer[start:end])
                tally.arrived()
            return
        self.frames += 1
        if self.stamps is not None:
            self.stamps.append(now)
        if self.frames == tally.target:
            tally.arrived()

    def _control_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            self.send(encode_client_frame(payload, _OP_PONG))
        elif opcode == _OP_CLOSE and not self.closing:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            reason = payload[2:].decode(errors="replace")
            self.tally.fail(
                BenchError(f"{self.tally.label}: the server closed a client ({code} {reason!r})")
            )


def _upgrade_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _open_one(port: int, path: str, tally: Tally) -> RawClient:
    loop = asyncio.get_running_loop()
    request = _upgrade_request(port, path)
    try:
        _, client = await loop.create_connection(
            lambda: RawClient(tally, request), "127.0.0.1", port
        )
    except OSError as exc:
        raise BenchError(f"{tally.label}: cannot connect to 127.0.0.1:{port}: {exc}") from exc
    try:
        await asyncio.wait_for(asyncio.shield(client.upgraded), _HANDSHAKE_SECONDS)
    except TimeoutError:
        client.close()
        raise BenchError(
            f"{tally.label}: no handshake answer in {_HANDSHAKE_SECONDS:.0f} s"
        ) from None
    return client


async def open_clients(
    port: int, path: str, count: int, tally: Tally, *, batch: int = 200
) -> list[RawClient]:
    """``count`` upgraded clients, ``batch`` handshakes in flight at a time."""
    clients: list[RawClient] = []
    while len(clients) < count:
        size = min(batch, count - len(clients))
        results = await asyncio.gather(
            *(_open_one(port, path, tally) for _ in range(size)), return_exceptions=True
        )
        clients += [r for r in results if isinstance(r, RawClient)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            abort_all(clients)
            raise failure
    return clients


def abort_all(clients: Sequence[RawClient]) -> None:
    """Drop every connection of ``clients``."""
    for client in clients:
        client.close()
