// Web push alerts: the service worker, PushManager.subscribe with the hub's VAPID key
// (RFC 8292 applicationServerKey), and the hub's subscribe/unsubscribe routes.
//
// Opting in is never silent: alertState() names every state this browser can be in
// (unsupported, insecure page, blocked, private window, push service unreachable, hub
// without push, on, off) with what to do about it, and enableAlerts() reports each step
// while it waits on the browser (a push service that cannot be reached can take long).

import { ApiError } from './api.js';

const PUSH_SERVICE_WAIT_MS = 20000; // then say the push service is not answering
const CHECK_WAIT_MS = 5000;

export const AlertState = Object.freeze({
  UNSUPPORTED: 'unsupported',
  INSECURE: 'insecure',
  BLOCKED: 'blocked',
  OFF: 'off',
  ON: 'on',
});

export function alertsSupported() {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

export function unsupportedReason() {
  if (!window.isSecureContext) {
    return 'Alerts need a secure page: open the viewer at its https:// address (or on localhost).';
  }
  if (!('serviceWorker' in navigator)) {
    return 'This browser window cannot run background tasks, so no alerts: a private window '
      + 'does not allow them. Open the viewer in a normal window, or another browser.';
  }
  if (!('PushManager' in window)) {
    return 'This browser cannot receive push messages. On an iPhone or iPad, add the viewer to '
      + 'the Home Screen first (Share, then Add to Home Screen) and open it from there.';
  }
  return 'This browser cannot show notifications; try another browser.';
}

// {state, kind: ok|info|warn|error, message, canEnable, canDisable} for this browser now.
export async function alertState() {
  if (!window.isSecureContext) return blocked(AlertState.INSECURE, unsupportedReason());
  if (!alertsSupported()) return blocked(AlertState.UNSUPPORTED, unsupportedReason());
  if (Notification.permission === 'denied') return blocked(AlertState.BLOCKED, BLOCKED);
  let subscription = null;
  try {
    subscription = await withTimeout(currentSubscription(), CHECK_WAIT_MS, 'the browser did not answer');
  } catch (err) {
    return {
      state: AlertState.OFF, kind: 'warn', canEnable: true, canDisable: false,
      message: `Could not check this browser's alerts (${err.message || err}). You can still try to enable them.`,
    };
  }
  if (subscription) {
    return {
      state: AlertState.ON, kind: 'ok', canEnable: false, canDisable: true,
      message: 'Alerts are on: this browser is told when a device raises one, even with the page closed.',
    };
  }
  return {
    state: AlertState.OFF, kind: 'info', canEnable: true, canDisable: false,
    message: 'Alerts are off for this browser. Enable them to be told when a device raises one.',
  };
}

const BLOCKED = 'Notifications are blocked for this site (or this is a private window, where '
  + 'browsers block them): allow notifications in the site settings (the icon next to the '
  + 'address), then try again.';

function blocked(state, message) {
  return { state, kind: 'error', message, canEnable: false, canDisable: false };
}

export async function registerWorker() {
  if (!('serviceWorker' in navigator)) return null;
  return navigator.serviceWorker.register('sw.js', { scope: './' });
}

// The current subscription of this browser, or null.
export async function currentSubscription() {
  if (!alertsSupported()) return null;
  const registration = await navigator.serviceWorker.getRegistration('./');
  return registration ? registration.pushManager.getSubscription() : null;
}

// Subscribe this browser; `progress(message)` is told of each step. Throws an Error whose
// message says what went wrong and what to do.
export async function enableAlerts(api, progress = () => {}) {
  if (!alertsSupported()) throw new Error(unsupportedReason());
  progress('Asking the browser for permission to show notifications…');
  const permission = await Notification.requestPermission();
  if (permission !== 'granted') {
    throw new Error(permission === 'denied' ? BLOCKED
      : 'Notifications were not allowed: tap Enable alerts again and choose Allow.');
  }
  let key;
  try {
    key = (await api.vapidPublicKey()).VAPIDPublicKey;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) throw new Error('This hub does not send alerts (web push is not set up on it).');
    throw err;
  }
  await registerWorker();
  const registration = await navigator.serviceWorker.ready;
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription, key)) {
    await subscription.unsubscribe(); // made for another hub key: useless now
    subscription = null;
  }
  if (!subscription) {
    progress("Registering with the browser's push service…");
    try {
      subscription = await withTimeout(
        registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: base64UrlToBytes(key) }),
        PUSH_SERVICE_WAIT_MS,
        'no answer',
      );
    } catch (err) {
      throw new Error(pushServiceProblem(err));
    }
  }
  progress('Telling the hub…');
  try {
    await api.subscribe(subscriptionBody(subscription));
  } catch (err) {
    await subscription.unsubscribe().catch(() => {});
    throw err;
  }
  return subscription;
}

export async function disableAlerts(api) {
  const subscription = await currentSubscription();
  if (!subscription) return false;
  let hubError = null;
  try {
    await api.unsubscribe(subscriptionBody(subscription));
  } catch (err) {
    hubError = err; // still unsubscribe here: the hub drops it at the next failed push
  }
  await subscription.unsubscribe();
  if (hubError) throw new Error(`Alerts are off in this browser, but the hub could not be told: ${hubError.message}`);
  return true;
}

function pushServiceProblem(err) {
  const detail = err?.message || err?.name || String(err);
  if (err?.name === 'NotAllowedError') {
    return `The browser does not allow push messages for this page (${detail}): check the site's notification settings, and use a normal (not private) window.`;
  }
  if (err?.name === 'AbortError' || err?.name === 'TimeoutError') {
    return `The browser's push service could not be reached (${detail}): alerts need this device to reach the internet; try again when it does.`;
  }
  return `The browser's push service refused the subscription (${detail}).`;
}

function withTimeout(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(what), { name: 'TimeoutError' })), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function subscriptionBody(subscription) {
  const json = subscription.toJSON();
  return { endpoint: json.endpoint, keys: { p256dh: json.keys?.p256dh, auth: json.keys?.auth } };
}

function sameKey(subscription, key) {
  const current = subscription.options?.applicationServerKey;
  if (!current) return true;
  return bytesToBase64Url(new Uint8Array(current)) === key.replace(/=+$/, '');
}

export function base64UrlToBytes(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=');
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

function bytesToBase64Url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}
