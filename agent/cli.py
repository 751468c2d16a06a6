"""The ``edge-agent`` command: run | hub | user | token | config.

Exit codes: 0 done; 1 the operation failed (unknown account, duplicate name, bad token,
an address the hub cannot listen on); 2 bad usage or bad settings (argparse's own code for
usage errors, and every ConfigError); 141 standard output closed early (``config show |
head -1``), quietly, as a Unix tool ends on SIGPIPE. Errors are one line on stderr, never a
traceback. ``token`` writes only the JWT to stdout so that ``TOKEN=$(edge-agent token
--user NAME)`` works.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib.util
import json
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from agent import __version__
from agent.config import (
    ENV_CONFIG,
    LOG_LEVELS,
    Settings,
    check_settings_file,
    load_settings,
    parse_duration,
)
from agent.errors import AccountError, ConfigError, EdgeAgentError
from agent.hub.accounts import Account, AccountStore, Role, check_new_password
from agent.statedir import resolve_state_dir

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
_EXIT_INTERRUPTED: Final = 130
_EXIT_STDOUT_CLOSED: Final = 128 + signal.SIGPIPE
_DEFAULT_TTL: Final = "30d"
# Far above any password a person types; keeps a stray pipe from being read whole.
_MAX_STDIN_PASSWORD: Final = 4096
_BARE_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        try:
            return _dispatch(build_parser().parse_args(argv))
        finally:
            sys.stdout.flush()  # a reader that left shows here, not as an error at exit
    except BrokenPipeError:
        return _stdout_closed()


def _dispatch(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        return _fail(exc, EXIT_USAGE)
    except EdgeAgentError as exc:
        return _fail(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``edge-agent`` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Device agent for cameras and sensors, with a self-hostable realtime hub.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="overrides log_level")
    parser.set_defaults(log_level=None, config=None, state_dir=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_run(commands)
    _add_hub(commands)
    _add_user(commands)
    _add_token(commands)
    _add_config(commands)
    _add_agent_control(commands)
    return parser


# -- parser -------------------------------------------------------------------------------

if TYPE_CHECKING:
    from agent.hub.records import HubRecords

    _Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _options(*, config: bool = True, state_dir: bool = True) -> list[argparse.ArgumentParser]:
    # SUPPRESS keeps a value given before the subcommand from being reset by the default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
    if config:
        common.add_argument(
            "--config",
            type=Path,
            default=argparse.SUPPRESS,
            metavar="FILE",
            help="settings file (default: $EDGE_AGENT_CONFIG)",
        )
    if state_dir:
        common.add_argument(
            "--state-dir",
            type=Path,
            default=argparse.SUPPRESS,
            metavar="DIR",
            help="accounts and secrets (default: state_dir setting, $STATE_DIRECTORY, "
            "$XDG_STATE_HOME/edge-agent or ~/.local/state/edge-agent)",
        )
    return [common]


def _listen_options(parser: argparse.ArgumentParser, whose: str) -> None:
    parser.add_argument("--host", help=f"address {whose} listens on (hub.host)")
    parser.add_argument("--port", type=_port, help=f"port {whose} listens on, 0: any (hub.port)")


def _add_run(commands: _Commands) -> None:
    run = commands.add_parser(
        "run", parents=_options(), help="run the agent (an embedded hub without connect.url)"
    )
    _listen_options(run, "the embedded hub (and viewer)")
    run.set_defaults(handler=_cmd_run)


def _add_hub(commands: _Commands) -> None:
    hub = commands.add_parser("hub", parents=_options(), help="run a hub")
    _listen_options(hub, "the hub")
    hub.add_argument(
        "action",
        nargs="?",
        choices=["migrate"],
        help="migrate: bring the database's tables up to date and exit (a starting hub "
        "does this too)",
    )
    hub.set_defaults(handler=_cmd_hub)


def _add_user(commands: _Commands) -> None:
    user = commands.add_parser("user", parents=_options(), help="manage the hub's accounts")
    actions = user.add_subparsers(title="actions", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        parents=_options(),
        help="create an account",
        description="Create an account. Its password must be at least [hub] "
        "min_password_length characters long (12 unless set otherwise); without one, "
        "the account logs in with tokens only.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", choices=[role.value for role in Role], default=Role.USER.value)
    add.add_argument(
        "--groups",
        type=_group_list,
        default=(),
        metavar="G1,G2",
        help="groups it may join, list and post to: names or prefixes ending in * "
        "(admins hold every group)",
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (one trailing newline is dropped); "
        "at least [hub] min_password_length characters (default 12)",
    )
    add.set_defaults(handler=_cmd_user_add)
    listing = actions.add_parser("list", parents=_options(), help="list accounts")
    listing.set_defaults(handler=_cmd_user_list)
    remove = actions.add_parser(
        "remove", parents=_options(), help="delete an account (its connections close at once)"
    )
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=_cmd_user_remove)
    for verb, text in (
        ("grant", "let an account join, list and post to groups (names or prefix*)"),
        ("revoke", "take grants back (its connections leave those groups at once)"),
    ):
        change = actions.add_parser(verb, parents=_options(), help=text)
        change.add_argument("name", metavar="NAME")
        change.add_argument("groups", nargs="+", metavar="GROUP")
        change.set_defaults(handler=_cmd_user_grants, verb=verb)
    password = actions.add_parser(
        "password",
        parents=_options(),
        help="set a new password (every earlier token of the account stops working)",
    )
    password.add_argument("name", metavar="NAME")
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (one trailing newline is dropped)",
    )
    password.set_defaults(handler=_cmd_user_password)
    role = actions.add_parser(
        "role", parents=_options(), help="change an account's role (applies to the next frame)"
    )
    role.add_argument("name", metavar="NAME")
    role.add_argument("role", choices=[r.value for r in Role])
    role.set_defaults(handler=_cmd_user_role)


def _add_token(commands: _Commands) -> None:
    token = commands.add_parser(
        "token",
        parents=_options(),
        help="print a new access token (JWT) for an account, or revoke its tokens",
        description="Print a new token for --user. `token revoke --user NAME` instead makes "
        "every token issued to NAME so far invalid, on HTTP and on open connections.",
    )
    token.add_argument("action", nargs="?", choices=["revoke"], help="revoke instead of issuing")
    token.add_argument("--user", required=True, metavar="NAME", help="account name")
    token.add_argument(
        "--ttl",
        type=_ttl,
        default=_ttl(_DEFAULT_TTL),
        metavar="DURATION",
        help=f"lifetime: 3600, 90s, 15m, 12h, 30d (default {_DEFAULT_TTL})",
    )
    token.set_defaults(handler=_cmd_token)


def _add_config(commands: _Commands) -> None:
    config = commands.add_parser("config", help="check or show settings")
    actions = config.add_subparsers(title="actions", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        parents=_options(config=False, state_dir=False),
        help="validate a settings file on its own (the environment is not applied)",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(handler=_cmd_config_check)
    show = actions.add_parser(
        "show",
        parents=_options(state_dir=False),
        help="print the effective settings (file, environment, defaults), secrets redacted",
    )
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    show.set_defaults(handler=_cmd_config_show)


def _add_agent_control(commands: _Commands) -> None:
    trigger = commands.add_parser(
        "trigger",
        parents=_options(),
        help="fire a manual event rule in the running agent",
        description="Fire a manual event rule in the running agent. It answers 'fired' only "
        "once the event's alerts and group posts are committed to the agent's outbox on disk "
        "(an SQLite commit with synchronous=FULL, fsync'd): from then on a crash, a power "
        "cut, or a hub or network outage loses none of them.",
    )
    trigger.add_argument("name", metavar="NAME", help="the rule's name in [[events]]")
    trigger.set_defaults(handler=_cmd_trigger)
    status = commands.add_parser(
        "status", parents=_options(), help="tell how the running agent is doing, in words"
    )
    status.add_argument("--json", action="store_true", help="the raw answer, as JSON")
    status.set_defaults(handler=_cmd_status)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def _group_list(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    if not groups:
        raise argparse.ArgumentTypeError(f"{text!r}: name at least one group")
    return groups


def _ttl(text: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a token lifetime must be positive")
    return seconds


# -- commands -----------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {"state_dir": args.state_dir, "hub__host": args.host, "hub__port": args.port}
    settings = _load(args, **overrides)
    from agent.daemon import run_agent  # lazy: the daemon pulls in media and rtc

    # A reload (SIGHUP) applies the same command-line settings again.
    return run_agent(settings, config_path=args.config, overrides=overrides)


def _cmd_hub(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        return _cmd_hub_migrate(args)
    settings = _load(args, state_dir=args.state_dir, hub__host=args.host, hub__port=args.port)
    # Resolved here, by the same rule as `user` and `token`, so all three share one directory.
    settings = settings.model_copy(update={"state_dir": resolve_state_dir(settings.state_dir)})
    from agent.hub.server import run_hub  # lazy: the server pulls in the ASGI stack

    return run_hub(settings)


def _cmd_hub_migrate(args: argparse.Namespace) -> int:
    from agent.hub.records import HUB_SCHEMAS

    with _records(args) as records:  # opening them migrates the accounts (and a database)
        records.migrate()
        where = records.where
    names = ", ".join(schema.domain for schema in HUB_SCHEMAS)
    print(f"{where}: up to date ({names})")
    return EXIT_OK


def _cmd_user_add(args: argparse.Namespace) -> int:
    password = _new_password(args)
    with _accounts(args) as store:
        account = store.add(
            args.name,
            password,
            Role(args.role),
            groups=args.groups,
            min_password_length=_min_password_length(args),
        )
    if password is None:
        print(
            f"edge-agent: {args.name} has no password and logs in with tokens only", file=sys.stderr
        )
    print(account.user_id)
    return EXIT_OK


def _cmd_user_list(args: argparse.Namespace) -> int:
    with _accounts(args) as store:
        accounts = store.list()
    rows = [("NAME", "ROLE", "USER ID", "GROUPS")]
    rows += [(a.name, a.role.value, a.user_id, _grants_text(a)) for a in accounts]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for *cells, groups in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + "  " + groups)
    return EXIT_OK


def _grants_text(account: Account) -> str:
    if account.role is Role.ADMIN:
        return "* (admin)"
    return ",".join(account.grants) or "-"


def _cmd_user_grants(args: argparse.Namespace) -> int:
    with _accounts(args) as store:
        change = store.grant if args.verb == "grant" else store.revoke
        grants = change(args.name, args.groups)
    print(f"{args.name}: {', '.join(grants) or 'no groups'}")
    return EXIT_OK


def _cmd_user_password(args: argparse.Namespace) -> int:
    password = _new_password(args)
    if password is None:
        raise AccountError("Give the new password with --password-stdin or at a terminal.")
    with _accounts(args) as store:
        store.set_password(args.name, password, min_password_length=_min_password_length(args))
    print(f"{args.name}: new password set; earlier tokens revoked")
    return EXIT_OK


def _cmd_user_role(args: argparse.Namespace) -> int:
    with _accounts(args) as store:
        store.set_role(args.name, Role(args.role))
    print(f"{args.name}: {args.role}")
    return EXIT_OK


def _cmd_user_remove(args: argparse.Namespace) -> int:
    with _accounts(args) as store:
        store.remove(args.name)
    print(f"removed {args.name}")
    return EXIT_OK


def _cmd_token(args: argparse.Namespace) -> int:
    from agent.hub.tokens import TokenIssuer  # lazy: only this command needs jwt

    with _records(args) as records:
        if args.action == "revoke":
            generation = records.accounts.revoke_tokens(args.user)
            print(f"revoked every token of {args.user} (generation {generation})", file=sys.stderr)
            return EXIT_OK
        account = records.accounts.get_by_name(args.user)
        if account is None:
            raise AccountError(f'No account named "{args.user}" (see: edge-agent user list).')
        token = TokenIssuer.from_secrets(records.secrets).issue(account, args.ttl)
    sys.stdout.write(token + "\n")
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    if args.log_level is not None:
        _configure_logging(args.log_level)
    check_settings_file(args.file)
    print(f"{args.file}: ok")
    return EXIT_OK


def _cmd_config_show(args: argparse.Namespace) -> int:
    settings = _load(args)
    data = settings.redacted()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"# effective settings: {_settings_source(args)}; secrets are redacted")
    print("\n".join(_toml_lines(data)))
    return EXIT_OK


def _cmd_trigger(args: argparse.Namespace) -> int:
    from agent.events.control import control_socket_path, send_trigger

    answer = send_trigger(control_socket_path(_state_dir(args)), args.name)
    print(answer.get("message") or f"{args.name}: {answer.get('outcome')}")
    return EXIT_OK if answer.get("outcome") == "fired" else EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    from agent.events.control import control_socket_path, request

    answer = request(control_socket_path(_state_dir(args)), {"op": "status"})
    if answer.get("ok") is not True:
        raise EdgeAgentError(str(answer.get("error", "the agent refused the request")))
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
        return EXIT_OK
    for line in answer.get("lines", []):
        print(line)
    return EXIT_OK


# -- shared steps -------------------------------------------------------------------------


def _load(args: argparse.Namespace, **overrides: Any) -> Settings:
    settings = load_settings(args.config, **overrides)
    _configure_logging(args.log_level or settings.log_level)
    return settings


def _settings_source(args: argparse.Namespace) -> str:
    """Where the settings came from, in words; the file as load_settings picks it."""
    if args.config is not None:
        return f"file {args.config}, then the environment"
    from_env = os.environ.get(ENV_CONFIG, "").strip()
    if from_env:
        return f"file {from_env} (from ${ENV_CONFIG}), then the environment"
    return f"no file (neither --config nor ${ENV_CONFIG}), the environment and defaults"


def _state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else the ``state_dir`` setting, else the platform default."""
    settings = _load(args, state_dir=args.state_dir)
    return resolve_state_dir(settings.state_dir)


