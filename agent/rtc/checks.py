"""ICE connectivity checks: triggered checks (RFC 8445 7.3.1.4), no relaying into private
networks.

**A check that arrives triggers our own at once.**

When a check arrives on a candidate pair whose own check is still in progress, RFC 8445
section 7.3.1.4 has the agent cancel that transaction and send a new check right away
(a triggered check). aioice 0.13 leaves the pair alone, so its check goes out again only
when the retransmission timer fires: half a second later at first.

That half second is what a relayed call costs the device. It answers a call and checks
toward the caller's relay at once, before the caller has installed a TURN permission for
the device's address (it does so only when it checks that pair itself, after the answer
arrives), so the relay drops the device's first check. The caller's own check then passes
the device's NAT (opened by that first check) and is answered, but the device's side of
the pair stays in progress until its retransmission. With the triggered check, the
device's check goes out on the caller's check and finds the permission in place.

Only the controlled side (the device answering a call) is changed: a controlling agent
may be in its nomination exchange (RFC 8445 section 8.1.1) on that pair, which a
cancelled task would leave half-done.

**A relay on a public address is not paired with private addresses.** Such a relay cannot
reach another network's private (RFC 1918), shared (RFC 6598, carrier NAT) or link-local
addresses; a hardened TURN server refuses the permission (coturn's ``denied-peer-ip``),
and one that is not hardened may break the allocation trying (RFC 8656 section 21.3 asks
servers to refuse). Not pairing them saves the checks (aioice starts one every 20 ms) and
keeps the allocation clean whatever the server does (RFC 8445 section 6.1.2.4 lets an
agent prune pairs).
"""

from __future__ import annotations

import ipaddress
from typing import Final

from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import CandidatePair, Connection, StunProtocol

from agent.compat import check_check_hooks

__all__ = ["TriggeredChecks", "adopt", "unroutable"]

check_check_hooks()  # a subclass of aioice's Connection, overriding two of its methods

# Addresses no relay on the internet reaches: RFC 1918, RFC 6598, loopback, link-local,
# unique local (RFC 4193), and "this network".
_PRIVATE: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7", "fe80::/10",
    )
)  # fmt: skip


def unroutable(address: str) -> bool:
    """Whether ``address`` is private to its network (not an mDNS name: those are not)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _PRIVATE if network.version == ip.version)


class TriggeredChecks(Connection):
    """aioice's ``Connection`` with RFC 8445 section 7.3.1.4 for pairs in progress."""

    def check_incoming(
        self, message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        """Handle an incoming check; restart our check of its pair if it is in progress."""
        pair = self._pair_of(protocol, addr)
        if (
            pair is not None
            and not self.ice_controlling
            and pair.state is CandidatePair.State.IN_PROGRESS
            and pair.task is not None
            and not pair.task.done()
        ):
            pair.task.cancel()  # the transaction stops retransmitting (its timer is cancelled)
            pair.task = None
            self.check_state(pair, CandidatePair.State.WAITING)
        super().check_incoming(message, addr, protocol)

    def _pair_remote_candidate(self, remote_candidate: Candidate) -> None:
        """Pair as aioice does, but not a public relay with a private address."""
        super()._pair_remote_candidate(remote_candidate)
        if unroutable(remote_candidate._network_host):
            self._check_list = [
                pair
                for pair in self._check_list
                if pair.remote_candidate is not remote_candidate or not _public_relay(pair)
            ]

    def _pair_of(self, protocol: StunProtocol, addr: tuple[str, int]) -> CandidatePair | None:
        for pair in self._check_list:
            if pair.protocol is protocol and pair.remote_addr == (addr[0], addr[1]):
                return pair
        return None


def _public_relay(pair: CandidatePair) -> bool:
    local = pair.protocol.local_candidate
    return bool(local.type == "relay" and not unroutable(local.host))


def adopt(connection: Connection) -> None:
    """Give ``connection`` (made by aiortc, plain aioice) the triggered checks above."""
    if type(connection) is Connection:
        connection.__class__ = TriggeredChecks
