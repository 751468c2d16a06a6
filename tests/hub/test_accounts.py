"""Accounts (SQLite, scrypt), tokens (HS256) and the state directory's secret files."""

from __future__ import annotations

import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import jwt
import pytest

from agent.errors import AccountError, AuthError, ConfigError
from agent.hub import accounts as accounts_module
from agent.hub.accounts import (
    ACCOUNTS_FILE,
    MIN_PASSWORD_LENGTH,
    AccountStore,
    Role,
    check_new_password,
    check_password,
    hash_password,
)
from agent.hub.tokens import SECRET_FILE, Claims, TokenIssuer
from agent.statedir import read_or_create_secret, resolve_state_dir, write_secret


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AccountStore]:
    accounts = AccountStore(tmp_path / ACCOUNTS_FILE)
    yield accounts
    accounts.close()


def test_accounts_are_created_with_uuids_and_a_private_file(store: AccountStore) -> None:
    alice = store.add("alice", "correct horse", Role.ADMIN)
    assert uuid.UUID(alice.user_id).version == 4
    assert (alice.name, alice.role) == ("alice", Role.ADMIN)
    assert alice.created_at <= time.time()
    assert _mode(store.path) == 0o600
    assert store.get_by_name("alice") == alice
    assert store.get_by_id(alice.user_id) == alice
    assert store.get_by_name("bob") is None
    assert store.get_by_id(str(uuid.uuid4())) is None


def test_passwords_verify_only_when_right(store: AccountStore) -> None:
    alice = store.add("alice", "correct horse")
    assert store.verify_password("alice", "correct horse") == alice
    assert store.verify_password("alice", "wrong horse") is None
    assert store.verify_password("nobody", "correct horse") is None
    assert store.verify_password("alice", "x" * 5000) is None
    store.set_password("alice", "new passphrase")
    assert store.verify_password("alice", "correct horse") is None
    renewed = store.verify_password("alice", "new passphrase")
    assert renewed is not None
    assert renewed.user_id == alice.user_id
    assert renewed.token_generation == alice.token_generation + 1  # old sessions end
    store.set_password("alice", None)
    assert store.verify_password("alice", "new passphrase") is None


def test_new_passwords_must_be_long_enough(store: AccountStore) -> None:
    assert MIN_PASSWORD_LENGTH == 12
    with pytest.raises(
        AccountError, match=r"at least 12 characters \(\[hub\] min_password_length\)"
    ):
        store.add("alice", "x" * 11)
    assert store.get_by_name("alice") is None  # nothing half-made
    alice = store.add("alice", "x" * 12)
    assert store.verify_password("alice", "x" * 12) == alice
    with pytest.raises(AccountError, match="at least 20 characters"):
        store.set_password("alice", "y" * 19, min_password_length=20)
    assert store.verify_password("alice", "x" * 12) is not None  # unchanged
    store.set_password("alice", "y" * 20, min_password_length=20)
    assert store.verify_password("alice", "y" * 20) is not None
    # The caller's minimum rules both ways; no password at all is a token-only account.
    assert store.add("bob", "pin1", min_password_length=4).name == "bob"
    assert store.add("cam", None, Role.DEVICE).name == "cam"
    with pytest.raises(AccountError, match="longer than 1024"):
        check_new_password("z" * 1025)
    check_new_password("z" * 1024)


@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("nobody", ""),  # unknown name, empty password: used to raise (a 500 on /api/login)
        ("nobody", "a guess at it"),
        ("alice", ""),
        ("alice", "the wrong one"),
        ("alice", "x" * 5000),
        ("alice", "lone \ud800 surrogate"),
        ("device", ""),  # no password: logs in with tokens only
        ("device", "anything at all"),
        ("", ""),
    ],
)
def test_every_failed_check_is_none_after_exactly_one_full_scrypt(
    store: AccountStore, name: str, password: str
) -> None:
    store.add("alice", "correct horse battery")
    store.add("device", None, Role.DEVICE)
    real = accounts_module._scrypt
    with mock.patch.object(accounts_module, "_scrypt", autospec=True, side_effect=real) as spy:
        assert store.verify_password(name, password) is None
        assert store.verify_password("alice", "correct horse battery") is not None
    # The same work for every miss, and as much as for the right password: the answer's
    # timing does not tell which names exist.
    assert spy.call_count == 2
    miss, hit = spy.call_args_list
    assert miss.args[2:] == hit.args[2:] == (16384, 8, 1)
    assert len(miss.args[1]) == len(hit.args[1])  # a salt of the same size


def test_password_hashes_are_salted_scrypt(store: AccountStore) -> None:
    first, second = hash_password("same"), hash_password("same")
    assert first != second
    assert first.startswith("scrypt$16384$8$1$")
    assert check_password("same", first)
    assert not check_password("other", first)
    assert not check_password("same", "garbage")
    assert not check_password("same", "md5$1$2$3$AAAA$AAAA")
    with pytest.raises(AccountError, match="empty"):
        hash_password("")
    with pytest.raises(AccountError, match="longer than"):
        hash_password("x" * 2000)


@pytest.mark.parametrize(
    "name", ["", "-dash", "has space", "x" * 65, "0b6e4c9a-2f55-4c1e-9d7e-3a1b2c3d4e5f"]
)
def test_bad_names_are_refused(store: AccountStore, name: str) -> None:
    with pytest.raises(AccountError, match="Bad account name"):
        store.add(name, None)


