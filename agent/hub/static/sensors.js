// Sensor readings for people: per port and field, with units, a chart of the last ten
// minutes, and the port's troubles (down, unreadable data) said as such.
//
// Readings come from the `sensors` data channel during a call ({port, ts, fields} or
// {port, ts, raw}), and from the devices' telemetry posts otherwise ({ts, readings:
// {port: reading}, ports: {port: {state, readings, bad_data, outages, units}}}); the
// `status` command says the same of each port in more detail. SensorSeries keeps them
// (pure); renderSensors draws them.

import { lineChart } from './chart.js';
import { ago, number, withUnit } from './format.js';

export const WINDOW_SECONDS = 600;
const MAX_POINTS = 1200; // per field: two readings a second for ten minutes

export class SensorSeries {
  constructor(windowSeconds = WINDOW_SECONDS) {
    this.windowSeconds = windowSeconds;
    this.ports = new Map();
    this.newest = 0; // the chart's right edge: the newest reading (the device's clock)
    this.oldest = Infinity; // the first reading seen: the charts start there, if later
  }

  // The charts' time axis: the last windowSeconds, or since the first reading if later.
  span() {
    return [Math.max(this.newest - this.windowSeconds, Math.min(this.oldest, this.newest)), this.newest];
  }

  addReading(reading) {
    if (!reading || typeof reading.port !== 'string' || typeof reading.ts !== 'number') return;
    const port = this._port(reading.port);
    if (port.lastTs === reading.ts) return; // telemetry repeats a port's latest reading
    port.lastTs = reading.ts;
    this.newest = Math.max(this.newest, reading.ts);
    this.oldest = Math.min(this.oldest, reading.ts);
    if (reading.fields && typeof reading.fields === 'object') {
      for (const [name, value] of Object.entries(reading.fields)) {
        const points = port.fields.get(name) ?? [];
        points.push([reading.ts, typeof value === 'number' ? value : NaN, value]);
        if (points.length > MAX_POINTS) points.shift();
        port.fields.set(name, points);
      }
    } else if (typeof reading.raw === 'string') {
      port.raw = reading.encoding === 'base64' ? `(${reading.raw.length * 0.75 | 0} bytes)` : reading.raw;
    }
    this._prune(port);
  }

  addTelemetry(point) {
    if (!point || typeof point.readings !== 'object') return;
    for (const [name, info] of Object.entries(point.ports || {})) {
      this._port(name).info = { ...this._port(name).info, ...portInfo(info) };
    }
    for (const reading of Object.values(point.readings)) this.addReading(reading);
  }

  // The `status` command's `sensors` ({name: {state, down_reason, bad_data: {kind: n}, ...}}).
  setStatus(sensors) {
    for (const [name, status] of Object.entries(sensors || {})) {
      const port = this._port(name);
      port.info = { ...port.info, ...portInfo(status) };
      if (status.latest) this.addReading(status.latest);
    }
  }

