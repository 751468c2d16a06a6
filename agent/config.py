"""Settings: one schema for the agent and the hub, from TOML, environment and flags.

Layers, lowest to highest precedence::

    defaults < TOML file < EDGE_AGENT_* environment < explicit overrides (CLI flags)

The file is ``path``, else ``$EDGE_AGENT_CONFIG``, else none. Environment variables nest
with ``__`` (``EDGE_AGENT_HUB__PORT=9000``). Unknown keys are refused so a typo cannot pass
silently, and every error is a ``ConfigError`` naming the layer (file and line, environment
variable, or override) and the dotted key. ``load_settings`` layers the sources itself
rather than through pydantic-settings' source chain, because it must know which layer a bad
value came from; ``Settings(...)`` built directly takes its arguments only.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
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
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
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

from agent.durations import parse_duration
from agent.errors import ConfigError
from agent.events.settings import EventRule, check_rules
from agent.logs import MASK, redact_url
from agent.media.settings import AudioSettings, VideoSettings
from agent.protocol import Limits, is_user_id
from agent.push.settings import PushSettings
from agent.rtc.settings import CallsSettings, IceServerSettings, check_ice_url
from agent.sensors.settings import SensorsSettings, SerialPortSettings, check_port_names

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
_WS_SCHEMES: Final = ("ws", "wss", "http", "https")
_HTTP_SCHEMES: Final = ("http", "https")
_REDIS_SCHEMES: Final = ("redis", "rediss")
_MAX_SHOWN_INPUT: Final = 80
_MIN_TURN_SECRET: Final = 16
# The wire protocol refuses longer group names; refuse them here, where the typo is.
_MAX_GROUP_CHARS: Final = Limits().max_group_chars


def _blank_is_none(value: object) -> object:
    # An empty environment variable (systemd ``Environment=EDGE_AGENT_CONNECT__URL=``)
    # means "not set", not "the empty path" or "the empty URL".
    return None if isinstance(value, str) and not value.strip() else value


def _expand_user(path: Path) -> Path:
    return path.expanduser()


OptionalPath = Annotated[Path | None, BeforeValidator(_blank_is_none)]
UserPath = Annotated[Path, AfterValidator(_expand_user)]
OptionalUserPath = Annotated[UserPath | None, BeforeValidator(_blank_is_none)]
OptionalStr = Annotated[str | None, BeforeValidator(_blank_is_none)]


class _Section(BaseModel):
    """A settings table: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


class HubLimits(_Section):
    """Per-connection limits of the hub ([hub.limits])."""

    max_frame_bytes: int = Field(default=65536, gt=0)
    max_content_bytes: int = Field(default=32768, gt=0)
    max_json_depth: int = Field(default=32, ge=2, le=256)  # agent.protocol.MAX_JSON_DEPTH
    rate_burst: int = Field(default=100, gt=0)
    rate_per_second: float = Field(default=50.0, gt=0)
    max_errors: int = Field(default=20, gt=0)
    error_window_seconds: float = Field(default=5.0, gt=0)
    idle_timeout_seconds: float = Field(default=60.0, gt=0)
    max_connections_per_user: int = Field(default=30, gt=0)
    max_outbound_bytes: int = Field(default=1048576, gt=0)

    @model_validator(mode="after")
    def _content_fits_frame(self) -> HubLimits:
        if self.max_content_bytes > self.max_frame_bytes:
            raise ValueError(
                f"max_content_bytes ({self.max_content_bytes}) must not exceed "
                f"max_frame_bytes ({self.max_frame_bytes}): content travels inside a frame"
            )
        return self


class HubLoginSettings(_Section):
    """How many password checks the hub runs at once ([hub.login]).

    The password hash (scrypt) takes ~50 ms of a core and 16 MiB each; it runs on
    ``kdf_threads`` threads of its own with ``kdf_queue`` more logins waiting, and a login
    beyond that is refused at once (503) rather than queued.
    """

    kdf_threads: int = Field(default=1, ge=1, le=64)
    kdf_queue: int = Field(default=16, ge=0, le=10000)


