// The live connection on virtual time: exact times of stream attempts and polls, as the Python
// follower's autojump_clock tests (tests/client/test_client_follow_timing.py) check them.
import {test} from "node:test";
import assert from "node:assert/strict";
import {Connection} from "../../daemon/syncsnapd/dashboard/js/connection.js";
import {ReconnectPolicy} from "../../daemon/syncsnapd/dashboard/js/policy.js";
import {Store} from "../../daemon/syncsnapd/dashboard/js/store.js";
import {connectionText} from "../../daemon/syncsnapd/dashboard/js/main.js";
import {FakeClock, fakeEventSourceClass, progress, project} from "./fakes.mjs";

/** A connection wired as main.js wires it, with a daemon double whose answers the test sets. */
function rig({stream = () => "open", pollOk = () => true, random = () => 0.5} = {}) {
  const clock = new FakeClock();
  const {FakeEventSource, made} = fakeEventSourceClass(clock, stream);
  const store = new Store();
  store.replaceProjects([project("docs")]);
  const polls = [];
  const shown = [];  // [seconds, indicator text] on every change
  const conn = new Connection({
    EventSource: FakeEventSource,
    clock,
    policy: new ReconnectPolicy({random}),
    lastEventId: () => store.ordering.lastEventId,
    async poll() {
      polls.push(clock.seconds);
      const ok = pollOk(clock.seconds);
      if (ok === 401) throw Object.assign(new Error("unauthorized"), {status: 401});
      if (!ok) throw Object.assign(new Error("down"), {status: 0});
      store.replaceProjects([project("docs")]);
    },
    onProgress: (p) => store.applyProgress(p, true),
    onGap: () => {},
    onMode(mode, retryIn) {
      const text = connectionText(mode, retryIn);
      if (shown.at(-1)?.[1] !== text) shown.push([clock.seconds, text]);
    },
  });
  return {clock, conn, made, polls, shown, store, streamTimes: () => made.map((s) => s.at)};
}

test("nothing answers: retries at 1, 3, 7, 15 and 31 s, then polls every 1 s and the stream every 30 s", async () => {
  const r = rig({stream: () => "fail", pollOk: () => false});
  r.conn.start();
  await r.clock.runUntil(40.5);
  // The first attempt at 0 and the 5 retries, 1, 2, 4, 8 and 16 s apart.
  assert.deepEqual(r.streamTimes(), [0, 1, 3, 7, 15, 31]);
  // Each failure while reconnecting asks once (a 401 would show there); then polls from 31 s on.
  assert.deepEqual(r.polls, [0, 1, 3, 7, 15, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40]);
  assert.equal(r.conn.mode, "offline");
  await r.clock.runUntil(91.5);
  assert.deepEqual(r.streamTimes().slice(-3), [31, 61, 91]);
  assert.equal(r.shown.at(-1)[1], "Offline");
});

test("the indicator counts down whole seconds while reconnecting, then says Polling or Offline", async () => {
  let up = false;
  const r = rig({stream: () => "fail", pollOk: () => up});
  r.conn.start();
  await r.clock.runUntil(31.5);
  const texts = r.shown.filter(([t]) => t >= 15 && t < 31);
  // At 15 the 4th retry is in flight ("in 0 s"); it fails and the 16 s countdown starts.
  assert.deepEqual(texts, [
    [15, "Reconnecting in 0 s"], [15, "Reconnecting in 16 s"], [16, "Reconnecting in 15 s"], [17, "Reconnecting in 14 s"],
    [18, "Reconnecting in 13 s"], [19, "Reconnecting in 12 s"], [20, "Reconnecting in 11 s"],
    [21, "Reconnecting in 10 s"], [22, "Reconnecting in 9 s"], [23, "Reconnecting in 8 s"],
    [24, "Reconnecting in 7 s"], [25, "Reconnecting in 6 s"], [26, "Reconnecting in 5 s"],
    [27, "Reconnecting in 4 s"], [28, "Reconnecting in 3 s"], [29, "Reconnecting in 2 s"],
    [30, "Reconnecting in 1 s"]]);
  assert.deepEqual(r.shown.filter(([t]) => t >= 31), [[31, "Reconnecting in 0 s"], [31, "Polling"], [31, "Offline"]]);
  up = true;
  await r.clock.runUntil(32.5);
  assert.equal(r.shown.at(-1)[1], "Polling");
});

