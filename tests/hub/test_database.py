"""The hub's records on both engines: SQLite files and a real PostgreSQL server.

The same stores, the same migrations, the same assertions; then what only a shared database
gives: several hub nodes agreeing on tokens, accounts, snapshots and the push queue.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from postgres import PASSWORD, PostgresServer
from websockets.asyncio.client import connect

from agent.config import Settings, check_settings_file
from agent.database import (
    SECRETS_SCHEMA,
    Database,
    DatabaseSecrets,
    PostgresDatabase,
    SqliteDatabase,
    migrate,
)
from agent.errors import AccountError, ConfigError
from agent.hub.accounts import ACCOUNTS_SCHEMA, AccountStore, Role
from agent.hub.history import EventRecord
from agent.hub.records import migrate_all
from agent.hub.server import HubServer
from agent.push.message import PushMessage
from agent.push.queue import DatabaseDeliveryQueue
from agent.push.store import SubscriptionStore
from agent.push.subscriptions import Subscription

from .conftest import TIMEOUT, closed_code

JPEG = b"\xff\xd8\xff\xe0" + b"picture" * 50 + b"\xff\xd9"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database on each engine."""
    if request.param == "sqlite":
        db: Database = SqliteDatabase(tmp_path / "records.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        db = PostgresDatabase(server.database())
    yield db
    db.close()


def test_migrations_apply_once_and_refuse_a_newer_database(database: Database) -> None:
    applied = migrate_all(database)
    assert [(domain, m.version) for domain, m in applied] == [
        ("accounts", 1),
        ("accounts", 2),
        ("push", 1),
        ("push", 2),
        ("snapshots", 1),
        ("events", 1),
        ("secrets", 1),
    ]
    assert migrate_all(database) == []
    with database.read() as tx:
        rows = tx.execute("SELECT domain, version FROM schema_migrations").fetchall()
    assert len(rows) == 7
    with database.transaction() as tx:
        tx.execute(
            "INSERT INTO schema_migrations (domain, version, name, applied_at) "
            "VALUES ('accounts', 99, 'from the future', 0)"
        )
    with pytest.raises(ConfigError) as caught:
        migrate(database, ACCOUNTS_SCHEMA, now=time.time())
    assert "accounts tables" in str(caught.value)
    assert "version 99, newer than this program knows (2)" in str(caught.value)


def test_accounts_grants_and_generations_on_each_engine(database: Database) -> None:
    store = AccountStore(database)
    alice = store.add("alice", "a long passphrase", Role.USER, groups=["home"])
    with pytest.raises(AccountError, match="already exists"):
        store.add("alice", None)
    before = store.revision()
    assert store.grant("alice", ["site-*", "home"]) == ("home", "site-*")
    assert store.revoke("alice", ["home"]) == ("site-*",)
    assert store.revoke_tokens("alice") == 1
    assert store.revision() == before + 3
    revision, accounts = store.snapshot()
    assert revision == before + 3
    assert [(a.name, a.grants, a.token_generation) for a in accounts] == [("alice", ("site-*",), 1)]
    verified = store.verify_password("alice", "a long passphrase")
    assert verified is not None
    assert verified.user_id == alice.user_id
    store.remove("alice")
    assert store.list() == []
    store.close()  # the caller's database stays open
    with database.read() as tx:
        assert tx.execute("SELECT COUNT(*) FROM grants").fetchone()[0] == 0


def test_a_failed_transaction_leaves_nothing(database: Database) -> None:
    store = AccountStore(database)
    with pytest.raises(AccountError):
        store.add("bob", None, groups=["fine", "not*fine"])
    assert store.list() == []


def test_nodes_agree_on_one_secret(postgres: PostgresServer) -> None:
    url = postgres.database()
    databases = [PostgresDatabase(url) for _ in range(4)]
    try:
        migrate(databases[0], SECRETS_SCHEMA, now=time.time())
        found: list[bytes] = []

        def make(db: Database) -> None:
            found.append(DatabaseSecrets(db).get_or_create("jwt-secret", _random))

        threads = [threading.Thread(target=make, args=(db,)) for db in databases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert len(found) == 4
        assert len(set(found)) == 1
    finally:
        for db in databases:
            db.close()


def test_two_nodes_never_claim_the_same_delivery(postgres: PostgresServer) -> None:
    url = postgres.database()
    first, second = PostgresDatabase(url), PostgresDatabase(url)
    try:
        queues = [DatabaseDeliveryQueue(SubscriptionStore(db)) for db in (first, second)]
        store = SubscriptionStore(first)
        subs = []
        for n in range(60):
            sub = Subscription(f"https://push.example/s/{n}", "p" * 87, "a" * 22)
            store.add(f"user-{n}", sub, max_per_user=5)
            subs.extend(store.for_users([f"user-{n}"]))
        queues[0].accept(subs, PushMessage({"title": "x"}, ttl=600), now=time.time(), max_rows=1000)
        claimed: list[list[int]] = [[], []]

        def drain(index: int) -> None:
            while True:
                got = queues[index].claim(time.time(), 3, lease_seconds=600)
                if not got:
                    return
                claimed[index] += [d.id for d in got]

        threads = [threading.Thread(target=drain, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        everything = claimed[0] + claimed[1]
        assert len(everything) == 60
        assert len(set(everything)) == 60  # SKIP LOCKED: no row went to both nodes
    finally:
        first.close()
        second.close()


def test_a_password_file_and_a_bad_password(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = postgres.database()
    bare = url.replace(f":{PASSWORD}@", "@")
    secret = tmp_path / "db-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    settings = Settings(
        state_dir=tmp_path / "state",
        hub={"database": bare, "database_password_file": str(secret)},
    )
    server = HubServer(settings)
    try:
        assert server.records.shared
        assert PASSWORD not in server.records.where
        assert "database password file" in caplog.text  # readable by others: said
        assert "readable by others (mode 644)" in caplog.text
    finally:
        asyncio.run(server.stop())
    wrong = Settings(state_dir=tmp_path / "state", hub={"database": bare.replace("@", ":nope@")})
    with pytest.raises(ConfigError) as caught:
        HubServer(wrong)
    assert "cannot connect to the database at" in str(caught.value)
    assert "nope" not in str(caught.value)


def test_config_refuses_an_unknown_database_setting(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text('[hub]\ndatabase = "mysql://x"\n')
    with pytest.raises(ConfigError) as caught:
        check_settings_file(toml)
    message = str(caught.value)
    assert "hub.database" in message
    assert 'must be "sqlite" or a postgresql:// URL' in message


async def test_hub_nodes_on_one_database_share_tokens_accounts_and_snapshots(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.database()
    nodes = []
    for n in range(2):
        settings = Settings(
            state_dir=tmp_path / f"node{n}", hub={"host": "127.0.0.1", "port": 0, "database": url}
        )
        node = HubServer(settings)
        await node.start()
        nodes.append(node)
    try:
        first, second = nodes
        root = first.accounts.add("root", None, Role.ADMIN)
        admin_token = first.tokens.issue(root, 600)
        headers = {"Authorization": f"Bearer {admin_token}"}
        async with httpx.AsyncClient(headers=headers, timeout=TIMEOUT) as http:
            # A token of node 0 is good on node 1; an account made through node 1 exists on 0.
            made = await http.post(
                f"{second.http_url}/api/accounts",
                json={"name": "cam", "role": "device", "groups": ["home"]},
            )
            assert made.status_code == 201, made.text
            cam = first.accounts.get_by_name("cam")
            assert cam is not None
            cam_token = second.tokens.issue(cam, 600)
            ws = await connect(f"{first.ws_url}?token={cam_token}")
            # A snapshot stored through one node is served by the other.
            upload = await http.post(
                f"{first.http_url}/api/snapshots",
                content=JPEG,
                headers={"Content-Type": "image/jpeg"},
            )
            assert upload.status_code == 201, upload.text
            fetched = await http.get(second.http_url + upload.json()["url"])
            assert (fetched.status_code, fetched.content) == (200, JPEG)
            keys = [
                (await http.get(f"{node.http_url}/api/push/vapid-public-key")).json()
                for node in nodes
            ]
            assert keys[0] == keys[1]
            # An event recorded by node 0 is listed by node 1: the history is shared too.
            assert first.history is not None
            now = time.time()
            record = EventRecord(
                device_id=cam.user_id, device="cam", name="ring", trigger="manual",
                device_time=now, time=now, received=now, groups=("home",),
            )  # fmt: skip
            assert await asyncio.to_thread(first.history.store.add, [record]) == 1
            listed = await http.get(f"{second.http_url}/api/events")
            assert [e["name"] for e in listed.json()["list"]] == ["ring"]
            # Removed through node 1: the connection on node 0 closes (the next poll).
            removed = await http.delete(f"{second.http_url}/api/accounts/cam")
            assert removed.status_code == 204
            assert await closed_code(ws) == 4401
    finally:
        for node in nodes:
            await node.stop()


def test_the_migrate_command_and_config_show(postgres: PostgresServer, tmp_path: Path) -> None:
    import os
    import subprocess

    url = postgres.database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_HUB__DATABASE"] = url
    run = [sys.executable, "-m", "agent.cli"]
    migrated = subprocess.run(
        [*run, "hub", "migrate", "--state-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    assert "up to date (accounts, push, snapshots, events, secrets)" in migrated.stdout
    assert PASSWORD not in migrated.stdout + migrated.stderr
    shown = subprocess.run(
        [*run, "config", "show"], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert PASSWORD not in shown.stdout
    assert "database = " in shown.stdout


def _random() -> bytes:
    import secrets

    return secrets.token_bytes(64)
