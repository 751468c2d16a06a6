"""The hub's ASGI application: JSON HTTP API (with OpenAPI), the realtime WebSocket, viewer.

HTTP errors are ``{"code": ..., "message": ...}`` with a 4xx status, the reference's error
shape. Authenticated routes take ``Authorization: Bearer JWT``; the token's account must
still exist.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar
from uuid import UUID

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from agent import __version__
from agent.errors import AuthError, Codes, RealtimeError
from agent.hub import listing
from agent.hub.access import Access, AccessTable
from agent.hub.accounts import Account, AccountStore, Role
from agent.hub.accounts_api import add_account_routes
from agent.hub.backplane import Backplane
from agent.hub.connection import ASGISend
from agent.hub.devices_api import DEFAULT_VIEWER_GROUPS, IceServerItem, add_device_routes
from agent.hub.events_api import EventsService, add_event_routes
from agent.hub.limits import LimitSettings
from agent.hub.login import LoginGuard, LoginRefused, client_address
from agent.hub.metrics import CONTENT_TYPE, HubMetrics
from agent.hub.openapi import (
    ErrorBody,
    FilesAfterRoutes,
    allowed_methods,
    install_api_contract,
    reference_check,
    refusal,
)
from agent.hub.push_api import add_push_routes
from agent.hub.realtime import ASGIReceive, RealtimeEndpoint
from agent.hub.snapshots import SnapshotStore, add_snapshot_routes
from agent.hub.tokens import TokenIssuer
from agent.hub.turn import IceServerSource, add_ice_routes
from agent.push.service import PushService

__all__ = [
    "LOGIN_TOKEN_TTL_SECONDS",
    "REALTIME_PATH",
    "STATIC_DIR",
    "HubApplication",
    "HubServices",
    "create_app",
]

LOGIN_TOKEN_TTL_SECONDS: Final = 24 * 3600
REALTIME_PATH: Final = "/ws"
STATIC_DIR: Final = Path(__file__).parent / "static"
_STATUS_OF_CODE: Final = {
    Codes.INVALID_PARAMETER: 400,
    Codes.INVALID_REQUEST: 400,
    Codes.UNAUTHORIZED: 401,
    Codes.FORBIDDEN: 403,
    Codes.NOT_FOUND: 404,
    Codes.RATE_LIMITED: 429,
}
_CODE_OF_STATUS: Final = {v: k for k, v in _STATUS_OF_CODE.items()} | {
    400: Codes.INVALID_REQUEST,
    405: Codes.INVALID_REQUEST,
    413: Codes.INVALID_REQUEST,
}


@dataclass(frozen=True, slots=True)
class HubServices:
    """What the application serves from."""

    accounts: AccountStore
    access: AccessTable
    tokens: TokenIssuer
    backplane: Backplane
    metrics: HubMetrics
    limits: LimitSettings
    login_guard: LoginGuard
    static_dir: Path = STATIC_DIR
    login_ttl_seconds: int = LOGIN_TOKEN_TTL_SECONDS
    push: PushService | None = None
    viewer_ice_servers: tuple[IceServerItem, ...] = ()
    viewer_groups: tuple[str, ...] = DEFAULT_VIEWER_GROUPS
    snapshots: SnapshotStore | None = None
    ice: IceServerSource | None = None  # /api/ice-servers (default: the viewer's static list)
    events: EventsService | None = None  # event history, device tiles, recent telemetry


class LoginRequest(BaseModel):
    """Credentials of an account."""

    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class Me(BaseModel):
    """The account a token belongs to."""

    user_id: str = Field(description="UUID; what the wire carries as #user_id.")
    name: str
    role: Role


class LoginResponse(Me):
    """A fresh token and whose it is."""

    token: str
    expires_at: int = Field(description="Unix time the token expires at.")


_CONDITION_DOC: Final = '">=" on a group name means "starts with"; not with range.'


class FetchOptions(BaseModel):
    """The reference's FetchOptions, riding along in a listing's body.

    The rules and their texts are :mod:`agent.hub.listing`'s, run by the subclasses'
    validators; the types here describe them and give the route typed values.
    """

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(
        None,
        ge=1,
        le=listing.MAX_LIMIT,
        description=f"Page size (default {listing.DEFAULT_LIMIT}).",
    )
    startKey: str | None = Field(
        None, description="The startKey of the previous page; omit for the first."
    )
    ascending: bool | None = Field(None, description="Sort order (default true).")

    _page: listing.PageRequest = PrivateAttr(default_factory=listing.PageRequest)

    @property
    def page(self) -> listing.PageRequest:
        """The validated FetchOptions."""
        return self._page


class GroupsRequest(FetchOptions):
    """getRealtimeGroups parameters and FetchOptions, checked as the reference does."""

    searchFor: listing.SearchFor | None = Field(None, description="The field compared.")
    value: str | float | None = Field(None, description="A group name, or a number of users.")
    condition: (
        Literal[">", ">=", "=", "<", "<=", "!=", "gt", "gte", "eq", "lt", "lte", "ne"] | None
    ) = Field(None, description=_CONDITION_DOC)
    range: str | float | None = Field(
        None, description="Inclusive upper end of value..range; not with condition."
    )

    _query: listing.GroupQuery = PrivateAttr(default_factory=listing.GroupQuery)

    @property
    def query(self) -> listing.GroupQuery:
        """The validated search."""
        return self._query

    @model_validator(mode="wrap")
    @classmethod
    def _listing_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if not isinstance(data, Mapping):
            return handler(data)  # pydantic names what the body should be
        query, page = reference_check(
            lambda: (listing.parse_group_query(data), listing.parse_page_request(data))
        )
        request = handler(data)
        request._query, request._page = query, page
        return request


class UsersRequest(FetchOptions):
    """getRealtimeUsers parameters and FetchOptions, checked as the reference does."""

    group: str = Field(min_length=1, description="The group whose connections are listed.")
    user_id: UUID | None = Field(None, description="Only this user's connections.")

    _query: listing.UserQuery = PrivateAttr()

    @property
    def query(self) -> listing.UserQuery:
        """The validated listing."""
        return self._query

    @model_validator(mode="wrap")
    @classmethod
    def _listing_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if not isinstance(data, Mapping):
            return handler(data)
        query, page = reference_check(
            lambda: (listing.parse_user_query(data), listing.parse_page_request(data))
        )
        request = handler(data)
        request._query, request._page = query, page
        return request


class GroupItem(BaseModel):
    """A group and its number of connections."""

    group: str
    number_of_users: int


class UserItem(BaseModel):
    """A connection in a group."""

    user_id: str
    connection_id: str = Field(examples=["cid:Qx3f0bX1c2d3e4f5"])


_PAGE_CONFIG: Final = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class GroupsPage(BaseModel):
    """A page of groups (the reference's DatabaseResponse)."""

    model_config = _PAGE_CONFIG

    items: list[GroupItem] = Field(alias="list")
    start_key: str | None = Field(alias="startKey", description="Pass to get the next page.")
    end_of_list: bool = Field(alias="endOfList")


class UsersPage(BaseModel):
    """A page of connections (the reference's DatabaseResponse)."""

    model_config = _PAGE_CONFIG

    items: list[UserItem] = Field(alias="list")
    start_key: str | None = Field(alias="startKey", description="Pass to get the next page.")
    end_of_list: bool = Field(alias="endOfList")


class Health(BaseModel):
    """Liveness of the hub, and its size for operators."""

    status: str
    version: str
    connections: int | None = Field(default=None, description="Only for admins and local scrapers.")
    groups: int | None = Field(default=None, description="Only for admins and local scrapers.")


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
}


