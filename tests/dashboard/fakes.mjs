// Test doubles for the dashboard's unit tests: a virtual clock (the JS counterpart of trio's
// autojump_clock: timers fire in order at exact virtual times, with pending promises settled between
// them) and an EventSource whose connections the test opens, fails and feeds. A browser's EventSource
// cannot run under node; the real one is driven by the browser tests.

export class FakeClock {
  constructor() {
    this.t = 0;  // ms
    this.timers = [];
    this.seq = 0;
  }

  now() {
    return this.t;
  }

  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.timers.push({id, at: this.t + Math.max(0, ms), fn});
    return id;
  }

  clearTimeout(id) {
    this.timers = this.timers.filter((x) => x.id !== id);
  }

  /** Seconds of virtual time, for assertions. */
  get seconds() {
    return this.t / 1000;
  }

  /** Runs every timer due up to `seconds` (absolute), in order, settling promises after each. */
  async runUntil(seconds) {
    const end = Math.round(seconds * 1000);
    await settle();
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.timers[0];
      if (!next || next.at > end) break;
      this.timers.shift();
      this.t = next.at;
      next.fn();
      await settle();
    }
    this.t = end;
  }

  advance(seconds) {
    return this.runUntil(this.seconds + seconds);
  }
}

/** Lets every pending promise callback run (fetch doubles resolve at once). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** An EventSource double: records each connection (url, virtual time); the test decides its fate. */
export function fakeEventSourceClass(clock, behaviour) {
  const made = [];
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.at = clock.seconds;
      this.listeners = new Map();
      this.closed = false;
      made.push(this);
      // behaviour(source) -> "open" | "fail" | undefined (the test acts later), decided at connect time;
      // the outcome is delivered from a 0 ms timer, as a browser's would be, asynchronously.
      const outcome = behaviour(this);
      if (outcome) clock.setTimeout(() => (outcome === "open" ? this.open() : this.fail()), 0);
    }

    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, []);
      this.listeners.get(type).push(fn);
    }

    _fire(type, ev = {}) {
      if (this.closed) return;
      for (const fn of this.listeners.get(type) || []) fn(ev);
    }

    open() { this._fire("open"); }
    fail() { this._fire("error"); }
    progress(obj) { this._fire("progress", {data: JSON.stringify(obj), lastEventId: String(obj.event_id)}); }
    gap(lastId) { this._fire("gap", {data: JSON.stringify({last_event_id: lastId})}); }
    close() { this.closed = true; }
  }
  return {FakeEventSource, made};
}

/** A progress object as the daemon sends it. */
export function progress(fields = {}) {
  return {
    event_id: 1, project: "docs", run: "r-1", kind: "snapshot", state: "waiting", step: 1, steps: 6, percent: 0,
    message: "", files_done: 0, files_total: 0, bytes_done: 0, bytes_total: 0, paused: false,
    started_at: "2026-11-28T17:01:02.123Z", updated_at: "2026-11-28T17:01:02.123Z", eta_seconds: null,
    error: null, snapshot: null, ...fields,
  };
}

export function project(id, fields = {}) {
  return {id, path: `/home/me/${id}`, state: "idle", paused: false,
    progress: progress({project: id, event_id: 0, state: "idle", step: 0, run: null}),
    last_snapshot: null, watch: {mode: "inotify", warning: null, error: null}, ...fields};
}
