// Drives the live connection: an EventSource on /api/v1/events while it works, polls of
// GET /api/v1/projects when it does not, by the rules of policy.js. All timers come from an injected
// clock ({now() in ms, setTimeout, clearTimeout}) so that node tests run it on virtual time.
//
// EventSource resumes with Last-Event-ID by itself on its own reconnects, but those follow the
// server's `retry: 2000`, not our policy: so on any error the EventSource is closed, and the next one
// is created by the policy's timer, with `?last_event_id=N` (the last id the stream delivered).

import {ReconnectPolicy} from "./policy.js";

export const browserClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h),
};

export class Connection {
  /**
   * @param {{
   *   url?: string,
   *   EventSource: any,
   *   clock: {now(): number, setTimeout(fn: () => void, ms: number): any, clearTimeout(h: any): void},
   *   policy?: ReconnectPolicy,
   *   lastEventId: () => number,
   *   poll: () => Promise<void>,          // resolves when the state was fetched; rejects with {status}
   *   onProgress: (progress: any) => void,
   *   onGap: (data: any) => void,
   *   onMode: (mode: string, retryIn: number|null) => void,
   * }} opts
   */
  constructor(opts) {
    this.url = opts.url ?? "/api/v1/events";
    this.EventSource = opts.EventSource;
    this.clock = opts.clock;
    this.policy = opts.policy ?? new ReconnectPolicy();
    this.lastEventId = opts.lastEventId;
    this.poll = opts.poll;
    this.onProgress = opts.onProgress;
    this.onGap = opts.onGap;
    this.onMode = opts.onMode;
    this.source = null;
    this.connectTimer = null;
    this.connectAt = null;
    this.pollTimer = null;
    this.tickTimer = null;
    this.stopped = false;
    this.mode = "connecting";
    this.stats = {streamAttempts: 0, streamsOpened: 0, polls: 0, pollsFailed: 0};
  }

  start() {
    this._apply(this.policy.start());
  }

  /** Stops every timer and the stream for good (a 401, or the page going away). */
  stop() {
    this.stopped = true;
    this._closeSource();
    this._clear("connectTimer");
    this._clear("pollTimer");
    this._clear("tickTimer");
  }

  /** The daemon said 401 somewhere (the stream cannot tell; a fetch can). */
  unauthorized() {
    this._apply(this.policy.unauthorized());
    this.stop();
  }

  _clear(name) {
    if (this[name] !== null) this.clock.clearTimeout(this[name]);
    this[name] = null;
  }

  _apply(decision) {
    if (this.stopped) return;
    this.mode = decision.mode;
    if (decision.connectIn === null) {
      this._clear("connectTimer");
      this.connectAt = null;
    } else if (decision.connectIn !== undefined) {
      this._clear("connectTimer");
      const ms = Math.round(decision.connectIn * 1000);
      this.connectAt = this.clock.now() + ms;
      this.connectTimer = this.clock.setTimeout(() => {
        this.connectTimer = null;
        this.connectAt = null;
        this._connect();
      }, ms);
    }
    if (decision.pollIn === null) {
      this._clear("pollTimer");
    } else if (decision.pollIn !== undefined) {
      this._clear("pollTimer");
      this.pollTimer = this.clock.setTimeout(() => {
        this.pollTimer = null;
        this._poll();
      }, Math.round(decision.pollIn * 1000));
    }
    this._announce();
  }

  /** Whole seconds until the next stream attempt while reconnecting (counts down), else null. */
  retryIn() {
    if (this.mode !== "reconnecting" && this.mode !== "connecting") return null;
    if (this.connectAt === null) return 0;
    return Math.max(0, Math.ceil((this.connectAt - this.clock.now()) / 1000 - 1e-9));
  }

  _announce() {
    this._clear("tickTimer");
    const retryIn = this.retryIn();
    this.onMode(this.mode, retryIn);
    if (retryIn && !this.stopped) {
      // Wake at the next whole second of the countdown.
      const msLeft = this.connectAt - this.clock.now();
      const next = msLeft - (retryIn - 1) * 1000;
      this.tickTimer = this.clock.setTimeout(() => {
        this.tickTimer = null;
        this._announce();
      }, Math.max(1, Math.round(next)));
    }
  }

  _connect() {
    if (this.stopped) return;
    this._closeSource();
    const id = this.lastEventId();
    const url = id > 0 ? `${this.url}?last_event_id=${id}` : this.url;
    this.stats.streamAttempts += 1;
    const source = new this.EventSource(url, {withCredentials: true});
    this.source = source;
    source.addEventListener("open", () => {
      if (this.source !== source) return;
      this.stats.streamsOpened += 1;
      this._apply(this.policy.streamOpened());
    });
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      this._closeSource();
      this._apply(this.policy.streamFailed());
      // A failure might be a 401 (EventSource cannot tell): one request finds out, and refreshes
      // the state while at it, unless polling does that anyway.
      if (this.mode === "reconnecting") this._probe();
    });
    source.addEventListener("progress", (ev) => {
      if (this.source !== source) return;
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      this.onProgress(data);
    });
    source.addEventListener("gap", (ev) => {
      if (this.source !== source) return;
      let data = {};
      try { data = JSON.parse(ev.data); } catch (_) { /* keep {} */ }
      this.onGap(data);
    });
  }

  _closeSource() {
    if (this.source) {
      const s = this.source;
      this.source = null;
      s.close();
    }
  }

  async _probe() {
    try {
      await this.poll();
    } catch (exc) {
      if (exc && exc.status === 401) this.unauthorized();
    }
  }

  async _poll() {
    if (this.stopped) return;
    this.stats.polls += 1;
    let ok = true;
    try {
      await this.poll();
    } catch (exc) {
      if (exc && exc.status === 401) {
        this.unauthorized();
        return;
      }
      ok = false;
      this.stats.pollsFailed += 1;
    }
    if (this.mode !== "polling" && this.mode !== "offline") return;  // the stream came back meanwhile
    this._apply(ok ? this.policy.pollSucceeded() : this.policy.pollFailed());
  }
}
