"""``[calls] ice_transport_policy = "relay"`` on the hub: nobody shows their addresses.

The hub tells its viewers (``/api/viewer/config``, ``/api/ice-servers``) and the devices
that fetch their ICE servers from it; every side then offers relayed candidates only
(W3C ``iceTransportPolicy``, RFC 9429 section 3.5.3), and the call still connects.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Page

from .conftest import CallerFactory, world_fixture
from .viewer import CALL, call_porch, stats

pytestmark = pytest.mark.asyncio(loop_scope="module")

world = world_fixture(relay_policy=True)


async def test_the_python_caller_and_the_device_offer_relays_only(call: CallerFactory) -> None:
    caller, report = await call("hub")
    assert "timed_out" not in report, report
    assert report["relay_only"] is True
    assert report["local_candidates"] == ["relay"]
    assert report["remote_candidates"] == ["relay"]  # the device's answer: relays only
    assert report["frames"]["video"] > 0
    assert (report["local"], report["remote"]) == ("relay", "relay")
    await caller.finish()


@pytest.mark.browser
async def test_the_viewer_follows_the_hubs_relay_policy(page: Page) -> None:
    await call_porch(page)
    summary = await stats(page)
    assert summary["localType"] == "relay"
    assert summary["remoteType"] == "relay"
    assert await page.evaluate(f"{CALL}.pc.getConfiguration().iceTransportPolicy") == "relay"
    candidates = await page.evaluate(f"{CALL}.localCandidates")
    assert candidates
    assert all(" typ relay " in c for c in candidates), candidates
