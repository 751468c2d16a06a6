"""Web push: VAPID keys, subscriptions, sending (hub), and the durable alert outbox (agent).

Hub side: :class:`PushService` (``service.py``, sending in ``worker.py``) behind the routes of
``agent/hub/push_api.py``; pure cores for subscriptions, messages, recipients and answer
policy. Agent side: :class:`Outbox` (``outbox.py``) and the client's :class:`PushCalls`.

Names are imported on first use: loading the settings model (as ``agent.config`` does)
does not load aiohttp, pywebpush or the cryptography backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lazy import lazy_exports

if TYPE_CHECKING:
    from agent.push.client_methods import PushCalls
    from agent.push.errors import HubRequestError, PushError, VapidKeyError
    from agent.push.message import PushMessage, SendRequest, Urgency
    from agent.push.metrics import PushMetrics
    from agent.push.outbox import OUTBOX_FILE, Outbox, OutboxState, OutboxStats
    from agent.push.service import PushService
    from agent.push.settings import OutboxSettings, PushSettings
    from agent.push.subscriptions import Subscription
    from agent.push.vapid import VapidKeys

__all__ = [
    "OUTBOX_FILE",
    "HubRequestError",
    "Outbox",
    "OutboxSettings",
    "OutboxState",
    "OutboxStats",
    "PushCalls",
    "PushError",
    "PushMessage",
    "PushMetrics",
    "PushService",
    "PushSettings",
    "SendRequest",
    "Subscription",
    "Urgency",
    "VapidKeyError",
    "VapidKeys",
]

_HOMES = {
    "OUTBOX_FILE": "agent.push.outbox",
    "HubRequestError": "agent.push.errors",
    "Outbox": "agent.push.outbox",
    "OutboxSettings": "agent.push.settings",
    "OutboxState": "agent.push.outbox",
    "OutboxStats": "agent.push.outbox",
    "PushCalls": "agent.push.client_methods",
    "PushError": "agent.push.errors",
    "PushMessage": "agent.push.message",
    "PushMetrics": "agent.push.metrics",
    "PushService": "agent.push.service",
    "PushSettings": "agent.push.settings",
    "SendRequest": "agent.push.message",
    "Subscription": "agent.push.subscriptions",
    "Urgency": "agent.push.message",
    "VapidKeyError": "agent.push.errors",
    "VapidKeys": "agent.push.vapid",
}


__getattr__ = lazy_exports(__name__, _HOMES)
