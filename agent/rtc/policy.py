"""Who may call this device, and how many at once. Pure.

A caller is allowed when any rule matches: its user id or account name is listed in
``allow_users``, its role in ``allow_roles``, or it is connected in one of
``allow_groups``. An allowed caller is still refused while ``max_calls`` calls are up.
A stranger is told "not allowed" even when the device is busy: whether it is busy is
none of a stranger's business.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CallPolicy", "Caller", "Refusal", "refusal_content"]


class Refusal(enum.Enum):
    """Why a call was refused (the ``reason`` the caller is told)."""

    NOT_ALLOWED = "not_allowed"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Caller:
    """What is known of the caller; ``None`` where the hub could not say."""

    user_id: str | None
    name: str | None = None
    role: str | None = None
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """The ``[calls]`` rules."""

    allow_users: frozenset[str] = frozenset()  # user ids or account names
    allow_groups: frozenset[str] = frozenset()
    allow_roles: frozenset[str] = frozenset({"admin", "user"})
    max_calls: int = 4

    @classmethod
    def of(
        cls,
        *,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        roles: Iterable[str] = ("admin", "user"),
        max_calls: int = 4,
    ) -> CallPolicy:
        """A policy from plain lists (user ids and names compare case-insensitively)."""
        return cls(
            frozenset(u.lower() for u in users), frozenset(groups), frozenset(roles), max_calls
        )

    def allowed_without_groups(self, caller: Caller) -> bool:
        """Allowed by id, name or role (no group lookup needed)."""
        names = {v.lower() for v in (caller.user_id, caller.name) if v}
        return bool(names & self.allow_users) or (
            caller.role is not None and caller.role in self.allow_roles
        )

    def decide(self, caller: Caller, active_calls: int) -> Refusal | None:
        """None to take the call, else why not."""
        allowed = self.allowed_without_groups(caller) or bool(caller.groups & self.allow_groups)
        if not allowed:
            return Refusal.NOT_ALLOWED
        if active_calls >= self.max_calls:
            return Refusal.BUSY
        return None


def refusal_content(refusal: Refusal, *, device: str, active: int, limit: int) -> dict[str, str]:
    """The private message a refused caller gets."""
    if refusal is Refusal.BUSY:
        text = f'"{device}" is busy: {active} calls are in progress (at most {limit}).'
    else:
        text = f'You are not allowed to call "{device}".'
    return {"type": "call_refused", "reason": refusal.value, "device": device, "message": text}
