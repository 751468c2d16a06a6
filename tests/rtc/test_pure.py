"""Pure parts of calls: channel presets, the call policy, control messages, mDNS wire, ICE."""

from __future__ import annotations

import base64
import json
import socket
import struct
from typing import Any

import pytest

from agent.errors import Codes, RealtimeError, Texts
from agent.rtc.channels import DEFAULT_CHANNELS, ChannelSpec, channel_specs
from agent.rtc.control import CHUNK_BYTES, Blob, ControlServer, blob_messages, parse_request
from agent.rtc.ice import (
    IceOptions,
    IceServer,
    ice_servers,
    sdp_mdns_names,
    sdp_with_hosts,
    select_host_addresses,
)
from agent.rtc.mdns import MdnsRecord, encode_query, is_mdns_name, parse_answers
from agent.rtc.policy import Caller, CallPolicy, Refusal, refusal_content

# -- data channel presets ---------------------------------------------------------------------


def test_presets_are_the_reference_clients() -> None:
    specs = channel_specs(["text-chat", "file-transfer", "video-chat", "voice-chat", "gaming"])
    assert specs == [
        ChannelSpec("text-chat", True, None, 10),
        ChannelSpec("file-transfer", False, 3000, None),
        ChannelSpec("video-chat", True, None, 10),
        ChannelSpec("voice-chat", True, None, 10),
        ChannelSpec("gaming", False, 100, None),
    ]


def test_no_channels_means_one_ordered_default_channel() -> None:
    assert channel_specs(None) == list(DEFAULT_CHANNELS)
    assert DEFAULT_CHANNELS[0].protocol == "default"
    assert DEFAULT_CHANNELS[0].ordered


def test_options_dicts_in_either_spelling() -> None:
    assert channel_specs({"protocol": "control", "ordered": False, "maxRetransmits": 2}) == [
        ChannelSpec("control", False, None, 2)
    ]
    assert channel_specs([{"max_packet_life_time": 50}]) == [ChannelSpec("default", True, 50)]


def test_a_repeated_protocol_is_the_reference_error() -> None:
    with pytest.raises(RealtimeError) as info:
        channel_specs(["gaming", {"protocol": "gaming"}])
    assert info.value.as_dict() == {
        "code": Codes.INVALID_REQUEST,
        "message": Texts.duplicate_channel("gaming"),
    }
    with pytest.raises(RealtimeError, match='protocol "default" already exists'):
        channel_specs([{}, {"ordered": True}])


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        (["chat"], 'Unknown data channel preset "chat"'),
        ([5], "preset name or an options object"),
        ([{"label": "x"}], "Unknown data channel option(s): label"),
        ([{"protocol": 5}], '"protocol" must be'),
        ([{"ordered": "yes"}], '"ordered" must be a boolean'),
        ([{"maxRetransmits": -1}], '"maxRetransmits" must be an integer'),
        ([{"maxPacketLifeTime": 1.5}], '"maxPacketLifeTime" must be an integer'),
        ([{"maxPacketLifeTime": 1, "maxRetransmits": 1}], "not both"),
        ([{"protocol": str(i)} for i in range(65)], "At most 64"),
    ],
)
def test_bad_channel_options_are_named(channels: Any, message: str) -> None:
    with pytest.raises(RealtimeError) as info:
        channel_specs(channels)
    assert info.value.code == Codes.INVALID_PARAMETER
    assert message in info.value.message


# -- who may call -------------------------------------------------------------------------------

ALICE = Caller("AAAA-1", name="alice", role="user")


def test_any_rule_lets_a_caller_in() -> None:
    by_role = CallPolicy.of()
    assert by_role.decide(ALICE, 0) is None
    assert by_role.decide(Caller("x", role="device"), 0) is Refusal.NOT_ALLOWED
    assert by_role.decide(Caller("x"), 0) is Refusal.NOT_ALLOWED  # role unknown
    by_name = CallPolicy.of(users=["Alice"], roles=[])
    assert by_name.decide(ALICE, 0) is None
    by_id = CallPolicy.of(users=["aaaa-1"], roles=[])
    assert by_id.decide(Caller("AAAA-1"), 0) is None
    by_group = CallPolicy.of(groups=["family"], roles=[])
    assert by_group.decide(Caller("x", groups=frozenset({"family"})), 0) is None
    assert by_group.decide(Caller("x", groups=frozenset({"other"})), 0) is Refusal.NOT_ALLOWED
    assert not by_group.allowed_without_groups(Caller("x"))


def test_busy_only_for_callers_who_may_call() -> None:
    policy = CallPolicy.of(max_calls=2)
    assert policy.decide(ALICE, 1) is None
    assert policy.decide(ALICE, 2) is Refusal.BUSY
    assert policy.decide(Caller("x", role="device"), 2) is Refusal.NOT_ALLOWED


