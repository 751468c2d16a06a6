"""Call signaling as a pure state machine: ``rtc`` contents in, effects out. No I/O.

The order is the hosted service's browser client's (skapi-js ``webrtc.ts``), so that client
can call a device, and be called, unchanged::

    caller                                          callee
    {"sdpoffer": {"type", "sdp"}}            ->     rings; the application accepts or rejects
    {"candidate": {"candidate", "sdpMid",    ->     buffered until the offer is applied
      "sdpMLineIndex", "usernameFragment"}}         (trickled; no end-of-candidates marker)
                                             <-     {"sdpanswer": {"type", "sdp"}}
                                             <-     {"pickup": USER_ID}  (the caller's call is up)
    {"hungup": USER_ID}                     <->     either side, at any time

``pickup`` and ``hungup`` carry the sender's user id, as that client sends them; a receiver
only needs them to be truthy. Several keys in one content are handled in that client's
order: ``hungup`` alone, else ``candidate``, ``sdpoffer``, ``pickup``, ``sdpanswer``.

A :class:`Signaling` machine follows one call with one remote connection id; the
:class:`Switchboard` keeps one machine per connection id, rings for new offers and holds
candidates that arrive before their offer. Inputs are remote contents (``receive``) and
local decisions (``accept``, ``offer_ready``, ...); outputs are effects for an adapter to
carry out. Nothing here raises on bad input: it becomes an :class:`Ignored` effect.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias

__all__ = [
    "AddCandidates",
    "ApplyAnswer",
    "ApplyOffer",
    "CallState",
    "CloseReason",
    "Closed",
    "Description",
    "Effect",
    "IceCandidate",
    "Ignored",
    "PickedUp",
    "Ring",
    "Role",
    "Send",
    "Signaling",
    "SignalingLimits",
    "Switchboard",
    "parse_candidate",
    "parse_description",
]

log = logging.getLogger(__name__)

_MAX_SDP_CHARS: Final = 64 * 1024
_MAX_CANDIDATE_CHARS: Final = 1024
_MAX_MID_CHARS: Final = 64
_CANDIDATE_PREFIX: Final = "candidate:"
_MIN_CANDIDATE_FIELDS: Final = 8  # foundation component transport priority host port typ type


class Role(enum.Enum):
    """Which side of the call this machine is."""

    CALLER = "caller"
    CALLEE = "callee"


class CallState(enum.Enum):
    """Where one call stands."""

    NEW = "new"  # caller: the offer is being made
    CALLING = "calling"  # caller: offer sent, no answer applied yet
    ANSWERED = "answered"  # caller: answer applied, waiting for pickup
    RINGING = "ringing"  # callee: offer received, waiting for the application
    ACCEPTING = "accepting"  # callee: accepted, the answer is being made
    CONNECTED = "connected"  # picked up
    CLOSED = "closed"


class CloseReason(enum.Enum):
    """Why a call ended."""

    LOCAL = "hung up here"
    REMOTE = "hung up by the other side"
    REJECTED = "rejected here"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SignalingLimits:
    """Bounds on what a remote party can make this side hold."""

    max_candidates: int = 64  # buffered per call before its description is applied
    max_ringing: int = 16  # calls waiting for the application's decision
    max_early: int = 16  # connection ids with candidates that came before their offer


@dataclass(frozen=True, slots=True)
class Description:
    """A session description (RFC 8829 ``RTCSessionDescriptionInit``)."""

    type: str
    sdp: str

    def to_json(self) -> dict[str, str]:
        """The wire shape, ``{"type", "sdp"}``."""
        return {"type": self.type, "sdp": self.sdp}


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled ICE candidate; ``candidate`` is the attribute value without its prefix."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    username_fragment: str | None = None

    @property
    def host(self) -> str:
        """The connection address (an IP address or an mDNS ``.local`` name)."""
        return self.candidate.split()[4]

    def with_host(self, host: str) -> IceCandidate:
        """The same candidate with its connection address replaced."""
        fields = self.candidate.split()
        fields[4] = host
        return replace(self, candidate=" ".join(fields))

    def to_json(self) -> dict[str, Any]:
        """The wire shape of W3C ``RTCIceCandidateInit``."""
        return {
            "candidate": _CANDIDATE_PREFIX + self.candidate,
            "sdpMid": self.sdp_mid,
            "sdpMLineIndex": self.sdp_mline_index,
            "usernameFragment": self.username_fragment,
        }


# -- effects -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``content`` to the remote connection."""

    cid: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ring:
    """A new incoming call: the application accepts or rejects it."""

    cid: str
    user_id: str | None


