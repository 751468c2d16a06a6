"""A hub without ``[hub.turn]``: the device has STUN only, as a device configured before
this hub minted credentials, or one whose operator left TURN to the viewers.

* Nobody relays: the NATs are real and no call gets through them. Both sides learn their
  public address from STUN, yet the carrier NAT maps every destination to a new port, so
  each side's checks go to a mapping the other side's NAT never opened. This is the call
  a viewer on mobile data makes to a device at home.
* The viewer relays (credentials minted here with coturn's secret): the device answers
  from its own public address and the media crosses the viewer's relay, for the Python
  client and for a raw aiortc peer with the W3C default ``balanced`` bundle policy (the
  call that failed before the device kept to the BUNDLE-tagged transport, RFC 9143).
"""

from __future__ import annotations

import json
import time

import pytest

from agent.hub.turn import mint_credential

from .conftest import CallerFactory, World, world_fixture
from .lab import SERVER_IP

pytestmark = pytest.mark.asyncio(loop_scope="module")

world = world_fixture(turn=False)


def viewer_turn(world: World) -> str:
    """The viewer's own TURN server, with a credential from coturn's secret."""
    minted = mint_credential(world.coturn.secret.encode(), "alice", now=time.time(), ttl=600)
    return json.dumps([
        {
            "urls": [f"turn:{SERVER_IP}:3478?transport=udp"],
            "username": minted.username,
            "credential": minted.credential,
        }
    ])  # fmt: skip


async def test_without_turn_the_nat_keeps_the_call_from_connecting(call: CallerFactory) -> None:
    caller, report = await call("hub")
    # Signaling went through the hub and the device picked up; STUN found the viewer's
    # public side; yet no packet of the call crossed the NATs.
    assert report["picked_up"]
    assert report.get("timed_out"), report
    assert report["ice_state"] != "completed"
    assert report["frames"] == {"video": 0, "audio": 0}
    assert report["local_candidates"] == ["host", "srflx"]
    assert report["ice_servers"] == [["stun:192.0.2.1:3478"]]
    await caller.finish()


async def test_a_device_with_stun_only_is_reached_through_the_viewers_relay(
    call: CallerFactory, world: World
) -> None:
    caller, report = await call("hub", viewer_turn(world))
    assert "timed_out" not in report, report
    assert report["frames"]["video"] > 0
    assert report["local"] == "relay"
    assert report["remote"] in ("srflx", "prflx")  # the device's home NAT mapping
    await caller.finish()


async def test_a_balanced_caller_connects_through_its_relay(
    call: CallerFactory, world: World
) -> None:
    caller, report = await call("balanced", viewer_turn(world))
    assert report["transports_offered"] >= 2  # a relay allocation per m= section
    assert "timed_out" not in report, report
    assert report["frames"]["video"] > 0
    assert report["ice_state"] == "completed"
    await caller.finish()
