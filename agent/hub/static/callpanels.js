// What a call shows beside the picture: the device's status as a card, its sensors live
// (the `sensors` data channel) and a console for each writable serial port (`serial:NAME`).
//
// Data channels other than `control` are opened once the call's `control` channel is up:
// the SCTP association is there then, so new channels need no new offer (RFC 8832 DCEP).
// Everything the device sends is shown through textContent: never as markup.

import { SerialConsole } from './console.js';
import { SensorSeries, renderSensors } from './sensors.js';
import { renderStatus } from './status.js';

const STATUS_EVERY_MS = 5000; // ports' state, error counts and call figures
const RENDER_EVERY_MS = 500;

export class CallPanels {
  // parts: {sensorsCard, sensorsPanel, consoleCard, consoles, statusList, statusError,
  // controlOut}; api: the hub's (the last ten minutes of telemetry start the charts).
  constructor(parts, api) {
    this.parts = parts;
    this.api = api;
    this.call = null;
    this.status = null;
    this.series = null;
    this.consoles = new Map();
    this.sensorsChannel = null;
    this._statusTimer = null;
    this._renderTimer = null;
  }

  // A call whose control channel just opened.
  async attach(call) {
    if (this.call === call) return;
    this.detach();
    this.call = call;
    this.series = new SensorSeries();
    await this.refreshStatus();
    if (this.call !== call) return;
    const ports = this.status?.sensors || {};
    if (Object.keys(ports).length) {
      this._openSensors(call);
      this._history(call);
    }
    for (const [name, port] of Object.entries(ports)) {
      if (port.writable) this._openConsole(call, name, port.allow || []);
    }
    this.parts.consoleCard.hidden = this.consoles.size === 0;
    this._statusTimer = setInterval(() => this.refreshStatus(), STATUS_EVERY_MS);
  }

  detach() {
    clearInterval(this._statusTimer);
    clearTimeout(this._renderTimer);
    this._statusTimer = this._renderTimer = null;
    for (const term of this.consoles.values()) term.close();
    this.consoles.clear();
    try {
      this.sensorsChannel?.close();
    } catch {
      // already closed
    }
    this.sensorsChannel = null;
    this.call = null;
    this.status = null;
    const { sensorsCard, sensorsPanel, consoleCard, consoles, statusList, statusError, controlOut } = this.parts;
    sensorsCard.hidden = true;
    consoleCard.hidden = true;
    sensorsPanel.replaceChildren();
    consoles.replaceChildren();
    statusList.replaceChildren();
    statusError.hidden = true;
    controlOut.textContent = '';
  }

  async refreshStatus() {
    const call = this.call;
    if (!call) return null;
    const { statusList, statusError, controlOut } = this.parts;
    try {
      const status = await call.command('status');
      if (this.call !== call) return null;
      this.status = status;
      renderStatus(statusList, status);
      controlOut.textContent = JSON.stringify(status, null, 2);
      statusError.hidden = true;
      this.series?.setStatus(status.sensors);
      this._scheduleRender();
      return status;
    } catch (err) {
      if (this.call !== call) return null;
      statusError.textContent = `The device did not answer "status": ${err.message || err}${err.code ? ` (${err.code})` : ''}`;
      statusError.hidden = false;
      throw err;
    }
  }

  _openSensors(call) {
    const channel = call.pc.createDataChannel('sensors', { ordered: true });
    this.sensorsChannel = channel;
    this.parts.sensorsCard.hidden = false;
    renderSensors(this.parts.sensorsPanel, this.series);
    channel.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message?.ok === false) {
        this.parts.statusError.textContent = `Sensors: ${message.error?.message || 'refused'}`;
        this.parts.statusError.hidden = false;
        return;
      }
      this.series.addReading(message);
      this._scheduleRender();
    };
  }

  // The charts start with the hub's last ten minutes of the device's telemetry.
  async _history(call) {
    try {
      const { points } = await this.api.telemetry(call.device.name);
      if (this.call !== call) return;
      for (const point of points) this.series.addTelemetry(point);
      this._scheduleRender();
    } catch {
      // an older hub, or no telemetry: the charts start now
    }
  }

  _openConsole(call, name, allow) {
    const term = new SerialConsole({
      name,
      allow,
      openChannel: (label) => call.pc.createDataChannel(label, { ordered: true }),
    });
    this.consoles.set(name, term);
    this.parts.consoles.append(term.element);
    term.open();
  }

  // Readings may come many times a second: draw at most every RENDER_EVERY_MS.
  _scheduleRender() {
    if (this._renderTimer || !this.series) return;
    this._renderTimer = setTimeout(() => {
      this._renderTimer = null;
      if (this.series && !this.parts.sensorsCard.hidden) renderSensors(this.parts.sensorsPanel, this.series);
    }, RENDER_EVERY_MS);
  }
}
