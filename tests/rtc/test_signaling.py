"""The pure signaling machine: rtc contents in, effects out (no loop, no peers)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.rtc.signaling import (
    AddCandidates,
    ApplyAnswer,
    ApplyOffer,
    CallState,
    Closed,
    CloseReason,
    Description,
    IceCandidate,
    Ignored,
    PickedUp,
    Ring,
    Role,
    Send,
    Signaling,
    SignalingLimits,
    Switchboard,
    parse_candidate,
    parse_description,
)

CID = "cid:remote"
ME = "11111111-1111-4111-8111-111111111111"
THEM = "22222222-2222-4222-8222-222222222222"
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\n"}
LOCAL_OFFER = Description("offer", "v=0 local offer")
LOCAL_ANSWER = Description("answer", "v=0 local answer")
HOST = "candidate:1 1 udp 2113937151 192.0.2.7 50000 typ host generation 0"
MDNS = "candidate:2 1 udp 2113937151 6f1f0a1e-8c3b-4e54-9d3e-0a5c6e2b1f00.local 50001 typ host"


def candidate(text: str = HOST, **extra: Any) -> dict[str, Any]:
    return {"candidate": text, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u", **extra}


def parsed(text: str = HOST) -> IceCandidate:
    result = parse_candidate(candidate(text))
    assert isinstance(result, IceCandidate)
    return result


def ignored(effects: list[Any]) -> list[str]:
    return [e.reason for e in effects if isinstance(e, Ignored)]


# -- parsing ----------------------------------------------------------------------------------


def test_a_browser_candidate_keeps_its_fields_and_round_trips() -> None:
    result = parsed(MDNS)
    assert result.host == "6f1f0a1e-8c3b-4e54-9d3e-0a5c6e2b1f00.local"
    assert (result.sdp_mid, result.sdp_mline_index, result.username_fragment) == ("0", 0, "u")
    assert result.to_json() == candidate(MDNS)
    moved = result.with_host("192.0.2.9")
    assert moved.host == "192.0.2.9"
    assert moved.candidate.split()[5:] == result.candidate.split()[5:]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("text", "must be an object"),
        ({"candidate": 5, "sdpMid": "0"}, "candidate string"),
        ({"candidate": "x" * 2000, "sdpMid": "0"}, "candidate string"),
        (candidate(sdpMid=7), "sdpMid"),
        (candidate(sdpMid="m" * 100), "sdpMid"),
        (candidate(sdpMLineIndex="0"), "sdpMLineIndex"),
        (candidate(sdpMLineIndex=True), "sdpMLineIndex"),
        (candidate(sdpMLineIndex=-1), "sdpMLineIndex"),
        (candidate(sdpMid=None, sdpMLineIndex=None), "sdpMid or sdpMLineIndex"),
        (candidate("candidate:1 1 udp 5 192.0.2.7 50000"), "FOUNDATION"),
        (candidate("candidate:1 1 udp 5 192.0.2.7 50000 type host"), "FOUNDATION"),
        (candidate("candidate:1 x udp 5 192.0.2.7 50000 typ host"), "numbers"),
        (candidate("candidate:1 1 udp 5 192.0.2.7 70000 typ host"), "out of range"),
    ],
)
def test_bad_candidates_are_named(value: Any, reason: str) -> None:
    result = parse_candidate(value)
    assert isinstance(result, str)
    assert reason in result


@pytest.mark.parametrize("value", [None, candidate(""), candidate("candidate:")])
def test_end_of_candidates_marks_parse_to_none(value: Any) -> None:
    assert parse_candidate(value) is None


def test_candidate_without_ufrag_or_mid_but_with_index() -> None:
    result = parse_candidate({"candidate": HOST, "sdpMLineIndex": 1})
    assert result == IceCandidate(HOST.removeprefix("candidate:"), None, 1, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("v=0", "must be an object"),
        ({"type": "answer", "sdp": "v=0"}, "has type 'answer'"),
        ({"type": "offer"}, "no sdp"),
        ({"type": "offer", "sdp": "   "}, "no sdp"),
        ({"type": "offer", "sdp": "v" * 70000}, "the limit"),
    ],
)
def test_bad_descriptions_are_named(value: Any, reason: str) -> None:
    result = parse_description(value, "offer")
    assert isinstance(result, str)
    assert reason in result


def test_descriptions_round_trip() -> None:
    assert parse_description(OFFER, "offer") == Description("offer", OFFER["sdp"])
    assert Description("offer", "v=0").to_json() == {"type": "offer", "sdp": "v=0"}


# -- the caller ---------------------------------------------------------------------------------


def caller() -> Signaling:
    call = Signaling(CID, Role.CALLER, local_id=ME)
    assert call.state is CallState.NEW
    return call


def calling() -> Signaling:
    call = caller()
    assert call.offer_ready(LOCAL_OFFER) == [Send(CID, {"sdpoffer": LOCAL_OFFER.to_json()})]
    assert call.state is CallState.CALLING
    return call


def test_caller_order_offer_answer_candidates_pickup() -> None:
    call = calling()
    assert call.receive({"candidate": candidate()}) == []  # held: no answer yet
    assert call.receive({"sdpanswer": ANSWER}) == [ApplyAnswer(CID, Description(**ANSWER))]
    assert call.receive({"candidate": candidate(MDNS)}) == []  # still applying
    assert call.answer_applied() == [AddCandidates(CID, (parsed(), parsed(MDNS)))]
    assert call.state is CallState.ANSWERED
    assert call.receive({"candidate": candidate()}) == [AddCandidates(CID, (parsed(),))]
    assert call.receive({"pickup": THEM}) == [PickedUp(CID)]
    assert call.state is CallState.CONNECTED
    assert call.hangup() == [Send(CID, {"hungup": ME}), Closed(CID, CloseReason.LOCAL)]
    assert call.state is CallState.CLOSED


def test_pickup_before_the_answer_is_applied_resolves_after_it() -> None:
    call = calling()
    assert call.receive({"pickup": THEM, "sdpanswer": ANSWER}) == [
        ApplyAnswer(CID, Description(**ANSWER))
    ]
    assert call.answer_applied() == [PickedUp(CID)]
    assert call.state is CallState.CONNECTED


def test_caller_ignores_what_a_caller_should_not_get() -> None:
    call = calling()
    assert "glare" in ignored(call.receive({"sdpoffer": OFFER}))[0]
    assert "no answer" in ignored(call.answer_applied())[0]
    assert "no offer" in ignored(call.answer_ready(LOCAL_ANSWER))[0]
    assert "accepted while calling" in ignored(call.accept())
    assert "offer made while calling" in ignored(call.offer_ready(LOCAL_OFFER))
    call.receive({"sdpanswer": ANSWER})
    assert "answer while calling" in ignored(call.receive({"sdpanswer": ANSWER}))
    call.answer_applied()
    assert "answer while answered" in ignored(call.receive({"sdpanswer": ANSWER}))
    call.receive({"pickup": THEM})
    assert "pickup while connected" in ignored(call.receive({"pickup": THEM}))
    assert call.receive({"pickup": ""}) == []  # a falsy pickup is no pickup


def test_caller_hanging_up_before_sending_the_offer_tells_nobody() -> None:
    call = caller()
    assert call.hangup() == [Closed(CID, CloseReason.LOCAL)]
    assert call.hangup() == []  # idempotent
    assert ignored(call.receive({"pickup": THEM})) == ["the call is over"]


def test_remote_hangup_closes_without_answering_and_wins_over_other_keys() -> None:
    call = calling()
    effects = call.receive({"hungup": THEM, "sdpanswer": ANSWER})
    assert effects == [Closed(CID, CloseReason.REMOTE)]


def test_failure_tells_the_other_side() -> None:
    call = calling()
    assert call.fail() == [Send(CID, {"hungup": ME}), Closed(CID, CloseReason.FAILED)]


def test_bad_remote_input_is_ignored_with_a_reason() -> None:
    call = calling()
    assert "must be an object" in ignored(call.receive({"candidate": "x"}))[0]
    assert "has type" in ignored(call.receive({"sdpanswer": OFFER}))[0]
    assert call.receive({"candidate": None}) == []  # end-of-candidates: nothing to do


def test_candidates_held_before_the_description_are_bounded() -> None:
    call = Signaling(CID, Role.CALLER, local_id=ME, limits=SignalingLimits(max_candidates=2))
    call.offer_ready(LOCAL_OFFER)
    call.receive({"candidate": candidate()})
    call.receive({"candidate": candidate()})
    assert "too many" in ignored(call.receive({"candidate": candidate()}))[0]


def test_an_empty_local_id_still_sends_a_truthy_hungup() -> None:
    call = Signaling(CID, Role.CALLER, local_id="")
    call.offer_ready(LOCAL_OFFER)
    assert call.hangup()[0] == Send(CID, {"hungup": "unknown"})
    assert "caller" in repr(call)


# -- the callee ---------------------------------------------------------------------------------


def ringing() -> Signaling:
    call = Signaling(CID, Role.CALLEE, local_id=ME, user_id=THEM)
    assert call.state is CallState.RINGING
    assert call.receive({"sdpoffer": OFFER}) == []
    assert call.offer == Description(**OFFER)
    return call


def test_callee_answers_then_picks_up_and_adds_held_candidates() -> None:
    call = ringing()
    assert call.receive({"candidate": candidate()}) == []
    assert call.accept() == [ApplyOffer(CID, Description(**OFFER))]
    assert call.state is CallState.ACCEPTING
    assert call.offer is None
    assert call.receive({"candidate": candidate(MDNS)}) == []  # held while applying
    assert call.answer_ready(LOCAL_ANSWER) == [
        Send(CID, {"sdpanswer": LOCAL_ANSWER.to_json()}),
        AddCandidates(CID, (parsed(), parsed(MDNS))),
        Send(CID, {"pickup": ME}),
        PickedUp(CID),
    ]
    assert call.state is CallState.CONNECTED
    assert call.receive({"candidate": candidate()}) == [AddCandidates(CID, (parsed(),))]


def test_callee_renegotiates_and_queues_offers_while_applying() -> None:
    call = ringing()
    call.accept()
    newer = {"type": "offer", "sdp": "v=0 newer"}
    assert call.receive({"sdpoffer": newer}) == []  # applying the first: queued
    effects = call.answer_ready(LOCAL_ANSWER)
    assert effects[-1] == ApplyOffer(CID, Description(**newer))
    assert call.answer_ready(LOCAL_ANSWER) == [Send(CID, {"sdpanswer": LOCAL_ANSWER.to_json()})]
    third = {"type": "offer", "sdp": "v=0 third"}
    assert call.receive({"sdpoffer": third}) == [ApplyOffer(CID, Description(**third))]


def test_the_newest_offer_wins_while_ringing() -> None:
    call = ringing()
    newer = {"type": "offer", "sdp": "v=0 newer"}
    call.receive({"sdpoffer": newer})
    assert call.accept() == [ApplyOffer(CID, Description(**newer))]


def test_callee_ignores_caller_messages_and_misplaced_decisions() -> None:
    call = ringing()
    assert "pickup sent to the callee" in ignored(call.receive({"pickup": THEM}))
    assert "answer while ringing" in ignored(call.receive({"sdpanswer": ANSWER}))
    assert "no offer was being applied" in ignored(call.answer_ready(LOCAL_ANSWER))
    assert "offer made while ringing" in ignored(call.offer_ready(LOCAL_OFFER))
    assert "no answer was being applied" in ignored(call.answer_applied())
    assert "has type" in ignored(call.receive({"sdpoffer": ANSWER}))[0]
    call.accept()
    assert "accepted while accepting" in ignored(call.accept())


def test_rejecting_tells_the_caller() -> None:
    call = ringing()
    assert call.reject() == [Send(CID, {"hungup": ME}), Closed(CID, CloseReason.REJECTED)]
    assert call.offer is None


# -- the switchboard ------------------------------------------------------------------------------


def test_a_new_offer_rings_once_with_early_candidates() -> None:
    board = Switchboard(ME)
    assert board.receive(CID, THEM, {"candidate": candidate()}) == []  # before its offer
    assert board.receive(CID, THEM, {"sdpoffer": OFFER, "candidate": candidate(MDNS)}) == [
        Ring(CID, THEM)
    ]
    assert board.calls[CID].state is CallState.RINGING
    assert board.receive(CID, THEM, {"sdpoffer": OFFER}) == []  # rings only once
    assert board.accept(CID) == [ApplyOffer(CID, Description(**OFFER))]
    effects = board.answer_ready(CID, LOCAL_ANSWER)
    assert AddCandidates(CID, (parsed(), parsed(MDNS))) in effects
    assert PickedUp(CID) in effects


def test_a_malformed_offer_does_not_ring() -> None:
    board = Switchboard(ME)
    effects = board.receive(CID, THEM, {"sdpoffer": {"type": "offer"}})
    assert ignored(effects) == ["the offer has no sdp text"]
    assert CID not in board.calls


def test_closed_calls_are_forgotten_and_late_hangups_are_quiet() -> None:
    board = Switchboard(ME)
    board.receive(CID, THEM, {"sdpoffer": OFFER})
    assert board.receive(CID, THEM, {"hungup": THEM}) == [Closed(CID, CloseReason.REMOTE)]
    assert CID not in board.calls
    assert board.receive(CID, THEM, {"hungup": THEM}) == []
    assert board.hangup(CID) == []
    assert board.reject(CID) == []
    assert "no call" in ignored(board.receive(CID, THEM, {"pickup": THEM}))[0]
    assert "must be an object" in ignored(board.receive(CID, THEM, ["x"]))[0]


def test_dialing_the_same_connection_twice_is_refused() -> None:
    board = Switchboard(ME)
    assert board.dial(CID) is not None
    assert board.dial(CID) is None
    assert board.offer_ready(CID, LOCAL_OFFER) == [Send(CID, {"sdpoffer": LOCAL_OFFER.to_json()})]
    assert board.receive(CID, THEM, {"sdpanswer": ANSWER}) == [
        ApplyAnswer(CID, Description(**ANSWER))
    ]
    assert board.answer_applied(CID) == []
    assert board.fail(CID) == [Send(CID, {"hungup": ME}), Closed(CID, CloseReason.FAILED)]
    assert board.dial(CID) is not None  # free again


def test_too_many_ringing_calls_are_refused_at_once() -> None:
    board = Switchboard(ME, SignalingLimits(max_ringing=1))
    board.receive("cid:a", THEM, {"sdpoffer": OFFER})
    effects = board.receive("cid:b", THEM, {"sdpoffer": OFFER})
    assert effects[0] == Send("cid:b", {"hungup": ME})
    assert "already ringing" in ignored(effects)[0]
    assert "cid:b" not in board.calls


def test_early_candidates_are_bounded_per_connection_and_in_number_of_connections() -> None:
    board = Switchboard(ME, SignalingLimits(max_candidates=1, max_early=2))
    board.receive("cid:a", THEM, {"candidate": candidate()})
    assert "too many" in ignored(board.receive("cid:a", THEM, {"candidate": candidate()}))[0]
    board.receive("cid:b", THEM, {"candidate": candidate()})
    board.receive("cid:c", THEM, {"candidate": candidate()})  # drops cid:a's, the oldest
    board.receive("cid:a", THEM, {"sdpoffer": OFFER})
    board.accept("cid:a")
    effects = board.answer_ready("cid:a", LOCAL_ANSWER)
    assert not any(isinstance(e, AddCandidates) for e in effects)


def test_dialing_forgets_candidates_held_for_that_connection() -> None:
    board = Switchboard(ME)
    board.receive(CID, THEM, {"candidate": candidate()})
    board.dial(CID)
    board.offer_ready(CID, LOCAL_OFFER)
    board.receive(CID, THEM, {"sdpanswer": ANSWER})
    assert board.answer_applied(CID) == []
