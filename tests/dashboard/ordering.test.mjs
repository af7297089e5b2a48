// De-duplication by event id, and a gap answered by a refresh of the current state.
import {test} from "node:test";
import assert from "node:assert/strict";
import {Ordering, keyOf} from "../../daemon/syncsnapd/dashboard/js/ordering.js";
import {Store} from "../../daemon/syncsnapd/dashboard/js/store.js";
import {progress, project} from "./fakes.mjs";

test("an event id seen before is dropped, per project and per operation run", () => {
  const o = new Ordering();
  assert.equal(o.acceptStreamed(progress({event_id: 5})), true);
  assert.equal(o.acceptStreamed(progress({event_id: 5})), false);
  assert.equal(o.acceptStreamed(progress({event_id: 4})), false);  // older than what is shown
  assert.equal(o.acceptStreamed(progress({event_id: 9, step: 2})), true);
  assert.equal(o.acceptStreamed(progress({event_id: 6, project: "other"})), true);  // another key
  assert.equal(o.acceptStreamed(progress({event_id: 7, kind: "restore", run: "r-9"})), true);
  assert.equal(o.acceptStreamed(progress({event_id: 7, kind: "restore", run: "r-9"})), false);
  assert.equal(o.lastEventId, 9);
  assert.equal(o.duplicates, 3);
});

test("ids may jump (the daemon coalesces a slow reader's events): not a gap, all applied", () => {
  const o = new Ordering();
  assert.deepEqual([1, 2, 50, 51, 400].map((id) => o.acceptStreamed(progress({event_id: id}))), [true, true, true, true, true]);
  assert.equal(o.gaps, 0);
});

test("keys: snapshot runs by project, operation runs by run", () => {
  assert.equal(keyOf(progress({project: "a"})), "project:a");
  assert.equal(keyOf(progress({kind: "check", project: null, run: "r-2"})), "run:r-2");
});

test("polled state does not move the resume point; it still dedups a later replay", () => {
  const o = new Ordering();
  o.acceptStreamed(progress({event_id: 3}));
  assert.equal(o.accept(progress({event_id: 8})), true);  // from a poll
  assert.equal(o.lastEventId, 3);
  assert.equal(o.acceptStreamed(progress({event_id: 8})), false);  // the stream's replay of it
  assert.equal(o.lastEventId, 8);
});

test("a gap asks for a refresh, and the refreshed state replaces what was shown", () => {
  const store = new Store();
  store.replaceProjects([project("docs")]);
  store.applyProgress(progress({event_id: 3, state: "compressing", step: 4, percent: 40}), true);
  const answer = store.ordering.gap({last_event_id: 3});
  assert.deepEqual(answer, {action: "refresh", missedAfter: 3});
  assert.equal(store.ordering.gaps, 1);
  const changes = [];
  store.subscribe((_s, c) => changes.push(c));
  store.replaceProjects([project("docs", {state: "completed",
    progress: progress({event_id: 20, state: "completed", step: 6, percent: 100})})], "gap");
  assert.deepEqual(changes, [{type: "projects", reason: "gap"}]);
  assert.equal(store.get().projects.get("docs").progress.state, "completed");
  // The events the gap lost, replayed late, change nothing.
  assert.equal(store.applyProgress(progress({event_id: 12, state: "uploading", step: 5}), true), false);
});
