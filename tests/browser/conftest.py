"""Fixtures of the browser tests: an agent with its embedded hub, Chromium, viewer pages,
and the product tests' doorbell with serial devices on its board (``board_agent``, rig.py).

The agent and the browser are shared by the tests of one module (each test gets its own
browser context, so its own login and realtime connection); modules that need a
differently configured agent make their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright

from .harness import AgentProcess, Viewer, chromium_args, launch_chromium, write_voice_wav
from .rig import SensorBoard, agent_settings

LOOPBACK_ONLY = {"EDGE_AGENT_CALLS__HOST_ADDRESSES": '["127.0.0.1"]'}


@pytest.fixture(scope="session")
def voice_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone's sound."""
    return write_voice_wav(tmp_path_factory.mktemp("media") / "voice.wav")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def playwright() -> AsyncIterator[Playwright]:
    """Playwright's driver (no browser download: Chromium is Debian's)."""
    async with async_playwright() as driver:
        yield driver


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(playwright: Playwright, voice_wav: Path) -> AsyncIterator[Browser]:
    """Headless Chromium on loopback, fake camera, the voice WAV as microphone."""
    chromium = await launch_chromium(playwright, chromium_args(microphone=voice_wav))
    yield chromium
    await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AgentProcess]:
    """``edge-agent run`` with an embedded hub on 127.0.0.1, calls on loopback only."""
    async with AgentProcess(tmp_path_factory.mktemp("agent"), env=LOOPBACK_ONLY) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def board(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SensorBoard]:
    """The serial devices on the doorbell's board."""
    async with SensorBoard(tmp_path_factory.mktemp("board")) as sensors:
        yield sensors


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def board_agent(
    tmp_path_factory: pytest.TempPathFactory, board: SensorBoard
) -> AsyncIterator[AgentProcess]:
    """The doorbell with its board (``rig.agent_settings``) and its embedded hub."""
    directory = tmp_path_factory.mktemp("board-agent")
    config = agent_settings(board)
    async with AgentProcess(directory, env=LOOPBACK_ONLY, config=config) as process:
        yield process


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile for one test."""
    ctx = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=False)
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture(loop_scope="module")
async def viewer(context: BrowserContext, agent: AgentProcess) -> AsyncIterator[Viewer]:
    """The viewer page, opened; fails the test if the page throws."""
    page = await context.new_page()
    view = Viewer(page, agent.url)
    page.on("pageerror", lambda error: view.errors.append(str(error)))
    await view.open()
    yield view
    assert view.errors == [], f"the page threw: {view.errors}"
