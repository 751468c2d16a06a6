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
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agent import __version__
from agent.cli_hub import add_hub, add_token, add_user
from agent.cli_options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    common_options,
    configure_logging,
    listen_options,
    load,
    state_dir,
)
from agent.config import ENV_CONFIG, LOG_LEVELS, check_settings_file
from agent.errors import ConfigError, EdgeAgentError

if TYPE_CHECKING:
    from agent.cli_options import Commands

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

_EXIT_INTERRUPTED: Final = 130
_EXIT_STDOUT_CLOSED: Final = 128 + signal.SIGPIPE
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
    add_hub(commands)
    add_user(commands)
    add_token(commands)
    _add_config(commands)
    _add_agent_control(commands)
    return parser


# -- parser -------------------------------------------------------------------------------


def _add_run(commands: Commands) -> None:
    run = commands.add_parser(
        "run", parents=common_options(), help="run the agent (an embedded hub without connect.url)"
    )
    listen_options(run, "the embedded hub (and viewer)")
    run.set_defaults(handler=_cmd_run)


def _add_config(commands: Commands) -> None:
    config = commands.add_parser("config", help="check or show settings")
    actions = config.add_subparsers(title="actions", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        parents=common_options(config=False, state_dir=False),
        help="validate a settings file on its own (the environment is not applied)",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(handler=_cmd_config_check)
    show = actions.add_parser(
        "show",
        parents=common_options(state_dir=False),
        help="print the effective settings (file, environment, defaults), secrets redacted",
    )
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    show.set_defaults(handler=_cmd_config_show)


def _add_agent_control(commands: Commands) -> None:
    trigger = commands.add_parser(
        "trigger",
        parents=common_options(),
        help="fire a manual event rule in the running agent",
        description="Fire a manual event rule in the running agent. It answers 'fired' only "
        "once the event's alerts and group posts are committed to the agent's outbox on disk "
        "(an SQLite commit with synchronous=FULL, fsync'd): from then on a crash, a power "
        "cut, or a hub or network outage loses none of them.",
    )
    trigger.add_argument("name", metavar="NAME", help="the rule's name in [[events]]")
    trigger.set_defaults(handler=_cmd_trigger)
    status = commands.add_parser(
        "status", parents=common_options(), help="tell how the running agent is doing, in words"
    )
    status.add_argument("--json", action="store_true", help="the raw answer, as JSON")
    status.set_defaults(handler=_cmd_status)


# -- commands -----------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {"state_dir": args.state_dir, "hub__host": args.host, "hub__port": args.port}
    settings = load(args, **overrides)
    from agent.daemon import run_agent  # lazy: the daemon pulls in media and rtc

    # A reload (SIGHUP) applies the same command-line settings again.
    return run_agent(settings, config_path=args.config, overrides=overrides)


def _cmd_config_check(args: argparse.Namespace) -> int:
    if args.log_level is not None:
        configure_logging(args.log_level)
    check_settings_file(args.file)
    print(f"{args.file}: ok")
    return EXIT_OK


def _cmd_config_show(args: argparse.Namespace) -> int:
    settings = load(args)
    data = settings.redacted()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"# effective settings: {_settings_source(args)}; secrets are redacted")
    print("\n".join(_toml_lines(data)))
    return EXIT_OK


def _cmd_trigger(args: argparse.Namespace) -> int:
    from agent.events.control import control_socket_path, send_trigger

    answer = send_trigger(control_socket_path(state_dir(args)), args.name)
    print(answer.get("message") or f"{args.name}: {answer.get('outcome')}")
    return EXIT_OK if answer.get("outcome") == "fired" else EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    from agent.events.control import control_socket_path, request

    answer = request(control_socket_path(state_dir(args)), {"op": "status"})
    if answer.get("ok") is not True:
        raise EdgeAgentError(str(answer.get("error", "the agent refused the request")))
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
        return EXIT_OK
    for line in answer.get("lines", []):
        print(line)
    return EXIT_OK


# -- shared steps -------------------------------------------------------------------------


def _settings_source(args: argparse.Namespace) -> str:
    """Where the settings came from, in words; the file as load_settings picks it."""
    if args.config is not None:
        return f"file {args.config}, then the environment"
    from_env = os.environ.get(ENV_CONFIG, "").strip()
    if from_env:
        return f"file {from_env} (from ${ENV_CONFIG}), then the environment"
    return f"no file (neither --config nor ${ENV_CONFIG}), the environment and defaults"


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
