"""Wire compatibility with the hosted service's browser client, pinned with raw frames.

That client sends ``JSON.stringify`` frames carrying its ``token`` (and notification
fields), and runs ``JSON.parse(decodeURI(event.data))`` on every frame it receives,
dropping any frame that throws. ``decode_uri`` below is ECMAScript's decodeURI (ECMA-262
"Decode (string, reservedSet)"), so these tests fail if a hub frame would be dropped or
altered by that client.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from agent.errors import Codes

from .conftest import TIMEOUT, Hub, User

# decodeURI leaves escapes of these characters as they are (ECMA-262 uriReserved + "#").
_RESERVED = set(";/?:@&=+$,#")
_ESCAPE = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


class URIError(ValueError):
    """What decodeURI throws; the hosted client then drops the frame."""


def decode_uri(text: str) -> str:
    """JavaScript's decodeURI."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise URIError("malformed escape")
    return _ESCAPE.sub(_decode_run, text)


def _decode_run(match: re.Match[str]) -> str:
    escapes = match.group(0)
    raw = bytes.fromhex(escapes.replace("%", ""))
    out, i = [], 0
    while i < len(raw):
        width = _utf8_width(raw[i])
        chunk = raw[i : i + width]
        try:
            char = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise URIError("malformed UTF-8") from exc
        original = escapes[3 * i : 3 * (i + width)]
        out.append(original if char in _RESERVED else char)
        i += width
    return "".join(out)


def _utf8_width(first: int) -> int:
    for width, mask, value in ((1, 0x80, 0x00), (2, 0xE0, 0xC0), (3, 0xF0, 0xE0), (4, 0xF8, 0xF0)):
        if first & mask == value:
            return width
    raise URIError("malformed UTF-8")


def test_decode_uri_behaves_like_javascript() -> None:
    assert decode_uri("%7B%22a%22:1%7D") == '{"a":1}'
    assert decode_uri("%C3%BC%F0%9F%98%80") == "ü😀"
    assert decode_uri("%23%3F%25") == "%23%3F%"  # reserved escapes stay; %25 is "%"
    for bad in ("100%", "%zz", "%C3", "%FF"):
        with pytest.raises(URIError):
            decode_uri(bad)


async def _hosted_send(ws: ClientConnection, user: User, frame: dict[str, Any]) -> None:
    # The hosted client adds its token to every frame and uses JSON.stringify (no spaces,
    # non-ASCII characters raw).
    await ws.send(
        json.dumps({**frame, "token": user.token}, separators=(",", ":"), ensure_ascii=False)
    )


async def _hosted_recv(ws: ClientConnection) -> tuple[str, dict[str, Any]]:
    raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(raw, str)
    return raw, json.loads(decode_uri(raw))


TRICKY = [
    "100% sure",
    "%41 is not A",
    "%%%",
    "a#b?c&d=e+f;g/h:i@j$k,l",
    "grüße, 日本, 😀",
    'quotes " and \\ backslash',
    "line\nbreak\ttab\u2028sep",
    {"nested": ["%E2%82%AC", "€", 1.5, None, True]},
]


@pytest.mark.parametrize("content", TRICKY)
async def test_every_hub_frame_survives_decode_uri_unchanged(hub: Hub, content: Any) -> None:
    alice = hub.user("alice")
    ws = await hub.connect(alice)
    await _hosted_send(ws, alice, {"action": "joinRoom", "rid": "grüße #1"})
    raw, notice = await _hosted_recv(ws)
    assert raw.isascii()
    assert notice["#srid"] == "grüße #1"

    await _hosted_send(ws, alice, {"action": "broadcast", "rid": "grüße #1", "content": content})
    raw, message = await _hosted_recv(ws)
    assert raw.isascii()
    assert message["#message"] == content
    await _hosted_send(
        ws, alice, {"action": "sendMessage", "uid": alice.user_id, "content": content}
    )
    _, private = await _hosted_recv(ws)
    assert private["#private"] == content


async def test_frame_shapes_are_pinned(hub: Hub) -> None:
    alice, bob = hub.user("alice"), hub.user("bob")
    a, b = await hub.connect(alice), await hub.connect(bob)
    await _hosted_send(a, alice, {"action": "joinRoom", "rid": "g"})
    _, own = await _hosted_recv(a)
    assert set(own) == {"#notice", "#user_id", "#scid", "#srid", "#code"}
    await _hosted_send(b, bob, {"action": "joinRoom", "rid": "g"})
    _, bob_joined = await _hosted_recv(a)
    await _hosted_recv(b)

    await _hosted_send(a, alice, {"action": "broadcast", "rid": "g", "content": "m"})
    _, message = await _hosted_recv(b)
    assert set(message) == {"#message", "#user_id", "#scid", "#srid"}
    await _hosted_recv(a)

    await _hosted_send(
        a,
        alice,
        {
            "action": "sendMessage",
            "uid": bob.user_id,
            "content": "p",
            "notification": {"title": "t", "body": "b"},
            "notificationConfig": {"always": False},
        },
    )
    _, private = await _hosted_recv(b)
    assert set(private) == {"#private", "#user_id", "#scid"}
    await _hosted_recv(a)

    rtc = {"action": "rtc", "uid": f"cid:{bob_joined['#scid']}", "content": {"candidate": {}}}
    await _hosted_send(a, alice, rtc)
    _, relayed = await _hosted_recv(b)
    assert relayed == {"#rtc": {"candidate": {}}, "#user_id": alice.user_id, "#scid": own["#scid"]}

    await _hosted_send(a, alice, {"action": "keepAlive"})
    await _hosted_send(a, alice, {"action": "broadcast", "rid": "other", "content": 1})
    _, error = await _hosted_recv(a)
    assert error == {
        "#error": "User has not joined to the recipient group. Run joinRealtime('other')",
        "#code": Codes.INVALID_REQUEST,
    }


async def test_percent_encoded_client_frames_are_accepted(hub: Hub) -> None:
    # Our own clients may send what they receive: encoded frames are read too.
    alice = hub.user("alice")
    ws = await hub.connect(alice)
    await ws.send("%7B%22action%22:%22joinRoom%22,%22rid%22:%22g%22%7D")
    _, notice = await _hosted_recv(ws)
    assert notice["#code"] == "USER_JOINED"
