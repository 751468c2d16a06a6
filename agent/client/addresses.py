"""The hub addresses a client tries: URL checks, the HTTP base, the order of candidates.

Pure except :func:`candidates`, which asks the resolver. The token travels in the
``?token=`` query of the WebSocket URL (browsers cannot set headers on a WebSocket, and
the hub serves both), so :func:`with_token` is the only place that puts it there; every
other URL here is token-free and safe to log.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent.errors import Codes, RealtimeError

__all__ = ["Candidate", "after", "candidates", "check_ws_url", "http_base", "where", "with_token"]

# A hub URL and the address to connect to (``None``: let the connection resolve the name).
Candidate: TypeAlias = tuple[str, str | None]


def check_ws_url(url: str) -> str:
    """``url`` when it is ``ws[s]://HOST[:PORT]/...`` without a token in it.

    Raises:
        RealtimeError: INVALID_PARAMETER naming the URL (a token in it is not repeated).
    """
    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        port_ok = parts is not None and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is not a number or out of range
        port_ok = False
    if not port_ok or parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise RealtimeError(
            Codes.INVALID_PARAMETER, f'"url" must be ws[s]://HOST[:PORT]/ws, got {url!r}.'
        )
    if "token=" in parts.query:
        raise RealtimeError(Codes.INVALID_PARAMETER, 'Pass the token as token=..., not in "url".')
    return url


def http_base(ws_url: str) -> str:
    """The HTTP API's base for a hub's WebSocket URL: ``ws[s]://H/p/ws`` -> ``http[s]://H/p``."""
    parts = urlsplit(ws_url)
    path = parts.path.rstrip("/").removesuffix("/ws")
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def with_token(ws_url: str, token: str) -> str:
    """``ws_url`` with ``token=`` added to its query (never log the result)."""
    parts = urlsplit(ws_url)
    query = [*parse_qsl(parts.query), ("token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def candidates(urls: Sequence[str]) -> list[Candidate]:
    """(URL, address) pairs to try: every address of a name that resolves to several, else
    the URL alone (``None``: connect resolves it, as for a single hub)."""
    loop = asyncio.get_running_loop()
    found: list[Candidate] = []
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []  # connect reports the resolver's error itself
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(addresses) > 1:
            found += [(url, address) for address in addresses]
        else:
            found.append((url, None))
    return found


def after(found: list[Candidate], last: Candidate | None) -> list[Candidate]:
    """``found`` starting after ``last`` (tried last): a lost node is not tried first."""
    if last not in found:
        return found
    start = found.index(last) + 1
    return found[start:] + found[:start]


def where(url: str, address: str | None) -> str:
    """A candidate for the log: the URL, and the address when one was picked."""
    return url if address is None else f"{url} at {address}"
