// The viewer: log in, see your devices (online or not, their latest picture, last event
// and sensors), the timeline of what happened, call one to watch, listen and hold to talk,
// with its sensors, serial console and status beside the picture; get alerts. Plain ES
// modules, no build step. The tabs, tiles and timeline live in home.js, a call's side
// panels in callpanels.js; this module holds the session, the hub link and the calls.

import { Api, ApiError, session } from './api.js';
import { Realtime, LinkState } from './realtime.js';
import { Call, CallState } from './call.js';
import { formatBitrate } from './stats.js';
import { CallPanels } from './callpanels.js';
import { Home } from './home.js';
import { takePicture } from './picturecall.js';
import { PictureCache } from './pictures.js';
import { SettingsView } from './settings.js';

const GROUPS_KEY = 'edge-agent.groups';
const DEFAULT_CONFIG = {
  iceServers: [], iceServersUrl: null, iceTransportPolicy: 'all', groups: ['devices'],
};
const INTENT_WAIT_MS = 30000; // how long "?device=NAME&call=1" waits for NAME to come online
const AFTER_PICTURE_MS = 300; // a picture call's slot on the device is free again by then

const $ = (id) => document.getElementById(id);
const api = new Api();
const pictures = new PictureCache(api);

// Inspection surface (the browser tests and the benchmark read it; so can a curious user).
const viewer = {
  user: null,
  devices: [],
  devicesLoaded: false,
  call: null,
  lastCall: null,
  realtime: null,
  config: DEFAULT_CONFIG,
  link: LinkState.CLOSED,
  linkHistory: [],
  intent: null,
  wanted: null,
  errors: [],
  resume: null, // a call being made again after a network change
  resumes: [],
  frames: 0, // video frames shown, across calls made again
  probe: null, // a picture call for a device tile (thumbnails.js)
  lastProbe: null,
  starting: false,
};
window.viewer = viewer;

const home = new Home({
  api,
  pictures,
  startCall: (device, at) => startCall(device, at),
  takePicture: (device) => pictureOf(device),
  showError: (message, kind = 'error') => showBanner(message, kind),
});
const panels = new CallPanels({
  sensorsCard: $('sensors-card'),
  sensorsPanel: $('sensors-panel'),
  consoleCard: $('console-card'),
  consoles: $('consoles'),
  statusList: $('status-list'),
  statusError: $('status-error'),
  controlOut: $('control-out'),
});
const settings = new SettingsView({
  api,
  showBanner: (message, kind, options) => showBanner(message, kind, options),
});
viewer.home = home;
viewer.panels = panels;
viewer.settings = settings;

// -- messages on the page --------------------------------------------------------------

let bannerTimer = null;

function showBanner(message, kind = 'error', { sticky = true } = {}) {
  if (kind === 'error') viewer.errors.push(message);
  $('banner-text').textContent = message;
  $('banner').dataset.kind = kind;
  $('banner').hidden = false;
  clearTimeout(bannerTimer);
  if (!sticky) bannerTimer = setTimeout(hideBanner, 4000);
}

function hideBanner() {
  $('banner').hidden = true;
}

function describe(err) {
  if (err instanceof ApiError) return err.message;
  return err?.message || String(err);
}

// -- login -----------------------------------------------------------------------------

function showLogin(message) {
  $('login-view').hidden = false;
  for (const id of ['devices-view', 'timeline-view', 'settings-view', 'call-view', 'tabs']) $(id).hidden = true;
  $('logout').hidden = true;
  const error = $('login-error');
  error.textContent = message || (viewer.intent?.device ? `Log in to call ${viewer.intent.device}.` : '');
  error.hidden = !error.textContent;
  error.dataset.kind = message ? 'error' : 'info';
  $('login-name').focus();
}

