// The realtime connection to the hub: /ws?token=JWT, JSON frames, automatic reconnect.
//
// Hub frames are keyed by '#message' | '#private' | '#notice' | '#rtc' | '#error' with
// '#user_id' (sender), '#scid' (sender connection), '#srid' (group) and '#code'. The hub
// percent-encodes them as encodeURI does (the hosted client runs decodeURI on each); other
// hubs send plain JSON, so both are accepted.

const KEEPALIVE_MS = 15000; // the hosted service's interval; the hub drops idle sockets
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const KINDS = ['#rtc', '#private', '#message', '#notice', '#error'];

export function decodeFrame(text) {
  const trimmed = text.trimStart();
  const json = trimmed.startsWith('{') || trimmed.startsWith('[') ? trimmed : decodeURI(trimmed);
  return JSON.parse(json);
}

// {type, content, sender, cid, group, code} or null for a frame of no known kind.
export function classify(frame) {
  if (!frame || typeof frame !== 'object') return null;
  const key = KINDS.find((k) => k in frame);
  if (!key) return null;
  return {
    type: key.slice(1),
    content: frame[key],
    sender: frame['#user_id'] ?? null,
    cid: frame['#scid'] ? `cid:${frame['#scid']}` : null,
    group: frame['#srid'] ?? null,
    code: frame['#code'] ?? null,
  };
}

export const LinkState = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'online',
  RETRYING: 'reconnecting',
  CLOSED: 'offline',
});

// Events: 'state' {state, attempt, delay}, 'open', 'frame' (classified), 'refused' (the
// socket never opened: the caller checks whether the token is still good).
export class Realtime extends EventTarget {
  constructor(urlFactory) {
    super();
    this.urlFactory = urlFactory;
    this.ws = null;
    this.state = LinkState.CLOSED;
    this.groups = new Set();
    this.attempt = 0;
    this._timer = null;
    this._keepAlive = null;
    this._wanted = false;
    // Which socket this is: the hub knows this side by its socket's connection, so what
    // was sent over an older one (a call's offer) is answered there, never on this one.
    this.generation = 0;
  }

  connect() {
    this._wanted = true;
    clearTimeout(this._timer);
    this._open();
  }

  close() {
    this._wanted = false;
    clearTimeout(this._timer);
    this._stopKeepAlive();
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, 'bye');
      this.ws = null;
    }
    this._setState(LinkState.CLOSED);
  }

  // Retry now (the browser came back online, the page became visible).
  nudge() {
    if (this._wanted && this.state === LinkState.RETRYING) {
      clearTimeout(this._timer);
      this._open();
    }
  }

  // A fresh socket now, from wherever this device is on the network (after a network
  // change the old one may be dead without knowing it: TCP only notices much later).
  // Resolves once it is open; rejects if it cannot open in `timeoutMs`.
  reconnect(timeoutMs) {
    this._wanted = true;
    clearTimeout(this._timer);
    this._stopKeepAlive();
    if (this.ws) {
      this.ws.onclose = null;
      try {
        this.ws.close(4000, 'network change');
      } catch {
        // already closing
      }
      this.ws = null;
    }
    this.attempt = 0;
    return new Promise((resolve, reject) => {
      const done = (ok) => {
        clearTimeout(timer);
        this.removeEventListener('open', opened);
        this.removeEventListener('state', failed);
        if (ok) resolve();
        else reject(new Error('the hub cannot be reached from here'));
      };
      const opened = () => done(true);
      const failed = (event) => { if (event.detail.state === LinkState.RETRYING) done(false); };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.addEventListener('open', opened);
      this.addEventListener('state', failed);
      this._open();
    });
  }

  get open() { return this.ws?.readyState === WebSocket.OPEN; }

  send(action) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(action));
    return true;
  }

  // Groups survive reconnects: each is joined again when the socket reopens.
  watch(groups) {
    for (const group of this.groups) {
      if (!groups.includes(group)) this.send({ action: 'leaveRoom', rid: group });
    }
    this.groups = new Set(groups);
    this._joinAll();
  }

  rtc(cid, content) { return this.send({ action: 'rtc', uid: cid, content }); }

  _open() {
    this._setState(this.attempt ? LinkState.RETRYING : LinkState.CONNECTING);
    let opened = false;
    let ws;
    try {
      ws = new WebSocket(this.urlFactory());
    } catch (err) {
      this._retry(false);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.generation += 1;
      this.attempt = 0;
      this._setState(LinkState.OPEN);
      this._startKeepAlive();
      this._joinAll();
      this.dispatchEvent(new Event('open'));
    };
    ws.onmessage = (event) => this._frame(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._stopKeepAlive();
      this._retry(opened, event.code);
    };
  }

  _retry(opened, code) {
    if (!this._wanted) return;
    if (!opened) this.dispatchEvent(new CustomEvent('refused', { detail: { code } }));
    if (!this._wanted) return; // the 'refused' handler may have closed us
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.75 + Math.random() * 0.5)); // jitter: no herd
    this.attempt += 1;
    this._setState(LinkState.RETRYING, { delay, code });
    this._timer = setTimeout(() => this._open(), delay);
  }

  _frame(data) {
    if (typeof data !== 'string') return;
    let frame;
    try {
      frame = classify(decodeFrame(data));
    } catch {
      return; // not JSON: nothing a viewer can act on
    }
    if (frame) this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
  }

  _joinAll() {
    for (const group of this.groups) this.send({ action: 'joinRoom', rid: group, keep: true });
  }

  _startKeepAlive() {
    this._stopKeepAlive();
    this._keepAlive = setInterval(() => this.send({ action: 'keepAlive' }), KEEPALIVE_MS);
  }

  _stopKeepAlive() {
    clearInterval(this._keepAlive);
    this._keepAlive = null;
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, attempt: this.attempt, ...extra } }));
  }
}
