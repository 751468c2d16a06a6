"""The viewer's routes: which devices the caller can call, and how calls connect.

    GET /api/devices        -> [{user_id, name, connection_ids: ["cid:..."], groups}]
    GET /api/viewer/config  -> {iceServers: [{urls, username?, credential?}], groups,
                                iceServersUrl, iceTransportPolicy}

A device is an online account with the ``device`` role that shares a group with one of the
caller's connections (the groups the viewer joined over ``/ws``). ``?group=NAME`` keeps
one of those groups only. The caller itself is never listed.

``/api/viewer/config`` tells the viewer which ICE servers to put in ``RTCPeerConnection``
(none by default: a call on the local network needs no STUN, and a public STUN fallback
costs seconds offline), where to fetch fresh ones with short-lived TURN credentials before
each call (``iceServersUrl``, :mod:`agent.hub.turn`), the transport policy to use, and
which groups to join to see devices.

Both routes take the app's own bearer-token dependency (passed in, so authentication lives
in one place and this module does not import the app).

This module does not use ``from __future__ import annotations``: FastAPI reads the route
signatures at definition time, and they name the injected dependency, a local variable.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, Protocol

from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Mount

from agent.hub.access import Access
from agent.hub.accounts import Account, AccountStore, Role
from agent.hub.backplane import Backplane, Member
from agent.protocol import CID_PREFIX


class DeviceServices(Protocol):
    """What these routes need of the hub (``agent.hub.app.HubServices`` has it)."""

    @property
    def backplane(self) -> Backplane:
        """Presence: who is connected, in which groups."""

    @property
    def accounts(self) -> AccountStore:
        """Names and roles of the connected accounts."""

    @property
    def ice(self) -> "IceServerOffer | None":
        """Where the viewer gets ICE servers, if the hub mints TURN credentials."""


class IceServerOffer(Protocol):
    """What the viewer's configuration says of the hub's ICE servers
    (:class:`agent.hub.turn.IceServerSource`)."""

    @property
    def path(self) -> str:
        """The route that answers the caller's ICE servers."""

    @property
    def policy(self) -> Literal["all", "relay"]:
        """The ICE transport policy callers should use."""


__all__ = [
    "DEFAULT_VIEWER_GROUPS",
    "DEVICES_PATH",
    "VIEWER_CONFIG_PATH",
    "DeviceItem",
    "IceServerItem",
    "ViewerConfig",
    "add_device_routes",
    "has_device_routes",
    "online_devices",
]

DEVICES_PATH: Final = "/api/devices"
VIEWER_CONFIG_PATH: Final = "/api/viewer/config"
DEFAULT_VIEWER_GROUPS: Final = ("devices",)  # the agent's default group (Settings.groups)
_TAGS: Final[list[str | Any]] = ["viewer"]


class DeviceItem(BaseModel):
    """An online device the caller may call, and where."""

    user_id: str
    name: str
    connection_ids: list[str] = Field(
        description="Its connections (``cid:...``), the targets of ``rtc`` frames."
    )
    groups: list[str] = Field(description="The caller's groups this device is in.")


class IceServerItem(BaseModel):
    """One ``RTCIceServer`` (W3C WebRTC section 4.2.4)."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class ViewerConfig(BaseModel):
    """What the viewer needs before it calls."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    ice_servers: list[IceServerItem] = Field(alias="iceServers")
    groups: list[str] = Field(description="Groups the viewer joins to see devices.")
    ice_servers_url: str | None = Field(
        None,
        alias="iceServersUrl",
        description="Where to get ICE servers with fresh TURN credentials before each call.",
    )
    ice_transport_policy: Literal["all", "relay"] = Field("all", alias="iceTransportPolicy")


@dataclass(frozen=True, slots=True)
class _Online:
    """A connected account found in some groups."""

    user_id: str
    name: str
    scids: tuple[str, ...]
    groups: tuple[str, ...]


