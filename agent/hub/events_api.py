"""The viewer's history routes: what happened, and how each device is doing.

    GET /api/events            -> {list: [event], startKey, endOfList}, newest first
    GET /api/devices/overview  -> {thumbnail_seconds, telemetry_seconds, devices: [tile]}
    GET /api/telemetry?device= -> {device, window_seconds, points: [{ts, readings, ports}]}

Who sees what follows the grants (:mod:`agent.hub.access`):

- ``/api/events`` lists only events posted to groups the caller is granted (admins: every
  group). Asking for one group (``?group=``) that is not granted is refused (403,
  FORBIDDEN naming the group); without ``group``, the events of other groups are left out
  and nothing says they exist. An event posted to several groups is listed once, with the
  caller's groups among them.
- ``/api/devices/overview`` has a tile for each device account that shares a granted group
  with the caller: online or not and since when (with its connection ids, to call it, and
  the caller's groups it is in), its last event and last snapshot in the caller's groups,
  and its latest telemetry sent to one of them.
- ``/api/telemetry`` is the last ten minutes of a device's telemetry sent to the caller's
  groups; a device the caller shares no group with is answered 404, as a missing one.

Paging is the hub's listing shape (the reference's DatabaseResponse): pass ``startKey``
of one page to get the next; ``endOfList`` says there is none.

This module does not use ``from __future__ import annotations``: FastAPI reads the route
signatures at definition time, and they name the injected dependency, a local variable.
"""

import asyncio
import datetime
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol

from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import Codes, RealtimeError
from agent.hub.access import Access
from agent.hub.accounts import Account, AccountStore, Role
from agent.hub.backplane import Backplane
from agent.hub.history import EventQuery, EventRecord, parse_cursor
from agent.hub.recorder import TELEMETRY_WINDOW, HistoryRecorder
from agent.protocol import CID_PREFIX


class HistoryServices(Protocol):
    """What these routes need of the hub (``agent.hub.app.HubServices`` has it)."""

    @property
    def events(self) -> "EventsService | None":
        """The history and its recorder, when the hub keeps one."""

    @property
    def accounts(self) -> AccountStore:
        """The accounts, for the devices a caller may see."""

    @property
    def backplane(self) -> Backplane:
        """Presence, for which devices are online."""


__all__ = [
    "EVENTS_PATH",
    "OVERVIEW_PATH",
    "TELEMETRY_PATH",
    "EventItem",
    "EventsPage",
    "EventsService",
    "Overview",
    "TelemetrySeries",
    "add_event_routes",
    "parse_time",
]

EVENTS_PATH: Final = "/api/events"
OVERVIEW_PATH: Final = "/api/devices/overview"
TELEMETRY_PATH: Final = "/api/telemetry"
_TAGS: Final[list[str | Any]] = ["history"]
_NAME_CHARS: Final = 64
_GROUP_CHARS: Final = 128


@dataclass(frozen=True, slots=True)
class EventsService:
    """What the history routes serve from."""

    recorder: HistoryRecorder
    thumbnail_seconds: int = 60  # how often viewers refresh a shown device's picture


class EventItem(BaseModel):
    """One event a device posted."""

    id: int
    device: str
    device_id: str
    name: str = Field(description="The rule that fired.")
    trigger: str
    time: float = Field(
        description="Unix time it happened (the hub's if the device's clock is off)."
    )
    at: str = Field(description="When, as the device wrote it (ISO 8601 with its offset).")
    received: float = Field(description="Unix time the hub got it.")
    groups: list[str]
    snapshot: str | None = Field(None, description="Link to its picture (/api/snapshots/ID).")
    call: bool
    details: dict[str, Any]
    readings: dict[str, Any]