async function onLogin(event) {
  event.preventDefault();
  const button = $('login-submit');
  const error = $('login-error');
  button.disabled = true;
  error.hidden = true;
  try {
    const login = await api.login($('login-name').value.trim(), $('login-password').value);
    session.save(login, $('login-remember').checked);
    $('login-password').value = '';
    await startSession(login);
  } catch (err) {
    error.textContent = err instanceof ApiError && err.status === 401
      ? 'Wrong name or password.'
      : `Could not log in: ${describe(err)}`;
    error.dataset.kind = 'error';
    error.hidden = false;
    viewer.errors.push(error.textContent);
  } finally {
    button.disabled = false;
  }
}

function logout(message) {
  endCall('You logged out.');
  viewer.realtime?.close();
  viewer.realtime = null;
  viewer.user = null;
  api.token = null;
  session.clear();
  home.clear();
  pictures.clear();
  setLink(LinkState.CLOSED);
  showLogin(message);
}

// -- session ---------------------------------------------------------------------------

async function startSession(saved) {
  api.token = saved.token;
  viewer.user = { user_id: saved.user_id, name: saved.name, role: saved.role };
  $('who').textContent = saved.name;
  $('logout').hidden = false;
  $('login-view').hidden = true;
  home.setBusy(false);
  home.show(home.tab);
  try {
    viewer.config = await loadConfig();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      logout('Your session has expired: log in again.');
      return;
    }
    showBanner(`Could not load the viewer settings: ${describe(err)}`);
  }
  $('groups').value = watchedGroups().join(', ');
  connectRealtime();
  refreshDevices();
  home.startPeriodic(refreshDevices);
  settings.update();
}

async function loadConfig() {
  try {
    const config = await api.viewerConfig();
    return { ...DEFAULT_CONFIG, ...config };
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return DEFAULT_CONFIG; // an older hub
    throw err;
  }
}

function watchedGroups() {
  const saved = localStorage.getItem(GROUPS_KEY);
  const groups = saved ? saved.split(',') : viewer.config.groups;
  return groups.map((g) => g.trim()).filter(Boolean);
}

// The groups set here, and those the devices are in (their posts and notices come there).
function groupsToJoin() {
  return [...new Set([...watchedGroups(), ...home.deviceGroups()])];
}

function onGroupsChanged() {
  const groups = $('groups').value.split(',').map((g) => g.trim()).filter(Boolean);
  localStorage.setItem(GROUPS_KEY, groups.join(','));
  viewer.realtime?.watch(groupsToJoin());
  scheduleRefresh();
}

// -- realtime connection ---------------------------------------------------------------

function connectRealtime() {
  viewer.realtime?.close();
  const realtime = new Realtime(() => api.realtimeUrl());
  viewer.realtime = realtime;
  realtime.addEventListener('state', (event) => onLinkState(event.detail));
  realtime.addEventListener('refused', onRefused);
  realtime.addEventListener('open', () => scheduleRefresh());
  realtime.addEventListener('frame', (event) => onFrame(event.detail));
  realtime.watch(groupsToJoin());
  realtime.connect();
}

function onLinkState({ state, delay }) {
  const was = viewer.link;
  setLink(state);
  if (state === LinkState.RETRYING) {
    const seconds = Math.max(1, Math.round(delay / 1000));
    showBanner(`Connection to the hub lost; reconnecting in ${seconds} s…`, 'warn');
  } else if (state === LinkState.OPEN && was === LinkState.RETRYING) {
    showBanner('Reconnected to the hub.', 'info', { sticky: false });
  }
}

function setLink(state) {
  viewer.link = state;
  viewer.linkHistory.push(state);
  $('link').textContent = state;
  $('link').dataset.state = state;
  $('link').setAttribute('aria-label', `Connection to the hub: ${state}`);
}

