"""Settings: one schema for the agent and the hub, from TOML, environment and flags.

Layers, lowest to highest precedence::

    defaults < TOML file < EDGE_AGENT_* environment < explicit overrides (CLI flags)

The file is ``path``, else ``$EDGE_AGENT_CONFIG``, else none. Environment variables nest
with ``__`` (``EDGE_AGENT_HUB__PORT=9000``). Unknown keys are refused so a typo cannot pass
silently, and every error is a ``ConfigError`` naming the layer (file and line, environment
variable, or override) and the dotted key. ``load_settings`` layers the sources itself
rather than through pydantic-settings' source chain, because it must know which layer a bad
value came from; ``Settings(...)`` built directly takes its arguments only.

Each component owns its tables and this module only composes them: ``[hub]`` in
:mod:`agent.hub.settings`, ``[calls]`` in :mod:`agent.rtc.settings`, ``[video]`` and
``[audio]`` in :mod:`agent.media.settings`, ``[push]``, ``[sensors]``/``[[serial]]`` and
``[[events]]`` in their packages' ``settings`` modules,
``[connect]`` in :mod:`agent.client.settings` and ``[metrics]`` in :mod:`agent.metrics`.
None of them imports this one; the field types they share are in :mod:`agent.setting_types`.
Defined here: the top-level keys (``name``, ``groups``, ``state_dir``, ``log_level``).
"""

from __future__ import annotations

import difflib
import enum
import json
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from agent.client.settings import ConnectSettings
from agent.durations import parse_duration
from agent.errors import ConfigError
from agent.events.settings import EventRule, check_rules
from agent.hub.settings import (
    EventRetention,
    HubEventSettings,
    HubLimits,
    HubLoginSettings,
    HubSettings,
    TurnSettings,
)
from agent.logs import MASK, redact_url
from agent.media.settings import AudioSettings, VideoSettings
from agent.metrics import MetricsSettings
from agent.protocol import Limits, is_user_id
from agent.push.settings import PushSettings
from agent.rtc.settings import CallsSettings
from agent.sensors.settings import SensorsSettings, SerialPortSettings, check_port_names
from agent.setting_types import (
    OptionalUserPath,
)

__all__ = [
    "ENV_CONFIG",
    "ENV_PREFIX",
    "REDACTED",
    "ConnectSettings",
    "EventRetention",
    "HubEventSettings",
    "HubLimits",
    "HubLoginSettings",
    "HubSettings",
    "MetricsSettings",
    "Settings",
    "TurnSettings",
    "check_settings_file",
    "load_settings",
    "parse_duration",
]

ENV_PREFIX: Final = "EDGE_AGENT_"
ENV_CONFIG: Final = "EDGE_AGENT_CONFIG"
REDACTED: Final = MASK  # agent.logs masks secrets in logs the same way
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# Account names as the hub accepts them (agent/hub/accounts.py): plain words people type.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_MAX_SHOWN_INPUT: Final = 80
# The wire protocol refuses longer group names; refuse them here, where the typo is.
_MAX_GROUP_CHARS: Final = Limits().max_group_chars


