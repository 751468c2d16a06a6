"""The HTTP API says what it does: an OpenAPI document that declares every answer the hub
gives, and bounds on what the framework would otherwise answer undocumented.

FastAPI derives the document from the route signatures only. It declares 422 for input that
fails validation, where the hub answers 400 (one validation status everywhere), and nothing
of what the dependencies and handlers refuse. :func:`describe_answers` rewrites the document
FastAPI makes, once, into the one ``/openapi.json`` serves:

- every operation that takes parameters or a body declares 400; 422 is gone;
- every operation behind the bearer token declares 401 (with ``WWW-Authenticate``, RFC 6750
  section 3) and the bearer scheme; where the token is optional (``/health``, ``/metrics``:
  it only adds figures) the security requirement says so (OpenAPI 3.1 section 4.8.30: an
  empty requirement object makes it optional);
- every operation with a body declares 413: :class:`BodyLimit` refuses bodies over
  :data:`MAX_BODY_BYTES` as they are read, not after they fill the memory of a small board;
- the refusals a route makes in its own code (403, 404, 429, 503) come from :data:`ANSWERS`
  merged with the route's own ``responses=``;
- every error answer (4xx, and the login pool's 503) has the :class:`ErrorBody` shape.

A method a path does not serve is answered 405 with ``Allow`` naming the methods it does
(RFC 9110 section 15.5.6): :func:`allowed_methods` (the handler is in ``app.py``).

Request bodies are typed pydantic models, so the document describes them from their types.
Their rules and refusal texts have one definition, the shared pure validators (the ones the
realtime and push cores use, with the reference's messages): a model's validator runs them
through :func:`reference_check`, which turns their INVALID_PARAMETER refusal into a pydantic
error of type :data:`REFUSED`; :func:`refusal` finds its text again for the answer.
"""

from __future__ import annotations

import copy
import enum
import http
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.security.http import HTTPBase
from pydantic import BaseModel, Field
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import Codes, EdgeAgentError, RealtimeError

__all__ = [
    "ANSWERS",
    "MAX_BODY_BYTES",
    "REFUSED",
    "Answer",
    "Auth",
    "BodyLimit",
    "BodyTooLargeError",
    "ErrorBody",
    "FilesAfterRoutes",
    "allowed_methods",
    "describe_answers",
    "install_api_contract",
    "reference_check",
    "refusal",
    "route_auth",
]

# The largest body any route takes is a camera snapshot (snapshots.MAX_BYTES, 1 MiB); JSON
# bodies are far smaller. Stated here, not imported: this module uses no other part of the hub.
MAX_BODY_BYTES: Final = 1024 * 1024
_ERROR_REF: Final = "#/components/schemas/ErrorBody"
_FASTAPI_VALIDATION: Final = ("HTTPValidationError", "ValidationError")
_STATIC_METHODS: Final = ("GET", "HEAD")  # what the viewer's file mount serves
# The pydantic error type of a shared validator's refusal; its message is the answer's.
REFUSED: Final = "refused"

T = TypeVar("T")


class ErrorBody(BaseModel):
    """The shape of every error answer."""

    code: str = Field(examples=["UNAUTHORIZED"])
    message: str = Field(description="What was wrong, naming the field or value.")


class Auth(enum.Enum):
    """Whether an operation takes the bearer token."""

    NONE = "none"
    OPTIONAL = "optional"  # anonymous callers are answered too; a token adds to the answer
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Answer:
    """A refusal a route makes: its description, and whether ``Retry-After`` comes with it."""

    description: str
    retry_after: bool = False