class TurnSettings(_Section):
    """Short-lived TURN credentials for callers and devices ([hub.turn]).

    The TURN REST API scheme (draft-uberti-behave-turn-rest-00) that coturn checks with
    ``use-auth-secret``: the hub and the TURN server share ``secret`` (or the file
    ``secret_file`` holds it; the hub makes one, mode 0600, if it is missing), and every
    answer of ``GET /api/ice-servers`` carries a username and password good for ``ttl``.
    """

    urls: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = Field(
        min_length=1
    )
    secret: SecretStr | None = None
    secret_file: OptionalUserPath = None
    ttl: int = Field(default=3600, ge=60, le=7 * 86400)

    @field_validator("urls")
    @classmethod
    def _turn_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            check_ice_url(url)
            if not url.startswith("turn"):
                raise ValueError(
                    f"{url!r} is not a TURN URL: [hub.turn] urls are turn: or turns: "
                    "(STUN servers go in [[hub.ice_servers]])"
                )
        return value

    @field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < _MIN_TURN_SECRET:
            raise ValueError(f"a TURN secret needs at least {_MIN_TURN_SECRET} characters")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> TurnSettings:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("[hub.turn] needs secret or secret_file (one of them)")
        return self


class EventRetention(_Section):
    """How much of one group's event history the hub keeps ([hub.events.groups.NAME])."""

    max_events: int = Field(default=1000, ge=1, le=1_000_000)
    max_age: int = Field(default=30 * 86400, ge=60, le=10 * 365 * 86400)  # seconds; "30d"

    @field_validator("max_age", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value


class HubEventSettings(EventRetention):
    """The event history the hub keeps and how viewers refresh device pictures ([hub.events]).

    Every group keeps its newest ``max_events`` event posts for at most ``max_age``;
    ``[hub.events.groups.NAME]`` sets other bounds for one group. Viewers showing the
    device list refresh each device's picture every ``thumbnail_seconds`` (0: only the
    snapshots events take).
    """

    enabled: bool = True
    groups: dict[str, EventRetention] = Field(default_factory=dict)
    thumbnail_seconds: int = Field(default=60, ge=0, le=86400)

    @field_validator("thumbnail_seconds", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    def retention(self, group: str) -> EventRetention:
        """The bounds for ``group``: its own table's, the rest from ``[hub.events]``."""
        own = self.groups.get(group)
        values = {"max_events": self.max_events, "max_age": self.max_age}
        if own is not None:
            values |= {key: getattr(own, key) for key in own.model_fields_set}
        return EventRetention(**values)


class HubSettings(_Section):
    """Where the hub listens and how it is reached ([hub])."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    tls_cert: OptionalUserPath = None
    tls_key: OptionalUserPath = None
    public_url: OptionalStr = None
    limits: HubLimits = Field(default_factory=HubLimits)
    # What the viewer is told: groups to join to see devices, and STUN/TURN servers for
    # its calls (a phone outside the LAN needs TURN; none by default, never a public one).
    viewer_groups: list[str] = Field(default_factory=lambda: ["devices"], min_length=1)
    ice_servers: list[IceServerSettings] = Field(default_factory=list)
    # Short-lived TURN credentials minted per caller (GET /api/ice-servers); none by default.
    turn: TurnSettings | None = None
    # Passwords set from now on (user add, password changes) are at least this long.
    min_password_length: int = Field(default=12, ge=1, le=1024)
    # Reverse proxies whose X-Forwarded-For names the client (addresses or networks): login
    # throttling counts per client address, and behind a proxy every client would otherwise
    # share the proxy's. Loopback by default, for a proxy on the same machine.
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    login: HubLoginSettings = Field(default_factory=HubLoginSettings)
    # The event history behind the viewer's timeline (GET /api/events) and device tiles.
    events: HubEventSettings = Field(default_factory=HubEventSettings)
    # Where hub records live: "sqlite" (files in the state directory, one hub process) or a
    # postgresql:// URL that several hub nodes share. A password may sit in the URL or, better,
    # in database_password_file (both are secrets: redacted by `config show`, never logged).
    database: str = Field(default="sqlite", min_length=1)
    database_password_file: OptionalUserPath = None
    # How hub nodes share routing and presence: "memory" (one hub process) or a redis:// or
    # rediss:// URL of the Redis that every node of a cluster uses. A password may sit in the
    # URL or in backplane_password_file (secrets: redacted by `config show`, never logged).
    backplane: str = Field(default="memory", min_length=1)
    backplane_password_file: OptionalUserPath = None

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, _HTTP_SCHEMES)

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if value == "sqlite" or urlsplit(value).scheme in ("postgresql", "postgres"):
            return value
        raise ValueError(
            'must be "sqlite" or a postgresql:// URL (e.g. postgresql://hub@db.example:5432/edge)'
        )

    @field_validator("backplane")
    @classmethod
    def _backplane(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if value == "memory" or (parts.scheme.lower() in _REDIS_SCHEMES and parts.hostname):
            return value
        raise ValueError(
            f'{redact_url(value)!r} is not a backplane: use "memory" (one hub process) or '
            "redis://HOST[:PORT][/DB] or rediss://HOST[:PORT][/DB] (several hub nodes)"
        )

    @field_validator("trusted_proxies")
    @classmethod
    def _ip_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)"
                ) from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> HubSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"tls_cert and tls_key go together, and {missing} is not set")
        return self

    @model_validator(mode="after")
    def _backplane_password(self) -> HubSettings:
        if self.backplane_password_file is None:
            return self
        if self.backplane == "memory":
            raise ValueError(
                "backplane_password_file is for a Redis backplane; backplane is memory"
            )
        if urlsplit(self.backplane).password is not None:
            raise ValueError(
                "the backplane URL has a password and backplane_password_file is set: keep one"
            )
        return self

    @model_validator(mode="after")
    def _cluster_needs_shared_records(self) -> HubSettings:
        # A Redis backplane means several nodes. On SQLite each node would keep its own
        # accounts, and a starting SQLite hub releases every push-queue lease (it believes
        # it is alone), so two nodes could send one alert twice: refuse it at load time.
        if self.backplane != "memory" and self.database == "sqlite":
            raise ValueError(
                'hub.backplane is a Redis URL (several hub nodes) but hub.database is "sqlite" '
                "(one node's own files: accounts and the push queue would not be shared); "
                "set hub.database to the postgresql:// URL every node uses, or "
                'hub.backplane = "memory" for one hub process'
            )
        return self


class ConnectSettings(_Section):
    """The hub this agent connects to ([connect]); no ``url`` runs an embedded hub.

    ``url`` is one hub URL or a list of the URLs of several hub nodes (from the environment:
    the URLs separated by commas or spaces); the agent moves to the next when one fails.
    """

    url: Annotated[str | list[str] | None, BeforeValidator(_blank_is_none)] = None
    token: SecretStr | None = None
    token_file: OptionalUserPath = None

    @field_validator("url", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str) and len(found := value.replace(",", " ").split()) > 1:
            return found
        return value

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one hub URL (or none to run an embedded hub)")
            return [_check_url(url, _WS_SCHEMES) for url in value]
        return None if value is None else _check_url(value, _WS_SCHEMES)

    @property
    def urls(self) -> list[str]:
        """The hub URLs in the order to try them (empty: run an embedded hub)."""
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)


class MetricsSettings(_Section):
    """The agent's Prometheus endpoint ([metrics]): local by default."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


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


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ValueError(
            f"{redact_url(value)!r} is not a URL this setting accepts: use "
            + " or ".join(f"{scheme}://HOST[:PORT]/..." for scheme in schemes)
        )
    return value.strip()
