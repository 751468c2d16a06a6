"""Camera snapshots that alerts link to: devices upload a JPEG, people fetch it by id.

Push payloads stay small (RFC 8030 services take about 4 KB), so an alert carries only the
link. They are kept in the hub's database (``snapshots.db`` in the state directory, mode
0600, or the database the hub nodes share, so that a link works on every node), bounded in
size and number, the oldest removed first. Each file records the account that
uploaded it; a snapshot is shown only to that account, admins, and accounts that share a
granted group with it (the people its alerts are for), the same rule as messages.

This module does not use ``from __future__ import annotations``: FastAPI reads the route
signatures at definition time, and they name the injected dependency, a local variable.
"""

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from agent.database import Database, Migration, Schema, SqliteDatabase, Tx, migrate
from agent.errors import Codes, RealtimeError
from agent.hub.access import Access, AccessTable
from agent.hub.accounts import Account, Role

__all__ = [
    "SNAPSHOTS_PATH",
    "SNAPSHOTS_SCHEMA",
    "SnapshotStore",
    "StoredSnapshot",
    "add_snapshot_routes",
]

SNAPSHOTS_PATH: Final = "/api/snapshots"
MAX_BYTES: Final = 1024 * 1024
MAX_FILES: Final = 500
_ID_RE: Final = re.compile(r"^[0-9a-f]{32}$")
_JPEG_START: Final = b"\xff\xd8"
_JPEG_CONTENT: Final = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}


class StoredSnapshot(BaseModel):
    """Where an uploaded snapshot can be fetched."""

    id: str
    url: str


SNAPSHOTS_SCHEMA: Final = Schema(
    "snapshots",
    (
        Migration(
            1,
            "snapshots",
            (
                """CREATE TABLE IF NOT EXISTS snapshots (
                    id TEXT PRIMARY KEY,
                    owner TEXT NOT NULL,
                    created_at {real} NOT NULL,
                    jpeg {blob} NOT NULL
                )""",
                "CREATE INDEX IF NOT EXISTS snapshots_age ON snapshots (created_at)",
            ),
        ),
    ),
)


class SnapshotStore:
    """JPEGs in a database (a path: a private SQLite file); synchronous (callers use
    ``asyncio.to_thread``)."""

    def __init__(self, database: Database | Path, *, max_files: int = MAX_FILES) -> None:
        self._database = SqliteDatabase(database) if isinstance(database, Path) else database
        self._owns_database = isinstance(database, Path)  # else the caller closes it
        self._max_files = max_files
        migrate(self._database, SNAPSHOTS_SCHEMA, now=time.time())

    def put(self, jpeg: bytes, *, owner: str) -> str:
        """Store ``jpeg`` uploaded by user id ``owner``; its new id.

        ``RealtimeError`` for anything but a JPEG in bounds.
        """
        if not jpeg.startswith(_JPEG_START):
            raise RealtimeError(Codes.INVALID_PARAMETER, "A snapshot must be a JPEG image.")
        if len(jpeg) > MAX_BYTES:
            raise RealtimeError(
                Codes.INVALID_PARAMETER,
                f"The snapshot is {len(jpeg)} bytes; the limit is {MAX_BYTES}.",
            )
        snapshot_id = secrets.token_hex(16)
        with self._database.transaction() as db:
            db.execute(
                "INSERT INTO snapshots (id, owner, created_at, jpeg) VALUES (?, ?, ?, ?)",
                (snapshot_id, owner, time.time(), jpeg),
            )
            self._prune(db)
        return snapshot_id

    def get(self, snapshot_id: str) -> tuple[bytes, str]:
        """The JPEG stored as ``snapshot_id`` and its owner; ``RealtimeError`` NOT_FOUND."""
        row = None
        if _ID_RE.match(snapshot_id):
            with self._database.read() as db:
                row = db.execute(
                    "SELECT jpeg, owner FROM snapshots WHERE id = ?", (snapshot_id,)
                ).fetchone()
        if row is None:
            raise RealtimeError(Codes.NOT_FOUND, f'No snapshot "{snapshot_id}".')
        return bytes(row[0]), str(row[1])

    def close(self) -> None:
        """Close the database, if this store opened it."""
        if self._owns_database:
            self._database.close()

    def _prune(self, db: Tx) -> None:
        count = int(db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0])
        if count > self._max_files:
            old = db.execute(
                "SELECT id FROM snapshots ORDER BY created_at, id LIMIT ?",
                (count - self._max_files,),
            ).fetchall()
            db.executemany("DELETE FROM snapshots WHERE id = ?", [(row[0],) for row in old])


def add_snapshot_routes(
    app: FastAPI,
    store: SnapshotStore,
    access: AccessTable,
    *,
    current_account: Callable[..., Awaitable[Account]],
) -> None:
    """``POST /api/snapshots`` (devices and admins) and ``GET /api/snapshots/ID``."""
    authed = Annotated[Account, Depends(current_account)]

    @app.post(
        SNAPSHOTS_PATH,
        tags=["alerts"],
        status_code=201,
        openapi_extra={"requestBody": {"required": True, "content": _JPEG_CONTENT}},
    )
    async def upload(request: Request, account: authed) -> StoredSnapshot:
        """Store a JPEG (the raw request body) and answer where to fetch it."""
        if account.role is Role.USER:
            raise RealtimeError(Codes.FORBIDDEN, "Only devices and admins upload snapshots.")
        body = await _bounded_body(request)
        snapshot_id = await asyncio.to_thread(store.put, body, owner=account.user_id)
        return StoredSnapshot(id=snapshot_id, url=f"{SNAPSHOTS_PATH}/{snapshot_id}")

    @app.get(
        SNAPSHOTS_PATH + "/{snapshot_id}",
        tags=["alerts"],
        response_class=Response,
        responses={200: {"content": _JPEG_CONTENT}},
    )
    async def fetch(snapshot_id: str, account: authed) -> Response:
        """The JPEG stored as ``snapshot_id``."""
        jpeg, owner = await asyncio.to_thread(store.get, snapshot_id)
        uploader = await access.lookup(owner)
        if owner != account.user_id and (
            uploader is None or not Access.of(account).shares_group_with(uploader)
        ):
            # The same answer as a missing one: ids cannot be probed.
            raise RealtimeError(Codes.NOT_FOUND, f'No snapshot "{snapshot_id}".')
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private"})


async def _bounded_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BYTES:
            raise RealtimeError(
                Codes.INVALID_PARAMETER, f"The snapshot is over the limit of {MAX_BYTES} bytes."
            )
        chunks.append(chunk)
    return b"".join(chunks)
