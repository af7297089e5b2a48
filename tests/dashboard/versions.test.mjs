// The pure part of the Versions view (js/views/versions.js): rows from the API's answer.
import {test} from "node:test";
import assert from "node:assert/strict";
import {seenText, versionRows} from "../../daemon/syncsnapd/dashboard/js/views/versions.js";
import * as fmt from "../../daemon/syncsnapd/dashboard/js/format.js";

const snap = (id, time) => ({id, time});
const doc = {versions: [
  {content_id: "aaaaaaaaaaaaaaaaaaaaaaaa", kind: "file", size: 12, mtime: "2026-12-01T14:03:00Z", mode: "0644",
   target: null, first_snapshot: snap("s5", "2026-12-05T10:00:00Z"), last_snapshot: snap("s6", "2026-12-06T10:00:00Z"), count: 2},
  {content_id: null, kind: "deleted", size: null, mtime: null, mode: null, target: null,
   first_snapshot: snap("s4", "2026-12-04T10:00:00Z"), last_snapshot: snap("s4", "2026-12-04T10:00:00Z"), count: 1},
  {content_id: "bbbbbbbbbbbbbbbbbbbbbbbb", kind: "symlink", size: 0, mtime: "2026-12-01T14:03:00Z", mode: "0777",
   target: "../x", first_snapshot: snap("s3", "2026-12-03T10:00:00Z"), last_snapshot: snap("s3", "2026-12-03T10:00:00Z"), count: 1},
]};

test("version rows: a file downloads from the newest snapshot holding it and can be restored", () => {
  const [file] = versionRows(doc);
  assert.deepEqual(
    [file.deleted, file.size, file.shortId, file.contentId, file.snapshot, file.canDownload, file.canRestore],
    [false, 12, "aaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaaaaa", "s6", true, true]);
  assert.equal(seenText(file), `${fmt.dateTime("2026-12-05T10:00:00Z")} – ${fmt.dateTime("2026-12-06T10:00:00Z")}`);
});

test("version rows: a deletion has nothing to download or restore, and says it was deleted", () => {
  const deleted = versionRows(doc)[1];
  assert.deepEqual([deleted.deleted, deleted.size, deleted.shortId, deleted.canDownload, deleted.canRestore],
    [true, null, "", false, false]);
  assert.equal(seenText(deleted), `deleted ${fmt.dateTime("2026-12-04T10:00:00Z")}`);
});

test("version rows: a symlink is restored (as a link), not downloaded, and shows its target", () => {
  const link = versionRows(doc)[2];
  assert.deepEqual([link.kind, link.target, link.size, link.canDownload, link.canRestore],
    ["symlink", "../x", null, false, true]);
  assert.deepEqual(versionRows({}), []);
});
