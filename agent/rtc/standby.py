"""``CallStandby``: the device waits for calls without the media stack, and loads it on need.

aiortc, PyAV and the camera pipeline are about 40 MB of an agent's memory, and a doorbell
waits for calls most of its life. The standby holds only what must exist before a call:
the data channel registry (serial ports register their channels at start) and the hub's
``#rtc`` frames that arrive while it loads. It builds the rest (one
:class:`~agent.rtc.peer.PeerFactory`, the :class:`~agent.media.MediaHub`, talk-back and the
:class:`~agent.rtc.desk.CallDesk`) when a call first rings, when a rule first wants a
snapshot or motion, or at start with ``[calls] preload = true``.

The modules are imported on a worker thread, so the loop keeps serving the hub link, serial
ports and the control socket meanwhile. Frames that arrive in between are kept in order
(up to ``MAX_PENDING``) and handed to the calls engine once it exists: the first offer and
the candidates trickled after it are answered as if the stack had been there. A stack that
cannot be loaded (a broken install, a hooked library of the wrong version) is said once in
the log and in the status; every call after that is refused with ``hungup`` at once, as
is every call while ``[calls] enabled = false`` (nothing loads for them then).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from agent.errors import Codes, EdgeAgentError, RealtimeError
from agent.exposition import Exposition, labelled
from agent.protocol import CID_PREFIX, HubFrame
from agent.rtc.datachannels import ChannelRegistry
from agent.rtc.errors import StackLoadError
from agent.rtc.figures import CallFigureWatch

if TYPE_CHECKING:
    from agent.media import MediaEvent, MediaHub, MediaStats, TalkbackSink
    from agent.media.settings import AudioSettings, VideoSettings
    from agent.rtc.desk import CallDesk
    from agent.rtc.engine import RtcEngine
    from agent.rtc.peer import PeerFactory
    from agent.rtc.settings import CallsSettings

__all__ = ["HEAVY_MODULES", "MAX_PENDING", "CallStandby", "StandbyClient", "heavy_modules_loaded"]

log = logging.getLogger(__name__)

# What an idle agent does without: the libraries behind calls and the camera.
HEAVY_MODULES: Final = ("aiortc", "av", "aioice")
# The project's modules that bring them in, imported off the loop.
_STACK: Final = (
    "agent.media.hub",
    "agent.media.talkback",
    "agent.rtc.peer",
    "agent.rtc.engine",
    "agent.rtc.desk",
)
# Frames kept while loading: every ringing call the signaling allows (16) with its offer
# and the candidates it may buffer (64 each) fits.
MAX_PENDING: Final = 16 * 65
_REFUSE_TIMEOUT: Final = 5.0


class StandbyClient(Protocol):
    """What the standby and the desk it builds need of a realtime client."""

    @property
    def user_id(self) -> str | None:
        """This side's user id (the value of ``hungup``)."""

    @property
    def rtc(self) -> RtcEngine:
        """The client's calls engine (made on first use)."""

    def set_rtc_handler(self, handler: Callable[[HubFrame], None] | None) -> None:
        """Route ``#rtc`` frames to ``handler`` (None: to the client's calls engine)."""

    def use_rtc_factory(self, factory: PeerFactory) -> None:
        """Make the client's calls with ``factory``."""

    async def send_rtc(self, cid: str, content: dict[str, Any]) -> None:
        """Send an ``rtc`` signaling frame."""

    async def post_realtime(self, message: Any, recipient: str) -> Any:
        """Send a private message to a user id."""

    async def get_realtime_users(
        self, group: str | None = None, user_id: str | None = None
    ) -> dict[str, Any]:
        """List the connections of ``user_id`` in ``group``."""

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """``{user_id, name, role}`` of an account, from the hub."""


class _AccountStore(Protocol):
    def get_by_id(self, user_id: str) -> Any:
        """The account with ``user_id``, or None."""


