// The event timeline: what devices reported, newest first, from GET /api/events (paged)
// and live from the groups as events are posted; one event opens full size.

import { ago, dayTime, withUnit } from './format.js';

const PAGE = 30;
// A mark for events without a picture, by what triggered them.
const TRIGGER_MARKS = {
  button: '◉', motion: '≋', threshold: '⤒', line: '≡', device: '⏻', manual: '▶',
};

// Events: 'open' {detail: event}.
export class Timeline extends EventTarget {
  constructor({ api, pictures, list, more, empty }) {
    super();
    this.api = api;
    this.pictures = pictures;
    this.list = list;
    this.moreButton = more;
    this.empty = empty;
    this.filters = { device: '', group: '' };
    this.events = [];
    this.startKey = null;
    this.pageSize = PAGE;
    this.loaded = false;
    this._generation = 0;
  }

  async reload(filters = this.filters) {
    this.filters = { ...filters };
    const generation = ++this._generation;
    const page = await this.api.events({ ...this._params(), limit: this.pageSize });
    if (generation !== this._generation) return; // filters changed meanwhile
    this.events = page.list;
    this.startKey = page.endOfList ? null : page.startKey;
    this.loaded = true;
    this.render();
  }

  async more() {
    if (!this.startKey) return;
    const generation = this._generation;
    const page = await this.api.events({ ...this._params(), limit: this.pageSize, startKey: this.startKey });
    if (generation !== this._generation) return;
    const known = new Set(this.events.map(key));
    this.events.push(...page.list.filter((e) => !known.has(key(e))));
    this.startKey = page.endOfList ? null : page.startKey;
    this.render();
  }

  // An event post seen live ({type: 'event', name, time, ...} from device `sender`).
  addLive(content, { device, group }) {
    if (!this.loaded) return null;
    const event = {
      id: null,
      device,
      name: content.name,
      trigger: content.trigger,
      time: content.time,
      at: content.at || '',
      groups: [group],
      snapshot: typeof content.snapshot === 'string' ? content.snapshot : null,
      call: content.call === true,
      details: content.details || {},
      readings: content.readings || {},
    };
    if (this.filters.device && this.filters.device !== device) return null;
    if (this.filters.group && this.filters.group !== group) return null;
    const existing = this.events.find((e) => key(e) === key(event));
    if (existing) {
      existing.snapshot ??= event.snapshot; // the same event, posted to another group
      if (!existing.groups.includes(group)) existing.groups.push(group);
    } else {
      this.events.unshift(event);
    }
    this.render();
    return existing || event;
  }

  // The event a push alert was about: device, rule name and its time.
  find({ device, name, time }) {
    return this.events.find((e) => e.device === device && e.name === name
      && (time == null || Math.abs(e.time - time) < 1)) || null;
  }

  render(now = Date.now() / 1000) {
    this.list.replaceChildren(...this.events.map((event) => this._item(event, now)));
    this.empty.hidden = this.events.length > 0;
    this.moreButton.hidden = !this.startKey;
  }

  _params() {
    const params = {};
    if (this.filters.device) params.device = this.filters.device;
    if (this.filters.group) params.group = this.filters.group;
    return params;
  }

  _item(event, now) {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'event-item';
    button.dataset.device = event.device;
    button.dataset.name = event.name;
    const thumb = document.createElement('span');
    thumb.className = 'event-thumb';
    thumb.dataset.trigger = event.trigger || '';
    if (event.snapshot) {
      const img = document.createElement('img');
      img.alt = '';
      thumb.append(img);
      this.pictures.get(event.snapshot).then((url) => {
        if (url) img.src = url;
        else thumb.classList.add('gone');
      });
    } else {
      thumb.textContent = TRIGGER_MARKS[event.trigger] || '•';
      thumb.setAttribute('aria-hidden', 'true');
    }
    const text = document.createElement('span');
    text.className = 'event-text';
    const title = document.createElement('strong');
    title.textContent = event.name;
    const meta = document.createElement('span');
    meta.className = 'event-meta';
    meta.textContent = `${event.device} · ${event.trigger}${event.call ? ' · asked for a call' : ''}`;
    const when = document.createElement('time');
    when.dateTime = new Date(event.time * 1000).toISOString();
    when.textContent = ago(event.time, now);
    when.title = dayTime(event.time, now);
    text.append(title, meta);
    button.append(thumb, text, when);
    button.addEventListener('click', () => this.dispatchEvent(new CustomEvent('open', { detail: event })));
    item.append(button);
    return item;
  }
}

// Fill the event dialog's parts with `event`.
export async function fillEventDialog(parts, event, { pictures, now = Date.now() / 1000 }) {
  parts.title.textContent = event.name;
  parts.when.textContent = `${event.device} · ${dayTime(event.time, now)} (${ago(event.time, now)})`;
  parts.figure.hidden = !event.snapshot;
  parts.image.removeAttribute('src');
  parts.missing.hidden = true;
  parts.facts.replaceChildren(...facts(event));
  if (event.snapshot) {
    const url = await pictures.get(event.snapshot);
    if (url) parts.image.src = url;
    else {
      parts.figure.hidden = true;
      parts.missing.hidden = false;
    }
  }
}

function facts(event) {
  const rows = [['Trigger', event.trigger], ['Groups', (event.groups || []).join(', ') || '–']];
  for (const [key, value] of Object.entries(event.details || {})) rows.push([key, String(value)]);
  for (const [port, reading] of Object.entries(event.readings || {})) {
    const fields = Object.entries(reading.fields || {}).map(([k, v]) => `${k} ${withUnit(v)}`);
    rows.push([port, fields.join(', ') || reading.raw || '–']);
  }
  return rows.flatMap(([label, text]) => {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.textContent = text;
    return [dt, dd];
  });
}

function key(event) {
  return `${event.device}|${event.name}|${Math.round(event.time * 1000)}`;
}
