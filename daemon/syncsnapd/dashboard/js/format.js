// Formatting for people: sizes, durations, relative times, rates and ETAs. Pure functions.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** Whole numbers with thousands separators: 1234567 -> "1,234,567". */
export function count(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  return Math.round(Number(n)).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** A count and its noun in the right number: (1, "file") -> "1 file", (1200, "file") -> "1,200 files". */
export function countOf(n, noun, plural = `${noun}s`) {
  return `${count(n)} ${Number(n) === 1 ? noun : plural}`;
}

/** Bytes in binary units: 0 -> "0 B", 1536 -> "1.5 KiB", 3650722201 -> "3.4 GiB". */
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  if (i === 0) return `${Math.round(v)} B`;
  return `${v >= 100 ? Math.round(v) : v.toFixed(1)} ${UNITS[i]}`;
}

/**
 * A duration in seconds: 0.0042 -> "4 ms", 3.21 -> "3.2 s", 75 -> "1 min 15 s", 3725 -> "1 h 2 min".
 */
export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(Number(s))) return "–";
  s = Math.max(0, Number(s));
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const total = Math.round(s);
  if (total < 3600) {
    const m = Math.floor(total / 60);
    const r = total % 60;
    return r ? `${m} min ${r} s` : `${m} min`;
  }
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  return m ? `${h} h ${m} min` : `${h} h`;
}

/** Time left: null -> "–", 0.4 -> "< 1 s", 12.5 -> "13 s", 90 -> "1 min 30 s". */
export function eta(s) {
  if (s === null || s === undefined || !Number.isFinite(Number(s))) return "–";
  if (s < 1) return "< 1 s";
  return duration(Math.ceil(s));
}

/** A rate in bytes per second: "12.3 MiB/s"; "–" when unknown. */
export function rate(bytesPerSecond) {
  if (bytesPerSecond === null || bytesPerSecond === undefined || !Number.isFinite(bytesPerSecond) || bytesPerSecond < 0) return "–";
  return `${bytes(bytesPerSecond)}/s`;
}

/**
 * How long ago (or ahead) an ISO time is, relative to `now` (ms since the epoch):
 * "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago", "in 10 s".
 */
export function relative(iso, now = Date.now()) {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "–";
  const diff = Math.round((now - t) / 1000);
  const abs = Math.abs(diff);
  let text;
  if (abs < 5) return "just now";
  if (abs < 60) text = `${abs} s`;
  else if (abs < 3600) text = `${Math.floor(abs / 60)} min`;
  else if (abs < 86400) text = `${Math.floor(abs / 3600)} h`;
  else text = `${Math.floor(abs / 86400)} d`;
  return diff >= 0 ? `${text} ago` : `in ${text}`;
}

/** A local date and time for tables: "2026-11-28 17:01:02". */
export function dateTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "–";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** The percent shown on the progress bar: a whole number 0-100. */
export function percent(p) {
  const v = Number(p);
  if (!Number.isFinite(v)) return 0;
  return Math.min(100, Math.max(0, Math.round(v)));
}

/**
 * Bytes per second of a run so far, from two progress samples ({bytes_done, at}) of the same step,
 * `at` in ms. Null when it cannot be told.
 */
export function rateBetween(a, b) {
  if (!a || !b || b.at <= a.at || b.bytes_done < a.bytes_done) return null;
  return ((b.bytes_done - a.bytes_done) * 1000) / (b.at - a.at);
}
