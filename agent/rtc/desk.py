"""``CallDesk``: the device answers calls with its camera, microphone and data channels.

For each ringing call the desk

1. identifies the caller (user id from the hub; name and role from a directory when it
   has one, e.g. the embedded hub's accounts; membership of ``allow_groups`` from the
   hub's user listing) and applies the :class:`CallPolicy`; a refused caller gets
   ``hungup`` and a private message ``{"type": "call_refused", "reason", "message"}``;
2. answers with the media the offer asks for: one ``MediaHub`` track per kind (encoded
   once for every viewer), each attached to its sender; the caller's audio goes to the
   talk-back sink;
3. serves the caller's data channels by label (:mod:`agent.rtc.datachannels`), ``control``
   itself (:mod:`agent.rtc.control`: ``status``, ``snapshot``);
4. tells the caller when a configured device is missing or goes away, naming it, on the
   ``control`` channel and in a private message; the media hub goes on with its test
   pattern or tone, so the call goes on with what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.errors import Codes, DeviceNotFoundError, EdgeAgentError, RealtimeError
from agent.rtc.callstats import CallFigures, measure
from agent.rtc.control import Blob, ControlServer
from agent.rtc.datachannels import ChannelRegistry, ChannelSession
from agent.rtc.engine import IncomingCall, RtcConnection, RtcEngine
from agent.rtc.media import LocalMedia
from agent.rtc.policy import Caller, CallPolicy, refusal_content

if TYPE_CHECKING:
    from agent.media import MediaEvent, MediaHub, TalkbackSink

__all__ = ["AccountDirectory", "CallDesk", "CallerDirectory", "DeskClient", "HubDirectory"]

log = logging.getLogger(__name__)

_LOOKUP_TIMEOUT: Final = 5.0
_TELL_TIMEOUT: Final = 5.0


class DeskClient(Protocol):
    """What the desk needs of a realtime client."""

    @property
    def rtc(self) -> RtcEngine:
        """The client's calls."""

    async def post_realtime(self, message: Any, recipient: str) -> Any:
        """Send a private message to a user id."""

    async def get_realtime_users(
        self, group: str | None = None, user_id: str | None = None
    ) -> dict[str, Any]:
        """List the connections of ``user_id`` in ``group``."""


class CallerDirectory(Protocol):
    """Names and roles of accounts (the embedded hub's account store, for one)."""

    async def lookup(self, user_id: str) -> Caller:
        """What is known of ``user_id``."""


class _AccountStore(Protocol):
    def get_by_id(self, user_id: str) -> Any:
        """The account with ``user_id`` (``.name``, ``.role``), or None."""


class AccountDirectory:
    """Callers' names and roles from an account store (the embedded hub's)."""

    def __init__(self, store: _AccountStore) -> None:
        self._store = store

    async def lookup(self, user_id: str) -> Caller:
        """The caller's name and role; only the id for an unknown account."""
        account = await asyncio.to_thread(self._store.get_by_id, user_id)
        if account is None:
            return Caller(user_id)
        role = getattr(account.role, "value", account.role)
        return Caller(user_id, name=str(account.name), role=str(role))


class _UserLookup(Protocol):
    async def get_user(self, user_id: str) -> dict[str, Any]:
        """``{user_id, name, role}`` of an account, from the hub."""


class HubDirectory:
    """Callers' names and roles asked of a remote hub (``GET /api/users/ID``)."""

    def __init__(self, client: _UserLookup) -> None:
        self._client = client

    async def lookup(self, user_id: str) -> Caller:
        """The caller's name and role; only the id when the hub does not know it."""
        try:
            found = await self._client.get_user(user_id)
        except RealtimeError as exc:
            if exc.code != Codes.NOT_FOUND:
                raise
            return Caller(user_id)
        return Caller(user_id, name=str(found.get("name")), role=str(found.get("role")))