// The socket was refused before it opened: an expired token looks the same as a network
// problem from here, so ask the HTTP API which one it is.
async function onRefused() {
  try {
    await api.me();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) logout('Your session has expired: log in again.');
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case 'rtc': {
      // A call made again goes to the same device connection as the one it replaces, but
      // over a new hub socket: whatever the device says now is about the new call.
      const call = [viewer.resume?.next, viewer.call, viewer.probe].find((c) => c && c.cid === frame.cid);
      if (call) call.handleSignal(frame.content);
      else if (frame.content?.sdpoffer && frame.cid) declineCall(frame.cid);
      break;
    }
    case 'private':
      onPrivate(frame);
      break;
    case 'message':
      home.onGroupMessage(frame);
      break;
    case 'notice':
      scheduleRefresh();
      break;
    case 'error':
      onHubError(frame);
      break;
    default:
      break;
  }
}

// The viewer places calls; it does not take them. Saying so at once spares the caller
// its ring timeout.
function declineCall(cid) {
  viewer.realtime?.rtc(cid, { hungup: viewer.user?.user_id || true });
}

function onPrivate(frame) {
  const content = frame.content;
  if (!content || typeof content !== 'object' || frame.sender === viewer.user?.user_id) return;
  const call = viewer.call || viewer.lastCall;
  const fromCallee = call && call.device.user_id === frame.sender;
  if (content.type === 'call_refused') {
    // The device hangs up and then says why: busy, or this account may not call it. The
    // message goes to every tab of this account, so only a tab whose call to that device
    // was not taken shows it; a refused picture call is the tiles' business.
    if (!fromCallee || !refusedHere(call)) {
      pictureRefused(content, frame.sender);
      return;
    }
    const message = content.message || `${call.device.name} refused the call.`;
    if (viewer.call === call) endCall(message, 'refused');
    showBanner(message, 'error');
  } else if (content.type === 'error' && fromCallee) {
    showBanner(`${call.device.name}: ${content.message}`, 'warn');
  }
}

const REFUSAL_WINDOW_MS = 10000;

// A refusal of a picture call is the tiles' business, not a message for the person.
function pictureRefused(content, sender) {
  const probe = viewer.probe || viewer.lastProbe;
  if (!probe || probe.device.user_id !== sender || probe.metrics.pickupAt !== undefined) return false;
  if (probe.ended && performance.now() - probe.metrics.endedAt > REFUSAL_WINDOW_MS) return false;
  if (content.reason === 'not_allowed') {
    home.thumbnails.exclude(probe.device.name);
    probe.device.callable = false;
  } else {
    home.thumbnails.backOff(probe.device.name);
  }
  return true;
}

function refusedHere(call) {
  if (call.metrics.pickupAt !== undefined) return false;
  return !call.ended || performance.now() - call.metrics.endedAt < REFUSAL_WINDOW_MS;
}

function onHubError(frame) {
  const text = typeof frame.content === 'string' ? frame.content : JSON.stringify(frame.content);
  const call = viewer.call;
  if (call && call.state !== CallState.CONNECTED && frame.code === 'NOT_FOUND') {
    endCall(`${call.device.name} is no longer connected.`, 'error');
    scheduleRefresh();
    return;
  }
  showBanner(`The hub refused a request: ${text}`, 'warn');
}

// -- devices ---------------------------------------------------------------------------

let refreshTimer = null;

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshDevices, 150); // a burst of notices is one refresh
}

async function refreshDevices() {
  if (!api.token) return;
  try {
    viewer.devices = await home.refresh();
    viewer.devicesLoaded = true;
    viewer.realtime?.watch(groupsToJoin());
    applyIntent();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      logout('Your session has expired: log in again.');
    } else if (!(err instanceof ApiError && err.code === 'NETWORK' && viewer.link === LinkState.RETRYING)) {
      showBanner(`Could not list devices: ${describe(err)}`);
    }
  }
}

function renderDevices() {
  home.wanted = viewer.intent?.device || viewer.wanted;
  home.render();
}

// -- opening the viewer on a device (?device=NAME&call=1, or an alert's click) ---------

function readIntent() {
  const params = new URLSearchParams(location.search);
  const device = params.get('device');
  if (device) {
    const at = Number(params.get('at'));
    viewer.intent = {
      device,
      call: params.get('call') === '1',
      event: params.get('event'),
      time: params.has('at') && Number.isFinite(at) ? at : null,
    };
  }
  if (params.has('device') || params.has('call')) {
    history.replaceState(null, '', location.pathname); // keep the address bar clean
  }
}