class EventsPage(BaseModel):
    """A page of events, newest first."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    items: list[EventItem] = Field(alias="list")
    start_key: str | None = Field(alias="startKey", description="Pass to get the next page.")
    end_of_list: bool = Field(alias="endOfList")


class TelemetryPointItem(BaseModel):
    """One telemetry post: every port's latest reading, and the ports' state."""

    ts: float
    readings: dict[str, Any]
    ports: dict[str, Any]


class SnapshotItem(BaseModel):
    """The newest picture an event took."""

    url: str
    time: float
    event: str


class DeviceTile(BaseModel):
    """What the viewer shows of one device."""

    user_id: str
    name: str
    online: bool
    since: float | None = Field(description="Unix time it came or went; null if not known.")
    connection_ids: list[str] = Field(description="Its connections (``cid:...``), to call.")
    groups: list[str] = Field(description="The caller's groups it is in now.")
    last_event: EventItem | None
    snapshot: SnapshotItem | None
    telemetry: TelemetryPointItem | None


class Overview(BaseModel):
    """Every device the caller shares a group with."""

    thumbnail_seconds: int = Field(
        description="How often a viewer showing a device refreshes its picture (0: never)."
    )
    telemetry_seconds: float = Field(description="How far back /api/telemetry goes.")
    devices: list[DeviceTile]


class TelemetrySeries(BaseModel):
    """A device's recent telemetry, oldest first."""

    device: str
    window_seconds: float
    points: list[TelemetryPointItem]