class CallStandby:
    """The calls part of a device: built on first need (see the module docstring)."""

    def __init__(
        self,
        client: StandbyClient,
        *,
        device: str,
        calls: CallsSettings,
        video: VideoSettings,
        audio: AudioSettings,
        accounts: _AccountStore | None = None,
        on_device: Callable[[str, str, bool], None] | None = None,
        status_extra: Callable[[], Mapping[str, Any]] | None = None,
        on_calls: Callable[[int], None] | None = None,
    ) -> None:
        """Prepare; :meth:`start` takes the client's ``#rtc`` frames, nothing loads yet.

        Args:
            client: The agent's realtime client (also the desk's).
            device: This device's name.
            calls: ``[calls]``; with ``enabled = false`` calls are refused (``hungup``)
                and nothing loads for them.
            video: ``[video]``, the camera.
            audio: ``[audio]``, the microphone and talk-back.
            accounts: The embedded hub's accounts, for callers' names and roles (None: ask
                the hub).
            on_device: Told ``(kind, source, present)`` when the camera or microphone
                opens, fails or goes away (``kind`` is ``camera`` or ``microphone``).
            status_extra: More fields for the desk's ``status`` command.
            on_calls: Called with the number of calls whenever it changes.
        """
        self._client = client
        self._device = device
        self._settings = (calls, video, audio)
        self._accounts = accounts
        self._on_device = on_device
        self._status_extra = status_extra
        self._on_calls = on_calls
        self.channels = ChannelRegistry()
        self.factory: PeerFactory | None = None
        self.media: MediaHub | None = None
        self.talkback: TalkbackSink | None = None
        self.desk: CallDesk | None = None
        self.load_seconds: float | None = None  # how long the first need waited for the stack
        self.failure: StackLoadError | None = None
        self.figures = CallFigureWatch(lambda: self.desk)  # per-call figures, kept fresh
        self._pending: deque[HubFrame] = deque()
        self._overflowed = False
        self._loading: asyncio.Task[None] | None = None
        self._refusals: set[asyncio.Task[None]] = set()

    @property
    def loaded(self) -> bool:
        """Whether the stack is loaded and the calls part built."""
        return self.load_seconds is not None

    def start(self) -> None:
        """Take the client's ``#rtc`` frames from now on (before it connects)."""
        self._client.set_rtc_handler(self._on_frame)

    async def load(self, *, need: str = "preload") -> None:
        """Load the stack and build the calls part, once; concurrent callers share one load.

        Raises:
            StackLoadError: the stack could not be loaded (now or earlier in this run).
        """
        if self.failure is not None:
            raise self.failure
        task = self._loading
        if task is None:
            task = self._loading = asyncio.get_running_loop().create_task(
                self._load(need), name="calls: load"
            )
            task.add_done_callback(_retrieve)
        await asyncio.shield(task)

    async def snapshot(self) -> bytes:
        """A JPEG from the camera, loading the stack first if needed.

        Raises:
            StackLoadError: the stack could not be loaded.
            RealtimeError: DEVICE_NOT_FOUND when calls (and with them the camera) are off.
        """
        await self.load(need="a snapshot")
        if self.media is None:
            raise RealtimeError(Codes.DEVICE_NOT_FOUND, "Calls and the camera are disabled.")
        return await self.media.snapshot()

    def status(self) -> dict[str, Any]:
        """Whether the stack is loaded, how long that took, and which libraries are in."""
        return {
            "loaded": self.loaded,
            "load_seconds": self.load_seconds,
            "failure": None if self.failure is None else str(self.failure),
            "modules": heavy_modules_loaded(),
        }

    def stack_words(self) -> str:
        """The media stack's state in words, for the status's memory line."""
        if self.failure is not None:
            return f"media stack failed to load: {self.failure}"
        if self.load_seconds is None:
            return "media stack not loaded (loads on the first call or snapshot)"
        return f"media stack loaded in {self.load_seconds * 1000:.0f} ms"

    def status_lines(self) -> list[str]:
        """``edge-agent status`` lines: viewers once the stack is loaded, one per call."""
        viewers = [] if self.media is None else [f"media: {self.media.viewers} viewers"]
        return viewers + self.figures.lines()

    def render_metrics(self) -> str:
        """Prometheus text of :meth:`add_metrics` and the per-call figures."""
        out = Exposition("edge_agent_")
        self.add_metrics(out)
        self.figures.add_metrics(out)
        return out.render()

    def add_metrics(self, out: Exposition) -> None:
        """Calls, the media stack and the media hub, as Prometheus families (the same
        families before the first call as after it, with zeros)."""
        out.add(
            "media_stack_loaded",
            "gauge",
            "1 once aiortc, PyAV and the camera pipeline are loaded (on first need).",
            int(self.loaded),
        )
        if self.load_seconds is not None:
            out.add(
                "media_stack_load_seconds",
                "gauge",
                "How long the first need (call, snapshot, preload) waited for the media stack.",
                self.load_seconds,
            )
        if not self._settings[0].enabled:
            return
        desk = self.desk
        out.add("calls_active", "gauge", "Calls up now.", desk.calls if desk else 0)
        out.add(
            "calls_total", "counter", "Calls answered since start.", desk.answered if desk else 0
        )
        out.add(
            "calls_refused_total",
            "counter",
            "Calls refused (busy, not allowed).",
            desk.refused if desk else 0,
        )
        if self.media is not None:
            _media_metrics(out, self.media.stats())

    async def aclose(self) -> None:
        """Stop taking frames, hang up every call, close the media and the factory."""
        # Unloaded, frames are dropped from now on: the client's own engine would import
        # aiortc on its reader, during the shutdown. Loaded, the engine refuses calls itself.
        self._client.set_rtc_handler(None if self.loaded else _drop)
        task, self._loading = self._loading, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        for refusal in list(self._refusals):
            refusal.cancel()
        if self.desk is not None:
            await self.desk.stop()
        if self.media is not None:
            await self.media.close()
        if self.talkback is not None:
            await self.talkback.close()
        if self.factory is not None:
            self.factory.close()

    # -- loading ---------------------------------------------------------------------------

    def _on_frame(self, frame: HubFrame) -> None:
        """An ``#rtc`` frame before the engine exists (on the client's reader: no waiting)."""
        if self.failure is not None or not self._settings[0].enabled:
            self._refuse([frame])  # calls off: refused without loading anything for them
            return
        if len(self._pending) >= MAX_PENDING:
            if not self._overflowed:
                self._overflowed = True
                log.warning("more than %d call frames while loading; dropping", MAX_PENDING)
            return
        self._pending.append(frame)
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(
                self._load("a call"), name="calls: load"
            )
            self._loading.add_done_callback(_retrieve)

    async def _load(self, need: str) -> None:
        started = time.perf_counter()
        log.info("loading the media stack for %s", need)
        try:
            await asyncio.to_thread(_import_stack)
            self._build()
        except Exception as exc:
            self.failure = StackLoadError(need, exc)
            log.exception("the media stack could not be loaded; calls are refused until restart")
            pending, self._pending = list(self._pending), deque()
            self._refuse(pending)
            raise self.failure from exc
        self.load_seconds = time.perf_counter() - started
        log.info("media stack loaded in %.0f ms", self.load_seconds * 1000)
        self._hand_over()

    def _build(self) -> None:
        from agent.media import MediaHub, TalkbackSink
        from agent.media.settings import media_config, sink_config
        from agent.rtc.desk import AccountDirectory, CallDesk, HubDirectory
        from agent.rtc.peer import PeerFactory
        from agent.rtc.settings import call_policy, ice_options

        calls, video, audio = self._settings
        # One DTLS certificate and one ICE policy for every call of this run.
        self.factory = PeerFactory(ice_options(calls), video_codecs=video.codecs)
        self._client.use_rtc_factory(self.factory)
        if not calls.enabled:
            self._client.rtc.on_incoming = None  # refuse at once rather than ring unanswered
            return
        self.media = MediaHub(media_config(video, audio), on_event=self._media_event)
        if audio.talkback:
            self.talkback = TalkbackSink(sink_config(audio))
        self.desk = CallDesk(
            self._client,
            device=self._device,
            policy=call_policy(calls),
            media=self.media,
            talkback=self.talkback,
            send_video=video.enabled,
            send_audio=audio.enabled,
            directory=(
                AccountDirectory(self._accounts)
                if self._accounts is not None
                else HubDirectory(self._client)
            ),
            channels=self.channels,
            status_extra=self._status_extra,
            on_calls=self._on_calls,
        )
        self.desk.start()

    def _hand_over(self) -> None:
        """Give the engine the frames kept so far, in order, and every later one directly
        (no await in between, so none can slip past the queue)."""
        engine = self._client.rtc
        pending, self._pending = list(self._pending), deque()
        for frame in pending:
            try:
                engine.handle_frame(frame)
            except Exception:
                log.exception("a call frame kept while loading failed")
        self._client.set_rtc_handler(None)

    def _media_event(self, event: MediaEvent) -> None:
        from agent.media import MediaEventKind

        if self.desk is not None:
            self.desk.media_event(event)
        present = {
            MediaEventKind.SOURCE_OPENED: True,
            MediaEventKind.SOURCE_FAILED: False,
            MediaEventKind.SOURCE_LOST: False,
        }.get(event.kind)
        if present is not None and self._on_device is not None:
            # Rules may watch the camera and microphone come and go.
            kind = "camera" if event.media == "video" else "microphone"
            self._on_device(kind, event.source, present)

    def _refuse(self, frames: list[HubFrame]) -> None:
        """Answer the offers among ``frames`` with ``hungup``: the callers stop waiting."""
        cids = {CID_PREFIX + f.scid for f in frames if f.scid and "sdpoffer" in f.content}
        for cid in cids:
            task = asyncio.get_running_loop().create_task(self._hang_up(cid))
            self._refusals.add(task)
            task.add_done_callback(self._refusals.discard)

    async def _hang_up(self, cid: str) -> None:
        with contextlib.suppress(EdgeAgentError, TimeoutError):
            async with asyncio.timeout(_REFUSE_TIMEOUT):
                await self._client.send_rtc(cid, {"hungup": self._client.user_id or "unknown"})


