// The reconnect and polling policy of the live connection, as a pure state machine: no clock, no I/O.
//
// The driver (connection.js) tells it what happened (the stream opened or failed, a poll worked or
// failed, the daemon said 401) and gets back a Decision: the mode to show and what to schedule next.
// The rules are those of the Python follower (client/syncsnap, FollowPolicy), so the page and the CLI
// behave alike:
//   - a stream that fails (or drops) is retried after 1, 2, 4, 8, 16 s (doubling, capped at 30 s),
//     each delay jittered by up to +-JITTER of itself from an injected random source;
//   - when the 5th retry fails too, the page polls the JSON endpoint every 1 s, and tries the stream
//     again every 30 s meanwhile; a poll that works after failed ones tries the stream at once;
//   - once a stream opens, polling stops and the count of failures starts again from zero;
//   - a 401 stops everything: the session is gone and only `syncsnap open` brings it back.

/** Base delay of the first retry, in seconds; each further retry doubles it. */
export const BASE_DELAY_S = 1;
/** No retry delay is ever longer than this, in seconds (jitter included). */
export const MAX_DELAY_S = 30;
/** Failed retries before falling back to polling (delays 1, 2, 4, 8, 16 s: 31 s of trying). */
export const RETRIES_BEFORE_POLLING = 5;
/** Seconds between polls of GET /api/v1/projects while the stream is down. */
export const POLL_INTERVAL_S = 1;
/** Seconds between stream attempts while polling. */
export const STREAM_RETRY_WHILE_POLLING_S = 30;
/** Jitter as a fraction of the delay: a 4 s delay becomes 3.2 to 4.8 s, so many pages do not retry in step. */
export const JITTER = 0.2;

/**
 * The delay before retry number `attempt` (1-based), in seconds.
 * @param {number} attempt
 * @param {() => number} random  uniform in [0, 1); 0.5 gives the exact, unjittered delay
 * @param {{base?: number, cap?: number, jitter?: number}} [opts]
 */
export function backoffDelay(attempt, random, opts = {}) {
  const base = opts.base ?? BASE_DELAY_S;
  const cap = opts.cap ?? MAX_DELAY_S;
  const jitter = opts.jitter ?? JITTER;
  const exact = Math.min(cap, base * 2 ** Math.max(0, attempt - 1));
  const factor = 1 + jitter * (2 * random() - 1);
  return Math.min(cap, Math.max(0, exact * factor));
}

/**
 * What to show and what to schedule. For `connectIn` and `pollIn`: a number schedules (or
 * reschedules) that timer in so many seconds, null cancels it, undefined leaves it as it is.
 * @typedef {{mode: "connecting"|"live"|"reconnecting"|"polling"|"offline"|"unauthorized",
 *            connectIn: number|null|undefined, pollIn: number|null|undefined}} Decision
 */

export class ReconnectPolicy {
  /**
   * @param {{random?: () => number, jitter?: number, base?: number, cap?: number,
   *          retriesBeforePolling?: number, pollInterval?: number, streamRetryWhilePolling?: number}} [opts]
   */
  constructor(opts = {}) {
    this.random = opts.random ?? Math.random;
    this.delayOpts = {base: opts.base, cap: opts.cap, jitter: opts.jitter};
    this.retriesBeforePolling = opts.retriesBeforePolling ?? RETRIES_BEFORE_POLLING;
    this.pollInterval = opts.pollInterval ?? POLL_INTERVAL_S;
    this.streamRetry = opts.streamRetryWhilePolling ?? STREAM_RETRY_WHILE_POLLING_S;
    /** @type {Decision["mode"]} */
    this.mode = "connecting";
    /** Failed retries since the stream last worked (the first failure itself is not a retry). */
    this.failedRetries = 0;
  }

  /** @returns {Decision} */
  start() {
    this.mode = "connecting";
    this.failedRetries = 0;
    return {mode: this.mode, connectIn: 0, pollIn: null};
  }

  /** The stream opened (HTTP 200, text/event-stream). @returns {Decision} */
  streamOpened() {
    if (this.mode === "unauthorized") return this._stopped();
    this.mode = "live";
    this.failedRetries = 0;
    return {mode: this.mode, connectIn: null, pollIn: null};
  }

  /** The stream failed to open, or an open one dropped. @returns {Decision} */
  streamFailed() {
    if (this.mode === "unauthorized") return this._stopped();
    if (this.mode === "polling" || this.mode === "offline") {
      return {mode: this.mode, connectIn: this.streamRetry, pollIn: undefined};
    }
    if (this.mode === "reconnecting") this.failedRetries += 1;
    if (this.failedRetries >= this.retriesBeforePolling) {
      this.mode = "polling";
      return {mode: this.mode, connectIn: this.streamRetry, pollIn: 0};
    }
    this.mode = "reconnecting";
    return {mode: this.mode, connectIn: backoffDelay(this.failedRetries + 1, this.random, this.delayOpts),
            pollIn: null};
  }

  /** A poll answered 200. @returns {Decision} */
  pollSucceeded() {
    if (this.mode === "unauthorized") return this._stopped();
    if (this.mode !== "polling" && this.mode !== "offline") {
      return {mode: this.mode, connectIn: undefined, pollIn: undefined};
    }
    const wasOffline = this.mode === "offline";
    this.mode = "polling";
    // The daemon is back after polls that failed: try the stream at once rather than at the next 30 s mark.
    return {mode: this.mode, connectIn: wasOffline ? 0 : undefined, pollIn: this.pollInterval};
  }

  /** A poll failed (network error or 5xx). @returns {Decision} */
  pollFailed() {
    if (this.mode === "unauthorized") return this._stopped();
    if (this.mode !== "polling" && this.mode !== "offline") {
      return {mode: this.mode, connectIn: undefined, pollIn: undefined};
    }
    this.mode = "offline";
    return {mode: this.mode, connectIn: undefined, pollIn: this.pollInterval};
  }

  /** The daemon answered 401: the session expired or was revoked. @returns {Decision} */
  unauthorized() {
    this.mode = "unauthorized";
    return this._stopped();
  }

  /** @returns {Decision} */
  _stopped() {
    return {mode: "unauthorized", connectIn: null, pollIn: null};
  }
}