test("stream refused while JSON works: polls, the stream retried every 30 s, then Live and no more polls", async () => {
  let streamOk = false;
  const r = rig({stream: () => (streamOk ? "open" : "fail")});
  r.conn.start();
  await r.clock.runUntil(60.5);
  assert.deepEqual(r.streamTimes(), [0, 1, 3, 7, 15, 31]);
  assert.deepEqual(r.polls.filter((t) => t >= 31), Array.from({length: 30}, (_, i) => 31 + i));
  assert.equal(r.shown.at(-1)[1], "Polling");
  await r.clock.runUntil(61.5);
  assert.deepEqual(r.streamTimes().slice(-1), [61]);  // still refused
  streamOk = true;
  await r.clock.runUntil(100);
  assert.deepEqual(r.streamTimes().slice(-2), [61, 91]);
  assert.equal(r.shown.at(-1)[1], "Live");
  assert.deepEqual(r.shown.at(-1), [91, "Live"]);
  // No poll once the stream is back (the one due at 91 went out while the stream was opening).
  assert.equal(r.polls.at(-1), 91);
  // Failures were reset: a drop now is retried after 1 s again.
  r.made.at(-1).fail();
  await r.clock.runUntil(101.5);
  assert.deepEqual(r.streamTimes().slice(-1), [101]);
});

test("the daemon coming back during offline polls: the stream is tried at once", async () => {
  let up = false;
  const r = rig({stream: () => (up ? "open" : "fail"), pollOk: () => up});
  r.conn.start();
  await r.clock.runUntil(40.5);
  up = true;
  await r.clock.runUntil(41.5);
  assert.deepEqual(r.streamTimes().slice(-1), [41]);
  assert.deepEqual(r.shown.at(-1), [41, "Live"]);
});

test("a new stream after a failure resumes with ?last_event_id= the last id delivered", async () => {
  const r = rig();
  r.conn.start();
  await r.clock.runUntil(1);
  assert.equal(r.made[0].url, "/api/v1/events");
  assert.equal(r.shown.at(-1)[1], "Live");
  r.made[0].progress(progress({event_id: 7, state: "browsing", step: 2}));
  r.made[0].progress(progress({event_id: 9, state: "browsing", step: 3}));
  await r.clock.runUntil(10);
  r.made[0].fail();
  assert.equal(r.shown.at(-1)[1], "Reconnecting in 1 s");
  await r.clock.runUntil(11.5);
  assert.deepEqual(r.streamTimes(), [0, 11]);
  assert.equal(r.made[1].url, "/api/v1/events?last_event_id=9");
  assert.equal(r.made[0].closed, true);
  assert.deepEqual(r.shown.at(-1), [11, "Live"]);
  // The replay repeats event 9 (and events of a closed source are ignored): applied once.
  r.made[0].progress(progress({event_id: 10, step: 4}));
  r.made[1].progress(progress({event_id: 9, state: "browsing", step: 3}));
  assert.equal(r.store.get().projects.get("docs").progress.event_id, 9);
  assert.equal(r.store.ordering.duplicates, 1);
});

test("jittered retries happen at the jittered times", async () => {
  const r = rig({stream: () => "fail", pollOk: () => false, random: () => 0});  // every delay 20% short
  r.conn.start();
  await r.clock.runUntil(30);
  assert.deepEqual(r.streamTimes(), [0, 0.8, 2.4, 5.6, 12, 24.8]);
});

test("a 401 on the probe after a failure stops all retries and polls", async () => {
  const r = rig({stream: () => "fail", pollOk: (t) => (t < 3 ? true : 401)});
  r.conn.start();
  await r.clock.runUntil(100);
  assert.deepEqual(r.streamTimes(), [0, 1, 3]);
  assert.deepEqual(r.polls, [0, 1, 3]);
  assert.equal(r.conn.mode, "unauthorized");
  assert.equal(r.clock.timers.length, 0);
  assert.equal(r.shown.at(-1)[1], "Offline");
});

test("a 401 while polling stops too", async () => {
  const r = rig({stream: () => "fail", pollOk: (t) => (t < 35 ? true : 401)});
  r.conn.start();
  await r.clock.runUntil(100);
  assert.deepEqual(r.polls.filter((t) => t >= 31), [31, 32, 33, 34, 35]);
  assert.equal(r.clock.timers.length, 0);
});