@dataclass(frozen=True, slots=True)
class ApplyOffer:
    """Set the remote offer, make and set the answer, then call ``answer_ready``."""

    cid: str
    description: Description


@dataclass(frozen=True, slots=True)
class ApplyAnswer:
    """Set the remote answer, then call ``answer_applied``."""

    cid: str
    description: Description


@dataclass(frozen=True, slots=True)
class AddCandidates:
    """Add remote candidates (the remote description is set)."""

    cid: str
    candidates: tuple[IceCandidate, ...]


@dataclass(frozen=True, slots=True)
class PickedUp:
    """The call is up: the caller's connection resolves, the callee's accept returns."""

    cid: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The call ended; release its peer connection."""

    cid: str
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class Ignored:
    """Input that had no effect, and why (for the log)."""

    cid: str
    reason: str


Effect: TypeAlias = (
    Send | Ring | ApplyOffer | ApplyAnswer | AddCandidates | PickedUp | Closed | Ignored
)


# -- parsing -----------------------------------------------------------------------------


def parse_description(value: Any, expected: str) -> Description | str:
    """A description of type ``expected`` from the wire, or the reason it is not one."""
    if not isinstance(value, Mapping):
        return f"the {expected} must be an object with type and sdp"
    kind, sdp = value.get("type"), value.get("sdp")
    if kind != expected:
        return f"the {expected} has type {kind!r}"
    if not isinstance(sdp, str) or not sdp.strip():
        return f"the {expected} has no sdp text"
    if len(sdp) > _MAX_SDP_CHARS:
        return f"the {expected} is {len(sdp)} characters; the limit is {_MAX_SDP_CHARS}"
    return Description(kind, sdp)


def parse_candidate(value: Any) -> IceCandidate | str | None:
    """A candidate from the wire; ``None`` for an end-of-candidates mark; else the reason."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return "a candidate must be an object"
    text = value.get("candidate")
    if not isinstance(text, str) or len(text) > _MAX_CANDIDATE_CHARS:
        return "a candidate needs a candidate string of at most 1024 characters"
    text = text.strip().removeprefix(_CANDIDATE_PREFIX)
    if not text:
        return None  # RFC 8838 section 13: an empty candidate marks the end
    mid, index = value.get("sdpMid"), value.get("sdpMLineIndex")
    problem = _position_problem(mid, index) or _candidate_problem(text)
    if problem is not None:
        return problem
    ufrag = value.get("usernameFragment")
    return IceCandidate(text, mid, index, ufrag if isinstance(ufrag, str) else None)


def _position_problem(mid: Any, index: Any) -> str | None:
    """Why ``sdpMid``/``sdpMLineIndex`` cannot place a candidate, or None."""
    if mid is not None and (not isinstance(mid, str) or len(mid) > _MAX_MID_CHARS):
        return "sdpMid must be a short string or null"
    if index is not None and (type(index) is not int or not 0 <= index < 1024):
        return "sdpMLineIndex must be a small integer or null"
    if mid is None and index is None:
        return "a candidate needs sdpMid or sdpMLineIndex"  # W3C addIceCandidate step 4
    return None


def _candidate_problem(text: str) -> str | None:
    """Why ``text`` is not an RFC 8839 section 5.1 candidate attribute value, or None."""
    fields = text.split()
    if len(fields) < _MIN_CANDIDATE_FIELDS or fields[6] != "typ":
        return "a candidate must read 'FOUNDATION COMPONENT TRANSPORT PRIORITY HOST PORT typ TYPE'"
    component, priority, port = fields[1], fields[3], fields[5]
    if not (component.isdigit() and priority.isdigit() and port.isdigit()):
        return "a candidate's component, priority and port must be numbers"
    if int(port) > 65535:
        return f"a candidate's port {port} is out of range"
    return None


