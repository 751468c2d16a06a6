"""The device's own senses as one part: serial ports, event rules, the alert outbox, the
local control socket, and the ``sensors`` / ``serial:NAME`` data channels of calls.

The agent's wiring (:mod:`agent.wiring`) makes one :class:`Sensing` once it has a hub
client, starts it, and closes it on the way out; it tells it of devices that come and go
elsewhere (:meth:`Sensing.device_presence`) and supervises its motion watch. Alerts go
through the durable outbox to the hub's push API; event posts through the durable post
queue (:mod:`agent.events.postbox`) to groups over the realtime connection; both are
committed before "fired" is answered, and both leave as soon as the hub link is back after
an outage. Telemetry is the latest state, not history: while the link is down only the
latest telemetry post per group is kept (it carries every port's latest reading), and it
is sent when the link is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.client import ConnectionState
from agent.errors import EdgeAgentError, RealtimeError, Texts
from agent.events.control import ControlServer, control_socket_path
from agent.events.engine import ActionHandlers, EventEngine
from agent.events.errors import LinkDownError
from agent.events.postbox import PostBox
from agent.exposition import Exposition, labelled
from agent.messages import MessageType, RealtimeMessage
from agent.push.outbox import OUTBOX_FILE, Outbox
from agent.sensors.framing import Reading
from agent.sensors.hub import ReadingFilter, SensorHub

if TYPE_CHECKING:
    from agent.client import RealtimeClient
    from agent.config import Settings
    from agent.events.engine import Event
    from agent.rtc.datachannels import ChannelRegistry, ChannelSession

__all__ = ["Sensing"]

log = logging.getLogger(__name__)

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# The hub's echoes of our posts arrive on this stream; a burst after an outage must fit.
_LINK_STREAM_SIZE = 4096
_LINK_DOWN = frozenset({MessageType.RECONNECT, MessageType.CLOSE})


class Sensing:
    """Serial ports, event rules, outbox and control socket of one running agent."""

    def __init__(
        self,
        settings: Settings,
        *,
        state_dir: Path,
        client: RealtimeClient,
        on_port: Callable[[str, bool], None] | None = None,
        camera: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self._client = client
        self._camera = camera
        self._port_listeners = [] if on_port is None else [on_port]
        self.outbox = Outbox(
            state_dir / OUTBOX_FILE,
            deliver=client.push_alert,
            deliver_batch=client.push_alerts,
            settings=settings.push.outbox,
        )
        self.posts = PostBox(
            state_dir / OUTBOX_FILE,
            send=self._send_post,
            max_posts=settings.push.outbox.max_queued_posts,
        )
        self._telemetry: dict[str, dict[str, Any]] = {}  # group -> latest, while offline
        actions = ActionHandlers(
            post=self.posts.post,
            push=self.outbox.push,
            call=self._call_ready,
            snapshot=self._snapshot if camera is not None else None,
            holds=True,
        )
        self.engine = EventEngine(
            settings.events,
            device=settings.name,
            actions=actions,
            groups=settings.groups,
            serial=settings.serial,
        )
        telemetry = settings.sensors
        self.sensors = SensorHub(
            settings.serial,
            device=settings.name,
            post=self._post_telemetry,
            telemetry_seconds=telemetry.telemetry_seconds,
            telemetry_groups=telemetry.telemetry_groups or settings.groups,
            on_presence=self._presence,
            queue_size=telemetry.queue_size,
        )
        self.sensors.add_listener(self.engine.on_reading)
        self.control = ControlServer(control_socket_path(state_dir), self.engine.control_handlers())
        self._stack = contextlib.AsyncExitStack()
        self._flushes: set[asyncio.Task[None]] = set()

    def add_port_listener(self, listener: Callable[[str, bool], None]) -> None:
        """Also tell ``listener`` ``(port name, up)`` whenever a serial port opens or closes."""
        self._port_listeners.append(listener)

    def device_presence(self, kind: str, source: str, present: bool) -> None:
        """A camera or microphone (``kind``) named ``source`` is present or not: device
        rules watching it may fire."""
        self.engine.on_device(kind, source, present)

    def motion_watch(self) -> Callable[[], Awaitable[None]] | None:
        """The loop feeding camera pictures to the motion rules, for a supervisor to run;
        None when no rule watches motion or there is no camera."""
        analyzer = self.engine.motion_analyzer()
        camera = self._camera
        if analyzer is None or camera is None:
            return None
        return lambda: analyzer.watch(camera)

    def add_control(self, handlers: dict[str, ControlHandler]) -> None:
        """Serve more operations on the control socket (``status`` comes from the wiring)."""
        self.control.add_handlers(handlers)

    def register_channels(self, registry: ChannelRegistry) -> None:
        """Serve the ``sensors`` and ``serial:NAME`` data channels of calls."""
        registry.register("sensors", self._serve_sensors)
        registry.register("serial:", self._serve_serial, prefix=True)

    async def start(self) -> None:
        """Start the outbox and post queue (resending what a previous run left), the link
        watch, rules, ports, socket."""
        stack = self._stack
        await stack.enter_async_context(self.outbox)
        await stack.enter_async_context(self.posts)
        stream = self._client.messages(maxsize=_LINK_STREAM_SIZE)
        watch = asyncio.get_running_loop().create_task(self._watch_link(stream), name="link")
        stack.push_async_callback(_cancel, watch)
        if self._client.state is ConnectionState.OPEN:  # connected before we started watching
            self._link_up()
        await stack.enter_async_context(self.engine)
        await stack.enter_async_context(self.sensors)
        await stack.enter_async_context(self.control)

    async def close(self) -> None:
        """Stop in reverse order; what the outbox holds stays on disk for the next run."""
        await self._stack.aclose()
        for task in list(self._flushes):
            await _cancel(task)

    def status(self) -> dict[str, Any]:
        """Ports, rules and outbox, for the ``control`` channel and ``edge-agent status``."""
        stats, posts = self.outbox.stats(), self.posts.stats()
        return {
            "sensors": self.sensors.status(),
            "events": self.engine.status(),
            "outbox": {"depth": stats.depth, "text": stats.status_text()},
            "posts": {"depth": posts.depth, "dropped": posts.dropped},
        }

    def status_lines(self) -> list[str]:
        """``edge-agent status`` lines: one per serial port, then one per event rule."""
        lines = [
            f"serial {name}: {port.get('state')} ({port.get('readings', 0)} readings)"
            for name, port in self.sensors.status().items()
        ]
        lines.extend(
            f"event {name}: {_fired_text(int(rule.get('fired', 0)))}"
            for name, rule in self.engine.status().items()
        )
        return lines

    def render_metrics(self) -> str:
        """Prometheus text of sensor reads and errors, events fired, and the outbox."""
        out = Exposition("edge_agent_")
        ports = self.sensors.status()
        out.add("sensor_up", "gauge", "Whether a serial port is open.", _per(ports, "port", _is_up))
        out.add(
            "sensor_readings_total",
            "counter",
            "Readings parsed, by port.",
            _per(ports, "port", lambda p: _count(p, "readings")),
        )
        out.add(
            "sensor_errors_total",
            "counter",
            "Bad data skipped and outages, by port.",
            _per(ports, "port", _errors),
        )
        rules = self.engine.status()
        out.add(
            "events_fired_total",
            "counter",
            "Event rules fired, by rule.",
            _per(rules, "rule", lambda r: _count(r, "fired")),
        )
        return (
            out.render()
            + self.outbox.stats().render_metrics()
            + self.posts.stats().render_metrics()
        )

    # -- actions and data channels ---------------------------------------------------------

    async def _watch_link(self, stream: Any) -> None:
        """Follow the hub link: up, down, and the echoes of our own posts."""
        me = self._client.user_id
        message: RealtimeMessage
        async with stream:
            async for message in stream:
                if message.type is MessageType.SUCCESS:
                    self._link_up()
                elif message.type in _LINK_DOWN:
                    self.posts.link_down()
                elif message.type is MessageType.MESSAGE and message.sender == me:
                    post_id = (
                        message.message.get("id") if isinstance(message.message, dict) else None
                    )
                    if isinstance(post_id, str):
                        self.posts.acknowledge(post_id)

    def _link_up(self) -> None:
        self.posts.link_up()
        self.outbox.retry_now()  # alerts waiting out a back-off go now
        if self._telemetry:
            task = asyncio.get_running_loop().create_task(self._flush_telemetry())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _send_post(self, group: str, payload: dict[str, Any]) -> None:
        """Send one queued post; ``LinkDownError`` when the link is not open."""
        if self._client.state is not ConnectionState.OPEN:
            raise LinkDownError("the hub link is not open")
        try:
            await self._client.post_realtime(payload, group)
        except RealtimeError as exc:
            if self._client.state is not ConnectionState.OPEN or exc.message in _LINK_TEXTS:
                raise LinkDownError("the hub link is not open") from exc
            raise

    async def _post_telemetry(self, group: str, payload: dict[str, Any]) -> None:
        """Post telemetry now if the link is up, else keep only the latest for later."""
        if self.posts.link_is_up and not self._telemetry:
            try:
                await self._client.post_realtime(payload, group)
            except RealtimeError as exc:
                log.debug("telemetry to %s kept for later: %s", group, exc.message)
            else:
                return
        self._telemetry[group] = payload

    async def _flush_telemetry(self) -> None:
        pending, self._telemetry = self._telemetry, {}
        for group, payload in pending.items():
            try:
                await self._client.post_realtime(payload, group)
            except RealtimeError:
                self._telemetry.setdefault(group, payload)  # a newer one may have come

    async def _snapshot(self, event: Event) -> str | None:
        """A picture of the moment, stored on the hub; the alert carries only its link."""
        if self._camera is None:
            return None
        jpeg = await self._camera()
        link = await self._client.upload_snapshot(jpeg)
        log.info("event %s: snapshot %s", event.name, link, extra={"event": event.name})
        return link

    async def _call_ready(self, event: Event) -> None:
        # The alert itself carries the viewer link that opens a call to this device; the
        # device is always ready to answer, so there is nothing more to prepare.
        log.info("event %s asks for a call", event.name, extra={"event": event.name})

    def _presence(self, name: str, up: bool) -> None:
        self.engine.on_device("serial", name, up)
        for listener in self._port_listeners:
            listener(name, up)

    async def _serve_sensors(self, session: ChannelSession) -> None:
        subscription = self.sensors.subscribe(ReadingFilter())
        pump = asyncio.create_task(_pump(subscription, session))
        try:
            async for message in session.messages():
                subscription.filter = _filter_or_error(message, session) or subscription.filter
        finally:
            pump.cancel()
            subscription.close()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _serve_serial(self, session: ChannelSession) -> None:
        name = session.label.removeprefix("serial:")
        try:
            bridge = self.sensors.bridge(name)
        except EdgeAgentError as exc:
            session.send_json(_error("FORBIDDEN", str(exc)))
            return
        pump = asyncio.create_task(_pump(bridge.readings, session))
        try:
            async for message in session.messages():
                await _write(bridge, message, session)
        finally:
            pump.cancel()
            bridge.close()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


_LINK_TEXTS = frozenset({Texts.NOT_OPEN, Texts.NO_CONNECTION})


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _pump(readings: Any, session: ChannelSession) -> None:
    reading: Reading
    async for reading in readings:
        session.send_json(reading.as_json())


def _filter_or_error(message: str | bytes, session: ChannelSession) -> ReadingFilter | None:
    try:
        return ReadingFilter.from_json(json.loads(message))
    except ValueError as exc:
        session.send_json(_error("INVALID_PARAMETER", f"bad sensors filter: {exc}"))
        return None


async def _write(bridge: Any, message: str | bytes, session: ChannelSession) -> None:
    try:
        await bridge.write(message)
    except EdgeAgentError as exc:
        session.send_json(_error("FORBIDDEN", getattr(exc, "message", str(exc))))
    else:
        session.send_json({"ok": True, "written": len(message)})


def _fired_text(count: int) -> str:
    """How often a rule fired, in words: "not fired yet", "fired once", "fired 3 times"."""
    if count == 0:
        return "not fired yet"
    return "fired once" if count == 1 else f"fired {count} times"


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _per(
    items: dict[str, Any], label: str, value: Callable[[dict[str, Any]], float]
) -> list[tuple[str, float]]:
    return labelled(label, {name: value(item) for name, item in items.items()})


def _count(item: dict[str, Any], key: str) -> float:
    found = item.get(key)
    return found if isinstance(found, int | float) else 0


def _is_up(port: dict[str, Any]) -> float:
    return 1 if port.get("state") == "open" else 0


def _errors(port: dict[str, Any]) -> float:
    bad = port.get("bad_data")
    total = sum(bad.values()) if isinstance(bad, dict) else 0
    return total + _count(port, "outages")
