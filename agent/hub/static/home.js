// The viewer outside a call: the Devices, Timeline and Settings tabs, the device tiles
// (kept fresh from the hub and from what devices post to the groups), the event and
// sensors dialogs, and the pictures taken for the tiles while they are on screen.

import { ApiError } from './api.js';
import { fillEventDialog, Timeline } from './timeline.js';
import { renderTiles } from './tiles.js';
import { SensorSeries, renderSensors } from './sensors.js';
import { ThumbnailRefresher } from './thumbnails.js';

const $ = (id) => document.getElementById(id);
const TABS = ['devices', 'timeline', 'settings'];
const PERIODIC_REFRESH_MS = 60000; // presence of devices in groups this page is not in

export class Home {
  // app: {api, pictures, startCall(device, at), takePicture(device), showError(message)}
  constructor(app) {
    this.app = app;
    this.devices = [];
    this.loaded = false;
    this.tab = 'devices';
    this.busy = false; // a call is up (or starting): the tiles are not on screen
    this.wanted = null;
    this.sensorsDevice = null;
    this.sensorsSeries = null;
    this._pictures = new Map(); // device name -> {url, time}: taken for the tiles
    this._periodic = null;
    this._renderTimer = null;
    this.timeline = new Timeline({
      api: app.api,
      pictures: app.pictures,
      list: $('timeline'),
      more: $('timeline-more'),
      empty: $('timeline-empty'),
    });
    this.timeline.addEventListener('open', (event) => this.openEvent(event.detail));
    this.thumbnails = new ThumbnailRefresher({
      take: (device) => app.takePicture(device),
      picture: (device, blob) => this._picture(device, blob),
      shown: () => this.onScreen(),
    });
    this._wire();
  }

  // -- what the app asks -----------------------------------------------------------------

  // The devices shared with this account: the hub's tiles, completed with the online list.
  async refresh() {
    const [overview, online] = await Promise.all([this._overview(), this.app.api.devices()]);
    this.devices = merge(overview?.devices, online, this.devices);
    this.loaded = true;
    if (overview) this.thumbnails.setInterval(overview.thumbnail_seconds);
    this.thumbnails.setDevices(this.devices);
    this.render();
    this._fillFilters();
    this.thumbnails.wake();
    return this.devices;
  }

  // Groups the devices are in now (the page joins them for live posts and notices).
  deviceGroups() {
    return [...new Set(this.devices.flatMap((d) => d.groups || []))];
  }

  render() {
    for (const device of this.devices) device.picture = this._pictures.get(device.name) || null;
    renderTiles($('devices'), this.devices, {
      pictures: this.app.pictures,
      busy: this.busy,
      wanted: this.wanted,
      handlers: {
        onCall: (device, at) => this.app.startCall(device, at),
        onHistory: (device) => this.showHistory(device.name),
        onSensors: (device) => this.openSensors(device),
      },
    });
    $('devices-empty').hidden = this.devices.length > 0;
  }

  // A group post (`#message` frame): devices' events and telemetry update the page live.
  onGroupMessage(frame) {
    const content = frame.content;
    const device = this.devices.find((d) => d.user_id === frame.sender);
    if (!device || !content || typeof content !== 'object') return;
    if (content.type === 'event' && typeof content.name === 'string') {
      const event = this.timeline.addLive(content, { device: device.name, group: frame.group });
      device.last_event = { name: content.name, time: content.time };
      if (event?.snapshot) device.snapshot = { url: event.snapshot, time: content.time, event: content.name };
      this.render();
    } else if (content.type === 'telemetry' && content.readings) {
      device.telemetry = { ts: content.ts, readings: content.readings, ports: content.ports || {} };
      if (this.sensorsDevice === device.name) {
        this.sensorsSeries.addTelemetry(device.telemetry);
        renderSensors($('sensors-dialog-panel'), this.sensorsSeries);
      }
      this._renderSoon();
    }
  }

  // Tabs are hidden during a call; the tab shown before comes back after it.
  setBusy(busy) {
    this.busy = busy;
    $('tabs').hidden = busy;
    for (const tab of TABS) $(`${tab}-view`).hidden = busy || tab !== this.tab;
    if (busy) this.thumbnails.stop();
    else {
      this.render();
      this.thumbnails.wake();
    }
  }

  show(tab) {
    if (!TABS.includes(tab)) return;
    this.tab = tab;
    for (const name of TABS) {
      const button = $(`tab-${name}`);
      button.setAttribute('aria-selected', String(name === tab));
      button.tabIndex = name === tab ? 0 : -1;
      $(`${name}-view`).hidden = this.busy || name !== tab;
    }
    if (tab === 'timeline' && !this.timeline.loaded) this.reloadTimeline();
    if (tab === 'devices') this.thumbnails.wake();
    else this.thumbnails.stop();
  }

  showHistory(device) {
    $('tl-device').value = device;
    this._fillFilters(device);
    this.show('timeline');
    this.reloadTimeline();
  }

  // The tiles are on screen: the page is visible, on the Devices tab, with no call.
  onScreen() {
    return document.visibilityState === 'visible' && this.tab === 'devices' && !this.busy
      && Boolean(this.app.api.token);
  }

  async reloadTimeline() {
    try {
      await this.timeline.reload({ device: $('tl-device').value, group: $('tl-group').value });
    } catch (err) {
      this.app.showError(`Could not load the timeline: ${err.message || err}`);
    }
  }