# -- one call ----------------------------------------------------------------------------


class Signaling:
    """The signaling of one call with one remote connection id."""

    def __init__(
        self,
        cid: str,
        role: Role,
        *,
        local_id: str,
        user_id: str | None = None,
        limits: SignalingLimits | None = None,
    ) -> None:
        self.cid = cid
        self.role = role
        self.user_id = user_id
        self._local_id = local_id or "unknown"  # the reference's receivers test truthiness
        self._limits = limits or SignalingLimits()
        self._state = CallState.NEW if role is Role.CALLER else CallState.RINGING
        self._offer: Description | None = None  # an offer waiting to be applied
        self._candidates: list[IceCandidate] = []
        self._remote_set = False  # a remote description has been applied
        self._applying = False  # a description is being applied by the adapter
        self._picked_up = False  # caller: pickup came before the answer was applied

    def __repr__(self) -> str:
        return f"<Signaling {self.role.value} {self.cid} {self._state.value}>"

    @property
    def state(self) -> CallState:
        """Where the call stands."""
        return self._state

    @property
    def offer(self) -> Description | None:
        """The offer waiting to be applied (a ringing call has one)."""
        return self._offer

    # -- remote input ----------------------------------------------------------------------

    def receive(self, content: Mapping[str, Any]) -> list[Effect]:
        """Effects of one ``rtc`` content from the remote connection."""
        if self._state is CallState.CLOSED:
            return [Ignored(self.cid, "the call is over")]
        if content.get("hungup"):
            return self._close(CloseReason.REMOTE, tell=False)
        effects: list[Effect] = []
        if "candidate" in content:
            effects += self._on_candidate(content["candidate"])
        if "sdpoffer" in content:
            effects += self._on_offer(content["sdpoffer"])
        if content.get("pickup"):
            effects += self._on_pickup()
        if "sdpanswer" in content:
            effects += self._on_answer(content["sdpanswer"])
        return effects

    def _on_candidate(self, raw: Any) -> list[Effect]:
        candidate = parse_candidate(raw)
        if candidate is None:
            return []
        if isinstance(candidate, str):
            return [Ignored(self.cid, candidate)]
        if self._remote_set:
            return [AddCandidates(self.cid, (candidate,))]
        if len(self._candidates) >= self._limits.max_candidates:
            return [Ignored(self.cid, "too many candidates before the description")]
        self._candidates.append(candidate)
        return []

    def _on_offer(self, raw: Any) -> list[Effect]:
        offer = parse_description(raw, "offer")
        if isinstance(offer, str):
            return [Ignored(self.cid, offer)]
        if self.role is Role.CALLER:
            return [Ignored(self.cid, "an offer to the caller (glare) is not supported")]
        if self._state is CallState.RINGING or self._applying:
            self._offer = offer  # the newest offer wins; it is applied in its turn
            return []
        self._applying = True  # a renegotiation of a call that is up
        return [ApplyOffer(self.cid, offer)]

    def _on_pickup(self) -> list[Effect]:
        if self.role is Role.CALLEE:
            return [Ignored(self.cid, "pickup sent to the callee")]
        if self._state is CallState.ANSWERED:
            self._set_state(CallState.CONNECTED)
            return [PickedUp(self.cid)]
        if self._state is CallState.CALLING:
            self._picked_up = True  # resolved once the answer is applied
            return []
        return [Ignored(self.cid, f"pickup while {self._state.value}")]

    def _on_answer(self, raw: Any) -> list[Effect]:
        answer = parse_description(raw, "answer")
        if isinstance(answer, str):
            return [Ignored(self.cid, answer)]
        if self._state is not CallState.CALLING or self._applying:
            # The reference refuses an answer outside have-local-offer too.
            return [Ignored(self.cid, f"answer while {self._state.value}")]
        self._applying = True
        return [ApplyAnswer(self.cid, answer)]

    # -- local input: caller ---------------------------------------------------------------

    def offer_ready(self, offer: Description) -> list[Effect]:
        """The local offer is set: send it."""
        if self.role is not Role.CALLER or self._state is not CallState.NEW:
            return [Ignored(self.cid, f"offer made while {self._state.value}")]
        self._set_state(CallState.CALLING)
        return [Send(self.cid, {"sdpoffer": offer.to_json()})]

    def answer_applied(self) -> list[Effect]:
        """The remote answer is set: add the buffered candidates; up if picked up."""
        if self.role is not Role.CALLER or not self._applying:
            return [Ignored(self.cid, "no answer was being applied")]
        self._applying = False
        self._set_state(CallState.ANSWERED)
        effects = self._flush_candidates()
        if self._picked_up:
            self._set_state(CallState.CONNECTED)
            effects.append(PickedUp(self.cid))
        return effects

    # -- local input: callee ---------------------------------------------------------------

    def accept(self) -> list[Effect]:
        """The application takes the call: apply the offer."""
        if self._state is not CallState.RINGING or self._offer is None:
            return [Ignored(self.cid, f"accepted while {self._state.value}")]
        offer, self._offer = self._offer, None
        self._set_state(CallState.ACCEPTING)
        self._applying = True
        return [ApplyOffer(self.cid, offer)]

    def reject(self) -> list[Effect]:
        """The application refuses the call (or gives up on it)."""
        return self._close(CloseReason.REJECTED, tell=True)

    def answer_ready(self, answer: Description) -> list[Effect]:
        """The answer is set: send it, add candidates, and pick up the first time."""
        if self.role is not Role.CALLEE or not self._applying:
            return [Ignored(self.cid, "no offer was being applied")]
        self._applying = False
        self._remote_set = True
        effects: list[Effect] = [Send(self.cid, {"sdpanswer": answer.to_json()})]
        effects += self._flush_candidates()
        if self._state is CallState.ACCEPTING:
            self._set_state(CallState.CONNECTED)
            effects += [Send(self.cid, {"pickup": self._local_id}), PickedUp(self.cid)]
        if self._offer is not None:
            offer, self._offer = self._offer, None
            self._applying = True
            effects.append(ApplyOffer(self.cid, offer))
        return effects

    # -- local input: either side ----------------------------------------------------------

    def hangup(self) -> list[Effect]:
        """End the call from this side."""
        return self._close(CloseReason.LOCAL, tell=True)

    def fail(self) -> list[Effect]:
        """The connection failed or a description could not be applied: end the call."""
        return self._close(CloseReason.FAILED, tell=True)

    def _close(self, reason: CloseReason, *, tell: bool) -> list[Effect]:
        if self._state is CallState.CLOSED:
            return []
        # The remote party knows of the call once an offer was sent or received.
        known = self._state is not CallState.NEW
        self._set_state(CallState.CLOSED)
        self._candidates.clear()
        self._offer = None
        effects: list[Effect] = []
        if tell and known:
            effects.append(Send(self.cid, {"hungup": self._local_id}))
        effects.append(Closed(self.cid, reason))
        return effects

    def _flush_candidates(self) -> list[Effect]:
        self._remote_set = True
        candidates, self._candidates = tuple(self._candidates), []
        return [AddCandidates(self.cid, candidates)] if candidates else []

    def _set_state(self, state: CallState) -> None:
        log.debug("call %s %s: %s -> %s", self.role.value, self.cid, self._state.value, state.value)
        self._state = state


