"""One node's link to Redis: a command connection used in order, and a pub/sub connection.

Commands from every coroutine of the node go into one queue and out on one connection,
written in batches (pipelining, redis.io "Pipelining") and answered in the order sent.
So everything this node does in Redis happens in the order the node did it: a join before
the notice of that join, one sender's messages in the order it sent them. A caller awaits
its own reply; while one batch is on the wire the next one gathers.

Subscriptions are counted per channel: the first :meth:`RedisLink.hold` sends SUBSCRIBE and
waits for Redis to confirm it, so a message published after ``hold`` returns reaches this
node; the last :meth:`RedisLink.release` unsubscribes.

Redis failing (restart, network, a killed client) takes the link DOWN: every pending and
later call raises :class:`BackplaneDown` at once, so that the node carries on alone with
its own view, and the link reconnects with capped exponential backoff. Back UP, it
subscribes again to every held channel, loads the scripts, and sends the commands
``on_up`` gives (the node's presence, registered again) before any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeAlias

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError

from agent.hub.backplane import BackplaneError
from agent.hub.backplane_redis.scripts import Script
from agent.retry import backoff

__all__ = ["BackplaneDown", "Command", "LinkState", "RedisLink"]

log = logging.getLogger(__name__)

Command: TypeAlias = tuple[Any, ...]
MessageHandler: TypeAlias = Callable[[bytes, bytes], None]
# Commands written in one go; more wait for the next batch (bounded memory per write).
_MAX_BATCH: Final = 1024
# Channels per SUBSCRIBE when subscribing again after a reconnect.
_SUBSCRIBE_CHUNK: Final = 500
# After a session that lasted this long, the reconnect backoff starts small again.
_STABLE_SECONDS: Final = 10.0
_LINK_ERRORS: Final = (RedisError, OSError, TimeoutError, EOFError)


class BackplaneDown(BackplaneError):
    """Redis cannot be used now; the caller falls back to this node's own view."""


