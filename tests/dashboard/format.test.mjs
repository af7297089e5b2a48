// Formatting helpers, and the pure parts of the views.
import {test} from "node:test";
import assert from "node:assert/strict";
import * as fmt from "../../daemon/syncsnapd/dashboard/js/format.js";
import {connectionText} from "../../daemon/syncsnapd/dashboard/js/main.js";
import {lastSnapshotText, stateText} from "../../daemon/syncsnapd/dashboard/js/views/projects.js";
import {chartGeometry} from "../../daemon/syncsnapd/dashboard/js/views/history.js";
import {lastCheckText, reachText} from "../../daemon/syncsnapd/dashboard/js/views/health.js";
import {project, progress} from "./fakes.mjs";

test("bytes in binary units", () => {
  assert.deepEqual([0, 1, 1023, 1024, 1536, 10 * 1024 * 1024, 3650722201, 2 ** 50 * 3].map(fmt.bytes),
    ["0 B", "1 B", "1023 B", "1.0 KiB", "1.5 KiB", "10.0 MiB", "3.4 GiB", "3.0 PiB"]);
  assert.equal(fmt.bytes(150 * 1024), "150 KiB");
  assert.equal(fmt.bytes(null), "–");
});

test("counts with thousands separators", () => {
  assert.deepEqual([0, 999, 1234, 1234567].map(fmt.count), ["0", "999", "1,234", "1,234,567"]);
});

test("counts say their noun in the right number", () => {
  assert.deepEqual([0, 1, 2, 1200].map((n) => fmt.countOf(n, "snapshot")),
                   ["0 snapshots", "1 snapshot", "2 snapshots", "1,200 snapshots"]);
  assert.equal(fmt.countOf(1, "directory", "directories"), "1 directory");
  assert.equal(fmt.countOf(3, "directory", "directories"), "3 directories");
});

test("durations", () => {
  assert.deepEqual([0.0042, 0.5, 3.21, 12.4, 60, 75, 3600, 3725, 90000].map(fmt.duration),
    ["4 ms", "500 ms", "3.2 s", "12 s", "1 min", "1 min 15 s", "1 h", "1 h 2 min", "25 h"]);
  assert.equal(fmt.duration(null), "–");
});

test("ETA rounds up and says when it is unknown", () => {
  assert.deepEqual([null, 0.4, 12.5, 90].map(fmt.eta), ["–", "< 1 s", "13 s", "1 min 30 s"]);
});

test("relative times", () => {
  const now = Date.parse("2026-11-28T17:00:00Z");
  const ago = (s) => new Date(now - s * 1000).toISOString();
  assert.deepEqual([2, 42, 300, 3 * 3600, 2 * 86400, -10].map((s) => fmt.relative(ago(s), now)),
    ["just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago", "in 10 s"]);
  assert.equal(fmt.relative(null, now), "never");
});

test("rates and percent", () => {
  assert.equal(fmt.rate(1024 * 1024 * 12.3), "12.3 MiB/s");
  assert.equal(fmt.rate(null), "–");
  assert.deepEqual([-5, 0, 37.5, 99.6, 140, "x"].map(fmt.percent), [0, 0, 38, 100, 100, 0]);
  assert.equal(fmt.rateBetween({at: 0, bytes_done: 0}, {at: 2000, bytes_done: 4096}), 2048);
  assert.equal(fmt.rateBetween({at: 0, bytes_done: 0}, {at: 0, bytes_done: 1}), null);
});

test("the connection indicator's four texts", () => {
  assert.deepEqual([["live"], ["reconnecting", 16], ["connecting", 0], ["polling"], ["offline"], ["unauthorized"]]
    .map(([m, n]) => connectionText(m, n)), ["Live", "Reconnecting in 16 s", "Reconnecting in 0 s", "Polling", "Offline", "Offline"]);
});