# Refusals made in route code, by (method, path) as the document spells them. The fuzz test
# (tests/hub/test_openapi_fuzz.py) fails on any status a route answers that is not declared.
ANSWERS: Final[Mapping[tuple[str, str], Mapping[int, Answer]]] = {
    ("post", "/api/login"): {
        401: Answer("Wrong name or password (the same answer for both)."),
        429: Answer("Too many failed logins for this name or address.", retry_after=True),
        503: Answer("Too many logins at once.", retry_after=True),
    },
    ("get", "/health"): {403: Answer("A token that is not an admin's.")},
    ("get", "/metrics"): {403: Answer("A token that is not an admin's.")},
    ("get", "/api/users/{user_id}"): {
        403: Answer("Users may not look up accounts."),
        404: Answer("No account with this id shares a group with the caller."),
    },
    ("post", "/api/realtime/users"): {403: Answer("The group is not granted to the caller.")},
    ("post", "/api/push/send"): {
        403: Answer("The caller may not push to these recipients."),
        429: Answer("Too many push deliveries are pending."),
    },
    ("post", "/api/snapshots"): {403: Answer("Users may not upload snapshots.")},
    ("get", "/api/snapshots/{snapshot_id}"): {404: Answer("No such snapshot for the caller.")},
}

_GENERIC: Final = {
    400: "The request is not valid; the message names what was wrong.",
    401: "No valid bearer token: missing, expired, revoked, or its account is gone.",
    413: f"The request body is over {MAX_BODY_BYTES} bytes.",
}


def install_api_contract(app: FastAPI, *, authenticated: Callable[..., Awaitable[Any]]) -> None:
    """Serve :func:`describe_answers`' document at ``app.openapi_url`` and bound request bodies.

    ``authenticated`` is the dependency that requires a valid token. The document is built
    at its first request, when every route has been added.
    """
    build = app.openapi
    described: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not described:
            described.update(describe_answers(build(), route_auth(app.routes, authenticated)))
        return described

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)


def describe_answers(
    document: Mapping[str, Any],
    auth: Mapping[tuple[str, str], Auth],
    *,
    answers: Mapping[tuple[str, str], Mapping[int, Answer]] = ANSWERS,
) -> dict[str, Any]:
    """A copy of FastAPI's ``document`` that declares every answer (see the module docstring).

    ``auth`` maps (method, path) to how the operation takes the token; absent is ``NONE``.
    """
    described = copy.deepcopy(dict(document))
    components = described.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    bearer = _bearer_scheme(components)
    for key, operation in _operations(described):
        _describe(operation, auth.get(key, Auth.NONE), bearer, answers.get(key, {}))
    return described


def route_auth(
    routes: Iterable[BaseRoute], authenticated: Callable[..., Awaitable[Any]]
) -> dict[tuple[str, str], Auth]:
    """How each API operation takes the token: through ``authenticated`` (required), or an
    HTTP security scheme alone (required only if the scheme raises when it is missing)."""
    found: dict[tuple[str, str], Auth] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        calls = list(_dependency_calls(route.dependant.dependencies))
        schemes = [call for call in calls if isinstance(call, HTTPBase)]
        if authenticated in calls or any(scheme.auto_error for scheme in schemes):
            kind = Auth.REQUIRED
        else:
            kind = Auth.OPTIONAL if schemes else Auth.NONE
        for method in route.methods or ():
            found[(method.lower(), route.path_format)] = kind
    return found


def reference_check(check: Callable[[], T]) -> T:
    """What ``check`` (a shared validator) returns; run inside a pydantic model's validator.

    Its INVALID_PARAMETER refusal becomes a pydantic error of type :data:`REFUSED` carrying
    the message unchanged (no context, so braces in it are not a template); a refusal with
    another code is not a validation error and goes up as it is, to the app's handler.
    """
    try:
        return check()
    except RealtimeError as exc:
        if exc.code != Codes.INVALID_PARAMETER:
            raise
        raise PydanticCustomError(REFUSED, exc.message) from None


def refusal(errors: Iterable[Mapping[str, Any]]) -> str | None:
    """The message of the first :data:`REFUSED` error in ``errors``, if there is one."""
    return next((str(error["msg"]) for error in errors if error.get("type") == REFUSED), None)


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The ``Allow`` value for ``scope``'s path: the methods of every route that matches it,
    or those of the file mount when no route does."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            continue  # the viewer's mount matches every path: only the fallback below
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods) if methods else _STATIC_METHODS)


