"""The viewer as an app people keep on their phone: installable, usable by keyboard and
screen reader, tidy at a phone's size, clean on load, and never silent about alerts.

Browser states a headless Chromium cannot be put in (an insecure page, no push support, a
private window, an existing push subscription) are made by replacing the browser's own
objects before the page loads; everything else is the real browser against the real agent.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.async_api import Browser

from .harness import DEVICE, WAIT, AgentProcess, Viewer
from .rig import closed, logged_in, open_viewer

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

# Roles a person acts on: each needs a name a screen reader can say.
_CONTROLS = {"button", "link", "textbox", "combobox", "checkbox", "tab", "searchbox"}


async def _logged_in(browser: Browser, agent: AgentProcess, **options: Any) -> Viewer:
    viewer = await logged_in(browser, agent, **options)
    await viewer.device_button().wait_for()
    return viewer


async def test_it_installs_to_a_home_screen(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent, phone=True)
    cdp = await viewer.page.context.new_cdp_session(viewer.page)
    manifest = await cdp.send("Page.getAppManifest")
    assert manifest["errors"] == []
    assert manifest["url"] == f"{agent.url}/manifest.json"
    installability = await cdp.send("Page.getInstallabilityErrors")
    # Playwright's contexts are incognito profiles, where nothing installs; nothing else stops it.
    errors = [e["errorId"] for e in installability["installabilityErrors"]]
    assert errors in ([], ["in-incognito"])
    async with httpx.AsyncClient(base_url=agent.url, timeout=WAIT) as http:
        for icon in (
            "icon-192.png",
            "icon-512.png",
            "icon-maskable-512.png",
            "apple-touch-icon.png",
        ):
            answer = await http.get(f"/{icon}")
            assert answer.status_code == 200, icon
            assert answer.content.startswith(b"\x89PNG"), icon
    await closed(viewer)


async def test_every_control_has_a_name(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent)
    page = viewer.page
    cdp = await page.context.new_cdp_session(page)
    unnamed: dict[str, list[str]] = {}
    for view in ("devices", "timeline", "settings"):
        await page.click(f"#tab-{view}")
        unnamed[view] = await _unnamed(cdp)
    await page.click("#tab-devices")
    await viewer.call()
    await viewer.wait_until("document.getElementById('status-list').children.length > 0")
    unnamed["call"] = await _unnamed(cdp)
    assert unnamed == {"devices": [], "timeline": [], "settings": [], "call": []}
    await page.click("#hangup")
    await closed(viewer)


async def test_it_works_with_the_keyboard_alone(browser: Browser, agent: AgentProcess) -> None:
    viewer = await _logged_in(browser, agent)
    page = viewer.page
    # The tabs: arrows move between them (WAI-ARIA tabs pattern).
    await page.focus("#tab-devices")
    await page.keyboard.press("ArrowRight")
    assert await page.locator("#tab-timeline").get_attribute("aria-selected") == "true"
    assert await viewer.js("document.activeElement.id") == "tab-timeline"
    await page.keyboard.press("Home")
    assert await viewer.js("document.activeElement.id") == "tab-devices"
    # Tab to the device's picture, Enter calls it; Tab to Hang up, Enter ends it.
    target = f"Call {DEVICE}"
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await viewer.js("document.activeElement.getAttribute('aria-label')") == target:
            break
    else:
        pytest.fail(f"Tab never reached {target!r}")
    await page.keyboard.press("Enter")
    await viewer.wait_until("window.viewer.call && window.viewer.call.state === 'connected'")
    await page.focus("#hangup")
    await page.keyboard.press("Enter")
    await viewer.wait_until("window.viewer.call === null")
    await closed(viewer)


async def test_the_phone_layout_is_one_column_with_a_one_line_header(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer = await _logged_in(browser, agent, phone=True)
    page = viewer.page
    for view in ("devices", "timeline", "settings"):
        await page.click(f"#tab-{view}")
        header = await viewer.js(
            "['h1', '#link', '#logout'].map(s => document.querySelector('.bar ' + s)"
            ".getBoundingClientRect()).map(r => [Math.round(r.top), Math.round(r.bottom)])"
        )
        tops = {top for top, _ in header}
        assert max(tops) - min(tops) <= 12, f"the header wraps: {header}"
        assert await viewer.js("document.querySelector('.bar').offsetHeight") <= 60
        assert await viewer.js("document.documentElement.scrollWidth") <= 390, view
    assert "space bar" not in (await page.content()), "a desktop-only hint on a phone"
    await closed(viewer)


# -- alerts: every state has words that say what to do -----------------------------------


async def _alerts_state(
    browser: Browser, agent: AgentProcess, init: str = "", **options: Any
) -> tuple[Viewer, str, str]:
    viewer = await open_viewer(browser, agent.url, **options)
    if init:
        await viewer.page.add_init_script(init)
        await viewer.page.reload()
    await viewer.login("admin", agent.admin_password)
    await viewer.page.click("#tab-settings")
    state = viewer.page.locator("#alerts-state")
    await viewer.wait_until(
        "document.getElementById('alerts-state').dataset.kind !== 'info'"
        " || !document.getElementById('alerts-state').textContent.startsWith('Checking')"
    )
    assert await state.is_visible()
    return viewer, str(await state.text_content()), str(await state.get_attribute("data-kind"))


async def test_alerts_on_an_insecure_page_say_to_use_https(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer, text, kind = await _alerts_state(
        browser, agent, "Object.defineProperty(window, 'isSecureContext', {value: false});"
    )
    assert text.startswith("Alerts need a secure page: open the viewer at its https:// address")
    assert kind == "error"
    assert await viewer.page.locator("#alerts-on").is_hidden()
    await closed(viewer)


async def test_alerts_in_a_browser_without_push_say_what_to_do(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer, text, kind = await _alerts_state(browser, agent, "delete window.PushManager;")
    assert "add the viewer to the Home Screen" in text
    assert kind == "error"
    await closed(viewer)


async def test_alerts_in_a_private_window_say_so(browser: Browser, agent: AgentProcess) -> None:
    viewer, text, kind = await _alerts_state(
        browser,
        agent,
        "delete Navigator.prototype.serviceWorker;",  # as Firefox's private windows have it
    )
    assert "private window" in text
    assert kind == "error"
    await closed(viewer)


async def test_alerts_blocked_by_the_person_say_where_to_allow_them(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer, text, kind = await _alerts_state(browser, agent)
    assert text.startswith("Alerts are off for this browser.")
    assert kind == "info"
    await viewer.page.click("#alerts-on")  # headless Chromium answers the prompt "block"
    await viewer.wait_until("document.getElementById('alerts-state').dataset.kind === 'error'")
    text = str(await viewer.page.locator("#alerts-state").text_content())
    assert text.startswith("Could not enable alerts: Notifications are blocked for this site")
    assert "site settings" in text
    viewer.errors.clear()  # the refusal is the browser's log line
    await closed(viewer)


async def test_alerts_without_a_push_service_are_never_silent(
    browser: Browser, agent: AgentProcess
) -> None:
    viewer, _, _ = await _alerts_state(browser, agent)
    await viewer.page.context.grant_permissions(["notifications"], origin=agent.url)
    await viewer.page.click("#alerts-on")
    # At once: what it is waiting for; then what went wrong (no push service here).
    said = await viewer.wait_until(
        "(t => t.startsWith('Asking') || t.startsWith('Registering') || t.startsWith('Could not'))"
        "(document.getElementById('alerts-state').textContent)",
        seconds=2,
    )
    assert said
    await viewer.wait_until("document.getElementById('alerts-state').dataset.kind === 'error'")
    text = str(await viewer.page.locator("#alerts-state").text_content())
    assert text.startswith("Could not enable alerts: The browser's push service ")
    assert await viewer.page.locator("#alerts-on").is_visible()  # try again later
    viewer.errors.clear()  # the browser logs the failed registration
    await closed(viewer)


async def test_alerts_that_are_on_say_so_and_can_be_turned_off(
    browser: Browser, agent: AgentProcess
) -> None:
    subscribed = """
      PushManager.prototype.getSubscription = async function () {
        return {endpoint: 'https://push.example.net/x', options: {},
                toJSON: () => ({endpoint: 'https://push.example.net/x',
                                keys: {p256dh: 'k', auth: 'a'}}),
                unsubscribe: async () => true};
      };
    """
    viewer, text, kind = await _alerts_state(browser, agent, subscribed)
    assert text.startswith("Alerts are on: this browser is told when a device raises one")
    assert kind == "ok"
    assert await viewer.page.locator("#alerts-off").is_visible()
    assert await viewer.page.locator("#alerts-on").is_hidden()
    await closed(viewer)


async def _unnamed(cdp: Any) -> list[str]:
    """Controls shown that a screen reader could not name."""
    tree = await cdp.send("Accessibility.getFullAXTree")
    found = []
    for node in tree["nodes"]:
        role = node.get("role", {}).get("value")
        if node.get("ignored") or role not in _CONTROLS:
            continue
        name = (node.get("name") or {}).get("value", "")
        if not str(name).strip():
            found.append(f"{role} #{node.get('backendDOMNodeId')}")
    return found
