"""Fixtures of the NAT tests: the lab, coturn, the hub, the device, callers and Chromium.

A module shares one lab and one set of processes (each test calls anew); a test that
changes the viewer's network undoes it. The lab's namespaces are removed when the module
ends, also when a fixture failed half-way. A failing test shows the tail of every log.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browser.harness import CHROMIUM, chromium_args, launch_chromium, wrap_in_namespace
from playwright.async_api import Browser, Page, async_playwright

from .lab import SERVER_IP, NatLab
from .rig import WAIT, Caller, Coturn, DeviceProcess, HubProcess, LoggedProcess


@dataclass
class World:
    """The lab and its long-running processes."""

    lab: NatLab
    directory: Path
    coturn: Coturn
    hub: HubProcess
    device: DeviceProcess
    processes: list[LoggedProcess]

    def logs(self) -> str:
        """The end of every log, for a failure report."""
        return "\n".join(f"--- {p.name} ({p.log})\n{p.tail(15)}" for p in self.processes)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    """The namespaces (see lab.py); removed afterwards whatever happened."""
    if os.geteuid() != 0:
        raise RuntimeError("the NAT tests build network namespaces: they need root")
    made = NatLab()
    try:
        made.create()
        yield made
    finally:
        made.delete()


def world_fixture(**hub_options: Any) -> Any:
    """A module fixture: coturn, the hub (``hub_options``) and the device, in ``lab``."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def world(lab: NatLab, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
        directory = tmp_path_factory.mktemp("nat")
        coturn = Coturn(lab, directory)
        hub = HubProcess(lab, directory)
        device = DeviceProcess(lab, directory)
        async with AsyncExitStack() as stack:
            made = World(lab, directory, coturn, hub, device, [coturn, hub, device])
            for process in made.processes:
                stack.push_async_callback(process.stop)
            try:
                await coturn.run()
                await hub.run(coturn, **hub_options)
                await device.run(await hub.token("porch"))
            except BaseException:
                print(made.logs())
                raise
            yield made

    return world


world = world_fixture()


@pytest.fixture
def show_logs_on_failure(request: pytest.FixtureRequest, world: World) -> Generator[None]:
    """Print the processes' logs when the test fails."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(world.logs())


CallerFactory = Callable[..., Awaitable[tuple[Caller, dict[str, Any]]]]


@pytest_asyncio.fixture(loop_scope="module")
async def call(world: World, show_logs_on_failure: None) -> AsyncIterator[CallerFactory]:
    """``caller, report = await call("hub")``: a Python caller in the viewer's namespace."""
    callers: list[Caller] = []

    async def make(mode: str, *args: str) -> tuple[Caller, dict[str, Any]]:
        caller = Caller(world.lab, world.directory, f"{len(callers)}-{mode}")
        callers.append(caller)
        world.processes.append(caller)
        return caller, await caller.call(await world.hub.token("alice"), mode, *args)

    yield make
    for caller in callers:
        await caller.stop()
        world.processes.remove(caller)


@pytest.fixture(scope="module")
def chromium_in_view(lab: NatLab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A script that runs Debian's Chromium inside the viewer's namespace."""
    return wrap_in_namespace(lab.name("view"), CHROMIUM, tmp_path_factory.mktemp("bin"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_in_view: Path) -> AsyncIterator[Browser]:
    """Headless Chromium in the viewer's namespace, with a fake camera and microphone."""
    args = chromium_args(loopback=False, host=SERVER_IP)  # the hub serves the pages
    async with async_playwright() as driver:
        chromium = await launch_chromium(driver, args, executable=chromium_in_view)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(
    browser: Browser, world: World, show_logs_on_failure: None, request: pytest.FixtureRequest
) -> AsyncIterator[Page]:
    """A fresh viewer page (its own context), failing the test if the page throws."""
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(WAIT * 1000)
    errors: list[str] = []
    console: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: console.append(f"{message.type}: {_no_token(message.text)}"))
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        state = await page.evaluate(_PAGE_STATE)
        print("--- page console\n" + "\n".join(console[-30:]) + f"\n--- page state\n{state}")
    await context.close()
    assert errors == [], f"the page threw: {errors}"


def _no_token(text: str) -> str:
    # Chromium prints failed WebSocket URLs whole; a test token is still a token.
    return re.sub(r"token=[^&\s']+", "token=********", text)


_PAGE_STATE = """(() => {
  const v = window.viewer;
  const c = v.call;
  return {
    link: v.link, frames: v.frames, errors: v.errors,
    call: c && {state: c.state, cid: c.cid, stalled: c.stalled, metrics: c.metrics,
                pc: c.pc && c.pc.connectionState, stats: c.stats},
    resumes: v.resumes.map((r) => ({recovered: r.recovered, attempts: r.attempts,
                                    stopped: r.stopped, error: r.lastError})),
  };
})()"""
