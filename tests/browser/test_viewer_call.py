"""A call's side panels in Chromium, against a real agent with serial ports on ptys: live
sensors with units and charts (and their troubles said as such), a console for the
writable port with its `allow` list enforced, and the device's status as a card.

The same run saves the README's screenshots of a call (desktop and phone) in ``docs/``.
"""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Browser

from .harness import DEVICE, AgentProcess, Viewer
from .rig import SensorBoard, closed, logged_in, save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PORT = '.port[data-port="{}"]'
FIELD = PORT + ' .field[data-field="{}"]'
LOG = '.console[data-port="relay"] .console-log'
SENT, REPLY = "\u203a ", "\u2039 "  # how the console marks what was sent and what came back


@pytest.fixture(scope="module")
def agent(board_agent: AgentProcess) -> AgentProcess:
    """The doorbell with its board and its embedded hub."""
    return board_agent


async def _in_a_call(browser: Browser, agent: AgentProcess, *, phone: bool = False) -> Viewer:
    viewer = await logged_in(browser, agent, phone=phone)
    await viewer.call()
    await viewer.page.locator("#sensors-card").wait_for()
    return viewer


async def _hung_up(viewer: Viewer) -> None:
    await viewer.page.click("#hangup")
    await viewer.wait_until("window.viewer.call === null")
    await closed(viewer)


async def _text(viewer: Viewer, selector: str) -> str:
    return str(await viewer.page.locator(selector).first.text_content())


async def test_sensors_are_live_with_units_and_ten_minutes_of_chart(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer = await _in_a_call(browser, agent)
    temp = FIELD.format("env", "temp")
    await viewer.page.locator(temp + " svg").wait_for()
    assert (await _text(viewer, temp + " .field-value")).endswith(" °C")
    assert (await _text(viewer, FIELD.format("env", "humidity") + " .field-value")).endswith(" %")
    label = await viewer.page.locator(temp + " svg").get_attribute("aria-label")
    assert label is not None
    assert label.startswith("env temp over the last ")
    # Live from the sensors channel: the value moves as the device sends.
    first = await _text(viewer, temp + " .field-value")
    await viewer.wait_until(
        f"document.querySelector('{temp} .field-value').textContent !== {json.dumps(first)}"
    )
    # The chart started with the hub's recent telemetry, then grew with every reading.
    points = "window.viewer.panels.series.ports.get('env').fields.get('temp').length"
    await viewer.wait_until(f"{points} > 8")
    await _hung_up(viewer)


async def test_the_console_writes_what_is_allowed_and_says_what_is_not(
    browser: Browser, agent: AgentProcess, board: SensorBoard
) -> None:
    viewer = await _in_a_call(browser, agent)
    page = viewer.page
    await page.locator('.console[data-port="relay"][data-ready="true"]').wait_for()
    picks = await page.locator(".console-picks button").all_text_contents()
    assert picks == ["LED ON", "LED OFF"]  # from allow = ["LED (ON|OFF)", "FAN [0-9]{1,3}"]
    await page.click('.console-picks button:text-is("LED ON")')
    await viewer.wait_until(
        f"document.querySelector('{LOG}').textContent.includes('{REPLY}OK LED ON')"
    )

    await page.fill(".console-form input", "FAN 42")
    await page.press(".console-form input", "Enter")
    await viewer.wait_until(
        f"document.querySelector('{LOG}').textContent.includes('{REPLY}OK FAN 42')"
    )

    await page.fill(".console-form input", "LED BLINK")
    await page.click('.console-form button[type="submit"]')
    refused = f"document.querySelector('{LOG} li.refused')"
    await viewer.wait_until(refused)
    text = str(await viewer.js(f"{refused}.textContent"))
    assert text.startswith("✗ command 'LED BLINK' refused: serial port 'relay' does not allow it")
    lines = await page.locator(f"{LOG} li").all_text_contents()
    assert lines[0] == f"{SENT}LED ON"
    expected = {f"{REPLY}OK LED ON", f"{SENT}FAN 42", f"{REPLY}OK FAN 42", f"{SENT}LED BLINK"}
    assert expected | {"✓ written"} <= set(lines)
    assert board.commands[:2] == ["LED ON", "FAN 42"]
    assert "LED BLINK" not in board.commands
    await viewer.wait_until("window.viewer.call.framesShown > 10")
    await save_screenshot(page, "call-desktop")
    await _hung_up(viewer)


async def test_the_status_is_a_card_with_the_raw_answer_behind_details(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer = await _in_a_call(browser, agent)
    card = "document.getElementById('status-list').textContent"
    await viewer.wait_until(f"{card}.includes('Port relay')")
    rows = await viewer.js(
        "Object.fromEntries([...document.querySelectorAll('#status-list dt')]"
        ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]))"
    )
    assert rows["Up for"].endswith((" s", " min"))
    assert rows["Microphone"].startswith("on (tone:")
    assert rows["Port env"].startswith("connected, ")
    assert rows["Port relay"].endswith("takes commands")
    assert rows["Alerts waiting"] == "none"
    assert rows["Calls"] == "1 of 4"
    # Figures come with the next status (the device measures each call every few seconds).
    await viewer.wait_until(f"{card}.includes('host route')")
    await viewer.wait_until("document.getElementById('st-route').textContent.startsWith('host')")
    assert await viewer.page.locator("#control-out").is_hidden()
    await viewer.page.click("#status-details summary")
    raw = json.loads(await _text(viewer, "#control-out"))
    assert raw["device"] == DEVICE
    assert set(raw["sensors"]) == {"env", "relay"}
    await _hung_up(viewer)


async def test_a_call_on_a_phone(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _in_a_call(browser, agent, phone=True)
    page = viewer.page
    await page.locator('.console[data-port="relay"][data-ready="true"]').wait_for()
    await page.click('.console-picks button:text-is("LED OFF")')
    await viewer.wait_until(f"document.querySelector('{LOG}').textContent.includes('OK LED OFF')")
    await viewer.wait_until("window.viewer.call.framesShown > 10")
    note = await _text(viewer, "#mic-note")
    assert "space bar" not in note  # no keyboard on a phone
    width = await viewer.js("document.documentElement.scrollWidth")
    assert width <= 390, "the phone layout scrolls sideways"
    await viewer.js("window.scrollTo(0, 0)")  # the console's button scrolled it down
    await save_screenshot(page, "call-phone")
    await page.locator("#sensors-card").evaluate("card => card.scrollIntoView({block: 'start'})")
    await save_screenshot(page, "call-panels-phone")
    await _hung_up(viewer)


async def test_unreadable_data_and_an_outage_are_said_as_such(
    browser: Browser, agent: AgentProcess, board: SensorBoard
) -> None:
    viewer = await _in_a_call(browser, agent)
    env = PORT.format("env")
    board.garbage()
    said = "1 unreadable line skipped (1 bad json)"
    await viewer.wait_until(f"document.querySelector('{env}').textContent.includes('{said}')")
    board.unplug_env()  # last in this module: the board's env device is gone for good
    await viewer.wait_until(f"document.querySelector('{env}').dataset.state === 'down'")
    problem = await _text(viewer, f"{env} .port-problem")
    assert problem.startswith("Not connected: lost")
    assert "retrying" in problem
    rows = "document.getElementById('status-list').textContent"
    await viewer.wait_until(f"{rows}.includes('Port envdown: lost')")
    await _hung_up(viewer)
