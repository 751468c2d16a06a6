"""Pure tests of group and user listings: every condition, range, defaults, paging, errors."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import Codes, RealtimeError
from agent.hub.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Condition,
    GroupQuery,
    GroupRow,
    PageRequest,
    SearchFor,
    UserQuery,
    UserRow,
    list_groups,
    list_users,
    parse_group_query,
    parse_page_request,
    parse_user_query,
)

COUNTS = {"alpha": 1, "alps": 4, "beta": 2, "gamma": 3, "empty": 0}
UID_A = "0b6e4c9a-2f55-4c1e-9d7e-3a1b2c3d4e5f"
UID_B = "1c7f5dab-3066-4d2f-8e8f-4b2c3d4e5f60"


def _names(params: dict[str, Any] | None, **page: Any) -> list[str]:
    result = list_groups(parse_group_query(params), COUNTS, parse_page_request(page))
    return [row.group for row in result.items]


def _error(call: Any, *args: Any) -> str:
    with pytest.raises(RealtimeError) as excinfo:
        call(*args)
    assert excinfo.value.code == Codes.INVALID_PARAMETER
    return excinfo.value.message


def test_no_parameters_list_every_non_empty_group_by_name() -> None:
    assert parse_group_query(None) == GroupQuery(SearchFor.GROUP, "", Condition.GT)
    assert _names(None) == ["alpha", "alps", "beta", "gamma"]
    assert _names({}) == _names({"searchFor": "group"}) == _names({"value": " "})


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (">", ["beta", "gamma"]),
        ("gt", ["beta", "gamma"]),
        (">=", ["beta"]),  # "starts with"
        ("gte", ["beta"]),
        ("=", []),
        ("eq", []),
        ("<", ["alpha", "alps"]),
        ("lt", ["alpha", "alps"]),
        ("<=", ["alpha", "alps"]),
        ("lte", ["alpha", "alps"]),
        ("!=", ["alpha", "alps", "beta", "gamma"]),
        ("ne", ["alpha", "alps", "beta", "gamma"]),
    ],
)
def test_group_name_conditions(condition: str, expected: list[str]) -> None:
    assert _names({"searchFor": "group", "value": "b", "condition": condition}) == expected


def test_greater_or_equal_on_a_name_means_starts_with() -> None:
    for word in (">=", "gte"):
        assert _names({"value": "al", "condition": word}) == ["alpha", "alps"]
    assert _names({"value": "alpha", "condition": "eq"}) == ["alpha"]
    assert _names({"value": "alpha", "condition": "lte"}) == ["alpha"]


def test_a_value_without_condition_is_equality() -> None:
    assert parse_group_query({"value": "beta"}).condition is Condition.EQ
    assert _names({"value": "beta"}) == ["beta"]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("gt", ["gamma", "alps"]),
        (">=", ["beta", "gamma", "alps"]),
        ("gte", ["beta", "gamma", "alps"]),
        ("=", ["beta"]),
        ("eq", ["beta"]),
        ("<", ["alpha"]),
        ("lt", ["alpha"]),
        ("<=", ["alpha", "beta"]),
        ("lte", ["alpha", "beta"]),
        ("!=", ["alpha", "gamma", "alps"]),
    ],
)
def test_number_of_users_conditions_sort_by_count(condition: str, expected: list[str]) -> None:
    query = {"searchFor": "number_of_users", "value": 2, "condition": condition}
    assert _names(query) == expected


def test_number_of_users_defaults() -> None:
    assert parse_group_query({"searchFor": "number_of_users"}) == GroupQuery(
        SearchFor.NUMBER_OF_USERS, 0, Condition.GT
    )
    assert _names({"searchFor": "number_of_users"}) == ["alpha", "beta", "gamma", "alps"]
    assert _names({"searchFor": "number_of_users", "value": 3}) == ["gamma"]
    assert _names({"searchFor": "number_of_users", "value": 1.5, "condition": ">"}) == [
        "beta",
        "gamma",
        "alps",
    ]


def test_range_is_inclusive_on_both_ends() -> None:
    assert _names({"value": "alps", "range": "beta"}) == ["alps", "beta"]
    query = {"searchFor": "number_of_users", "value": 2, "range": 3}
    assert parse_group_query(query).condition is None
    assert _names(query) == ["beta", "gamma"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"searchFor": "number_of_users", "value": "2"}, '"value" must be a number.'),
        ({"searchFor": "number_of_users", "value": True}, '"value" must be a number.'),
        ({"searchFor": "group", "value": 2}, '"value" must be a string.'),
        ({"searchFor": "users"}, 'Value: users in "searchFor" is invalid.'),
        ({"value": "a", "condition": "like"}, 'Value: like in "condition" is invalid.'),
        ({"value": "a", "condition": 1}, 'Value: 1 in "condition" is invalid.'),
        ({"value": "a", "range": 1}, '"range" must be a string.'),
        ({"searchFor": "number_of_users", "value": 1, "range": "2"}, '"range" must be a number.'),
        ({"value": "b", "range": "a"}, '"range" must not be less than "value".'),
        (
            {"value": "a", "range": "b", "condition": "gt"},
            '"range" cannot be used with "condition".',
        ),
        ({"group": "a"}, 'Key name "group" is invalid in parameter.'),
    ],
)
def test_bad_group_queries_name_the_parameter(params: dict[str, Any], message: str) -> None:
    assert _error(parse_group_query, params) == message


def test_fetch_options_ride_along_with_the_query() -> None:
    params = {"value": "a", "condition": ">", "limit": 2, "startKey": None, "ascending": False}
    assert parse_group_query(params).value == "a"
    assert parse_page_request(params) == PageRequest(2, None, False)


def test_page_request_defaults_and_limits() -> None:
    assert parse_page_request(None) == PageRequest(DEFAULT_LIMIT, None, True)
    assert parse_page_request({"limit": None, "ascending": None, "startKey": "start"}) == (
        PageRequest(DEFAULT_LIMIT, None, True)
    )
    assert parse_page_request({"limit": MAX_LIMIT}).limit == MAX_LIMIT
    for bad in (0, MAX_LIMIT + 1, 2.5, "10", True):
        assert _error(parse_page_request, {"limit": bad}) == (
            f'"limit" must be an integer from 1 to {MAX_LIMIT}.'
        )
    assert _error(parse_page_request, {"startKey": 5}) == '"startKey" must be a string.'
    assert _error(parse_page_request, {"ascending": "yes"}) == '"ascending" must be a boolean.'


@pytest.mark.parametrize("ascending", [True, False])
def test_paging_walks_every_group_once_in_order(ascending: bool) -> None:
    counts = {f"g{i:02d}": i % 3 + 1 for i in range(11)}
    query = parse_group_query({})
    seen: list[str] = []
    start: str | None = None
    while True:
        page = list_groups(query, counts, PageRequest(4, start, ascending))
        seen += [row.group for row in page.items]
        if page.end_of_list:
            assert page.start_key is None
            break
        assert page.start_key is not None
        start = page.start_key
    assert seen == sorted(counts, reverse=not ascending)


def test_paging_by_count_keeps_equal_counts_apart() -> None:
    counts = {"a": 1, "b": 1, "c": 1, "d": 2}
    query = parse_group_query({"searchFor": "number_of_users"})
    first = list_groups(query, counts, PageRequest(2))
    second = list_groups(query, counts, PageRequest(2, first.start_key))
    assert [r.group for r in first.items + second.items] == ["a", "b", "c", "d"]
    assert second.end_of_list


def test_a_new_group_between_pages_is_not_skipped_or_repeated() -> None:
    counts = {"a": 1, "c": 1, "e": 1}
    query = parse_group_query({})
    first = list_groups(query, counts, PageRequest(1))
    counts["b"] = 1
    rest = list_groups(query, counts, PageRequest(10, first.start_key))
    assert [r.group for r in first.items + rest.items] == ["a", "b", "c", "e"]


def test_start_key_end_and_bad_keys() -> None:
    query = parse_group_query({})
    assert list_groups(query, COUNTS, PageRequest(5, "end")).items == []
    assert _error(list_groups, query, COUNTS, PageRequest(5, "%%%")) == '"startKey" is invalid.'
    assert _error(list_groups, query, COUNTS, PageRequest(5, "e30")) == '"startKey" is invalid.'
    # A key from a count listing used for a name listing: the types do not compare.
    by_count = list_groups(
        parse_group_query({"searchFor": "number_of_users"}), COUNTS, PageRequest(1)
    )
    assert by_count.start_key is not None
    assert _error(list_groups, query, COUNTS, PageRequest(1, by_count.start_key)) == (
        '"startKey" is invalid.'
    )


def test_an_exact_page_ends_the_list() -> None:
    page = list_groups(parse_group_query({}), {"a": 1, "b": 1}, PageRequest(2))
    assert (len(page.items), page.end_of_list, page.start_key) == (2, True, None)
    assert list_groups(parse_group_query({}), {}, PageRequest(2)).end_of_list


def test_user_query_validation() -> None:
    assert parse_user_query({"group": "g"}) == UserQuery("g")
    assert parse_user_query({"group": "g", "user_id": UID_A, "limit": 3}) == UserQuery("g", UID_A)
    assert _error(parse_user_query, None) == 'Key "group" is required in parameter.'
    assert _error(parse_user_query, {"group": ""}) == 'Key "group" is required in parameter.'
    assert _error(parse_user_query, {"group": 5}) == '"group" must be a string.'
    assert _error(parse_user_query, {"group": "g", "user_id": "bob"}) == (
        'User ID in "user_id" is invalid.'
    )
    assert _error(parse_user_query, {"group": "g", "uid": UID_A}) == (
        'Key name "uid" is invalid in parameter.'
    )


def test_user_listing_rows_filter_and_pages() -> None:
    members = [(UID_B, "s2"), (UID_A, "s3"), (UID_A, "s1")]
    everyone = list_users(UserQuery("g"), members, PageRequest())
    assert everyone.items == [
        UserRow(UID_A, "cid:s1"),
        UserRow(UID_A, "cid:s3"),
        UserRow(UID_B, "cid:s2"),
    ]
    only_b = list_users(UserQuery("g", UID_B), members, PageRequest())
    assert only_b.items == [UserRow(UID_B, "cid:s2")]
    first = list_users(UserQuery("g"), members, PageRequest(2, None, False))
    rest = list_users(UserQuery("g"), members, PageRequest(2, first.start_key, False))
    assert first.items + rest.items == everyone.items[::-1]
    assert rest.end_of_list


def test_group_rows_carry_counts() -> None:
    page = list_groups(parse_group_query({"value": "gamma"}), COUNTS, PageRequest())
    assert page.items == [GroupRow("gamma", 3)]
