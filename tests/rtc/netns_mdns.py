"""Run inside a fresh network namespace (``unshare -rn``): mDNS candidates, end to end.

Builds a veth pair (10.77.0.1 <-> 10.77.0.2) so multicast works without touching a real
interface, then prints one JSON line:

* ``python netns_mdns.py all``: our resolver against a Chromium-like responder (address,
  cache, two lookups sharing one query, an unknown name), and one call from a
  browser-like caller whose candidates are ``.local`` names;
* ``python netns_mdns.py bench RUNS``: offer-to-first-frame milliseconds for such calls,
  candidates trickled or inside the offer, resolved by us or left to aioice.

Used by ``tests/rtc/test_mdns_netns.py`` and ``scripts/bench_call_setup.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mdns_responder import ChromiumLikeResponder

DEVICE_IP = "10.77.0.1"
CALLER_IP = "10.77.0.2"
SETUP = [
    "ip link set lo up",
    "ip link add v0 type veth peer name v1",
    f"ip addr add {DEVICE_IP}/24 dev v0",
    f"ip addr add {CALLER_IP}/24 dev v1",
    "ip link set v0 up",
    "ip link set v1 up",
    "ip route add 224.0.0.0/4 dev v0",
]


def network() -> None:
    for command in SETUP:
        subprocess.run(command.split(), check=True)


async def resolver_checks(responder: ChromiumLikeResponder) -> dict[str, Any]:
    from agent.rtc.mdns import MdnsResolver

    name = f"{uuid.uuid4()}.local"
    responder.publish(name, CALLER_IP)
    resolver = MdnsResolver(interfaces=[DEVICE_IP], timeout=0.5)
    started = time.perf_counter()
    address = await resolver.resolve(name)
    elapsed = (time.perf_counter() - started) * 1000
    again = await resolver.resolve(name)  # from the cache
    other = f"{uuid.uuid4()}.local"
    responder.publish(other, CALLER_IP)
    before = resolver.queries
    both = await asyncio.gather(resolver.resolve(other), resolver.resolve(other.upper()))
    shared = resolver.queries - before
    started = time.perf_counter()
    unknown = await resolver.resolve(f"{uuid.uuid4()}.local")
    unknown_ms = (time.perf_counter() - started) * 1000
    resolver.close()
    return {
        "resolve": {"address": address, "ms": elapsed, "cached": again},
        "concurrent": {"addresses": list(both), "queries": shared},
        "unknown": {"address": unknown, "ms": unknown_ms},
    }


class Rig:
    """A hub, a device answering with a test pattern, and a browser-like caller."""

    def __init__(self, responder: ChromiumLikeResponder) -> None:
        self.responder = responder
        self.trickle = True
        self._stack: list[Any] = []

    async def start(self) -> None:
        from agent.client import RealtimeClient
        from agent.config import load_settings
        from agent.hub.accounts import Role
        from agent.hub.server import HubServer
        from agent.media import MediaConfig, MediaHub, TestPatternConfig
        from agent.rtc.desk import AccountDirectory, CallDesk
        from agent.rtc.ice import IceOptions
        from agent.rtc.peer import PeerFactory

        state = Path(tempfile.mkdtemp())
        self.hub = HubServer(
            load_settings(None, state_dir=state, hub={"host": "127.0.0.1", "port": 0})
        )
        await self.hub.start()
        self.device_factory = PeerFactory(IceOptions(addresses=(DEVICE_IP,), mdns_timeout=1.0))
        self.resolver = self.device_factory.resolver
        caller_factory = PeerFactory(IceOptions(addresses=(CALLER_IP,), mdns=False))
        clients = []
        for name, role, factory in (
            ("porch", Role.DEVICE, self.device_factory),
            ("viewer", Role.USER, caller_factory),
        ):
            account = self.hub.accounts.add(name, None, role, groups=["*"])
            client = RealtimeClient(
                self.hub.ws_url, token=self.hub.tokens.issue(account, 600), rtc_factory=factory
            )
            await client.connect_realtime(lambda message: None)
            await client.join_realtime("devices")
            clients.append((client, account))
        (self.device, device_account), (self.viewer, _) = clients
        self.media = MediaHub(MediaConfig(video=TestPatternConfig(320, 240, 30)))
        self.desk = CallDesk(
            self.device,
            device="porch",
            media=self.media,
            directory=AccountDirectory(self.hub.accounts),
        )
        self.desk.start()
        listing = await self.viewer.get_realtime_users("devices", device_account.user_id)
        self.cid = listing["list"][0]["connection_id"]
        self._browser_like()

    async def stop(self) -> None:
        await self.desk.stop()
        await self.viewer.close_realtime()
        await self.device.close_realtime()
        await self.media.close()
        self.device_factory.close()
        await self.hub.stop()

    def resolve_ourselves(self, ours: bool) -> None:
        """Resolve .local candidates with our resolver, or hand them to aioice's."""
        self.device_factory.resolver = self.resolver if ours else None

    async def call(self) -> dict[str, Any]:
        """One call: offer-to-first-frame time and the device's remote candidates."""
        first_frame: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        readers: list[asyncio.Task[None]] = []

        async def read_one(track: Any) -> None:
            await track.recv()
            if not first_frame.done():
                first_frame.set_result(time.perf_counter())

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "track" and event["track"].kind == "video":
                readers.append(asyncio.create_task(read_one(event["track"])))

        started = time.perf_counter()
        connector = await self.viewer.connect_rtc(
            cid=self.cid, media={"video": False}, callback=on_event
        )
        sent = time.perf_counter()
        try:
            connection = await asyncio.wait_for(connector.connection, 30)
            frame_at = await asyncio.wait_for(first_frame, 30)
        except Exception as exc:  # the aioice path fails some calls: that is a result too
            await connector.hangup()
            return {"failed": f"{type(exc).__name__}: {exc}"}
        finally:
            for reader in readers:
                reader.cancel()
        agent_pc = next(c.connection for c in self.desk._calls.values()).target
        remote = [
            (c.type, c.ip)
            for t in agent_pc.getTransceivers()
            for c in t.receiver.transport.transport.getRemoteCandidates()
        ]
        await connection.hangup()
        return {
            "ms_to_first_frame": (frame_at - started) * 1000,
            "ms_offer_sent_to_first_frame": (frame_at - sent) * 1000,
            "remote_candidates": remote,
        }

    def _browser_like(self) -> None:
        """The caller's offer as a browser sends it: candidates as mDNS names."""
        engine = self.viewer.rtc
        send = engine._send

        async def send_like_a_browser(cid: str, content: dict[str, Any]) -> None:
            offer = content.get("sdpoffer")
            if offer is None:
                await send(cid, content)
                return
            lines = offer["sdp"].split("\r\n")
            candidates = [line for line in lines if line.startswith("a=candidate:")]
            renamed = [self._renamed(line) for line in candidates]
            if self.trickle:
                # Sent as soon as it is set: no candidates yet, and no end-of-candidates
                # mark (with one, aioice prunes its components before gathering).
                kept = [ln for ln in lines if not ln.startswith(("a=candidate:", "a=end-of-c"))]
            else:
                # A viewer that waits for gathering: every candidate inside the offer (and,
                # as Chromium writes it, no end-of-candidates mark).
                kept = [
                    renamed.pop(0) if ln.startswith("a=candidate:") else ln
                    for ln in lines
                    if not ln.startswith("a=end-of-c")
                ]
            await send(cid, {"sdpoffer": {"type": "offer", "sdp": "\r\n".join(kept)}})
            for line in renamed:
                candidate = {"candidate": line[len("a=") :], "sdpMid": "0", "sdpMLineIndex": 0}
                await send(cid, {"candidate": candidate})

        engine._send = send_like_a_browser

    def _renamed(self, line: str) -> str:
        fields = line.split()
        name = f"{uuid.uuid4()}.local"
        self.responder.publish(name, fields[4])
        fields[4] = name
        return " ".join(fields)


async def bench(rig: Rig, runs: int) -> dict[str, list[float | None]]:
    """Offer-sent-to-first-frame ms per variant (None: the call failed)."""
    results: dict[str, list[float | None]] = {}
    await rig.call()  # warm up: encoder and first connections
    for trickle in (True, False):
        for ours in (True, False):
            rig.trickle = trickle
            rig.resolve_ourselves(ours)
            key = f"{'trickled' if trickle else 'in the offer'}, {'ours' if ours else 'aioice'}"
            results[key] = []
            for _ in range(runs):
                # Calls a second apart, as separate viewers: a join within the media hub's
                # key-frame interval (0.5 s) would wait for the next key frame instead.
                await asyncio.sleep(1.0)
                results[key].append((await rig.call()).get("ms_offer_sent_to_first_frame"))
    return results


async def main() -> None:
    network()
    responder = await ChromiumLikeResponder.start(CALLER_IP)
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    result: dict[str, Any] = {}
    if mode == "all":
        result.update(await resolver_checks(responder))
    rig = Rig(responder)
    await rig.start()
    try:
        if mode == "all":
            result["call"] = await rig.call()
        elif mode == "bench":
            result = await bench(rig, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
    finally:
        await rig.stop()
        responder.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
