// Device tiles: is it online (since when), its latest picture, its last event, a line of
// its sensors; tapping the picture calls it.
//
// A tile has one button (the picture: "Call NAME"); History and Sensors are links, so the
// keyboard reaches each with Tab and the picture keeps the one action a tap means.

import { ago, presence } from './format.js';
import { sensorSummary } from './sensors.js';

// Replace the tiles in `list` with one per device.
// devices: [{name, online, since, known, last_event, snapshot, telemetry, picture}]
// handlers: {onCall(device, event), onHistory(device), onSensors(device)}; busy: a call is up.
export function renderTiles(list, devices, { pictures, handlers, busy = false, wanted = null, now = Date.now() / 1000 }) {
  // Pictures already shown are moved into the new tiles, not loaded again (no flicker).
  const shown = new Map([...list.querySelectorAll('img[data-key]')].map((img) => [img.dataset.key, img]));
  const tiles = devices.map((device) => tile(device, { pictures, handlers, busy, wanted, now, shown }));
  list.replaceChildren(...tiles);
}

function tile(device, { pictures, handlers, busy, wanted, now, shown }) {
  const item = document.createElement('li');
  item.className = 'device tile';
  item.dataset.name = device.name;
  item.dataset.online = String(Boolean(device.online));
  if (wanted === device.name) item.classList.add('wanted');

  const call = document.createElement('button');
  call.type = 'button';
  call.className = 'call-button tile-call';
  call.disabled = busy || !device.online || !device.connection_ids?.length;
  call.setAttribute('aria-label', device.online ? `Call ${device.name}` : `${device.name} is offline`);
  call.addEventListener('click', (event) => handlers.onCall(device, event.timeStamp));
  call.append(thumbnail(device, pictures, now, shown), callLabel(device));

  const body = document.createElement('div');
  body.className = 'tile-body';
  const title = document.createElement('div');
  title.className = 'tile-title';
  const name = document.createElement('strong');
  name.textContent = device.name;
  const state = document.createElement('span');
  state.className = 'presence';
  state.dataset.online = String(Boolean(device.online));
  state.textContent = presence(device, now);
  title.append(name, state);
  body.append(title);

  body.append(line('tile-event', lastEvent(device, now)));
  const sensors = sensorSummary(device.telemetry);
  if (sensors) body.append(line('tile-sensors', sensors));
  const links = document.createElement('p');
  links.className = 'tile-links';
  links.append(link('History', `Events of ${device.name}`, () => handlers.onHistory(device)));
  if (device.telemetry) links.append(link('Sensors', `Sensors of ${device.name}`, () => handlers.onSensors(device)));
  body.append(links);
  item.append(call, body);
  return item;
}

function thumbnail(device, pictures, now, shown) {
  const box = document.createElement('span');
  box.className = 'thumb';
  const picture = newestPicture(device);
  if (!picture) {
    const none = document.createElement('span');
    none.className = 'thumb-empty';
    none.textContent = device.online ? 'No picture yet' : 'No picture';
    box.append(none);
    return box;
  }
  const key = `${device.name}|${picture.url || picture.link}`;
  let img = shown.get(key);
  if (!img) {
    img = document.createElement('img');
    img.alt = ''; // the button says what it does; the time below says when
    img.dataset.key = key;
    const source = picture.url ? Promise.resolve(picture.url) : pictures.get(picture.link);
    source.then((url) => {
      if (url) img.src = url;
      else box.classList.add('gone');
    });
  }
  box.append(img);
  const when = document.createElement('span');
  when.className = 'thumb-time';
  when.textContent = ago(picture.time, now);
  box.append(when);
  return box;
}

// The newer of the last event's snapshot and a picture taken while the list was shown.
export function newestPicture(device) {
  const event = device.snapshot ? { link: device.snapshot.url, time: device.snapshot.time } : null;
  const live = device.picture ? { url: device.picture.url, time: device.picture.time } : null;
  if (event && live) return live.time >= event.time ? live : event;
  return live || event;
}

function callLabel(device) {
  const label = document.createElement('span');
  label.className = 'tile-call-label';
  label.setAttribute('aria-hidden', 'true');
  label.textContent = device.online ? 'Call' : 'Offline';
  return label;
}

function lastEvent(device, now) {
  const event = device.last_event;
  return event ? `Last event: ${event.name} · ${ago(event.time, now)}` : 'No events yet';
}

function line(className, text) {
  const p = document.createElement('p');
  p.className = className;
  p.textContent = text;
  return p;
}

function link(text, label, action) {
  const a = document.createElement('a');
  a.href = '#';
  a.textContent = text;
  a.setAttribute('aria-label', label);
  a.addEventListener('click', (event) => {
    event.preventDefault();
    action();
  });
  return a;
}