  // Land on an event (an alert was tapped): the timeline of its device, the event opened.
  async landOn({ device, event, time }) {
    this.showHistory(device);
    await this.reloadTimeline();
    const found = this.timeline.find({ device, name: event, time });
    if (found) this.openEvent(found);
    else this.app.showError(`The event "${event}" of ${device} is no longer in the history.`, 'warn');
  }

  async openEvent(event) {
    const dialog = $('event-dialog');
    const device = this.devices.find((d) => d.name === event.device);
    const call = $('event-call');
    call.textContent = `Call ${event.device}`;
    call.disabled = !device?.online || this.busy;
    call.onclick = (click) => {
      dialog.close();
      if (device) this.app.startCall(device, click.timeStamp);
    };
    dialog.dataset.device = event.device;
    dialog.dataset.name = event.name;
    if (!dialog.open) dialog.showModal();
    await fillEventDialog({
      title: $('event-title'),
      when: $('event-when'),
      figure: $('event-figure'),
      image: $('event-image'),
      missing: $('event-missing'),
      facts: $('event-facts'),
    }, event, { pictures: this.app.pictures });
  }

  async openSensors(device) {
    const dialog = $('sensors-dialog');
    this.sensorsDevice = device.name;
    this.sensorsSeries = new SensorSeries();
    $('sensors-dialog-title').textContent = `Sensors of ${device.name}`;
    renderSensors($('sensors-dialog-panel'), this.sensorsSeries);
    dialog.showModal();
    try {
      const series = await this.app.api.telemetry(device.name);
      for (const point of series.points) this.sensorsSeries.addTelemetry(point);
    } catch (err) {
      this.app.showError(`Could not load the sensors of ${device.name}: ${err.message || err}`);
    }
    if (device.telemetry) this.sensorsSeries.addTelemetry(device.telemetry);
    renderSensors($('sensors-dialog-panel'), this.sensorsSeries);
  }

  clear() {
    this.devices = [];
    this.loaded = false;
    this._pictures.clear();
    this.thumbnails.stop();
    clearInterval(this._periodic);
    this._periodic = null;
  }

  startPeriodic(refresh) {
    clearInterval(this._periodic);
    this._periodic = setInterval(() => {
      if (document.visibilityState === 'visible' && !this.busy) refresh();
    }, PERIODIC_REFRESH_MS);
  }

  // -- inside ----------------------------------------------------------------------------

  async _overview() {
    try {
      return await this.app.api.overview();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null; // a hub without history
      throw err;
    }
  }

  _picture(device, blob) {
    const url = this.app.pictures.put(`live:${device.name}`, blob);
    this._pictures.set(device.name, { url, time: Date.now() / 1000 });
    this.render();
  }

  _renderSoon() {
    if (this._renderTimer) return;
    this._renderTimer = setTimeout(() => {
      this._renderTimer = null;
      if (!this.busy) this.render();
    }, 1000);
  }

  _fillFilters(selected = $('tl-device').value) {
    const names = this.devices.map((d) => d.name);
    fill($('tl-device'), 'All devices', names, selected);
    fill($('tl-group'), 'All groups', this.deviceGroups(), $('tl-group').value);
  }

  _wire() {
    for (const tab of TABS) $(`tab-${tab}`).addEventListener('click', () => this.show(tab));
    $('tabs').addEventListener('keydown', (event) => this._tabKey(event));
    $('tl-device').addEventListener('change', () => this.reloadTimeline());
    $('tl-group').addEventListener('change', () => this.reloadTimeline());
    $('timeline-more').addEventListener('click', async () => {
      try {
        await this.timeline.more();
      } catch (err) {
        this.app.showError(`Could not load older events: ${err.message || err}`);
      }
    });
    $('sensors-dialog').addEventListener('close', () => {
      this.sensorsDevice = null;
      this.sensorsSeries = null;
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.thumbnails.wake();
      else this.thumbnails.stop();
    });
  }

  // WAI-ARIA tabs: arrows, Home and End move between the tabs.
  _tabKey(event) {
    const index = TABS.indexOf(this.tab);
    const next = {
      ArrowRight: (index + 1) % TABS.length,
      ArrowLeft: (index + TABS.length - 1) % TABS.length,
      Home: 0,
      End: TABS.length - 1,
    }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    this.show(TABS[next]);
    $(`tab-${TABS[next]}`).focus();
  }
}

// Tiles from the hub's overview (every device shared with this account), the online list
// (/api/devices) filling in what an older hub's overview lacks.
function merge(overview, online, previous) {
  const byId = new Map();
  for (const tile of overview || []) byId.set(tile.user_id, { ...tile, known: true });
  for (const device of online) {
    const tile = byId.get(device.user_id);
    if (tile) {
      tile.online = true;
      if (!tile.connection_ids?.length) tile.connection_ids = device.connection_ids;
      tile.groups = [...new Set([...(tile.groups || []), ...device.groups])];
    } else {
      byId.set(device.user_id, { ...device, online: true, since: null, known: true });
    }
  }
  const before = new Map(previous.map((d) => [d.user_id, d]));
  return [...byId.values()]
    .map((d) => ({ ...d, telemetry: d.telemetry ?? before.get(d.user_id)?.telemetry ?? null }))
    .sort((a, b) => a.name.toLowerCase().localeCompare(b.name.toLowerCase()) || a.user_id.localeCompare(b.user_id));
}

function fill(select, all, values, selected) {
  const options = [new Option(all, ''), ...values.map((v) => new Option(v, v))];
  select.replaceChildren(...options);
  select.value = values.includes(selected) ? selected : '';
}
