"""Listing groups and their users, as the reference's getRealtimeGroups/getRealtimeUsers. Pure.

Groups: ``searchFor`` is ``group`` (compare names) or ``number_of_users`` (compare counts);
``value`` with ``condition`` (``>``, ``>=``, ``=``, ``<``, ``<=``, ``!=`` or the words ``gt``,
``gte``, ``eq``, ``lt``, ``lte``, ``ne``), or ``value`` with ``range`` (``value <= x <= range``;
not together with ``condition``). The reference's docs say ``>=`` on a group name means
"starts with", so it does here. Without a condition the default is ``>`` when ``value`` is
empty (which lists every group) and ``=`` otherwise, as the hosted client fills it in.

``number_of_users`` counts connections, so it equals the length of the group's user list.

Paging follows the reference's FetchOptions: ``limit`` (default 50, at most 1000),
``startKey`` (opaque: the ``startKey`` of the previous page) and ``ascending`` (default
true). Results are sorted by the searched field (name; or count, then name). A page answers
``{list, startKey, endOfList}``; ``startKey`` is ``None`` when the list has ended.

Every bad parameter raises :class:`~agent.errors.RealtimeError` ``INVALID_PARAMETER`` with
the hosted client's texts where it has one (``"value" must be a number.``).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import enum
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from agent.errors import Codes, RealtimeError
from agent.protocol import CID_PREFIX, decode_frame_text, is_user_id

__all__ = [
    "DEFAULT_LIMIT",
    "FETCH_KEYS",
    "MAX_LIMIT",
    "Condition",
    "GroupQuery",
    "GroupRow",
    "Page",
    "PageRequest",
    "SearchFor",
    "UserQuery",
    "UserRow",
    "list_groups",
    "list_users",
    "parse_group_query",
    "parse_page_request",
    "parse_user_query",
]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 1000
FETCH_KEYS: Final = frozenset({"limit", "startKey", "ascending"})
_GROUP_KEYS: Final = frozenset({"searchFor", "value", "condition", "range"})
_USER_KEYS: Final = frozenset({"group", "user_id"})
# FetchOptions values that mean "from the beginning" in the hosted client.
_START_KEYS: Final = frozenset({"", "start"})
_END_KEY: Final = "end"

T = TypeVar("T")
Key = tuple[Any, ...]


class SearchFor(enum.StrEnum):
    """The field a group search compares."""

    GROUP = "group"
    NUMBER_OF_USERS = "number_of_users"


class Condition(enum.Enum):
    """A comparison; ``GTE`` on a group name is "starts with"."""

    GT = "gt"
    GTE = "gte"
    EQ = "eq"
    LT = "lt"
    LTE = "lte"
    NE = "ne"


_CONDITIONS: Final = {
    ">": Condition.GT,
    ">=": Condition.GTE,
    "=": Condition.EQ,
    "<": Condition.LT,
    "<=": Condition.LTE,
    "!=": Condition.NE,
    **{c.value: c for c in Condition},
}

_OPERATORS: Final[dict[Condition, Callable[[Any, Any], Any]]] = {
    Condition.GT: operator.gt,
    Condition.GTE: operator.ge,
    Condition.EQ: operator.eq,
    Condition.LT: operator.lt,
    Condition.LTE: operator.le,
    Condition.NE: operator.ne,
}


@dataclass(frozen=True, slots=True)
class GroupQuery:
    """A validated group search; ``condition`` is ``None`` when ``range_end`` is set."""

    search_for: SearchFor = SearchFor.GROUP
    value: str | float = ""
    condition: Condition | None = Condition.GT
    range_end: str | float | None = None

    def matches(self, group: str, count: int) -> bool:
        """Whether a group with ``count`` users passes this search."""
        subject: str | float = group if self.search_for is SearchFor.GROUP else count
        if self.range_end is not None:
            return _between(subject, self.value, self.range_end)
        assert self.condition is not None  # noqa: S101 (parse_group_query sets one of them)
        return _compare(subject, self.condition, self.value)


@dataclass(frozen=True, slots=True)
class UserQuery:
    """A validated user listing: one group, optionally one user."""

    group: str
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class PageRequest:
    """The reference's FetchOptions."""

    limit: int = DEFAULT_LIMIT
    start_key: str | None = None
    ascending: bool = True


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One group and how many connections are in it."""

    group: str
    number_of_users: int


@dataclass(frozen=True, slots=True)
class UserRow:
    """One connection in a group."""

    user_id: str
    connection_id: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing, as the reference's DatabaseResponse."""

    items: list[T]
    start_key: str | None
    end_of_list: bool


def parse_group_query(params: Mapping[str, Any] | None) -> GroupQuery:
    """Validate getRealtimeGroups parameters (fetch options may ride along and are skipped)."""
    params = dict(params or {})
    _reject_unknown(params, _GROUP_KEYS)
    search_for = _search_for(params.get("searchFor"))
    value = _value(search_for, params.get("value"))
    if params.get("range") is not None:
        if params.get("condition") is not None:
            raise _invalid('"range" cannot be used with "condition".')
        return GroupQuery(search_for, value, None, _range_end(value, params["range"]))
    return GroupQuery(search_for, value, _condition(params.get("condition"), value))


def parse_user_query(params: Mapping[str, Any] | None) -> UserQuery:
    """Validate getRealtimeUsers parameters: ``group`` required, ``user_id`` a UUID."""
    params = dict(params or {})
    _reject_unknown(params, _USER_KEYS)
    group = params.get("group")
    if group is None or group == "":
        raise _invalid('Key "group" is required in parameter.')
    if not isinstance(group, str):
        raise _invalid('"group" must be a string.')
    user_id = params.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or not is_user_id(user_id)):
        raise _invalid('User ID in "user_id" is invalid.')
    return UserQuery(group, user_id)


