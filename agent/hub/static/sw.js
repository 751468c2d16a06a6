// The viewer's service worker: shows the hub's push alerts and, on a click, opens (or
// focuses) the viewer on the device that raised the alert, ready to call it.
//
// Payload (JSON, from the hub's push sender): {title, body, device?, url?, call?, event?,
// time?, snapshot?, id?}; fields may also come under `data`. `url` is a path on the hub
// such as "/?device=doorbell&call=1".

self.addEventListener('install', (event) => event.waitUntil(self.skipWaiting()));
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  const alert = readAlert(event.data);
  event.waitUntil(self.registration.showNotification(alert.title, notificationOptions(alert)));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const call = Boolean(data.call || event.action === 'call');
  event.waitUntil(openViewer({ device: data.device || null, call, path: data.url }));
});

function readAlert(data) {
  let payload = {};
  if (data) {
    try {
      payload = data.json();
    } catch {
      payload = { body: data.text() };
    }
  }
  const merged = { ...(payload.data && typeof payload.data === 'object' ? payload.data : {}), ...payload };
  return {
    title: text(merged.title) || 'edge-agent',
    body: text(merged.body),
    device: text(merged.device) || null,
    call: merged.call === true,
    url: viewerPath(merged.url, text(merged.device), merged.call === true),
    id: text(merged.id) || null,
    time: typeof merged.time === 'number' ? merged.time : null,
    snapshot: typeof merged.snapshot === 'string' ? merged.snapshot : null,
  };
}

function notificationOptions(alert) {
  const tag = alert.id || (alert.device ? `device:${alert.device}` : undefined);
  const options = {
    body: alert.body,
    icon: 'icon.svg',
    badge: 'icon.svg',
    data: { device: alert.device, call: alert.call, url: alert.url },
    requireInteraction: alert.call, // a doorbell waits for the person
  };
  if (tag) {
    options.tag = tag; // a newer alert from the same device replaces the older one
    options.renotify = true;
  }
  if (alert.time) options.timestamp = alert.time * 1000;
  if (alert.snapshot) options.image = alert.snapshot;
  if (alert.device) options.actions = [{ action: 'call', title: `Call ${alert.device}` }];
  return options;
}

// Only a path on this origin may be opened; anything else falls back to the device page.
function viewerPath(url, device, call) {
  if (typeof url === 'string' && url.startsWith('/') && !url.startsWith('//') && !url.includes('\\')) return url;
  if (!device) return '/';
  return `/?device=${encodeURIComponent(device)}${call ? '&call=1' : ''}`;
}

async function openViewer({ device, call, path }) {
  const url = new URL(path || viewerPath(null, device, call), self.location.origin);
  if (call) url.searchParams.set('call', '1');
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const viewer = windows.find((client) => new URL(client.url).origin === self.location.origin);
  if (viewer) {
    // The open viewer keeps its login and realtime connection: tell it, then bring it up.
    viewer.postMessage({ type: 'open-device', device: device || url.searchParams.get('device'), call });
    try {
      await viewer.focus();
    } catch {
      // focusing needs the click's user activation; the message is what matters
    }
    return viewer;
  }
  return self.clients.openWindow(url.href);
}

function text(value) {
  return typeof value === 'string' ? value : '';
}