class Settings(BaseSettings):
    """Every setting of the agent and the hub; later issues add sections."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    name: str = Field(default_factory=socket.gethostname)
    groups: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["devices"])
    state_dir: OptionalUserPath = None
    log_level: str = "info"
    connect: ConnectSettings = Field(default_factory=ConnectSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    serial: list[SerialPortSettings] = Field(default_factory=list)
    sensors: SensorsSettings = Field(default_factory=lambda: SensorsSettings.model_validate({}))
    events: list[EventRule] = Field(default_factory=list)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    push: PushSettings = Field(default_factory=lambda: PushSettings.model_validate({}))
    calls: CallsSettings = Field(default_factory=lambda: CallsSettings.model_validate({}))
    video: VideoSettings = Field(default_factory=lambda: VideoSettings.model_validate({}))
    audio: AudioSettings = Field(default_factory=lambda: AudioSettings.model_validate({}))

    @model_validator(mode="after")
    def _rules_fit_ports(self) -> Settings:
        check_port_names(self.serial)
        check_rules(self.events, self.serial)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments only: ``load_settings`` layers file and environment itself."""
        return (init_settings,)

    @field_validator("name")
    @classmethod
    def _account_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid account name: use 1 to 64 letters, digits "
                "or . _ @ -, starting with a letter or digit"
            )
        if is_user_id(value):
            raise ValueError(f"{value!r} looks like a user id; a name must not")
        return value

    @field_validator("groups", mode="before")
    @classmethod
    def _groups_from_text(cls, value: object) -> object:
        # From the environment: a JSON list, or the friendlier "front-door,devices"; the
        # same friendly text in a file (groups = "home") is a list too, as documented.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: list[str]) -> list[str]:
        limit = _MAX_GROUP_CHARS
        for group in value:
            if not group or len(group) > limit:
                raise ValueError(f"group names have 1 to {limit} characters, got {group!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().lower()
        level = "warning" if level == "warn" else level
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        return level

    def redacted(self) -> dict[str, Any]:
        """The settings as plain JSON-able data, every secret shown as ``"********"``."""
        return _redact_model(self)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from the TOML file, the environment and ``overrides`` (highest first).

    Overrides nest with ``__`` or dicts (``hub__port=9000`` or ``hub={"port": 9000}``);
    ``None`` values are skipped, so unset CLI flags can be passed straight through.
    Raises ``ConfigError`` naming the file, key and line (or the environment variable).
    """
    file = _settings_path(path)
    layers = _Layers(file=file, env=_read_env(), overrides=_nest(overrides))
    if file is not None:
        layers.text, layers.file_data = _read_toml(file)
    return layers.validate()


def check_settings_file(path: Path | str) -> Settings:
    """Settings from ``path`` alone (no environment, no overrides): what ``config check`` says."""
    file = Path(path)
    layers = _Layers(file=file)
    layers.text, layers.file_data = _read_toml(file)
    return layers.validate()


# -- layers and error reports -------------------------------------------------------------


@dataclass
class _Layers:
    """The file, environment and override layers, and how to blame one for an error."""

    file: Path | None = None
    text: str = ""
    file_data: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> Settings:
        merged = _merge(_merge(self.file_data, self.env), self.overrides)
        private = [key for key in merged if key.startswith("_")]
        if private:
            # BaseSettings reads "_name" arguments as its own options; never as a setting.
            raise self._one({"type": "extra_forbidden", "loc": (private[0],), "msg": ""})
        try:
            return Settings(**merged)
        except ValidationError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: ValidationError) -> ConfigError:
        errors = [self._one(dict(err)) for err in exc.errors()]
        # Report in file order, so the first line named is the first to fix.
        errors.sort(key=lambda err: (err.line is None, err.line or 0))
        first, rest = errors[0], errors[1:]
        message = first.message + "".join(f"\n  also: {err}" for err in rest)
        return ConfigError(message, file=first.file, key=first.key, line=first.line)

    def _one(self, err: dict[str, Any]) -> ConfigError:
        loc = tuple(err["loc"])
        message = _describe(err, loc)
        key = _dotted(loc)
        if _has(self.overrides, loc):
            return ConfigError(f"{message} (given as an override)", key=key)
        env_name = self._env_name(loc)
        if env_name is not None:
            return ConfigError(f"{message} (from environment variable {env_name})", key=key)
        if self.file is None:
            return ConfigError(message, key=key)
        return ConfigError(message, file=self.file, key=key, line=_line_of(self.text, loc))

    def _env_name(self, loc: tuple[Any, ...]) -> str | None:
        if not _has(self.env, loc):
            return None
        present = {name.upper() for name in os.environ}
        for end in range(len(loc), 0, -1):
            name = ENV_PREFIX + "__".join(str(part) for part in loc[:end]).upper()
            if name in present:
                return name
        return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def _describe(err: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "this setting is required"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind == "path_type":
        message = "Input should be a path (a string)"
    shown = _shown_input(err.get("input"), loc)
    return message if shown is None else f"{message} (got {shown})"


def _unknown_key(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc[:-1])
    name = str(loc[-1])
    where = f"in [{_dotted(loc[:-1])}]" if len(loc) > 1 else "at the top level"
    if model is None:
        return f"unknown setting {name!r} {where}"
    known = list(model.model_fields)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return f"unknown setting {name!r} {where}{hint}"


def _shown_input(value: object, loc: tuple[Any, ...]) -> str | None:
    # Never echo a secret, and only short scalars help a reader.
    if not isinstance(value, str | int | float | bool) or _is_secret(loc):
        return None
    if isinstance(value, str) and "://" in value:
        value = redact_url(value)
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN_INPUT else None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Settings
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        model = None if info is None else _first_model(info.annotation)
    return model


def _is_secret(loc: tuple[Any, ...]) -> bool:
    parent = _model_at(loc[:-1]) if loc else None
    info = None if parent is None else parent.model_fields.get(str(loc[-1]))
    return info is not None and _mentions(info.annotation, (SecretStr, SecretBytes))


def _first_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in _walk_types(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _mentions(annotation: Any, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(t, type) and issubclass(t, kinds) for t in _walk_types(annotation))


def _walk_types(annotation: Any) -> Iterator[Any]:
    yield annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            yield from _walk_types(arg)


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# -- reading the layers -------------------------------------------------------------------


def _settings_path(path: Path | str | None) -> Path | None:
    if path is not None:
        return Path(path)
    from_env = os.environ.get(ENV_CONFIG, "").strip()
    return Path(from_env) if from_env else None


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("settings file not found", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("settings file is not UTF-8 text (TOML must be)", file=path) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read settings file: {exc.strerror}", file=path) from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, text, exc) from exc


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    # tomllib (3.11) reports the position only in its message: "... (at line 3, column 8)".
    message = str(exc)
    found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
    if found:
        line = int(found.group(1))
        message = message[: found.start()].rstrip() + f" (column {found.group(2)})"
    else:
        line = max(1, len(text.splitlines()))
        message = message.replace(" (at end of document)", " (at the end of the file)")
    key = next((_dotted(p) for p, n in _key_lines(text) if n == line), None)
    return ConfigError(f"invalid TOML: {message}", file=path, key=key, line=line)


def _read_env() -> dict[str, Any]:
    try:
        return dict(EnvSettingsSource(Settings)())
    except SettingsError as exc:
        raise ConfigError(f"bad {ENV_PREFIX}* environment variable: {exc}") from exc


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = name.split("__")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _merge(target.get(leaf, {}), value) if isinstance(value, dict) else value
    return nested


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def _has(data: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        in_table = isinstance(data, Mapping) and part in data
        in_array = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_table or in_array):
            return False
        data = data[part]
    return True


# -- finding a key's line in the TOML text -----------------------------------------------

_KEY_PART: Final = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY: Final = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_ARRAY_HEADER_RE: Final = re.compile(rf"^\s*\[\[\s*({_DOTTED_KEY})\s*\]\]")
_TABLE_HEADER_RE: Final = re.compile(rf"^\s*\[\s*({_DOTTED_KEY})\s*\]")
_KEY_VALUE_RE: Final = re.compile(rf"^\s*({_DOTTED_KEY})\s*=")


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line defining ``loc`` or the nearest enclosing table or key."""
    lines: dict[tuple[Any, ...], int] = {}
    for path, number in _key_lines(text):
        lines.setdefault(path, number)
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _key_lines(text: str) -> Iterator[tuple[tuple[Any, ...], int]]:
    """(key path, line number) for every table header and key in TOML ``text``."""
    table: tuple[Any, ...] = ()
    arrays: dict[tuple[str, ...], int] = {}
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            in_multiline = _toggles_multiline(line) != in_multiline
            continue
        if match := _ARRAY_HEADER_RE.match(line):
            parts = _key_parts(match.group(1))
            arrays[parts] = arrays.get(parts, -1) + 1
            table = _table_path(parts, arrays, last_is_array=True)
            yield table[:-1], number  # the array itself, where it first appears
            yield table, number
        elif match := _TABLE_HEADER_RE.match(line):
            table = _table_path(_key_parts(match.group(1)), arrays, last_is_array=False)
            yield table, number
        elif match := _KEY_VALUE_RE.match(line):
            yield table + _key_parts(match.group(1)), number
            in_multiline = _toggles_multiline(line)


def _toggles_multiline(line: str) -> bool:
    return (line.count('"""') + line.count("'''")) % 2 == 1


def _table_path(
    parts: tuple[str, ...], arrays: Mapping[tuple[str, ...], int], *, last_is_array: bool
) -> tuple[Any, ...]:
    # [a.b] after [[a]] is a table inside the latest element of array a.
    path: list[Any] = []
    for end in range(1, len(parts) + 1):
        path.append(parts[end - 1])
        is_last = end == len(parts)
        if parts[:end] in arrays and (last_is_array or not is_last):
            path.append(arrays[parts[:end]])
    return tuple(path)


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(_unquote(part) for part in parts)


def _unquote(part: str) -> str:
    if part.startswith('"'):
        return str(json.loads(part))
    return part[1:-1] if part.startswith("'") else part


# -- redaction ----------------------------------------------------------------------------


def _redact_model(model: BaseModel) -> dict[str, Any]:
    return {name: _redact_value(getattr(model, name)) for name in type(model).model_fields}


def _redact_value(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, BaseModel):
        return _redact_model(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _redact_value(item) for key, item in value.items()}
    return _redact_scalar(value)


def _redact_scalar(value: Any) -> Any:
    if isinstance(value, Path | enum.Enum):
        return str(value.value if isinstance(value, enum.Enum) else value)
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value
