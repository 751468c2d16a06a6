"""The agent's metrics endpoint over a real socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent.metrics import MetricsServer

BODY = "# HELP edge_agent_up Up.\n# TYPE edge_agent_up gauge\nedge_agent_up 1\n"


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    metrics = MetricsServer(lambda: BODY, host="127.0.0.1", port=0, read_timeout=0.5)
    await metrics.start()
    yield metrics
    await metrics.close()


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_get_metrics(server: MetricsServer) -> None:
    answer = await exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(BODY)}".encode() in head
    assert body.decode() == BODY


async def test_head_has_no_body(server: MetricsServer) -> None:
    answer = await exchange(server.port, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET / HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics\r\n\r\n", b"400"),
        (b"hello\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n", b"400"),  # never finishes its head: timed out
    ],
)
async def test_bad_requests_get_a_plain_status(
    server: MetricsServer, request_bytes: bytes, status: bytes
) -> None:
    answer = await exchange(server.port, request_bytes)
    assert answer.split(b" ")[1] == status
    # The server keeps serving others afterwards.
    good = await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert good.endswith(BODY.encode())