# -- every call --------------------------------------------------------------------------


class Switchboard:
    """One :class:`Signaling` per remote connection id; rings for new offers."""

    def __init__(self, local_id: str, limits: SignalingLimits | None = None) -> None:
        self.local_id = local_id
        self._limits = limits or SignalingLimits()
        self._calls: dict[str, Signaling] = {}
        self._early: OrderedDict[str, list[Any]] = OrderedDict()

    @property
    def calls(self) -> Mapping[str, Signaling]:
        """The calls that are not over, by remote connection id."""
        return self._calls

    def dial(self, cid: str, user_id: str | None = None) -> Signaling | None:
        """A new outgoing call to ``cid``; None if a call with it is already going on."""
        if cid in self._calls:
            return None
        self._early.pop(cid, None)
        call = Signaling(cid, Role.CALLER, local_id=self.local_id, user_id=user_id)
        self._calls[cid] = call
        return call

    def receive(self, cid: str, user_id: str | None, content: Any) -> list[Effect]:
        """Effects of one ``rtc`` content from connection ``cid`` of user ``user_id``."""
        if not isinstance(content, Mapping):
            return [Ignored(cid, "rtc content must be an object")]
        call = self._calls.get(cid)
        if call is not None:
            return self._settle(call, call.receive(content))
        if "sdpoffer" in content and not content.get("hungup"):
            return self._incoming(cid, user_id, content)

        if content.get("hungup"):
            return []  # a call that is over already (both sides hung up at once)
        if "candidate" in content:
            return self._hold_early(cid, content["candidate"])
        return [Ignored(cid, "no call with this connection")]

    def accept(self, cid: str) -> list[Effect]:
        """The application takes the ringing call ``cid``."""
        return self._apply(cid, Signaling.accept)

    def reject(self, cid: str) -> list[Effect]:
        """The application refuses the ringing call ``cid``."""
        return self._apply(cid, Signaling.reject)

    def hangup(self, cid: str) -> list[Effect]:
        """End call ``cid`` from this side."""
        return self._apply(cid, Signaling.hangup)

    def fail(self, cid: str) -> list[Effect]:
        """Call ``cid`` failed."""
        return self._apply(cid, Signaling.fail)

    def offer_ready(self, cid: str, offer: Description) -> list[Effect]:
        """The local offer of outgoing call ``cid`` is set."""
        return self._apply(cid, lambda call: call.offer_ready(offer))

    def answer_applied(self, cid: str) -> list[Effect]:
        """The remote answer of outgoing call ``cid`` is set."""
        return self._apply(cid, Signaling.answer_applied)

    def answer_ready(self, cid: str, answer: Description) -> list[Effect]:
        """The local answer of incoming call ``cid`` is set."""
        return self._apply(cid, lambda call: call.answer_ready(answer))

    def _apply(self, cid: str, step: Callable[[Signaling], list[Effect]]) -> list[Effect]:
        call = self._calls.get(cid)
        if call is None:
            return []  # over already: nothing to do
        return self._settle(call, step(call))

    def _incoming(self, cid: str, user_id: str | None, content: Mapping[str, Any]) -> list[Effect]:
        ringing = sum(1 for c in self._calls.values() if c.state is CallState.RINGING)
        early = self._early.pop(cid, [])
        if ringing >= self._limits.max_ringing:
            return [
                Send(cid, {"hungup": self.local_id or "unknown"}),
                Ignored(cid, f"refused: {ringing} calls are already ringing"),
            ]
        call = Signaling(
            cid, Role.CALLEE, local_id=self.local_id, user_id=user_id, limits=self._limits
        )
        effects: list[Effect] = []
        for raw in early:
            effects += call.receive({"candidate": raw})
        effects += call.receive(content)
        if call.offer is None:
            return effects  # the offer was malformed (an Ignored effect says why)
        self._calls[cid] = call
        return [*effects, Ring(cid, user_id)]

    def _hold_early(self, cid: str, raw: Any) -> list[Effect]:
        held = self._early.setdefault(cid, [])
        self._early.move_to_end(cid)
        while len(self._early) > self._limits.max_early:
            self._early.popitem(last=False)
        if len(held) >= self._limits.max_candidates:
            return [Ignored(cid, "too many candidates before the offer")]
        held.append(raw)
        return []

    def _settle(self, call: Signaling, effects: list[Effect]) -> list[Effect]:
        if call.state is CallState.CLOSED:
            self._calls.pop(call.cid, None)
        return effects