function applyIntent() {
  const intent = viewer.intent;
  if (!intent || !viewer.user || !viewer.devicesLoaded) return;
  if (intent.event && !intent.call) {
    // An alert about an event: land on it (its picture, a call to its device).
    viewer.intent = null;
    viewer.wanted = intent.device;
    home.landOn(intent);
    return;
  }
  const device = viewer.devices.find((d) => d.name === intent.device && d.online);
  if (!device) {
    // It may be on its way (an alert can beat the device's reconnect): the device list
    // follows join notices, so wait for it a while.
    intent.timer ??= setTimeout(() => {
      if (viewer.intent !== intent) return;
      viewer.intent = null;
      showBanner(`${intent.device} is not online right now.`, 'warn');
    }, INTENT_WAIT_MS);
    return;
  }
  clearTimeout(intent.timer);
  viewer.intent = null;
  viewer.wanted = device.name; // stays highlighted: this is the device the alert was about
  const item = document.querySelector(`.device[data-name="${CSS.escape(device.name)}"]`);
  item?.scrollIntoView({ block: 'center' });
  if (intent.call && !viewer.call) startCall(device, performance.now());
}

function onWorkerMessage(event) {
  const data = event.data;
  if (data?.type !== 'open-device' || !data.device) return;
  viewer.intent = {
    device: data.device,
    call: Boolean(data.call),
    event: typeof data.event === 'string' ? data.event : null,
    time: typeof data.time === 'number' ? data.time : null,
  };
  if (viewer.user) refreshDevices();
  else showLogin();
}

// -- calls -----------------------------------------------------------------------------

async function startCall(device, clickedAt) {
  if (viewer.call || viewer.starting) return;
  const cid = device.connection_ids?.[device.connection_ids.length - 1];
  if (!cid) {
    showBanner(`${device.name} is not connected: it cannot be called now.`);
    return;
  }
  if (!viewer.realtime?.open) {
    showBanner('Not connected to the hub yet; try again in a moment.', 'warn');
    return;
  }
  hideBanner();
  viewer.starting = true;
  try {
    await pictureCallsDone(device);
  } finally {
    viewer.starting = false;
  }
  if (viewer.call) return;
  const call = newCall(device, cid, { startedAt: clickedAt });
  viewer.call = call;
  showCallView(call);
  try {
    await call.start();
  } catch (err) {
    endCall(`Could not start the call: ${describe(err)}`, 'error');
  }
}

// A call to `device` at connection `cid`, its events wired to the page (they act only
// while it is the page's current call: a replacement call is quiet until it takes over).
function newCall(device, cid, { startedAt, deferVideo = false } = {}) {
  const video = $('video');
  const call = new Call({
    device,
    cid,
    realtime: viewer.realtime,
    iceServers: viewer.config.iceServers || [],
    iceTransportPolicy: viewer.config.iceTransportPolicy,
    iceSource: viewer.config.iceServersUrl ? () => api.iceServers(viewer.config.iceServersUrl) : null,
    video,
    selfId: viewer.user.user_id,
    startedAt,
    deferVideo,
  });
  const current = (handler) => (event) => { if (viewer.call === call) handler(event); };
  call.addEventListener('state', current((event) => setCallState(event.detail.state)));
  call.addEventListener('track', current(() => playVideo(video)));
  call.addEventListener('mic', current((event) => onMic(event.detail)));
  call.addEventListener('control', current((event) => onControl(call, event.detail.open)));
  call.addEventListener('notice', current((event) => onCallNotice(event.detail)));
  call.addEventListener('stats', current((event) => showStats(event.detail)));
  call.addEventListener('frame', current(() => { viewer.frames += 1; }));
  call.addEventListener('stalled', current(() => resumeCall(call)));
  call.addEventListener('firstframe', current((event) => { $('st-ttff').textContent = `${Math.round(event.detail.ms)} ms`; }));
  call.addEventListener('ended', (event) => onCallEnded(call, event.detail));
  return call;
}

