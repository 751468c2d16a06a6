"""The ``control`` data channel: JSON commands in, one answer per command out.

Request (one JSON text message)::

    {"id": 7, "command": "status"}
    {"id": 8, "command": "snapshot"}

Answer, with the request's ``id`` (``null`` if it had none)::

    {"id": 7, "ok": true, "result": {...}}
    {"id": 9, "ok": false, "error": {"code": "INVALID_REQUEST", "message": "..."}}

Binary results (``snapshot``'s JPEG) come as a result that describes them, followed by
``chunks`` messages carrying the data in base64, in order (each well under the 64 KiB a
peer must accept, RFC 8841 section 6)::

    {"id": 8, "ok": true, "result": {"mime": "image/jpeg", "bytes": 48213,
                                     "encoding": "base64", "chunks": 2}}
    {"id": 8, "chunk": 0, "data": "/9j/4AAQ..."}
    {"id": 8, "chunk": 1, "data": "..."}

The device may also send unsolicited notices without an ``id``, e.g. a camera that went
away: ``{"type": "error", "code": "DEVICE_NOT_FOUND", "message": ..., "device": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.errors import Codes, RealtimeError
from agent.rtc.datachannels import ChannelSession

__all__ = [
    "CHUNK_BYTES",
    "Blob",
    "ControlCommand",
    "ControlServer",
    "Request",
    "blob_messages",
    "error_answer",
    "parse_request",
]

log = logging.getLogger(__name__)

ControlCommand = Callable[[Mapping[str, Any]], Awaitable[Any]]
CHUNK_BYTES: Final = 36 * 1024  # 48 KiB of base64 text per message
_MAX_REQUEST: Final = 16 * 1024
_COMMAND_TIMEOUT: Final = 30.0
_USAGE: Final = 'Control messages are JSON objects like {"id": 1, "command": "status"}.'


@dataclass(frozen=True, slots=True)
class Request:
    """One command."""

    id: str | int | float | None
    command: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Blob:
    """A binary result (sent in base64 chunks)."""

    mime: str
    data: bytes


def error_answer(request_id: Any, code: str, message: str) -> dict[str, Any]:
    """The answer for a command that failed."""
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def parse_request(data: str | bytes) -> Request | dict[str, Any]:
    """A request from one message, or the error answer to send back. Never raises."""
    if isinstance(data, bytes):
        return error_answer(
            None, Codes.INVALID_REQUEST, "Binary messages are not commands. " + _USAGE
        )
    if len(data) > _MAX_REQUEST:
        return error_answer(
            None, Codes.INVALID_REQUEST, f"A command is at most {_MAX_REQUEST} characters."
        )
    try:
        value = json.loads(data)
    except ValueError:
        return error_answer(None, Codes.INVALID_REQUEST, _USAGE)
    if not isinstance(value, dict):
        return error_answer(None, Codes.INVALID_REQUEST, _USAGE)
    request_id = value.get("id")
    if not (request_id is None or isinstance(request_id, str | int | float)):
        request_id = None
    command = value.get("command")
    if not isinstance(command, str) or not command:
        return error_answer(request_id, Codes.INVALID_REQUEST, '"command" is required. ' + _USAGE)
    args = {k: v for k, v in value.items() if k not in ("id", "command")}
    return Request(request_id, command, args)


def blob_messages(request_id: Any, blob: Blob) -> Iterator[dict[str, Any]]:
    """The result message describing ``blob``, then its chunks."""
    chunks = max(1, -(-len(blob.data) // CHUNK_BYTES))
    yield {
        "id": request_id,
        "ok": True,
        "result": {
            "mime": blob.mime,
            "bytes": len(blob.data),
            "encoding": "base64",
            "chunks": chunks,
        },
    }
    for index in range(chunks):
        part = blob.data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
        yield {"id": request_id, "chunk": index, "data": base64.b64encode(part).decode()}


class ControlServer:
    """Serves ``control`` channels with a table of commands."""

    def __init__(self, commands: Mapping[str, ControlCommand]) -> None:
        self.commands = dict(commands)

    async def serve(self, session: ChannelSession) -> None:
        """Answer every command of one channel, in order, until it closes."""
        async for data in session.messages():
            for answer in await self.answer(data):
                if not session.send_json(answer):
                    return

    async def answer(self, data: str | bytes) -> list[dict[str, Any]]:
        """The messages answering one request."""
        request = parse_request(data)
        if isinstance(request, dict):
            return [request]
        try:
            result = await self._run(request)
        except RealtimeError as exc:
            return [error_answer(request.id, exc.code, exc.message)]
        if isinstance(result, Blob):
            return list(blob_messages(request.id, result))
        return [{"id": request.id, "ok": True, "result": result}]

    async def _run(self, request: Request) -> Any:
        """The command's result; RealtimeError with what the caller should read."""
        command = self.commands.get(request.command)
        if command is None:
            known = ", ".join(sorted(self.commands))
            raise RealtimeError(
                Codes.INVALID_REQUEST, f'Unknown command "{request.command}". Known: {known}.'
            )
        try:
            async with asyncio.timeout(_COMMAND_TIMEOUT):
                return await command(request.args)
        except RealtimeError:
            raise
        except TimeoutError as exc:
            raise RealtimeError(
                Codes.ERROR, f'"{request.command}" did not finish in time.'
            ) from exc
        except Exception as exc:  # internals stay in the log, not on the wire
            log.exception("control command %r failed", request.command)
            raise RealtimeError(Codes.ERROR, f'"{request.command}" failed.') from exc
