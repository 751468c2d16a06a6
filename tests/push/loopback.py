"""A push service on 127.0.0.1 over HTTPS, and the browser side of a subscription.

Written from the RFCs with ``cryptography`` alone, independent of the sending library:

- the VAPID ``Authorization: vapid t=JWT, k=KEY`` header (RFC 8292 section 3) is checked:
  ES256 signature with the hub's public key, ``aud`` the service's origin, ``exp`` in the
  future and at most 24 hours ahead, ``sub`` present;
- the body is decrypted as ``aes128gcm`` (RFC 8188 section 2) with the keys of RFC 8291
  section 3.4, using the subscription's private key and auth secret.

Answers are scripted per endpoint path (``script``); unscripted requests get 201 Created.
Anything that fails a check is answered 400 and recorded in ``problems``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from tls import self_signed


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> TlsFiles:
        files = cls(directory / "push-cert.pem", directory / "push-key.pem")
        self_signed(files.cert, files.key, common_name="loopback push service")
        return files


class Browser:
    """The browser's half of a subscription: an ECDH P-256 key pair and an auth secret."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth_secret = os.urandom(16)
        self.public_point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def keys(self) -> dict[str, str]:
        """``PushSubscription.toJSON().keys``."""
        return {"p256dh": b64url(self.public_point), "auth": b64url(self.auth_secret)}

    def decrypt(self, body: bytes) -> bytes:
        """Decrypt one ``aes128gcm`` push message (RFC 8188 section 2, RFC 8291 section 3.4)."""
        salt, record_size, id_len = body[:16], int.from_bytes(body[16:20], "big"), body[20]
        if id_len != 65:
            raise ValueError(f"keyid must be the sender's 65-byte public key, got {id_len}")
        sender_point, ciphertext = body[21 : 21 + id_len], body[21 + id_len :]
        if len(ciphertext) > record_size:
            raise ValueError("a push message is a single record")
        sender_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_point)
        shared = self.private_key.exchange(ec.ECDH(), sender_key)
        key_info = b"WebPush: info\x00" + self.public_point + sender_point
        ikm = _hkdf(self.auth_secret, shared, key_info, 32)
        cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
        nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
        data, delimiter = padded.rstrip(b"\x00")[:-1], padded.rstrip(b"\x00")[-1:]
        if delimiter != b"\x02":  # the last (and only) record ends with 0x02
            raise ValueError(f"bad padding delimiter {delimiter!r}")
        return data


def verify_vapid(authorization: str, public_key: str) -> dict[str, Any]:
    """The claims of a ``vapid t=..., k=...`` header signed by ``public_key``; or raise."""
    scheme, _, params = authorization.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError(f"scheme {scheme!r} is not vapid")
    parts = dict(item.strip().split("=", 1) for item in params.split(","))
    if parts.get("k") != public_key:
        raise ValueError("k is not the hub's public key")
    head, claims, signature = parts["t"].split(".")
    if json.loads(unb64url(head)) != {"typ": "JWT", "alg": "ES256"}:
        raise ValueError(f"unexpected JWT header {unb64url(head)!r}")
    raw = unb64url(signature)
    if len(raw) != 64:
        raise ValueError("an ES256 signature is 64 bytes (r || s)")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(public_key))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    result: dict[str, Any] = json.loads(unb64url(claims))
    return result


@dataclass(frozen=True)
class Received:
    """One push request that passed every check."""

    path: str
    headers: dict[str, str]
    claims: dict[str, Any]
    payload: dict[str, Any]
    at: float  # time.monotonic() on arrival


def once_each(received: list[Received]) -> list[str]:
    """The alert ids in arrival order, asserting none came twice."""
    ids = [r.payload["id"] for r in received]
    assert len(set(ids)) == len(ids), "an alert arrived twice"
    return ids


@dataclass(frozen=True)
class Answer:
    """A scripted answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)


class LoopbackPushService:
    """An HTTPS push service on 127.0.0.1 that checks and decrypts what it receives."""

    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self.vapid_public_key = ""  # set once the hub is up
        self.browsers: dict[str, Browser] = {}
        self.script: dict[str, deque[Answer]] = defaultdict(deque)
        self.received: list[Received] = []
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.problems: list[str] = []
        # While set, every request is answered with this status, unchecked and unrecorded
        # (a push service that is up but failing).
        self.outage_status: int | None = None
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def subscribe(self, path: str) -> dict[str, Any]:
        """A new browser subscription at ``/path``: what ``toJSON()`` gives the page."""
        browser = Browser()
        self.browsers[path] = browser
        return {"endpoint": f"{self.origin}/{path}", "keys": browser.keys()}

    def answer(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``/path`` with ``answers``, in order."""
        self.script[path].extend(answers)

    def for_path(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for_attempts(self, path: str, count: int, within: float = 20.0) -> list[float]:
        """Wait until ``count`` requests to ``/path`` have arrived (answered or not)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.attempts[path]) >= count)
        return list(self.attempts[path])

    async def wait_for(self, count: int, within: float = 20.0) -> list[Received]:
        """Wait until ``count`` requests have been accepted in total."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    async def start(self) -> None:
        """Serve on a free port, or on the same port again after :meth:`stop` (an outage)."""
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=context, reuse_address=True
        )
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and drop open connections: senders get refused connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.read()
        async with self._changed:
            self.attempts[path].append(time.monotonic())
            self._changed.notify_all()
        if self.outage_status is not None:
            return web.Response(status=self.outage_status)
        try:
            received = self._check(path, dict(request.headers), body)
        except Exception as exc:  # record and refuse; the test asserts there were none
            self.problems.append(f"/{path}: {type(exc).__name__}: {exc}")
            return web.Response(status=400, text=str(exc))
        scripted = self.script[path].popleft() if self.script[path] else Answer(201)
        if 200 <= scripted.status < 300:
            async with self._changed:
                self.received.append(received)
                self._changed.notify_all()
        return web.Response(status=scripted.status, headers=scripted.headers)

    def _check(self, path: str, headers: dict[str, str], body: bytes) -> Received:
        claims = verify_vapid(headers["Authorization"], self.vapid_public_key)
        now = time.time()
        if claims.get("aud") != self.origin:
            raise ValueError(f"aud {claims.get('aud')!r} is not {self.origin!r}")
        if not now < claims["exp"] <= now + 24 * 3600:
            raise ValueError(f"exp {claims['exp']} is not within 24 h from now ({now})")
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            raise ValueError(f"sub {claims.get('sub')!r} is not a contact")
        if headers.get("Content-Encoding") != "aes128gcm":
            raise ValueError(f"Content-Encoding {headers.get('Content-Encoding')!r}")
        payload = json.loads(self.browsers[path].decrypt(body))
        return Received(path, headers, claims, payload, time.monotonic())


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    # HKDF-Extract then HKDF-Expand (RFC 5869), as RFC 8291 section 3.3 and RFC 8188 2.2 use.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
