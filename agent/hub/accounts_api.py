"""Account administration over HTTP: what ``edge-agent user`` and ``token revoke`` do, for admins.

    GET    /api/accounts                      every account with its role and grants
    POST   /api/accounts                      create one (name, role, groups, password?)
    GET    /api/accounts/{name}               one account (admins, or the account itself)
    PATCH  /api/accounts/{name}               change the role, grant or revoke groups
    DELETE /api/accounts/{name}               remove it (its connections close at once)
    POST   /api/accounts/{name}/revoke-tokens end every token issued so far (admins, or self)

Every change is applied to this hub's open connections before the answer (the access table
is refreshed); other hub nodes sharing the database see it at their next poll. An admin
cannot remove or demote the last admin over HTTP: that would lock everyone out remotely.

This module does not use ``from __future__ import annotations``: FastAPI reads the route
signatures at definition time, and they name the injected dependency, a local variable.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import AccountError, AccountNotFoundError, Codes, RealtimeError
from agent.hub.access import AccessTable
from agent.hub.accounts import Account, AccountStore, Role
from agent.hub.grants import MAX_GRANT_CHARS

__all__ = ["ACCOUNTS_PATH", "AccountChange", "AccountItem", "NewAccount", "add_account_routes"]

ACCOUNTS_PATH: Final = "/api/accounts"
_TAGS: Final[list[Any]] = ["accounts"]
_MAX_GRANTS_PER_REQUEST: Final = 100
_NAME = Annotated[str, Path(min_length=1, max_length=64)]
_Grants = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_GRANT_CHARS)]],
    Field(max_length=_MAX_GRANTS_PER_REQUEST),
]


class AccountItem(BaseModel):
    """An account as an admin sees it."""

    user_id: str
    name: str
    role: Role
    groups: list[str] = Field(description="Grants: group names or prefixes ending in *.")
    token_generation: int = Field(description="Tokens issued before this generation are void.")


class NewAccount(BaseModel):
    """An account to create."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    role: Role = Role.USER
    groups: _Grants = Field(default_factory=list)
    password: str | None = Field(
        None, max_length=1024, description="Omit for an account that uses tokens only."
    )


class AccountChange(BaseModel):
    """Changes to an account; each field is optional."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    grant: _Grants = Field(default_factory=list, description="Groups to grant.")
    revoke: _Grants = Field(default_factory=list, description="Grants to take back.")


class Revoked(BaseModel):
    """The account's token generation after a revocation."""

    token_generation: int


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"description": "A bad name, role, grant or password."},
    401: {"description": "No valid token."},
    403: {"description": "Not an admin (or not the account itself, where allowed)."},
    404: {"description": "No such account."},
}


def add_account_routes(
    app: FastAPI,
    accounts: AccountStore,
    access: AccessTable,
    *,
    current_account: Callable[..., Awaitable[Account]],
) -> None:
    """Add the account administration routes to ``app``."""
    authed = Annotated[Account, Depends(current_account)]
    admin = _AccountAdmin(accounts, access)

    @app.get(ACCOUNTS_PATH, tags=_TAGS, responses=_ERRORS)
    async def list_accounts(caller: authed) -> list[AccountItem]:
        """Every account, by name (admins)."""
        _require_admin(caller)
        return [_item(a) for a in await asyncio.to_thread(accounts.list)]

    @app.post(ACCOUNTS_PATH, tags=_TAGS, responses=_ERRORS, status_code=201)
    async def create_account(body: NewAccount, caller: authed) -> AccountItem:
        """Create an account with its grants (admins)."""
        _require_admin(caller)
        return await admin.create(body)

    @app.get(ACCOUNTS_PATH + "/{name}", tags=_TAGS, responses=_ERRORS)
    async def get_account(name: _NAME, caller: authed) -> AccountItem:
        """One account (admins, or the account itself)."""
        _require_admin_or_self(caller, name)
        return _item(await admin.found(name))

    @app.patch(ACCOUNTS_PATH + "/{name}", tags=_TAGS, responses=_ERRORS)
    async def change_account(name: _NAME, body: AccountChange, caller: authed) -> AccountItem:
        """Change the role, grant groups, revoke grants (admins)."""
        _require_admin(caller)
        return await admin.change(name, body)

    @app.delete(ACCOUNTS_PATH + "/{name}", tags=_TAGS, responses=_ERRORS, status_code=204)
    async def remove_account(name: _NAME, caller: authed) -> Response:
        """Remove an account; its connections close at once (admins)."""
        _require_admin(caller)
        await admin.remove(name)
        return Response(status_code=204)

    @app.post(ACCOUNTS_PATH + "/{name}/revoke-tokens", tags=_TAGS, responses=_ERRORS)
    async def revoke_tokens(name: _NAME, caller: authed) -> Revoked:
        """End every token issued to the account so far (admins, or the account itself)."""
        _require_admin_or_self(caller, name)
        return Revoked(token_generation=await admin.revoke_tokens(name))


