"""The cluster's settings: [hub] backplane and its password, [connect] url as a list."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.errors import ConfigError
from agent.hub.backplane import BackplaneError
from agent.hub.backplane_redis import RedisBackplane, read_password_file
from agent.hub.server import backplane_for

from .redis_server import RedisServer


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return path


def test_a_redis_url_is_a_backplane_and_its_password_is_never_shown(tmp_path: Path) -> None:
    backplane = 'backplane = "rediss://hub:s3cret-pass@redis.example:6380/2"'
    path = write(tmp_path, f'[hub]\n{backplane}\ndatabase = "postgresql://hub@db/edge"\n')
    settings = load_settings(path)
    assert settings.hub.backplane.startswith("rediss://hub:s3cret-pass@")
    shown = settings.redacted()["hub"]["backplane"]
    assert shown == "rediss://hub:********@redis.example:6380/2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('backplane = "postgres://db/x"', 'use "memory" (one hub process) or redis://'),
        ('backplane = "redis://"', "is not a backplane"),
        ('backplane_password_file = "/etc/x"', "is for a Redis backplane; backplane is memory"),
        (
            'backplane = "redis://:pw@r"\nbackplane_password_file = "/etc/x"',
            "has a password and backplane_password_file is set",
        ),
    ],
)
def test_a_backplane_that_cannot_work_is_refused_clearly(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match="hub") as caught:
        load_settings(write(tmp_path, f"[hub]\n{text}\n"))
    assert expected in str(caught.value)
    assert "pw@" not in str(caught.value)


def test_connect_url_takes_a_list_and_a_single_url_stays_a_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = load_settings(write(tmp_path, '[connect]\nurl = "ws://a:8080/ws"\n'))
    assert one.connect.url == "ws://a:8080/ws"
    assert one.connect.urls == ["ws://a:8080/ws"]
    many = load_settings(write(tmp_path, '[connect]\nurl = ["ws://a/ws", "wss://b/ws"]\n'))
    assert many.connect.urls == ["ws://a/ws", "wss://b/ws"]
    with pytest.raises(ConfigError, match=r"connect\.url"):
        load_settings(write(tmp_path, '[connect]\nurl = ["ws://a/ws", "ftp://b"]\n'))
    with pytest.raises(ConfigError, match="at least one hub URL"):
        load_settings(write(tmp_path, "[connect]\nurl = []\n"))
    monkeypatch.setenv("EDGE_AGENT_CONNECT__URL", "ws://a/ws, ws://b/ws ws://c/ws")
    assert load_settings(None).connect.urls == ["ws://a/ws", "ws://b/ws", "ws://c/ws"]


def test_the_password_file_is_read_and_its_problems_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "redis-password"
    path.write_text("  hunter2-but-longer \n")
    path.chmod(0o600)
    assert read_password_file(path) == "hunter2-but-longer"
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_password_file(path)
    assert "readable by others" in caplog.text
    assert "hunter2" not in caplog.text
    path.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_password_file(path)
    with pytest.raises(ConfigError, match="backplane_password_file"):
        read_password_file(tmp_path / "missing")


async def test_a_node_uses_the_password_file(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="from-the-file-123")
    server.start()
    try:
        secret = tmp_path / "secret"
        secret.write_text("from-the-file-123\n")
        secret.chmod(0o600)
        plane = backplane_for(server.url, password_file=secret)
        assert isinstance(plane, RedisBackplane)
        await plane.start()
        assert await plane.stats() == (0, 0)
        await plane.close()
        without = backplane_for(server.url)
        with pytest.raises(BackplaneError, match="refused the password"):
            await without.start()
    finally:
        server.stop()
