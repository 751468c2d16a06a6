"""The edge-agent command, run as a real process: accounts, tokens, settings checks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.hub.accounts import AccountStore, Role
from agent.hub.tokens import TokenIssuer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").glob("*.toml"))
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Runs ``python -m agent.cli ARGS`` with a clean environment and a private XDG state."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_AGENT_")}
    base.pop("STATE_DIRECTORY", None)
    base.pop("JOURNAL_STREAM", None)
    base["XDG_STATE_HOME"] = str(tmp_path / "xdg")

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**base, **(env or {})},
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    return run


def add_user(
    cli: Cli, state: Path, name: str, *extra: str, phrase: str = "a long passphrase"
) -> str:
    args = ["user", "add", name, "--password-stdin", "--state-dir", str(state), *extra]
    result = cli(*args, stdin=phrase + "\n")
    assert result.code == 0, result.err
    return result.out.strip()


def without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: without_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None
    }


# -- user -----------------------------------------------------------------------------------


def test_user_add_prints_the_id_and_stores_the_password(cli: Cli, state: Path) -> None:
    user_id = add_user(cli, state, "alice", "--role", "admin", phrase="correct horse")
    assert UUID_RE.match(user_id)
    store = AccountStore(state / "accounts.db")
    try:
        account = store.verify_password("alice", "correct horse")
        assert account is not None
        assert (account.user_id, account.role) == (user_id, Role.ADMIN)
        # Only the one trailing newline of the pipe was dropped.
        assert store.verify_password("alice", "correct horse\n") is None
    finally:
        store.close()


def test_user_add_twice_fails_clearly(cli: Cli, state: Path) -> None:
    add_user(cli, state, "alice")
    args = ("user", "add", "alice", "--password-stdin", "--state-dir", str(state))
    again = cli(*args, stdin="another passphrase")
    assert again.code == 1
    assert again.out == ""
    assert again.err.strip() == 'edge-agent: An account named "alice" already exists.'


def test_user_add_without_a_terminal_makes_a_token_only_account(cli: Cli, state: Path) -> None:
    result = cli("user", "add", "cam1", "--role", "device", "--state-dir", str(state))
    assert result.code == 0
    assert UUID_RE.match(result.out.strip())
    assert "tokens only" in result.err
    store = AccountStore(state / "accounts.db")
    try:
        assert store.verify_password("cam1", "anything") is None
        device = store.get_by_name("cam1")
        assert device is not None
        assert device.role is Role.DEVICE
    finally:
        store.close()


def test_user_add_refuses_empty_stdin_and_bad_names(cli: Cli, state: Path) -> None:
    empty = cli("user", "add", "bob", "--password-stdin", "--state-dir", str(state), stdin="\n")
    assert empty.code == 1
    assert "--password-stdin" in empty.err
    args = ("user", "add", "no spaces", "--password-stdin", "--state-dir", str(state))
    bad = cli(*args, stdin="a long passphrase")
    assert bad.code == 1
    assert "Bad account name 'no spaces'" in bad.err
    assert "bob" not in cli("user", "list", "--state-dir", str(state)).out


def test_user_add_refuses_a_short_password_naming_the_rule(cli: Cli, state: Path) -> None:
    args = ("user", "add", "bob", "--password-stdin", "--state-dir", str(state))
    short = cli(*args, stdin="eleven char\n")
    assert short.code == 1
    assert short.out == ""
    assert short.err.strip() == (
        "edge-agent: The password is too short: use at least 12 characters "
        "([hub] min_password_length)."
    )
    assert "bob" not in cli("user", "list", "--state-dir", str(state)).out
    stricter = {"EDGE_AGENT_HUB__MIN_PASSWORD_LENGTH": "16"}
    refused = cli(*args, stdin="thirteen char", env=stricter)
    assert refused.code == 1
    assert "at least 16 characters" in refused.err
    # A lower minimum reaches the store too: the setting is the rule, not a second check.
    laxer = {"EDGE_AGENT_HUB__MIN_PASSWORD_LENGTH": "8"}
    assert cli(*args, stdin="eight ch", env=laxer).code == 0
    helped = cli("user", "add", "--help")
    assert "min_password_length" in " ".join(helped.out.split())
    assert "12" in helped.out


def test_user_list_and_remove(cli: Cli, state: Path) -> None:
    alice = add_user(cli, state, "alice")
    gate = add_user(cli, state, "gate-7", "--role", "device", "--groups", "porch,site-*")
    root = add_user(cli, state, "root", "--role", "admin")
    listing = cli("user", "list", "--state-dir", str(state))
    assert listing.code == 0
    rows = [line.split() for line in listing.out.splitlines()]
    assert rows == [
        ["NAME", "ROLE", "USER", "ID", "GROUPS"],
        ["alice", "user", alice, "-"],
        ["gate-7", "device", gate, "porch,site-*"],
        ["root", "admin", root, "*", "(admin)"],
    ]

    removed = cli("user", "remove", "gate-7", "--state-dir", str(state))
    assert removed.code == 0
    after = cli("user", "list", "--state-dir", str(state)).out
    assert "gate-7" not in after
    assert alice in after
    missing = cli("user", "remove", "gate-7", "--state-dir", str(state))
    assert missing.code == 1
    assert missing.err.strip() == (
        'edge-agent: No account named "gate-7" (see: edge-agent user list).'
    )


def test_user_grant_revoke_and_role(cli: Cli, state: Path) -> None:
    add_user(cli, state, "bob", "--groups", "friends")
    granted = cli("user", "grant", "bob", "family", "site-*", "--state-dir", str(state))
    assert (granted.code, granted.out.strip()) == (0, "bob: family, friends, site-*")
    revoked = cli("user", "revoke", "bob", "friends", "--state-dir", str(state))
    assert (revoked.code, revoked.out.strip()) == (0, "bob: family, site-*")
    not_held = cli("user", "revoke", "bob", "friends", "--state-dir", str(state))
    assert not_held.code == 1
    assert "holds no grant friends" in not_held.err
    bad = cli("user", "grant", "bob", "a*b", "--state-dir", str(state))
    assert bad.code == 1
    assert "* may only end" in bad.err
    bad_list = cli("user", "add", "x", "--groups", ",", "--state-dir", str(state))
    assert bad_list.code == 2
    assert "name at least one group" in bad_list.err
    role = cli("user", "role", "bob", "admin", "--state-dir", str(state))
    assert (role.code, role.out.strip()) == (0, "bob: admin")
    nobody = cli("user", "grant", "nobody", "x", "--state-dir", str(state))
    assert nobody.code == 1
    assert 'No account named "nobody"' in nobody.err


def test_user_password_sets_a_new_one_and_ends_old_tokens(cli: Cli, state: Path) -> None:
    from agent.hub.accounts import AccountStore

    add_user(cli, state, "alice")
    args = ("user", "password", "alice", "--password-stdin", "--state-dir", str(state))
    short = cli(*args, stdin="short\n")
    assert short.code == 1
    assert "at least 12 characters" in short.err
    changed = cli(*args, stdin="a much better password\n")
    assert changed.code == 0
    assert "earlier tokens revoked" in changed.out
    store = AccountStore(state / "accounts.db")
    try:
        assert store.verify_password("alice", "a much better password") is not None
        account = store.get_by_name("alice")
    finally:
        store.close()
    assert account is not None
    assert account.token_generation == 1
    nothing = cli("user", "password", "alice", "--state-dir", str(state))
    assert nothing.code == 1
    assert "--password-stdin" in nothing.err


def test_token_revoke_invalidates_earlier_tokens(cli: Cli, state: Path) -> None:
    from agent.hub.accounts import AccountStore
    from agent.hub.tokens import TokenIssuer

    add_user(cli, state, "alice")
    token = cli("token", "--user", "alice", "--state-dir", str(state)).out.strip()
    revoked = cli("token", "revoke", "--user", "alice", "--state-dir", str(state))
    assert revoked.code == 0
    assert "revoked every token of alice (generation 1)" in revoked.err
    store = AccountStore(state / "accounts.db")
    try:
        account = store.get_by_name("alice")
    finally:
        store.close()
    assert account is not None
    claims = TokenIssuer.from_state_dir(state).verify(token)
    assert claims.generation == 0 != account.token_generation
    fresh = cli("token", "--user", "alice", "--state-dir", str(state)).out.strip()
    assert TokenIssuer.from_state_dir(state).verify(fresh).generation == 1


def test_state_dir_comes_from_settings_then_xdg(cli: Cli, tmp_path: Path) -> None:
    configured = tmp_path / "from-settings"
    settings = tmp_path / "agent.toml"
    settings.write_text(f'state_dir = "{configured}"\n')
    assert cli("user", "add", "a", "--config", str(settings)).code == 0
    assert (configured / "accounts.db").exists()
    assert cli("user", "add", "b").code == 0
    assert (tmp_path / "xdg" / "edge-agent" / "accounts.db").exists()
    via_env = cli("user", "list", env={"EDGE_AGENT_STATE_DIR": str(configured)})
    assert [row.split()[0] for row in via_env.out.splitlines()] == ["NAME", "a"]
    default = cli("user", "list")
    assert [row.split()[0] for row in default.out.splitlines()] == ["NAME", "b"]


# -- token ----------------------------------------------------------------------------------


def test_token_prints_only_a_jwt_the_hub_accepts(cli: Cli, state: Path) -> None:
    user_id = add_user(cli, state, "alice")
    before = int(time.time())
    result = cli("token", "--user", "alice", "--ttl", "1h", "--state-dir", str(state))
    assert result.code == 0, result.err
    assert result.err == ""
    assert result.out.endswith("\n")
    assert result.out.count("\n") == 1
    token = result.out.strip()
    assert JWT_RE.match(token)
    claims = TokenIssuer.from_state_dir(state).verify(token)
    assert (claims.user_id, claims.name, claims.role) == (user_id, "alice", Role.USER)
    assert before + 3600 <= claims.expires_at <= int(time.time()) + 3600


def test_token_default_lifetime_is_thirty_days(cli: Cli, state: Path) -> None:
    add_user(cli, state, "alice")
    token = cli("token", "--user", "alice", "--state-dir", str(state)).out.strip()
    claims = TokenIssuer.from_state_dir(state).verify(token)
    assert claims.expires_at - time.time() > 29 * 86400


def test_token_for_an_unknown_user_fails(cli: Cli, state: Path) -> None:
    add_user(cli, state, "alice")
    result = cli("token", "--user", "ghost", "--state-dir", str(state))
    assert result.code == 1
    assert result.out == ""
    assert 'No account named "ghost"' in result.err


@pytest.mark.parametrize("ttl", ["soon", "0", "-5m"])
def test_token_refuses_a_bad_lifetime(cli: Cli, state: Path, ttl: str) -> None:
    result = cli("token", "--user", "alice", f"--ttl={ttl}", "--state-dir", str(state))
    assert result.code == 2
    assert result.out == ""
    assert "--ttl" in result.err


def test_secret_files_are_private(cli: Cli, state: Path) -> None:
    add_user(cli, state, "alice")
    assert cli("token", "--user", "alice", "--state-dir", str(state)).code == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "accounts.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "jwt-secret").stat().st_mode) == 0o600


def test_hub_accepts_a_token_minted_from_the_same_state_dir(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    add_user(cli, state, "alice")
    token = cli("token", "--user", "alice", "--state-dir", str(state)).out.strip()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    env.pop("JOURNAL_STREAM", None)
    command = [sys.executable, "-m", "agent.cli", "--log-level", "info", "hub"]
    hub = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        base_url = _wait_for_listening(hub)
        headers = {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(f"{base_url}/api/me", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            me = json.load(response)
        assert me["name"] == "alice"
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=30) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        assert hub.stderr is not None
        hub.stderr.close()


def _wait_for_listening(hub: subprocess.Popen[str]) -> str:
    """The hub's URL, from its start-up log line on stderr."""
    assert hub.stderr is not None
    seen = []
    for line in hub.stderr:
        seen.append(line)
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            return found.group(0)
    raise AssertionError("hub exited before listening:\n" + "".join(seen))