class LinkState(enum.Enum):
    """Where the link to Redis stands."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class RedisLink:
    """Commands in order and counted subscriptions over two connections to one Redis."""

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        scripts: Sequence[Script],
        on_message: MessageHandler,
        on_up: Callable[[], list[Command]],
        timeout: float = 5.0,
        delays: Callable[[], Iterator[float]] = lambda: backoff(0.1, 2.0, 2.0),
    ) -> None:
        self.state = LinkState.CONNECTING
        self._connect = connect
        self._scripts = tuple(scripts)
        self._on_message = on_message
        self._on_up = on_up
        self._timeout = timeout
        self._delays = delays
        self._queue: deque[tuple[Command, asyncio.Future[Any]]] = deque()
        self._inflight: list[asyncio.Future[Any]] = []
        self._wake = asyncio.Event()
        self._refs: dict[bytes, int] = {}
        self._confirming: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._sub: AbstractConnection | None = None
        self._sub_lock = asyncio.Lock()
        self._pong = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None

    @property
    def up(self) -> bool:
        """Whether calls go to Redis now."""
        return self.state is LinkState.UP

    async def start(self) -> None:
        """Connect, and keep reconnecting after; ``BackplaneError`` if the first try fails."""
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(), name="redis-link")
        try:
            await self._first
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop reconnecting and close both connections."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        self._set_state(LinkState.CLOSED)

    async def call(self, *args: Any) -> Any:
        """One command's reply (a ``ResponseError`` reply is raised); ``BackplaneDown``."""
        return await self.send(args)

    async def script(self, script: Script, *args: Any) -> Any:
        """Run ``script`` with ``args`` after the prefix argument the link was not given."""
        return await self.send(("EVALSHA", script.sha, 0, *args))

    def send(self, command: Command) -> asyncio.Future[Any]:
        """Queue ``command``; the future gets its reply, or ``BackplaneDown``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.up:
            future.set_exception(BackplaneDown("the Redis backplane is not connected"))
            return future
        self._queue.append((command, future))
        self._wake.set()
        return future

    async def hold(self, channel: bytes) -> None:
        """Be subscribed to ``channel`` (counted); returns once Redis confirmed it, or at
        once while the link is down (the reconnect subscribes)."""
        refs = self._refs.get(channel, 0)
        self._refs[channel] = refs + 1
        if refs == 0:
            await self._subscribe([channel])
        waiting = self._confirming.get(channel)
        if waiting:
            # A subscription still on its way: this holder needs it as much as the first.
            await asyncio.shield(waiting[-1])

    async def release(self, channel: bytes) -> None:
        """Drop one hold of ``channel``; the last one unsubscribes."""
        refs = self._refs.get(channel, 0) - 1
        if refs > 0:
            self._refs[channel] = refs
            return
        self._refs.pop(channel, None)
        sub = self._sub
        if sub is not None:
            with contextlib.suppress(*_LINK_ERRORS):
                async with self._sub_lock:
                    await sub.send_packed_command(
                        sub.pack_command("UNSUBSCRIBE", channel), check_health=False
                    )

    def resync(self) -> None:
        """Send ``on_up``'s commands again (Redis lost this node's records meanwhile)."""
        if self.up:
            for command in self._on_up():
                self._queue.append((command, self._logged_future(command)))
            self._wake.set()

    # -- the connection's life -------------------------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delays = self._delays()
        while True:
            started = loop.time()
            try:
                await self._session()
            except asyncio.CancelledError:
                self._down(None)
                raise
            except Exception as exc:  # whatever ended the session, the node reconnects
                if not isinstance(exc, _LINK_ERRORS):
                    log.exception("backplane: the Redis link failed")
                if self._first_failed(exc):
                    return
                self._down(exc)
            if loop.time() - started >= _STABLE_SECONDS:
                delays = self._delays()
            await asyncio.sleep(next(delays))

    async def _session(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            command = await self._open(stack)
            sub = await self._open(stack)
            tasks: list[asyncio.Task[None]] = []
            stack.push_async_callback(_cancel_all, tasks)
            tasks.append(asyncio.create_task(self._read(sub), name="redis-link-read"))
            self._sub = sub
            async with asyncio.timeout(self._timeout):
                await self._load_scripts(command)
                await self._subscribe(list(self._refs))
                await asyncio.gather(*(w[-1] for w in self._confirming.values() if w))
            for restore in self._on_up():
                self._queue.append((restore, self._logged_future(restore)))
            self._set_state(LinkState.UP)
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            tasks.append(asyncio.create_task(self._write(command), name="redis-link-write"))
            tasks.append(asyncio.create_task(self._watch(sub), name="redis-link-watch"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the error that ended the session
            raise ConnectionError("the Redis link ended")  # pragma: no cover (loops forever)

    async def _open(self, stack: contextlib.AsyncExitStack) -> AbstractConnection:
        connection = self._connect()
        stack.push_async_callback(connection.disconnect, nowait=True)
        async with asyncio.timeout(self._timeout):
            await connection.connect()  # type: ignore[no-untyped-call]
        return connection

    async def _load_scripts(self, connection: AbstractConnection) -> None:
        commands = [("SCRIPT", "LOAD", script.source) for script in self._scripts]
        await connection.send_packed_command(connection.pack_commands(commands))
        for _ in commands:
            await connection.read_response()

    async def _write(self, connection: AbstractConnection) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), _MAX_BATCH))]
            self._inflight = [future for _, future in batch]
            packed = connection.pack_commands([command for command, _ in batch])
            await connection.send_packed_command(packed, check_health=False)
            lost_scripts = False
            async with asyncio.timeout(self._timeout):
                for _, future in batch:
                    try:
                        reply = await connection.read_response()
                    except NoScriptError as exc:
                        lost_scripts = True  # Redis lost its script cache: reconnect
                        _settle(future, error=BackplaneDown(str(exc)))
                    except ResponseError as exc:
                        _settle(future, error=exc)
                    else:
                        _settle(future, reply=reply)
            self._inflight = []
            if lost_scripts:
                raise ConnectionError("Redis lost the backplane's scripts")

    async def _read(self, connection: AbstractConnection) -> None:
        while True:
            # Yield once per message: read_response() does not suspend while replies are
            # buffered, and a flood of messages must not starve the heartbeat or the
            # readers of this node's own connections.
            await asyncio.sleep(0)
            reply = await connection.read_response()
            kind = reply[0] if isinstance(reply, list) and reply else None
            if kind == b"message":
                try:
                    self._on_message(reply[1], reply[2])
                except Exception:  # one bad message must not end the subscription
                    log.exception("backplane: could not deliver a message from Redis")
            elif kind == b"subscribe":
                waiting = self._confirming.get(reply[1])
                if waiting:
                    _settle(waiting.popleft(), reply=None)
                if waiting is not None and not waiting:
                    del self._confirming[reply[1]]
            elif kind == b"pong":
                self._pong.set()

    async def _watch(self, sub: AbstractConnection) -> None:
        # A pub/sub connection that silently stopped (a network cut: no reset arrives)
        # would leave this node deaf; a PING answered within the timeout proves it is not.
        while True:
            await asyncio.sleep(self._timeout)
            self._pong.clear()
            async with self._sub_lock:
                await sub.send_packed_command(sub.pack_command("PING"), check_health=False)
            async with asyncio.timeout(self._timeout):
                await self._pong.wait()

    async def _subscribe(self, channels: list[bytes]) -> None:
        sub = self._sub
        if sub is None or not channels:
            return
        loop = asyncio.get_running_loop()
        for channel in channels:
            self._confirming.setdefault(channel, deque()).append(loop.create_future())
        try:
            async with self._sub_lock:
                for start in range(0, len(channels), _SUBSCRIBE_CHUNK):
                    chunk = channels[start : start + _SUBSCRIBE_CHUNK]
                    await sub.send_packed_command(
                        sub.pack_command("SUBSCRIBE", *chunk), check_health=False
                    )
        except _LINK_ERRORS:
            self._release_waiters()  # the session ends; the next one subscribes again

    def _down(self, error: BaseException | None) -> None:
        self._sub = None
        self._release_waiters()
        failure = BackplaneDown("the Redis backplane connection was lost")
        for future in self._inflight:
            _settle(future, error=failure)
        self._inflight = []
        while self._queue:
            _settle(self._queue.popleft()[1], error=failure)
        if self.state is not LinkState.CLOSED:
            if error is not None and self.state is not LinkState.DOWN:
                log.warning("backplane: lost Redis (%s); this node carries on alone", error)
            self._set_state(LinkState.DOWN)

    def _first_failed(self, error: BaseException) -> bool:
        first = self._first
        if first is None or first.done():
            return False
        self._sub = None
        self._release_waiters()
        if isinstance(error, AuthenticationError) or any(
            word in str(error) for word in ("WRONGPASS", "NOAUTH")
        ):
            reason = "Redis refused the password (hub.backplane / hub.backplane_password_file)"
        else:
            reason = f"cannot use Redis: {error or type(error).__name__}"
        first.set_exception(BackplaneError(reason))
        self._set_state(LinkState.CLOSED)
        return True

    def _release_waiters(self) -> None:
        for waiting in self._confirming.values():
            for future in waiting:
                _settle(future, reply=None)
        self._confirming.clear()

    def _logged_future(self, command: Command) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda done: _log_failure(done, command))
        return future

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            log.info("backplane: Redis link %s -> %s", self.state.value, state.value)
            self.state = state


def _settle(
    future: asyncio.Future[Any], *, reply: Any = None, error: Exception | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(reply)


def _log_failure(future: asyncio.Future[Any], command: Command) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None and not isinstance(error, BackplaneDown):
        log.error("backplane: Redis refused %s: %s", command[0], error)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
