"""Property-based fuzz of the frame decoders: any text in, an answer out, never a raise.

The strategies and the ``check_*`` properties are plain module-level names so that
``scripts/fuzz_frames.py`` runs the very same properties for 100,000+ cases; here they run on
a sample small enough for every test run. A property fails with an exception: an assertion
about the answer, or whatever the decoder itself raised.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import Codes
from agent.messages import message_from_frame
from agent.protocol import (
    ACTIONS,
    MAX_JSON_DEPTH,
    Broadcast,
    FrameKind,
    HubFrame,
    JoinRoom,
    KeepAlive,
    LeaveRoom,
    Limits,
    ProtocolError,
    Rtc,
    SendMessage,
    decode_frame_text,
    encode_client_action,
    encode_hub_frame,
    encode_uri,
    parse_client_frame,
    parse_hub_frame,
)

# The CI sample: a few hundred cases per property, no example database left behind.
SAMPLE: Final = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
GROUP: Final = "g"
UID: Final = "0b6e4c9a-2f55-4c1e-9d7e-3a1b2c3d4e5f"
# Numbers Python's parser turns into NaN or an infinity (1e999 overflows a double).
NON_FINITE: Final = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "9.9e99999")
# Pieces that matter to a JSON scanner, a percent-decoder or a depth scan, for mutations.
SHARDS: Final = (
    "[", "]", "{", "}", '"', "\\", ",", ":", "%", "%25", "%7B", "%5B", "\ud800", "\\ud800",
    "\x00", " ", "null", "-", "0", "e", ".", "1e999", "NaN", "Infinity", "[[[[[[[[", "]]]]",
)  # fmt: skip
_RTC_KEYS: Final = ("sdpoffer", "sdpanswer", "candidate", "pickup", "hungup")
_ACTION_TYPES: Final = (JoinRoom, LeaveRoom, KeepAlive, SendMessage, Broadcast, Rtc)


# --- strategies -------------------------------------------------------------------------------

# Text that may hold lone surrogates: json.dumps escapes them ("\ud800"), which is valid
# JSON but no Unicode, at the frame's level or inside a JSON string in a string.
surrogate_texts = st.lists(
    st.sampled_from(["\ud800", "\udfff", "\ud83d\ude00", "\ud83d"]) | st.characters(),
    max_size=4,
).map("".join)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities included
    | st.text(max_size=12)
    | surrogate_texts
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
ids = st.sampled_from([GROUP, "", "cid:x", "scid:x", UID]) | st.text(max_size=10) | json_values
notifications = (
    st.none()
    | json_values
    | json_values.map(json.dumps)
    | st.fixed_dictionaries(
        {"title": st.text(max_size=8), "body": st.text(max_size=8)},
        optional={"config": json_values},
    )
)
contents = json_values | st.dictionaries(st.sampled_from(_RTC_KEYS), json_values, min_size=1)
action_dicts = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS) | json_values},
    optional={
        "rid": ids,
        "uid": ids,
        "content": contents,
        "keep": json_values,
        "notification": notifications,
        "notificationConfig": json_values,
        "token": st.text(max_size=8),
    },
)


def nested(depth: int, opener: str, closed: bool) -> str:
    """``depth`` arrays (``[``) or objects (``{"a":``) around ``1``, closed or left open."""
    closer = "]" if opener == "[" else "}"
    return opener * depth + "1" + (closer * depth if closed else "")


deep_contents = st.builds(
    nested,
    st.integers(0, 1500),
    st.sampled_from(["[", '{"a":']),
    st.booleans(),
)
deep_frames = st.builds(
    lambda action, inner: (
        f'{{"action":"{action}","rid":"{GROUP}","uid":"{UID}","content":{inner}}}'
    ),
    st.sampled_from(["broadcast", "sendMessage", "rtc"]),
    deep_contents | st.builds(lambda inner: f'{{"sdpoffer":{inner}}}', deep_contents),
)
non_finite_frames = st.builds(
    lambda action, literal, where: (
        f'{{"action":"{action}","rid":"{GROUP}","uid":"{UID}","content":'
        + ("[1, {0}]", '{{"sdpoffer":{{"x":{0}}}}}', "{0}")[where].format(literal)
        + "}"
    ),
    st.sampled_from(["broadcast", "sendMessage", "rtc", "joinRoom", "keepAlive"]),
    st.sampled_from(NON_FINITE),
    st.integers(0, 2),
)
well_formed = action_dicts.map(json.dumps) | deep_frames | non_finite_frames


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each edit applied: at a position, cut some characters, insert a shard."""
    for position, cut, shard in edits:
        at = position % (len(text) + 1)
        text = text[:at] + shard + text[at + cut :]
    return text


def percent_encoded(text: str) -> str:
    """``text`` as ``encodeURI`` would send it; a lone surrogate becomes invalid UTF-8."""
    try:
        return encode_uri(text)
    except UnicodeEncodeError:
        return quote(text, safe=";,/?:@&=+$!*'()#", errors="surrogatepass")


mutated = st.builds(
    mutate,
    well_formed,
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 4), st.sampled_from(SHARDS)), max_size=4
    ),
)
garbage = (
    st.text(max_size=80)
    | st.binary(max_size=80).map(lambda raw: raw.decode("latin-1"))
    | st.text(alphabet='[]{}",:\\%NaInfity0123456789e.- ', max_size=120)
)
frame_texts = st.one_of(
    well_formed,
    well_formed.map(percent_encoded),
    mutated,
    mutated.map(percent_encoded),
    garbage,
)
hub_frame_dicts = st.sampled_from([kind.value for kind in FrameKind]).flatmap(
    lambda key: st.fixed_dictionaries(
        {key: contents},
        optional={"#user_id": ids, "#scid": ids, "#srid": ids, "#code": ids, "#x": json_values},
    )
)
hub_frame_texts = st.one_of(
    hub_frame_dicts.map(json.dumps),
    hub_frame_dicts.map(lambda d: encode_uri(json.dumps(d))),
    st.builds(lambda inner: f'{{"#message":{inner}}}', deep_contents),
    st.builds(lambda lit: f'{{"#message":[{lit}],"#code":"X"}}', st.sampled_from(NON_FINITE)),
    frame_texts,
)
limits = st.builds(Limits, max_json_depth=st.integers(1, 64)) | st.just(Limits())


