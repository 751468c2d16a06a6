"""The private SQLite file the stores are built on."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.storage import PrivateDatabase


def test_new_and_existing_files_are_made_private(tmp_path: Path) -> None:
    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    for path in (tmp_path / "new.db", loose):
        PrivateDatabase(path, synchronous="FULL").close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_transaction_is_rolled_back(tmp_path: Path) -> None:
    db = PrivateDatabase(tmp_path / "t.db")
    db.connection.execute("CREATE TABLE t (v INTEGER)")
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")

    def insert_then_fail() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert db.connection.execute("SELECT v FROM t").fetchall() == [(1,)]
    db.close()


def test_wal_is_used_only_when_asked(tmp_path: Path) -> None:
    plain = PrivateDatabase(tmp_path / "plain.db")
    wal = PrivateDatabase(tmp_path / "wal.db", synchronous="NORMAL")
    assert plain.connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert wal.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    plain.close()
    wal.close()
