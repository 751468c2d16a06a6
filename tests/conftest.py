"""Fixtures every test directory shares: one real PostgreSQL server for the whole session.

tests/hub (the storage engines) and tests/cluster (several hub nodes on one database) take
fresh databases from the same server (``postgres.database()``), so a run starts it once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres import PostgresServer, postgres_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (Debian's, on a loopback port)."""
    with postgres_server() as server:
        yield server
