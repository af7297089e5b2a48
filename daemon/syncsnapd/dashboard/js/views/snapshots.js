// A project's snapshots: the list, browsing one's tree, downloading a file, restoring a path (its
// progress in the modal) and the diff of two snapshots (or of one and the live folder).

import {h, hidden, uid} from "../dom.js";
import * as fmt from "../format.js";
import {VersionsView} from "./versions.js";

export class SnapshotsView {
  /** @param {{panel, api, modal}} deps */
  constructor(deps) {
    this.panel = deps.panel;
    this.api = deps.api;
    this.modal = deps.modal;
    this.versions = new VersionsView(deps);
  }

  async show(projectId) {
    this.project = projectId;
    const body = this.panel.open(`Snapshots of ${projectId}`);
    body.append(h("p", {class: "loading"}, "Loading…"));
    let list;
    try {
      list = (await this.api.snapshots(projectId)).snapshots.slice().reverse();  // newest first
    } catch (exc) {
      body.replaceChildren(h("p", {class: "error", role: "alert"}, exc.message));
      return;
    }
    this.browser = h("div", {class: "browser"});
    this.diffOut = h("div", {class: "diff-out"});
    if (list.length === 0) {
      body.replaceChildren(h("p", {class: "empty"}, "No snapshots yet."));
      return;
    }
    const options = (live) => [
      ...(live ? [h("option", {value: "live"}, "The live folder")] : []),
      ...list.map((sn) => h("option", {value: sn.id}, `${fmt.dateTime(sn.time)} (${sn.id})`))];
    const fromId = uid("diff-from");
    const toId = uid("diff-to");
    const from = h("select", {id: fromId}, options(false));
    const to = h("select", {id: toId}, options(true));
    if (list.length > 1) from.value = list[1].id;
    body.replaceChildren(
      h("div", {class: "table-wrap"}, h("table", {},
        h("caption", {class: "visually-hidden"}, `Snapshots of ${this.project}, newest first`),
        h("thead", {}, h("tr", {}, ["Time", "Files", "Size", "Added", "Warnings", "Actions"]
          .map((c, i) => h("th", {scope: "col", class: i >= 1 && i <= 4 ? "num" : null}, c)))),
        h("tbody", {}, list.map((sn) => h("tr", {},
          h("td", {}, h("span", {title: sn.id}, fmt.dateTime(sn.time))),
          h("td", {class: "num"}, fmt.count(sn.files)),
          h("td", {class: "num"}, fmt.bytes(sn.bytes)),
          h("td", {class: "num"}, fmt.bytes(sn.bytes_added)),
          h("td", {class: "num"}, fmt.count(sn.warnings)),
          h("td", {}, h("button", {type: "button", "aria-label": `Browse snapshot ${sn.id}`,
            onclick: () => this.browse(sn.id, "")}, "Browse"))))))),
      h("form", {class: "diff-form", onsubmit: (ev) => {
        ev.preventDefault();
        this.diff(from.value, to.value);
      }},
      h("label", {for: fromId}, "Compare from"), from,
      h("label", {for: toId}, "to"), to,
      h("button", {type: "submit"}, "Compare")),
      this.diffOut,
      this.browser);
  }

