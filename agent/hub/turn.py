"""ICE servers for calls, with short-lived TURN credentials: ``GET /api/ice-servers``.

Phones on mobile data and devices on LTE sit behind NATs that only a relay crosses. A
long-lived relay password handed to every browser would let anyone who opens the viewer's
page relay anything, for ever; instead the hub mints a credential per request with the
TURN REST API scheme (draft-uberti-behave-turn-rest-00 section 2), which coturn checks
itself with ``use-auth-secret`` / ``static-auth-secret``:

* ``username = "<expiry unix time>:<user id>"``
* ``credential = base64(HMAC-SHA1(shared secret, username))``

The TURN server needs no account database and no call to the hub: it recomputes the
HMAC, and refuses the username once its time has passed. The answer::

    GET /api/ice-servers  (any signed-in account)
    -> {"iceServers": [{"urls": [...], "username": ..., "credential": ...}, ...],
        "ttl": 3600, "iceTransportPolicy": "all" | "relay"}

lists the static servers of ``[[hub.ice_servers]]`` (STUN, or TURN with a fixed password)
and, with ``[hub.turn]``, the TURN URLs with fresh credentials; ``ttl`` is how long those
stay good (clients ask again for every call, or reuse an answer for half of it).
``iceTransportPolicy`` is the hub's ``[calls] ice_transport_policy``: ``relay`` asks
viewers never to show the device their own addresses.

This module does not use ``from __future__ import annotations``: FastAPI reads the route
signature at definition time, and it names the injected dependency, a local variable.
"""

import base64
import hashlib
import hmac
import logging
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ConfigError
from agent.hub.accounts import Account
from agent.hub.devices_api import IceServerItem
from agent.statedir import read_or_create_secret

if TYPE_CHECKING:
    from agent.config import Settings, TurnSettings

__all__ = [
    "ICE_SERVERS_PATH",
    "IceServerSource",
    "IceServersAnswer",
    "TurnCredential",
    "add_ice_routes",
    "ice_server_source",
    "load_turn_secret",
    "mint_credential",
]

log = logging.getLogger(__name__)

ICE_SERVERS_PATH: Final = "/api/ice-servers"
DEFAULT_TTL: Final = 3600
_TAGS: Final[list[str | Any]] = ["viewer"]
# Credentials must not be kept by a browser cache or a proxy (RFC 9111 section 5.2.2.5).
_NO_STORE: Final = {"Cache-Control": "no-store"}

Policy = Literal["all", "relay"]


@dataclass(frozen=True, slots=True)
class TurnCredential:
    """A TURN username and password good until ``expires_at`` (unix time)."""

    username: str
    credential: str
    expires_at: int

    def __repr__(self) -> str:
        return f"<TurnCredential {self.username} credential=********>"


def mint_credential(secret: bytes, user_id: str, *, now: float, ttl: int) -> TurnCredential:
    """The TURN REST API credential of ``user_id`` for ``ttl`` seconds from ``now``.

    draft-uberti-behave-turn-rest-00 section 2.2: the username is the expiry time and the
    user id joined by a colon; the password is the base64 HMAC-SHA1 of the username keyed
    with the secret shared with the TURN server.
    """
    expires_at = int(now) + ttl
    username = f"{expires_at}:{user_id}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires_at)


