"""Settings of calls: ``[calls]`` (who may call, ICE servers and policy).

In TOML::

    [calls]
    max_calls = 4
    allow_roles = ["admin", "user"]      # any of these rules lets a caller in
    allow_users = ["alice"]              # account names or user ids
    allow_groups = ["family"]            # callers connected in one of these groups
    host_interfaces = ["eth0"]           # host candidates only here (default: everywhere)
    host_addresses = ["192.168.1.20"]
    ice_transport_policy = "relay"       # only relayed candidates (default "all")
    preload = true                       # load the media stack at start (default: on first need)

    [[calls.ice_servers]]
    urls = ["turn:turn.example.net:3478?transport=udp"]
    username = "doorbell"
    credential = "..."                   # a secret: redacted in `config show`

The models only validate; ``ice_options`` and ``call_policy`` map them onto the records
the calls take (and load those modules only when called, so reading settings stays light).
The camera and microphone tables, ``[video]`` and ``[audio]``, belong to the media
engine: :mod:`agent.media.settings`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Annotated, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from agent.rtc.ice import IceOptions
    from agent.rtc.policy import CallPolicy

__all__ = [
    "CallsSettings",
    "IceServerSettings",
    "call_policy",
    "check_ice_url",
    "ice_options",
]

# RFC 7064 / RFC 7065 URIs: stun[s]:host[:port], turn[s]:host[:port][?transport=udp|tcp].
_ICE_URL_RE: Final = re.compile(
    r"^(stuns?):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$"
    r"|^(turns?):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?(\?transport=(udp|tcp))?$"
)
_INTERFACE_RE: Final = re.compile(r"^[A-Za-z0-9_.:@-]{1,32}$")


RoleName = Literal["admin", "user", "device"]


def _people() -> list[RoleName]:
    return ["admin", "user"]


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_ice_url(url: str) -> str:
    """``url`` if it is a STUN or TURN URL (RFC 7064, RFC 7065); ValueError naming it if not."""
    if not _ICE_URL_RE.match(url):
        raise ValueError(
            f"{url!r} is not a STUN or TURN URL: use stun:HOST[:PORT] or "
            "turn:HOST[:PORT][?transport=udp|tcp] (turns: and stuns: for TLS)"
        )
    return url


class IceServerSettings(_Model):
    """A STUN or TURN server ([[calls.ice_servers]])."""

    urls: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(min_length=1)
    username: str | None = None
    credential: SecretStr | None = None

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, value: list[str]) -> list[str]:
        return [check_ice_url(url) for url in value]

    @model_validator(mode="after")
    def _turn_credentials(self) -> IceServerSettings:
        turn = any(url.startswith("turn") for url in self.urls)
        if turn and (self.username is None or self.credential is None):
            raise ValueError("a TURN server needs username and credential")
        return self


class CallsSettings(_Model):
    """Who may call, how many at once, and how calls connect ([calls])."""

    enabled: bool = True
    max_calls: int = Field(4, ge=1, le=64)
    allow_users: list[str] = Field(default_factory=list)
    allow_groups: list[str] = Field(default_factory=list)
    allow_roles: list[RoleName] = Field(default_factory=_people)
    ice_servers: list[IceServerSettings] = Field(default_factory=list)
    # "relay": offer relayed candidates only (W3C iceTransportPolicy), for sites that must
    # not show callers their addresses; a hub with this setting tells its viewers too.
    ice_transport_policy: Literal["all", "relay"] = "all"
    host_interfaces: list[str] = Field(default_factory=list)
    host_addresses: list[str] = Field(default_factory=list)
    ipv6: bool = True
    # Resolve browsers' mDNS (.local) candidates ourselves; this long at most per name.
    mdns: bool = True
    mdns_timeout: float = Field(1.0, gt=0, le=10)
    ring_timeout: float = Field(60.0, gt=0, le=3600)
    # aiortc, PyAV and the camera pipeline load when a call, a snapshot or a motion rule
    # first needs them (an idle agent stays small); true loads them at start instead, for a
    # device whose very first call must be answered fastest.
    preload: bool = False

    @field_validator("host_interfaces")
    @classmethod
    def _interface_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _INTERFACE_RE.match(name):
                raise ValueError(f"{name!r} is not an interface name")
        return value

    @field_validator("host_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return value


# -- mapping onto the engines' records ---------------------------------------------------


def ice_options(calls: CallsSettings) -> IceOptions:
    """The ICE policy of calls."""
    from agent.rtc.ice import IceOptions, IceServer

    servers = tuple(
        IceServer(
            tuple(s.urls),
            s.username,
            s.credential.get_secret_value() if s.credential is not None else None,
        )
        for s in calls.ice_servers
    )
    return IceOptions(
        servers=servers,
        interfaces=tuple(calls.host_interfaces),
        addresses=tuple(calls.host_addresses),
        ipv6=calls.ipv6,
        mdns=calls.mdns,
        mdns_timeout=calls.mdns_timeout,
        transport_policy=calls.ice_transport_policy,
    )


def call_policy(calls: CallsSettings) -> CallPolicy:
    """Who may call."""
    from agent.rtc.policy import CallPolicy

    return CallPolicy.of(
        users=calls.allow_users,
        groups=calls.allow_groups,
        roles=calls.allow_roles,
        max_calls=calls.max_calls,
    )