class HubApplication:
    """The hub's ASGI app: ``/ws`` goes straight to the realtime endpoint, the rest to FastAPI.

    The realtime path skips the HTTP middleware stack: its coroutine frames would cost every
    open connection a few kilobytes, and every frame sent an extra await per layer.
    """

    def __init__(self, services: HubServices) -> None:
        self.api = create_app(services)
        self.realtime = RealtimeEndpoint(
            backplane=services.backplane,
            tokens=services.tokens,
            accounts=services.accounts,
            access=services.access,
            limits=services.limits,
            metrics=services.metrics,
            push=services.push,
        )

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "websocket" and scope["path"] == REALTIME_PATH:
            await self.realtime(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(services: HubServices) -> FastAPI:
    """The HTTP side of the hub for ``services``: JSON API, OpenAPI, viewer files."""
    app = FastAPI(
        title="edge-agent hub",
        version=__version__,
        description=f"Realtime hub: WebSocket {REALTIME_PATH}?token=JWT and this JSON API.",
        docs_url=None,  # the interactive docs load scripts from a CDN; /openapi.json is enough
        redoc_url=None,
    )
    _add_error_handlers(app)
    install_api_contract(app, authenticated=_current_account)
    _add_api_routes(app, services)
    _add_listing_routes(app, services)
    _add_operations_routes(app, services)
    add_account_routes(app, services.accounts, services.access, current_account=_current_account)
    if services.push is not None:
        add_push_routes(app, services.push, current_account=_current_account)
    if services.snapshots is not None:
        add_snapshot_routes(
            app, services.snapshots, services.access, current_account=_current_account
        )
    add_device_routes(
        app,
        services,
        current_account=_current_account,
        ice_servers=services.viewer_ice_servers,
        groups=services.viewer_groups,
    )
    add_ice_routes(
        app,
        services.ice or IceServerSource(static=services.viewer_ice_servers),
        current_account=_current_account,
    )
    add_event_routes(app, services, current_account=_current_account)
    if services.static_dir.is_dir():
        # Last, so that it only answers what no route above matched: the viewer at "/".
        files = StaticFiles(directory=services.static_dir, html=True)
        app.mount("/", FilesAfterRoutes(files, app.router.routes))
    return app


_bearer = HTTPBearer(auto_error=False, description="A token from /api/login or `edge-agent token`.")


async def _current_account(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Account:
    """The account of the request's bearer token; ``AuthError`` (401) if there is none."""
    services: HubServices = request.app.state.services
    if credentials is None:
        raise AuthError("Send the header 'Authorization: Bearer TOKEN'.", reason="missing")
    claims = services.tokens.verify(credentials.credentials)
    account = await asyncio.to_thread(services.accounts.get_by_id, claims.user_id)
    if account is None:
        raise AuthError("The token's account no longer exists.", reason="invalid")
    if claims.generation != account.token_generation:
        raise AuthError("The token has been revoked; get a new one.", reason="invalid")
    return account


Authed = Annotated[Account, Depends(_current_account)]


def _add_api_routes(app: FastAPI, services: HubServices) -> None:
    app.state.services = services

    @app.post(
        "/api/login",
        response_model=LoginResponse,
        responses={
            **_ERRORS,
            429: {"model": ErrorBody, "description": "Too many failed logins; see Retry-After."},
            503: {"model": ErrorBody, "description": "Too many logins at once; see Retry-After."},
        },
        tags=["accounts"],
    )
    async def login(body: LoginRequest, request: Request) -> LoginResponse | JSONResponse:
        """Exchange a name and password for a token.

        Failed logins are throttled per name and per client address (429); a wrong name and
        a wrong password get the same 401.
        """
        address = client_address(request.client)
        try:
            account = await services.login_guard.verify(body.name, body.password, address)
        except LoginRefused as exc:
            refused = _error(exc.status, exc.code, exc.message)
            refused.headers["Retry-After"] = str(exc.retry_after)
            return refused
        token = services.tokens.issue(account, services.login_ttl_seconds)
        expires_at = services.tokens.verify(token).expires_at
        return LoginResponse(
            token=token,
            user_id=account.user_id,
            name=account.name,
            role=account.role,
            expires_at=expires_at,
        )

    @app.get("/api/me", responses=_ERRORS, tags=["accounts"])
    async def me(account: Authed) -> Me:
        """The account of the bearer token."""
        return Me(user_id=account.user_id, name=account.name, role=account.role)

    @app.get("/api/users/{user_id}", responses=_ERRORS, tags=["accounts"])
    async def user(user_id: str, account: Authed) -> Me:
        """Name and role of an account: for admins, and devices applying their call policy
        to accounts they share a group with."""
        if account.role is Role.USER:
            raise RealtimeError(Codes.FORBIDDEN, "Only admins and devices may look up accounts.")
        found = await asyncio.to_thread(services.accounts.get_by_id, user_id)
        # An account the caller may not reach reads as absent: ids are not probed this way.
        if found is None or not Access.of(account).shares_group_with(Access.of(found)):
            raise RealtimeError(Codes.NOT_FOUND, f'No account has the user id "{user_id}".')
        return Me(user_id=found.user_id, name=found.name, role=found.role)


def _add_listing_routes(app: FastAPI, services: HubServices) -> None:
    """getRealtimeGroups and getRealtimeUsers: only groups the caller is granted."""

    @app.post("/api/realtime/groups", responses=_ERRORS, tags=["realtime"])
    async def realtime_groups(
        account: Authed, body: Annotated[GroupsRequest | None, Body()] = None
    ) -> GroupsPage:
        """getRealtimeGroups: list groups by name or by number of users, paged."""
        request = body if body is not None else _without_body(GroupsRequest)
        access = Access.of(account)
        counts = {
            group: n
            for group, n in (await services.backplane.group_counts()).items()
            if access.may_use(group)
        }
        result = listing.list_groups(request.query, counts, request.page)
        items = [GroupItem(group=r.group, number_of_users=r.number_of_users) for r in result.items]
        return GroupsPage(list=items, startKey=result.start_key, endOfList=result.end_of_list)

    @app.post("/api/realtime/users", responses=_ERRORS, tags=["realtime"])
    async def realtime_users(
        account: Authed, body: Annotated[UsersRequest | None, Body()] = None
    ) -> UsersPage:
        """getRealtimeUsers: the connections in a group (optionally of one user), paged."""
        request = body if body is not None else _without_body(UsersRequest)
        query, page = request.query, request.page
        if not Access.of(account).may_use(query.group):
            raise RealtimeError(
                Codes.FORBIDDEN, f'Group "{query.group}" is not granted to "{account.name}".'
            )
        members = await services.backplane.members(query.group)
        result = listing.list_users(query, ((m.user_id, m.scid) for m in members), page)
        items = [UserItem(user_id=r.user_id, connection_id=r.connection_id) for r in result.items]
        return UsersPage(list=items, startKey=result.start_key, endOfList=result.end_of_list)


def _add_operations_routes(app: FastAPI, services: HubServices) -> None:
    """Liveness for anyone; the figures for operators (see :func:`_is_operator`)."""

    @app.get("/health", tags=["operations"])
    async def health(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Health:
        """Whether the hub is up; connection and group counts only for operators."""
        if not await _is_operator(request, credentials):
            return Health(status="ok", version=__version__)
        connections, groups = await services.backplane.stats()
        return Health(status="ok", version=__version__, connections=connections, groups=groups)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["operations"],
        responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
    )
    async def metrics(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> PlainTextResponse:
        """Prometheus text exposition of the hub's counters: admins, or a local scraper."""
        if not await _is_operator(request, credentials):
            raise AuthError(
                "Metrics are for admins (a bearer token) or a scraper on this machine.",
                reason="missing",
            )
        connections, groups = await services.backplane.stats()
        text = services.metrics.render(connections=connections, groups=groups)
        if services.push is not None:
            text += services.push.metrics.render(pending=services.push.pending)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)


_FORWARDING_HEADERS: Final = ("forwarded", "x-forwarded-for", "x-real-ip")


async def _is_operator(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """An admin's token, or a request from this machine that no proxy forwarded.

    A token that is not an admin's is refused (403) rather than treated as anonymous.
    """
    if credentials is not None:
        account = await _current_account(request, credentials)
        if account.role is not Role.ADMIN:
            raise RealtimeError(Codes.FORBIDDEN, "Only admins may read the hub's figures.")
        return True
    client = request.client
    local = client is not None and _is_loopback(client.host)
    return local and not any(h in request.headers for h in _FORWARDING_HEADERS)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RealtimeError)
    async def realtime_error(request: Request, exc: RealtimeError) -> JSONResponse:
        status = _STATUS_OF_CODE.get(exc.code, 400)
        response = _error(status, exc.code, exc.message)
        if status == 401:  # RFC 6750 section 3, as for AuthError
            response.headers["WWW-Authenticate"] = 'Bearer realm="edge-agent"'
        return response

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        response = _error(401, Codes.UNAUTHORIZED, exc.message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="edge-agent"'
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A shared validator's refusal keeps the reference's text; pydantic's own errors
        # (a body that is not JSON, not an object) are described naming the field.
        message = refusal(exc.errors()) or _describe_validation(exc)
        return _error(400, Codes.INVALID_PARAMETER, message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, Codes.ERROR)
        if exc.status_code != 405:
            return _error(exc.status_code, code, str(exc.detail))
        # RFC 9110 section 15.5.6: a 405 names the methods the path has.
        allow = allowed_methods(request.app.router.routes, request.scope)
        response = _error(405, code, f"{request.method} is not allowed here; use {allow}.")
        response.headers["Allow"] = allow
        return response


_Body = TypeVar("_Body", bound=BaseModel)


def _without_body(model: type[_Body]) -> _Body:
    """``model`` for a request that sent no body: as if it were ``{}``, refusals included."""
    try:
        return model.model_validate({})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) + "."


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)
