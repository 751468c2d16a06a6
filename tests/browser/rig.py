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

from .harness import WAIT, Viewer

__all__ = [
    "DESKTOP",
    "DOCS",
    "PHONE",
    "SensorBoard",
    "agent_settings",
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


async def open_viewer(
    browser: Browser, url: str, *, phone: bool = False, **context: Any
) -> tuple[Viewer, list[str]]:
    """A fresh context at the phone's or the desktop's size, the viewer opened in it; the
    list collects page errors and console errors."""
    size = PHONE if phone else DESKTOP
    ctx = await browser.new_context(
        viewport=size, is_mobile=phone, has_touch=phone, device_scale_factor=1, **context
    )
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    viewer = Viewer(page, url)
    await viewer.open()
    return viewer, errors


async def save_screenshot(page: Page, name: str) -> Path:
    """``docs/viewer-NAME.png``: what the README shows. Animations are stopped first."""
    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"viewer-{name}.png"
    with contextlib.suppress(Exception):
        await page.evaluate("document.activeElement && document.activeElement.blur()")
    await page.screenshot(path=str(path), animations="disabled", timeout=WAIT * 1000)
    return path
