"""What every ``edge-agent`` command shares: exit codes, common options, loading settings.

Both command modules (:mod:`agent.cli` and :mod:`agent.cli_hub`) build on this one, so the
options read the same everywhere and neither module imports the other.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from agent.config import LOG_LEVELS, Settings, load_settings
from agent.statedir import resolve_state_dir

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "common_options",
    "configure_logging",
    "listen_options",
    "load",
    "port",
    "state_dir",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def common_options(*, config: bool = True, state_dir: bool = True) -> list[argparse.ArgumentParser]:
    """The parent parser of a command: ``--log-level``, and ``--config``/``--state-dir``."""
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


def listen_options(parser: argparse.ArgumentParser, whose: str) -> None:
    """Add ``--host`` and ``--port``: where ``whose`` listens (overriding hub.host/hub.port)."""
    parser.add_argument("--host", help=f"address {whose} listens on (hub.host)")
    parser.add_argument("--port", type=port, help=f"port {whose} listens on, 0: any (hub.port)")


def port(text: str) -> int:
    """A TCP port from 0 to 65535, for argparse."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return number


def load(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings ``args`` name (with ``overrides``); logging configured from them."""
    settings = load_settings(args.config, **overrides)
    configure_logging(args.log_level or settings.log_level)
    return settings


def state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else the ``state_dir`` setting, else the platform default."""
    settings = load(args, state_dir=args.state_dir)
    return resolve_state_dir(settings.state_dir)


def configure_logging(level: str) -> None:
    """Log at ``level`` to stderr, through :mod:`agent.logs` where it is installed."""
    if importlib.util.find_spec("agent.logs") is None:
        logging.basicConfig(level=level.upper(), stream=sys.stderr)
        return
    from agent.logs import configure_logging as configure  # lazy: optional module

    configure(level)