@contextlib.contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[AccountStore]:
    with _records(args) as records:
        yield records.accounts


@contextlib.contextmanager
def _records(args: argparse.Namespace) -> Iterator[HubRecords]:
    """The hub's records as the settings place them (state directory or database)."""
    from agent.hub.records import open_records

    settings = _load(args, state_dir=args.state_dir)
    state_dir = resolve_state_dir(settings.state_dir)
    try:
        records = open_records(settings.hub, state_dir)
    except (OSError, sqlite3.Error) as exc:
        raise AccountError(f"cannot open the hub's records in {state_dir}: {exc}") from exc
    try:
        yield records
    finally:
        records.close()


def _new_password(args: argparse.Namespace) -> str | None:
    """The new account's password (``None``: tokens only); ``AccountError`` naming the
    length rule when it is too short, before anything is written."""
    minimum = _min_password_length(args)
    password: str | None
    if args.password_stdin:
        password = _password_from_stdin()
    elif sys.stdin.isatty():
        password = _password_from_prompt(args.name, minimum)
    else:
        # No terminal to ask on: a device account that will only ever use tokens.
        return None
    if password is not None:
        check_new_password(password, minimum)
    return password


def _min_password_length(args: argparse.Namespace) -> int:
    return _load(args).hub.min_password_length


