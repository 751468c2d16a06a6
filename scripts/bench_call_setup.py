"""Call setup time: offer sent -> first decoded video frame at a Python caller.

Every case runs in the same process, against the same embedded hub and device (a 640x480
test pattern at 30 fps), on loopback (127.0.0.1) only:

* ``edge-agent``: what calls use: explicit ICE servers (none here), one DTLS certificate
  for every call, host candidates restricted to 127.0.0.1;
* ``per-call certificate``: the same with a certificate generated per peer connection
  (aiortc's default);
* ``STUN server silent``: a STUN server that never answers, which is what aiortc's implicit
  public STUN server amounts to on a device without internet access (fewer runs: slow);
* ``mDNS`` (in a network namespace created with ``unshare -rn``): a browser-like caller
  whose host candidates are ``.local`` names answered as Chromium answers them, trickled
  or inside the offer, resolved by edge-agent or left to aioice.

Calls are a second apart: a viewer joining within the media hub's key-frame interval
(0.5 s) of another waits for the next key frame, which is not what this measures.

    .venv/bin/python scripts/bench_call_setup.py [--runs 10] [--stun-runs 3] [--no-netns]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _call_timing import first_video_frame
from aiortc.rtcdtlstransport import RTCCertificate

from agent.client import RealtimeClient
from agent.config import load_settings
from agent.hub.accounts import Role
from agent.hub.server import HubServer
from agent.media import MediaConfig, MediaHub, TestPatternConfig
from agent.rtc.desk import AccountDirectory, CallDesk
from agent.rtc.ice import IceOptions, IceServer
from agent.rtc.peer import PeerFactory

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "rtc" / "netns_mdns.py"
LOOPBACK = ("127.0.0.1",)
SPACING = 1.0


class Rig:
    """A hub, a device answering with a test pattern, and a caller: all on loopback."""

    async def start(self) -> None:
        state = Path(tempfile.mkdtemp())
        self.hub = HubServer(
            load_settings(None, state_dir=state, hub={"host": "127.0.0.1", "port": 0})
        )
        await self.hub.start()
        self.device_factory = PeerFactory(IceOptions(addresses=LOOPBACK, mdns=False))
        self.caller_factory = PeerFactory(IceOptions(addresses=LOOPBACK, mdns=False))
        self.device, device_id = await self._client("porch", Role.DEVICE, self.device_factory)
        self.caller, _ = await self._client("viewer", Role.USER, self.caller_factory)
        self.media = MediaHub(MediaConfig(video=TestPatternConfig(640, 480, 30)))
        self.desk = CallDesk(
            self.device,
            device="porch",
            media=self.media,
            directory=AccountDirectory(self.hub.accounts),
        )
        self.desk.start()
        listing = await self.caller.get_realtime_users("devices", device_id)
        self.cid = listing["list"][0]["connection_id"]

    async def _client(
        self, name: str, role: Role, factory: PeerFactory
    ) -> tuple[RealtimeClient, str]:
        # Both accounts are granted the group they meet in: a call needs a shared group.
        account = await asyncio.to_thread(
            self.hub.accounts.add, name, None, role, groups=["devices"]
        )
        client = RealtimeClient(
            self.hub.ws_url, token=self.hub.tokens.issue(account, 3600), rtc_factory=factory
        )
        await client.connect_realtime(lambda message: None)
        await client.join_realtime("devices")
        return client, account.user_id

    def use(self, device: PeerFactory, caller: PeerFactory) -> None:
        """Make the next calls with these factories."""
        self.device.rtc.factory = device
        self.caller.rtc.factory = caller

    async def call(self) -> tuple[float, float]:
        """(connect_rtc -> first frame, offer sent -> first frame) in milliseconds."""
        # As generous as a minute for the connection and another for the frame.
        timing = await first_video_frame(self.caller, self.cid, seconds=120)
        return timing.from_asked_ms, timing.from_offer_ms

    async def stop(self) -> None:
        await self.desk.stop()
        await self.caller.close_realtime()
        await self.device.close_realtime()
        await self.media.close()
        await self.hub.stop()


class PerCallCertificate(PeerFactory):
    """aiortc's default: a new DTLS certificate for every peer connection."""

    def create(self, servers: Any = None, *, relay_only: bool | None = None) -> Any:
        self.certificate = RTCCertificate.generateCertificate()
        return super().create(servers, relay_only=relay_only)


