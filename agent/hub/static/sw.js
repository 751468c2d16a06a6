// The viewer's service worker: shows the hub's push alerts and, on a click, opens (or
// focuses) the viewer on the event the alert is about (its picture, and a call to the
// device); an alert that asks for a call (a doorbell) calls at once.
//
// Payload (JSON, from the hub's push sender): {title, body, device?, url?, call?, event?,
// time?, snapshot?, id?}; fields may also come under `data`. `url` is a path on the hub
// such as "/?device=doorbell&event=bell&at=1715000000.5&call=1".

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
  event.waitUntil(openViewer({
    device: data.device || null, call, path: data.url, event: data.event || null, time: data.time ?? null,
  }));
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
  return withPath(alertOf(merged), merged.url);
}

function alertOf(merged) {
  return {
    title: text(merged.title) || 'edge-agent',
    body: text(merged.body),
    device: text(merged.device) || null,
    call: merged.call === true,
    event: text(merged.event) || null,
    time: typeof merged.time === 'number' ? merged.time : null,
    id: text(merged.id) || null,
    snapshot: typeof merged.snapshot === 'string' ? merged.snapshot : null,
  };
}

function withPath(alert, url) {
  return { ...alert, url: viewerPath(url, alert.device, alert.call, alert.event, alert.time) };
}

function notificationOptions(alert) {
  const tag = alert.id || (alert.device ? `device:${alert.device}` : undefined);
  const options = {
    body: alert.body,
    icon: 'icon-192.png',
    badge: 'icon.svg',
    data: { device: alert.device, call: alert.call, url: alert.url, event: alert.event, time: alert.time },
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

// Only a path on this origin may be opened; anything else falls back to the event's page.
function viewerPath(url, device, call, event = null, time = null) {
  if (typeof url === 'string' && url.startsWith('/') && !url.startsWith('//') && !url.includes('\\')) return url;
  if (!device) return '/';
  const params = new URLSearchParams({ device });
  if (event) params.set('event', event);
  if (event && time != null) params.set('at', String(time));
  if (call) params.set('call', '1');
  return `/?${params}`;
}

async function openViewer({ device, call, path, event, time }) {
  const url = new URL(path || viewerPath(null, device, call, event, time), self.location.origin);
  if (call) url.searchParams.set('call', '1');
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const viewer = windows.find((client) => new URL(client.url).origin === self.location.origin);
  if (viewer) {
    // The open viewer keeps its login and realtime connection: tell it, then bring it up.
    viewer.postMessage({
      type: 'open-device',
      device: device || url.searchParams.get('device'),
      call,
      event: event || url.searchParams.get('event'),
      time: time ?? (url.searchParams.has('at') ? Number(url.searchParams.get('at')) : null),
    });
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
