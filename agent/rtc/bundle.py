"""BUNDLE: one ICE transport for every m= section, taken from the BUNDLE-tagged section.

A peer whose bundle policy is ``balanced`` (the W3C default, what a browser page or a raw
aiortc peer gets unless it asks otherwise) offers every m= section with its own ICE
credentials and candidates, and in the same offer a ``BUNDLE`` group. Once the answer
accepts the group, only the transport of the tagged m= section (the first identification
tag of the group) carries media; the offerer closes the others, TURN allocations
included (RFC 9143 sections 7.3.1 and 10).

Our peer connections are ``max-bundle``: one ICE transport from the start. aiortc, asked
to apply such an offer, hands that one transport the candidates of the *last* bundled
m= section while it keeps the credentials of the first: its checks go to transports the
offerer is about to close. On a LAN the offerer's own checks still get through, which is
why this only shows behind a NAT that filters by address and port (the relay's checks
never pass the device's NAT, because the device never sent anything toward that relay).

:func:`sdp_with_bundle_transport` rewrites a remote description so that every bundled
section carries the tagged section's credentials and candidates, and :func:`bundle_of`
lets trickled candidates of the other bundled sections be recognised and dropped.
Pure functions of SDP text: no aiortc, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["Bundle", "bundle_of", "sdp_with_bundle_transport"]

_GROUP: Final = "a=group:BUNDLE"
_MID: Final = "a=mid:"
# The attributes that make up a section's ICE transport (RFC 8839 section 5).
_TRANSPORT: Final = ("a=ice-ufrag:", "a=ice-pwd:", "a=candidate:", "a=end-of-candidates")


@dataclass(frozen=True, slots=True)
class Bundle:
    """The BUNDLE group of a description: its tag and members, and each m-line's mid."""

    tag: str | None
    members: frozenset[str]
    mids: tuple[str | None, ...]  # by m-line index

    def carries(self, mid: str | None, mline_index: int | None) -> bool:
        """Whether a candidate for (``mid``, ``mline_index``) belongs to the used transport.

        Candidates of bundled sections other than the tagged one are for transports the
        other side closes once the group is accepted (RFC 9143 section 10.1).
        """
        if self.tag is None:
            return True
        if mid is None and mline_index is not None and 0 <= mline_index < len(self.mids):
            mid = self.mids[mline_index]
        return mid is None or mid == self.tag or mid not in self.members


def bundle_of(sdp: str) -> Bundle:
    """The BUNDLE group of ``sdp`` (no tag when it has none)."""
    _session, sections = _split(sdp)
    mids = tuple(_mid(section) for section in sections)
    members = _group(_session)
    present = [mid for mid in members if mid in mids]
    return Bundle(present[0] if present else None, frozenset(present), mids)


def sdp_with_bundle_transport(sdp: str) -> str:
    """``sdp`` with every bundled m= section given the tagged section's ICE transport.

    Sections outside the group, and a description without a group, are left as they are.
    """
    session, sections = _split(sdp)
    bundle = bundle_of(sdp)
    if bundle.tag is None or len(bundle.members) < 2:
        return sdp
    tagged = next(s for s in sections if _mid(s) == bundle.tag)
    transport = [line for line in tagged if line.startswith(_TRANSPORT)]
    rewritten = [
        _with_transport(s, transport) if _mid(s) in bundle.members and s is not tagged else s
        for s in sections
    ]
    ending = "\r\n" if sdp.endswith("\r\n") else ("\n" if sdp.endswith("\n") else "")
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = session + [line for section in rewritten for line in section]
    return newline.join(lines) + ending


def _with_transport(section: Sequence[str], transport: Sequence[str]) -> list[str]:
    kept: list[str] = []
    at: int | None = None
    for line in section:
        if line.startswith(_TRANSPORT):
            at = len(kept) if at is None else at
            continue
        kept.append(line)
    at = len(kept) if at is None else at
    return [*kept[:at], *transport, *kept[at:]]


def _split(sdp: str) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if not line:
            continue
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _mid(section: Sequence[str]) -> str | None:
    for line in section:
        if line.startswith(_MID):
            return line[len(_MID) :].strip()
    return None


def _group(session: Sequence[str]) -> list[str]:
    for line in session:
        if line.startswith(_GROUP):
            return line[len(_GROUP) :].split()
    return []