def test_duplicates_and_unknown_names_are_account_errors(store: AccountStore) -> None:
    store.add("alice", None)
    with pytest.raises(AccountError, match='"alice" already exists'):
        store.add("alice", None)
    with pytest.raises(AccountError, match='No account named "bob"'):
        store.remove("bob")
    with pytest.raises(AccountError, match='No account named "bob"'):
        store.set_password("bob", "long enough password")


def test_list_remove_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / ACCOUNTS_FILE
    store = AccountStore(path)
    store.add("zed", None, Role.DEVICE)
    store.add("amy", None)
    store.remove("zed")
    store.add("bea", None)
    store.close()
    again = AccountStore(path)
    try:
        assert [a.name for a in again.list()] == ["amy", "bea"]
    finally:
        again.close()


def test_an_existing_database_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / ACCOUNTS_FILE
    path.touch(mode=0o644)
    path.chmod(0o644)
    AccountStore(path).close()
    assert _mode(path) == 0o600


def _issuer(tmp_path: Path) -> TokenIssuer:
    return TokenIssuer.from_state_dir(tmp_path)


def test_tokens_round_trip_their_claims(store: AccountStore, tmp_path: Path) -> None:
    alice = store.add("alice", None, Role.DEVICE)
    issuer = _issuer(tmp_path)
    claims = issuer.verify(issuer.issue(alice, 60))
    assert claims == Claims(alice.user_id, "alice", Role.DEVICE, claims.expires_at)
    assert time.time() + 50 < claims.expires_at <= time.time() + 61
    with pytest.raises(ValueError, match="positive"):
        issuer.issue(alice, 0)


def test_the_secret_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    _issuer(tmp_path)
    secret_file = tmp_path / SECRET_FILE
    assert _mode(secret_file) == 0o600
    first = secret_file.read_bytes()
    _issuer(tmp_path)
    assert secret_file.read_bytes() == first
    assert len(first) >= 32


def _forge(secret: bytes, **claims: object) -> str:
    now = int(time.time())
    payload = {"sub": "u", "name": "n", "role": "user", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def test_bad_tokens_are_auth_errors_with_a_reason(tmp_path: Path) -> None:
    issuer = _issuer(tmp_path)
    secret = (tmp_path / SECRET_FILE).read_bytes()
    cases = {
        _forge(secret, exp=int(time.time()) - 60): "expired",
        _forge(b"x" * 32): "invalid",
        _forge(secret, role="emperor"): "invalid",
        _forge(secret, sub=""): "invalid",
        _forge(secret, name=5): "invalid",
        jwt.encode(
            {"sub": "u", "exp": int(time.time()) + 60}, secret, algorithm="HS256"
        ): "invalid",
        jwt.encode({"sub": "u"}, None, algorithm="none"): "invalid",  # type: ignore[arg-type]
        "not-a-token": "invalid",
    }
    for token, reason in cases.items():
        with pytest.raises(AuthError) as excinfo:
            issuer.verify(token)
        assert excinfo.value.reason == reason, token


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        TokenIssuer(b"short")
    (tmp_path / SECRET_FILE).write_bytes(b"short")
    with pytest.raises(ConfigError) as excinfo:
        TokenIssuer.from_state_dir(tmp_path)
    assert excinfo.value.file == tmp_path / SECRET_FILE


def test_derived_keys_are_shared_by_issuers_of_one_secret_and_apart_per_purpose(
    tmp_path: Path,
) -> None:
    one, same = TokenIssuer.from_state_dir(tmp_path), TokenIssuer.from_state_dir(tmp_path)
    assert one.derive_key("login throttle keys") == same.derive_key("login throttle keys")
    assert len(one.derive_key("login throttle keys")) == 32
    assert one.derive_key("login throttle keys") != one.derive_key("something else")
    secret = (tmp_path / SECRET_FILE).read_bytes()
    assert secret not in one.derive_key("login throttle keys")
    assert TokenIssuer(b"x" * 32).derive_key("login throttle keys") != one.derive_key(
        "login throttle keys"
    )


def test_state_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    home_default = resolve_state_dir()
    assert home_default == tmp_path / "home" / ".local" / "state" / "edge-agent"
    assert _mode(home_default) == 0o700
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert resolve_state_dir() == home_default
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_state_dir() == tmp_path / "xdg" / "edge-agent"
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'sd1'}:{tmp_path / 'sd2'}")
    assert resolve_state_dir() == tmp_path / "sd1"
    assert resolve_state_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()


def test_write_secret_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_secret(path, b"one")
    write_secret(path, b"two")
    assert path.read_bytes() == b"two"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temporary files left


def test_read_or_create_secret_makes_one_secret_for_racing_callers(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def make() -> bytes:
        return os.urandom(32)

    def worker() -> None:
        barrier.wait()
        results.append(read_or_create_secret(path, make))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    assert results[0] == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


def test_a_readable_secret_is_tightened_when_read(tmp_path: Path) -> None:
    path = tmp_path / "loose"
    path.write_bytes(b"s" * 32)
    path.chmod(0o644)
    assert read_or_create_secret(path, lambda: b"unused") == b"s" * 32
    assert _mode(path) == 0o600
