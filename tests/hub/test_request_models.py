"""The hub's request bodies: typed models whose refusals are the shared validators'.

Pure part: each model refuses what its shared validator refuses, with the same text, and
its JSON schema comes from its types. Then a real hub on 127.0.0.1: wrong types get 400
INVALID_PARAMETER with the reference's text, and ``/openapi.json`` describes the types.
"""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from agent.errors import Codes, RealtimeError
from agent.hub import listing
from agent.hub.accounts import Role
from agent.hub.app import GroupsRequest, UsersRequest
from agent.hub.openapi import REFUSED, refusal
from agent.hub.push_api import SendBatchBody, SendBody, SubscriptionBody, UnsubscribeBody
from agent.push.message import Urgency, parse_send_request
from agent.push.service import MAX_BATCH, check_batch
from agent.push.settings import MAX_TTL_SECONDS
from agent.push.subscriptions import MAX_ENDPOINT_CHARS, parse_subscription

from .conftest import Hub

USER_ID = "0d7e8f8a-1b2c-4d5e-8f9a-0b1c2d3e4f5a"
# An uncompressed P-256 point (the generator) and a 16-byte secret, base64url.
P256DH = "BGsX0fLhLEJH-Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"
AUTH = "AAECAwQFBgcICQoLDA0ODw"
ENDPOINT = "https://push.example.net/send/abc"


