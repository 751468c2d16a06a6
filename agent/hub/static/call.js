// One call to a device: RTCPeerConnection, signaling over the realtime connection, the
// `control` data channel, push-to-talk and statistics.
//
// Signaling follows the hosted service's browser client (and so the agent's answering):
// this side sends {sdpoffer: {type, sdp}} to the device's connection id, then trickles
// {candidate: {candidate, sdpMid, sdpMLineIndex, usernameFragment}} with no end marker;
// the device answers {sdpanswer}, then {pickup} when it takes the call; either side ends
// with {hungup: USER_ID}.
//
// The offer does not wait for the microphone: audio goes out on a sendrecv transceiver
// whose track is attached (replaceTrack) once getUserMedia answers, so a permission prompt
// never delays the picture. The track stays disabled (silence) except while talk is held.
//
// A network change (a phone moving from Wi-Fi to mobile data, a link going down and up)
// stops the media of a call that was flowing: the call says 'stalled' (no media for
// STALL_MS, or ICE disconnected) and 'resumed' if it comes back by itself; the page then
// calls again (app.js), since the device (aiortc) has no ICE restart. A call made to
// replace another starts with `deferVideo`: it shows nothing until its media arrives
// ('ready'), so the old picture stays up until there is a new one.
//
// A call made with `dataOnly` has the `control` channel and nothing else (no picture,
// no sound, no microphone): the tiles' pictures are taken that way (picturecall.js).
//
// ICE servers are fetched for every call (`iceSource`: the hub's /api/ice-servers, whose
// TURN credentials last about an hour), while the offer is being made, and set before
// gathering starts (setConfiguration before setLocalDescription, W3C WebRTC 4.4.1.6). A
// hub that cannot be asked leaves the static servers of the viewer's settings.

import { summarize } from './stats.js';

export const CallState = Object.freeze({
  CALLING: 'calling',
  ANSWERED: 'answered',
  CONNECTED: 'connected',
  ENDED: 'ended',
});

const RING_TIMEOUT_MS = 30000;
const DISCONNECTED_GRACE_MS = 8000; // ICE may recover from 'disconnected' on its own
// No media for this long: the path is gone. Audio alone comes 50 times a second, so this
// long without a byte of either is not jitter; and a stall taken for one costs little (the
// old call stays up, and wins if its media comes back first).
const STALL_MS = 700;
const FLOW_POLL_MS = 175;
const READY_POLL_MS = 50;
const COMMAND_TIMEOUT_MS = 30000;
const STATS_INTERVAL_MS = 1000;

export class CallError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'CallError';
    this.code = code;
  }
}

// Events: 'state' {state}, 'mic' {ready, message}, 'talk' {on}, 'notice' {code, message},
// 'stats' (summary), 'frame' {count}, 'stalled' {why}, 'resumed', 'ready' (a deferred
// call's media arrived), 'ended' {reason, message, error}.
export class Call extends EventTarget {
  constructor({
    device, cid, realtime, iceServers = [], iceTransportPolicy = 'all', iceSource = null, video,
    selfId, startedAt, deferVideo = false, dataOnly = false,
  }) {
    super();
    this.device = device; // {user_id, name}
    this.cid = cid;
    this.realtime = realtime;
    this.iceServers = iceServers;
    this.iceTransportPolicy = iceTransportPolicy === 'relay' ? 'relay' : 'all';
    this.iceSource = iceSource;
    this.deferVideo = deferVideo;
    this.dataOnly = dataOnly;
    this.stalled = false;
    this.video = video;
    this.selfId = selfId;
    this.state = CallState.CALLING;
    this.metrics = { clickAt: startedAt ?? performance.now() };
    this.localCandidates = [];
    this.framesShown = 0;
    this.mic = null;
    this.stats = null;
    this._remoteCandidates = [];
    this._signals = Promise.resolve(); // remote signaling applied one at a time, in order
    this._pending = new Map();
    this._nextId = 1;
    this._timers = new Set();
  }

