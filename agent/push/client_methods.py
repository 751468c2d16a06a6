"""The reference's web push calls for ``RealtimeClient``: a mixin over the client's HTTP.

``vapid_public_key``, ``subscribe_notification``, ``unsubscribe_notification`` and
``push_notification`` return what the reference returns; ``push_alert`` is what the
agent's outbox delivers through. They use the client's HTTP session, hub URL, token and
TLS settings, and need no realtime connection. Errors are ``HubRequestError`` (a
``RealtimeError``) with the hub's code and message, and the HTTP status for retry policy.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from agent.errors import Codes
from agent.push.errors import HubRequestError

__all__ = ["PushMethods"]

_PREFIX: Final = "/api/push"


class PushMethods:
    """Web push calls of the realtime client (mixed into ``RealtimeClient``)."""

    if TYPE_CHECKING:  # provided by RealtimeClient
        _http_url: str
        _token: str
        _ssl: ssl.SSLContext | None

        def _http(self) -> aiohttp.ClientSession: ...

    async def vapid_public_key(self) -> dict[str, str]:
        """The hub's VAPID public key, for ``PushManager.subscribe``.

        Returns:
            ``{"VAPIDPublicKey": "..."}`` (base64url of the uncompressed P-256 point).

        Raises:
            HubRequestError: ERROR when the hub cannot be reached; the hub's code otherwise.
        """
        answer = await self._push_call("GET", "/vapid-public-key")
        key = answer.get("VAPIDPublicKey") if isinstance(answer, dict) else None
        if not isinstance(key, str):
            raise HubRequestError(Codes.ERROR, "The hub's answer has no VAPIDPublicKey.")
        return {"VAPIDPublicKey": key}

    async def subscribe_notification(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> str:
        """Store a browser's push subscription for this account.

        Args:
            params: ``{"endpoint": ..., "keys": {"p256dh": ..., "auth": ...}}`` as
                ``PushSubscription.toJSON()`` gives it (or the reference's ``{"params": ...}``).
            endpoint: The push endpoint URL, instead of ``params``.
            keys: ``{"p256dh": ..., "auth": ...}`` (base64url), instead of ``params``.

        Returns:
            ``"SUCCESS: Subscribed to receive notifications."``

        Raises:
            HubRequestError: INVALID_PARAMETER naming the bad field (https endpoint on a
                public host, p256dh of 65 bytes, auth of 16); ERROR when unreachable.
        """
        body = _subscription(params, endpoint, keys, need_keys=True)
        return await self._push_text("/subscribe", body)

    async def unsubscribe_notification(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> str:
        """Delete this account's push subscription at ``endpoint``.

        Returns:
            ``"SUCCESS: Unsubscribed from notifications."``

        Raises:
            HubRequestError: INVALID_PARAMETER without an endpoint; ERROR when unreachable.
        """
        body = _subscription(params, endpoint, keys, need_keys=False)
        return await self._push_text("/unsubscribe", body)

    async def push_notification(
        self,
        notification: Mapping[str, Any],
        user_ids: str | Sequence[str] | None = None,
    ) -> str:
        """Push ``{"title", "body"}`` to ``user_ids`` (all of them when ``None``).

        Admins push to anyone; devices to the accounts the hub's settings allow them.

        Returns:
            ``"SUCCESS: Notification sent."``

        Raises:
            HubRequestError: FORBIDDEN for other accounts or recipients a device may not
                reach; INVALID_PARAMETER for a bad notification or one over 3 KB
                ("Notification size exceeds 3kb."); ERROR when the hub cannot be reached.
        """
        if not isinstance(notification, Mapping):
            raise HubRequestError(Codes.INVALID_PARAMETER, '"notification" must be {title, body}.')
        note = notification.get("params", notification)
        body: dict[str, Any] = {"title": note.get("title"), "body": note.get("body", "")}
        if user_ids is not None:
            body["user_ids"] = user_ids if isinstance(user_ids, str) else list(user_ids)
        return await self._push_text("/send", body)

    async def push_alert(self, request: Mapping[str, Any]) -> str:
        """Send one outbox alert (``/api/push/send`` body with its ``id``) to the hub."""
        return await self._push_text("/send", dict(request))

    async def push_alerts(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send several outbox alerts in one request (``/api/push/send-batch``), in order.

        Returns one result per alert, in order: ``{"status", "code"?, "message"}`` with the
        status ``/api/push/send`` would have answered it with.

        Raises:
            HubRequestError: the batch as a whole failed (the hub unreachable, a refused
                token, 404 from a hub without the route).
        """
        answer = await self._push_call(
            "POST", "/send-batch", {"alerts": [dict(r) for r in requests]}
        )
        results = answer.get("results") if isinstance(answer, dict) else None
        if (
            not isinstance(results, list)
            or len(results) != len(requests)
            or not all(isinstance(r, dict) and isinstance(r.get("status"), int) for r in results)
        ):
            raise HubRequestError(
                Codes.ERROR, f"The hub's answer to {_PREFIX}/send-batch has no result per alert."
            )
        return results

    async def _push_text(self, path: str, body: dict[str, Any]) -> str:
        answer = await self._push_call("POST", path, body)
        if not isinstance(answer, str):
            raise HubRequestError(Codes.ERROR, f"The hub's answer to {_PREFIX}{path} is not text.")
        return answer

    async def _push_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with self._http().request(
                method,
                self._http_url + _PREFIX + path,
                json=body,
                headers={"Authorization": f"Bearer {self._token}"},
                ssl=self._ssl if self._ssl is not None else True,
            ) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise HubRequestError(
                Codes.ERROR, f"Cannot reach the hub at {self._http_url}: {reason}"
            ) from exc
        payload = _json_or_none(raw)
        if status >= 400:
            raise _error(status, payload)
        return payload


def _subscription(
    params: Mapping[str, Any] | None,
    endpoint: str | None,
    keys: Mapping[str, str] | None,
    *,
    need_keys: bool,
) -> dict[str, Any]:
    given = dict(params.get("params", params)) if isinstance(params, Mapping) else {}
    if endpoint is not None:
        given["endpoint"] = endpoint
    if keys is not None:
        given["keys"] = dict(keys)
    if not isinstance(given.get("endpoint"), str):
        raise HubRequestError(Codes.INVALID_PARAMETER, '"endpoint" must be a string.')
    if need_keys and not isinstance(given.get("keys"), Mapping):
        raise HubRequestError(Codes.INVALID_PARAMETER, '"keys" must be {p256dh, auth}.')
    return given


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _error(status: int, payload: Any) -> HubRequestError:
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        code = payload.get("code")
        code = code if isinstance(code, str) else Codes.ERROR
        return HubRequestError(code, payload["message"], status=status)
    return HubRequestError(Codes.ERROR, f"The hub answered HTTP {status}.", status=status)