class IceServersAnswer(BaseModel):
    """The ICE servers of one call, for ``RTCPeerConnection``'s configuration."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    ice_servers: list[IceServerItem] = Field(alias="iceServers")
    ttl: int = Field(description="Seconds the TURN credentials stay good.")
    ice_transport_policy: Policy = Field(
        "all",
        alias="iceTransportPolicy",
        description='"relay": use relayed candidates only (W3C RTCIceTransportPolicy).',
    )


class IceServerSource:
    """What ``/api/ice-servers`` answers: static servers, and TURN with fresh credentials."""

    path: Final = ICE_SERVERS_PATH

    def __init__(
        self,
        *,
        static: Sequence[IceServerItem] = (),
        turn_urls: Sequence[str] = (),
        secret: bytes | None = None,
        ttl: int = DEFAULT_TTL,
        relay_only: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if turn_urls and not secret:
            raise ValueError("TURN URLs need the secret shared with the TURN server")
        self.static = tuple(static)
        self.turn_urls = tuple(turn_urls)
        self._secret = secret
        self.ttl = ttl
        self.policy: Policy = "relay" if relay_only else "all"
        self._clock = clock

    def __repr__(self) -> str:
        return f"<IceServerSource turn={list(self.turn_urls)} static={len(self.static)}>"

    def answer(self, user_id: str) -> IceServersAnswer:
        """The servers for a call of ``user_id``, TURN credentials minted now."""
        servers = list(self.static)
        if self.turn_urls and self._secret is not None:
            minted = mint_credential(self._secret, user_id, now=self._clock(), ttl=self.ttl)
            servers.insert(
                0,
                IceServerItem(
                    urls=list(self.turn_urls),
                    username=minted.username,
                    credential=minted.credential,
                ),
            )
        return IceServersAnswer(iceServers=servers, ttl=self.ttl, iceTransportPolicy=self.policy)


def add_ice_routes(
    app: FastAPI,
    source: IceServerSource,
    *,
    current_account: Callable[..., Awaitable[Account]],
) -> None:
    """Add ``GET /api/ice-servers`` (``current_account``: the app's bearer dependency)."""

    @app.get(ICE_SERVERS_PATH, tags=_TAGS, response_model=IceServersAnswer)
    async def ice_servers(
        account: Annotated[Account, Depends(current_account)],
    ) -> JSONResponse:
        """STUN and TURN servers for a call; TURN credentials minted for this account."""
        answer = source.answer(account.user_id)
        return JSONResponse(answer.model_dump(mode="json"), headers=_NO_STORE)

    # The viewer's files are mounted at "/", and a mount matches every path: keep it last.
    app.router.routes.sort(key=lambda route: type(route).__name__ == "Mount")


def ice_server_source(settings: "Settings", static: Sequence[IceServerItem]) -> IceServerSource:
    """The source for the hub's settings: ``[hub.turn]``, ``static`` servers and the
    ``[calls] ice_transport_policy``.

    Raises:
        ConfigError: naming ``hub.turn.secret_file`` when it cannot be read or made.
    """
    turn = settings.hub.turn
    relay_only = settings.calls.ice_transport_policy == "relay"
    if turn is None:
        return IceServerSource(static=static, relay_only=relay_only)
    return IceServerSource(
        static=static,
        turn_urls=turn.urls,
        secret=load_turn_secret(turn),
        ttl=turn.ttl,
        relay_only=relay_only,
    )


def load_turn_secret(turn: "TurnSettings") -> bytes:
    """The shared secret: ``secret``, or the text of ``secret_file`` (made, 0600, if absent).

    Raises:
        ConfigError: naming ``hub.turn.secret_file`` when it cannot be read or made.
    """
    if turn.secret is not None:
        return turn.secret.get_secret_value().encode()
    path = turn.secret_file
    if path is None:
        raise ConfigError("[hub.turn] needs secret or secret_file", key="hub.turn")
    existed = path.exists()
    try:
        text = read_or_create_secret(path, lambda: secrets.token_hex(32).encode() + b"\n")
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the TURN secret file {path}: {exc.strerror}",
            key="hub.turn.secret_file",
        ) from exc
    if not existed:
        log.info(
            "made a TURN secret in %s: give the TURN server the same (coturn: static-auth-secret)",
            path,
        )
    elif mode & 0o077:
        log.warning("the TURN secret file %s is readable by others (mode %o)", path, mode)
    secret = text.strip()
    if len(secret) < 16:
        raise ConfigError(
            f"the TURN secret in {path} is shorter than 16 characters", key="hub.turn.secret_file"
        )
    return secret