def heavy_modules_loaded() -> dict[str, bool]:
    """Which of :data:`HEAVY_MODULES` this process has imported."""
    return {name: name in sys.modules for name in HEAVY_MODULES}


def _media_metrics(out: Exposition, stats: MediaStats) -> None:
    codecs = {c.codec: c for c in stats.codecs}
    out.add(
        "viewers",
        "gauge",
        "Viewers per encoder (codec).",
        labelled("codec", {k: c.viewers for k, c in codecs.items()}),
    )
    out.add(
        "encodes_total",
        "counter",
        "Frames encoded, once for all viewers of a codec.",
        labelled("codec", {k: c.encodes for k, c in codecs.items()}),
    )
    out.add(
        "keyframes_forced_total",
        "counter",
        "Key frames forced for joiners and PLI/FIR.",
        labelled("codec", {k: c.forced_keyframes for k, c in codecs.items()}),
    )
    out.add(
        "frames_captured_total",
        "counter",
        "Frames captured from the video source.",
        stats.frames_captured,
    )
    out.add(
        "viewer_drops_total",
        "counter",
        "Frames dropped for slow viewers.",
        sum(v.dropped for v in stats.viewers),
    )
    out.add(
        "devices_missing",
        "gauge",
        "Configured media devices missing now (on fallback).",
        len(stats.errors),
    )


def _import_stack() -> None:
    for name in _STACK:
        importlib.import_module(name)


def _drop(_frame: HubFrame) -> None:
    """Ignore a frame that comes while the agent stops."""


def _retrieve(task: asyncio.Task[None]) -> None:
    # The failure is logged and kept in ``failure``; a load nobody awaits must not also
    # end as "exception was never retrieved".
    if not task.cancelled():
        task.exception()
