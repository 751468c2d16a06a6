"""What the viewer's product tests share: an agent with serial devices on ptys, the
viewer logged in at a given size, and screenshots for the README.

:class:`SensorBoard` is a small board on two serial ports: ``env`` sends JSON readings
(temperature and humidity) four times a second, ``relay`` is writable and answers every
command it is sent with ``OK <command>``. :func:`agent_settings` is the agent's TOML for
it: telemetry every second, two manual rules (one takes a snapshot), tile pictures every
two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from playwright.async_api import Browser, Page, ViewportSize

from tests.sensors.ptys import PtyDevice

from .harness import WAIT, AgentProcess, Viewer

__all__ = [
    "DESKTOP",
    "DOCS",
    "PHONE",
    "SensorBoard",
    "agent_settings",
    "closed",
    "logged_in",
    "open_viewer",
    "save_screenshot",
]

DOCS: Final = Path(__file__).resolve().parents[2] / "docs"
DESKTOP: Final[ViewportSize] = {"width": 1280, "height": 800}
PHONE: Final[ViewportSize] = {"width": 390, "height": 844}
READING_SECONDS: Final = 0.25


class SensorBoard:
    """The device ends of two serial ports, and what the devices on them do."""

    def __init__(self, directory: Path) -> None:
        self.env = PtyDevice(directory / "env")
        self.relay = PtyDevice(directory / "relay")
        self.temp = 21.0
        self.commands: list[str] = []
        self._held: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        # Holding the other end open: reads never fail before the agent opens the port.
        self._held = [os.open(d.path, os.O_RDWR | os.O_NOCTTY) for d in (self.env, self.relay)]
        self._tasks = [asyncio.create_task(self._readings()), asyncio.create_task(self._answer())]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fd in self._held:
            os.close(fd)
        self.env.close()
        self.relay.close()

    def garbage(self) -> None:
        """A line the ``env`` port cannot read (not JSON)."""
        self.env.send(b"{garbage\n")

    def unplug_env(self) -> None:
        """The ``env`` device goes away (its cable is pulled)."""
        for task in self._tasks[:1]:
            task.cancel()
        os.close(self._held.pop(0))
        self.env.unplug()

    async def _readings(self) -> None:
        n = 0
        while True:
            n += 1
            self.temp = round(21.0 + (n % 40) / 20, 2)
            reading = {"temp": self.temp, "humidity": 40 + n % 7}
            self.env.send(json.dumps(reading).encode() + b"\n")
            await asyncio.sleep(READING_SECONDS)  # the device's own pace

    async def _answer(self) -> None:
        while True:
            command = (await self.relay.read_line()).strip()
            self.commands.append(command.decode())
            self.relay.send(b"OK " + command + b"\n")


def agent_settings(board: SensorBoard, *, extra: str = "") -> str:
    """The agent's settings file for ``board``."""
    return f"""
name = "doorbell"
groups = ["devices"]

[sensors]
telemetry_seconds = 1

[[serial]]
name = "env"
port = "{board.env.path}"
framing = "json"
units = {{ temp = "°C", humidity = "%" }}

[[serial]]
name = "relay"
port = "{board.relay.path}"
writable = true
allow = ["LED (ON|OFF)", "FAN [0-9]{{1,3}}"]

[[events]]
name = "doorbell-pressed"
trigger = {{ type = "manual" }}
actions = [{{ type = "post" }}, {{ type = "snapshot" }}]

[[events]]
name = "too-warm"
trigger = {{ type = "manual" }}
actions = [{{ type = "post" }}]

[hub.events]
thumbnail_seconds = 2
{extra}
"""


async def open_viewer(browser: Browser, url: str, *, phone: bool = False, **context: Any) -> Viewer:
    """A fresh context at the phone's or the desktop's size, the viewer opened in it; its
    ``errors`` collects page errors and console errors."""
    size = PHONE if phone else DESKTOP
    ctx = await browser.new_context(
        viewport=size, is_mobile=phone, has_touch=phone, device_scale_factor=1, **context
    )
    page = await ctx.new_page()
    viewer = Viewer(page, url)
    page.on("pageerror", lambda error: viewer.errors.append(str(error)))
    page.on("console", lambda m: viewer.errors.append(m.text) if m.type == "error" else None)
    await viewer.open()
    return viewer


async def logged_in(browser: Browser, agent: AgentProcess, **options: Any) -> Viewer:
    """The viewer opened as ``open_viewer`` does (``options``: its keywords), logged in as
    the agent's admin, the device list shown."""
    viewer = await open_viewer(browser, agent.url, **options)
    await viewer.login("admin", agent.admin_password)
    return viewer


async def closed(viewer: Viewer) -> None:
    """Close the viewer's browser context, asserting the page reported no error."""
    assert viewer.errors == [], "console errors"
    await viewer.page.context.close()


async def save_screenshot(page: Page, name: str) -> Path:
    """``docs/viewer-NAME.png``: what the README shows. Animations are stopped first."""
    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"viewer-{name}.png"
    with contextlib.suppress(Exception):
        await page.evaluate("document.activeElement && document.activeElement.blur()")
    await page.screenshot(path=str(path), animations="disabled", timeout=WAIT * 1000)
    return path