test("project card texts", () => {
  const now = Date.parse("2026-11-28T17:10:00Z");
  assert.equal(lastSnapshotText(null), "None yet");
  assert.equal(lastSnapshotText({time: "2026-11-28T17:05:00Z", files: 1234, bytes: 3650722201, duration_seconds: 12}, now),
    "5 min ago · 1,234 files · 3.4 GiB · took 12 s");
  assert.equal(stateText(project("d")), "idle");
  assert.equal(stateText(project("d", {progress: progress({state: "compressing", percent: 37.5})})), "compressing 38%");
  assert.equal(stateText(project("d", {progress: progress({state: "compressing", percent: 37.5, paused: true})})), "paused at compressing 38%");
  assert.equal(stateText(project("d", {progress: progress({state: "failed", error: {code: "store_full", message: "x"}})})), "failed (store_full)");
});

test("history chart geometry: oldest left, heights scale to the largest", () => {
  const runs = [
    {run: "c", kind: "snapshot", state: "completed", started_at: "2026-11-28T12:00:00Z", duration_seconds: 4, snapshot: {bytes_added: 100}},
    {run: "x", kind: "snapshot", state: "failed", started_at: "2026-11-28T11:00:00Z", duration_seconds: 9},
    {run: "a", kind: "snapshot", state: "completed", started_at: "2026-11-28T10:00:00Z", duration_seconds: 2, snapshot: {bytes_added: 50}},
  ];
  const g = chartGeometry(runs, 100, 60, 10);
  assert.deepEqual(g.points.map((p) => [p.run, p.x, p.y]), [["a", 10, 30], ["c", 90, 10]]);
  assert.deepEqual(g.bars.map((b) => [b.run, b.h]), [["a", 20], ["c", 40]]);
  assert.deepEqual(chartGeometry([]).points, []);
});

test("store health texts", () => {
  const now = Date.parse("2026-11-28T20:00:00Z");
  assert.equal(lastCheckText({last_check: null}), "Never checked");
  assert.equal(lastCheckText({last_check: {state: "completed", ended_at: "2026-11-28T17:00:00Z"}}, now), "Last check 3 h ago: no problems");
  assert.equal(lastCheckText({last_check: {state: "failed", ended_at: "2026-11-28T17:00:00Z", error: {code: "problems_found"}}}, now),
    "Last check 3 h ago: problems found");
  assert.equal(reachText({health: {kind: "s3", reachable: true}}, now), "");
  assert.equal(reachText({}, now), "");
  assert.equal(reachText({health: {kind: "s3", reachable: false, since: "2026-11-28T19:55:00Z",
                                   error: {code: "store_unreachable"}, staging_bytes: 12 << 20,
                                   staging_max_bytes: 4 * 2 ** 30}}, now),
    "Store unreachable since 5 min ago (store_unreachable); 12.0 MiB of 4.0 GiB staged: snapshots upload once it answers");
});

test("the modal's steps: current marked, done ones ticked, the last named by the outcome", async () => {
  const {stepMarks} = await import("../../daemon/syncsnapd/dashboard/js/views/modal.js");
  const view = (marks) => marks.map((m) => `${m.done ? "✓" : m.current ? "●" : "○"} ${m.label}`);
  assert.deepEqual(view(stepMarks("snapshot", progress({state: "compressing", step: 4}))), [
    "✓ Waiting for sync", "✓ Browsing folder status", "✓ Browsing files", "● Compressing",
    "○ Uploading to the store", "○ Completed"]);
  assert.deepEqual(view(stepMarks("snapshot", progress({state: "completed", step: 6}))).at(-1), "✓ Completed");
  assert.deepEqual(view(stepMarks("snapshot", progress({state: "cancelled", step: 6}), 4)), [
    "✓ Waiting for sync", "✓ Browsing folder status", "✓ Browsing files", "○ Compressing",
    "○ Uploading to the store", "● Cancelled"]);
  assert.deepEqual(view(stepMarks("snapshot", progress({state: "failed", step: 6}))).filter((x) => x.startsWith("✓")), []);
  assert.deepEqual(view(stepMarks("restore", progress({kind: "restore", state: "restoring", step: 2}))),
    ["✓ Reading the snapshot", "● Restoring files", "○ Finishing directories", "○ Completed"]);
  assert.deepEqual(view(stepMarks("check", progress({kind: "check", state: "failed", step: 4}), 3)).at(-1), "● Failed");
});
