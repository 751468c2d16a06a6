"""The hub's web push routes: VAPID key, subscribe, unsubscribe, send.

    GET  /api/push/vapid-public-key -> {"VAPIDPublicKey": "..."}
    POST /api/push/subscribe   {endpoint, keys: {p256dh, auth}}
         -> "SUCCESS: Subscribed to receive notifications."
    POST /api/push/unsubscribe {endpoint, keys?} -> "SUCCESS: Unsubscribed from notifications."
    POST /api/push/send {title, body, user_ids?, users?, roles?, id?, urgency?, ttl?, topic?,
                         url?, device?, event?, time?, snapshot?, call?}
         -> "SUCCESS: Notification sent."
    POST /api/push/send-batch {alerts: [send request, ...]}   (up to 100, in order)
         -> {results: [{status, code?, message}, ...]}   one per request, same order

Every route takes the app's own bearer-token dependency (passed in, so authentication lives
in one place); errors are the app's ``{"code", "message"}`` answers (INVALID_PARAMETER 400,
FORBIDDEN 403, RATE_LIMITED 429). Who may push to whom: :mod:`agent.push.recipients`.

``send-batch`` is how an agent's outbox catches up after an outage: the requests are
accepted in order in one transaction, and each gets the answer ``send`` would have given
it (the status, and for an error its code and message), so one refused alert does not
hold back the rest.

This module does not use ``from __future__ import annotations``: FastAPI reads the route
signatures at definition time, and they name the injected dependency, a local variable.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final

from fastapi import Body, Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import Codes, RealtimeError
from agent.hub.accounts import Account
from agent.push.service import MAX_BATCH, PushService

__all__ = [
    "PUSH_ROUTE_PREFIX",
    "SENT_TEXT",
    "SUBSCRIBED_TEXT",
    "UNSUBSCRIBED_TEXT",
    "BatchAnswer",
    "BatchResult",
    "add_push_routes",
    "has_push_routes",
]

PUSH_ROUTE_PREFIX: Final = "/api/push"
SUBSCRIBED_TEXT: Final = "SUCCESS: Subscribed to receive notifications."
UNSUBSCRIBED_TEXT: Final = "SUCCESS: Unsubscribed from notifications."
SENT_TEXT: Final = "SUCCESS: Notification sent."
_TAGS: Final[list[str | Any]] = ["push"]
# The statuses the app answers these codes with (agent/hub/app.py), for one batch item.
_STATUS_OF_CODE: Final = {
    Codes.INVALID_PARAMETER: 400,
    Codes.INVALID_REQUEST: 400,
    Codes.FORBIDDEN: 403,
    Codes.NOT_FOUND: 404,
    Codes.RATE_LIMITED: 429,
}


class VapidKey(BaseModel):
    """The hub's VAPID public key: ``applicationServerKey`` for ``PushManager.subscribe``."""

    VAPIDPublicKey: str = Field(description="base64url of the uncompressed P-256 point.")


class SubscriptionKeys(BaseModel):
    """A subscription's keys (RFC 8291), base64url."""

    model_config = ConfigDict(extra="allow")

    p256dh: Any = Field(None, json_schema_extra={"type": "string"}, description="65 bytes.")
    auth: Any = Field(None, json_schema_extra={"type": "string"}, description="16 bytes.")


class SubscriptionBody(BaseModel):
    """``PushSubscription.toJSON()`` as a browser gives it (``expirationTime`` is ignored)."""

    model_config = ConfigDict(extra="allow")

    endpoint: Any = Field(None, json_schema_extra={"type": "string", "format": "uri"})
    keys: SubscriptionKeys | None = None


class UnsubscribeBody(BaseModel):
    """The subscription to delete, by ``endpoint``; its ``keys`` may come along, unread."""

    model_config = ConfigDict(extra="allow")

    endpoint: Any = Field(None, json_schema_extra={"type": "string", "format": "uri"})


