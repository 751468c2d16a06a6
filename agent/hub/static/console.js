// The serial console of one writable port during a call: the `serial:NAME` data channel.
//
// What is typed (or picked) is written to the port as one command; the device answers
// {ok: true, written: N}, or {ok: false, error: {code, message}} when the port's `allow`
// list (or anything else) refuses it. The port's own lines come back as readings
// ({port, ts, raw} or {port, ts, fields}) and are shown as the device's replies.

const MAX_LINES = 200;
const MAX_PICKS = 12;

// Commands a simple `allow` pattern stands for: literal text with (a|b|c) choices
// ('LED (ON|OFF)' -> ['LED ON', 'LED OFF']); patterns with other syntax are left as hints.
export function commandChoices(patterns) {
  const picks = [];
  const hints = [];
  for (const pattern of patterns || []) {
    const expanded = expand(pattern);
    if (expanded) picks.push(...expanded);
    else hints.push(pattern);
  }
  return { picks: [...new Set(picks)].slice(0, MAX_PICKS), hints };
}

function expand(pattern) {
  let results = [''];
  let rest = pattern;
  while (rest) {
    const group = rest.match(/^\(([^()\\[\]{}*+?.^$]*)\)/);
    if (group) {
      const options = group[1].split('|');
      results = results.flatMap((head) => options.map((option) => head + option));
      rest = rest.slice(group[0].length);
    } else {
      const literal = rest.match(/^[^()\\[\]{}*+?.^$|]+/);
      if (!literal) return null;
      results = results.map((head) => head + literal[0]);
      rest = rest.slice(literal[0].length);
    }
    if (results.length > MAX_PICKS) return null;
  }
  return results.filter(Boolean);
}

export class SerialConsole {
  // openChannel(label) -> RTCDataChannel on the call's connection.
  constructor({ name, allow = [], openChannel }) {
    this.name = name;
    this.allow = allow;
    this._openChannel = openChannel;
    this.channel = null;
    this.lines = []; // {kind: sent|ok|refused|reply|info, text}
    this.element = this._build();
  }

  open() {
    if (this.channel) return;
    const channel = this._openChannel(`serial:${this.name}`);
    this.channel = channel;
    this._setReady(false);
    channel.onopen = () => this._setReady(true);
    channel.onclose = () => {
      this._setReady(false);
      if (this.channel === channel) this._line('info', 'The console closed.');
    };
    channel.onmessage = (event) => this._onMessage(event.data);
  }

  close() {
    const channel = this.channel;
    this.channel = null;
    try {
      channel?.close();
    } catch {
      // already closed
    }
  }

  send(command) {
    const text = command.trim();
    if (!text) return false;
    if (this.channel?.readyState !== 'open') {
      this._line('refused', 'Not connected to the port yet.');
      return false;
    }
    this.channel.send(text);
    this._line('sent', text);
    return true;
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
    } catch {
      return;
    }
    if (message?.ok === true) {
      this._line('ok', 'written');
    } else if (message?.ok === false) {
      this._line('refused', message.error?.message || 'The device refused the command.');
    } else if (message && message.port === this.name) {
      this._line('reply', typeof message.raw === 'string' ? message.raw : JSON.stringify(message.fields ?? {}));
    }
  }

  _line(kind, text) {
    this.lines.push({ kind, text });
    if (this.lines.length > MAX_LINES) this.lines.shift();
    const item = document.createElement('li');
    item.className = kind;
    const mark = { sent: '› ', reply: '‹ ', ok: '✓ ', refused: '✗ ', info: '' }[kind];
    item.textContent = mark + text;
    const log = this._log;
    log.append(item);
    while (log.children.length > MAX_LINES) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  }

  _setReady(ready) {
    this._input.disabled = !ready;
    this._send.disabled = !ready;
    for (const pick of this._picks) pick.disabled = !ready;
    this.element.dataset.ready = String(ready);
  }

  _build() {
    const id = `console-${this.name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
    const section = document.createElement('section');
    section.className = 'console';
    section.dataset.port = this.name;
    const title = document.createElement('h4');
    title.textContent = `Port ${this.name}`;
    const log = document.createElement('ol');
    log.className = 'console-log';
    log.setAttribute('role', 'log');
    log.setAttribute('aria-live', 'polite');
    log.setAttribute('aria-label', `Replies of ${this.name}`);
    log.tabIndex = 0; // scrollable with the keyboard
    this._log = log;

    const form = document.createElement('form');
    form.className = 'console-form';
    const label = document.createElement('label');
    label.className = 'sr-only';
    label.htmlFor = `${id}-input`;
    label.textContent = `Command for ${this.name}`;
    const input = document.createElement('input');
    input.id = `${id}-input`;
    input.autocomplete = 'off';
    input.autocapitalize = 'characters';
    input.spellcheck = false;
    input.maxLength = 256;
    input.placeholder = 'Type a command';
    const send = document.createElement('button');
    send.type = 'submit';
    send.className = 'primary';
    send.textContent = 'Send';
    send.setAttribute('aria-label', `Send to ${this.name}`);
    form.append(label, input, send);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (this.send(input.value)) input.value = '';
    });
    this._input = input;
    this._send = send;

    const { picks, hints } = commandChoices(this.allow);
    const pickRow = document.createElement('div');
    pickRow.className = 'console-picks';
    pickRow.setAttribute('role', 'group');
    pickRow.setAttribute('aria-label', `Commands for ${this.name}`);
    this._picks = picks.map((command) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'secondary small';
      button.textContent = command;
      button.addEventListener('click', () => this.send(command));
      pickRow.append(button);
      return button;
    });
    section.append(title, log, form);
    if (picks.length) section.append(pickRow);
    const allowed = document.createElement('p');
    allowed.className = 'muted small';
    allowed.textContent = this.allow.length
      ? `Allowed: ${[...picks, ...hints].join(', ')}`
      : 'Every command is allowed on this port.';
    section.append(allowed);
    return section;
  }
}