def _password_from_stdin() -> str:
    data = sys.stdin.read(_MAX_STDIN_PASSWORD + 2)
    if len(data) > _MAX_STDIN_PASSWORD:
        raise AccountError(f"--password-stdin: more than {_MAX_STDIN_PASSWORD} characters")
    data = data.removesuffix("\r\n") if data.endswith("\r\n") else data.removesuffix("\n")
    if not data:
        raise AccountError("--password-stdin: standard input held no password")
    return data


def _password_from_prompt(name: str, minimum: int) -> str | None:
    try:
        first = getpass.getpass(
            f"Password for {name} (at least {minimum} characters, empty for none): "
        )
        if not first:
            return None
        again = getpass.getpass("Repeat the password: ")
    except EOFError:
        raise AccountError("no password entered") from None
    if first != again:
        raise AccountError("The passwords do not match.")
    return first


def _configure_logging(level: str) -> None:
    if importlib.util.find_spec("agent.logs") is None:
        logging.basicConfig(level=level.upper(), stream=sys.stderr)
        return
    from agent.logs import configure_logging  # lazy: optional module

    configure_logging(level)


def _fail(exc: EdgeAgentError, code: int) -> int:
    print(f"edge-agent: {exc}", file=sys.stderr)
    return code


def _stdout_closed() -> int:
    # Python ignores SIGPIPE (sockets get EPIPE instead), so a closed pipe is an error on
    # the next write; stdout goes to /dev/null so the flush at exit cannot fail again.
    # (Python's signal module documentation, "Note on SIGPIPE".)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return _EXIT_STDOUT_CLOSED


# -- config show as TOML ------------------------------------------------------------------


def _toml_lines(data: Mapping[str, Any], table: tuple[str, ...] = ()) -> list[str]:
    """``data`` (plain JSON-able values) as TOML; unset values become comments."""
    lines: list[str] = []
    for key, value in data.items():
        if value is None:
            lines.append(f"# {_toml_key(key)} is not set")
        elif not _is_table(value) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in data.items():
        path = (*table, _toml_key(key))
        if _is_table(value):
            lines += ["", f"[{'.'.join(path)}]", *_toml_lines(value, path)]
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{'.'.join(path)}]]", *_toml_lines(item, path)]
    return lines


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value if item is not None) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(pairs) + " }"
    # JSON string escapes (\" \\ \n \uXXXX) are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


if __name__ == "__main__":
    raise SystemExit(main())
