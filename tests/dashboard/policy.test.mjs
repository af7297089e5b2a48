// The reconnect policy as a pure state machine: no clock, only decisions.
import {test} from "node:test";
import assert from "node:assert/strict";
import {ReconnectPolicy, backoffDelay, JITTER, MAX_DELAY_S} from "../../daemon/syncsnapd/dashboard/js/policy.js";

const exact = () => 0.5;  // no jitter

test("a dropped stream is retried after 1, 2, 4, 8, 16 s, then polling every 1 s with the stream every 30 s", () => {
  const p = new ReconnectPolicy({random: exact});
  assert.deepEqual(p.start(), {mode: "connecting", connectIn: 0, pollIn: null});
  assert.equal(p.streamOpened().mode, "live");
  const delays = [];
  for (let i = 0; i < 5; i++) {
    const d = p.streamFailed();
    assert.equal(d.mode, "reconnecting");
    assert.equal(d.pollIn, null);
    delays.push(d.connectIn);
  }
  assert.deepEqual(delays, [1, 2, 4, 8, 16]);
  // The 5th retry fails too: poll now, and try the stream again in 30 s.
  assert.deepEqual(p.streamFailed(), {mode: "polling", connectIn: 30, pollIn: 0});
  assert.deepEqual(p.pollSucceeded(), {mode: "polling", connectIn: undefined, pollIn: 1});
  assert.deepEqual(p.streamFailed(), {mode: "polling", connectIn: 30, pollIn: undefined});
  assert.deepEqual(p.pollFailed(), {mode: "offline", connectIn: undefined, pollIn: 1});
  assert.deepEqual(p.streamFailed(), {mode: "offline", connectIn: 30, pollIn: undefined});
  // A poll that works after failed ones tries the stream at once.
  assert.deepEqual(p.pollSucceeded(), {mode: "polling", connectIn: 0, pollIn: 1});
  assert.deepEqual(p.streamOpened(), {mode: "live", connectIn: null, pollIn: null});
});

test("success resets the count of failures", () => {
  const p = new ReconnectPolicy({random: exact});
  p.start();
  p.streamFailed(); p.streamFailed(); p.streamFailed();  // 1, 2, 4
  p.streamOpened();
  assert.equal(p.failedRetries, 0);
  assert.equal(p.streamFailed().connectIn, 1);
  assert.equal(p.streamFailed().connectIn, 2);
});

test("the first connection failing counts as the drop: retries 1 s later", () => {
  const p = new ReconnectPolicy({random: exact});
  p.start();
  assert.deepEqual(p.streamFailed(), {mode: "reconnecting", connectIn: 1, pollIn: null});
});

test("jitter stays within +-20% of each delay and follows the injected random", () => {
  for (const r of [0, 0.1, 0.5, 0.9, 0.999999]) {
    for (let attempt = 1; attempt <= 5; attempt++) {
      const exactDelay = 2 ** (attempt - 1);
      const d = backoffDelay(attempt, () => r);
      assert.ok(d >= exactDelay * (1 - JITTER) - 1e-9 && d <= exactDelay * (1 + JITTER) + 1e-9, `${attempt} ${r} ${d}`);
    }
  }
  assert.equal(backoffDelay(3, () => 0), 4 * 0.8);
  assert.equal(backoffDelay(3, () => 0.75), 4 * 1.1);
  const seq = [0, 1 - 1e-12, 0.25, 0.5, 0.75];
  const p = new ReconnectPolicy({random: () => seq.shift()});
  p.start();
  const got = [1, 2, 3, 4, 5].map(() => p.streamFailed().connectIn);
  assert.deepEqual(got.map((x) => Math.round(x * 1000) / 1000), [0.8, 2.4, 3.6, 8, 17.6]);
});

test("delays are capped at 30 s, jitter included", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 20].map((n) => backoffDelay(n, exact)), [1, 2, 4, 8, 16, 30, 30, 30]);
  assert.equal(backoffDelay(6, () => 0.999), MAX_DELAY_S);
  assert.equal(backoffDelay(6, () => 0), 24);
  // With more retries allowed before polling, the policy itself stops growing at 30 s.
  const p = new ReconnectPolicy({random: exact, retriesBeforePolling: 8});
  p.start();
  assert.deepEqual(Array.from({length: 8}, () => p.streamFailed().connectIn), [1, 2, 4, 8, 16, 30, 30, 30]);
  assert.equal(p.streamFailed().mode, "polling");
});

test("a 401 stops everything, whatever comes after", () => {
  const p = new ReconnectPolicy({random: exact});
  p.start();
  assert.deepEqual(p.unauthorized(), {mode: "unauthorized", connectIn: null, pollIn: null});
  for (const d of [p.streamFailed(), p.streamOpened(), p.pollSucceeded(), p.pollFailed()]) {
    assert.deepEqual(d, {mode: "unauthorized", connectIn: null, pollIn: null});
  }
});

test("poll results while streaming change nothing", () => {
  const p = new ReconnectPolicy({random: exact});
  p.start();
  p.streamOpened();
  assert.deepEqual(p.pollFailed(), {mode: "live", connectIn: undefined, pollIn: undefined});
  assert.deepEqual(p.pollSucceeded(), {mode: "live", connectIn: undefined, pollIn: undefined});
});
