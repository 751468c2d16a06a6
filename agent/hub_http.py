"""HubHttp: the client side of the hub's HTTP API, with one error mapping for every call.

It owns what an HTTP call needs (the ``aiohttp`` session, the base URL, the token, the TLS
settings) and answers ``request(method, path, body)`` with the decoded JSON, or raises
:class:`agent.errors.HubRequestError`:

- the hub refused the request (HTTP >= 400): the hub's ``code`` and ``message`` when its
  answer carries them (the reference's error shape), else ERROR naming the status; the
  ``status`` is kept for retry policy (the outbox tells 4xx "never" from 5xx "later");
- the hub could not be reached or did not answer in time: ERROR "Cannot reach the hub at
  BASE: REASON", with ``status`` ``None``.

The realtime list calls, ``get_ice_servers``/``get_user``/``upload_snapshot`` and the push
calls (:mod:`agent.push.client_methods`) all go through one instance, so they fail alike.
The token is sent in the ``Authorization`` header (RFC 6750 section 2.1) and never
appears in an error.
"""

from __future__ import annotations

import io
import json
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from agent.errors import Codes, HubRequestError

__all__ = ["HubHttp", "HubRequestError"]


class HubHttp:
    """Requests to one hub's HTTP API (see the module docstring)."""

    def __init__(
        self,
        base_url: Callable[[], str],
        *,
        token: str,
        ssl_context: ssl.SSLContext | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Prepare requests; nothing connects until the first one.

        Args:
            base_url: Gives the API's base (``http[s]://HOST:PORT``) at each request: a
                client that moves to another hub node sends its next request there.
            token: The JWT sent as ``Authorization: Bearer``.
            ssl_context: TLS settings for ``https`` (default: the system's trust store).
            session: A session to use (not closed here); default: one made on first use
                with ``timeout`` and closed by :meth:`close`.
            timeout: Seconds allowed for one request, in the session made here.
        """
        self._base_url = base_url
        self._token = token
        self._ssl = ssl_context
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._timeout = timeout

    @property
    def base_url(self) -> str:
        """The base URL the next request goes to, without a trailing slash."""
        return self._base_url().rstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        data: io.BytesIO | None = None,
    ) -> Any:
        """Send ``body`` as JSON (or ``data`` as raw bytes) to ``path``; the answer's JSON.

        Returns:
            The decoded JSON of a successful answer (``None`` when it is not JSON).

        Raises:
            HubRequestError: see the module docstring.
        """
        base = self.base_url
        try:
            async with self._http().request(
                method,
                base + path,
                json=body,
                data=data,
                headers={"Authorization": f"Bearer {self._token}"},
                ssl=self._ssl if self._ssl is not None else True,
            ) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise HubRequestError(Codes.ERROR, f"Cannot reach the hub at {base}: {reason}") from exc
        payload = _json_or_none(raw)
        if status >= 400:
            raise _hub_error(status, payload)
        return payload

    async def close(self) -> None:
        """Close the session made here (a given one stays open); a later request makes anew."""
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._own_session is None or self._own_session.closed:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            self._own_session = aiohttp.ClientSession(timeout=timeout)
        return self._own_session


def _hub_error(status: int, payload: Any) -> HubRequestError:
    """The error for an answer with HTTP ``status`` >= 400 and decoded body ``payload``."""
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        code = payload.get("code")
        code = code if isinstance(code, str) else Codes.ERROR
        return HubRequestError(code, payload["message"], status=status)
    # FastAPI's own answers (an unknown route, a wrong method) carry ``detail`` instead.
    detail = payload.get("detail") if isinstance(payload, dict) else None
    return HubRequestError(
        Codes.ERROR, f"The hub answered HTTP {status}: {detail or 'no detail'}.", status=status
    )


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
