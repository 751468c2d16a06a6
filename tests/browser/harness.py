"""What the browser tests and the Chromium call benchmark share.

- :class:`AgentProcess`: ``edge-agent run`` with its embedded hub on port 0 and a temporary
  state directory, optionally inside a network namespace; it prints the viewer URL and
  writes the admin password, and its talk-back sink is a WAV file the test reads.
- :class:`NetNamespace`: a network namespace with loopback and a veth pair (both ends
  inside, default route over it), so that Chromium's mDNS multicast and every packet of a
  call stay inside it. Needs CAP_SYS_ADMIN and CAP_NET_ADMIN.
- :func:`chromium_args` and :func:`launch_chromium`: Debian's Chromium driven by
  Playwright with ``executable_path`` (never a downloaded browser), no network beyond
  IP literals, fake camera and a microphone that plays a voice-like WAV.
- :class:`Viewer`: the viewer page (log in, call, hold to talk, read its call metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from playwright.async_api import Browser, Page, Playwright

from agent.media.talkback import count_nonsilent

__all__ = [
    "CHROMIUM",
    "DEVICE",
    "WAIT",
    "AgentProcess",
    "NetNamespace",
    "Viewer",
    "chromium_args",
    "launch_chromium",
    "talkback_counts",
    "wrap_in_namespace",
    "write_voice_wav",
]

ROOT: Final = Path(__file__).resolve().parents[2]
CHROMIUM: Final = Path("/usr/bin/chromium")
DEVICE: Final = "doorbell"
WAIT: Final = 30.0  # generous: the machine is shared
_START_WAIT: Final = 60.0
_URL_RE: Final = re.compile(r"viewer at (http://\S+?)/?$")
_BASE_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
)


def chromium_args(
    *,
    loopback: bool = True,
    fake_ui: bool = True,
    microphone: Path | None = None,
    host: str = "127.0.0.1",
) -> list[str]:
    """Chromium's flags for a test: a fake camera, and ``microphone`` as the fake mic.

    ``fake_ui`` grants camera and microphone without a prompt (and so turns off mDNS host
    candidates); without it the page gets what a real first visit gets. ``loopback`` lets
    a call use 127.0.0.1 (Chromium leaves loopback out of ICE by default). ``host`` is the
    address the pages are served from.
    """
    args = [
        *_BASE_ARGS,
        # Nothing is resolved by DNS: every URL is an IP literal.
        f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {host}",
        "--use-fake-device-for-media-stream",
    ]
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}")
    if fake_ui:
        args.append("--use-fake-ui-for-media-stream")
    if loopback:
        args.append("--allow-loopback-in-peer-connection")
    return args


async def launch_chromium(
    playwright: Playwright, args: Sequence[str], *, executable: Path = CHROMIUM
) -> Browser:
    """Debian's Chromium (or a wrapper that starts it in a namespace), headless."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package")
    return await playwright.chromium.launch(
        executable_path=str(executable), args=list(args), headless=True, timeout=_START_WAIT * 1000
    )


def write_voice_wav(path: Path, *, seconds: float = 8.0, rate: int = 48000) -> Path:
    """A mono WAV of changing, pulsing tones: speech-like enough that the browser's noise
    suppression (which removes steady tones) lets it through."""
    notes = (220.0, 330.0, 262.0, 392.0, 294.0, 440.0)
    frames = bytearray()
    for n in range(int(seconds * rate)):
        t = n / rate
        note = notes[int(t * 5) % len(notes)]  # a new pitch every 200 ms
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 3.0 * t)  # 3 Hz syllables
        sample = (
            0.45
            * envelope
            * (math.sin(2 * math.pi * note * t) + 0.3 * math.sin(4 * math.pi * note * t))
        )
        frames += struct.pack("<h", int(max(-1.0, min(1.0, sample)) * 32767))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


