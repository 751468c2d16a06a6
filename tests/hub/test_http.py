"""The hub's HTTP API over real sockets: login, me, listings, health, metrics, OpenAPI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from agent.errors import Codes
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.hub.tokens import SECRET_FILE

from .conftest import Hub, HubFactory, join, make_settings, recv, send


async def test_login_returns_a_token_that_the_api_and_the_websocket_accept(hub: Hub) -> None:
    hub.server.accounts.add("alice", "s3cret-pass1", Role.ADMIN)
    async with hub.http() as http:
        response = await http.post("/api/login", json={"name": "alice", "password": "s3cret-pass1"})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"token", "user_id", "name", "role", "expires_at"}
        assert (body["name"], body["role"]) == ("alice", "admin")
        assert body["expires_at"] > time.time() + 3600
        me = await http.get("/api/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json() == {"user_id": body["user_id"], "name": "alice", "role": "admin"}


@pytest.mark.parametrize(
    ("name", "password"), [("alice", "wrong"), ("nobody", "whatever"), ("device", "x")]
)
async def test_a_bad_login_is_401_without_saying_which_part_was_wrong(
    hub: Hub, name: str, password: str
) -> None:
    hub.server.accounts.add("alice", "right-password")
    hub.server.accounts.add("device", None, Role.DEVICE)  # no password: cannot log in
    async with hub.http() as http:
        response = await http.post("/api/login", json={"name": name, "password": password})
    assert response.status_code == 401
    assert response.json() == {"code": Codes.UNAUTHORIZED, "message": "Wrong name or password."}


async def test_a_malformed_login_body_is_400_naming_the_field(hub: Hub) -> None:
    async with hub.http() as http:
        response = await http.post("/api/login", json={"name": "alice"})
    assert response.status_code == 400
    assert response.json()["code"] == Codes.INVALID_PARAMETER
    assert "password" in response.json()["message"]


async def test_me_refuses_missing_bad_expired_and_orphaned_tokens(hub: Hub) -> None:
    user = hub.user("alice")
    secret = (hub.server.state_dir / SECRET_FILE).read_bytes()
    past = int(time.time()) - 3600
    expired = jwt.encode(
        {"sub": user.user_id, "name": "alice", "role": "user", "iat": past, "exp": past + 1},
        secret,
        algorithm="HS256",
    )
    orphan = hub.user("orphan")
    hub.server.accounts.remove("orphan")
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "Send the header 'Authorization: Bearer TOKEN'."),
        ({"Authorization": "Bearer nonsense"}, "The token is not valid."),
        ({"Authorization": f"Bearer {expired}"}, "The token has expired."),
        ({"Authorization": f"Bearer {orphan.token}"}, "The token's account no longer exists."),
    ]
    async with hub.http() as http:
        for headers, message in cases:
            response = await http.get("/api/me", headers=headers)
            assert response.status_code == 401, headers
            assert response.json() == {"code": Codes.UNAUTHORIZED, "message": message}
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def _populate(hub: Hub, sizes: dict[str, int]) -> None:
    """Groups with the given numbers of connections (each a different user)."""
    for group, size in sizes.items():
        for i in range(size):
            user = hub.user(f"{group}-{i}")
            await join(await hub.connect(user), group, user)


async def _groups(hub: Hub, body: dict[str, Any] | None) -> dict[str, Any]:
    async with hub.http(hub.user(f"lister{time.monotonic_ns()}")) as http:
        response = await http.post("/api/realtime/groups", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_group_listing_follows_the_reference_conditions(hub: Hub) -> None:
    await _populate(hub, {"cam-front": 1, "cam-back": 3, "doors": 2})
    everything = await _groups(hub, None)
    assert everything == {
        "list": [
            {"group": "cam-back", "number_of_users": 3},
            {"group": "cam-front", "number_of_users": 1},
            {"group": "doors", "number_of_users": 2},
        ],
        "startKey": None,
        "endOfList": True,
    }

    async def names(body: dict[str, Any]) -> list[str]:
        return [row["group"] for row in (await _groups(hub, body))["list"]]

    assert await names({"searchFor": "group", "value": "cam", "condition": ">="}) == [
        "cam-back",
        "cam-front",
    ]
    assert await names({"searchFor": "group", "value": "doors"}) == ["doors"]
    assert await names({"searchFor": "group", "value": "cam-front", "condition": "ne"}) == [
        "cam-back",
        "doors",
    ]
    assert await names({"searchFor": "number_of_users", "value": 2, "condition": "gte"}) == [
        "doors",
        "cam-back",
    ]
    assert await names({"searchFor": "number_of_users", "value": 1, "range": 2}) == [
        "cam-front",
        "doors",
    ]
    assert await names(
        {"searchFor": "number_of_users", "value": 3, "condition": "<", "ascending": False}
    ) == ["doors", "cam-front"]


async def test_group_listing_pages_with_start_key(hub: Hub) -> None:
    await _populate(hub, {f"g{i}": 1 for i in range(5)})
    seen: list[str] = []
    body: dict[str, Any] = {"limit": 2}
    while True:
        page = await _groups(hub, body)
        seen += [row["group"] for row in page["list"]]
        if page["endOfList"]:
            assert page["startKey"] is None
            break
        body = {"limit": 2, "startKey": page["startKey"]}
    assert seen == ["g0", "g1", "g2", "g3", "g4"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"searchFor": "number_of_users", "value": "3"}, '"value" must be a number.'),
        ({"searchFor": "group", "value": 3}, '"value" must be a string.'),
        ({"searchFor": "colour"}, 'Value: colour in "searchFor" is invalid.'),
        ({"value": "a", "condition": "~"}, 'Value: ~ in "condition" is invalid.'),
        ({"value": "a", "range": 5}, '"range" must be a string.'),
        (
            {"value": "a", "range": "b", "condition": ">"},
            '"range" cannot be used with "condition".',
        ),
        ({"colour": "red"}, 'Key name "colour" is invalid in parameter.'),
        ({"limit": 0}, '"limit" must be an integer from 1 to 1000.'),
        ({"startKey": "!!"}, '"startKey" is invalid.'),
    ],
)
async def test_group_listing_rejects_bad_parameters_with_the_reference_texts(
    hub: Hub, body: dict[str, Any], message: str
) -> None:
    async with hub.http(hub.user("lister")) as http:
        response = await http.post("/api/realtime/groups", json=body)
    assert response.status_code == 400
    assert response.json() == {"code": Codes.INVALID_PARAMETER, "message": message}


async def test_user_listing_names_connections_and_filters_by_user(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a1, a2, b = await hub.connect(alice), await hub.connect(alice), await hub.connect(bob)
    scids = {
        (await join(a1, "room", alice))["#scid"],
        (await join(a2, "room", alice))["#scid"],
        (await join(b, "room", bob))["#scid"],
    }
    async with hub.http(alice) as http:
        everyone = (await http.post("/api/realtime/users", json={"group": "room"})).json()
        only_alice = (
            await http.post("/api/realtime/users", json={"group": "room", "user_id": alice.user_id})
        ).json()
        first = (await http.post("/api/realtime/users", json={"group": "room", "limit": 2})).json()
        rest = (
            await http.post(
                "/api/realtime/users",
                json={"group": "room", "limit": 2, "startKey": first["startKey"]},
            )
        ).json()
        missing = await http.post("/api/realtime/users", json={})
        bad_id = await http.post("/api/realtime/users", json={"group": "room", "user_id": "x"})
    assert {row["connection_id"] for row in everyone["list"]} == {f"cid:{s}" for s in scids}
    assert everyone["endOfList"] is True
    assert [row["user_id"] for row in only_alice["list"]] == [alice.user_id, alice.user_id]
    assert first["endOfList"] is False
    assert first["list"] + rest["list"] == everyone["list"]
    assert rest["endOfList"] is True
    assert missing.status_code == 400
    assert missing.json()["message"] == 'Key "group" is required in parameter.'
    assert bad_id.json()["message"] == 'User ID in "user_id" is invalid.'


async def test_listings_need_a_token(hub: Hub) -> None:
    async with hub.http() as http:
        for path in ("/api/realtime/groups", "/api/realtime/users"):
            response = await http.post(path, json={})
            assert response.status_code == 401


async def test_health_and_metrics_report_the_hub(hub: Hub) -> None:
    alice = hub.user("alice")
    async with hub.http() as http:
        before = (await http.get("/metrics")).text
        ws = await hub.connect(alice)
        await join(ws, "room", alice)
        await ws.send("not json")
        assert (await recv(ws))["#code"] == Codes.INVALID_REQUEST
        await send(ws, {"action": "broadcast", "rid": "room", "content": "x"})
        await recv(ws)
        health = (await http.get("/health")).json()
        metrics = await http.get("/metrics")
    assert health["status"] == "ok"
    assert (health["connections"], health["groups"]) == (1, 1)
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = _samples(metrics.text)
    assert _samples(before)["edge_hub_frames_in_total"] == 0
    assert after["edge_hub_frames_in_total"] == 3
    assert after["edge_hub_frames_out_total"] == 3  # notice, error, broadcast echo
    assert after["edge_hub_connections"] == 1
    assert after["edge_hub_groups"] == 1
    assert after['edge_hub_errors_total{code="INVALID_REQUEST"}'] == 1
    assert "# TYPE edge_hub_frames_in_total counter" in metrics.text


def _samples(text: str) -> dict[str, float]:
    lines = (line for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines)}


async def test_openapi_describes_the_api(hub: Hub) -> None:
    async with hub.http() as http:
        spec = (await http.get("/openapi.json")).json()
    assert spec["info"]["title"] == "edge-agent hub"
    for path in ("/api/login", "/api/me", "/api/realtime/groups", "/api/realtime/users"):
        assert path in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert {"LoginRequest", "LoginResponse", "GroupsPage", "UsersPage"} <= set(schemas)
    assert "list" in schemas["GroupsPage"]["properties"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


async def test_openapi_declares_what_the_hub_answers(hub: Hub) -> None:
    """One validation status (400, never 422); 401 wherever a token is taken; the login's
    throttling; every error in the ErrorBody shape. The fuzz test checks the rest live."""
    async with hub.http() as http:
        spec = (await http.get("/openapi.json")).json()
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses, where = operation["responses"], f"{method} {path}"
            assert "422" not in responses, where
            if operation.get("parameters") or "requestBody" in operation:
                assert "400" in responses, where
            if "requestBody" in operation:
                assert "413" in responses, where
            if path.startswith("/api/") and path != "/api/login":
                assert operation["security"] == [{"HTTPBearer": []}], where
            if "security" in operation:
                assert "WWW-Authenticate" in responses["401"]["headers"], where
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"] == error_body, (where, status)
    for path in ("/health", "/metrics"):  # the token only adds the figures
        assert spec["paths"][path]["get"]["security"] == [{}, {"HTTPBearer": []}]
    login = spec["paths"]["/api/login"]["post"]
    assert "security" not in login
    for status in ("429", "503"):
        assert login["responses"][status]["headers"]["Retry-After"]["required"] is True
    assert {"401", "403", "404"} <= set(spec["paths"]["/api/users/{user_id}"]["get"]["responses"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_unknown_paths_answer_the_error_shape(hub: Hub) -> None:
    async with hub.http() as http:
        response = await http.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["code"] == Codes.NOT_FOUND


async def test_the_viewer_is_served_at_the_root_when_present(tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>viewer</title>")
    (static / "app.js").write_text("console.log(1)")
    server = HubServer(make_settings(tmp_path / "state"), static_dir=static)
    await server.start()
    try:
        hub = Hub(server)
        async with hub.http() as http:
            index = await http.get("/")
            script = await http.get("/app.js")
        assert index.status_code == 200
        assert "<title>viewer</title>" in index.text
        assert script.text == "console.log(1)"
    finally:
        await server.stop()


async def test_without_a_viewer_the_root_is_a_404(hub_factory: HubFactory, tmp_path: Path) -> None:
    server = HubServer(make_settings(tmp_path / "bare"), static_dir=tmp_path / "absent")
    await server.start()
    try:
        async with Hub(server).http() as http:
            response = await http.get("/")
        assert response.status_code == 404
    finally:
        await server.stop()