class FilesAfterRoutes:
    """ASGI app for a file mount at ``/``: 405 for a path an API route has, files otherwise.

    A mount matches every path, so Starlette would hand it ``GET /api/login`` (a POST-only
    path) and the files would answer 404. Mounted last, it only sees requests that no route
    took, so a route matching the path here means the method is wrong.
    """

    def __init__(self, files: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.files = files
        self._routes = routes  # the app's live route list: routes added later count too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a method an API path lacks (the app's handler adds ``Allow``), else serve."""
        if scope["type"] == "http" and any(
            route.matches(scope)[0] is not Match.NONE
            for route in self._routes
            if not isinstance(route, Mount)
        ):
            raise HTTPException(405)
        await self.files(scope, receive, send)


class BodyTooLargeError(EdgeAgentError, HTTPException):
    """A request body over the limit (413, RFC 9110 section 15.5.14); an ``HTTPException``
    so that FastAPI re-raises it from a body read to the app's handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over the limit of {limit} bytes.")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes raises :class:`BodyTooLargeError`
    when the application reads it (at once if ``Content-Length`` says so), before it is held.

    Only routes that read a body can be refused, so only operations with one declare 413.
    FastAPI re-raises an ``HTTPException`` met while reading, so the app's handler answers.
    """

    def __init__(self, app: ASGIApp, *, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass ``scope`` on with a ``receive`` that counts the body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            if declared is not None and declared > self.limit:
                raise BodyTooLargeError(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLargeError(self.limit)
            return message

        await self.app(scope, bounded_receive, send)


def _operations(document: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield (method, path), operation


def _describe(
    operation: dict[str, Any], auth: Auth, bearer: str | None, answers: Mapping[int, Answer]
) -> None:
    responses: dict[str, Any] = operation["responses"]
    takes_input = responses.pop("422", None) is not None
    if takes_input or operation.get("parameters") or "requestBody" in operation:
        _declare(responses, 400, _GENERIC[400])
    if "requestBody" in operation:
        _declare(responses, 413, _GENERIC[413])
    operation.pop("security", None)
    if auth is not Auth.NONE and bearer is not None:
        _declare(responses, 401, _GENERIC[401])
        required: list[dict[str, list[str]]] = [{bearer: []}]
        operation["security"] = required if auth is Auth.REQUIRED else [{}, *required]
    for refused, answer in answers.items():
        _declare(responses, refused, answer.description)
        if answer.retry_after:
            responses[str(refused)].setdefault("headers", {})["Retry-After"] = _header(
                "Seconds to wait before trying again.", integer=True
            )
    for status, response in responses.items():
        if status.startswith(("4", "5")):  # also "4XX" and "5XX" ranges (OpenAPI 3.1 4.8.16)
            response["content"] = {"application/json": {"schema": {"$ref": _ERROR_REF}}}
        if status == "401":
            response.setdefault("headers", {})["WWW-Authenticate"] = _header(
                'The scheme to use: Bearer realm="edge-agent".'
            )
    operation["responses"] = dict(sorted(responses.items()))


def _declare(responses: dict[str, Any], status: int, description: str) -> None:
    """Add ``status``; a description the route wrote itself is kept."""
    response = responses.setdefault(str(status), {})
    # FastAPI describes a status declared without a description by its reason phrase.
    if response.get("description") in (None, "", http.HTTPStatus(status).phrase):
        response["description"] = description


def _header(description: str, *, integer: bool = False) -> dict[str, Any]:
    return {
        "description": description,
        "required": True,
        "schema": {"type": "integer" if integer else "string"},
    }


def _bearer_scheme(components: Mapping[str, Any]) -> str | None:
    schemes: Mapping[str, Any] = components.get("securitySchemes", {})
    return next(
        (
            name
            for name, s in schemes.items()
            if s.get("type") == "http" and s.get("scheme") == "bearer"
        ),
        None,
    )


def _dependency_calls(dependants: Iterable[Any]) -> Iterator[Any]:
    for dependant in dependants:
        yield dependant.call
        yield from _dependency_calls(dependant.dependencies)


def _content_length(scope: Scope) -> int | None:
    try:
        return int(Headers(scope=scope)["content-length"])
    except (KeyError, ValueError):
        return None
