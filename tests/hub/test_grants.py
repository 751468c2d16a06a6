"""Grants and access as pure rules: no hub, no loop."""

from __future__ import annotations

import pytest

from agent.errors import AccountError
from agent.hub.access import Access
from agent.hub.accounts import Role
from agent.hub.grants import check_grant, grant_matches, grants_overlap


@pytest.mark.parametrize(
    ("grant", "group", "expected"),
    [
        ("porch", "porch", True),
        ("porch", "porch2", False),
        ("site-*", "site-a", True),
        ("site-*", "site-", True),
        ("site-*", "site", False),
        ("*", "anything", True),
    ],
)
def test_a_grant_covers_its_name_or_its_prefix(grant: str, group: str, expected: bool) -> None:
    assert grant_matches(grant, group) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("home", "home", True),
        ("home", "porch", False),
        ("site-*", "site-a", True),
        ("site-a", "site-*", True),
        ("site-*", "farm", False),
        ("farm", "site-*", False),
        ("site-*", "site-a*", True),
        ("site-a*", "site-*", True),
        ("site-a*", "site-b*", False),
        ("*", "anything", True),
    ],
)
def test_two_grants_overlap_when_some_group_is_under_both(a: str, b: str, expected: bool) -> None:
    assert grants_overlap(a, b) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "1 to 128"),
        ("x" * 129, "1 to 128"),
        ("two words", "no spaces"),
        ("bell\x00", "no spaces"),
        ("a*b", "* may only end"),
        ("**", "* may only end"),
    ],
)
def test_a_bad_grant_is_refused_naming_it(text: str, fragment: str) -> None:
    with pytest.raises(AccountError) as caught:
        check_grant(text)
    assert fragment in str(caught.value)
    assert repr(text)[:20] in str(caught.value)


def test_good_grants_pass_unchanged() -> None:
    assert [check_grant(g) for g in ("porch", "site-*", "*")] == ["porch", "site-*", "*"]


def access(role: Role, *grants: str) -> Access:
    return Access(f"id-{role.value}-{'-'.join(grants)}", "n", role, grants)


def test_admins_hold_every_group_and_users_only_their_grants() -> None:
    assert access(Role.ADMIN).may_use("anything")
    user = access(Role.USER, "home", "site-*")
    assert user.may_use("home")
    assert user.may_use("site-7")
    assert not user.may_use("porch")
    assert user.visible_groups(["porch", "site-1", "home"]) == ["site-1", "home"]
    assert not access(Role.DEVICE).may_use("home")


def test_sharing_a_group_follows_the_grants_and_admins_share_with_everyone() -> None:
    alice, bob = access(Role.USER, "home"), access(Role.USER, "site-*")
    porch = access(Role.DEVICE, "home", "porch")
    admin = access(Role.ADMIN)
    assert alice.shares_group_with(porch)
    assert porch.shares_group_with(alice)
    assert not bob.shares_group_with(porch)
    assert admin.shares_group_with(bob)
    assert alice.shares_group_with(admin)  # the admin holds "home" too
    assert not access(Role.USER).shares_group_with(admin)  # nothing granted, nothing shared