// -- keeping a call through network changes ----------------------------------------------
//
// The media of the current call stopped: call the device again from wherever this page
// is now on the network, while the old call stays up in case its path comes back by
// itself; whichever shows media first is kept (RFC 8445 has ICE restarts for this, but
// the device's WebRTC stack has none). Every attempt opens a fresh hub socket (the old
// one may be dead without knowing it) and fetches fresh ICE servers.

const RESUME_FOR_MS = 60000; // then give up: the device is gone, not just the path
const RESUME_ATTEMPT_MS = 8000;
const RESUME_DELAYS_MS = [0, 250, 500, 1000]; // then every second: a path can come back any time

async function resumeCall(old) {
  if (viewer.resume || viewer.call !== old) return;
  const resume = { old, next: null, stopped: false, attempts: 0, startedAt: performance.now() };
  viewer.resume = resume;
  viewer.resumes.push(resume);
  showBanner('The connection to the device is interrupted; reconnecting…', 'warn');
  const cameBack = () => {
    resume.stopped = true;
    resume.recovered = 'by itself';
    resume.next?.retire();
  };
  old.addEventListener('resumed', cameBack, { once: true });
  while (!resume.stopped && performance.now() - resume.startedAt < RESUME_FOR_MS) {
    const delay = RESUME_DELAYS_MS[Math.min(resume.attempts, RESUME_DELAYS_MS.length - 1)];
    if (delay) await sleep(delay);
    if (resume.stopped) break;
    resume.attempts += 1;
    const next = await recall(resume);
    if (next && !resume.stopped) {
      takeOver(resume, next);
      break;
    }
  }
  old.removeEventListener('resumed', cameBack);
  if (viewer.resume === resume) viewer.resume = null;
  if (resume.recovered) {
    if ($('banner').dataset.kind === 'warn') hideBanner();
  } else if (!resume.stopped && viewer.call === old) {
    const message = 'The connection to the device was lost.';
    if (old.ended) onCallEnded(old, { reason: 'error', message }); // the device gave up first
    else endCall(message, 'error');
  }
}

// One attempt: a fresh socket, the device's connection now, a call whose media arrives.
async function recall(resume) {
  const device = resume.old.device;
  try {
    await viewer.realtime.reconnect(RESUME_ATTEMPT_MS);
    const online = await api.devices();
    const found = online.find((d) => d.user_id === device.user_id);
    const cid = found?.connection_ids[found.connection_ids.length - 1];
    if (!cid || resume.stopped) return null;
    const next = newCall(found, cid, { startedAt: performance.now(), deferVideo: true });
    resume.next = next;
    const ready = new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), RESUME_ATTEMPT_MS);
      next.addEventListener('ready', () => { clearTimeout(timer); resolve(true); }, { once: true });
      next.addEventListener('ended', () => { clearTimeout(timer); resolve(false); }, { once: true });
    });
    await next.start();
    if (await ready) return next;
    next.retire();
  } catch (err) {
    resume.lastError = describe(err);
  }
  return null;
}

