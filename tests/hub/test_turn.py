"""Short-lived TURN credentials: the pure minting, the settings, and ``GET /api/ice-servers``
on a real hub over real sockets.

That coturn accepts what is minted here (and refuses an expired or forged one) is shown
against a real coturn in tests/nat/test_relay.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.errors import ConfigError
from agent.hub.accounts import Role
from agent.hub.devices_api import IceServerItem
from agent.hub.server import HubServer
from agent.hub.turn import IceServerSource, load_turn_secret, mint_credential

from .conftest import Hub

SECRET = "a-shared-secret-of-some-length"
TURN_URLS = ["turn:192.0.2.1:3478?transport=udp", "turn:192.0.2.1:3478?transport=tcp"]


def test_the_credential_is_the_turn_rest_api_hmac() -> None:
    minted = mint_credential(b"s3cret", "user-1", now=1_700_000_000.7, ttl=3600)
    assert minted.username == "1700003600:user-1"
    assert minted.expires_at == 1_700_003_600
    # draft-uberti-behave-turn-rest-00 section 2.2, computed independently here.
    expected = hmac.new(b"s3cret", b"1700003600:user-1", hashlib.sha1).digest()
    assert base64.b64decode(minted.credential) == expected
    assert minted.credential not in repr(minted)


def test_the_answer_puts_fresh_turn_first_then_the_static_servers() -> None:
    stun = IceServerItem(urls=["stun:192.0.2.1:3478"])
    clock = iter([1000.0, 2000.0])
    source = IceServerSource(
        static=[stun],
        turn_urls=TURN_URLS,
        secret=b"k" * 16,
        ttl=600,
        relay_only=True,
        clock=lambda: next(clock),
    )
    first, second = source.answer("u1"), source.answer("u1")
    assert first.ice_servers[1] == stun
    assert first.ice_servers[0].urls == TURN_URLS
    assert first.ice_servers[0].username == "1600:u1"
    assert second.ice_servers[0].username == "2600:u1"  # minted per request
    assert first.model_dump() == {
        "iceServers": [
            {
                "urls": TURN_URLS,
                "username": "1600:u1",
                "credential": first.ice_servers[0].credential,
            },
            {"urls": ["stun:192.0.2.1:3478"], "username": None, "credential": None},
        ],
        "ttl": 600,
        "iceTransportPolicy": "relay",
    }
    assert IceServerSource(static=[stun]).answer("u1").ice_servers == [stun]
    with pytest.raises(ValueError, match="secret"):
        IceServerSource(turn_urls=TURN_URLS)


def test_turn_settings_are_checked_and_the_secret_never_shown(tmp_path: Path) -> None:
    settings = load_settings(None, hub={"turn": {"urls": TURN_URLS[0], "secret": SECRET}})
    assert settings.hub.turn is not None
    assert settings.hub.turn.urls == TURN_URLS[:1]
    assert settings.hub.turn.ttl == 3600
    assert settings.redacted()["hub"]["turn"]["secret"] == "********"
    assert SECRET not in str(settings.redacted())
    assert load_settings(None, hub={"turn": {"urls": TURN_URLS, "secret": SECRET, "ttl": "30m"}})
    problems = {
        "'stun:x' is not a TURN URL": {"urls": ["stun:x"], "secret": SECRET},
        "needs secret or secret_file": {"urls": TURN_URLS},
        "at least 16 characters": {"urls": TURN_URLS, "secret": "short-one"},
        "greater than or equal to 60": {"urls": TURN_URLS, "secret": SECRET, "ttl": 5},
    }
    for message, turn in problems.items():
        with pytest.raises(ConfigError, match=message) as info:
            load_settings(None, hub={"turn": turn})
        assert "short-one" not in str(info.value)
    both = {"urls": TURN_URLS, "secret": SECRET, "secret_file": str(tmp_path / "s")}
    with pytest.raises(ConfigError, match="one of them"):
        load_settings(None, hub={"turn": both})


def test_a_missing_secret_file_is_made_private_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "turn-secret"
    settings = load_settings(None, hub={"turn": {"urls": TURN_URLS, "secret_file": str(path)}})
    assert settings.hub.turn is not None
    with caplog.at_level(logging.INFO, logger="agent.hub.turn"):
        made = load_turn_secret(settings.hub.turn)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(made) == 64
    assert made.decode() not in caplog.text
    assert "static-auth-secret" in caplog.text
    assert load_turn_secret(settings.hub.turn) == made  # the same one next time
    path.write_text("too-short\n")
    with pytest.raises(ConfigError, match="shorter than 16") as info:
        load_turn_secret(settings.hub.turn)
    assert info.value.key == "hub.turn.secret_file"
    missing = load_settings(
        None, hub={"turn": {"urls": TURN_URLS, "secret_file": str(tmp_path / "no" / "s")}}
    )
    assert missing.hub.turn is not None
    with pytest.raises(ConfigError, match="cannot read or create the TURN secret file"):
        load_turn_secret(missing.hub.turn)


@pytest.fixture
async def turn_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings = load_settings(
        None,
        state_dir=tmp_path,
        hub={
            "host": "127.0.0.1",
            "port": 0,
            "turn": {"urls": TURN_URLS, "secret": SECRET, "ttl": "10m"},
            "ice_servers": [{"urls": ["stun:192.0.2.1:3478"]}],
        },
        calls={"ice_transport_policy": "relay"},
    )
    server = HubServer(settings)
    await server.start()
    yield Hub(server)
    await server.stop()


async def test_any_signed_in_account_gets_fresh_credentials(turn_hub: Hub) -> None:
    alice = turn_hub.user("alice")
    porch = turn_hub.user("porch", role=Role.DEVICE)
    async with turn_hub.http() as anonymous:
        refused = await anonymous.get("/api/ice-servers")
    assert refused.status_code == 401
    assert refused.json()["code"] == "UNAUTHORIZED"
    for user in (alice, porch):
        async with turn_hub.http(user) as http:
            response = await http.get("/api/ice-servers")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        answer = response.json()
        assert answer["ttl"] == 600
        assert answer["iceTransportPolicy"] == "relay"
        turn, stun = answer["iceServers"]
        assert stun == {"urls": ["stun:192.0.2.1:3478"], "username": None, "credential": None}
        assert turn["urls"] == TURN_URLS
        expiry, user_id = turn["username"].split(":")
        assert user_id == user.user_id
        assert abs(int(expiry) - (time.time() + 600)) < 30
        digest = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
        assert turn["credential"] == base64.b64encode(digest).decode()
    async with turn_hub.http(alice) as http:
        config = (await http.get("/api/viewer/config")).json()
    assert config["iceServersUrl"] == "/api/ice-servers"
    assert config["iceTransportPolicy"] == "relay"


async def test_without_turn_the_route_answers_the_static_servers(hub: Hub) -> None:
    alice = hub.user("alice")
    async with hub.http(alice) as http:
        answer = (await http.get("/api/ice-servers")).json()
        page = await http.get("/")
    assert answer == {"iceServers": [], "ttl": 3600, "iceTransportPolicy": "all"}
    assert page.status_code == 200  # the viewer is still served behind the new route
