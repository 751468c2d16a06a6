// Words and numbers for people: times relative to now, durations, values with units.
// Pure functions (the clock and locale come in as arguments where they matter).

const MINUTE = 60;
const HOUR = 3600;
const DAY = 86400;

// "14:02" in the viewer's own time zone.
export function clockTime(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// "14:02", "yesterday 21:10", "Mon 09:30" (this week) or "12 May 14:02".
export function dayTime(ts, now = Date.now() / 1000) {
  const when = new Date(ts * 1000);
  const today = new Date(now * 1000);
  const days = Math.round((startOfDay(today) - startOfDay(when)) / (DAY * 1000));
  const time = clockTime(ts);
  if (days === 0) return time;
  if (days === 1) return `yesterday ${time}`;
  if (days > 1 && days < 7) return `${when.toLocaleDateString([], { weekday: 'short' })} ${time}`;
  return `${when.toLocaleDateString([], { day: 'numeric', month: 'short' })} ${time}`;
}

// "just now", "3 min ago", "2 h ago", else dayTime.
export function ago(ts, now = Date.now() / 1000) {
  const seconds = now - ts;
  if (seconds < 45) return 'just now';
  if (seconds < HOUR) return `${Math.round(seconds / MINUTE)} min ago`;
  if (seconds < 12 * HOUR) return `${Math.round(seconds / HOUR)} h ago`;
  return dayTime(ts, now);
}

// "45 s", "12 min", "3 h 5 min", "4 d 2 h".
export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < MINUTE) return `${s} s`;
  if (s < HOUR) return `${Math.floor(s / MINUTE)} min`;
  if (s < DAY) return joined(Math.floor(s / HOUR), 'h', Math.floor((s % HOUR) / MINUTE), 'min');
  return joined(Math.floor(s / DAY), 'd', Math.floor((s % DAY) / HOUR), 'h');
}

// "Online since 14:02", "Offline since yesterday 21:10", "Offline", "Never connected".
export function presence(device, now = Date.now() / 1000) {
  if (device.online) return device.since ? `Online since ${dayTime(device.since, now)}` : 'Online';
  if (device.since) return `Offline since ${dayTime(device.since, now)}`;
  return device.known ? 'Offline' : 'Never connected';
}

// 21.5 -> "21.5", 21.499999 -> "21.5", 1234567 -> "1,234,567"; non-numbers as text.
export function number(value) {
  if (typeof value !== 'number') return value == null ? '–' : String(value);
  const digits = Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2;
  return value.toLocaleString([], { maximumFractionDigits: digits });
}

// "21.5 °C", "40 %", "7" (SI: a space before every unit).
export function withUnit(value, unit) {
  return unit ? `${number(value)} ${unit}` : number(value);
}

// "1.2 Mbit/s", "350 kbit/s".
export function bitrate(bps) {
  if (bps == null) return '–';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${Math.round(bps / 1e3)} kbit/s`;
}

function joined(a, unitA, b, unitB) {
  return b ? `${a} ${unitA} ${b} ${unitB}` : `${a} ${unitA}`;
}

function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
}