function takeOver(resume, next) {
  const old = resume.old;
  resume.recovered = 'by calling again';
  resume.tookOverAt = performance.now();
  viewer.call = next;
  old.retire();
  next.attachVideo();
  setCallState(next.state);
  onControl(next, next.control?.readyState === 'open');
  showBanner('Reconnected to the device.', 'info', { sticky: false });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function endCall(message, reason = 'local') {
  const call = viewer.call;
  if (!call) return;
  if (viewer.resume) {
    viewer.resume.stopped = true;
    viewer.resume.next?.retire();
  }
  if (reason === 'local') call.hangup(message);
  else call.abort(reason, message);
}

function showCallView(call) {
  $('call-title').textContent = call.device.name;
  home.setBusy(true);
  $('call-view').hidden = false;
  $('snapshot-box').hidden = true;
  $('unmute').hidden = true;
  $('status-details').open = false;
  panels.detach();
  $('mic-note').textContent = 'Asking for the microphone…';
  $('talk').disabled = true;
  setCommandsEnabled(false);
  for (const id of ['st-ttff', 'st-bitrate', 'st-fps', 'st-size', 'st-rtt', 'st-route']) $(id).textContent = '–';
  setCallState(call.state);
}

function setCallState(state) {
  $('call-state').textContent = state;
  $('call-state').dataset.state = state;
}

function onCallEnded(call, { reason, message }) {
  // A call replaced by another, or one being replaced, ends without a word.
  if (reason === 'replaced' || (viewer.resume?.old === call && reason !== 'local')) return;
  if (viewer.call !== call) return;
  viewer.call = null;
  viewer.lastCall = call;
  setTalking(false);
  const video = $('video');
  video.pause();
  video.srcObject = null;
  panels.detach();
  $('call-view').hidden = true;
  home.setBusy(false);
  renderDevices();
  if (reason === 'local') showBanner(message, 'info', { sticky: false });
  else showBanner(message, reason === 'remote' ? 'info' : 'error');
}

function onCallNotice({ code, message }) {
  if (code === 'RECONNECTED') {
    if ($('banner').dataset.kind === 'warn') hideBanner();
    return;
  }
  showBanner(code ? `${message} (${code})` : message, 'warn');
}

// Unmuted autoplay needs a user gesture; a call from an alert or a link may not have one.
async function playVideo(video) {
  try {
    video.muted = false;
    await video.play();
  } catch (err) {
    if (err?.name !== 'NotAllowedError') return;
    video.muted = true;
    $('unmute').hidden = false;
    try {
      await video.play();
    } catch {
      // shown as a still; the unmute button starts it
    }
  }
}

async function unmute() {
  const video = $('video');
  video.muted = false;
  try {
    await video.play();
    $('unmute').hidden = true;
  } catch (err) {
    showBanner(`The browser would not play sound: ${describe(err)}`, 'warn');
  }
}

// -- push-to-talk ----------------------------------------------------------------------

function onMic({ ready, message }) {
  $('talk').disabled = !ready;
  const hint = matchMedia('(pointer: coarse)').matches ? 'Hold the button to talk.' : 'Hold the button (or the space bar) to talk.';
  $('mic-note').textContent = ready ? hint : message;
  $('mic-note').dataset.kind = ready ? 'info' : 'warn';
}

function setTalking(on) {
  const talk = $('talk');
  const live = Boolean(viewer.call?.talk(on));
  talk.classList.toggle('live', on && live);
  talk.textContent = on && live ? 'Talking…' : 'Hold to talk';
  talk.setAttribute('aria-pressed', String(on && live));
}

function wireTalkButton() {
  const talk = $('talk');
  talk.addEventListener('pointerdown', (event) => {
    if (talk.disabled) return;
    event.preventDefault();
    talk.setPointerCapture(event.pointerId); // a finger sliding off still holds
    setTalking(true);
  });
  for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) {
    talk.addEventListener(type, () => setTalking(false));
  }
  talk.addEventListener('contextmenu', (event) => event.preventDefault()); // long press
  const isTalkKey = (event) => event.code === 'Space' && !isTyping(event.target);
  document.addEventListener('keydown', (event) => {
    if (!isTalkKey(event) || !viewer.call || talk.disabled) return;
    event.preventDefault();
    if (!event.repeat) setTalking(true);
  });
  document.addEventListener('keyup', (event) => {
    if (isTalkKey(event) && viewer.call) setTalking(false);
  });
  window.addEventListener('blur', () => setTalking(false));
}

function isTyping(target) {
  return target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement;
}

// -- control commands ------------------------------------------------------------------

function setCommandsEnabled(open) {
  $('cmd-status').disabled = !open;
  $('cmd-snapshot').disabled = !open;
}

