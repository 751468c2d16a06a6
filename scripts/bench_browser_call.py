#!/usr/bin/env python3
"""Chromium call setup: click "Call" in the viewer -> first decoded frame shown.

The viewer records its own ``performance.now()`` timestamps for every call (click, offer
sent, answer applied, pickup, ICE+DTLS connected, first frame from
``requestVideoFrameCallback``); this prints their medians over N calls to a real agent
(``edge-agent run`` with its embedded hub and test pattern), in two setups:

- loopback: Chromium with media auto-granted, so it offers plain IP host candidates, and
  loopback allowed; the agent gathers on 127.0.0.1 only;
- mdns: a real first visit (no auto-granted media, no loopback), so Chromium offers mDNS
  ``UUID.local`` host candidates that the agent must resolve. Chromium answers those names
  by multicast, so agent, hub and Chromium run in a network namespace of their own (veth
  pair, both ends inside); it needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).

Baseline in the same run (with the loopback setup): two RTCPeerConnections inside one page
(fake camera -> video element, descriptions handed over directly): Chromium's own floor on
this machine, with no hub, no agent and no network signaling.

The first call of each setup opens the agent's capture (cold) and is shown apart; the
median is over the calls after it.

    .venv/bin/python scripts/bench_browser_call.py                  # 10 calls per setup
    .venv/bin/python scripts/bench_browser_call.py --calls 20 --setups loopback
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser.harness import (
    CHROMIUM,
    AgentProcess,
    NetNamespace,
    Viewer,
    chromium_args,
    launch_chromium,
    write_voice_wav,
)

STEPS = (
    ("click -> offer sent", "clickAt", "offerAt"),
    ("offer -> answer applied", "offerAt", "answerAt"),
    ("answer -> pickup", "answerAt", "pickupAt"),
    ("pickup -> connected (ICE+DTLS)", "pickupAt", "connectedAt"),
    ("connected -> first frame", "connectedAt", "firstFrameAt"),
)
_BASELINE_JS = """async () => {
    const camera = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
    const times = [];
    for (let i = 0; i < %d; i++) {
        const a = new RTCPeerConnection({iceServers: []});
        const b = new RTCPeerConnection({iceServers: []});
        a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
        b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
        const video = document.createElement('video');
        video.muted = true;
        const first = new Promise((resolve) => {
            b.ontrack = (e) => {
                video.srcObject = e.streams[0] || new MediaStream([e.track]);
                video.play();
                video.requestVideoFrameCallback(
                    (now, meta) => resolve(meta.presentationTime || now));
            };
        });
        const start = performance.now();
        camera.getTracks().forEach((t) => a.addTrack(t, camera));
        await a.setLocalDescription(await a.createOffer());
        await b.setRemoteDescription(a.localDescription);
        await b.setLocalDescription(await b.createAnswer());
        await a.setRemoteDescription(b.localDescription);
        times.push((await first) - start);
        a.close();
        b.close();
    }
    camera.getTracks().forEach((t) => t.stop());
    return times;
}"""


@dataclass
class Setup:
    """One measured configuration and its calls' timestamps."""

    name: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)


async def measure_calls(viewer: Viewer, count: int, gap: float) -> list[dict[str, Any]]:
    """``count`` calls, ``gap`` seconds apart; each call's metrics."""
    calls = []
    for index in range(count):
        if index:
            await asyncio.sleep(gap)  # a pause between calls, as people make them
        await viewer.device_button().wait_for()
        await viewer.page.wait_for_function("!document.querySelector('.device button').disabled")
        await viewer.device_button().click()
        await viewer.wait_until("window.viewer.call && window.viewer.call.metrics.firstFrameAt")
        calls.append(await viewer.metrics())
        await viewer.page.click("#hangup")
        await viewer.wait_until("window.viewer.call === null")
    return calls


