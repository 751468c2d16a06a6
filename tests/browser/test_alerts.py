"""Alerts in the viewer: the service worker shows a pushed alert, and its click opens the
viewer on the device that raised it, ready to call (here: calling it).

The push message is delivered to the service worker through the DevTools protocol (the
browser's own push service is on the internet, out of reach); its payload is made by the
hub's own push message code, so the worker reads what the hub really sends.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.async_api import BrowserContext

from agent.push.message import parse_send_request

from .harness import DEVICE, WAIT, AgentProcess, Viewer

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

_NOTIFICATIONS = (
    "navigator.serviceWorker.ready.then(r => r.getNotifications()).then(ns => ns.map(n =>"
    " ({title: n.title, body: n.body, data: n.data, tag: n.tag,"
    " actions: n.actions.map(a => a.action)})))"
)
# The notifications once there is one (the worker shows it when the push event arrives,
# and nothing tells the page when).
_SHOWN = f"""async () => {{
    for (;;) {{
        const shown = await {_NOTIFICATIONS};
        if (shown.length) return shown;
        await new Promise(resolve => setTimeout(resolve, 50));
    }}
}}"""
# A click on the alert, as the browser dispatches it to the worker.
_CLICK = """async () => {
    const [notification] = await self.registration.getNotifications();
    self.dispatchEvent(new NotificationEvent('notificationclick', {notification}));
    return notification.title;
}"""


async def _push(context: BrowserContext, viewer: Viewer, payload: bytes) -> None:
    """Deliver a push message to the viewer's service worker."""
    await viewer.js("navigator.serviceWorker.ready.then(() => true)")
    cdp = await context.new_cdp_session(viewer.page)
    registered: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_registrations(event: dict[str, Any]) -> None:
        live = [r for r in event["registrations"] if not r["isDeleted"]]
        if live and not registered.done():
            registered.set_result(live[0]["registrationId"])

    cdp.on("ServiceWorker.workerRegistrationUpdated", on_registrations)
    await cdp.send("ServiceWorker.enable")
    async with asyncio.timeout(WAIT):
        registration = await registered
    await cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": viewer.url + "/", "registrationId": registration, "data": payload.decode()},
    )


async def test_an_alert_opens_the_viewer_on_the_device_ready_to_call(
    context: BrowserContext, viewer: Viewer, agent: AgentProcess
) -> None:
    await context.grant_permissions(["notifications"], origin=agent.url)
    await viewer.login("admin", agent.admin_password)
    await viewer.device_button().wait_for()
    request = {"title": "Doorbell", "body": "Someone is at the door.", "device": DEVICE}
    payload = parse_send_request({**request, "call": True}, default_ttl=60).message.data
    await _push(context, viewer, payload)

    async with asyncio.timeout(WAIT):
        shown = await viewer.page.evaluate(_SHOWN)
    assert shown == [
        {
            "title": "Doorbell",
            "body": "Someone is at the door.",
            "data": {
                "device": DEVICE,
                "call": True,
                "url": f"/?device={DEVICE}&call=1",
                "event": None,
                "time": None,
            },
            "tag": f"device:{DEVICE}",
            "actions": ["call"],
        }
    ]
    assert await viewer.js("window.viewer.call") is None
    worker = context.service_workers[0]
    assert await worker.evaluate(_CLICK) == "Doorbell"
    await viewer.wait_until("window.viewer.call && window.viewer.call.state === 'connected'")
    assert await viewer.js("window.viewer.call.device.name") == DEVICE
    assert await viewer.js(_NOTIFICATIONS) == []  # the click closed it
    await viewer.page.click("#hangup")


async def test_enabling_alerts_tells_why_it_cannot(
    context: BrowserContext, viewer: Viewer, agent: AgentProcess
) -> None:
    await context.grant_permissions(["notifications"], origin=agent.url)
    await viewer.login("admin", agent.admin_password)
    await viewer.page.click("#tab-settings")
    await viewer.page.click("#alerts-on")
    await viewer.wait_until("window.viewer.errors.length > 0")
    [error] = await viewer.js("window.viewer.errors")
    # Headless Chromium has no way to its push service, and says so; the page passes it on.
    assert error.startswith("Could not enable alerts: The browser's push service ")
    assert await viewer.page.locator("#alerts-on").is_visible()
    assert await viewer.page.locator("#alerts-off").is_hidden()
    assert (
        await viewer.js("navigator.serviceWorker.ready.then(r => r.pushManager.getSubscription())")
        is None
    )


async def test_the_viewer_subscribes_and_unsubscribes_on_the_hub(
    viewer: Viewer, agent: AgentProcess
) -> None:
    # What "Enable alerts" and "Disable alerts" send once the browser has a subscription,
    # through the viewer's own API module, against the hub's real routes.
    await viewer.login("admin", agent.admin_password)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    body = {
        "endpoint": "https://push.example.net/send/abc123",
        "keys": {"p256dh": _b64url(point), "auth": _b64url(secrets.token_bytes(16))},
    }
    answers = await viewer.page.evaluate(
        """async (body) => {
            const { Api } = await import(location.origin + '/api.js');
            const { base64UrlToBytes } = await import(location.origin + '/alerts.js');
            const api = new Api();
            api.token = JSON.parse(sessionStorage.getItem('edge-agent.session')).token;
            const key = (await api.vapidPublicKey()).VAPIDPublicKey;
            return [base64UrlToBytes(key).length, key.length,
                    await api.subscribe(body), await api.unsubscribe(body)];
        }""",
        body,
    )
    assert answers == [
        65,  # an uncompressed P-256 point: the applicationServerKey
        87,
        "SUCCESS: Subscribed to receive notifications.",
        "SUCCESS: Unsubscribed from notifications.",
    ]


async def test_blocked_notifications_are_explained(viewer: Viewer, agent: AgentProcess) -> None:
    await viewer.login("admin", agent.admin_password)
    await viewer.page.click("#tab-settings")
    await viewer.page.click("#alerts-on")
    await viewer.wait_until("window.viewer.errors.length > 0")
    [error] = await viewer.js("window.viewer.errors")
    assert error.startswith("Could not enable alerts: Notifications ")
    assert await viewer.page.locator("#banner-text").text_content() == error


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
