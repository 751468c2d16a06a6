"""The agent's Prometheus endpoint: a tiny HTTP/1.1 server on a local port.

Only ``GET /metrics`` (and ``HEAD``) is served; a scrape is one short request, so this
stays a few lines of asyncio instead of a web framework in the agent. Requests are bounded
(one line, a few headers, a deadline) and anything else gets a plain error status.

:func:`process_metrics` adds the process's resident memory under the name Prometheus'
own client libraries give it (``process_resident_memory_bytes``), so the usual dashboards
read it; :func:`memory_line` says the same in ``edge-agent status``.

:class:`MetricsSettings` is the ``[metrics]`` table; ``agent.config`` composes it, so this
module stays light to import (no I/O at import, nothing beyond asyncio and pydantic)::

    [metrics]
    enabled = true
    host = "127.0.0.1"    # local by default: a scrape reveals what the device is doing
    port = 9464
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Final

from pydantic import Field

from agent.exposition import CONTENT_TYPE, Exposition
from agent.setting_types import Section

__all__ = [
    "MetricsServer",
    "MetricsSettings",
    "memory_line",
    "process_metrics",
    "resident_memory_bytes",
]

log = logging.getLogger(__name__)

_MAX_HEAD_BYTES: Final = 8 * 1024
_READ_TIMEOUT: Final = 5.0
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class MetricsSettings(Section):
    """The agent's Prometheus endpoint ([metrics]): local by default."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class MetricsServer:
    """Serves ``render()`` at ``http://HOST:PORT/metrics``."""

    def __init__(
        self,
        render: Callable[[], str],
        *,
        host: str,
        port: int,
        read_timeout: float = _READ_TIMEOUT,
    ) -> None:
        self._render = render
        self._read_timeout = read_timeout
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and serve; ``OSError`` if the port is taken."""
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=_MAX_HEAD_BYTES
        )
        log.info("metrics at http://%s:%d/metrics", self._host, self.port)

    async def close(self) -> None:
        """Stop serving."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        try:
            async with asyncio.timeout(self._read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, body = 400, "bad request\n"
        writer.write(_response(status, body, include_body=not head.startswith(b"HEAD ")))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[int, str]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "bad request\n"
        method, target, _ = parts
        if method not in (b"GET", b"HEAD"):
            return 405, "only GET\n"
        if target.split(b"?", 1)[0] != b"/metrics":
            return 404, "see /metrics\n"
        return 200, self._render()


def resident_memory_bytes() -> int | None:
    """This process's resident set size in bytes (``/proc/self/statm``, proc(5)); None
    where there is no procfs."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def process_metrics() -> str:
    """``process_resident_memory_bytes`` as Prometheus text (nothing without procfs)."""
    rss = resident_memory_bytes()
    if rss is None:
        return ""
    out = Exposition("process_")
    out.add("resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss)
    return out.render()


def memory_line(rss: int | None, note: str | None = None) -> str:
    """``memory: 52.1 MB resident``, then ``; note`` when there is one (what the media
    stack adds, for instance)."""
    text = "memory: " + ("?" if rss is None else f"{rss / 1e6:.1f} MB") + " resident"
    return text if note is None else f"{text}; {note}"


def _response(status: int, body: str, *, include_body: bool) -> bytes:
    data = body.encode()
    kind = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (data if include_body else b"")