class _Silent(asyncio.DatagramProtocol):
    """A STUN server that never answers."""


async def measure(rig: Rig, runs: int) -> list[tuple[float, float]]:
    results = []
    for _ in range(runs):
        await asyncio.sleep(SPACING)
        results.append(await rig.call())
    return results


def row(name: str, values: list[float | None]) -> str:
    done = sorted(v for v in values if v is not None)
    failed = len(values) - len(done)
    if not done:
        return f"{name:<56} {len(values):>4}  all failed"
    p90 = done[min(len(done) - 1, round(0.9 * (len(done) - 1)))]
    text = (
        f"{name:<56} {len(values):>4} {statistics.median(done):>8.0f} {p90:>7.0f} "
        f"{done[0]:>7.0f} {done[-1]:>7.0f}"
    )
    return text + (f"  ({failed} failed)" if failed else "")


async def loopback_cases(runs: int, stun_runs: int) -> list[str]:
    rig = Rig()
    await rig.start()
    loop = asyncio.get_running_loop()
    silent, _ = await loop.create_datagram_endpoint(_Silent, local_addr=("127.0.0.1", 0))
    stun = IceServer((f"stun:127.0.0.1:{silent.get_extra_info('sockname')[1]}",))
    lines = []
    try:
        await rig.call()  # warm up: encoder, first sockets
        cases: list[tuple[str, PeerFactory, PeerFactory, int]] = [
            ("edge-agent", rig.device_factory, rig.caller_factory, runs),
            (
                "per-call certificate (aiortc default)",
                PerCallCertificate(IceOptions(addresses=LOOPBACK, mdns=False)),
                PerCallCertificate(IceOptions(addresses=LOOPBACK, mdns=False)),
                runs,
            ),
            (
                "STUN server silent (implicit STUN, offline)",
                PeerFactory(IceOptions(servers=(stun,), addresses=LOOPBACK, mdns=False)),
                PeerFactory(IceOptions(servers=(stun,), addresses=LOOPBACK, mdns=False)),
                stun_runs,
            ),
        ]
        for name, device, caller, count in cases:
            rig.use(device, caller)
            results = await measure(rig, count)
            lines.append(row(name + ", offer sent", [sent for _, sent in results]))
            lines.append(row(name + ", connect_rtc called", [full for full, _ in results]))
    finally:
        silent.close()
        await rig.stop()
    return lines


def mdns_cases(runs: int) -> list[str]:
    completed = subprocess.run(
        ["unshare", "-rn", sys.executable, str(SCENARIO), "bench", str(runs)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if completed.returncode != 0:
        return [f"mDNS cases did not run: {completed.stderr.strip().splitlines()[-1:]}"]
    results: dict[str, list[float | None]] = json.loads(completed.stdout.strip().splitlines()[-1])
    return [row(f"mDNS {name}, offer sent", values) for name, values in results.items()]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--stun-runs", type=int, default=3)
    parser.add_argument("--no-netns", action="store_true", help="skip the mDNS cases")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lines = await loopback_cases(args.runs, args.stun_runs)
    if not args.no_netns:
        lines += await asyncio.to_thread(mdns_cases, args.runs)
    title = "case (ms to first decoded frame)"
    header = f"{title:<56} {'runs':>4} {'median':>8} {'p90':>7} "
    print(header + f"{'min':>7} {'max':>7}")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
