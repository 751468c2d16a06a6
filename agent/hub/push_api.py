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

The bodies are typed models, which the OpenAPI document describes; their rules and refusal
texts are the push core's (:mod:`agent.push.subscriptions`, :mod:`agent.push.message`), run
by each model's validator, so a refusal over HTTP reads as the core's. The push service
applies the same functions again with what depends on its settings (a private endpoint
host, the default ``ttl``), and a batch's items one by one.

``send-batch`` is how an agent's outbox catches up after an outage: the requests are
accepted in order in one transaction, and each gets the answer ``send`` would have given
it (the status, and for an error its code and message), so one refused alert does not
hold back the rest.

This module does not use ``from __future__ import annotations``: FastAPI reads the route
signatures at definition time, and they name the injected dependency, a local variable.
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Final, Self
from uuid import UUID

from fastapi import Body, Depends, FastAPI
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    model_validator,
)

from agent.errors import Codes, RealtimeError
from agent.hub.accounts import Account, Role
from agent.hub.openapi import reference_check
from agent.push.message import Urgency, parse_send_request
from agent.push.service import MAX_BATCH, PushService, check_batch
from agent.push.settings import MAX_TTL_SECONDS
from agent.push.subscriptions import MAX_ENDPOINT_CHARS, check_endpoint, parse_subscription

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
# JSON Schema's format of a URL held in a str field: the endpoint is stored exactly as the
# browser gave it, which pydantic's URL types would normalise.
_URI: Final[dict[str, JsonValue]] = {"format": "uri"}
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
    """A subscription's keys (RFC 8291 section 3), base64url as the browser gives them."""

    model_config = ConfigDict(extra="allow")

    p256dh: str = Field(min_length=1, description="The browser's P-256 key: 65 bytes.")
    auth: str = Field(min_length=1, description="The authentication secret: 16 bytes.")


class SubscriptionBody(BaseModel):
    """``PushSubscription.toJSON()`` as a browser gives it (``expirationTime`` is ignored).

    Checked by :func:`~agent.push.subscriptions.parse_subscription`; whether the endpoint's
    host may be private is the push service's setting, so the service checks that.
    """

    model_config = ConfigDict(extra="allow")

    endpoint: str = Field(
        min_length=1,
        max_length=MAX_ENDPOINT_CHARS,
        description="The push service's https URL for this browser.",
        json_schema_extra=_URI,
    )
    keys: SubscriptionKeys

    @model_validator(mode="wrap")
    @classmethod
    def _push_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        reference_check(lambda: parse_subscription(data, allow_private=True))
        return handler(data)


class UnsubscribeBody(BaseModel):
    """The subscription to delete, by ``endpoint``; its ``keys`` may come along, unread."""

    model_config = ConfigDict(extra="allow")

    endpoint: str = Field(min_length=1, max_length=MAX_ENDPOINT_CHARS, json_schema_extra=_URI)

    @model_validator(mode="wrap")
    @classmethod
    def _push_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if isinstance(data, Mapping):
            reference_check(lambda: check_endpoint(data.get("endpoint"), allow_private=True))
        return handler(data)


class SendBody(BaseModel):
    """A push notification and its recipients; nobody named is everyone the caller may reach.

    Checked by :func:`~agent.push.message.parse_send_request`, the rules and texts of every
    send (a batch's items too).
    """

    model_config = ConfigDict(extra="forbid")

    title: str
    body: str = ""
    user_ids: UUID | Annotated[list[UUID], Field(min_length=1)] | None = Field(
        None, description="A user id or a list of them; leave it out for everyone."
    )
    users: list[str] | None = Field(None, description="Account names.")
    roles: list[Role] | None = None
    id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="An alert id (letters, digits, _ . : -): a resend with the same id is not "
        "pushed again.",
    )
    urgency: Urgency | None = Field(None, description="RFC 8030 section 5.3 (default normal).")
    ttl: int | None = Field(
        None, ge=0, le=MAX_TTL_SECONDS, description="Seconds to live (RFC 8030 section 5.2)."
    )
    topic: str | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="A newer message with the same topic replaces this one (RFC 8030 section "
        "5.4): A-Z a-z 0-9 - _.",
    )
    url: str | None = Field(None, description="What a click opens: a path on the hub.")
    device: str | None = Field(None, min_length=1, max_length=128, description="Its device.")
    event: str | None = Field(None, min_length=1, max_length=128, description="Its event.")
    time: float | None = Field(None, ge=0, description="When it happened, Unix seconds.")
    snapshot: str | None = Field(None, description="An image: a path on the hub or https URL.")
    call: bool = Field(False, description="Whether a click offers to call the device.")

    @model_validator(mode="wrap")
    @classmethod
    def _push_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # default_ttl only fills in a missing ttl, which this check does not keep.
        reference_check(lambda: parse_send_request(data, default_ttl=0))
        return handler(data)


class SendBatchBody(BaseModel):
    """Several send requests, accepted in order in one transaction.

    The items are checked one by one, each answered as ``/api/push/send`` would answer it,
    so the list only says they are objects (:func:`~agent.push.service.check_batch`).
    """

    alerts: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_BATCH, description="Bodies of /api/push/send."
    )

    @model_validator(mode="wrap")
    @classmethod
    def _push_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if isinstance(data, Mapping):
            reference_check(lambda: check_batch(data.get("alerts")))
        return handler(data)


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
        await push.subscribe(account.user_id, body.model_dump(mode="json", exclude_unset=True))
        return SUBSCRIBED_TEXT

    @app.post(f"{PUSH_ROUTE_PREFIX}/unsubscribe", tags=_TAGS)
    async def unsubscribe_notification(
        account: Annotated[Account, Depends(current_account)],
        body: Annotated[UnsubscribeBody, Body()],
    ) -> str:
        """unsubscribeNotification: delete the caller's subscription at ``endpoint``."""
        await push.unsubscribe(account.user_id, body.model_dump(mode="json", exclude_unset=True))
        return UNSUBSCRIBED_TEXT

    @app.post(f"{PUSH_ROUTE_PREFIX}/send", tags=_TAGS)
    async def push_notification(
        account: Annotated[Account, Depends(current_account)],
        body: Annotated[SendBody, Body()],
    ) -> str:
        """pushNotification: admins to anyone, devices to whom their settings allow."""
        await push.send(account, body.model_dump(mode="json", exclude_unset=True))
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
