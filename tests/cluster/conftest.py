"""Hub nodes sharing one real Redis (started for the session) and one PostgreSQL database
(a fresh one per test, on the session's server from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import PostgresServer

from .redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests keep apart by key prefix or FLUSHALL."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis, emptied for this test."""
    assert redis_server.command("FLUSHALL") == b"+OK"
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone (to restart or stop it)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh empty database of the session's PostgreSQL: the records this test's nodes share."""
    return postgres.database()
