"""mDNS candidates, in a network namespace this test creates (nothing multicasts outside).

The scenario (``netns_mdns.py``) runs under ``unshare -rn`` with a veth pair and a
responder that answers exactly as Chromium does, compressed NSEC record included.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

SCENARIO = Path(__file__).with_name("netns_mdns.py")


async def run_scenario(mode: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "unshare", "-rn", sys.executable, str(SCENARIO), mode,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_browser_mdns_names_resolve_at_once_and_feed_the_call() -> None:
    result = await run_scenario("all")
    assert result["resolve"]["address"] == "10.77.0.2"
    assert result["resolve"]["cached"] == "10.77.0.2"
    # Two lookups of one name (in different case) share one query and one answer.
    assert result["concurrent"] == {"addresses": ["10.77.0.2", "10.77.0.2"], "queries": 1}
    assert result["unknown"]["address"] is None
    # The device paired the caller's trickled .local candidate as the host candidate it
    # is, not only as a peer-reflexive address learned from incoming checks.
    assert ["host", "10.77.0.2"] in result["call"]["remote_candidates"]
    assert result["call"]["ms_to_first_frame"] > 0
