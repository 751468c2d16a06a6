// The hub's HTTP API and the login session. Errors are ApiError with the hub's
// {code, message}; a network failure is code "NETWORK".

const SESSION_KEY = 'edge-agent.session';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(base = '') {
    this.base = base;
    this.token = null;
  }

  async request(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit', // the token is the only credential
      });
    } catch (err) {
      throw new ApiError(0, 'NETWORK', `Cannot reach the hub (${err.message || err}).`);
    }
    const payload = await readJson(response);
    if (!response.ok) {
      const code = payload?.code || httpCode(response.status);
      const message = payload?.message || `The hub answered ${response.status} ${response.statusText}.`;
      throw new ApiError(response.status, code, message);
    }
    return payload;
  }

  // A binary answer (a snapshot's JPEG) as a Blob.
  async blob(path) {
    let response;
    try {
      response = await fetch(this.base + path, {
        headers: this.token ? { Authorization: `Bearer ${this.token}` } : {},
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (err) {
      throw new ApiError(0, 'NETWORK', `Cannot reach the hub (${err.message || err}).`);
    }
    if (!response.ok) {
      const payload = await readJson(response);
      throw new ApiError(response.status, payload?.code || httpCode(response.status),
        payload?.message || `The hub answered ${response.status}.`);
    }
    return response.blob();
  }

  login(name, password) { return this.request('POST', '/api/login', { name, password }); }
  me() { return this.request('GET', '/api/me'); }
  devices() { return this.request('GET', '/api/devices'); }
  // Every device shared with this account: presence, last event, picture, telemetry.
  overview() { return this.request('GET', '/api/devices/overview'); }
  // A page of events, newest first: {device?, group?, since?, until?, startKey?, limit?}.
  events(params = {}) { return this.request('GET', `/api/events${query(params)}`); }
  telemetry(device) { return this.request('GET', `/api/telemetry${query({ device })}`); }
  viewerConfig() { return this.request('GET', '/api/viewer/config'); }
  // STUN/TURN servers for one call, with TURN credentials minted now (short-lived).
  iceServers(path = '/api/ice-servers') { return this.request('GET', path); }
  vapidPublicKey() { return this.request('GET', '/api/push/vapid-public-key'); }
  subscribe(subscription) { return this.request('POST', '/api/push/subscribe', subscription); }
  unsubscribe(subscription) { return this.request('POST', '/api/push/unsubscribe', subscription); }

  // ws[s]://host/ws?token=JWT: the realtime protocol carries the token in the query.
  realtimeUrl() {
    const url = new URL('/ws', this.base || location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('token', this.token);
    return url.href;
  }
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function httpCode(status) {
  return { 401: 'UNAUTHORIZED', 403: 'FORBIDDEN', 404: 'NOT_FOUND', 429: 'RATE_LIMITED' }[status]
    || 'ERROR';
}

// The token lives in sessionStorage (gone when the tab closes) or, with "remember me",
// in localStorage; never in the page URL.
export const session = {
  load() {
    for (const store of [sessionStorage, localStorage]) {
      const saved = parse(store.getItem(SESSION_KEY));
      if (saved?.token && !expired(saved)) return saved;
      if (saved) store.removeItem(SESSION_KEY);
    }
    return null;
  },
  save(login, remember) {
    this.clear();
    const store = remember ? localStorage : sessionStorage;
    store.setItem(SESSION_KEY, JSON.stringify({
      token: login.token,
      user_id: login.user_id,
      name: login.name,
      role: login.role,
      expires_at: login.expires_at,
    }));
  },
  clear() {
    sessionStorage.removeItem(SESSION_KEY);
    localStorage.removeItem(SESSION_KEY);
  },
};

function parse(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function expired(saved) {
  return typeof saved.expires_at === 'number' && saved.expires_at * 1000 <= Date.now();
}
