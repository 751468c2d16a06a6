"""RealtimeClient: the reference's realtime API in Python, over ``websockets`` and HTTP.

Usage::

    client = RealtimeClient("ws://127.0.0.1:8080/ws", token=jwt)
    await client.connect_realtime(print)
    await client.join_realtime("devices")
    await client.post_realtime({"hello": "world"}, "devices")
    ...
    await client.close_realtime()

How it behaves where the reference leaves room:

- **Several hubs.** ``url`` may be a list: the nodes of a hub cluster. Each attempt tries
  them in turn, starting after the one last used, and every address of a name that
  resolves to several; the first that accepts wins. A node's loss is then one reconnect.
- **Reconnects forever, and soon.** A lost or refused connection is retried on the
  schedule of :class:`agent.retry.Reconnect`: within a second after a hub restart (close
  code 1012) and throughout the first minute of an outage, then backing off with full
  jitter to 30 s. Every wait is announced with a ``reconnect`` message and every
  (re)connection with ``success``. After a reconnect the client rejoins
  its groups (the first plainly, the rest with ``keep``) before it reports ``success``.
- **A refused token is reported, not fatal.** When the hub answers the upgrade with 401/403
  (or closes with 4401/4403) the client emits an ``error`` with code ``UNAUTHORIZED`` or
  ``FORBIDDEN`` and keeps retrying at the slow ``refused_delay`` pace: an unattended
  device must come back by itself once the hub's accounts are restored.
- **connect_realtime returns after the first attempt**, whether it opened or not; the
  outcome also reaches the callback. Groups joined before the connection opens are
  remembered and joined as soon as it does.
- **Delivery never blocks the socket.** The callback (sync or async) runs on its own task,
  in order, fed by a bounded queue; each ``messages()`` stream has its own bounded queue.
  When a queue is full the oldest message is dropped, and the consumer next receives an
  ``error`` message with code ``MESSAGES_DROPPED`` saying how many were lost.
- ``#rtc`` frames go to :meth:`RealtimeClient.on_rtc_frame`: to a handler registered with
  :meth:`RealtimeClient.set_rtc_handler`, else to the client's calls (:mod:`agent.rtc`),
  which place calls (:meth:`RealtimeClient.connect_rtc`) and ring with ``rtc:incoming``
  messages carrying ``connect_rtc`` and ``hangup``; ``rtc:closed`` says the other side hung
  up. Closing the client hangs up its calls.

Secrets: the token travels in the ``?token=`` query (browsers cannot set headers on a
WebSocket) and in the ``Authorization`` header of HTTP calls; it is never logged, and the
``websockets`` debug log gets it redacted.

The parts: :mod:`agent.client.realtime` (the client), :mod:`agent.client.link` (the
connection, its reconnects and groups), :mod:`agent.client.failures` (what a failed
connection means), :mod:`agent.client.addresses` (hub URLs), :mod:`agent.client.delivery`
(callback and streams), :mod:`agent.client.checks` (arguments refused before sending),
:mod:`agent.client.token` (the token's user id); HTTP calls go
through :mod:`agent.hub_http`, push calls through :mod:`agent.push.client_methods`, and
calls through :mod:`agent.rtc.client_calls`. The ``[connect]`` settings are
:mod:`agent.client.settings`.

Names are imported on first use: loading the settings model (as ``agent.config`` does)
does not load ``websockets``, aiohttp or the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lazy import lazy_exports

if TYPE_CHECKING:
    from agent.client.delivery import Callback
    from agent.client.link import ConnectionState
    from agent.client.realtime import RealtimeClient
    from agent.client.settings import ConnectSettings
    from agent.messages import (
        DROPPED_CODE,
        MessageStream,
        MessageType,
        RealtimeMessage,
        message_from_frame,
    )
    from agent.rtc.client_calls import RtcHandler

__all__ = [
    "DROPPED_CODE",
    "Callback",
    "ConnectSettings",
    "ConnectionState",
    "MessageStream",
    "MessageType",
    "RealtimeClient",
    "RealtimeMessage",
    "RtcHandler",
    "message_from_frame",
]

_HOMES = {
    "DROPPED_CODE": "agent.messages",
    "Callback": "agent.client.delivery",
    "ConnectSettings": "agent.client.settings",
    "ConnectionState": "agent.client.link",
    "MessageStream": "agent.messages",
    "MessageType": "agent.messages",
    "RealtimeClient": "agent.client.realtime",
    "RealtimeMessage": "agent.messages",
    "RtcHandler": "agent.rtc.client_calls",
    "message_from_frame": "agent.messages",
}


__getattr__ = lazy_exports(__name__, _HOMES)