def parse_page_request(params: Mapping[str, Any] | None) -> PageRequest:
    """Validate FetchOptions: ``limit``, ``startKey``, ``ascending``."""
    params = params or {}
    limit = params.get("limit", DEFAULT_LIMIT)
    if limit is None:
        limit = DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise _invalid(f'"limit" must be an integer from 1 to {MAX_LIMIT}.')
    start_key = params.get("startKey")
    if start_key is not None and not isinstance(start_key, str):
        raise _invalid('"startKey" must be a string.')
    ascending = params.get("ascending", True)
    if ascending is None:
        ascending = True
    if not isinstance(ascending, bool):
        raise _invalid('"ascending" must be a boolean.')
    return PageRequest(limit, None if start_key in _START_KEYS else start_key, ascending)


def list_groups(query: GroupQuery, counts: Mapping[str, int], page: PageRequest) -> Page[GroupRow]:
    """The page of groups (``counts``: group -> connections) that ``query`` selects."""
    rows = [GroupRow(g, n) for g, n in counts.items() if n > 0 and query.matches(g, n)]
    if query.search_for is SearchFor.GROUP:
        return _paginate(rows, lambda r: (r.group,), page)
    return _paginate(rows, lambda r: (r.number_of_users, r.group), page)


def list_users(
    query: UserQuery, members: Iterable[tuple[str, str]], page: PageRequest
) -> Page[UserRow]:
    """The page of connections of ``query.group`` (``members``: (user_id, scid) pairs)."""
    rows = [
        UserRow(uid, CID_PREFIX + scid)
        for uid, scid in members
        if query.user_id is None or uid == query.user_id
    ]
    return _paginate(rows, lambda r: (r.user_id, r.connection_id), page)


def _paginate(rows: list[T], key: Callable[[T], Key], page: PageRequest) -> Page[T]:
    if page.start_key == _END_KEY:
        return Page([], None, True)
    rows.sort(key=key, reverse=not page.ascending)
    start = 0 if page.start_key is None else _position_after(rows, key, page)
    chunk = rows[start : start + page.limit]
    end_of_list = start + page.limit >= len(rows)
    next_key = None if end_of_list or not chunk else _encode_key(key(chunk[-1]))
    return Page(chunk, next_key, end_of_list)


def _position_after(rows: Sequence[T], key: Callable[[T], Key], page: PageRequest) -> int:
    assert page.start_key is not None  # noqa: S101 (checked by the caller)
    after = _decode_key(page.start_key)
    keys = [key(r) for r in rows]
    try:
        if page.ascending:
            return bisect.bisect_right(keys, after)
        # Descending: count the keys that sort at or after ``after`` in reverse order.
        return len(keys) - bisect.bisect_left(keys[::-1], after)
    except TypeError as exc:  # a key from another kind of listing
        raise _invalid('"startKey" is invalid.') from exc


def _encode_key(key: Key) -> str:
    raw = json.dumps(list(key), separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_key(text: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        # Bounded like a frame: a key is one flat list, and deep nesting would recurse.
        value = decode_frame_text(raw.decode(), max_depth=1)
    except (binascii.Error, ValueError) as exc:
        raise _invalid('"startKey" is invalid.') from exc
    if not isinstance(value, list) or not value:
        raise _invalid('"startKey" is invalid.')
    return tuple(value)


def _reject_unknown(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in params:
        if key not in allowed and key not in FETCH_KEYS:
            raise _invalid(f'Key name "{key}" is invalid in parameter.')


def _search_for(raw: Any) -> SearchFor:
    if raw is None:
        return SearchFor.GROUP
    try:
        return SearchFor(raw)
    except ValueError:
        raise _invalid(f'Value: {raw} in "searchFor" is invalid.') from None


def _value(search_for: SearchFor, raw: Any) -> str | float:
    if search_for is SearchFor.NUMBER_OF_USERS:
        if raw is None:
            return 0
        if not _is_number(raw):
            raise _invalid('"value" must be a number.')
        return raw  # type: ignore[no-any-return]
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise _invalid('"value" must be a string.')
    # The hosted client sends " " for "no value"; no group name is empty or starts below it.
    return "" if raw == " " else raw


def _condition(raw: Any, value: str | float) -> Condition:
    if raw is None:
        return Condition.GT if value in ("", 0) else Condition.EQ
    condition = _CONDITIONS.get(raw) if isinstance(raw, str) else None
    if condition is None:
        raise _invalid(f'Value: {raw} in "condition" is invalid.')
    return condition


def _range_end(value: str | float, raw: Any) -> str | float:
    if isinstance(value, str):
        if not isinstance(raw, str):
            raise _invalid('"range" must be a string.')
    elif not _is_number(raw):
        raise _invalid('"range" must be a number.')
    if raw < value:
        raise _invalid('"range" must not be less than "value".')
    return raw  # type: ignore[no-any-return]


def _compare(subject: str | float, condition: Condition, value: str | float) -> bool:
    if condition is Condition.GTE and isinstance(subject, str):
        return subject.startswith(str(value))
    return bool(_OPERATORS[condition](subject, value))


def _between(subject: str | float, low: str | float, high: str | float) -> bool:
    return low <= subject <= high  # type: ignore[operator]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _invalid(message: str) -> RealtimeError:
    return RealtimeError(Codes.INVALID_PARAMETER, message)