  async start() {
    const iceReady = this._fetchIce();
    const pc = new RTCPeerConnection(this._configuration());
    this.pc = pc;
    if (!this.dataOnly) {
      pc.addTransceiver('video', { direction: 'recvonly' });
      this.audio = pc.addTransceiver('audio', { direction: 'sendrecv' });
    }
    this.control = pc.createDataChannel('control', { ordered: true });
    this._wireControl(this.control);
    pc.ontrack = (event) => this._onTrack(event);
    pc.onicecandidate = (event) => this._onLocalCandidate(event.candidate);
    pc.onconnectionstatechange = () => this._onConnectionState(pc.connectionState);
    // The call may end while the prompt is up; a late replaceTrack then has nothing to do.
    this._micReady = this.dataOnly ? null : this._getMicrophone().catch((err) => {
      if (!this.ended) this._micState(false, `The microphone could not be attached (${err.message || err}).`);
    });
    const offer = await pc.createOffer();
    await iceReady;
    if (this.ended) return;
    pc.setConfiguration(this._configuration()); // before gathering: the fresh servers
    await pc.setLocalDescription(offer);
    if (this.ended) return;
    this.metrics.offerAt = performance.now();
    this.link = this.realtime.generation; // the device answers over this socket only
    if (!this.realtime.rtc(this.cid, { sdpoffer: { type: offer.type, sdp: offer.sdp } })) {
      this._end('error', 'Not connected to the hub: the call could not be placed.');
      return;
    }
    this._after(RING_TIMEOUT_MS, () => {
      if (this.state !== CallState.CONNECTED) this.hangup('The device did not answer in time.');
    });
  }

  get ended() { return this.state === CallState.ENDED; }

  _configuration() {
    return {
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
      bundlePolicy: 'max-bundle',
    };
  }

  // Fresh servers (and the hub's transport policy) for this call; the static ones if the
  // hub cannot be asked. Never logs a credential.
  async _fetchIce() {
    if (!this.iceSource) return;
    const started = performance.now();
    try {
      const answer = await this.iceSource();
      if (Array.isArray(answer?.iceServers)) this.iceServers = answer.iceServers;
      if (answer?.iceTransportPolicy === 'relay') this.iceTransportPolicy = 'relay';
      this.metrics.iceServersMs = performance.now() - started;
    } catch (err) {
      console.warn(`ICE servers not fetched (${err.message || err}); using the configured ones`);
    }
  }

  // A `rtc` content from the device's connection.
  handleSignal(content) {
    if (!content || typeof content !== 'object' || this.ended) return;
    // Handled as it arrives, so the open socket is the one it came over: a call sent over
    // another socket (replaced after a network change) is not what it is about.
    if (this.link !== undefined && this.link !== this.realtime.generation) return;
    if (content.hungup) {
      const before = this.state !== CallState.CONNECTED;
      this._end('remote', before ? `${this.device.name} did not take the call.` : `${this.device.name} hung up.`);
      return;
    }
    this._signals = this._signals
      .then(() => this._applySignal(content))
      .catch((err) => this._end('error', `Call setup failed: ${err.message || err}`));
  }

  hangup(message = 'You hung up.') {
    if (this.ended) return;
    this.realtime.rtc(this.cid, { hungup: this.selfId });
    this._end('local', message);
  }

  // End without telling the device (it already knows: it refused, or it is gone).
  abort(reason, message) {
    this._end(reason, message);
  }

  // End quietly (replaced by another call, or no longer needed). The device is told only
  // if this call went out over the hub socket open now: it knows calls by the caller's
  // socket, so a hangup about an older one would reach a newer call instead. An older
  // call's device lets it go when its ICE consent checks stop being answered (RFC 7675).
  retire() {
    if (this.ended) return;
    if (this.link !== undefined && this.link === this.realtime.generation) {
      this.realtime.rtc(this.cid, { hungup: this.selfId });
    }
    this._end('replaced', '');
  }

  // Push-to-talk: the microphone is live only while this is on.
  talk(on) {
    if (!this.mic || this.ended) return false;
    this.mic.enabled = on;
    this.dispatchEvent(new CustomEvent('talk', { detail: { on } }));
    return true;
  }