def test_refusal_messages_say_why() -> None:
    busy = refusal_content(Refusal.BUSY, device="porch", active=4, limit=4)
    assert busy == {
        "type": "call_refused",
        "reason": "busy",
        "device": "porch",
        "message": '"porch" is busy: 4 calls are in progress (at most 4).',
    }
    stranger = refusal_content(Refusal.NOT_ALLOWED, device="porch", active=4, limit=4)
    assert stranger["message"] == 'You are not allowed to call "porch".'
    assert "busy" not in stranger["message"]


# -- control messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "Binary messages are not commands"),
        ("{" * 20000, "at most"),
        ("not json", "JSON objects like"),
        ("[1]", "JSON objects like"),
        ('{"id": 3}', '"command" is required'),
    ],
)
def test_bad_control_messages_get_an_error_answer(data: str | bytes, message: str) -> None:
    answer = parse_request(data)
    assert isinstance(answer, dict)
    assert answer["ok"] is False
    assert answer["error"]["code"] == Codes.INVALID_REQUEST
    assert message in answer["error"]["message"]


def test_request_ids_come_back_and_odd_ids_become_null() -> None:
    answer = parse_request('{"id": "a", "command": ""}')
    assert isinstance(answer, dict)
    assert answer["id"] == "a"
    request = parse_request('{"id": {"x": 1}, "command": "status", "verbose": true}')
    assert not isinstance(request, dict)
    assert (request.id, request.command, dict(request.args)) == (None, "status", {"verbose": True})


def test_blobs_go_in_base64_chunks_that_rebuild_the_bytes() -> None:
    data = bytes(range(256)) * ((CHUNK_BYTES * 2 + 1000) // 256)
    head, *chunks = blob_messages(9, Blob("image/jpeg", data))
    result = {"mime": "image/jpeg", "bytes": len(data), "encoding": "base64", "chunks": 3}
    assert head == {"id": 9, "ok": True, "result": result}
    assert [c["chunk"] for c in chunks] == [0, 1, 2]
    assert all(len(json.dumps(c)) < 64 * 1024 for c in chunks)  # RFC 8841 section 6
    assert b"".join(base64.b64decode(c["data"]) for c in chunks) == data
    empty = list(blob_messages(1, Blob("image/jpeg", b"")))
    assert empty[0]["result"]["chunks"] == 1
    assert empty[1]["data"] == ""


async def test_control_commands_answer_or_fail_clearly() -> None:
    async def ok(args: Any) -> Any:
        return {"echo": args.get("x")}

    async def refuses(args: Any) -> Any:
        raise RealtimeError(Codes.DEVICE_NOT_FOUND, "no camera")

    async def breaks(args: Any) -> Any:
        raise ZeroDivisionError("internal detail")

    server = ControlServer({"ok": ok, "refuses": refuses, "breaks": breaks})
    assert await server.answer('{"id": 1, "command": "ok", "x": 2}') == [
        {"id": 1, "ok": True, "result": {"echo": 2}}
    ]
    [refused] = await server.answer('{"id": 2, "command": "refuses"}')
    assert refused["error"] == {"code": "DEVICE_NOT_FOUND", "message": "no camera"}
    [broken] = await server.answer('{"id": 3, "command": "breaks"}')
    assert broken["error"] == {"code": "ERROR", "message": '"breaks" failed.'}
    [unknown] = await server.answer('{"id": 4, "command": "reboot"}')
    assert unknown["error"]["message"] == 'Unknown command "reboot". Known: breaks, ok, refuses.'


# -- mDNS wire ------------------------------------------------------------------------------------

# An answer Chromium 1xx sent for one of its ICE names (captured in a network namespace):
# A record with the cache-flush bit, then an NSEC record whose next-name is compressed,
# which dnspython refuses (DecompressionForbidden) and so aioice never sees the address.
CHROMIUM_ANSWER = bytes.fromhex(
    "0000840000000001000000012431396135353533322d316664332d346137362d383734372d363832336331"
    "386337393032056c6f63616c00000180010000007800040a4d00012431396135353533322d316664332d34"
    "6137362d383734372d363832336331386337393032056c6f63616c00002f8001000000780005c046000140"
)
CHROMIUM_NAME = "19a55532-1fd3-4a76-8747-6823c18c7902.local"


def test_chromiums_answer_with_a_compressed_nsec_is_read() -> None:
    assert parse_answers(CHROMIUM_ANSWER) == [MdnsRecord(CHROMIUM_NAME, "10.77.0.1", 120)]


def _response(*records: bytes, questions: bytes = b"") -> bytes:
    count = 1 if questions else 0
    return (
        struct.pack("!HHHHHH", 0, 0x8400, count, len(records), 0, 0) + questions + b"".join(records)
    )


def _name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def _rr(name: bytes, rtype: int, rclass: int, rdata: bytes, ttl: int = 120) -> bytes:
    return name + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def test_aaaa_answers_questions_and_other_classes() -> None:
    address = socket.inet_pton(socket.AF_INET6, "fd00::7")
    question = _name("a.local") + b"\x00\x01\x00\x01"
    data = _response(
        _rr(_name("B.local"), 28, 0x0001, address, ttl=0),
        _rr(b"\xc0\x0c", 1, 0x0003, b"\x01\x02\x03\x04"),  # class CHAOS: skipped
        _rr(b"\xc0\x0c", 1, 0x8001, b"\x01\x02\x03"),  # wrong length for A: skipped
        questions=question,
    )
    assert parse_answers(data) == [MdnsRecord("b.local", "fd00::7", 0)]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 11,
        encode_query("x.local"),  # a query, not a response
        _response(_rr(b"\xc0\x0c", 1, 1, b"\x01\x02\x03\x04")),  # pointer into the header
        _response(_rr(b"\xc0\x0c", 1, 1, b"\x01\x02"))[:-1],  # truncated
        _response(_rr(b"\x80abc", 1, 1, b"\x01\x02\x03\x04")),  # reserved label type
        _response(_rr(b"\x3fabc", 1, 1, b"\x01\x02\x03\x04")),  # label past the end
        _response(b"\xc0\x0c"),  # pointer loop: offset 12 points at itself
        b"\x00" * 10000,
    ],
)
def test_malformed_messages_give_nothing(data: bytes) -> None:
    assert parse_answers(data) == []


