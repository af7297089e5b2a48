// The projects list: one article per project, updated in place on every change of the store.

import {h, setText, uid} from "../dom.js";
import * as fmt from "../format.js";

const RUNNING = new Set(["waiting", "browsing", "compressing", "uploading", "queued"]);

/** Whether a project's snapshot run is under way. */
export function isRunning(project) {
  return RUNNING.has(project?.progress?.state ?? project?.state);
}

/** "5 min ago · 1,234 files · 3.4 GiB · took 12 s", or "None yet". */
export function lastSnapshotText(last, now = Date.now()) {
  if (!last) return "None yet";
  return [fmt.relative(last.time, now), fmt.countOf(last.files, "file"), fmt.bytes(last.bytes),
    `took ${fmt.duration(last.duration_seconds)}`].join(" · ");
}

/** The state line: "idle", "compressing 37%", "paused at compressing 37%". */
export function stateText(project) {
  const p = project.progress || {};
  const state = p.state || project.state || "idle";
  if (RUNNING.has(state) && state !== "queued") {
    const pct = `${state} ${fmt.percent(p.percent)}%`;
    return p.paused ? `paused at ${pct}` : pct;
  }
  if (state === "failed" && p.error) return `failed (${p.error.code})`;
  return state;
}

class ProjectCard {
  constructor(id, actions) {
    this.id = id;
    const headingId = uid("project");
    this.title = h("h2", {id: headingId, class: "project-title"}, id);
    this.badge = h("span", {class: "badge badge-paused", hidden: true}, "Paused");
    this.path = h("p", {class: "project-path"});
    this.state = h("dd", {class: "project-state"});
    this.last = h("dd");
    this.watch = h("dd");
    this.problems = h("p", {class: "problems", hidden: true});
    this.pauseButton = h("button", {type: "button", onclick: () => actions.togglePause(this.id)}, "Pause");
    this.snapButton = h("button", {type: "button", class: "primary", onclick: () => actions.snapshot(this.id)},
      "Snapshot now");
    this.el = h("article", {class: "project", "aria-labelledby": headingId},
      h("header", {class: "project-head"}, this.title, this.badge),
      this.path,
      h("dl", {class: "facts"},
        h("dt", {}, "State"), this.state,
        h("dt", {}, "Last snapshot"), this.last,
        h("dt", {}, "Watching"), this.watch),
      this.problems,
      h("div", {class: "actions"},
        this.snapButton,
        this.pauseButton,
        h("button", {type: "button", onclick: () => actions.showProgress(this.id)}, "Show progress"),
        h("button", {type: "button", onclick: () => actions.history(this.id)}, "History"),
        h("button", {type: "button", onclick: () => actions.snapshots(this.id)}, "Snapshots")));
  }

  update(project, now) {
    this.badge.hidden = !project.paused;
    setText(this.path, project.path ?? "(path not known yet)");
    setText(this.state, stateText(project));
    this.el.dataset.state = project.progress?.state || project.state || "idle";
    setText(this.last, lastSnapshotText(project.last_snapshot, now));
    const watch = project.watch || {};
    setText(this.watch, watch.mode || "off");
    const problems = [];
    if (watch.warning) problems.push(`Warning: ${watch.warning}`);
    if (watch.error) problems.push(`Error: ${watch.error.message} (${watch.error.code})`);
    const p = project.progress;
    if (p && p.state === "failed" && p.error) problems.push(`Last run failed: ${p.error.message} (${p.error.code})`);
    const w = project.last_snapshot?.warnings;
    if (w) problems.push(`Last snapshot: ${fmt.countOf(w, "warning")}`);
    this.problems.hidden = problems.length === 0;
    setText(this.problems, problems.join(" · "));
    setText(this.pauseButton, project.paused ? "Resume" : "Pause");
  }
}

export class ProjectsView {
  /**
   * @param {HTMLElement} root  the list's container
   * @param {{snapshot, togglePause, showProgress, history, snapshots}} actions  called with a project id
   */
  constructor(root, actions) {
    this.root = root;
    this.actions = actions;
    /** @type {Map<string, ProjectCard>} */
    this.cards = new Map();
    this.empty = h("p", {class: "empty"}, "No projects are configured. Add one to the daemon's configuration.");
  }

  render(state, now = Date.now()) {
    const ids = [...state.projects.keys()];
    for (const [id, card] of this.cards) {
      if (!state.projects.has(id)) {
        card.el.remove();
        this.cards.delete(id);
      }
    }
    let prev = null;
    for (const id of ids) {
      let card = this.cards.get(id);
      if (!card) {
        card = new ProjectCard(id, this.actions);
        this.cards.set(id, card);
      }
      card.update(state.projects.get(id), now);
      const want = prev ? prev.nextSibling : this.root.firstChild;
      if (want !== card.el) this.root.insertBefore(card.el, want);
      prev = card.el;
    }
    if (ids.length === 0 && state.refreshes > 0) this.root.replaceChildren(this.empty);
    else this.empty.remove();
  }

  /** Updates one project only (a progress event): the cheap path. */
  renderOne(state, id, now = Date.now()) {
    const card = this.cards.get(id);
    const project = state.projects.get(id);
    if (card && project) card.update(project, now);
    else this.render(state, now);
  }
}
