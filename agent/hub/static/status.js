// The device's `status` answer as a card: how long it has been up, camera and
// microphone, serial ports, alerts waiting, calls with their routes. The raw answer stays
// available behind a "Details" toggle (the caller puts it there).

import { bitrate, duration, number } from './format.js';

// [label, text, kind] rows for the card; kind 'warn' marks something to look at.
export function statusRows(status) {
  const rows = [];
  if (status.uptime_seconds != null) rows.push(['Up for', duration(status.uptime_seconds)]);
  if (status.hub) rows.push(['Hub link', status.hub, status.hub === 'connected' ? '' : 'warn']);
  const media = status.media || {};
  const missing = status.missing || {};
  rows.push(mediaRow('Camera', media.video, missing.video));
  rows.push(mediaRow('Microphone', media.audio, missing.audio));
  for (const [name, port] of Object.entries(status.sensors || {})) rows.push(portRow(name, port));
  if (status.outbox) {
    const depth = status.outbox.depth || 0;
    rows.push(['Alerts waiting', depth ? `${number(depth)} (${status.outbox.text || 'sending'})` : 'none', depth ? 'warn' : '']);
  }
  const calls = status.calls;
  if (calls) {
    rows.push(['Calls', `${calls.active} of ${calls.max}${calls.refused ? `, ${calls.refused} refused since start` : ''}`]);
    (calls.list || []).forEach((call, index) => rows.push([`Call ${index + 1}`, callText(call)]));
  }
  return rows.filter(Boolean);
}

// Fill `list` (a <dl>) with the rows of `status`.
export function renderStatus(list, status) {
  const items = [];
  for (const [label, text, kind] of statusRows(status)) {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.textContent = text;
    if (kind) dd.dataset.kind = kind;
    items.push(dt, dd);
  }
  list.replaceChildren(...items);
}

function mediaRow(label, media, missing) {
  if (!media && !missing) return null;
  const state = media?.state || 'unknown';
  const source = media?.source ? ` (${media.source})` : '';
  if (missing) return [label, `${missing} Using the ${label === 'Camera' ? 'test pattern' : 'test tone'}.`, 'warn'];
  const words = {
    live: 'on',
    idle: 'off until someone watches',
    opening: 'opening',
    fallback: `not found: using the ${label === 'Camera' ? 'test pattern' : 'test tone'}`,
  }[state] || state;
  return [label, `${words}${source}`, state === 'fallback' ? 'warn' : ''];
}

function portRow(name, port) {
  const bad = Object.values(port.bad_data || {}).reduce((a, b) => a + b, 0);
  const parts = [port.state === 'open' ? 'connected' : port.state];
  if (port.state === 'down' && port.down_reason) parts[0] = `down: ${port.down_reason}`;
  parts.push(`${number(port.readings || 0)} readings`);
  if (bad) parts.push(`${number(bad)} unreadable`);
  if (port.outages) parts.push(`${number(port.outages)} outages`);
  if (port.writable) parts.push('takes commands');
  return [`Port ${name}`, parts.join(', '), port.state === 'open' && !bad ? '' : 'warn'];
}

function callText(call) {
  if (!call.route) return `${duration(call.seconds)}, connecting`;
  const parts = [`${call.route} route`];
  if (call.relay_protocol) parts.push(`relay over ${call.relay_protocol}`);
  if (call.rtt_ms != null) parts.push(`${Math.round(call.rtt_ms)} ms round trip`);
  if (call.bitrate_bps != null) parts.push(bitrate(call.bitrate_bps));
  parts.push(`up ${duration(call.seconds)}`);
  return parts.join(', ');
}
