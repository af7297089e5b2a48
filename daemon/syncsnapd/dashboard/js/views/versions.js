// Every version of one file of a project (GET /projects/{id}/versions), opened by clicking a file in the
// snapshot browser: newest first, with a download of each (the files endpoint of the newest snapshot
// holding it) and "Restore next to the original" (POST /projects/{id}/restore with path and version:
// the daemon writes "NAME (syncsnap DATE TIME).EXT" beside the live file and says where).

import {h} from "../dom.js";
import * as fmt from "../format.js";

/**
 * The rows of the Versions table from the API's answer (pure: no DOM). A deletion has no size, no
 * content id, nothing to download or restore; a symlink can be restored but not downloaded.
 * @param {{versions: Array<object>}} doc
 */
export function versionRows(doc) {
  return (doc.versions || []).map((v) => {
    const deleted = v.kind === "deleted";
    const first = v.first_snapshot;
    const last = v.last_snapshot;
    return {
      deleted,
      kind: v.kind,
      from: first.time,
      to: last.time,
      count: v.count,
      size: deleted || v.kind !== "file" ? null : v.size,
      shortId: deleted ? "" : (v.content_id || "").slice(0, 12),
      contentId: deleted ? null : v.content_id,
      target: v.kind === "symlink" ? v.target : null,
      // The newest snapshot that holds this version: what a download reads.
      snapshot: last.id,
      canDownload: v.kind === "file",
      canRestore: !deleted && v.kind !== "dir",
    };
  });
}

/** When a version was seen: one snapshot's time, or the first and last of several. */
export function seenText(row) {
  const from = fmt.dateTime(row.from);
  if (row.count <= 1) return row.deleted ? `deleted ${from}` : from;
  const span = `${from} – ${fmt.dateTime(row.to)}`;
  return row.deleted ? `deleted ${span}` : span;
}

export class VersionsView {
  /** @param {{api}} deps */
  constructor(deps) {
    this.api = deps.api;
  }

  /** Shows the versions of `path` of `project` in `box` (replacing what it held). */
  async show(box, project, path) {
    const name = path.split("/").pop();
    box.replaceChildren(h("p", {class: "loading"}, "Loading versions…"));
    let doc;
    try {
      doc = await this.api.versions(project, path);
    } catch (exc) {
      box.replaceChildren(h("p", {class: "error", role: "alert"}, exc.message));
      return;
    }
    const status = h("p", {role: "status", class: "restored"});
    const rows = versionRows(doc).map((row) => h("tr", {class: row.deleted ? "deleted" : null},
      h("td", {}, seenText(row)),
      h("td", {}, row.deleted ? "deleted" : row.kind === "symlink" ? `symlink → ${row.target ?? ""}` : "file"),
      h("td", {class: "num"}, row.size === null ? "–" : fmt.bytes(row.size)),
      h("td", {}, row.shortId ? h("code", {title: row.contentId}, row.shortId) : "–"),
      h("td", {}, row.canDownload
        ? h("a", {href: this.api.fileUrl(project, row.snapshot, path), download: name,
          "aria-label": `Download version ${row.shortId}`}, "Download")
        : null,
      row.canRestore
        ? h("button", {type: "button", "aria-label": `Restore version ${row.shortId} next to the original`,
          onclick: () => this.restore(status, project, path, row)}, "Restore next to the original")
        : null)));
    box.replaceChildren(h("section", {"aria-label": `Versions of ${path}`, class: "versions"},
      h("h3", {}, `Versions of ${path}`),
      rows.length === 0 ? h("p", {class: "empty"}, "No versions.") :
        h("div", {class: "table-wrap"}, h("table", {},
          h("caption", {class: "visually-hidden"}, `Versions of ${path}, newest first`),
          h("thead", {}, h("tr", {}, ["Seen", "Kind", "Size", "Content id", "Actions"]
            .map((c, i) => h("th", {scope: "col", class: i === 2 ? "num" : null}, c)))),
          h("tbody", {}, rows))),
      status));
  }

  async restore(status, project, path, row) {
    status.classList.remove("error");
    status.textContent = "Restoring…";
    try {
      const answer = await this.api.restore(project, {path, version: row.contentId});
      status.textContent = `Restored to ${answer.restored_to}`;
    } catch (exc) {
      status.classList.add("error");
      status.textContent = `${exc.message} (${exc.code})`;
    }
  }
}