def talkback_counts(path: Path) -> tuple[int, int]:
    """(samples, non-silent samples) the agent's talk-back sink wrote to ``path`` so far."""
    if not path.exists():
        return 0, 0
    # The sink patches the header after every write, so a file being written reads fine.
    with wave.open(str(path), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    return len(pcm) // 2, count_nonsilent(pcm)


@dataclass
class NetNamespace:
    """A network namespace with ``lo`` and a veth pair, both ends inside, for one test."""

    name: str = field(default_factory=lambda: f"ea-browser-{os.getpid()}-{secrets.token_hex(3)}")
    subnet: str = "10.77.0"
    created: bool = False

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside."""
        return ["ip", "netns", "exec", self.name]

    @property
    def address(self) -> str:
        """The address of the end that holds the default route."""
        return f"{self.subnet}.1"

    def create(self) -> None:
        """Create it; ``RuntimeError`` naming the command that failed (e.g. not root)."""
        self._ip("netns", "add", self.name)
        self.created = True
        # No IPv6 duplicate address detection: the veth ends' link-local addresses would
        # turn from tentative to preferred a second or two after link-up, which a Chromium
        # already loading the viewer sees as a network change (ERR_NETWORK_CHANGED: the
        # page's scripts fail to load and the login form never shows).
        dad_off = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        self._ip("netns", "exec", self.name, "sysctl", "-q", "-w", *dad_off)
        steps = [
            ["link", "set", "lo", "up"],
            ["link", "add", "ea0", "type", "veth", "peer", "name", "ea1"],
            ["addr", "add", f"{self.subnet}.1/24", "dev", "ea0"],
            ["addr", "add", f"{self.subnet}.2/24", "dev", "ea1"],
            ["link", "set", "ea0", "up"],
            ["link", "set", "ea1", "up"],
            # Chromium gathers (and names with mDNS) only the default route's interface.
            ["route", "add", "default", "via", f"{self.subnet}.2", "dev", "ea0"],
        ]
        for step in steps:
            self._ip("-n", self.name, *step)
        tentative = subprocess.run(
            ["ip", "-n", self.name, "-6", "addr", "show", "tentative"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if tentative.strip():
            raise RuntimeError(f"addresses still tentative in {self.name}:\n{tentative}")

    def delete(self) -> None:
        """Remove it (its interfaces go with it)."""
        if self.created:
            subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)
            self.created = False

    def wrap(self, program: Path, directory: Path) -> Path:
        """A script that runs ``program`` (with its arguments) inside the namespace."""
        return wrap_in_namespace(self.name, program, directory)

    @staticmethod
    def _ip(*args: str) -> None:
        ip = shutil.which("ip")
        if ip is None:
            raise RuntimeError("the `ip` command (iproute2) is needed to make a network namespace")
        done = subprocess.run([ip, *args], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def wrap_in_namespace(namespace: str, program: Path, directory: Path) -> Path:
    """A script in ``directory`` that runs ``program`` (with its arguments) inside the
    network namespace named ``namespace``: Playwright starts a browser there through it."""
    script = directory / f"{program.name}-in-{namespace}"
    script.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {program} "$@"\n')
    script.chmod(0o700)
    return script


class AgentProcess:
    """``edge-agent run`` with an embedded hub, a test pattern and a WAV talk-back sink."""

    def __init__(
        self,
        state_dir: Path,
        *,
        env: dict[str, str] | None = None,
        netns: NetNamespace | None = None,
        config: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.netns = netns
        self.talkback_wav = state_dir / "talkback.wav"
        self.env = {
            **os.environ,
            "EDGE_AGENT_STATE_DIR": str(state_dir),
            "EDGE_AGENT_NAME": DEVICE,
            "EDGE_AGENT_HUB__HOST": "127.0.0.1",
            "EDGE_AGENT_HUB__PORT": "0",
            "EDGE_AGENT_VIDEO__WIDTH": "320",
            "EDGE_AGENT_VIDEO__HEIGHT": "240",
            "EDGE_AGENT_VIDEO__FPS": "15",
            "EDGE_AGENT_AUDIO__SINK": "file",
            "EDGE_AGENT_AUDIO__FILE": str(self.talkback_wav),
            "EDGE_AGENT_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.env.pop("EDGE_AGENT_CONFIG", None)
        if config is not None:  # a settings file: serial ports, rules, telemetry
            state_dir.mkdir(parents=True, exist_ok=True)
            (state_dir / "agent.toml").write_text(config)
            self.env["EDGE_AGENT_CONFIG"] = str(state_dir / "agent.toml")
        self.url = ""
        self.admin_password = ""
        self._process: asyncio.subprocess.Process | None = None
        self._log = state_dir / "agent.log"
        self._log_file: Any = None

    async def __aenter__(self) -> Self:
        """Started (``start``); stopped when the block ends."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start it and wait for the viewer URL on its standard output."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "agent.cli", "run"]
        if self.netns is not None:
            command = [*self.netns.prefix, *command]
        self._log_file = self._log.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file,
        )
        try:
            async with asyncio.timeout(_START_WAIT):
                self.url = await self._read_url()
        except (TimeoutError, RuntimeError) as exc:
            await self.stop()
            raise RuntimeError(f"the agent did not start: {exc}\n{self.log_tail()}") from exc
        self.admin_password = (self.state_dir / "admin-password").read_text().strip()

    async def _read_url(self) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            match = _URL_RE.search(line.decode().strip())
            if match:
                return match.group(1).rstrip("/")
        raise RuntimeError(f"it exited with {await self._process.wait()}")

    async def add_user(
        self, name: str, password: str, *, role: str = "user", groups: str | None = None
    ) -> None:
        """An account on the embedded hub (``edge-agent user add``), granted ``groups``."""
        args: tuple[str, ...] = ("add", name, "--role", role, "--password-stdin")
        if groups is not None:
            args = (*args, "--groups", groups)
        await self._user_command(*args, stdin=password.encode() + b"\n")

    async def remove_user(self, name: str) -> None:
        """Delete an account of the embedded hub (``edge-agent user remove``)."""
        await self._user_command("remove", name)

    async def trigger(self, rule: str) -> None:
        """Fire a manual ``[[events]]`` rule (``edge-agent trigger``); its posts are in the
        agent's post queue when this returns, on their way to the hub."""
        await self._cli("trigger", rule)

    async def _user_command(self, *args: str, stdin: bytes = b"") -> None:
        await self._cli("user", *args, stdin=stdin)

    async def _cli(self, *args: str, stdin: bytes = b"") -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.cli",
            *args,
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate(stdin)
        if process.returncode != 0:
            raise RuntimeError(f"edge-agent {' '.join(args)} failed: {output.decode()}")

    def talkback(self) -> tuple[int, int]:
        """(samples, non-silent samples) the talk-back sink got so far."""
        return talkback_counts(self.talkback_wav)

    async def wait_talkback(self, *, samples: int = 0, nonsilent: int = 0) -> tuple[int, int]:
        """Wait until the sink's WAV holds ``samples`` samples, ``nonsilent`` of them loud."""
        async with asyncio.timeout(WAIT):
            # Another process writes the file and nothing signals a write, so poll it.
            while True:
                counts = self.talkback()
                if counts[0] >= samples and counts[1] >= nonsilent:
                    return counts
                await asyncio.sleep(0.05)

    async def reset_connections(self) -> None:
        """Reset every TCP connection to the hub (``ss -K``), as a network drop does."""
        port = self.url.rsplit(":", 1)[1]
        command = ["ss", "-K", "dst", "127.0.0.1", "dport", "=", port]
        if self.netns is not None:
            command = [*self.netns.prefix, *command]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, error = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"ss -K failed: {error.decode()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the agent's log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class Viewer:
    """The viewer page of one browser context."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        # What the page reported as going wrong, where a test collects it (rig.open_viewer).
        self.errors: list[str] = []
        page.set_default_timeout(WAIT * 1000)
        # Shown with a failing test's captured output: what the page itself said.
        page.on("console", lambda m: print(f"page console {m.type}: {m.text}"))
        page.on("pageerror", lambda e: print(f"page error: {e}"))

    async def open(self, query: str = "") -> None:
        """Load the viewer."""
        await self.page.goto(self.url + "/" + query)

    async def login(
        self, name: str, password: str, *, remember: bool = False, wait_for_list: bool = True
    ) -> None:
        """Log in through the form and (unless a link opens a call) wait for the device list."""
        page = self.page
        await page.fill("#login-name", name)
        await page.fill("#login-password", password)
        if remember:
            await page.check("#login-remember")
        await page.click("#login-submit")
        if wait_for_list:
            await page.wait_for_selector("#devices-view:not([hidden])")

    def device_button(self, name: str = DEVICE) -> Any:
        """The call button of a device in the list."""
        return self.page.locator(f'.device[data-name="{name}"] button')

    async def call(self, name: str = DEVICE) -> None:
        """Click the device's call button and wait until it picked up."""
        await self.device_button(name).click()
        await self.wait_until("window.viewer.call && window.viewer.call.state === 'connected'")

    async def wait_until(self, expression: str, *, seconds: float = WAIT) -> Any:
        """Wait until a JS expression is truthy on the page; its value."""
        handle = await self.page.wait_for_function(f"() => ({expression})", timeout=seconds * 1000)
        return await handle.json_value()

    async def js(self, expression: str) -> Any:
        """Evaluate a JS expression on the page."""
        return await self.page.evaluate(expression)

    async def hold_talk(self) -> None:
        """Press and hold the talk button (a real pointer press)."""
        box = await self.page.locator("#talk").bounding_box()
        assert box is not None
        await self.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await self.page.mouse.down()

    async def release_talk(self) -> None:
        """Let go of the talk button."""
        await self.page.mouse.up()

    async def metrics(self) -> dict[str, Any]:
        """The current or last call's timestamps (performance.now() milliseconds)."""
        return dict(
            await self.js(
                "(() => { const c = window.viewer.call || window.viewer.lastCall;"
                " return c ? {...c.metrics, framesShown: c.framesShown,"
                " localCandidates: c.localCandidates} : {}; })()"
            )
        )