def add_event_routes(
    app: FastAPI,
    services: HistoryServices,
    *,
    current_account: Callable[..., Awaitable[Account]],
) -> None:
    """Add the history routes to ``app`` when the hub keeps a history (``services.events``)."""
    events: EventsService | None = services.events
    if events is None:
        return
    recorder = events.recorder
    authed = Annotated[Account, Depends(current_account)]

    @app.get(
        EVENTS_PATH,
        tags=_TAGS,
        responses={403: {"description": "The group asked for is not granted to the caller."}},
    )
    async def list_events(
        *,
        account: authed,
        device: Annotated[str | None, Query(max_length=_NAME_CHARS)] = None,
        group: Annotated[str | None, Query(max_length=_GROUP_CHARS)] = None,
        since: Annotated[
            str | None, Query(max_length=40, description="Unix time or ISO 8601.")
        ] = None,
        until: Annotated[
            str | None, Query(max_length=40, description="Unix time or ISO 8601.")
        ] = None,
        start_key: Annotated[str | None, Query(alias="startKey", max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> EventsPage:
        """Events of the caller's groups, newest first; filter by device, group and time."""
        groups = await _event_groups(recorder, Access.of(account), group)
        query = EventQuery(
            groups=groups,
            device=device,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            before=_cursor(start_key),
            limit=limit,
        )
        page = await recorder.page(query)
        return EventsPage(
            list=[_item(record) for record in page.items],
            startKey=page.next_cursor,
            endOfList=page.next_cursor is None,
        )

    @app.get(OVERVIEW_PATH, tags=_TAGS)
    async def overview(account: authed) -> Overview:
        """A tile for every device the caller shares a group with."""
        access = Access.of(account)
        devices = await _visible_devices(services, access)
        groups = await _event_groups(recorder, access, None)
        tiles = [await _tile(services, recorder, access, groups, d) for d in devices]
        return Overview(
            thumbnail_seconds=events.thumbnail_seconds,
            telemetry_seconds=TELEMETRY_WINDOW,
            devices=tiles,
        )

    @app.get(
        TELEMETRY_PATH,
        tags=_TAGS,
        responses={404: {"description": "No device of this name shares a group with the caller."}},
    )
    async def telemetry(
        account: authed, device: Annotated[str, Query(min_length=1, max_length=_NAME_CHARS)]
    ) -> TelemetrySeries:
        """The device's telemetry of the last ten minutes, oldest first."""
        access = Access.of(account)
        found = next(
            (d for d in await _visible_devices(services, access) if d.name == device), None
        )
        if found is None:
            raise RealtimeError(Codes.NOT_FOUND, f'No device "{device}" shares a group with you.')
        points = recorder.telemetry.points(found.user_id, recorder.now(), access.may_use)
        return TelemetrySeries(
            device=device,
            window_seconds=TELEMETRY_WINDOW,
            points=[TelemetryPointItem(**p.as_json()) for p in points],
        )


def parse_time(text: str | None, name: str) -> float | None:
    """Unix seconds from a number or an ISO 8601 time (UTC if it names no offset).

    Raises:
        RealtimeError: INVALID_PARAMETER naming ``name`` when ``text`` is neither.
    """
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise RealtimeError(
                Codes.INVALID_PARAMETER,
                f'"{name}" must be a Unix time or an ISO 8601 time, not {text[:40]!r}.',
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()
    if not math.isfinite(value):
        raise RealtimeError(Codes.INVALID_PARAMETER, f'"{name}" must be a finite number.')
    return value


async def _event_groups(
    recorder: HistoryRecorder, access: Access, group: str | None
) -> tuple[str, ...] | None:
    """The groups whose events the caller may list (``None``: all, for an admin)."""
    if group is not None:
        if not access.may_use(group):
            raise RealtimeError(
                Codes.FORBIDDEN, f'Group "{group}" is not granted to "{access.name}".'
            )
        return (group,)
    if access.is_admin:
        return None
    return tuple(access.visible_groups(await recorder.groups()))


def _cursor(start_key: str | None) -> tuple[float, int] | None:
    if start_key is None:
        return None
    try:
        return parse_cursor(start_key)
    except ValueError as exc:
        raise RealtimeError(Codes.INVALID_PARAMETER, f'"startKey": {exc}.') from None


async def _visible_devices(services: HistoryServices, access: Access) -> list[Account]:
    accounts = await asyncio.to_thread(services.accounts.list)
    return [
        a
        for a in accounts
        if a.role is Role.DEVICE
        and (a.user_id == access.user_id or access.shares_group_with(Access.of(a)))
    ]


async def _tile(
    services: HistoryServices,
    recorder: HistoryRecorder,
    access: Access,
    groups: tuple[str, ...] | None,
    device: Account,
) -> DeviceTile:
    backplane = services.backplane
    scids = await backplane.user_connections(device.user_id)
    online = bool(scids)
    joined: dict[str, None] = {}  # ordered set
    for scid in scids:
        joined.update(dict.fromkeys(await backplane.groups_of(scid)))
    presence = recorder.presence(device.user_id)
    since = presence.since if presence is not None and presence.online == online else None
    last, pictured = await asyncio.to_thread(_latest, recorder, groups, device.name)
    points = recorder.telemetry.points(device.user_id, recorder.now(), access.may_use)
    return DeviceTile(
        user_id=device.user_id,
        name=device.name,
        online=online,
        since=since,
        connection_ids=[CID_PREFIX + scid for scid in scids],
        groups=access.visible_groups(joined),
        last_event=_item(last) if last is not None else None,
        snapshot=(
            SnapshotItem(url=pictured.snapshot, time=pictured.time, event=pictured.name)
            if pictured is not None and pictured.snapshot is not None
            else None
        ),
        telemetry=TelemetryPointItem(**points[-1].as_json()) if points else None,
    )


def _latest(
    recorder: HistoryRecorder, groups: tuple[str, ...] | None, device: str
) -> tuple[EventRecord | None, EventRecord | None]:
    """The device's newest event, and its newest with a picture (in a thread: SQL)."""
    found: Sequence[EventRecord | None] = [
        next(
            iter(
                recorder.store.page(
                    EventQuery(groups, device=device, limit=1, with_snapshot=s)
                ).items
            ),
            None,
        )
        for s in (False, True)
    ]
    return found[0], found[1]


def _item(record: EventRecord) -> EventItem:
    return EventItem(**record.as_json())