def add_device_routes(
    app: FastAPI,
    services: DeviceServices,
    *,
    current_account: Callable[..., Awaitable[Account]],
    ice_servers: Sequence[IceServerItem] = (),
    groups: Sequence[str] = DEFAULT_VIEWER_GROUPS,
) -> None:
    """Add ``/api/devices`` and ``/api/viewer/config`` to ``app`` (once).

    ``current_account`` is the app's bearer-token dependency. The viewer's files are
    mounted at ``/``, and a mount matches every path, so the mount is moved behind the new
    routes.
    """
    if has_device_routes(app):
        return
    ice = services.ice
    config = ViewerConfig(
        iceServers=list(ice_servers),
        groups=list(groups),
        iceServersUrl=ice.path if ice is not None else None,
        iceTransportPolicy=ice.policy if ice is not None else "all",
    )

    @app.get(DEVICES_PATH, tags=_TAGS)
    async def devices(
        account: Annotated[Account, Depends(current_account)],
        group: Annotated[str | None, Query(max_length=128)] = None,
    ) -> list[DeviceItem]:
        """Online devices in the caller's groups (or in one of them)."""
        return await online_devices(services, account, only_group=group)

    @app.get(VIEWER_CONFIG_PATH, tags=_TAGS)
    async def viewer_config(
        account: Annotated[Account, Depends(current_account)],
    ) -> ViewerConfig:
        """ICE servers for calls and the groups to join."""
        return config

    _mounts_last(app)


def has_device_routes(app: FastAPI) -> bool:
    """Whether ``app`` already serves ``/api/devices``."""
    return any(getattr(route, "path", None) == DEVICES_PATH for route in app.router.routes)


async def online_devices(
    services: DeviceServices, caller: Account, *, only_group: str | None = None
) -> list[DeviceItem]:
    """The devices sharing a group with one of ``caller``'s connections, by name."""
    backplane = services.backplane
    # Only groups the caller is granted now (a revocation may not have reached every node).
    groups = Access.of(caller).visible_groups(await _groups_of_user(backplane, caller.user_id))
    if only_group is not None:
        groups = [g for g in groups if g == only_group]
    found = _collect(await _members_by_group(backplane, groups), exclude=caller.user_id)
    roles = await asyncio.to_thread(_roles_of, services, [o.user_id for o in found])
    devices = [
        DeviceItem(
            user_id=o.user_id,
            name=roles[o.user_id][0],
            connection_ids=[CID_PREFIX + scid for scid in o.scids],
            groups=list(o.groups),
        )
        for o in found
        if o.user_id in roles and roles[o.user_id][1] is Role.DEVICE
    ]
    return sorted(devices, key=lambda d: (d.name.lower(), d.user_id))


async def _groups_of_user(backplane: Backplane, user_id: str) -> list[str]:
    groups: dict[str, None] = {}  # ordered set: the order the connections joined them
    for scid in await backplane.user_connections(user_id):
        for group in await backplane.groups_of(scid):
            groups[group] = None
    return list(groups)


async def _members_by_group(
    backplane: Backplane, groups: Iterable[str]
) -> list[tuple[str, list[Member]]]:
    return [(group, await backplane.members(group)) for group in groups]


def _collect(by_group: Iterable[tuple[str, list[Member]]], *, exclude: str) -> list[_Online]:
    scids: dict[str, dict[str, None]] = {}
    groups: dict[str, dict[str, None]] = {}
    names: dict[str, str] = {}
    for group, members in by_group:
        for member in members:
            if member.user_id == exclude:
                continue
            scids.setdefault(member.user_id, {})[member.scid] = None
            groups.setdefault(member.user_id, {})[group] = None
            names.setdefault(member.user_id, member.name)
    return [
        _Online(user_id, names[user_id], tuple(scids[user_id]), tuple(groups[user_id]))
        for user_id in scids
    ]


def _roles_of(services: DeviceServices, user_ids: Iterable[str]) -> dict[str, tuple[str, Role]]:
    """Name and role of each account that still exists (sqlite: run in a thread)."""
    found: dict[str, tuple[str, Role]] = {}
    for user_id in user_ids:
        account = services.accounts.get_by_id(user_id)
        if account is not None:
            found[user_id] = (account.name, account.role)
    return found


def _mounts_last(app: FastAPI) -> None:
    routes = app.router.routes
    routes.sort(key=lambda route: isinstance(route, Mount))  # stable: keeps each side's order