# --- properties -------------------------------------------------------------------------------


def check_client_frame(text: str, limits: Limits) -> None:
    """A client frame is an action whose content a hub can forward, or a clear refusal."""
    result = parse_client_frame(text, limits)
    if isinstance(result, ProtocolError):
        assert result.code in (Codes.INVALID_REQUEST, Codes.INVALID_PARAMETER), result
        assert result.message, result
        assert "Traceback" not in result.message
        return
    assert isinstance(result, _ACTION_TYPES), result
    encode_client_action(result)  # allow_nan=False: raises on NaN or Infinity
    if isinstance(result, (Broadcast, SendMessage, Rtc)):
        assert depth_of(result.content) < limits.max_json_depth
        forwarded = encode_hub_frame(HubFrame(FrameKind.MESSAGE, result.content, UID, "s", GROUP))
        again = parse_hub_frame(forwarded)
        assert isinstance(again, HubFrame), again
        assert again.content == result.content


def check_hub_frame(text: str) -> None:
    """A hub frame decodes to a frame and a callback message, or to a refusal; never raises."""
    frame = parse_hub_frame(text)
    if isinstance(frame, ProtocolError):
        assert frame.code == Codes.INVALID_REQUEST, frame
        assert frame.message, frame
        return
    assert isinstance(frame, HubFrame), frame
    encode_hub_frame(frame)  # finite and within MAX_JSON_DEPTH, or this raises
    message_from_frame(frame)


def depth_of(value: Any) -> int:
    """How deep arrays and objects nest in a decoded value (a scalar is 0)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def is_finite(value: Any) -> bool:
    """Whether no float anywhere in ``value`` is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        value = list(value.values())
    return all(map(is_finite, value)) if isinstance(value, list) else True


def is_unicode(value: Any) -> bool:
    """Whether every string in ``value`` is valid Unicode (no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


# --- the CI sample ----------------------------------------------------------------------------


@SAMPLE
@given(frame_texts, limits)
def test_any_client_frame_is_an_action_or_an_error(text: str, limits: Limits) -> None:
    check_client_frame(text, limits)


@SAMPLE
@given(hub_frame_texts)
def test_any_hub_frame_is_a_frame_or_an_error(text: str) -> None:
    check_hub_frame(text)


@SAMPLE
@given(json_values, st.integers(1, 8))
def test_decoding_accepts_exactly_what_is_shallow_finite_and_unicode(
    value: Any, limit: int
) -> None:
    text = json.dumps(value)
    # What a JSON reader makes of the text: "\ud83d" then "\udfff" is one valid character.
    read = json.loads(text)
    if depth_of(read) <= limit and is_finite(read) and is_unicode(read):
        assert decode_frame_text(text, max_depth=limit) == read
    else:
        with pytest.raises(ValueError, match=r"levels deep|does not allow|range of|surrogate"):
            decode_frame_text(text, max_depth=limit)


@SAMPLE
@given(deep_contents)
def test_deep_nesting_never_reaches_the_parser(inner: str) -> None:
    result = parse_client_frame(f'{{"action":"broadcast","rid":"g","content":{inner}}}')
    depth = 1 + inner.count("[") + inner.count("{")
    if depth > Limits().max_json_depth:
        assert result == ProtocolError(
            Codes.INVALID_REQUEST,
            "Frame nests arrays and objects more than 32 levels deep; the limit is 32.",
        )
    else:
        assert isinstance(result, (Broadcast, ProtocolError))  # unclosed: not valid JSON


@SAMPLE
@given(non_finite_frames)
def test_nan_and_infinity_are_refused_wherever_they_are(text: str) -> None:
    result = parse_client_frame(text)
    assert isinstance(result, ProtocolError)
    assert result.code == Codes.INVALID_REQUEST
    assert ("which JSON does not allow" in result.message) or (
        "beyond the range of a double" in result.message
    )


@pytest.mark.parametrize("depth", [0, MAX_JSON_DEPTH + 1])
def test_the_depth_limit_never_exceeds_the_ceiling(depth: int) -> None:
    assert Limits(max_json_depth=MAX_JSON_DEPTH).max_json_depth == MAX_JSON_DEPTH
    with pytest.raises(ValueError, match=r"max_json_depth must be within 1\.\.256"):
        Limits(max_json_depth=depth)