  async browse(snap, path) {
    let tree;
    try {
      tree = await this.api.tree(this.project, snap, path);
    } catch (exc) {
      this.browser.replaceChildren(h("p", {class: "error", role: "alert"}, exc.message));
      return;
    }
    const crumbs = [h("button", {type: "button", class: "link", "aria-label": "Root folder", onclick: () => this.browse(snap, "")}, this.project)];
    let acc = "";
    for (const part of path ? path.split("/") : []) {
      acc = acc ? `${acc}/${part}` : part;
      const to = acc;
      crumbs.push(" / ", h("button", {type: "button", class: "link", onclick: () => this.browse(snap, to)}, part));
    }
    const rows = tree.entries.map((e) => h("tr", {},
      h("td", {}, e.kind === "dir"
        ? h("button", {type: "button", class: "link", "aria-label": `Open folder ${e.name}`, onclick: () => this.browse(snap, e.path)}, `${e.name}/`)
        : h("button", {type: "button", class: "link", "aria-label": `Versions of ${e.name}`,
          onclick: () => this.versions.show(this.versionsBox, this.project, e.path)},
        e.kind === "file" ? e.name : `${e.name} → ${e.target ?? ""}`)),
      h("td", {class: "num"}, e.kind === "dir" ? "–" : fmt.bytes(e.size)),
      h("td", {}, e.mode || ""),
      h("td", {}, fmt.dateTime(e.mtime)),
      h("td", {}, e.kind === "file"
        ? h("a", {href: this.api.fileUrl(this.project, snap, e.path), download: e.name, "aria-label": `Download ${e.name}`}, "Download", hidden(` ${e.name}`))
        : null,
      h("button", {type: "button", "aria-label": `Restore ${e.path}`, onclick: () => this.restoreForm(snap, e.path)}, "Restore"))));
    this.form = h("div", {class: "restore-form"});
    this.versionsBox = h("div", {class: "versions-box"});
    this.browser.replaceChildren(h("section", {"aria-label": `Snapshot ${snap}`},
      h("h3", {}, `Snapshot ${snap}`),
      h("nav", {class: "crumbs", "aria-label": "Folder"}, crumbs),
      tree.entries.length === 0 ? h("p", {class: "empty"}, "This folder is empty.") :
        h("div", {class: "table-wrap"}, h("table", {},
          h("thead", {}, h("tr", {}, ["Name", "Size", "Mode", "Modified", "Actions"].map((c) => h("th", {scope: "col"}, c)))),
          h("tbody", {}, rows))),
      h("button", {type: "button", onclick: () => this.restoreForm(snap, path)}, path ? "Restore this folder" : "Restore the whole snapshot"),
      this.form,
      this.versionsBox));
  }

  restoreForm(snap, path) {
    const targetId = uid("target");
    const overId = uid("overwrite");
    const target = h("input", {id: targetId, type: "text", required: true, placeholder: "/home/me/restored", autocomplete: "off", spellcheck: "false"});
    const over = h("input", {id: overId, type: "checkbox"});
    const out = h("p", {class: "error", role: "alert", hidden: true});
    this.form.replaceChildren(h("form", {onsubmit: async (ev) => {
      ev.preventDefault();
      const body = {snapshot: snap, target: target.value, overwrite: over.checked};
      if (path) body.paths = [path];
      try {
        const answer = await this.api.restore(this.project, body);
        out.hidden = true;
        this.modal.openRun(answer.progress);
      } catch (exc) {
        out.hidden = false;
        out.textContent = `${exc.message} (${exc.code})`;
      }
    }},
    h("p", {}, `Restore ${path || "the whole snapshot"} into a folder:`),
    h("label", {for: targetId}, "Target folder"), target,
    h("label", {class: "check"}, over, " Overwrite files already there"),
    h("button", {type: "submit", class: "primary"}, "Start restore"),
    out));
    target.focus();
  }

  async diff(from, to) {
    this.diffOut.replaceChildren(h("p", {class: "loading"}, "Comparing…"));
    let d;
    try {
      d = await this.api.diff(this.project, from, to);
    } catch (exc) {
      this.diffOut.replaceChildren(h("p", {class: "error", role: "alert"}, exc.message));
      return;
    }
    const sm = d.summary;
    const list = (title, items, text) => items.length === 0 ? null : h("section", {},
      h("h4", {}, `${title} (${fmt.count(items.length)})`),
      h("ul", {class: "paths"}, items.map((it) => h("li", {}, text(it)))));
    this.diffOut.replaceChildren(h("section", {"aria-label": "Differences"},
      h("p", {}, `${fmt.count(sm.added)} added (${fmt.bytes(sm.size_added)}), ${fmt.count(sm.removed)} removed (${fmt.bytes(sm.size_removed)}), ${fmt.count(sm.modified)} modified, ${fmt.count(sm.unchanged)} unchanged.`),
      d.truncated ? h("p", {class: "notice"}, "Only the first 1,000 of each are listed.") : null,
      list("Added", d.added, (e) => `${e.path}${e.kind === "dir" ? "/" : ""} (${fmt.bytes(e.size)})`),
      list("Removed", d.removed, (e) => `${e.path}${e.kind === "dir" ? "/" : ""} (${fmt.bytes(e.size)})`),
      list("Modified", d.modified, (e) => `${e.path}: ${e.change.join(", ")}`)));
  }
}