def _refused(model: type[BaseModel], body: Any) -> str:
    """The text ``model`` refuses ``body`` with (it must refuse it)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    message = refusal(caught.value.errors())
    assert message is not None, caught.value.errors()
    return message


def _shared_text(check: Any) -> str:
    with pytest.raises(RealtimeError) as caught:
        check()
    assert caught.value.code == Codes.INVALID_PARAMETER
    return caught.value.message


# --- pure: one definition of each rule ----------------------------------------------------

GROUP_BODIES = [
    {"searchFor": "number_of_users", "value": "3"},
    {"searchFor": "group", "value": 3},
    {"searchFor": "colour"},
    {"searchFor": 7},
    {"value": "a", "condition": "~"},
    {"value": "a", "condition": 1},
    {"value": "a", "range": 5},
    {"value": "b", "range": "a"},
    {"value": "a", "range": "b", "condition": ">"},
    {"colour": "red"},
    {"limit": 0},
    {"limit": "5"},
    {"limit": True},
    {"limit": 1001},
    {"startKey": 5},
    {"ascending": "yes"},
]


@pytest.mark.parametrize("body", GROUP_BODIES)
def test_groups_request_refuses_as_the_listing_core_does(body: dict[str, Any]) -> None:
    expected = _shared_text(
        lambda: (listing.parse_group_query(body), listing.parse_page_request(body))
    )
    assert _refused(GroupsRequest, body) == expected


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"group": ""},
        {"group": 5},
        {"group": "a", "user_id": "x"},
        {"group": "a", "user_id": 5},
        {"group": "a", "colour": 1},
        {"group": "a", "limit": -1},
    ],
)
def test_users_request_refuses_as_the_listing_core_does(body: dict[str, Any]) -> None:
    expected = _shared_text(
        lambda: (listing.parse_user_query(body), listing.parse_page_request(body))
    )
    assert _refused(UsersRequest, body) == expected


def test_a_valid_listing_body_carries_the_cores_query_and_page() -> None:
    groups = GroupsRequest.model_validate(
        {"searchFor": "number_of_users", "value": 2, "range": 4, "limit": 3, "ascending": False}
    )
    assert groups.query == listing.GroupQuery(listing.SearchFor.NUMBER_OF_USERS, 2, None, 4)
    assert groups.page == listing.PageRequest(limit=3, ascending=False)
    users = UsersRequest.model_validate({"group": "room", "user_id": USER_ID.upper()})
    assert users.query == listing.UserQuery("room", USER_ID.upper())
    assert users.page == listing.PageRequest()


def test_every_condition_the_schema_names_is_one_the_core_takes() -> None:
    spellings = get_args(get_args(GroupsRequest.model_fields["condition"].annotation)[0])
    assert len(spellings) == 12
    for spelling in spellings:
        listing.parse_group_query({"value": "a", "condition": spelling})


SEND_BODIES = [
    [],
    {"title": 1},
    {"body": "no title"},
    {"title": "t", "body": None},
    {"title": "t", "extra": 1},
    {"title": "t", "user_ids": "bob"},
    {"title": "t", "user_ids": []},
    {"title": "t", "user_ids": [5]},
    {"title": "t", "users": ["no spaces"]},
    {"title": "t", "users": "alice"},
    {"title": "t", "roles": ["owner"]},
    {"title": "t", "urgency": "urgent"},
    {"title": "t", "ttl": -1},
    {"title": "t", "ttl": "60"},
    {"title": "t", "ttl": True},
    {"title": "t", "topic": "has space"},
    {"title": "t", "id": "bad id"},
    {"title": "t", "id": 7},
    {"title": "t", "url": "https://evil.example/"},
    {"title": "t", "snapshot": "javascript:x"},
    {"title": "t", "call": "yes"},
    {"title": "t", "call": None},
    {"title": "t", "time": "noon"},
    {"title": "t", "device": ""},
    {"title": "é" * 1600},
]


@pytest.mark.parametrize("body", SEND_BODIES)
def test_send_body_refuses_as_the_push_core_does(body: Any) -> None:
    expected = _shared_text(lambda: parse_send_request(body, default_ttl=60))
    assert _refused(SendBody, body) == expected


def test_a_send_body_with_every_field_is_what_the_core_accepts() -> None:
    body = {
        "title": "Doorbell",
        "body": "Someone is at the door",
        "user_ids": [USER_ID],
        "users": ["alice"],
        "roles": ["admin"],
        "id": "door:1",
        "urgency": "high",
        "ttl": 120,
        "topic": "door",
        "url": "/?device=door",
        "device": "door",
        "event": "ring",
        "time": 1700000000,
        "snapshot": "/api/snapshots/abc",
        "call": True,
    }
    model = SendBody.model_validate(body)
    assert set(model.model_fields_set) == set(body) == set(SendBody.model_fields)
    dumped = model.model_dump(mode="json", exclude_unset=True)
    assert parse_send_request(dumped, default_ttl=60) == parse_send_request(body, default_ttl=60)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("not an object", "must be an object"),
        ({"endpoint": 5, "keys": {"p256dh": P256DH, "auth": AUTH}}, '"endpoint"'),
        ({"endpoint": "http://push.example.net/x", "keys": {}}, '"endpoint"'),
        ({"endpoint": ENDPOINT}, '"keys"'),
        ({"endpoint": ENDPOINT, "keys": {"p256dh": P256DH, "auth": 16}}, '"keys.auth"'),
        ({"endpoint": ENDPOINT, "keys": {"p256dh": "AAAA", "auth": AUTH}}, '"keys.p256dh"'),
    ],
)
def test_subscription_body_refuses_as_the_push_core_does(body: Any, named: str) -> None:
    expected = _shared_text(lambda: parse_subscription(body, allow_private=True))
    assert named in expected
    assert _refused(SubscriptionBody, body) == expected


def test_the_subscription_models_take_what_a_browser_sends() -> None:
    browser = {
        "endpoint": ENDPOINT,
        "expirationTime": None,
        "keys": {"p256dh": P256DH, "auth": AUTH},
    }
    assert SubscriptionBody.model_validate(browser).model_dump(mode="json") == browser
    assert UnsubscribeBody.model_validate(browser).endpoint == ENDPOINT
    assert '"endpoint"' in _refused(UnsubscribeBody, {"endpoint": None})


@pytest.mark.parametrize("alerts", [[], [{}] * (MAX_BATCH + 1), "x", [["title"]], None])
def test_a_batch_is_a_list_of_1_to_max_objects(alerts: Any) -> None:
    expected = _shared_text(lambda: check_batch(alerts))
    assert _refused(SendBatchBody, {"alerts": alerts}) == expected
    assert SendBatchBody.model_validate({"alerts": [{"title": 1}]}).alerts == [{"title": 1}]


def test_the_schemas_come_from_the_types() -> None:
    groups = GroupsRequest.model_json_schema()
    limit = groups["properties"]["limit"]["anyOf"][0]
    assert limit == {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT}
    assert groups["additionalProperties"] is False
    assert groups["$defs"]["SearchFor"]["enum"] == [s.value for s in listing.SearchFor]
    users = UsersRequest.model_json_schema()
    assert users["required"] == ["group"]
    assert users["properties"]["user_id"]["anyOf"][0] == {"type": "string", "format": "uuid"}
    send = SendBody.model_json_schema()
    assert send["required"] == ["title"]
    assert send["additionalProperties"] is False
    assert send["properties"]["ttl"]["anyOf"][0]["maximum"] == MAX_TTL_SECONDS
    assert send["$defs"]["Urgency"]["enum"] == [u.value for u in Urgency]
    assert send["$defs"]["Role"]["enum"] == [r.value for r in Role]
    endpoint = SubscriptionBody.model_json_schema()["properties"]["endpoint"]
    assert (endpoint["format"], endpoint["maxLength"]) == ("uri", MAX_ENDPOINT_CHARS)
    batch = SendBatchBody.model_json_schema()["properties"]["alerts"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH)
    for model in (GroupsRequest, UsersRequest, SendBody, SubscriptionBody, UnsubscribeBody):
        for name, prop in model.model_json_schema()["properties"].items():
            assert {"type", "anyOf", "$ref"} & set(prop), f"{model.__name__}.{name} untyped"


def test_refusal_finds_the_shared_text_and_nothing_else() -> None:
    text = 'Value: {code} in "searchFor" is invalid.'  # braces are not a template
    assert refusal([{"type": "missing", "msg": "x"}, {"type": REFUSED, "msg": text}]) == text
    assert refusal([{"type": "int_type", "msg": "Input should be a valid integer"}]) is None
    assert _refused(GroupsRequest, {"searchFor": "{code}"}) == text


# --- a real hub ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("realtime/groups", {"limit": "5"}, '"limit" must be an integer from 1 to 1000.'),
        ("realtime/groups", {"ascending": "yes"}, '"ascending" must be a boolean.'),
        ("realtime/groups", {"startKey": 1}, '"startKey" must be a string.'),
        ("realtime/users", None, 'Key "group" is required in parameter.'),
        ("realtime/users", {"group": 5}, '"group" must be a string.'),
        ("realtime/users", {"group": "a", "user_id": 5}, 'User ID in "user_id" is invalid.'),
        ("push/send", {"title": "t", "ttl": "60"}, '"ttl" must be whole seconds'),
        ("push/send", {"title": "t", "urgency": 3}, '"urgency" must be one of'),
        ("push/send", {"title": "t", "colour": 3}, "Unknown field(s): colour."),
        ("push/subscribe", {"endpoint": 5}, '"endpoint" must be a non-empty string'),
        ("push/unsubscribe", {"endpoint": []}, '"endpoint" must be a non-empty string'),
        ("push/send-batch", {"alerts": []}, '"alerts" must be a list of 1 to 100 send requests'),
        ("realtime/groups", [1], "body: Input should be a valid dictionary"),
    ],
)
async def test_a_wrong_type_is_400_with_the_reference_text(
    hub: Hub, path: str, body: Any, message: str
) -> None:
    async with hub.http(hub.user("root", role=Role.ADMIN)) as http:
        response = await http.post(f"/api/{path}", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == Codes.INVALID_PARAMETER
    assert response.json()["message"].startswith(message)


async def test_the_published_document_describes_the_typed_bodies(hub: Hub) -> None:
    async with hub.http() as http:
        spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for model in (GroupsRequest, UsersRequest, SendBody, SubscriptionBody, SendBatchBody):
        assert schemas[model.__name__]["properties"].keys() == model.model_fields.keys()
    limit = schemas["GroupsRequest"]["properties"]["limit"]["anyOf"][0]
    assert (limit["minimum"], limit["maximum"]) == (1, listing.MAX_LIMIT)
    assert schemas["SendBody"]["properties"]["urgency"]["anyOf"][0] == {
        "$ref": "#/components/schemas/Urgency"
    }
    body = spec["paths"]["/api/push/send"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/SendBody"}
