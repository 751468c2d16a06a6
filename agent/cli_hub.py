"""The hub's commands of ``edge-agent``: ``hub`` (run, migrate), ``user`` and ``token``.

``user`` and ``token`` work on the hub's records (accounts and secrets) where the settings
place them: the state directory, or the shared database of a cluster. ``token`` writes only
the JWT to stdout so that ``TOKEN=$(edge-agent token --user NAME)`` works.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sqlite3
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from agent.cli_options import (
    EXIT_OK,
    common_options,
    listen_options,
    load,
)
from agent.config import parse_duration
from agent.errors import AccountError
from agent.hub.accounts import Account, AccountStore, Role, check_new_password
from agent.statedir import resolve_state_dir

if TYPE_CHECKING:
    from agent.cli_options import Commands
    from agent.hub.records import HubRecords

__all__ = ["add_hub", "add_token", "add_user"]

_DEFAULT_TTL: Final = "30d"
# Far above any password a person types; keeps a stray pipe from being read whole.
_MAX_STDIN_PASSWORD: Final = 4096


# -- parser -------------------------------------------------------------------------------


def add_hub(commands: Commands) -> None:
    """``hub [migrate]``: run a hub, or bring its database up to date."""
    hub = commands.add_parser("hub", parents=common_options(), help="run a hub")
    listen_options(hub, "the hub")
    hub.add_argument(
        "action",
        nargs="?",
        choices=["migrate"],
        help="migrate: bring the database's tables up to date and exit (a starting hub "
        "does this too)",
    )
    hub.set_defaults(handler=_cmd_hub)


def add_user(commands: Commands) -> None:
    """``user add|list|remove|grant|revoke|password|role``: the hub's accounts."""
    user = commands.add_parser("user", parents=common_options(), help="manage the hub's accounts")
    actions = user.add_subparsers(title="actions", metavar="ACTION", required=True)
    _add_user_add(actions)
    listing = actions.add_parser("list", parents=common_options(), help="list accounts")
    listing.set_defaults(handler=_cmd_user_list)
    remove = actions.add_parser(
        "remove", parents=common_options(), help="delete an account (its connections close at once)"
    )
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=_cmd_user_remove)
    for verb, text in (
        ("grant", "let an account join, list and post to groups (names or prefix*)"),
        ("revoke", "take grants back (its connections leave those groups at once)"),
    ):
        change = actions.add_parser(verb, parents=common_options(), help=text)
        change.add_argument("name", metavar="NAME")
        change.add_argument("groups", nargs="+", metavar="GROUP")
        change.set_defaults(handler=_cmd_user_grants, verb=verb)
    _add_user_password(actions)
    role = actions.add_parser(
        "role",
        parents=common_options(),
        help="change an account's role (applies to the next frame)",
    )
    role.add_argument("name", metavar="NAME")
    role.add_argument("role", choices=[r.value for r in Role])
    role.set_defaults(handler=_cmd_user_role)


def add_token(commands: Commands) -> None:
    """``token [revoke] --user NAME``: print a new JWT, or revoke every earlier one."""
    token = commands.add_parser(
        "token",
        parents=common_options(),
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


def _add_user_add(actions: Commands) -> None:
    add = actions.add_parser(
        "add",
        parents=common_options(),
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


def _add_user_password(actions: Commands) -> None:
    password = actions.add_parser(
        "password",
        parents=common_options(),
        help="set a new password (every earlier token of the account stops working)",
    )
    password.add_argument("name", metavar="NAME")
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (one trailing newline is dropped)",
    )
    password.set_defaults(handler=_cmd_user_password)


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


def _cmd_hub(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        return _cmd_hub_migrate(args)
    settings = load(args, state_dir=args.state_dir, hub__host=args.host, hub__port=args.port)
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


# -- the hub's records --------------------------------------------------------------------


@contextlib.contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[AccountStore]:
    with _records(args) as records:
        yield records.accounts


@contextlib.contextmanager
def _records(args: argparse.Namespace) -> Iterator[HubRecords]:
    """The hub's records as the settings place them (state directory or database)."""
    from agent.hub.records import open_records

    settings = load(args, state_dir=args.state_dir)
    state_dir = resolve_state_dir(settings.state_dir)
    try:
        records = open_records(settings.hub, state_dir)
    except (OSError, sqlite3.Error) as exc:
        raise AccountError(f"cannot open the hub's records in {state_dir}: {exc}") from exc
    try:
        yield records
    finally:
        records.close()


# -- passwords ----------------------------------------------------------------------------


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
    return load(args).hub.min_password_length


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
