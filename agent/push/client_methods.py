"""The reference's web push calls, over the client's :class:`agent.hub_http.HubHttp`.

``vapid_public_key``, ``subscribe_notification``, ``unsubscribe_notification`` and
``push_notification`` return what the reference returns; ``push_alert``/``push_alerts``
are what the agent's outbox delivers through. ``RealtimeClient`` holds one
:class:`PushCalls` over its own ``HubHttp`` and offers these methods under the same names;
they need no realtime connection. Errors are :class:`~agent.errors.HubRequestError` (a
``RealtimeError``), mapped in one place by ``HubHttp``: the hub's code and message, and
the HTTP status for retry policy; bad arguments are refused before any request, with
``status`` ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent.errors import Codes, HubRequestError
from agent.hub_http import HubHttp

__all__ = ["PushCalls"]

_PREFIX: Final = "/api/push"


class PushCalls:
    """Web push calls to the hub through ``http`` (used by ``RealtimeClient``)."""

    def __init__(self, http: HubHttp) -> None:
        self._http = http

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
        return await self._http.request(method, _PREFIX + path, body)


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