async def run_setup(
    name: str, count: int, work: Path, voice: Path, *, gap: float, with_baseline: bool
) -> Setup:
    """Start an agent and Chromium for ``name`` and measure ``count`` + 1 calls."""
    netns = NetNamespace() if name == "mdns" else None
    setup = Setup(name)
    if netns is not None:
        netns.create()
    env = {} if netns is not None else {"EDGE_AGENT_CALLS__HOST_ADDRESSES": '["127.0.0.1"]'}
    agent = AgentProcess(work / f"agent-{name}", env=env, netns=netns)
    try:
        await agent.start()
        async with async_playwright() as driver:
            if netns is None:
                args = chromium_args(microphone=voice)
                browser = await launch_chromium(driver, args)
            else:
                args = chromium_args(fake_ui=False, loopback=False, microphone=voice)
                browser = await launch_chromium(driver, args, executable=netns.wrap(CHROMIUM, work))
            try:
                await _measure(browser, agent, setup, count, gap, with_baseline=with_baseline)
            finally:
                await browser.close()
    finally:
        await agent.stop()
        if netns is not None:
            netns.delete()
    return setup


async def _measure(
    browser: Browser,
    agent: AgentProcess,
    setup: Setup,
    count: int,
    gap: float,
    *,
    with_baseline: bool,
) -> None:
    context = await browser.new_context()
    viewer = Viewer(await context.new_page(), agent.url)
    await viewer.open()
    await viewer.login("admin", agent.admin_password)
    setup.calls = await measure_calls(viewer, count + 1, gap)
    setup.candidates = setup.calls[-1]["localCandidates"]
    if with_baseline:
        setup.baseline = list(await viewer.page.evaluate(_BASELINE_JS % (count + 1)))[1:]
    await context.close()


def report(setups: Sequence[Setup], gap: float) -> None:
    """Print the figures."""
    for setup in setups:
        first, rest = setup.calls[0], setup.calls[1:]
        setup_ms = [c["firstFrameAt"] - c["clickAt"] for c in rest]
        mdns = sum(".local" in c for c in setup.candidates)
        print(
            f"\n== {setup.name}: {len(rest)} calls (+1 cold) {gap:.1f} s apart, "
            f"{len(setup.candidates)} local candidates, {mdns} of them mDNS names"
        )
        cold = first["firstFrameAt"] - first["clickAt"]
        print(f"  cold first call: click -> first frame {cold:7.1f} ms")
        print(
            f"  click -> first frame: median {statistics.median(setup_ms):7.1f} ms"
            f"   min {min(setup_ms):7.1f}   max {max(setup_ms):7.1f}"
        )
        for label, start, end in STEPS:
            values = [c[end] - c[start] for c in rest if c.get(start) and c.get(end)]
            if values:
                print(f"    {label:34s} median {statistics.median(values):7.1f} ms")
        if setup.baseline:
            print(
                f"  baseline, Chromium <-> Chromium in one page: median "
                f"{statistics.median(setup.baseline):7.1f} ms "
                f"(min {min(setup.baseline):.1f}, max {max(setup.baseline):.1f})"
            )


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="calls per setup after the cold one")
    parser.add_argument(
        "--gap",
        type=float,
        default=1.0,
        help="seconds between a hang-up and the next call (default 1: the agent's capture "
        "stays open, 3 s linger, and its forced key frames are at most one per 0.5 s)",
    )
    parser.add_argument("--setups", default="loopback,mdns", help="comma separated: loopback, mdns")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.setups.split(",") if n.strip()]
    unknown = set(names) - {"loopback", "mdns"}
    if unknown:
        parser.error(f"unknown setup(s): {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        work = Path(tmp)
        voice = write_voice_wav(work / "voice.wav")
        started = time.monotonic()
        setups = [
            await run_setup(
                name, args.calls, work, voice, gap=args.gap, with_baseline=name == "loopback"
            )
            for name in names
        ]
    report(setups, args.gap)
    print(f"\n({time.monotonic() - started:.0f} s; {Path(CHROMIUM)} {await _version()})")
    return 0


async def _version() -> str:
    process = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--version",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    return out.decode().strip()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
