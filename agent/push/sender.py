"""Sending one push message to one subscription: encrypt, sign, POST (RFC 8030/8291/8292).

:class:`WebPushSender` encrypts with pywebpush (``aes128gcm``, RFC 8188/8291), signs the
VAPID header with :class:`~agent.push.vapid.VapidSigner`, and POSTs with an injected
``aiohttp`` session. The POST is ours rather than pywebpush's ``send_async`` because that
one follows redirects (a push service has no reason to redirect, and following one could
reach an internal address) and reads the whole answer; here redirects are not followed
and at most a few hundred bytes of an error answer are read, for the log.

Sessions made by :func:`make_session` resolve names through :class:`PublicOnlyResolver`,
which refuses loopback, private and link-local addresses unless they are allowed, so a
name that points inside the network (or is re-pointed there later) is not reached.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from agent.push.message import PushMessage
from agent.push.settings import PushSettings
from agent.push.subscriptions import Subscription, is_public_address
from agent.push.vapid import VapidSigner

__all__ = [
    "PublicOnlyResolver",
    "PushResponse",
    "PushSender",
    "WebPushSender",
    "make_session",
]

_ERROR_BODY_BYTES: Final = 512
_CONTENT_ENCODING: Final = "aes128gcm"


@dataclass(frozen=True, slots=True)
class PushResponse:
    """A push service's answer: status, ``Retry-After`` as sent, and the start of the body."""

    status: int
    retry_after: str | None = None
    detail: str = ""


class PushSender(Protocol):
    """Sends one message to one subscription; raises ``OSError``/``aiohttp.ClientError``
    or ``TimeoutError`` when no answer came."""

    async def send(self, sub: Subscription, message: PushMessage, *, ttl: int) -> PushResponse:
        """POST ``message`` to ``sub``'s endpoint with ``ttl`` seconds to live."""
        ...


class WebPushSender:
    """The real sender: pywebpush encryption, VAPID, one POST through ``session``."""

    def __init__(
        self, signer: VapidSigner, session: aiohttp.ClientSession, *, timeout: float
    ) -> None:
        self._signer = signer
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, sub: Subscription, message: PushMessage, *, ttl: int) -> PushResponse:
        """POST ``message`` to ``sub``'s endpoint with ``ttl`` seconds to live."""
        body = _encrypt(sub, message.data)
        async with self._session.post(
            sub.endpoint,
            data=body,
            headers=self._headers(sub, message, ttl),
            timeout=self._timeout,
            allow_redirects=False,
        ) as response:
            detail = b""
            if response.status >= 300:
                detail = await response.content.read(_ERROR_BODY_BYTES)
            return PushResponse(
                response.status,
                response.headers.get("Retry-After"),
                detail.decode("utf-8", "replace"),
            )

    def _headers(self, sub: Subscription, message: PushMessage, ttl: int) -> dict[str, str]:
        headers = {
            "Authorization": self._signer.authorization(sub.origin),
            "Content-Encoding": _CONTENT_ENCODING,
            "Content-Type": "application/octet-stream",
            "TTL": str(ttl),  # RFC 8030 section 5.2
            "Urgency": message.urgency.value,  # section 5.3
        }
        if message.topic is not None:
            headers["Topic"] = message.topic  # section 5.4: replaces an undelivered older one
        return headers


class PublicOnlyResolver(AbstractResolver):
    """Resolves names as usual, then drops every address that is not globally routable."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The public addresses of ``host``; ``OSError`` if it has none."""
        found = await self._inner.resolve(host, port, family)
        public = [entry for entry in found if is_public_address(entry["host"])]
        if not public:
            raise OSError(f"push endpoint host {host!r} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


def make_session(settings: PushSettings) -> aiohttp.ClientSession:
    """An ``aiohttp`` session for push services as ``settings`` say (CA, private hosts)."""
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        context.load_verify_locations(cafile=settings.ca_file)
    resolver = None if settings.allow_private_endpoints else PublicOnlyResolver()
    connector = aiohttp.TCPConnector(
        ssl=context, resolver=resolver, limit=settings.max_concurrent, limit_per_host=0
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.timeout_seconds),
        # Cookies from push services must not ride along to other subscriptions.
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


def _encrypt(sub: Subscription, data: bytes) -> bytes:
    # Imported on the first alert: pywebpush (with requests) is ~5 MB a hub that has sent
    # nothing yet need not hold.
    from pywebpush import WebPusher

    # ECDH with a fresh key, HKDF and one AES-GCM record: well under a millisecond.
    encoded: Any = WebPusher(sub.info()).encode(data, _CONTENT_ENCODING)
    body: bytes = encoded["body"]
    return body