@pytest.mark.parametrize("command", ["run", "hub"])
def test_a_busy_address_is_one_line_naming_the_flag_and_setting(
    cli: Cli, state: Path, command: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(command, "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state))
    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        f"edge-agent: cannot listen on 127.0.0.1:{port}: the address is already in use; "
        "choose another port with --port (setting hub.port)\n"
    )


def test_run_listens_where_told_and_counts_a_rule_fired_once(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'name = "porch"\nstate_dir = "{state}"\n[metrics]\nenabled = false\n\n'
        '[[events]]\nname = "bell"\ntrigger = { type = "manual" }\nactions = [{ type = "post" }]\n'
    )
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    env.pop("JOURNAL_STREAM", None)
    command = [sys.executable, "-m", "agent.cli", "--log-level", "info", "run"]
    agent = subprocess.Popen(
        [*command, "--config", str(config), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert agent.stdout is not None
        found = re.search(r"viewer at http://127\.0\.0\.1:(\d+)/", agent.stdout.readline())
        assert found is not None
        assert int(found.group(1)) not in (0, 8080)  # --port 0: any free port, not hub.port
        _wait_for_log(agent, "control socket at")
        assert cli("status", "--config", str(config)).out.splitlines()[1:2] == [
            "event bell: not fired yet"
        ]
        assert cli("trigger", "bell", "--config", str(config)).code == 0
        assert "event bell: fired once" in cli("status", "--config", str(config)).out
        assert cli("trigger", "bell", "--config", str(config)).code == 0
        assert "event bell: fired 2 times" in cli("status", "--config", str(config)).out
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        for stream in (agent.stdout, agent.stderr):
            assert stream is not None
            stream.close()


def _wait_for_log(process: subprocess.Popen[str], text: str) -> None:
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} in the log:\n" + "".join(seen))


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_config_check_accepts_the_examples(cli: Cli, path: Path) -> None:
    result = cli("config", "check", str(path))
    assert (result.code, result.out, result.err) == (0, f"{path}: ok\n", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "porch"\n\n[hub]\nport = "eighty"\n', ":4, key 'hub.port': Input should be"),
        ("[hub]\nprot = 9000\n", ":2, key 'hub.prot': unknown setting 'prot' in [hub]"),
        ("[hub]\nport = 8080\nport = 8081\n", ":3, key 'hub.port': invalid TOML"),
    ],
)
def test_config_check_names_file_line_and_key(
    cli: Cli, tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = cli("config", "check", str(path))
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"edge-agent: {path}{expected}")


def test_config_check_of_a_missing_file(cli: Cli, tmp_path: Path) -> None:
    result = cli("config", "check", str(tmp_path / "nope.toml"))
    assert result.code == 2
    assert result.err.strip() == f"edge-agent: {tmp_path / 'nope.toml'}: settings file not found"


def test_config_show_redacts_secrets_and_applies_the_environment(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('name = "porch"\n[connect]\nurl = "ws://127.0.0.1:1/ws"\ntoken = "tok-FILE"\n')
    env = {"EDGE_AGENT_CONNECT__TOKEN": "tok-ENV", "EDGE_AGENT_HUB__PORT": "9001"}
    shown = cli("config", "show", "--config", str(path), env=env)
    assert shown.code == 0, shown.err
    as_json = cli("config", "show", "--json", "--config", str(path), env=env)
    for output in (shown.out, as_json.out):
        assert "tok-FILE" not in output
        assert "tok-ENV" not in output
    data = tomllib.loads(shown.out)
    assert data == without_none(json.loads(as_json.out))  # TOML has no null: unset is omitted
    assert data["connect"] == {"url": "ws://127.0.0.1:1/ws", "token": "********"}
    assert data["hub"]["port"] == 9001
    assert data["name"] == "porch"
    assert json.loads(as_json.out)["connect"]["token"] == "********"
    assert json.loads(as_json.out)["connect"]["token_file"] is None


def test_config_show_names_the_file_it_read(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('name = "porch"\n')
    given = cli("config", "show", "--config", str(path))
    assert given.out.splitlines()[0] == (
        f"# effective settings: file {path}, then the environment; secrets are redacted"
    )
    from_env = cli("config", "show", env={"EDGE_AGENT_CONFIG": str(path)})
    assert from_env.out.splitlines()[0] == (
        f"# effective settings: file {path} (from $EDGE_AGENT_CONFIG), then the environment; "
        "secrets are redacted"
    )
    assert 'name = "porch"' in from_env.out
    none = cli("config", "show")
    assert "no file (neither --config nor $EDGE_AGENT_CONFIG)" in none.out.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["config", "show"], 128 + signal.SIGPIPE),
        (["config", "show", "--json"], 128 + signal.SIGPIPE),
        (["user", "list"], 128 + signal.SIGPIPE),
        # argparse itself ignores a failed write of its help and version texts.
        (["--help"], 0),
        (["--version"], 0),
    ],
)
def test_a_reader_that_leaves_early_gets_no_traceback(
    args: list[str], code: int, tmp_path: Path
) -> None:
    # `edge-agent config show | head -1`, made certain: the reading end is closed before
    # the command writes, so its first write meets a broken pipe.
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (code, "")


def test_config_show_reports_bad_settings(cli: Cli) -> None:
    result = cli("config", "show", env={"EDGE_AGENT_HUB__PORT": "eighty"})
    assert result.code == 2
    assert "EDGE_AGENT_HUB__PORT" in result.err


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli().code == 2
    assert cli("user").code == 2
    for command in ("hub", "run"):
        bad_port = cli(command, "--port", "70000")
        assert bad_port.code == 2
        assert "not a port number" in bad_port.err
