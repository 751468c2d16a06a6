// Web push alerts: the service worker, PushManager.subscribe with the hub's VAPID key
// (RFC 8292 applicationServerKey), and the hub's subscribe/unsubscribe routes.

import { ApiError } from './api.js';

export function alertsSupported() {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

export function unsupportedReason() {
  if (!window.isSecureContext) return 'Alerts need a secure page (https:// or localhost).';
  if (!('serviceWorker' in navigator)) return 'This browser has no service workers, so no alerts.';
  if (!('PushManager' in window)) return 'This browser cannot receive push messages (on iPhone: add the viewer to the home screen first).';
  return 'This browser cannot show notifications.';
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

export async function enableAlerts(api) {
  if (!alertsSupported()) throw new Error(unsupportedReason());
  const permission = await Notification.requestPermission();
  if (permission !== 'granted') {
    throw new Error(permission === 'denied'
      ? 'Notifications are blocked for this site: allow them in the browser settings, then try again.'
      : 'Notifications were not allowed.');
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
    try {
      subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: base64UrlToBytes(key),
      });
    } catch (err) {
      throw new Error(pushServiceProblem(err));
    }
  }
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
    return `The browser does not allow push messages for this page (${detail}): check the site's notification settings.`;
  }
  if (err?.name === 'AbortError') {
    return `The browser's push service could not be reached (${detail}): alerts need this device to be online.`;
  }
  return `The browser's push service refused the subscription (${detail}).`;
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
