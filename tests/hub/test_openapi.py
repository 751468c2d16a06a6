"""The API contract: the document's rewrite (pure), 405 with Allow, 413, odd input on a real hub.

The pure part takes a small document in and checks what comes out; the rest asks a real hub
on 127.0.0.1 and checks each answer against the hub's own ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Mount

from agent.errors import Codes
from agent.hub.accounts import Role
from agent.hub.openapi import (
    MAX_BODY_BYTES,
    Answer,
    Auth,
    allowed_methods,
    describe_answers,
    route_auth,
)

from .conftest import Hub

ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _document() -> dict[str, Any]:
    """What FastAPI makes of a bearer route with a path parameter and an open POST route."""
    validation = {"description": "Validation Error", "content": {"application/json": {}}}
    return {
        "openapi": "3.1.0",
        "paths": {
            "/x/{id}": {
                "get": {
                    "parameters": [{"name": "id", "in": "path", "required": True}],
                    "responses": {"200": {"description": "Successful Response"}, "422": validation},
                    "security": [{"HTTPBearer": []}],
                }
            },
            "/open": {
                "post": {
                    "requestBody": {"content": {"application/json": {"schema": {}}}},
                    "responses": {
                        "200": {"description": "Successful Response"},
                        "429": {"description": "Slow down, said the route."},
                    },
                }
            },
            "/plain": {"get": {"responses": {"200": {"description": "Successful Response"}}}},
        },
        "components": {
            "schemas": {"HTTPValidationError": {}, "ValidationError": {}},
            "securitySchemes": {"HTTPBearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# --- describe_answers: pure ---------------------------------------------------------------


def test_validation_is_400_with_the_error_body_and_422_is_gone() -> None:
    document = _document()
    described = describe_answers(document, {("get", "/x/{id}"): Auth.REQUIRED}, answers={})
    responses = described["paths"]["/x/{id}"]["get"]["responses"]
    assert "422" not in responses
    assert responses["400"]["content"] == ERROR_BODY
    schemas = described["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert set(schemas["ErrorBody"]["required"]) == {"code", "message"}
    assert "422" in document["paths"]["/x/{id}"]["get"]["responses"]  # the input is a copy


def test_how_an_operation_takes_the_token_decides_401_and_its_security() -> None:
    auth = {
        ("get", "/x/{id}"): Auth.REQUIRED,
        ("post", "/open"): Auth.OPTIONAL,
        ("get", "/plain"): Auth.NONE,
    }
    paths = describe_answers(_document(), auth, answers={})["paths"]
    required, optional = paths["/x/{id}"]["get"], paths["/open"]["post"]
    assert required["security"] == [{"HTTPBearer": []}]
    assert optional["security"] == [{}, {"HTTPBearer": []}]  # anonymous callers too
    for operation in (required, optional):
        unauthorized = operation["responses"]["401"]
        assert unauthorized["content"] == ERROR_BODY
        assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
    assert "security" not in paths["/plain"]["get"]
    assert set(paths["/plain"]["get"]["responses"]) == {"200"}  # no input, no token: no 4xx


def test_a_body_means_413_and_the_table_adds_route_refusals_keeping_their_text() -> None:
    answers = {
        ("post", "/open"): {
            429: Answer("Too many.", retry_after=True),
            503: Answer("Busy.", retry_after=True),
        }
    }
    responses = describe_answers(_document(), {}, answers=answers)["paths"]["/open"]["post"][
        "responses"
    ]
    assert list(responses) == ["200", "400", "413", "429", "503"]
    assert str(MAX_BODY_BYTES) in responses["413"]["description"]
    assert responses["429"]["description"] == "Slow down, said the route."
    assert responses["503"]["description"] == "Busy."
    for status in ("429", "503"):
        assert responses[status]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
        assert responses[status]["content"] == ERROR_BODY


# --- route_auth and allowed_methods: the routes of a FastAPI app, no I/O -------------------

_bearer = HTTPBearer(auto_error=False)


async def _authenticated(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    return "someone"


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/needs")
    async def needs(who: Annotated[str, Depends(_authenticated)]) -> str:
        return who

    @app.post("/needs")
    async def needs_post(who: Annotated[str, Depends(_authenticated)]) -> str:
        return who

    @app.get("/may")
    async def may(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        return "ok"

    @app.delete("/items/{item}")
    async def remove(item: str) -> None:
        return None

    app.router.routes.append(Mount("/", app=FastAPI()))
    return app


def test_route_auth_tells_required_from_optional_from_none() -> None:
    found = route_auth(_app().routes, _authenticated)
    assert found[("get", "/needs")] is Auth.REQUIRED
    assert found[("post", "/needs")] is Auth.REQUIRED
    assert found[("get", "/may")] is Auth.OPTIONAL
    assert found[("delete", "/items/{item}")] is Auth.NONE


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/needs", "GET, POST"),  # two routes share the path
        ("/items/a%20b", "DELETE"),
        ("/index.html", "GET, HEAD"),  # only the file mount: what files answer
    ],
)
def test_allow_names_every_method_of_the_path(path: str, allow: str) -> None:
    scope = {"type": "http", "method": "TRACE", "path": path, "root_path": ""}
    assert allowed_methods(_app().routes, scope) == allow


# --- a real hub ---------------------------------------------------------------------------


@pytest.fixture
async def admin_http(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with hub.http(hub.user("root", role=Role.ADMIN)) as http:
        yield http


async def _documented(http: httpx.AsyncClient, method: str, path: str) -> set[str]:
    spec = (await http.get("/openapi.json")).json()
    return set(spec["paths"][path][method]["responses"])


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == code
    assert response.json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/login", "POST"),  # the viewer's files must not answer it (404)
        ("TRACE", "/api/accounts", "GET, POST"),
        ("PUT", "/api/accounts/alice", "DELETE, GET, PATCH"),
        ("DELETE", "/health", "GET"),
        ("POST", "/index.html", "GET, HEAD"),
    ],
)
async def test_a_method_the_path_lacks_is_405_with_allow(
    admin_http: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await admin_http.request(method, path)
    _assert_error(response, 405, Codes.INVALID_REQUEST)
    assert response.headers["allow"] == allow
    assert method in response.json()["message"]


async def test_a_body_over_the_limit_is_413_before_it_is_read(
    admin_http: httpx.AsyncClient,
) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "'
        yield big
        yield b'"}'

    answers = [
        await admin_http.post(
            "/api/login", content=big, headers={"content-type": "application/json"}
        ),
        await admin_http.post("/api/accounts", content=chunked()),
        await admin_http.post("/api/snapshots", content=b"\xff\xd8" + big),
    ]
    for response in answers:
        _assert_error(response, 413, Codes.INVALID_REQUEST)
        assert str(MAX_BODY_BYTES) in response.json()["message"]
    for path in ("/api/login", "/api/accounts", "/api/snapshots"):
        assert "413" in await _documented(admin_http, "post", path)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"name": "alice", ', "application/json"),  # not JSON
        (b'{"name": "alice", "password": "x"}', "text/plain"),  # not declared as JSON
        (b"name=alice&password=x", "application/x-www-form-urlencoded"),
        (b'["alice", "x"]', "application/json"),  # JSON, not an object
        (b"", "application/json"),
    ],
)
async def test_a_body_that_is_not_the_documented_json_is_a_documented_400(
    admin_http: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await admin_http.post(
        "/api/login", content=content, headers={"content-type": content_type}
    )
    _assert_error(response, 400, Codes.INVALID_PARAMETER)
    assert "400" in await _documented(admin_http, "post", "/api/login")


@pytest.mark.parametrize(
    ("raw_path", "method", "path", "status"),
    [
        ("/api/accounts/%00%ff", "get", "/api/accounts/{name}", 404),
        ("/api/accounts/" + "n" * 65, "get", "/api/accounts/{name}", 400),
        ("/api/users/%ZZ%C0%AF", "get", "/api/users/{user_id}", 404),
        ("/api/snapshots/..%5C..%5Cetc", "get", "/api/snapshots/{snapshot_id}", 404),
        ("/api/accounts/%E2%80%AE%F0%9F%98%80/revoke-tokens", "post",
         "/api/accounts/{name}/revoke-tokens", 404),
    ],
)  # fmt: skip
async def test_odd_path_parameters_get_a_documented_4xx(
    admin_http: httpx.AsyncClient, raw_path: str, method: str, path: str, status: int
) -> None:
    url = httpx.URL(str(admin_http.base_url).rstrip("/") + raw_path)
    response = await admin_http.request(method.upper(), url)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"code", "message"}
    assert str(status) in await _documented(admin_http, method, path)
