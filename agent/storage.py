"""The SQLite files state is kept in: created private (0600), one connection, one lock.

The stores built on it (accounts, push subscriptions, the alert outbox) are synchronous and
called from threads (``asyncio.to_thread``), so the connection is shared across threads and
every use is serialised by the lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

__all__ = ["PrivateDatabase"]

_BUSY_TIMEOUT_MS: Final = 5000


class PrivateDatabase:
    """One SQLite file, mode 0600; ``synchronous`` selects WAL with that durability level."""

    def __init__(self, path: Path, *, synchronous: Literal["NORMAL", "FULL"] | None = None) -> None:
        self.path = path
        _create_private_file(path)
        self.lock = threading.Lock()
        self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if synchronous is not None:
            # WAL: readers do not wait for the writer. NORMAL survives a crashed process;
            # FULL also a power cut.
            self.connection.execute("PRAGMA journal_mode = WAL")
            self.connection.execute(f"PRAGMA synchronous = {synchronous}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.connection.close()


def _create_private_file(path: Path) -> None:
    # SQLite creates a missing file with the umask's mode; create it 0600 first, and
    # tighten an existing one.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
