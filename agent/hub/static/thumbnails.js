// Fresh pictures for the device tiles, taken only while someone looks at them.
//
// How: while the device list is on screen (the page visible, no call up), every
// `intervalSeconds` (the hub's [hub.events] thumbnail_seconds) the page asks each online
// device for a picture with a short data-only call: the `control` channel's `snapshot`
// command, then hang up. No camera is opened when nobody looks: a hidden page, another
// tab of the viewer, a call in progress or a closed page ask for nothing. Event snapshots
// (taken by the device when an event fires) fill the tiles in between.
//
// A picture call takes one of the device's call slots for a moment, so a device that
// takes one call at a time (its status says calls.max == 1) is not asked again, nor one
// whose call policy refuses this account; a person's own call waits for a picture call
// to the same device to end (pause()).

const FIRST_DELAY_MS = 1500; // let the page settle (and a click on Call win) first
const TAKE_TIMEOUT_MS = 15000;
const BUSY_BACKOFF_ROUNDS = 3;

export class ThumbnailRefresher {
  // take(device) -> {blob, status}; picture(device, blob) shows it; shown() says whether
  // the tiles are on screen now.
  constructor({ take, picture, shown }) {
    this.intervalSeconds = 0;
    this.devices = [];
    this.taken = 0; // pictures taken since the page loaded (the tests read it)
    this.asked = 0;
    this._take = take;
    this._picture = picture;
    this._shown = shown;
    this._timer = null;
    this._running = null; // the round in progress
    this._last = new Map(); // device name -> when its last picture was taken (ms)
    this._skip = new Map(); // device name -> rounds to skip, or Infinity
  }

  setInterval(seconds) {
    this.intervalSeconds = Math.max(0, Number(seconds) || 0);
    this.wake();
  }

  setDevices(devices) {
    this.devices = devices;
  }

  // Never ask `name` again this session (it refuses this account, or takes one call).
  exclude(name) {
    this._skip.set(name, Infinity);
  }

  // Skip `name` for a few rounds (it was busy).
  backOff(name) {
    if (this._skip.get(name) !== Infinity) this._skip.set(name, BUSY_BACKOFF_ROUNDS);
  }

  // Whether a picture round is due or running (none ever is while nobody looks).
  get scheduled() {
    return this._timer !== null || this._running !== null;
  }

  excluded(name) {
    return this._skip.get(name) === Infinity;
  }

  // Schedule the next round if the tiles are on screen; stop if they are not.
  wake() {
    clearTimeout(this._timer);
    this._timer = null;
    if (!this.intervalSeconds || !this._shown()) return;
    const due = Math.min(...this.devices.map((d) => this._due(d)), Infinity);
    const wait = Math.max(FIRST_DELAY_MS, due - performance.now());
    if (Number.isFinite(wait)) this._timer = setTimeout(() => this._round(), wait);
  }

  stop() {
    clearTimeout(this._timer);
    this._timer = null;
  }

  // Stop, and wait for a picture call in progress to end (before a person's call).
  async pause() {
    this.stop();
    await this._running;
  }

  _due(device) {
    const last = this._last.get(device.name);
    return last === undefined ? 0 : last + this.intervalSeconds * 1000;
  }

  async _round() {
    this._timer = null;
    if (this._running || !this._shown()) return;
    let done;
    this._running = new Promise((resolve) => { done = resolve; });
    try {
      for (const device of this.devices) {
        if (!this._shown()) break;
        if (!device.online || this._due(device) > performance.now()) continue;
        const skip = this._skip.get(device.name) || 0;
        if (skip) {
          if (skip !== Infinity) this._skip.set(device.name, skip - 1);
          continue;
        }
        await this._one(device);
      }
    } finally {
      this._running = null;
      done();
    }
    this.wake();
  }

  async _one(device) {
    this._last.set(device.name, performance.now());
    this.asked += 1;
    try {
      const { blob, status } = await withTimeout(this._take(device), TAKE_TIMEOUT_MS);
      if (status?.calls?.max === 1) this.exclude(device.name);
      if (blob) {
        this.taken += 1;
        this._picture(device, blob);
      }
    } catch {
      this.backOff(device.name); // busy, gone, or refused (app.js excludes a refusal for good)
    }
  }
}

function withTimeout(promise, ms) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('no picture in time')), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