class _DeskCall:
    """One accepted (or being accepted) call."""

    def __init__(self, incoming: IncomingCall) -> None:
        self.incoming = incoming
        self.cid = incoming.cid
        self.user_id = incoming.user_id
        self.connection: RtcConnection | None = None
        self.sessions: dict[RTCDataChannel, ChannelSession] = {}
        self.controls: list[ChannelSession] = []
        self.notices: list[dict[str, Any]] = []  # waiting for a control channel
        self.reported: dict[str, str] = {}  # media -> the last problem told
        self.tasks: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()
        self.ice_connected: float | None = None
        self.video: Any = None  # the FanoutTrack this call is sent, for time to first frame
        self.figures: CallFigures | None = None
        self.figures_at: float | None = None

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def end(self) -> None:
        for session in self.sessions.values():
            session.end()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks))


class CallDesk:
    """Answers the calls of one realtime client with the device's media."""

    def __init__(
        self,
        client: DeskClient,
        *,
        device: str,
        policy: CallPolicy | None = None,
        media: MediaHub | None = None,
        talkback: TalkbackSink | None = None,
        send_video: bool = True,
        send_audio: bool = True,
        directory: CallerDirectory | None = None,
        channels: ChannelRegistry | None = None,
        status_extra: Callable[[], Mapping[str, Any]] | None = None,
        on_calls: Callable[[int], None] | None = None,
    ) -> None:
        """Prepare the desk; :meth:`start` makes it answer.

        Args:
            client: The agent's realtime client.
            device: This device's name (in refusals and status).
            policy: Who may call and how many at once (default: people, at most 4).
            media: The device's camera and microphone (None: data channels only).
            talkback: Where callers' voices go (None: not received).
            send_video: Send video to callers who want it.
            send_audio: Send audio to callers who want it.
            directory: Names and roles of callers (None: user ids and groups only).
            channels: Data channel handlers (``control`` is added).
            status_extra: More fields for the ``status`` command (sensors, hub link).
            on_calls: Called with the number of calls whenever it changes.
        """
        self._client = client
        self.device = device
        self.policy = policy or CallPolicy()
        self._media = media
        self._talkback = talkback
        self._send = {"video": send_video, "audio": send_audio}
        self._directory = directory
        self.channels = channels or ChannelRegistry()
        self._status_extra = status_extra
        self._on_calls = on_calls
        self._calls: dict[str, _DeskCall] = {}
        self._missing: dict[str, DeviceNotFoundError] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.control = ControlServer(
            {"status": self._status_command, "snapshot": self._snapshot_command}
        )
        self.channels.register("control", self._serve_control)
        self.refused = 0
        self.answered = 0  # calls that came up since start
        self._started = time.monotonic()

    @property
    def calls(self) -> int:
        """Calls being answered or up."""
        return len(self._calls)

    def start(self) -> None:
        """Answer calls from now on."""
        self._client.rtc.on_incoming = self._ring

    async def stop(self) -> None:
        """Stop answering and hang up every call."""
        engine = self._client.rtc
        if engine.on_incoming == self._ring:
            engine.on_incoming = None
        hangups = [engine.hangup(cid) for cid in list(self._calls)]
        if hangups:
            await asyncio.gather(*hangups, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def status(self) -> dict[str, Any]:
        """What the ``status`` command answers."""
        now = time.monotonic()
        status: dict[str, Any] = {
            "device": self.device,
            "uptime_seconds": round(now - self._started),
            "calls": {
                "active": len(self._calls),
                "max": self.policy.max_calls,
                "refused": self.refused,
                # Each call's route and figures (the viewer's status card shows them).
                "list": [_call_status(call, now) for call in self._calls.values()],
            },
            "missing": {media: err.message for media, err in self._missing.items()},
        }
        if self._media is not None:
            status["media"] = _media_status(self._media)
        if self._talkback is not None:
            status["talkback"] = {
                "samples": self._talkback.samples,
                "nonsilent": self._talkback.nonsilent,
            }
        if self._status_extra is not None:
            status.update(self._status_extra())
        return status

    def media_event(self, event: MediaEvent) -> None:
        """A capture event of the media hub (wire ``MediaHub(on_event=...)`` here)."""
        from agent.media import MediaEventKind

        if event.kind in (MediaEventKind.SOURCE_FAILED, MediaEventKind.SOURCE_LOST):
            if event.error is None:
                return
            self._missing[event.media] = event.error
            for call in self._calls.values():
                self._tell_missing(call, event.media, event.error)
        elif event.kind in (MediaEventKind.SOURCE_OPENED, MediaEventKind.SOURCE_RELEASED):
            self._missing.pop(event.media, None)
            for call in self._calls.values():
                call.reported.pop(event.media, None)

    # -- a ringing call --------------------------------------------------------------------

    def _ring(self, incoming: IncomingCall) -> None:
        task = asyncio.get_running_loop().create_task(self._take(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self, incoming: IncomingCall) -> None:
        caller = await self._identify(incoming.user_id)
        refusal = self.policy.decide(caller, len(self._calls))
        if refusal is not None:
            await self._refuse(incoming, refusal)
            return
        call = self._calls[incoming.cid] = _DeskCall(incoming)
        self._changed()
        try:
            await self._answer(call)
        finally:
            self._calls.pop(incoming.cid, None)
            await call.end()
            self._changed()

    async def call_figures(self) -> list[CallFigures]:
        """Setup times, route, RTT and bitrate of every call that is up."""
        figures = []
        for call in list(self._calls.values()):
            if call.connection is None:
                continue
            call.figures = await measure(
                call.connection.target,
                cid=call.cid,
                started=call.started,
                ice_connected=call.ice_connected,
                first_frame=getattr(call.video, "first_sent_at", None),
                previous=call.figures,
                previous_at=call.figures_at,
            )
            call.figures_at = time.monotonic()
            figures.append(call.figures)
        return figures

    async def _answer(self, call: _DeskCall) -> None:
        local = self._local_media(call.incoming.wants)
        call.video = local.video if local is not None else None
        try:
            connection = await call.incoming.connect_rtc(
                media=local,
                callback=lambda event: self._on_event(call, event),
                receive=("audio",) if self._talkback is not None else (),
            )
        except EdgeAgentError as exc:
            log.info("call from %s not taken: %s", call.cid, exc)
            if local is not None:
                local.stop()
            return
        call.connection = connection
        self.answered += 1
        log.info("call from %s (%s) is up", call.cid, call.user_id)
        for media, error in self._missing.items():
            self._tell_missing(call, media, error)
        await connection.wait_closed()

    async def _identify(self, user_id: str | None) -> Caller:
        caller = Caller(user_id)
        if user_id is None:
            return caller
        try:
            async with asyncio.timeout(_LOOKUP_TIMEOUT):
                if self._directory is not None:
                    caller = await self._directory.lookup(user_id)
                if self.policy.allow_groups and not self.policy.allowed_without_groups(caller):
                    groups = await self._groups_of(user_id)
                    caller = dataclasses.replace(caller, groups=groups)
        except (TimeoutError, EdgeAgentError, OSError) as exc:
            log.warning("could not look up caller %s: %s", user_id, exc)
        return caller

    async def _groups_of(self, user_id: str) -> frozenset[str]:
        found = set()
        for group in sorted(self.policy.allow_groups):
            listing = await self._client.get_realtime_users(group, user_id)
            if any(item.get("user_id") == user_id for item in listing.get("list", [])):
                found.add(group)
        return frozenset(found)

    async def _refuse(self, incoming: IncomingCall, refusal: Any) -> None:
        self.refused += 1
        active = len(self._calls)
        log.info("refused a call from %s (%s): %s", incoming.cid, incoming.user_id, refusal.value)
        await incoming.hangup()
        if incoming.user_id is not None:
            content = refusal_content(
                refusal, device=self.device, active=active, limit=self.policy.max_calls
            )
            await self._tell(incoming.user_id, content)

    def _local_media(self, wants: frozenset[str]) -> LocalMedia | None:
        hub = self._media
        if hub is None:
            return None
        video = hub.subscribe_video() if "video" in wants and self._send["video"] else None
        audio = hub.subscribe_audio() if "audio" in wants and self._send["audio"] else None
        return LocalMedia(video=video, audio=audio)

    # -- a call's events -------------------------------------------------------------------

    def _on_event(self, call: _DeskCall, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "iceconnectionstatechange" and call.ice_connected is None:
            if event.get("state") in ("connected", "completed"):
                call.ice_connected = time.monotonic()
        elif kind == "track":
            self._on_track(call, event["track"])
        elif kind == "datachannel":
            self._open_session(call, event["channel"])
        elif kind == "message":
            session = call.sessions.get(event["target"])
            if session is not None:
                session.feed(event["data"])
        elif kind == "close":
            session = call.sessions.get(event["target"])
            if session is not None:
                session.end()

    def _on_track(self, call: _DeskCall, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._talkback is not None:
            self._talkback.play(track)
        else:
            call.spawn(_drain(track))  # an unread remote track would queue without bound

    def _open_session(self, call: _DeskCall, channel: RTCDataChannel) -> None:
        session = ChannelSession(channel, cid=call.cid, user_id=call.user_id)
        call.sessions[channel] = session
        call.spawn(self._serve(session))

    async def _serve(self, session: ChannelSession) -> None:
        try:
            await self.channels.handler_for(session.label)(session)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("data channel %r of %s failed", session.label, session.cid)

    async def _serve_control(self, session: ChannelSession) -> None:
        call = self._calls.get(session.cid)
        if call is not None:
            call.controls.append(session)
            for notice in call.notices:
                session.send_json(notice)
            call.notices.clear()
        await self.control.serve(session)

    # -- control commands ------------------------------------------------------------------

    async def _status_command(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _snapshot_command(self, args: Mapping[str, Any]) -> Blob:
        if self._media is None:
            raise RealtimeError(Codes.DEVICE_NOT_FOUND, "This device has no camera.")
        return Blob("image/jpeg", await self._media.snapshot())

    # -- telling the caller ----------------------------------------------------------------

    def _tell_missing(self, call: _DeskCall, media: str, error: DeviceNotFoundError) -> None:
        if call.reported.get(media) == error.message:
            return
        call.reported[media] = error.message
        notice = {
            "type": "error",
            "code": error.code,
            "message": error.message,
            "device": error.device,
            "media": media,
        }
        sent = [s for s in call.controls if s.send_json(notice)]
        if not sent:
            call.notices.append(notice)
        if call.user_id is not None:
            call.spawn(self._tell(call.user_id, notice))

    async def _tell(self, user_id: str, content: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(_TELL_TIMEOUT):
                await self._client.post_realtime(content, user_id)
        except (EdgeAgentError, TimeoutError) as exc:
            log.info("could not tell %s: %s", user_id, exc)

    def _changed(self) -> None:
        if self._on_calls is not None:
            self._on_calls(len(self._calls))


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _call_status(call: _DeskCall, now: float) -> dict[str, Any]:
    figures = call.figures
    if figures is None:
        return {"seconds": round(now - call.started), "route": None}
    return {
        "seconds": round(now - call.started),
        "route": figures.candidate_type,
        "local": figures.local_candidate_type,
        "remote": figures.remote_candidate_type,
        "relay_protocol": figures.relay_protocol,
        "rtt_ms": None if figures.rtt_seconds is None else round(figures.rtt_seconds * 1000, 1),
        "bitrate_bps": None if figures.bitrate_bps is None else round(figures.bitrate_bps),
        "first_frame_ms": _ms(figures.first_frame_seconds),
    }


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _media_status(hub: MediaHub) -> dict[str, Any]:
    stats = hub.stats()
    return {
        "video": {"state": stats.video_state.value, "source": stats.video_source},
        "audio": {"state": stats.audio_state.value, "source": stats.audio_source},
        "viewers": len(stats.viewers),
        "frames_captured": stats.frames_captured,
        "codecs": [
            {
                "codec": c.codec,
                "encoder": c.encoder,
                "encodes": c.encodes,
                "frames": c.frames,
                "viewers": c.viewers,
            }
            for c in stats.codecs
        ],
    }
