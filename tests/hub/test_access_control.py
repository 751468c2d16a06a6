"""Groups are private: joins, listings, messages, calls and revocation follow the grants.

A real hub on loopback; changes come through the store in this process, through the
``edge-agent`` command in another process (as an operator makes them), or through the
admin HTTP API.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from agent.errors import Codes
from agent.hub.accounts import Role

from .conftest import Hub, User, closed_code, join, recv, recv_until, send


async def edge_agent(hub: Hub, *args: str) -> str:
    """Run ``edge-agent ARGS`` against the hub's state directory, as an operator would."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        *args,
        "--state-dir",
        str(hub.server.state_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode() + err.decode()


async def nothing_more(ws: ClientConnection) -> None:
    """No message, private or rtc frame reached ``ws``: every frame up to a fence is read.

    The fence is a private message to nobody, whose NOT_FOUND answer comes after anything
    the hub queued to this connection before it.
    """
    await send(ws, {"action": "sendMessage", "uid": "fence-nobody", "content": "fence"})
    while True:
        frame = await recv(ws)
        assert not {"#message", "#private", "#rtc"} & set(frame), frame
        if frame.get("#code") == Codes.NOT_FOUND and "fence-nobody" in frame["#error"]:
            return


async def test_joining_a_group_not_granted_is_refused_and_changes_nothing(hub: Hub) -> None:
    bob = hub.user("bob", groups=("friends",))
    carol = hub.user("carol", groups=("family",))
    b, c = await hub.connect(bob), await hub.connect(carol)
    await join(b, "friends", bob)
    await join(c, "family", carol)
    await send(b, {"action": "joinRoom", "rid": "family"})
    refused = await recv(b)
    assert refused["#code"] == Codes.FORBIDDEN
    assert '"family"' in refused["#error"]
    assert "edge-agent user grant bob family" in refused["#error"]
    # Nothing joined: no notice reached family, bob is still in friends, and cannot post.
    await nothing_more(c)
    await send(b, {"action": "broadcast", "rid": "friends", "content": "still here"})
    assert (await recv_until(b, "#message"))["#srid"] == "friends"
    await send(b, {"action": "broadcast", "rid": "family", "content": "let me in"})
    assert (await recv(b))["#code"] == Codes.INVALID_REQUEST
    await nothing_more(c)


async def test_prefix_grants_and_admins(hub: Hub) -> None:
    site = hub.user("ops", groups=("site-*",))
    admin = hub.user("root", role=Role.ADMIN, groups=())
    s, a = await hub.connect(site), await hub.connect(admin)
    await join(s, "site-north", site, keep=True)
    await send(s, {"action": "joinRoom", "rid": "siteX", "keep": True})
    assert (await recv(s))["#code"] == Codes.FORBIDDEN
    await join(a, "anything-at-all", admin)


async def test_listings_show_only_granted_groups(hub: Hub) -> None:
    bob = hub.user("bob", groups=("friends",))
    carol = hub.user("carol", groups=("family", "friends"))
    c = await hub.connect(carol)
    await join(c, "family", carol, keep=True)
    await join(c, "friends", carol, keep=True)
    async with hub.http(bob) as http:
        groups = (await http.post("/api/realtime/groups", json={})).json()
        assert [g["group"] for g in groups["list"]] == ["friends"]
        users = await http.post("/api/realtime/users", json={"group": "family"})
        assert users.status_code == 403
        assert users.json()["code"] == Codes.FORBIDDEN
        allowed = await http.post("/api/realtime/users", json={"group": "friends"})
        assert [u["user_id"] for u in allowed.json()["list"]] == [carol.user_id]
    async with hub.http(carol) as http:
        groups = (await http.post("/api/realtime/groups", json={})).json()
        assert [g["group"] for g in groups["list"]] == ["family", "friends"]


async def test_private_messages_and_rtc_need_a_shared_group(hub: Hub) -> None:
    porch = hub.user("porch", role=Role.DEVICE, groups=("home",))
    alice = hub.user("alice", groups=("home",))
    mallory = hub.user("mallory", groups=("elsewhere",))
    p, a, m = await hub.connect(porch), await hub.connect(alice), await hub.connect(mallory)
    porch_scid = (await join(p, "home", porch))["#scid"]
    await join(a, "home", alice)
    await join(m, "elsewhere", mallory)

    await send(m, {"action": "sendMessage", "uid": porch.user_id, "content": "hi"})
    assert (await recv(m))["#code"] == Codes.FORBIDDEN
    await send(m, {"action": "sendMessage", "uid": "porch", "content": "by name"})
    assert (await recv(m))["#code"] == Codes.FORBIDDEN
    offer = {"sdpoffer": {"type": "offer", "sdp": "v=0\r\n"}}
    await send(m, {"action": "rtc", "uid": f"cid:{porch_scid}", "content": offer})
    refused = await recv(m)
    assert refused["#code"] == Codes.FORBIDDEN
    assert "nothing was sent" in refused["#error"]
    await nothing_more(p)

    await send(a, {"action": "rtc", "uid": f"cid:{porch_scid}", "content": offer})
    assert (await recv_until(p, "#rtc"))["#user_id"] == alice.user_id
    await send(a, {"action": "sendMessage", "uid": porch.user_id, "content": "hello"})
    assert (await recv_until(p, "#private"))["#private"] == "hello"


async def test_devices_listing_follows_the_grants(hub: Hub) -> None:
    porch = hub.user("porch", role=Role.DEVICE, groups=("family",))
    bob = hub.user("bob", groups=("friends",))
    p, b = await hub.connect(porch), await hub.connect(bob)
    await join(p, "family", porch)
    await send(b, {"action": "joinRoom", "rid": "family"})
    assert (await recv(b))["#code"] == Codes.FORBIDDEN
    async with hub.http(bob) as http:
        assert (await http.get("/api/devices")).json() == []
        assert (await http.get("/api/devices", params={"group": "family"})).json() == []


async def test_removing_an_account_closes_its_connections_at_once(hub: Hub) -> None:
    temp = hub.user("temp", groups=("home",))
    alice = hub.user("alice", groups=("home",))
    t1, t2, a = await hub.connect(temp), await hub.connect(temp), await hub.connect(alice)
    await join(t1, "home", temp)
    await join(a, "home", alice)
    started = time.monotonic()
    await edge_agent(hub, "user", "remove", "temp")  # another process, as an operator does
    assert await closed_code(t1) == 4401
    assert await closed_code(t2) == 4401
    elapsed = time.monotonic() - started
    gone = await recv_until(a, "#notice", **{"#code": "USER_DISCONNECTED"})
    assert gone["#user_id"] == temp.user_id
    # The poll interval is 0.25 s; a generous bound here, the figure is in the docs.
    assert elapsed < 5, elapsed
    async with hub.http(temp) as http:
        assert (await http.get("/api/me")).status_code == 401


async def test_revoking_a_grant_takes_open_connections_out_of_the_group(hub: Hub) -> None:
    bob = hub.user("bob", groups=("friends", "family"))
    carol = hub.user("carol", groups=("family",))
    b, c = await hub.connect(bob), await hub.connect(carol)
    await join(b, "family", bob, keep=True)
    await join(b, "friends", bob, keep=True)
    await join(c, "family", carol)
    output = await edge_agent(hub, "user", "revoke", "bob", "family")
    assert "bob: friends" in output
    left = await recv_until(c, "#notice", **{"#code": "USER_LEFT"})
    assert left["#user_id"] == bob.user_id
    told = await recv_until(b, "#error")
    assert told["#code"] == Codes.FORBIDDEN
    assert "no longer granted" in told["#error"]
    await send(b, {"action": "broadcast", "rid": "family", "content": "still?"})
    assert (await recv_until(b, "#error"))["#code"] == Codes.INVALID_REQUEST
    await send(b, {"action": "broadcast", "rid": "friends", "content": "yes"})
    assert (await recv_until(b, "#message"))["#srid"] == "friends"
    await nothing_more(c)


async def test_a_role_change_applies_to_the_next_frame(hub: Hub) -> None:
    bob = hub.user("bob", groups=("friends",))
    b = await hub.connect(bob)
    await send(b, {"action": "joinRoom", "rid": "ops"})
    assert (await recv(b))["#code"] == Codes.FORBIDDEN
    await edge_agent(hub, "user", "role", "bob", "admin")
    await hub.server.access.refresh()  # the poll would bring it; make the test deterministic
    await join(b, "ops", bob)


async def test_revoked_tokens_stop_working_on_http_and_open_connections(hub: Hub) -> None:
    alice = hub.user("alice", groups=("home",))
    a = await hub.connect(alice)
    await join(a, "home", alice)
    output = await edge_agent(hub, "token", "revoke", "--user", "alice")
    assert "revoked every token of alice" in output
    assert await closed_code(a) == 4401
    async with hub.http(alice) as http:
        me = await http.get("/api/me")
        assert me.status_code == 401
        assert "revoked" in me.json()["message"]
    with pytest.raises(Exception, match="401"):
        await hub.connect(alice)
    account = hub.server.accounts.get_by_name("alice")
    assert account is not None
    fresh = User(account, hub.server.tokens.issue(account, 600))
    await join(await hub.connect(fresh), "home", fresh)


async def test_a_password_change_revokes_earlier_tokens(hub: Hub) -> None:
    alice = hub.user("alice", password="first-password-1", groups=("home",))
    await asyncio.to_thread(hub.server.accounts.set_password, "alice", "second-password-2")
    async with hub.http(alice) as http:
        assert (await http.get("/api/me")).status_code == 401


async def test_devices_look_up_only_accounts_they_share_a_group_with(hub: Hub) -> None:
    porch = hub.user("porch", role=Role.DEVICE, groups=("home",))
    alice = hub.user("alice", groups=("home",))
    stranger = hub.user("stranger", groups=("away",))
    async with hub.http(porch) as http:
        assert (await http.get(f"/api/users/{alice.user_id}")).json()["name"] == "alice"
        hidden = await http.get(f"/api/users/{stranger.user_id}")
        assert hidden.status_code == 404


# -- the admin HTTP API -----------------------------------------------------------------


async def api(hub: Hub, user: User | None, method: str, path: str, **kwargs: Any) -> Any:
    async with hub.http(user) as http:
        return await http.request(method, path, **kwargs)


ADMIN_ROUTES = [
    ("GET", "/api/accounts", None),
    ("POST", "/api/accounts", {"name": "eve2", "role": "admin"}),
    ("GET", "/api/accounts/alice", None),
    ("PATCH", "/api/accounts/alice", {"grant": ["everything-*"]}),
    ("DELETE", "/api/accounts/alice", None),
    ("POST", "/api/accounts/alice/revoke-tokens", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_account_routes_refuse_non_admins_and_strangers(
    hub: Hub, method: str, path: str, body: Any
) -> None:
    hub.user("alice", groups=("home",))
    eve = hub.user("eve", groups=("home",))
    assert (await api(hub, None, method, path, json=body)).status_code == 401
    refused = await api(hub, eve, method, path, json=body)
    assert refused.status_code == 403
    assert refused.json()["code"] == Codes.FORBIDDEN
    assert hub.server.accounts.get_by_name("alice") is not None
    assert hub.server.accounts.get_by_name("eve2") is None


async def test_admins_manage_accounts_and_grants_over_http(hub: Hub) -> None:
    root = hub.user("root", role=Role.ADMIN, groups=())
    made = await api(
        hub, root, "POST", "/api/accounts", json={"name": "cam", "role": "device", "groups": ["a"]}
    )
    assert made.status_code == 201
    assert (made.json()["role"], made.json()["groups"]) == ("device", ["a"])
    changed = await api(
        hub, root, "PATCH", "/api/accounts/cam", json={"grant": ["b", "site-*"], "revoke": ["a"]}
    )
    assert changed.json()["groups"] == ["b", "site-*"]
    bad = await api(hub, root, "PATCH", "/api/accounts/cam", json={"grant": ["no*pe"]})
    assert bad.status_code == 400
    assert "no*pe" in bad.json()["message"]
    missing = await api(hub, root, "PATCH", "/api/accounts/cam", json={"revoke": ["zzz"]})
    assert missing.status_code == 400
    listed = (await api(hub, root, "GET", "/api/accounts")).json()
    assert [a["name"] for a in listed] == ["cam", "root"]
    assert (await api(hub, root, "GET", "/api/accounts/nobody")).status_code == 404
    revoked = await api(hub, root, "POST", "/api/accounts/cam/revoke-tokens")
    assert revoked.json() == {"token_generation": 1}
    assert (await api(hub, root, "DELETE", "/api/accounts/cam")).status_code == 204
    assert hub.server.accounts.get_by_name("cam") is None


async def test_the_last_admin_cannot_be_removed_or_demoted_over_http(hub: Hub) -> None:
    root = hub.user("root", role=Role.ADMIN, groups=())
    for method, body in (("DELETE", None), ("PATCH", {"role": "user"})):
        refused = await api(hub, root, method, "/api/accounts/root", json=body)
        assert refused.status_code == 400
        assert "last admin" in refused.json()["message"]
    assert hub.server.accounts.get_by_name("root") is not None


async def test_an_account_may_read_itself_and_revoke_its_own_tokens(hub: Hub) -> None:
    alice = hub.user("alice", groups=("home",))
    me = await api(hub, alice, "GET", "/api/accounts/alice")
    assert me.json()["groups"] == ["home"]
    assert (await api(hub, alice, "POST", "/api/accounts/alice/revoke-tokens")).status_code == 200
    assert (await api(hub, alice, "GET", "/api/accounts/alice")).status_code == 401


async def test_removal_over_http_has_closed_the_connections_when_it_answers(hub: Hub) -> None:
    root = hub.user("root", role=Role.ADMIN, groups=())
    temp = hub.user("temp", groups=("home",))
    alice = hub.user("alice", groups=("home",))
    t, a = await hub.connect(temp), await hub.connect(alice)
    await join(t, "home", temp)
    await join(a, "home", alice)
    assert (await api(hub, root, "DELETE", "/api/accounts/temp")).status_code == 204
    assert await closed_code(t) == 4401
    notice = await recv_until(a, "#notice", **{"#code": "USER_DISCONNECTED"})
    assert notice["#user_id"] == temp.user_id


async def test_figures_are_for_admins_or_a_local_unproxied_scraper(hub: Hub) -> None:
    alice = hub.user("alice", groups=("home",))
    root = hub.user("root", role=Role.ADMIN, groups=())
    proxied = {"X-Forwarded-For": "198.51.100.7"}
    async with hub.http() as http:
        refused = await http.get("/metrics", headers=proxied)
        assert refused.status_code == 401
        assert refused.json()["code"] == Codes.UNAUTHORIZED
        health = (await http.get("/health", headers=proxied)).json()
        assert health == {
            "status": "ok",
            "version": health["version"],
            "connections": None,
            "groups": None,
        }
        assert (await http.get("/metrics")).status_code == 200  # loopback, not proxied
    async with hub.http(alice) as http:
        assert (await http.get("/metrics", headers=proxied)).status_code == 403
        assert (await http.get("/health", headers=proxied)).status_code == 403
    async with hub.http(root) as http:
        assert (await http.get("/metrics", headers=proxied)).status_code == 200
        assert (await http.get("/health", headers=proxied)).json()["connections"] == 0


async def test_every_api_route_refuses_a_request_without_a_token(hub: Hub) -> None:
    """Found from the app itself, so a route added later is covered too."""
    from fastapi.routing import APIRoute

    public = {"/api/login"}
    routes = [
        route
        for route in hub.server.app.api.routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
    ]
    assert len(routes) >= 15
    async with hub.http() as http:
        for route in routes:
            if route.path in public:
                continue
            path = route.path.replace("{", "").replace("}", "")  # any value: auth comes first
            for method in route.methods:
                answer = await http.request(method, path, json={})
                assert answer.status_code == 401, (method, route.path, answer.text)
                assert answer.json()["code"] == Codes.UNAUTHORIZED
