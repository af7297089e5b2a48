// The one store the views render from.
import {test} from "node:test";
import assert from "node:assert/strict";
import {Store} from "../../daemon/syncsnapd/dashboard/js/store.js";
import {progress, project} from "./fakes.mjs";

test("subscribers hear every change, with what changed, until they unsubscribe", () => {
  const store = new Store();
  const heard = [];
  const off = store.subscribe((state, change) => heard.push([change.type, state.projects.size]));
  store.replaceProjects([project("docs"), project("photos")]);
  store.setConnection("live");
  store.setConnection("live");  // no change: no notification
  store.applyProgress(progress({event_id: 1}), true);
  off();
  store.setConnection("polling");
  assert.deepEqual(heard, [["projects", 2], ["connection", 2], ["progress", 2]]);
});

test("a progress event updates its project's state; completion updates the last snapshot", () => {
  const store = new Store();
  store.replaceProjects([project("docs")]);
  const before = store.get();
  store.applyProgress(progress({event_id: 2, state: "compressing", step: 4}), true);
  assert.notEqual(store.get(), before);  // replaced, not mutated: views may compare
  assert.equal(before.projects.get("docs").state, "idle");
  assert.equal(store.get().projects.get("docs").state, "compressing");
  const snap = {id: "s1", files: 10, bytes: 2048, duration_seconds: 1.5, warnings: 0};
  store.applyProgress(progress({event_id: 3, state: "completed", step: 6, snapshot: snap,
    updated_at: "2026-11-28T17:01:05.000Z"}), true);
  const p = store.get().projects.get("docs");
  assert.equal(p.last_snapshot.files, 10);
  assert.equal(p.last_snapshot.time, "2026-11-28T17:01:05.000Z");
});

test("operation runs (restore, check) are kept by run, apart from the project's snapshot state", () => {
  const store = new Store();
  store.replaceProjects([project("docs")]);
  assert.equal(store.applyProgress(progress({event_id: 4, kind: "restore", run: "r-7", state: "restoring", step: 2})), true);
  assert.equal(store.get().operations.get("r-7").state, "restoring");
  assert.equal(store.get().projects.get("docs").state, "idle");
});

test("an older polled project does not overwrite a newer streamed progress", () => {
  const store = new Store();
  store.replaceProjects([project("docs")]);
  store.applyProgress(progress({event_id: 10, state: "uploading", step: 5}), true);
  store.replaceProjects([project("docs", {paused: true, progress: progress({event_id: 8, state: "compressing"})})]);
  const p = store.get().projects.get("docs");
  assert.equal(p.progress.event_id, 10);
  assert.equal(p.paused, true);  // the rest of the record is the poll's
  store.upsertProject(project("docs", {paused: false, progress: progress({event_id: 9})}));
  assert.equal(store.get().projects.get("docs").progress.event_id, 10);
  assert.equal(store.get().projects.get("docs").paused, false);
});

test("events of unknown projects are not applied (a refresh brings them)", () => {
  const store = new Store();
  assert.equal(store.applyProgress(progress({project: "new", event_id: 1}), true), false);
});

test("unauthorized is announced once", () => {
  const store = new Store();
  let n = 0;
  store.subscribe(() => n++);
  store.setUnauthorized();
  store.setUnauthorized();
  assert.equal(n, 1);
  assert.equal(store.get().unauthorized, true);
});