  list() {
    return [...this.ports.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  _port(name) {
    let port = this.ports.get(name);
    if (!port) {
      port = { name, fields: new Map(), raw: null, lastTs: null, info: {} };
      this.ports.set(name, port);
    }
    return port;
  }

  _prune(port) {
    const oldest = this.newest - this.windowSeconds;
    for (const points of port.fields.values()) {
      while (points.length && points[0][0] < oldest) points.shift();
    }
  }
}

// One line for a device tile: "temp 21.5 °C · humidity 40 %", "env is down".
export function sensorSummary(telemetry, { maxFields = 3 } = {}) {
  if (!telemetry) return '';
  const parts = [];
  for (const [name, info] of Object.entries(telemetry.ports || {})) {
    if (info.state && info.state !== 'open') parts.push(`${name} is ${info.state}`);
  }
  for (const [portName, reading] of Object.entries(telemetry.readings || {})) {
    const units = telemetry.ports?.[portName]?.units || {};
    for (const [field, value] of Object.entries(reading.fields || {})) {
      if (parts.length >= maxFields) break;
      parts.push(`${field} ${withUnit(value, units[field])}`);
    }
  }
  return parts.join(' · ');
}

// Draw every port of `series` into `container` (replacing what was there).
export function renderSensors(container, series, { now = Date.now() / 1000 } = {}) {
  const ports = series.list();
  container.replaceChildren(...ports.map((port) => portCard(port, series)));
  if (!ports.length) {
    const empty = document.createElement('p');
    empty.className = 'muted';
    empty.textContent = 'No readings yet.';
    container.append(empty);
  }
  container.dataset.updated = String(now);
}

function portCard(port, series) {
  const info = port.info;
  const card = document.createElement('section');
  card.className = 'port';
  card.dataset.port = port.name;
  card.dataset.state = info.state || 'unknown';
  const head = document.createElement('div');
  head.className = 'port-head';
  const title = document.createElement('h4');
  title.textContent = port.name;
  head.append(title);
  if (info.state) head.append(badge(info.state));
  card.append(head);
  for (const problem of problems(port)) card.append(note(problem, 'port-problem'));
  const fields = document.createElement('ul');
  fields.className = 'fields';
  const [t0, t1] = series.span();
  for (const [name, points] of port.fields) fields.append(fieldRow(port, name, points, t0, t1));
  if (fields.children.length) card.append(fields);
  if (port.raw !== null) card.append(note(`Last line: ${port.raw}`, 'port-raw'));
  if (port.lastTs) card.append(note(`Last reading ${ago(port.lastTs)}`, 'port-age muted'));
  return card;
}

function fieldRow(port, name, points, t0, t1) {
  const unit = port.info.units?.[name] || '';
  const item = document.createElement('li');
  item.className = 'field';
  item.dataset.field = name;
  const head = document.createElement('div');
  head.className = 'field-head';
  const label = document.createElement('span');
  label.className = 'field-name';
  label.textContent = name;
  const value = document.createElement('span');
  value.className = 'field-value';
  const last = points[points.length - 1];
  value.textContent = last ? withUnit(last[2], unit) : '–';
  head.append(label, value);
  item.append(head);
  if (points.some(([, v]) => Number.isFinite(v))) {
    item.append(lineChart(points, { label: `${port.name} ${name}`, unit, t0, t1 }));
  }
  return item;
}

function problems(port) {
  const info = port.info;
  const out = [];
  if (info.state === 'down') out.push(`Not connected${info.downReason ? `: ${info.downReason}` : ''}; retrying.`);
  if (info.badData) out.push(`${number(info.badData)} unreadable ${info.badData === 1 ? 'line' : 'lines'} skipped${info.badKinds ? ` (${info.badKinds})` : ''}.`);
  if (info.outages) out.push(`${number(info.outages)} ${info.outages === 1 ? 'outage' : 'outages'} since the device started.`);
  return out;
}

function portInfo(status) {
  const bad = status.bad_data;
  const badData = typeof bad === 'number' ? bad : Object.values(bad || {}).reduce((a, b) => a + b, 0);
  const badKinds = bad && typeof bad === 'object'
    ? Object.entries(bad).map(([kind, n]) => `${n} ${kind.replace(/_/g, ' ')}`).join(', ')
    : '';
  const info = { state: status.state, badData, badKinds, outages: status.outages || 0 };
  if (status.units) info.units = status.units;
  if ('down_reason' in status) info.downReason = status.down_reason;
  if ('writable' in status) info.writable = Boolean(status.writable);
  if (Array.isArray(status.allow)) info.allow = status.allow;
  return info;
}

function badge(state) {
  const span = document.createElement('span');
  span.className = 'badge';
  span.dataset.state = state;
  span.textContent = state === 'open' ? 'connected' : state;
  return span;
}

function note(text, className) {
  const p = document.createElement('p');
  p.className = className;
  p.textContent = text;
  return p;
}
