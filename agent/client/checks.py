"""Checks of the client's arguments, pure: refused here with the code the hub would give.

Each raises :class:`~agent.errors.RealtimeError` naming what was wrong, before anything is
sent, so a bad argument never costs a round trip or a closed connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from agent.errors import Codes, RealtimeError
from agent.protocol import (
    ClientAction,
    Notification,
    ProtocolError,
    encode_client_action,
    parse_client_frame,
)

__all__ = ["check_action", "fetch_body", "notification"]

_FETCH_KEYS: Final = {
    "limit": "limit",
    "startKey": "startKey",
    "start_key": "startKey",
    "ascending": "ascending",
}


def check_action(action: ClientAction) -> None:
    """Refuse locally what the hub's parser would refuse (same code, same limits)."""
    parsed = parse_client_frame(encode_client_action(action))
    if isinstance(parsed, ProtocolError):
        raise RealtimeError(parsed.code, parsed.message)


def notification(value: Mapping[str, Any] | Notification | None) -> Notification | None:
    """``value`` as a :class:`Notification`: ``{"title", "body", "config": {"always"}}``."""
    if value is None or isinstance(value, Notification):
        return value
    if not isinstance(value, Mapping):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"notification" must be {title, body}.')
    title, body = value.get("title", ""), value.get("body", "")
    config = value.get("config") or {}
    if not isinstance(title, str) or not isinstance(body, str) or not isinstance(config, dict):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"notification" must be {title, body}.')
    return Notification(title, body, always=config.get("always") is True)


def fetch_body(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reference's FetchOptions as the hub's body fields (``start_key`` also taken)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise RealtimeError(Codes.INVALID_PARAMETER, '"fetch_options" must be an object.')
    unknown = sorted(set(options) - set(_FETCH_KEYS))
    if unknown:
        raise RealtimeError(
            Codes.INVALID_PARAMETER,
            f"Unknown fetch option(s): {', '.join(unknown)}. Use limit, startKey, ascending.",
        )
    return {_FETCH_KEYS[key]: value for key, value in options.items()}
