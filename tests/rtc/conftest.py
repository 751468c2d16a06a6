"""A real hub on 127.0.0.1, a device answering calls, and Python callers: all on loopback.

Both sides gather host candidates on 127.0.0.1 only (``[calls] host_addresses``), with no
ICE servers, so nothing leaves the machine and no test patches aioice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.client import RealtimeClient, RealtimeMessage
from agent.config import load_settings
from agent.hub.accounts import Account, Role
from agent.hub.server import HubServer
from agent.media import MediaConfig, MediaHub, TalkbackSink, TestPatternConfig
from agent.rtc.desk import AccountDirectory, CallDesk
from agent.rtc.engine import RtcConnection
from agent.rtc.ice import IceOptions
from agent.rtc.peer import PeerFactory
from agent.rtc.policy import CallPolicy

WAIT = 30.0  # generous: the machine is shared
GROUP = "devices"
LOOPBACK = IceOptions(addresses=("127.0.0.1",), mdns=False)


def small_pattern(width: int = 160, height: int = 120, fps: int = 15) -> MediaConfig:
    """A cheap test pattern, so several decoding callers fit on a small shared machine."""
    return MediaConfig(video=TestPatternConfig(width, height, fps))


class Inbox:
    """Every realtime message a client got, with waiting by predicate."""

    def __init__(self) -> None:
        self.messages: list[RealtimeMessage] = []
        self._changed = asyncio.Condition()

    async def __call__(self, message: RealtimeMessage) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    async def wait_for(self, kind: str, **match: Any) -> RealtimeMessage:
        def found() -> RealtimeMessage | None:
            for message in self.messages:
                if message.type == kind and all(getattr(message, k) == v for k, v in match.items()):
                    return message
            return None

        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result


@dataclass
class Party:
    """A connected client and its account."""

    client: RealtimeClient
    account: Account
    inbox: Inbox

    @property
    def user_id(self) -> str:
        return self.account.user_id


class Counter:
    """A number set from synchronous code that tests can wait on."""

    def __init__(self) -> None:
        self.value = 0
        self._waiters: list[tuple[Callable[[int], bool], asyncio.Future[None]]] = []

    def set(self, value: int) -> None:
        self.value = value
        for predicate, future in self._waiters:
            if predicate(value) and not future.done():
                future.set_result(None)

    async def until(self, predicate: Callable[[int], bool]) -> None:
        if predicate(self.value):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await asyncio.wait_for(future, WAIT)


@dataclass
class Device:
    """The device: its client, desk, media hub and talk-back sink."""

    party: Party
    desk: CallDesk
    media: MediaHub
    sink: TalkbackSink
    cid: str
    calls: Counter

    @property
    def client(self) -> RealtimeClient:
        return self.party.client

    @property
    def user_id(self) -> str:
        return self.party.user_id


class Viewer:
    """A caller's view of one call: decoded frames, data channel messages, control answers."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {"video": 0, "audio": 0}
        self.sizes: set[tuple[int, int]] = set()
        self.messages: list[tuple[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.reading = True
        self.tasks: list[asyncio.Task[None]] = []
        self.connection: RtcConnection | None = None
        self._changed = asyncio.Condition()

    async def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["type"] == "track":
            self.tasks.append(asyncio.create_task(self._consume(event["track"])))
        elif event["type"] == "message":
            self.messages.append((event["label"], event["data"]))
        await self._notify()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (checked on every frame, message and event) until ``predicate()``."""
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(predicate)

    async def command(self, command: str, request_id: int, **args: Any) -> list[dict[str, Any]]:
        """Send a control command; its answer (and chunks, if any)."""
        assert self.connection is not None
        channel = self.connection.channels["control"]
        await self.until(lambda: channel.readyState == "open")
        channel.send(json.dumps({"id": request_id, "command": command, **args}))

        def answers() -> list[dict[str, Any]]:
            found = [json.loads(d) for label, d in self.messages if label == "control"]
            return [a for a in found if a.get("id") == request_id]

        await self.until(lambda: bool(answers()))
        head = answers()[0]
        chunks = head.get("result", {}).get("chunks", 0) if head.get("ok") else 0
        await self.until(lambda: len(answers()) >= 1 + chunks)
        return answers()

    def notices(self) -> list[dict[str, Any]]:
        """Unsolicited control messages (no id)."""
        found = [json.loads(d) for label, d in self.messages if label == "control"]
        return [a for a in found if "id" not in a]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame: Any = await track.recv()
            except MediaStreamError:
                return
            if not self.reading:
                continue
            self.frames[track.kind] += 1
            if track.kind == "video":
                self.sizes.add((frame.width, frame.height))
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


@pytest.fixture(autouse=True)
async def debug_loop() -> AsyncIterator[None]:
    """asyncio debug mode: never-awaited coroutines and wrong-thread calls are errors."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    yield
    loop.set_debug(False)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    settings = load_settings(None, state_dir=tmp_path / "hub", hub={"host": "127.0.0.1", "port": 0})
    server = HubServer(settings, state_dir=tmp_path / "hub")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def factory() -> PeerFactory:
    """The ICE policy every party of a test uses: loopback host candidates, no servers."""
    return PeerFactory(LOOPBACK)


Connect = Callable[..., Awaitable[Party]]


@pytest.fixture
async def connect(hub: HubServer, factory: PeerFactory) -> AsyncIterator[Connect]:
    """``await connect("alice", role=Role.USER)``: a client of a new account, in the group."""
    clients: list[RealtimeClient] = []

    async def make(
        name: str, *, role: Role = Role.USER, groups: tuple[str, ...] = (GROUP,), **options: Any
    ) -> Party:
        account = await asyncio.to_thread(hub.accounts.add, name, None, role, groups=groups)
        token = hub.tokens.issue(account, 3600)
        options.setdefault("rtc_factory", factory)
        client = RealtimeClient(hub.ws_url, token=token, **options)
        clients.append(client)
        inbox = Inbox()
        await client.connect_realtime(inbox)
        await client.join_realtime(GROUP)
        await inbox.wait_for("notice", sender=account.user_id)
        return Party(client, account, inbox)

    yield make
    for client in clients:
        await client.close_realtime()


MakeDevice = Callable[..., Awaitable[Device]]


@pytest.fixture
async def device(hub: HubServer, connect: Connect) -> AsyncIterator[MakeDevice]:
    """``await device(config, policy=...)``: a device answering calls; torn down after."""
    made: list[Device] = []

    async def make(
        config: MediaConfig | None = None,
        *,
        name: str = "porch",
        groups: tuple[str, ...] = (GROUP,),
        **desk_options: Any,
    ) -> Device:
        party = await connect(name, role=Role.DEVICE, groups=groups)
        forward: list[CallDesk] = []  # the desk is made after its media hub

        def media_event(event: Any) -> None:
            forward[0].media_event(event)

        media = MediaHub(config or small_pattern(), on_event=media_event)
        sink = TalkbackSink()
        desk_options.setdefault("policy", CallPolicy.of())
        calls = Counter()
        desk = CallDesk(
            party.client,
            device=name,
            media=media,
            talkback=sink,
            directory=AccountDirectory(hub.accounts),
            on_calls=calls.set,
            **desk_options,
        )
        forward.append(desk)
        desk.start()
        listing = await party.client.get_realtime_users(GROUP, party.user_id)
        cid = listing["list"][0]["connection_id"]
        result = Device(party, desk, media, sink, cid, calls)
        made.append(result)
        return result

    yield make
    for made_device in made:
        await made_device.desk.stop()
        await made_device.media.close()
        await made_device.sink.close()


Call = Callable[..., Awaitable[Viewer]]


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    """``await call(caller, device, media=..., channels=...)``: a call that is up."""
    viewers: list[Viewer] = []

    async def place(caller: Party, target: Device, **options: Any) -> Viewer:
        viewer = Viewer()
        viewers.append(viewer)
        options.setdefault("media", {"video": False, "audio": False})
        options.setdefault("channels", [{"protocol": "control"}])
        connector = await caller.client.connect_rtc(cid=target.cid, callback=viewer, **options)
        async with asyncio.timeout(WAIT):
            viewer.connection = await connector.connection
        return viewer

    yield place
    for viewer in viewers:
        if viewer.connection is not None:
            await viewer.connection.hangup()
        await viewer.close()
