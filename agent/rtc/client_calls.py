"""ClientCalls: what a realtime client does for calls, around the engine of :mod:`agent.rtc`.

One per ``RealtimeClient``. It

- makes the :class:`~agent.rtc.engine.RtcEngine` on first use (``RealtimeClient.rtc``),
  so a client that never calls loads neither aiortc nor av; the peer factory is the one
  given (before that moment, :meth:`use_factory`) or one made and closed here, and ICE
  servers come fresh from the hub (:class:`~agent.rtc.ice.HubIceServers`);
- routes each ``#rtc`` frame to a registered handler (a device's call standby) or else to
  the engine;
- turns the engine's events into the client's messages: ``rtc:incoming`` carrying
  ``connect_rtc`` and ``hangup``, and ``rtc:closed`` when the other side hangs up;
- hangs up every call and closes its own factory on :meth:`close`.

Signaling leaves through ``send_rtc`` (the client's, which checks the connection).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from agent.errors import Codes, RealtimeError
from agent.messages import MessageType, RealtimeMessage
from agent.protocol import HubFrame

if TYPE_CHECKING:
    from agent.rtc.calls import IncomingCall
    from agent.rtc.engine import RtcConnector, RtcEngine
    from agent.rtc.media import MediaDevices
    from agent.rtc.peer import EventCallback, PeerFactory

__all__ = ["ClientCalls", "RtcHandler"]

RtcHandler: TypeAlias = Callable[[HubFrame], None]


class ClientCalls:
    """The calls of one realtime client (see the module docstring)."""

    def __init__(
        self,
        *,
        send_rtc: Callable[[str, dict[str, Any]], Awaitable[None]],
        local_id: str,
        ice_servers: Callable[[], Awaitable[dict[str, Any]]],
        emit: Callable[[RealtimeMessage], None],
        factory: PeerFactory | None = None,
        media_devices: MediaDevices | None = None,
    ) -> None:
        """Prepare; nothing of aiortc is loaded until :attr:`engine` is first used.

        Args:
            send_rtc: Sends an ``rtc`` content to a connection id.
            local_id: This side's user id (the value of ``pickup`` and ``hungup``).
            ice_servers: Fetches the hub's ICE servers (``GET /api/ice-servers``).
            emit: Hands a message to the client's callback and streams.
            factory: Makes the peer connections (default: one made here, no ICE servers).
            media_devices: This side's camera and microphone (default: none).
        """
        self._send_rtc = send_rtc
        self._local_id = local_id
        self._ice_servers = ice_servers
        self._emit = emit
        self._factory = factory
        self._own_factory: PeerFactory | None = None
        self._media_devices = media_devices
        self._engine: RtcEngine | None = None
        self._handler: RtcHandler | None = None

    def set_handler(self, handler: RtcHandler | None) -> None:
        """Route ``#rtc`` frames to ``handler`` (``None``: to the engine)."""
        self._handler = handler

    def handle_frame(self, frame: HubFrame) -> None:
        """One ``#rtc`` frame: the registered handler's, else the engine's (never blocks)."""
        if self._handler is not None:
            self._handler(frame)
        else:
            self.engine.handle_frame(frame)

    def use_factory(self, factory: PeerFactory) -> None:
        """Make the calls with ``factory``.

        Raises:
            RealtimeError: INVALID_REQUEST once the engine exists: it keeps its factory.
        """
        if self._engine is not None:
            raise RealtimeError(
                Codes.INVALID_REQUEST, "The calls of this client exist already; set it before."
            )
        self._factory = factory

    @property
    def engine(self) -> RtcEngine:
        """The calls engine (made on first use)."""
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    async def dial(
        self,
        cid: str,
        *,
        ice: Any = None,
        media: Any = None,
        channels: Any = None,
        callback: EventCallback | None = None,
    ) -> RtcConnector:
        """Place a call to ``cid`` (see ``RealtimeClient.connect_rtc``)."""
        return await self.engine.dial(
            cid, ice=ice, media=media, channels=channels, callback=callback
        )

    async def close(self) -> None:
        """Hang up every call and close the factory made here; a later use starts afresh."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.close()
        factory, self._own_factory = self._own_factory, None
        if factory is not None:
            factory.close()

    def _make_engine(self) -> RtcEngine:
        from agent.rtc.engine import RtcEngine
        from agent.rtc.ice import HubIceServers
        from agent.rtc.peer import PeerFactory

        factory = self._factory
        if factory is None:
            factory = self._own_factory = PeerFactory()
        return RtcEngine(
            self._send_rtc,
            local_id=self._local_id,
            factory=factory,
            media_devices=self._media_devices,
            on_incoming=self._ring,
            on_closed=self._closed,
            # Fresh TURN credentials from the hub for calls placed and answered.
            ice_source=HubIceServers(self._ice_servers, factory.options).get,
        )

    def _ring(self, incoming: IncomingCall) -> None:
        self._emit(
            RealtimeMessage(
                MessageType.RTC_INCOMING,
                sender=incoming.user_id,
                sender_cid=incoming.cid,
                connect_rtc=incoming.connect_rtc,
                hangup=incoming.hangup,
            )
        )

    def _closed(self, cid: str, user_id: str | None, content: dict[str, Any]) -> None:
        self._emit(RealtimeMessage(MessageType.RTC_CLOSED, content, user_id, cid))
