"""Field types that settings tables of several components share: paths, unset values, URLs.

Pure, and imported by each component's settings module (``agent.hub.settings``) and by
:mod:`agent.config`, which composes them, so that no component needs ``agent.config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from agent.logs import redact_url

__all__ = [
    "HTTP_SCHEMES",
    "WS_SCHEMES",
    "OptionalPath",
    "OptionalStr",
    "OptionalUserPath",
    "Section",
    "UserPath",
    "blank_is_none",
    "check_url",
]

WS_SCHEMES: Final = ("ws", "wss", "http", "https")
HTTP_SCHEMES: Final = ("http", "https")


def blank_is_none(value: object) -> object:
    """None for a blank string, else ``value``.

    An empty environment variable (systemd ``Environment=EDGE_AGENT_CONNECT__URL=``) means
    "not set", not "the empty path" or "the empty URL".
    """
    return None if isinstance(value, str) and not value.strip() else value


def _expand_user(path: Path) -> Path:
    return path.expanduser()


OptionalPath = Annotated[Path | None, BeforeValidator(blank_is_none)]
UserPath = Annotated[Path, AfterValidator(_expand_user)]
OptionalUserPath = Annotated[UserPath | None, BeforeValidator(blank_is_none)]
OptionalStr = Annotated[str | None, BeforeValidator(blank_is_none)]


class Section(BaseModel):
    """A settings table: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


def check_url(value: str, schemes: tuple[str, ...]) -> str:
    """``value`` stripped if it is a URL with a host and one of ``schemes``; else a
    ValueError naming it (its password masked) and the forms accepted."""
    parts = urlsplit(value.strip())
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ValueError(
            f"{redact_url(value)!r} is not a URL this setting accepts: use "
            + " or ".join(f"{scheme}://HOST[:PORT]/..." for scheme in schemes)
        )
    return value.strip()
