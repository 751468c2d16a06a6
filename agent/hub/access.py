"""Who may reach which group now: each account's access, and the hub's live table of it.

Grants (:mod:`agent.hub.grants`) are exact group names or ``prefix*`` patterns (a lone
``*`` is every group). Admins hold every group whatever their grants say. Everything the
hub routes follows the grants:

- a connection joins, lists and posts to a group only when its account is granted it;
- a private message or an ``rtc`` frame goes through only when sender and recipient share
  a group the sender is granted (:meth:`Access.shares_group_with`); admins always may.

:class:`AccessTable` is the hub's in-memory copy of every account's role, grants and token
generation, so that a frame is checked with a dictionary lookup. It reloads when the
account store's revision moves: a change made through this hub's HTTP API refreshes it at
once, and a change made elsewhere (``edge-agent user ...`` on the same files, or another
hub node sharing the database) is seen at the next poll. Listeners then bring open
connections in line (close the removed and revoked, drop revoked groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from agent.hub.accounts import Account, Role
from agent.hub.grants import grant_matches, grants_overlap

if TYPE_CHECKING:
    from agent.hub.accounts import AccountStore

__all__ = ["Access", "AccessTable", "accounts_share_a_group"]

log = logging.getLogger(__name__)

# A change made by another process is seen within this long (the removal goal is 1 s).
DEFAULT_POLL_SECONDS: Final = 0.25

AccessListener = Callable[["AccessTable"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Access:
    """What one account may do now: its role, grants and current token generation."""

    user_id: str
    name: str
    role: Role
    grants: tuple[str, ...]
    token_generation: int = 0

    @classmethod
    def of(cls, account: Account) -> Access:
        """The access an account record gives."""
        return cls(
            account.user_id, account.name, account.role, account.grants, account.token_generation
        )

    @property
    def is_admin(self) -> bool:
        """Admins hold every group."""
        return self.role is Role.ADMIN

    def may_use(self, group: str) -> bool:
        """Whether this account may join, list and post to ``group``."""
        return self.is_admin or any(grant_matches(grant, group) for grant in self.grants)

    def shares_group_with(self, other: Access) -> bool:
        """Whether a group this account is granted is granted to ``other`` too."""
        if self.is_admin:
            return True
        if other.is_admin:
            return bool(self.grants)  # the admin holds whatever this account holds
        return any(grants_overlap(a, b) for a in self.grants for b in other.grants)

    def visible_groups(self, groups: Iterable[str]) -> list[str]:
        """The groups of ``groups`` this account may see, in their order."""
        return [group for group in groups if self.may_use(group)]


def accounts_share_a_group(sender: object, recipient: object) -> bool:
    """Whether two account records share a group ``sender`` is granted (push's reach rule)."""
    if not isinstance(sender, Account) or not isinstance(recipient, Account):
        return False
    return Access.of(sender).shares_group_with(Access.of(recipient))


class AccessTable:
    """Every account's :class:`Access`, reloaded when the account store changes."""

    def __init__(self, store: AccountStore, *, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        self._store = store
        self._poll_seconds = poll_seconds
        self._entries: Mapping[str, Access] = {}
        self._revision: int | None = None
        self._listeners: list[AccessListener] = []
        self._reload_lock = asyncio.Lock()

    def get(self, user_id: str) -> Access | None:
        """The account's access as last loaded; ``None`` if it does not exist."""
        return self._entries.get(user_id)

    async def lookup(self, user_id: str) -> Access | None:
        """The account's access, reloading first if it is not known yet (just created)."""
        found = self._entries.get(user_id)
        if found is None and await self.refresh():
            found = self._entries.get(user_id)
        return found

    def subscribe(self, listener: AccessListener) -> None:
        """Call ``listener(table)`` after every reload that changed something."""
        self._listeners.append(listener)

    async def refresh(self) -> bool:
        """Reload if the store's revision moved; whether it did."""
        async with self._reload_lock:
            revision = await asyncio.to_thread(self._store.revision)
            if revision == self._revision:
                return False
            revision, accounts = await asyncio.to_thread(self._store.snapshot)
            self._entries = {a.user_id: Access.of(a) for a in accounts}
            first = self._revision is None
            self._revision = revision
        if not first:
            log.info("accounts changed (revision %d): applying to open connections", revision)
            for listener in list(self._listeners):
                await listener(self)
        return True

    async def run(self) -> None:
        """Poll the store for changes until cancelled."""
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A busy or briefly unreadable database: the next poll tries again.
                log.warning("could not reload accounts; retrying", exc_info=True)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AccessTable]:
        """Load now and poll in the background for the life of the context."""
        await self.refresh()
        task = asyncio.create_task(self.run(), name="access-table")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
