"""Settings of the hub: ``[hub]`` and its tables (limits, login, TURN, event history).

In TOML::

    [hub]
    host = "0.0.0.0"
    port = 8443
    tls_cert = "/etc/edge-hub/cert.pem"
    tls_key = "/etc/edge-hub/key.pem"
    public_url = "https://hub.example.net"
    viewer_groups = ["devices"]
    database = "sqlite"                  # or postgresql://... shared by several hub nodes
    backplane = "memory"                 # or redis://... / rediss://... for several nodes

    [hub.limits]
    max_frame_bytes = 65536

    [hub.turn]
    urls = ["turn:turn.example.net:3478?transport=udp"]
    secret_file = "/etc/edge-hub/turn-secret"

    [hub.events]
    max_events = 1000
    max_age = "30d"

The models only validate; :mod:`agent.config` composes them with the other components'
tables, and the hub reads them. Nothing here loads FastAPI or uvicorn.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from agent.durations import parse_duration
from agent.logs import redact_url
from agent.rtc.settings import IceServerSettings, check_ice_url
from agent.setting_types import HTTP_SCHEMES, OptionalStr, OptionalUserPath, Section, check_url

__all__ = [
    "EventRetention",
    "HubEventSettings",
    "HubLimits",
    "HubLoginSettings",
    "HubSettings",
    "TurnSettings",
]

_REDIS_SCHEMES: Final = ("redis", "rediss")
_MIN_TURN_SECRET: Final = 16


class HubLimits(Section):
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


class HubLoginSettings(Section):
    """How many password checks the hub runs at once ([hub.login]).

    The password hash (scrypt) takes ~50 ms of a core and 16 MiB each; it runs on
    ``kdf_threads`` threads of its own with ``kdf_queue`` more logins waiting, and a login
    beyond that is refused at once (503) rather than queued.
    """

    kdf_threads: int = Field(default=1, ge=1, le=64)
    kdf_queue: int = Field(default=16, ge=0, le=10000)


class TurnSettings(Section):
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


class EventRetention(Section):
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


class HubSettings(Section):
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
        return None if value is None else check_url(value, HTTP_SCHEMES)

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
