"""Fixtures every test directory shares.

- ``postgres``: one real PostgreSQL server for the whole session. tests/hub (the storage
  engines) and tests/cluster (several hub nodes on one database) take fresh databases from
  the same server (``postgres.database()``), so a run starts it once.
- ``tls`` and ``service``: the loopback HTTPS push service (``push/loopback.py``, which
  checks VAPID and decrypts every message), for the push tests and for the hub and agent
  processes of tests/recovery and tests/cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from postgres import PostgresServer, postgres_server
from push.loopback import LoopbackPushService, TlsFiles


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (Debian's, on a loopback port)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    """A self-signed certificate for the push service, its own CA, in the test's directory."""
    return TlsFiles.make(tmp_path)


@pytest.fixture
async def service(tls: TlsFiles) -> AsyncIterator[LoopbackPushService]:
    """The push service on 127.0.0.1; after the test, it must have seen no bad request."""
    push_service = LoopbackPushService(tls)
    await push_service.start()
    yield push_service
    await push_service.stop()
    assert push_service.problems == []
