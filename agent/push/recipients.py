"""Who may push to whom, and whom a send request reaches. Pure: accounts in, user ids out.

- **Admins** push to anyone; naming nobody reaches every user with a subscription.
- **Devices** push to the accounts ``[push] device_recipients`` allows them: the entry under
  the device's account name, else the ``"*"`` entry (by default every admin and user, never
  other devices), and of those only the ones ``reaches`` allows (on the hub: accounts that
  share a granted group with the device, the rule messages follow). Entries are account
  names or ``role:NAME``. Naming a user the device may not alert is refused (FORBIDDEN); a
  role reaches the members the device may alert; naming nobody reaches everyone it may
  alert.
- **Users** may not push (FORBIDDEN); they message people through realtime instead, whose
  ``notification`` reaches a recipient who is not connected.

Names and ids of accounts that do not exist are skipped (and reported back for the log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.errors import Codes, RealtimeError
from agent.push.message import Recipients
from agent.push.settings import ROLE_PREFIX

__all__ = ["AccountLike", "Reaches", "Resolution", "allowed_for_device", "resolve_recipients"]

_ADMIN = "admin"
_DEVICE = "device"


class AccountLike(Protocol):
    """What push needs of an account (``agent.hub.accounts.Account`` fits)."""

    @property
    def user_id(self) -> str:
        """The account's UUID."""
        ...

    @property
    def name(self) -> str:
        """The account's unique name."""
        ...

    @property
    def role(self) -> str:
        """``admin``, ``user`` or ``device``."""
        ...


Reaches = Callable[["AccountLike", "AccountLike"], bool]  # may (sender) alert (recipient)?


@dataclass(frozen=True, slots=True)
class Resolution:
    """The user ids a request reaches, and the names or ids it gave that match no account."""

    user_ids: frozenset[str]
    unknown: tuple[str, ...] = ()


def resolve_recipients(
    caller: AccountLike,
    recipients: Recipients,
    *,
    accounts: Sequence[AccountLike],
    subscribed: Iterable[str],
    device_rules: Mapping[str, Sequence[str]],
    reaches: Reaches | None = None,
) -> Resolution:
    """The user ids ``caller``'s request reaches; FORBIDDEN if it may not push to them."""
    if caller.role == _ADMIN:
        if recipients.everyone:
            return Resolution(frozenset(subscribed))
        return _named(recipients, accounts, allowed=None)
    if caller.role == _DEVICE:
        allowed = allowed_for_device(caller.name, accounts, device_rules)
        if reaches is not None:
            allowed = frozenset(
                a.user_id for a in accounts if a.user_id in allowed and reaches(caller, a)
            )
        if recipients.everyone:
            return Resolution(allowed)
        return _named(recipients, accounts, allowed=allowed)
    raise RealtimeError(
        Codes.FORBIDDEN, "Only admins and devices may push notifications; send a message instead."
    )


def allowed_for_device(
    device: str, accounts: Sequence[AccountLike], rules: Mapping[str, Sequence[str]]
) -> frozenset[str]:
    """The user ids the device called ``device`` may alert."""
    entries = rules.get(device, rules.get("*", ()))
    names = {e for e in entries if not e.startswith(ROLE_PREFIX)}
    roles = {e.removeprefix(ROLE_PREFIX) for e in entries if e.startswith(ROLE_PREFIX)}
    return frozenset(a.user_id for a in accounts if a.name in names or a.role in roles)


def _named(
    recipients: Recipients, accounts: Sequence[AccountLike], *, allowed: frozenset[str] | None
) -> Resolution:
    by_id = {a.user_id: a for a in accounts}
    by_name = {a.name: a for a in accounts}
    named = [by_id.get(i) for i in recipients.user_ids] + [by_name.get(n) for n in recipients.names]
    unknown = [
        key
        for key, a in zip(recipients.user_ids + recipients.names, named, strict=True)
        if a is None
    ]
    found = [a for a in named if a is not None]
    if allowed is not None:
        refused = next((a for a in found if a.user_id not in allowed), None)
        if refused is not None:
            raise RealtimeError(
                Codes.FORBIDDEN,
                f'This device may not push to "{refused.name}" '
                "([push] device_recipients, and a group both are granted).",
            )
    ids = {a.user_id for a in found}
    for account in accounts:
        if account.role in recipients.roles and (allowed is None or account.user_id in allowed):
            ids.add(account.user_id)
    return Resolution(frozenset(ids), tuple(unknown))
