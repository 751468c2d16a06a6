// A small line chart in SVG: one series of [time, value] points over a time window.
// No library: the geometry is a pure function (chartGeometry), the drawing a few elements.

import { number, withUnit } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';

// The path of `points` ([[ts, value], ...], oldest first) in a width x height box whose
// x axis runs from t0 to t1; the y axis spans the values (with a margin, never flat).
export function chartGeometry(points, { width, height, t0, t1, pad = 4 }) {
  const shown = points.filter(([ts, v]) => ts >= t0 && ts <= t1 && Number.isFinite(v));
  if (!shown.length) return { path: '', min: null, max: null, last: null };
  let min = Math.min(...shown.map(([, v]) => v));
  let max = Math.max(...shown.map(([, v]) => v));
  const span = max - min || Math.abs(max) || 1;
  const lo = min - span * 0.1;
  const hi = max + span * 0.1;
  const x = (ts) => pad + ((ts - t0) / Math.max(1e-9, t1 - t0)) * (width - 2 * pad);
  const y = (v) => height - pad - ((v - lo) / (hi - lo)) * (height - 2 * pad);
  const path = shown
    .map(([ts, v], i) => `${i ? 'L' : 'M'}${x(ts).toFixed(1)},${y(v).toFixed(1)}`)
    .join(' ');
  const [lastTs, lastV] = shown[shown.length - 1];
  return { path, min, max, last: lastV, lastX: x(lastTs), lastY: y(lastV) };
}

// An <svg> chart of one field, labelled for screen readers with its range and last value.
export function lineChart(points, { label, unit = '', t0, t1, width = 300, height = 72 }) {
  const geometry = chartGeometry(points, { width, height, t0, t1 });
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', describe(label, unit, geometry, t1 - t0));
  const grid = element('path', { d: `M0,${height / 2} H${width}`, class: 'chart-grid' });
  svg.append(grid);
  if (geometry.path) {
    svg.append(element('path', { d: geometry.path, class: 'chart-line' }));
    svg.append(element('circle', { cx: geometry.lastX, cy: geometry.lastY, r: 3, class: 'chart-dot' }));
  }
  return svg;
}

function describe(label, unit, { min, max, last }, seconds) {
  const span = seconds >= 120 ? `${Math.round(seconds / 60)} minutes` : `${Math.max(1, Math.round(seconds))} seconds`;
  if (last == null) return `${label}: no readings in the last ${span}`;
  return `${label} over the last ${span}: from ${withUnit(min, unit)} to `
    + `${withUnit(max, unit)}, now ${number(last)}${unit ? ` ${unit}` : ''}`;
}

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}