class _AccountAdmin:
    """The operations behind the routes: each change is applied before it answers."""

    def __init__(self, accounts: AccountStore, access: AccessTable) -> None:
        self._accounts = accounts
        self._access = access

    async def found(self, name: str) -> Account:
        account = await asyncio.to_thread(self._accounts.get_by_name, name)
        if account is None:
            raise RealtimeError(Codes.NOT_FOUND, f'No account named "{name}".')
        return account

    async def create(self, body: NewAccount) -> AccountItem:
        await self._apply(
            lambda: self._accounts.add(body.name, body.password, body.role, groups=body.groups)
        )
        return _item(await self.found(body.name))

    async def change(self, name: str, body: AccountChange) -> AccountItem:
        target = await self.found(name)
        if body.role is not None and body.role is not Role.ADMIN:
            await self._keep_an_admin(target)
        store = self._accounts

        def apply() -> None:
            if body.grant:
                store.grant(name, body.grant)
            if body.revoke:
                store.revoke(name, body.revoke)
            if body.role is not None and body.role is not target.role:
                store.set_role(name, body.role)

        await self._apply(apply)
        return _item(await self.found(name))

    async def remove(self, name: str) -> None:
        await self._keep_an_admin(await self.found(name))
        await self._apply(lambda: self._accounts.remove(name))

    async def revoke_tokens(self, name: str) -> int:
        await self.found(name)
        generation: list[int] = []
        await self._apply(lambda: generation.append(self._accounts.revoke_tokens(name)))
        return generation[0]

    async def _apply(self, operation: Callable[[], Any]) -> None:
        try:
            await asyncio.to_thread(operation)
        except AccountError as exc:
            raise _translate(exc) from exc
        await self._access.refresh()  # applied to open connections before the answer

    async def _keep_an_admin(self, target: Account) -> None:
        if target.role is not Role.ADMIN:
            return
        everyone = await asyncio.to_thread(self._accounts.list)
        if sum(a.role is Role.ADMIN for a in everyone) <= 1:
            raise RealtimeError(
                Codes.INVALID_REQUEST,
                f'"{target.name}" is the last admin; make another admin first.',
            )


def _require_admin(caller: Account) -> None:
    if caller.role is not Role.ADMIN:
        raise RealtimeError(Codes.FORBIDDEN, "Only admins may manage accounts.")


def _require_admin_or_self(caller: Account, name: str) -> None:
    if caller.name != name:
        _require_admin(caller)


def _translate(exc: AccountError) -> RealtimeError:
    code = Codes.NOT_FOUND if isinstance(exc, AccountNotFoundError) else Codes.INVALID_PARAMETER
    return RealtimeError(code, str(exc))


def _item(account: Account) -> AccountItem:
    return AccountItem(
        user_id=account.user_id,
        name=account.name,
        role=account.role,
        groups=list(account.grants),
        token_generation=account.token_generation,
    )