def test_queries_ask_one_name_and_check_it() -> None:
    query = encode_query("ABC.local", 28)
    assert query[:12] == struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0)
    assert query[12:] == _name("ABC.local") + b"\x00\x1c\x00\x01"
    assert is_mdns_name("x.local.")
    assert not is_mdns_name("x.example")
    assert not is_mdns_name("")
    with pytest.raises(ValueError, match="not an mDNS name"):
        encode_query("192.0.2.1")


# -- ICE options ----------------------------------------------------------------------------------

MACHINE = [
    ("lo", "127.0.0.1"),
    ("eth0", "192.0.2.2"),
    ("eth0", "fd00::2"),
    ("wlan0", "198.51.100.4"),
]


def test_host_addresses_are_restricted_only_when_asked() -> None:
    assert select_host_addresses(MACHINE, IceOptions()) is None
    assert select_host_addresses(MACHINE, IceOptions(interfaces=("eth0",))) == [
        "192.0.2.2",
        "fd00::2",
    ]
    only_v4 = IceOptions(interfaces=("eth0",), ipv6=False)
    assert select_host_addresses(MACHINE, only_v4) == ["192.0.2.2"]
    loopback = IceOptions(addresses=("127.0.0.1", "203.0.113.9"))
    assert select_host_addresses(MACHINE, loopback) == ["127.0.0.1"]  # the other is not here
    both = IceOptions(interfaces=("wlan0",), addresses=("fd00:0::2", "bogus"))
    assert select_host_addresses(MACHINE, both) == ["fd00::2", "198.51.100.4"]


def test_ice_servers_are_explicit_and_checked() -> None:
    default = [IceServer(("stun:stun.example.net",))]
    assert ice_servers(None, default) == default
    assert ice_servers([], default) == []
    assert ice_servers("", default) == []
    assert ice_servers("stun:192.0.2.1:3478", default) == [IceServer(("stun:192.0.2.1:3478",))]
    turn = {"urls": "turn:192.0.2.1?transport=tcp", "username": "u", "credential": "c"}
    assert ice_servers([turn], default) == [IceServer(("turn:192.0.2.1?transport=tcp",), "u", "c")]
    for bad in (5, [5], "http://x", {"urls": []}, ["stun:x"] * 9):
        with pytest.raises(RealtimeError) as info:
            ice_servers(bad, default)
        assert info.value.code == Codes.INVALID_PARAMETER
    assert IceServer(("stun:x",)).to_aiortc().urls == ["stun:x"]


def test_mdns_candidates_in_sdp_are_replaced_or_dropped() -> None:
    sdp = (
        "v=0\r\n"
        "a=candidate:1 1 udp 2113937151 aaa.local 5000 typ host\r\n"
        "a=candidate:2 1 udp 2113937151 bbb.local 5001 typ host\r\n"
        "a=candidate:3 1 udp 2113937151 192.0.2.1 5002 typ host\r\n"
        "a=candidate:4 1\r\n"
    )
    assert sdp_mdns_names(sdp) == {"aaa.local", "bbb.local"}
    rewritten = sdp_with_hosts(sdp, {"aaa.local": "10.0.0.1", "bbb.local": None})
    assert rewritten == (
        "v=0\r\n"
        "a=candidate:1 1 udp 2113937151 10.0.0.1 5000 typ host\r\n"
        "a=candidate:3 1 udp 2113937151 192.0.2.1 5002 typ host\r\n"
        "a=candidate:4 1\r\n"
    )
