"""The control socket over a real unix socket: `trigger NAME` fires the rule in the engine."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.errors import EdgeAgentError
from agent.events import ActionHandlers, ControlError, ControlServer, EventEngine, EventRule
from agent.events.control import (
    MAX_REQUEST_BYTES,
    ControlRequest,
    control_socket_path,
    encode_message,
    parse_request,
    request,
    send_trigger,
)

TIMEOUT = 10.0


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return control_socket_path(tmp_path)


async def ask(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    """Send raw lines on one connection; the answers."""
    import json

    reader, writer = await asyncio.open_unix_connection(str(path))
    answers = []
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), TIMEOUT)
            answers.append(json.loads(answer))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


async def test_trigger_over_the_socket_fires_the_rule(sock_path: Path) -> None:
    posted: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def post(group: str, payload: dict[str, Any]) -> None:
        posted.put_nowait(payload)

    bell = EventRule.model_validate(
        {
            "name": "bell",
            "trigger": {"type": "manual"},
            "actions": [{"type": "post"}],
            "cooldown": 60,
        }
    )
    engine = EventEngine(
        [bell], device="porch", groups=["family"], actions=ActionHandlers(post=post)
    )
    async with engine, ControlServer(sock_path, engine.control_handlers()):
        mode = (await asyncio.to_thread(os.stat, sock_path)).st_mode
        assert stat.S_IMODE(mode) == 0o600
        answer = await asyncio.to_thread(send_trigger, sock_path, "bell")
        assert answer == {"ok": True, "outcome": "fired", "message": "event 'bell' fired"}
        payload = await asyncio.wait_for(posted.get(), TIMEOUT)
        assert (payload["name"], payload["trigger"], payload["device"]) == (
            "bell",
            "manual",
            "porch",
        )

        again = await asyncio.to_thread(send_trigger, sock_path, "bell")
        assert again["outcome"] == "cooldown"
        with pytest.raises(
            ControlError, match="no manual rule named 'ring' \\(manual rules: 'bell'\\)"
        ):
            await asyncio.to_thread(send_trigger, sock_path, "ring")
    assert not await asyncio.to_thread(os.path.exists, sock_path)
    assert posted.empty()


async def test_bad_requests_get_clear_answers_and_the_server_keeps_serving(sock_path: Path) -> None:
    async def echo(args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "args": args}

    async with ControlServer(sock_path, {"echo": echo}):
        answers = await ask(
            sock_path,
            b"not json\n",
            b"[1]\n",
            b'{"name": "x"}\n',
            b'{"op": "launch"}\n',
            b'{"op": "echo", "n": 1}\n',
        )
        assert [a.get("error") for a in answers[:4]] == [
            "a request is one JSON object per line",
            "a request is one JSON object per line",
            'a request needs an operation: {"op": "trigger", "name": "..."}',
            "unknown operation 'launch' (known: echo)",
        ]
        assert answers[4] == {"ok": True, "args": {"op": "echo", "n": 1}}
        (too_long,) = await ask(
            sock_path, b'{"op": "echo", "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}\n'
        )
        assert too_long == {"ok": False, "error": f"a request is at most {MAX_REQUEST_BYTES} bytes"}
        (still,) = await ask(sock_path, b'{"op": "echo"}\n')
        assert still["ok"] is True


async def test_failing_handlers(sock_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def refuses(args: dict[str, Any]) -> dict[str, Any]:
        raise EdgeAgentError("camera is busy")

    async def crashes(args: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("internal detail")

    server = ControlServer(sock_path)
    server.add_handlers({"refuses": refuses, "crashes": crashes})
    async with server:
        refused, crashed = await ask(sock_path, b'{"op": "refuses"}\n', b'{"op": "crashes"}\n')
    assert refused == {"ok": False, "error": "camera is busy"}
    assert crashed == {"ok": False, "error": "operation 'crashes' failed; see the agent's log"}
    assert "internal detail" not in crashed["error"]
    assert any("control operation 'crashes' failed" in r.getMessage() for r in caplog.records)


async def test_request_answers_and_errors(sock_path: Path) -> None:
    async def status(args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "state": "connected"}

    with pytest.raises(ControlError, match="no agent is running") as info:
        request(sock_path, {"op": "status"})
    assert info.value.path == sock_path
    async with ControlServer(sock_path, {"status": status}):
        answer = await asyncio.to_thread(request, sock_path, {"op": "status"})
        assert answer == {"ok": True, "state": "connected"}
        with pytest.raises(ControlError, match="unknown operation 'trigger'"):
            await asyncio.to_thread(send_trigger, sock_path, "x")


async def test_a_silent_agent_times_out(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(sock_path))
        mute.listen()
        with pytest.raises(ControlError, match=r"did not answer within 0\.2 s"):
            await asyncio.to_thread(request, sock_path, {"op": "status"}, timeout=0.2)


async def test_an_answer_that_is_not_json(sock_path: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(sock_path))
    async with server:
        with pytest.raises(ControlError, match="answer is not understood: b'hello\\\\n'"):
            await asyncio.to_thread(request, sock_path, {"op": "status"})


async def test_stale_socket_is_replaced_live_one_is_not(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock_path))  # bound and closed: a crashed agent's leftover
    async with ControlServer(sock_path, {}):
        with pytest.raises(ControlError, match="another agent is serving"):
            await ControlServer(sock_path).start()
        # The running server still answers (and has seen the probe's connection through).
        (answer,) = await ask(sock_path, b'{"op": "status"}\n')
        assert answer["error"] == "unknown operation 'status' (known: none)"


async def test_refuses_to_replace_a_file(sock_path: Path) -> None:
    await asyncio.to_thread(sock_path.write_text, "precious")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        await ControlServer(sock_path).start()
    assert await asyncio.to_thread(sock_path.read_text) == "precious"


async def test_path_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / "control.sock"
    with pytest.raises(ControlError, match="longer than the 107 bytes"):
        await ControlServer(deep).start()


async def test_close_leaves_a_newer_agents_socket(sock_path: Path) -> None:
    server = ControlServer(sock_path, {})
    await server.start()
    os.unlink(sock_path)
    async with ControlServer(sock_path, {}):
        await server.close()
        assert await asyncio.to_thread(os.path.exists, sock_path)
    await server.close()  # closing twice is harmless


def test_protocol_is_pure() -> None:
    assert parse_request(b'{"op": "trigger", "name": "x"}') == ControlRequest(
        "trigger", {"op": "trigger", "name": "x"}
    )
    assert (
        parse_request(b'{"op": ""}')
        == 'a request needs an operation: {"op": "trigger", "name": "..."}'
    )
    assert parse_request(b"[" * 5000) == "a request is one JSON object per line"
    assert encode_message({"ok": True}) == b'{"ok":true}\n'
