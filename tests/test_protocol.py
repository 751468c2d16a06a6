"""Pure tests of the wire protocol: frames in, actions and envelopes out, no event loop."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from agent.errors import Codes
from agent.protocol import (
    Broadcast,
    FrameKind,
    HubFrame,
    JoinRoom,
    KeepAlive,
    LeaveRoom,
    Limits,
    Notice,
    Notification,
    ProtocolError,
    Rtc,
    SendMessage,
    decode_frame_text,
    encode_client_action,
    encode_hub_frame,
    encode_uri,
    is_user_id,
    notice_text,
    parse_client_frame,
    parse_hub_frame,
    scid_of,
)

UID = "0b6e4c9a-2f55-4c1e-9d7e-3a1b2c3d4e5f"


def _err(result: object) -> ProtocolError:
    assert isinstance(result, ProtocolError), result
    return result


# --- client actions: round trips -------------------------------------------------------------

ROUND_TRIPS = [
    JoinRoom("lobby"),
    JoinRoom("lobby", keep=True),
    JoinRoom(None),
    LeaveRoom("lobby"),
    KeepAlive(),
    SendMessage(UID, {"text": "hi"}),
    SendMessage(UID, "x", Notification("Door", "Someone rang", always=True)),
    Broadcast("lobby", [1, 2, 3]),
    Broadcast("lobby", None, Notification("t", "b")),
    Rtc("abc123", {"sdpoffer": {"type": "offer", "sdp": "v=0"}}),
]


@pytest.mark.parametrize("action", ROUND_TRIPS, ids=lambda a: type(a).__name__)
def test_client_action_round_trip(action: object) -> None:
    text = encode_client_action(action)  # type: ignore[arg-type]
    assert parse_client_frame(text) == action


def test_rtc_accepts_cid_and_scid_prefixes_and_bare_ids() -> None:
    for uid in ("cid:abc", "scid:abc", "abc"):
        frame = json.dumps({"action": "rtc", "uid": uid, "content": {"hungup": "x"}})
        assert parse_client_frame(frame) == Rtc("abc", {"hungup": "x"})


def test_unused_fields_of_the_hosted_client_are_ignored() -> None:
    frame = {
        "action": "sendMessage",
        "uid": UID,
        "content": "hi",
        "token": "eyJ.x.y",
        "notification": None,
        "whatever": 1,
    }
    assert parse_client_frame(json.dumps(frame)) == SendMessage(UID, "hi")


def test_join_with_empty_rid_leaves() -> None:
    assert parse_client_frame('{"action":"joinRoom","rid":""}') == JoinRoom(None)


def test_keep_must_be_literally_true() -> None:
    assert parse_client_frame('{"action":"joinRoom","rid":"g","keep":"yes"}') == JoinRoom("g")


def test_client_frames_may_be_percent_encoded() -> None:
    text = encode_uri(json.dumps({"action": "broadcast", "rid": "g", "content": "50% off"}))
    assert parse_client_frame(text) == Broadcast("g", "50% off")


# --- notifications ----------------------------------------------------------------------------


def test_notification_as_json_string_and_plain_string() -> None:
    frame = {"action": "broadcast", "rid": "g", "content": 1}
    as_json = {**frame, "notification": json.dumps({"title": "T", "body": "B"})}
    assert parse_client_frame(json.dumps(as_json)) == Broadcast("g", 1, Notification("T", "B"))
    as_text = {**frame, "notification": "just text"}
    assert parse_client_frame(json.dumps(as_text)) == Broadcast(
        "g", 1, Notification("", "just text")
    )


def test_notification_config_from_either_place() -> None:
    base = {"action": "broadcast", "rid": "g", "content": 1}
    top = {
        **base,
        "notification": {"title": "T", "body": "B"},
        "notificationConfig": {"always": True},
    }
    nested = {**base, "notification": {"title": "T", "body": "B", "config": {"always": True}}}
    odd = {**base, "notification": {"title": "T", "body": "B"}, "notificationConfig": [True]}
    assert parse_client_frame(json.dumps(top)).notification.always is True  # type: ignore[union-attr]
    assert parse_client_frame(json.dumps(nested)).notification.always is True  # type: ignore[union-attr]
    assert parse_client_frame(json.dumps(odd)).notification.always is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "notification",
    [42, {"title": 1, "body": "b"}, {"title": "t", "body": ["b"]}],
)
def test_bad_notification_shapes(notification: object) -> None:
    frame = {"action": "broadcast", "rid": "g", "content": 1, "notification": notification}
    err = _err(parse_client_frame(json.dumps(frame)))
    assert err.code == Codes.INVALID_PARAMETER
    assert "notification" in err.message
    assert err.action == "broadcast"


def test_notification_over_3kb_is_refused_with_the_reference_text() -> None:
    frame = {
        "action": "sendMessage",
        "uid": UID,
        "content": 1,
        "notification": {"title": "t", "body": "x" * 4000},
    }
    err = _err(parse_client_frame(json.dumps(frame)))
    assert (err.code, err.message) == (Codes.INVALID_PARAMETER, "Notification size exceeds 3kb.")


# --- client frames: every error path ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("{not json", Codes.INVALID_REQUEST, "not valid JSON"),
        ("%E0%A4%A", Codes.INVALID_REQUEST, "not valid JSON"),
        ("%FF", Codes.INVALID_REQUEST, "not valid JSON"),
        ("[1, 2]", Codes.INVALID_REQUEST, "must be a JSON object"),
        ('{"rid":"g"}', Codes.INVALID_REQUEST, "Unknown action None"),
        ('{"action":"fly"}', Codes.INVALID_REQUEST, "Unknown action 'fly'"),
        ('{"action":7}', Codes.INVALID_REQUEST, "Unknown action 7"),
        ('{"action":"joinRoom"}', Codes.INVALID_PARAMETER, '"rid" is required'),
        ('{"action":"joinRoom","rid":5}', Codes.INVALID_PARAMETER, '"rid" must be'),
        ('{"action":"leaveRoom"}', Codes.INVALID_PARAMETER, '"rid" must be'),
        ('{"action":"broadcast","content":1}', Codes.INVALID_PARAMETER, '"rid" must be'),
        ('{"action":"broadcast","rid":"g"}', Codes.INVALID_PARAMETER, '"content" is required'),
        ('{"action":"sendMessage","content":1}', Codes.INVALID_PARAMETER, '"uid" must be'),
        ('{"action":"sendMessage","uid":"","content":1}', Codes.INVALID_PARAMETER, '"uid" must'),
        ('{"action":"rtc","uid":"cid:x","content":"hi"}', Codes.INVALID_PARAMETER, "sdpoffer"),
        ('{"action":"rtc","uid":"cid:x","content":{"nope":1}}', Codes.INVALID_PARAMETER, "pickup"),
    ],
)
def test_bad_client_frames(text: str, code: str, needle: str) -> None:
    err = _err(parse_client_frame(text))
    assert err.code == code
    assert needle in err.message


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF", "\\udbff x"])
def test_lone_surrogates_are_refused_not_raised(escape: str) -> None:
    text = '{"action":"broadcast","rid":"g","content":"' + escape + '"}'
    err = _err(parse_client_frame(text))
    assert (err.code, err.message) == (
        Codes.INVALID_REQUEST,
        "Frame is not valid JSON: it contains a lone UTF-16 surrogate "
        "(a \\ud800-\\udfff escape); send valid Unicode",
    )
    assert _err(parse_hub_frame('{"#message":"' + escape + '"}')).code == Codes.INVALID_REQUEST


def test_a_lone_surrogate_inside_a_json_notification_string_is_plain_text() -> None:
    note = json.dumps({"title": "\ud800", "body": "b"})  # the escape travels inside a string
    frame = {"action": "broadcast", "rid": "g", "content": 1, "notification": note}
    assert parse_client_frame(json.dumps(frame)) == Broadcast("g", 1, Notification("", note))


def test_a_raw_lone_surrogate_in_the_text_is_refused_not_raised() -> None:
    err = _err(parse_client_frame('{"action":"broadcast","rid":"g","content":"\ud800"}'))
    assert err.message == (
        "Frame is not valid JSON: it contains a lone UTF-16 surrogate; send valid Unicode"
    )
    assert "lone UTF-16 surrogate" in _err(parse_hub_frame('{"#message":"\udfff"}')).message


def test_a_proper_surrogate_pair_is_fine() -> None:
    text = '{"action":"broadcast","rid":"g","content":"\\ud83d\\ude00"}'
    assert parse_client_frame(text) == Broadcast("g", "\U0001f600")


def test_every_action_is_listed_in_the_unknown_action_text() -> None:
    err = _err(parse_client_frame('{"action":"nope"}'))
    for name in ("joinRoom", "leaveRoom", "keepAlive", "sendMessage", "broadcast", "rtc"):
        assert name in err.message


def test_content_size_limit_names_both_sizes() -> None:
    limits = Limits(max_content_bytes=10)
    err = _err(
        parse_client_frame('{"action":"broadcast","rid":"g","content":"0123456789"}', limits)
    )
    assert err.message == "Message content is 12 bytes; the limit is 10."
    assert parse_client_frame('{"action":"broadcast","rid":"g","content":"01234567"}', limits) == (
        Broadcast("g", "01234567")
    )


def test_content_size_counts_utf8_bytes() -> None:
    limits = Limits(max_content_bytes=10)
    err = _err(parse_client_frame('{"action":"broadcast","rid":"g","content":"ééééé"}', limits))
    assert "12 bytes" in err.message


def test_group_and_id_length_limits() -> None:
    limits = Limits(max_group_chars=3, max_id_chars=4)
    err = _err(parse_client_frame('{"action":"joinRoom","rid":"abcd"}', limits))
    assert err.message == '"rid" is 4 characters; the limit is 3.'
    err = _err(parse_client_frame('{"action":"sendMessage","uid":"abcde","content":1}', limits))
    assert err.message == '"uid" is 5 characters; the limit is 4.'


# --- hub frames -------------------------------------------------------------------------------


def test_hub_frame_is_encoded_like_encode_uri() -> None:
    frame = HubFrame(
        FrameKind.MESSAGE, {"text": "50% off, é {x}"}, user_id=UID, scid="s1", srid="g"
    )
    text = encode_hub_frame(frame)
    # Only characters encodeURI leaves alone may appear unescaped.
    allowed = set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'();/?:@&=+$,#%"
    )
    assert set(text) <= allowed
    assert "%25" in text  # the raw percent sign is escaped, so decodeURI cannot fail on it
    assert json.loads(unquote(text)) == {
        "#message": {"text": "50% off, é {x}"},
        "#user_id": UID,
        "#scid": "s1",
        "#srid": "g",
    }


def test_encode_uri_matches_javascript_for_reserved_and_unreserved() -> None:
    # Values produced by JavaScript's encodeURI.
    assert encode_uri("a b") == "a%20b"
    assert encode_uri(";,/?:@&=+$#") == ";,/?:@&=+$#"
    assert encode_uri("-_.!~*'()") == "-_.!~*'()"
    assert encode_uri('"{}[]%') == "%22%7B%7D%5B%5D%25"
    assert encode_uri("é") == "%C3%A9"


@pytest.mark.parametrize(
    "frame",
    [
        HubFrame(FrameKind.PRIVATE, "hi", user_id=UID, scid="s"),
        HubFrame(
            FrameKind.NOTICE, notice_text(Notice.USER_JOINED, UID), UID, "s", "g", "USER_JOINED"
        ),
        HubFrame(FrameKind.RTC, {"sdpanswer": {"sdp": "v=0%"}}, UID, "s"),
        HubFrame(FrameKind.ERROR, "bad", code="INVALID_REQUEST", extra={"#action": "broadcast"}),
    ],
    ids=lambda f: f.kind.name,
)
def test_hub_frame_round_trip_encoded_and_plain(frame: HubFrame) -> None:
    encoded = encode_hub_frame(frame)
    assert parse_hub_frame(encoded) == frame
    assert parse_hub_frame(unquote(encoded)) == frame


def test_hub_frame_ignores_non_string_envelope_fields() -> None:
    parsed = parse_hub_frame('{"#message": 1, "#user_id": 5, "#code": null}')
    assert parsed == HubFrame(FrameKind.MESSAGE, 1)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{oops", "not valid JSON"),
        ("%FF", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"a":1}', "'#'"),
    ],
)
def test_bad_hub_frames(text: str, needle: str) -> None:
    assert needle in _err(parse_hub_frame(text)).message


def test_decode_frame_text_accepts_leading_whitespace_and_arrays() -> None:
    assert decode_frame_text('  {"a": 1}') == {"a": 1}
    assert decode_frame_text("[1]") == [1]
    assert decode_frame_text("%5B1%5D") == [1]


# --- small helpers ----------------------------------------------------------------------------


def test_notice_texts_quote_the_user_and_match_the_hosted_client() -> None:
    joined = notice_text(Notice.USER_JOINED, "u1")
    left = notice_text(Notice.USER_LEFT, "u1")
    gone = notice_text(Notice.USER_DISCONNECTED, "u1")
    assert joined == 'User "u1" has joined the message group.'
    assert left == 'User "u1" has left the message group.'
    # The hosted client looks for these exact substrings.
    assert "has been disconnected." in gone
    assert all('"u1"' in t and "message group" in t for t in (joined, left, gone))


def test_is_user_id_and_scid_of() -> None:
    assert is_user_id(UID)
    assert not is_user_id("lobby")
    assert not is_user_id(UID + "0")
    assert scid_of("cid:x") == "x"
    assert scid_of("scid:x") == "x"
    assert scid_of("x") == "x"


# --- depth and non-finite numbers ---------------------------------------------------------------


def _broadcast(content_json: str) -> str:
    return '{"action":"broadcast","rid":"g","content":' + content_json + "}"


def test_nesting_up_to_the_limit_is_accepted_and_one_more_is_refused() -> None:
    # The frame object is level 1, so content may nest 31 more.
    assert parse_client_frame(_broadcast("[" * 31 + "]" * 31)) == Broadcast(
        "g", json.loads("[" * 31 + "]" * 31)
    )
    err = _err(parse_client_frame(_broadcast("[" * 32 + "]" * 32)))
    assert (err.code, err.message) == (
        Codes.INVALID_REQUEST,
        "Frame nests arrays and objects more than 32 levels deep; the limit is 32.",
    )


def test_objects_count_like_arrays_and_brackets_inside_strings_do_not() -> None:
    deep_objects = '{"a":' * 40 + "1" + "}" * 40
    assert "more than 32 levels" in _err(parse_client_frame(_broadcast(deep_objects))).message
    many_brackets = json.dumps(["[[[{{{" * 50, '\\"]]]'])
    assert parse_client_frame(_broadcast(many_brackets)) == Broadcast(
        "g", json.loads(many_brackets)
    )


@pytest.mark.parametrize("text", ["]", "]}", '\\"]', "\\", '\\\\\\"]]', "\\]"])
def test_brackets_hidden_in_strings_cannot_smuggle_depth(text: str) -> None:
    # Each level carries a string of closing brackets (and escapes) that must not count.
    content = "[" + json.dumps(text) + ","
    deep = content * 40 + "1" + "]" * 40
    assert json.loads(deep)  # valid JSON, 40 levels
    assert "more than 32 levels" in _err(parse_client_frame(_broadcast(deep))).message
    shallow = content * 31 + "1" + "]" * 31
    assert isinstance(parse_client_frame(_broadcast(shallow)), Broadcast)


def test_the_depth_limit_follows_limits_and_applies_to_encoded_frames() -> None:
    limits = Limits(max_json_depth=3)
    assert isinstance(parse_client_frame(_broadcast("[[1]]"), limits), Broadcast)
    err = _err(parse_client_frame(encode_uri(_broadcast("[[[1]]]")), limits))
    assert err.message == "Frame nests arrays and objects more than 3 levels deep; the limit is 3."


def test_a_deep_unclosed_frame_is_refused_before_parsing() -> None:
    assert "levels deep" in _err(parse_client_frame("[" * 100_000)).message
    assert "levels deep" in _err(parse_hub_frame('{"#message":' + "[" * 5000)).message


def test_hub_frames_may_nest_up_to_the_ceiling_whatever_the_default() -> None:
    inner = "[" * 255 + "]" * 255
    frame = parse_hub_frame('{"#message":' + inner + "}")
    assert isinstance(frame, HubFrame)
    assert "more than 256 levels" in _err(parse_hub_frame('{"#message":[' + inner + "]}")).message


_NOT_JSON = "which JSON does not allow; send a finite number or a string."
_TOO_BIG = "beyond the range of a double (it would be Infinity); send a smaller number or a string."


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("NaN", f"Frame contains NaN, {_NOT_JSON}"),
        ("Infinity", f"Frame contains Infinity, {_NOT_JSON}"),
        ("-Infinity", f"Frame contains -Infinity, {_NOT_JSON}"),
        ("1e999", f"Frame contains the number 1e999, {_TOO_BIG}"),
        ("-1E400", f"Frame contains the number -1E400, {_TOO_BIG}"),
        ("1" * 40 + "e999", f"Frame contains the number {'1' * 32}..., {_TOO_BIG}"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_value(literal: str, message: str) -> None:
    err = _err(parse_client_frame(_broadcast(f'{{"x":[1,{literal}]}}')))
    assert (err.code, err.message) == (Codes.INVALID_REQUEST, message)
    assert _err(parse_hub_frame(f'{{"#message":{literal}}}')).message == message
    with pytest.raises(ValueError, match=r"JSON does not allow|range of a double"):
        decode_frame_text(f"[{literal}]")


def test_nan_in_a_field_the_hub_ignores_is_refused_too() -> None:
    err = _err(parse_client_frame('{"action":"keepAlive","token":NaN}'))
    assert "NaN" in err.message


def test_large_finite_numbers_and_huge_integers() -> None:
    assert parse_client_frame(_broadcast("[1e308,-1e308,1e-999]")) == Broadcast(
        "g", [1e308, -1e308, 0.0]
    )
    err = _err(parse_client_frame(_broadcast("1" * 5000)))
    assert err.message.startswith("Frame is not valid JSON: Exceeds the limit (4300 digits)")


def test_a_notification_string_that_is_deep_or_not_finite_is_plain_text() -> None:
    for text in ["[" * 2000, '{"title": NaN, "body": "b"}']:
        frame = {"action": "broadcast", "rid": "g", "content": 1, "notification": text}
        result = parse_client_frame(json.dumps(frame))
        assert result == Broadcast("g", 1, Notification("", text))


def test_encoders_never_emit_nan_or_infinity() -> None:
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="Out of range float values"):
            encode_hub_frame(HubFrame(FrameKind.MESSAGE, [value]))
        with pytest.raises(ValueError, match="Out of range float values"):
            encode_client_action(Broadcast("g", {"x": value}))
