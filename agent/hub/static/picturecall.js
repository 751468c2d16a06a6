// A picture of a device for its tile: a call with the `control` channel only (no camera
// stream, no microphone), its `status` (which also says whether the device takes one call
// at a time) and `snapshot`, then hang up. See thumbnails.js for when this happens.

import { Call } from './call.js';

// options: {cid, realtime, iceServers, iceTransportPolicy, iceSource, selfId,
// onCall(call | null)}; resolves {blob | null, status}; rejects with .refusal set to the
// reason the call ended ('remote' when the device did not take it).
export async function takePicture(device, { onCall, ...options }) {
  const call = new Call({ device, ...options, dataOnly: true });
  onCall(call);
  try {
    const opened = new Promise((resolve, reject) => {
      call.addEventListener('control', (event) => { if (event.detail.open) resolve(); });
      call.addEventListener('ended', (event) => reject(
        Object.assign(new Error(event.detail.message || 'the call ended'), { refusal: event.detail.reason }),
      ));
    });
    await call.start();
    await opened;
    const status = await call.command('status');
    const blob = status.media ? await call.command('snapshot') : null;
    return { blob, status, call };
  } finally {
    call.hangup('');
    onCall(null, call);
  }
}