  // A `control` command; resolves with its result (a Blob for binary results).
  command(name, args = {}) {
    if (!this.control || this.control.readyState !== 'open') {
      return Promise.reject(new CallError('INVALID_REQUEST', 'The control channel is not open yet.'));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new CallError('TIMEOUT', `"${name}" got no answer in ${COMMAND_TIMEOUT_MS / 1000} s.`));
      }, COMMAND_TIMEOUT_MS);
      this._pending.set(id, { resolve, reject, timer, name, meta: null, chunks: [] });
      this.control.send(JSON.stringify({ id, command: name, ...args }));
    });
  }

  // -- signaling -----------------------------------------------------------------------

  async _applySignal(content) {
    if (this.ended) return;
    if (content.candidate) await this._addRemoteCandidate(content.candidate);
    if (content.pickup) this._pickedUp();
    if (content.sdpanswer) {
      await this.pc.setRemoteDescription(content.sdpanswer);
      this.metrics.answerAt = performance.now();
      if (this.state === CallState.CALLING) this._setState(CallState.ANSWERED);
      const early = this._remoteCandidates.splice(0);
      for (const candidate of early) await this._addRemoteCandidate(candidate);
    }
  }

  async _addRemoteCandidate(candidate) {
    if (!this.pc.remoteDescription) {
      this._remoteCandidates.push(candidate);
      return;
    }
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      // One bad candidate must not end a call that other candidates can carry.
      console.warn('ignored a remote candidate:', err);
    }
  }

  _pickedUp() {
    this.metrics.pickupAt = performance.now();
    this._setState(CallState.CONNECTED);
    this._startStats();
  }

  _onLocalCandidate(candidate) {
    if (!candidate || !candidate.candidate || this.ended) return; // no end-of-candidates marker
    const init = candidate.toJSON();
    this.localCandidates.push(init.candidate);
    this.realtime.rtc(this.cid, {
      candidate: {
        candidate: init.candidate,
        sdpMid: init.sdpMid,
        sdpMLineIndex: init.sdpMLineIndex,
        usernameFragment: init.usernameFragment,
      },
    });
  }

  _onConnectionState(state) {
    if (this.ended) return;
    const hadMedia = this.metrics.firstMediaAt !== undefined;
    if (state === 'connected') {
      this.metrics.connectedAt ??= performance.now();
      clearTimeout(this._lost);
      this.dispatchEvent(new CustomEvent('notice', { detail: { code: 'RECONNECTED', message: '' } }));
    } else if (hadMedia && (state === 'disconnected' || state === 'failed')) {
      this._stall(`ICE ${state}`); // the page calls again; ICE may also come back
    } else if (state === 'disconnected') {
      this.dispatchEvent(new CustomEvent('notice', {
        detail: { code: 'INTERRUPTED', message: 'The connection to the device is interrupted; waiting for it to come back…' },
      }));
      clearTimeout(this._lost);
      this._lost = this._after(DISCONNECTED_GRACE_MS, () => {
        if (this.pc.connectionState !== 'connected') this.hangup('The connection to the device was lost.');
      });
    } else if (state === 'failed') {
      this.hangup('The connection to the device failed: no network route between you and it.');
    }
  }

  // -- media ---------------------------------------------------------------------------

  _onTrack(event) {
    this.stream ??= new MediaStream();
    this.stream.addTrack(event.track);
    if (this.deferVideo) {
      this._waitForMedia();
      return;
    }
    this.attachVideo();
    this.dispatchEvent(new CustomEvent('track', { detail: { kind: event.track.kind } }));
  }

  // Show this call's picture (a deferred call: once the page switches to it).
  attachVideo() {
    this.deferVideo = false;
    if (!this.stream || this.video.srcObject === this.stream) return;
    this.video.srcObject = this.stream;
    this._watchFrames();
    this.dispatchEvent(new CustomEvent('track', { detail: { kind: 'video' } }));
  }

  // A deferred call is 'ready' once video frames arrive (W3C webrtc-stats framesReceived).
  _waitForMedia() {
    if (this._readyTimer) return;
    this._readyTimer = setInterval(async () => {
      if (this.ended) {
        clearInterval(this._readyTimer);
        return;
      }
      try {
        const summary = summarize(await this.pc.getStats(), null);
        if (summary.framesReceived > 0) {
          clearInterval(this._readyTimer);
          this.metrics.readyAt = performance.now();
          this.dispatchEvent(new Event('ready'));
        }
      } catch {
        // closed between polls
      }
    }, READY_POLL_MS);
  }

  // The media stopped (or ICE says the path is gone): tell the page, once per stall.
  _stall(why) {
    if (this.stalled || this.ended) return;
    this.stalled = true;
    this.metrics.stalledAt = performance.now();
    this.dispatchEvent(new CustomEvent('stalled', { detail: { why } }));
  }

  // Bytes flowing again after a stall: the old path came back by itself.
  _flow(summary) {
    const bytes = summary.videoBytes + summary.audioBytes;
    const now = performance.now();
    if (bytes > (this._flowBytes ?? 0)) {
      this._flowBytes = bytes;
      this._flowAt = now;
      this.metrics.firstMediaAt ??= now;
      if (this.stalled) {
        this.stalled = false;
        this.dispatchEvent(new Event('resumed'));
      }
    } else if (this._flowAt !== undefined && now - this._flowAt >= STALL_MS) {
      this._stall('no media');
    }
  }

  // Counts frames shown; the first one's time is the call's time to first frame.
  _watchFrames() {
    const video = this.video;
    if (typeof video.requestVideoFrameCallback === 'function') {
      const onFrame = (now, meta) => {
        if (this.ended || video.srcObject !== this.stream) return;
        this.framesShown += 1;
        if (this.framesShown === 1) this._firstFrame(meta.presentationTime || now, meta.receiveTime);
        this.dispatchEvent(new CustomEvent('frame', { detail: { count: this.framesShown } }));
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    } else {
      video.addEventListener('loadeddata', () => this._firstFrame(performance.now()), { once: true });
    }
  }

  _firstFrame(at, receivedAt) {
    this.metrics.firstFrameAt = at;
    if (receivedAt) this.metrics.firstFrameReceivedAt = receivedAt;
    performance.measure('call-setup', { start: this.metrics.clickAt, end: at });
    this.dispatchEvent(new CustomEvent('firstframe', { detail: { ms: at - this.metrics.clickAt } }));
  }

  async _getMicrophone() {
    if (!navigator.mediaDevices?.getUserMedia) {
      this._micState(false, 'Push-to-talk needs a secure page (https:// or localhost): you can watch and listen only.');
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
    } catch (err) {
      this._micState(false, microphoneProblem(err));
      return;
    }
    const [track] = stream.getAudioTracks();
    if (this.ended || !track) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    track.enabled = false;
    await this.audio.sender.replaceTrack(track);
    this.mic = track;
    this.metrics.micAt = performance.now();
    this._micState(true, '');
  }

  _micState(ready, message) {
    this.dispatchEvent(new CustomEvent('mic', { detail: { ready, message } }));
  }

  // -- control channel -----------------------------------------------------------------

  _wireControl(channel) {
    channel.onopen = () => this.dispatchEvent(new CustomEvent('control', { detail: { open: true } }));
    channel.onclose = () => {
      this.dispatchEvent(new CustomEvent('control', { detail: { open: false } }));
      this._failPending('The control channel closed.');
    };
    channel.onmessage = (event) => this._onControl(event.data);
  }

  _onControl(data) {
    let message;
    try {
      message = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
    } catch {
      return;
    }
    const pending = message && this._pending.get(message.id);
    if (!pending) {
      if (message?.type === 'error' || message?.code) {
        this.dispatchEvent(new CustomEvent('notice', { detail: { code: message.code, message: message.message } }));
      }
      return;
    }
    if ('chunk' in message) {
      pending.chunks[message.chunk] = message.data;
      if (pending.meta && pending.chunks.filter((c) => c !== undefined).length === pending.meta.chunks) {
        this._settle(message.id, (p) => p.resolve(blobOf(p.meta, p.chunks)));
      }
    } else if (message.ok === false) {
      const error = message.error || {};
      this._settle(message.id, (p) => p.reject(new CallError(error.code || 'ERROR', error.message || 'The command failed.')));
    } else if (message.result && message.result.encoding === 'base64' && message.result.chunks) {
      pending.meta = message.result;
    } else {
      this._settle(message.id, (p) => p.resolve(message.result));
    }
  }

  _settle(id, action) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    action(pending);
  }

  _failPending(message) {
    for (const id of [...this._pending.keys()]) {
      this._settle(id, (p) => p.reject(new CallError('CLOSED', message)));
    }
  }

  // -- stats and ending ----------------------------------------------------------------

  _startStats() {
    if (this._statsTimer) return;
    const tick = async () => {
      if (this.ended) return;
      try {
        this.stats = summarize(await this.pc.getStats(), this.stats);
        this.dispatchEvent(new CustomEvent('stats', { detail: this.stats }));
      } catch {
        // the connection closed between ticks
      }
    };
    this._statsTimer = setInterval(tick, STATS_INTERVAL_MS);
    tick();
    this._flowTimer = setInterval(async () => {
      if (this.ended) return;
      try {
        this._flow(summarize(await this.pc.getStats(), null));
      } catch {
        // closed between polls
      }
    }, FLOW_POLL_MS);
  }

  _end(reason, message) {
    if (this.ended) return;
    if (!this.dataOnly) console.info(`call ${this.cid} ended (${reason}): ${message}`);
    this._setState(CallState.ENDED);
    clearInterval(this._statsTimer);
    clearInterval(this._flowTimer);
    clearInterval(this._readyTimer);
    for (const timer of this._timers) clearTimeout(timer);
    this._failPending('The call ended.');
    if (this.mic) this.mic.stop();
    try {
      this.pc?.close();
    } catch {
      // already closed
    }
    this.metrics.endedAt = performance.now();
    this.dispatchEvent(new CustomEvent('ended', { detail: { reason, message } }));
  }

  _after(ms, fn) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
    return timer;
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state } }));
  }
}

function microphoneProblem(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone blocked: allow it for this site, then call again to talk. You can still watch and listen.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone found: you can watch and listen only.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The microphone is busy or failed (another app may be using it): you can watch and listen only.';
    default:
      return `The microphone is unavailable (${err?.message || err}): you can watch and listen only.`;
  }
}

function blobOf(meta, chunks) {
  const parts = chunks.map((text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0)));
  return new Blob(parts, { type: meta.mime || 'application/octet-stream' });
}
