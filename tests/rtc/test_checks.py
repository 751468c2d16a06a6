"""agent.rtc.checks: RFC 8445 triggered checks and no public-relay/private-address pairs,
on real aioice connections and STUN sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aioice import Candidate, Connection, stun
from aioice.ice import CandidatePair, StunProtocol

from agent.rtc.checks import TriggeredChecks, adopt, unroutable

WAIT = 10.0


def test_unroutable_addresses_are_those_no_internet_relay_reaches() -> None:
    for address in ("10.0.1.2", "172.16.5.4", "192.168.1.9", "100.64.0.2", "127.0.0.1",
                    "169.254.3.3", "fd00::2", "fe80::1", "::1"):  # fmt: skip
        assert unroutable(address), address
    for address in ("192.0.2.1", "203.0.113.7", "8.8.8.8", "2001:db8::1", "x.local", "nope"):
        assert not unroutable(address), address


def test_adopt_gives_a_plain_connection_the_checks_and_leaves_others_alone() -> None:
    plain = Connection(ice_controlling=False)
    adopt(plain)
    assert type(plain) is TriggeredChecks
    adopt(plain)  # twice: still the same class
    assert type(plain) is TriggeredChecks


class Listener(asyncio.DatagramProtocol):
    """A UDP socket that keeps the STUN requests it gets."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[stun.Message] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests.put_nowait(stun.parse_message(data))


@pytest.fixture
async def sockets() -> AsyncIterator[tuple[StunProtocol, Listener, tuple[str, int]]]:
    """A STUN protocol to check from, and the remote end it checks (both on loopback)."""
    loop = asyncio.get_running_loop()
    remote_transport, listener = await loop.create_datagram_endpoint(
        Listener, local_addr=("127.0.0.1", 0)
    )
    local_transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(None),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    yield protocol, listener, remote_transport.get_extra_info("sockname")
    local_transport.close()
    remote_transport.close()


def _in_progress_pair(
    connection: Connection, protocol: StunProtocol, remote: tuple[str, int]
) -> CandidatePair:
    """A pair whose own check went out and waits for its retransmission."""
    host, port = protocol.transport.get_extra_info("sockname")
    protocol.receiver = connection
    protocol.local_candidate = Candidate(
        foundation="1", component=1, transport="udp", priority=1, host=host, port=port,
        type="host",
    )  # fmt: skip
    candidate = Candidate(
        foundation="2", component=1, transport="udp", priority=1, host=remote[0],
        port=remote[1], type="host",
    )  # fmt: skip
    candidate._network_host = remote[0]
    connection._remote_candidates.append(candidate)
    connection._protocols.append(protocol)
    connection.remote_username = "abcd"
    connection.remote_password = "p" * 22
    pair = CandidatePair(protocol, candidate)
    connection._check_list.append(pair)
    pair.task = asyncio.ensure_future(connection.check_start(pair))
    return pair


def _incoming_check(connection: Connection) -> stun.Message:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USE-CANDIDATE"] = None
    message.attributes["PRIORITY"] = 1
    return message


@pytest.mark.parametrize("ours", [True, False])
async def test_a_check_arriving_on_a_pair_in_progress_triggers_one_at_once(
    sockets: tuple[StunProtocol, Listener, tuple[str, int]], ours: bool
) -> None:
    protocol, listener, remote = sockets
    connection = Connection(ice_controlling=False)
    if ours:
        adopt(connection)
    pair = _in_progress_pair(connection, protocol, remote)
    first = await asyncio.wait_for(listener.requests.get(), WAIT)  # the check went out
    first_task = pair.task
    connection.check_incoming(_incoming_check(connection), remote, protocol)
    try:
        # RFC 8445 section 7.3.1.4: a new check now, not at the retransmission (0.5 s).
        again = await asyncio.wait_for(listener.requests.get(), 0.3)
    except TimeoutError:
        again = None
    if ours:
        assert again is not None
        assert again.transaction_id != first.transaction_id  # a new transaction
        assert first_task is not None
        assert first_task.cancelled()
        assert pair.remote_nominated
    else:
        assert again is None  # what aioice alone does: waits for its timer
    for task in (pair.task, first_task):
        if task is not None:
            task.cancel()
    await asyncio.sleep(0)


async def test_a_controlling_agent_keeps_its_check_in_progress(
    sockets: tuple[StunProtocol, Listener, tuple[str, int]],
) -> None:
    protocol, listener, remote = sockets
    connection = Connection(ice_controlling=True)
    adopt(connection)
    pair = _in_progress_pair(connection, protocol, remote)
    await asyncio.wait_for(listener.requests.get(), WAIT)
    task = pair.task
    message = _incoming_check(connection)
    del message.attributes["USE-CANDIDATE"]
    connection.check_incoming(message, remote, protocol)
    assert pair.task is task  # it may be nominating: left alone
    assert task is not None
    assert not task.done()
    task.cancel()
    await asyncio.sleep(0)


def test_a_public_relay_is_not_paired_with_private_addresses() -> None:
    connection = Connection(ice_controlling=True)
    adopt(connection)
    relay, host, lan_relay = (
        StunProtocol(connection),
        StunProtocol(connection),
        StunProtocol(connection),
    )
    relay.local_candidate = Candidate("r", 1, "udp", 10, "192.0.2.1", 50000, "relay")
    host.local_candidate = Candidate("h", 1, "udp", 30, "100.64.0.2", 40000, "host")
    lan_relay.local_candidate = Candidate("l", 1, "udp", 10, "10.9.9.9", 50001, "relay")
    connection._protocols += [relay, host, lan_relay]
    private = Candidate("p", 1, "udp", 30, "10.0.1.2", 1111, "host")
    public = Candidate("s", 1, "udp", 20, "198.51.100.2", 1111, "srflx")
    for candidate in (private, public):
        candidate._network_host = candidate.host
        connection._remote_candidates.append(candidate)
        connection._pair_remote_candidate(candidate)
    pairs = {
        (p.protocol.local_candidate.host, p.remote_candidate.host) for p in connection._check_list
    }
    assert ("192.0.2.1", "10.0.1.2") not in pairs  # the relay cannot reach it: no check
    assert pairs == {
        ("100.64.0.2", "10.0.1.2"),
        ("10.9.9.9", "10.0.1.2"),  # a relay on a private network may reach its neighbours
        ("192.0.2.1", "198.51.100.2"),
        ("100.64.0.2", "198.51.100.2"),
        ("10.9.9.9", "198.51.100.2"),
    }
