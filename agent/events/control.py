"""The local control socket: how ``edge-agent trigger NAME`` reaches the running agent.

A unix stream socket, ``control.sock`` in the state directory, carrying one JSON object per
line each way::

    -> {"op": "trigger", "name": "doorbell"}
    <- {"ok": true, "outcome": "fired", "message": "event 'doorbell' fired"}
    <- {"ok": false, "error": "no manual rule named 'door' (manual rules: 'doorbell')"}

Operations are handlers registered by name (the events engine offers ``trigger``; the daemon
may add ``status``). Only the agent's own user, or root, gets in: the state directory is
0700, the socket 0600, and the server checks the peer's uid (SO_PEERCRED) as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from agent.errors import EdgeAgentError
from agent.events.errors import ControlError

__all__ = [
    "MAX_REQUEST_BYTES",
    "SOCKET_NAME",
    "ControlRequest",
    "ControlServer",
    "Handler",
    "control_socket_path",
    "encode_message",
    "parse_request",
    "request",
    "send_trigger",
]

log = logging.getLogger(__name__)

SOCKET_NAME: Final = "control.sock"
MAX_REQUEST_BYTES: Final = 4096
_MAX_ANSWER_BYTES: Final = 1 << 20
# A client that connects and says nothing is let go after this long.
_IDLE_SECONDS: Final = 30.0
# sockaddr_un.sun_path holds 108 bytes on Linux, the terminating NUL included (unix(7)).
_MAX_PATH_BYTES: Final = 107
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def control_socket_path(state_dir: Path) -> Path:
    """Where the control socket of the agent with this state directory lives."""
    return state_dir / SOCKET_NAME


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One request: the operation and its arguments (the whole object)."""

    op: str
    args: dict[str, Any]


def parse_request(line: bytes) -> ControlRequest | str:
    """A request from one line, or the error text to answer with."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return "a request is one JSON object per line"
    if not isinstance(value, dict):
        return "a request is one JSON object per line"
    op = value.get("op")
    if not isinstance(op, str) or not op:
        return 'a request needs an operation: {"op": "trigger", "name": "..."}'
    return ControlRequest(op, value)


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One protocol line."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class ControlServer:
    """Serves the control socket at ``path`` with the registered handlers."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler] | None = None) -> None:
        self.path = path
        self._handlers: dict[str, Handler] = dict(handlers or {})
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._inode: int | None = None

    def add_handlers(self, handlers: Mapping[str, Handler]) -> None:
        """Register more operations."""
        self._handlers.update(handlers)

    async def start(self) -> None:
        """Bind the socket (mode 0600); ``ControlError`` if another agent serves it."""
        if len(os.fsencode(self.path)) > _MAX_PATH_BYTES:
            raise ControlError(
                f"the control socket path {self.path} is longer than the {_MAX_PATH_BYTES} "
                "bytes a unix socket allows; use a shorter state directory",
                path=self.path,
            )
        await asyncio.to_thread(_clear_stale, self.path)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES
        )
        self._inode = await asyncio.to_thread(_restrict, self.path)
        log.info("control socket at %s", self.path)

    async def close(self) -> None:
        """Stop serving, end open connections, remove the socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        await server.wait_closed()
        await asyncio.to_thread(_remove_own, self.path, self._inode)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if not _peer_allowed(writer):
                writer.write(encode_message({"ok": False, "error": "permission denied"}))
                return
            await self._conversation(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or fell silent: nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _conversation(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(_IDLE_SECONDS):
                    line = await reader.readline()
            except ValueError:  # longer than the limit: answer, then hang up
                error = f"a request is at most {MAX_REQUEST_BYTES} bytes"
                writer.write(encode_message({"ok": False, "error": error}))
                await writer.drain()
                return
            if not line:
                return
            writer.write(encode_message(await self._answer(line)))
            await writer.drain()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        parsed = parse_request(line)
        if isinstance(parsed, str):
            return {"ok": False, "error": parsed}
        handler = self._handlers.get(parsed.op)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            return {"ok": False, "error": f"unknown operation {parsed.op!r} (known: {known})"}
        try:
            return await handler(parsed.args)
        except EdgeAgentError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:  # a bug: log it here, do not hand internals to the client
            log.exception("control operation %r failed", parsed.op)
            return {"ok": False, "error": f"operation {parsed.op!r} failed; see the agent's log"}


def request(path: Path, message: Mapping[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the agent and return its answer (blocking, for the CLI).

    Raises:
        ControlError: no agent serves ``path``, it may not be used, or it did not answer.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, path)
        try:
            sock.sendall(encode_message(message))
            answer = _read_line(sock)
        except TimeoutError:
            raise ControlError(
                f"the agent did not answer within {timeout:g} s", path=path
            ) from None
        except OSError as exc:
            raise ControlError(f"the control socket {path} failed: {exc}", path=path) from exc
    try:
        value = json.loads(answer)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ControlError(f"the agent's answer is not understood: {answer[:80]!r}", path=path)
    return value


def send_trigger(path: Path, name: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """Fire the manual rule ``name`` in the running agent; ``ControlError`` if refused."""
    answer = request(path, {"op": "trigger", "name": name}, timeout=timeout)
    if answer.get("ok") is not True:
        raise ControlError(str(answer.get("error", "the agent refused the request")), path=path)
    return answer


def _connect(sock: socket.socket, path: Path) -> None:
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            f"no agent is running with the state directory {path.parent} "
            f"(nothing listens on {path})",
            path=path,
        ) from None
    except PermissionError:
        raise ControlError(
            f"not allowed to use {path}: run this as the agent's user (or root)", path=path
        ) from None


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk or len(data) + len(chunk) > _MAX_ANSWER_BYTES:
            break
        data += chunk
    return data


def _clear_stale(path: Path) -> None:
    """Remove a socket file a dead agent left behind; refuse to take over a live one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; remove it", path=path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return
    raise ControlError(
        f"another agent is serving {path}; stop it, or give this one another state directory",
        path=path,
    )


def _restrict(path: Path) -> int:
    """Make the socket 0600; its inode, to know it as ours later."""
    # The state directory is 0700, so nobody else could reach the socket between bind()
    # and this chmod.
    os.chmod(path, 0o600)
    return path.stat().st_ino


def _remove_own(path: Path, inode: int | None) -> None:
    """Remove the socket file unless a newer agent has bound its own there since."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_ino == inode:
            path.unlink()


def _peer_allowed(writer: asyncio.StreamWriter) -> bool:
    """Whether the connected process runs as our user or as root (unix(7) SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True  # not Linux: the 0600 socket in a 0700 directory is the whole check
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return bool(uid in (0, os.getuid()))