class SendBody(BaseModel):
    """A push notification and its recipients; nobody named is everyone the caller may reach."""

    model_config = ConfigDict(extra="allow")

    title: Any = Field(None, json_schema_extra={"type": "string"})
    body: Any = Field(None, json_schema_extra={"type": "string"})
    user_ids: Any = Field(
        None,
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
        description="A user id or a list of them.",
    )
    users: Any = Field(
        None, json_schema_extra={"type": ["array", "null"]}, description="Account names."
    )
    roles: Any = Field(
        None, json_schema_extra={"type": ["array", "null"]}, description="admin|user|device"
    )
    id: Any = Field(None, description="An alert id: a resend with the same id is not pushed again.")
    urgency: Any = Field(
        None, json_schema_extra={"enum": ["very-low", "low", "normal", "high", None]}
    )
    ttl: Any = Field(
        None, json_schema_extra={"type": ["integer", "null"]}, description="Seconds to live."
    )
    topic: Any = Field(None, description="A newer message with the same topic replaces this one.")


class SendBatchBody(BaseModel):
    """Several send requests, accepted in order in one transaction."""

    alerts: Any = Field(
        None,
        json_schema_extra={"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH},
        description=f"1 to {MAX_BATCH} bodies of /api/push/send.",
    )


class BatchResult(BaseModel):
    """What one request of a batch got: the answer ``/api/push/send`` would have given."""

    status: int = Field(description="200, or the HTTP status of the error.")
    code: str | None = Field(None, description="The error code, for a refused request.")
    message: str


class BatchAnswer(BaseModel):
    """One result per request, in the order they were sent."""

    results: list[BatchResult]


def add_push_routes(
    app: FastAPI,
    push: PushService,
    *,
    current_account: Callable[..., Awaitable[Account]],
) -> None:
    """Add the ``/api/push`` routes to ``app``, authenticated by ``current_account``.

    Call it before a catch-all mount at ``/`` (the viewer's files): a mount matches first.
    """

    @app.get(f"{PUSH_ROUTE_PREFIX}/vapid-public-key", tags=_TAGS)
    async def vapid_public_key(
        account: Annotated[Account, Depends(current_account)],
    ) -> VapidKey:
        """vapidPublicKey: the key browsers subscribe with."""
        return VapidKey(VAPIDPublicKey=push.public_key)

    @app.post(f"{PUSH_ROUTE_PREFIX}/subscribe", tags=_TAGS)
    async def subscribe_notification(
        account: Annotated[Account, Depends(current_account)],
        body: Annotated[SubscriptionBody, Body()],
    ) -> str:
        """subscribeNotification: store this browser's subscription for the caller."""
        await push.subscribe(account.user_id, body.model_dump(exclude_unset=True))
        return SUBSCRIBED_TEXT

    @app.post(f"{PUSH_ROUTE_PREFIX}/unsubscribe", tags=_TAGS)
    async def unsubscribe_notification(
        account: Annotated[Account, Depends(current_account)],
        body: Annotated[UnsubscribeBody, Body()],
    ) -> str:
        """unsubscribeNotification: delete the caller's subscription at ``endpoint``."""
        await push.unsubscribe(account.user_id, body.model_dump(exclude_unset=True))
        return UNSUBSCRIBED_TEXT

    @app.post(f"{PUSH_ROUTE_PREFIX}/send", tags=_TAGS)
    async def push_notification(
        account: Annotated[Account, Depends(current_account)],
        body: Annotated[SendBody, Body()],
    ) -> str:
        """pushNotification: admins to anyone, devices to whom their settings allow."""
        await push.send(account, body.model_dump(exclude_unset=True))
        return SENT_TEXT

    @app.post(f"{PUSH_ROUTE_PREFIX}/send-batch", tags=_TAGS)
    async def push_notifications(
        account: Annotated[Account, Depends(current_account)],
        body: Annotated[SendBatchBody, Body()],
    ) -> BatchAnswer:
        """Several pushNotification requests in one: an agent catching up after an outage."""
        outcomes = await push.send_many(account, body.alerts)
        return BatchAnswer(results=[_result(outcome) for outcome in outcomes])


def _result(outcome: int | RealtimeError) -> BatchResult:
    if isinstance(outcome, RealtimeError):
        status = _STATUS_OF_CODE.get(outcome.code, 400)
        return BatchResult(status=status, code=outcome.code, message=outcome.message)
    return BatchResult(status=200, code=None, message=SENT_TEXT)


def has_push_routes(app: FastAPI) -> bool:
    """Whether ``app`` already serves the push routes."""
    wanted = f"{PUSH_ROUTE_PREFIX}/send"
    return any(getattr(route, "path", None) == wanted for route in app.router.routes)