// The call's control channel opened (or closed): status card, sensors and consoles.
function onControl(call, open) {
  setCommandsEnabled(open);
  if (open) panels.attach(call).catch((err) => viewer.errors.push(`status failed: ${describe(err)}`));
}

async function runStatus() {
  try {
    await panels.refreshStatus();
  } catch (err) {
    viewer.errors.push(`status failed: ${describe(err)}${err.code ? ` (${err.code})` : ''}`);
  }
}

let snapshotUrl = null;

async function runSnapshot() {
  const button = $('cmd-snapshot');
  button.disabled = true;
  try {
    const blob = await viewer.call.command('snapshot');
    if (snapshotUrl) URL.revokeObjectURL(snapshotUrl);
    snapshotUrl = URL.createObjectURL(blob);
    $('snapshot').src = snapshotUrl;
    $('snapshot-caption').textContent = `${new Date().toLocaleTimeString()} · ${Math.round(blob.size / 1024)} KiB`;
    $('snapshot-box').hidden = false;
  } catch (err) {
    const message = `The picture could not be taken: ${describe(err)}${err.code ? ` (${err.code})` : ''}`;
    showBanner(message, 'warn');
    viewer.errors.push(message);
  } finally {
    button.disabled = !(viewer.call?.control?.readyState === 'open');
  }
}

// -- stats -----------------------------------------------------------------------------

function showStats(stats) {
  $('st-bitrate').textContent = formatBitrate(stats.bitrate);
  $('st-fps').textContent = stats.fps == null ? '–' : `${Math.round(stats.fps)} fps`;
  $('st-size').textContent = stats.width ? `${stats.width}×${stats.height}${stats.codec ? ` ${stats.codec}` : ''}` : '–';
  $('st-rtt').textContent = stats.rttMs == null ? '–' : `${Math.round(stats.rttMs)} ms`;
  $('st-route').textContent = stats.route || '–';
}

// -- start -----------------------------------------------------------------------------

function wire() {
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', () => logout());
  $('banner-close').addEventListener('click', hideBanner);
  $('refresh').addEventListener('click', refreshDevices);
  $('groups').addEventListener('change', onGroupsChanged);
  $('hangup').addEventListener('click', () => endCall('You hung up.'));
  $('unmute').addEventListener('click', unmute);
  $('cmd-status').addEventListener('click', runStatus);
  $('cmd-snapshot').addEventListener('click', runSnapshot);
  wireTalkButton();
  window.addEventListener('online', () => viewer.realtime?.nudge());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') viewer.realtime?.nudge();
  });
  // Closing the tab hangs up, so the device frees the call at once.
  window.addEventListener('pagehide', () => viewer.call?.hangup('The page was closed.'));
  navigator.serviceWorker?.addEventListener('message', onWorkerMessage);
}

// -- pictures for the tiles ----------------------------------------------------------------

function pictureOf(device) {
  const cid = device.connection_ids?.[device.connection_ids.length - 1];
  if (!cid || !viewer.realtime?.open || viewer.call || viewer.starting || device.callable === false) {
    return Promise.reject(new Error('not now'));
  }
  return takePicture(device, {
    cid,
    realtime: viewer.realtime,
    iceServers: viewer.config.iceServers || [],
    iceTransportPolicy: viewer.config.iceTransportPolicy,
    iceSource: viewer.config.iceServersUrl ? () => api.iceServers(viewer.config.iceServersUrl) : null,
    selfId: viewer.user.user_id,
    onCall: (call, ended) => {
      viewer.probe = call;
      if (ended) viewer.lastProbe = ended;
    },
  });
}

// Before a person's call: no picture call in the way (the device may take one call).
async function pictureCallsDone(device) {
  await home.thumbnails.pause();
  const last = viewer.lastProbe;
  if (last?.device.user_id === device.user_id && performance.now() - last.metrics.endedAt < AFTER_PICTURE_MS) {
    await sleep(AFTER_PICTURE_MS);
  }
}

function boot() {
  wire();
  readIntent();
  const saved = session.load();
  if (saved) startSession(saved);
  else showLogin();
}

boot();
