// The progress modal: a native <dialog> (showModal: focus trapped, Esc closes) that follows one
// snapshot of a project (its current or last run, whoever started it) or one operation run (a restore
// or a store check), live from the store.

import {h, s, setAttr, setText, hidden} from "../dom.js";
import * as fmt from "../format.js";

export const STEPS = {
  snapshot: ["Waiting for sync", "Browsing folder status", "Browsing files", "Compressing",
    "Uploading to the store", "Completed"],
  restore: ["Reading the snapshot", "Restoring files", "Finishing directories", "Completed"],
  check: ["Reading indexes", "Checking packs", "Checking snapshots", "Completed"],
  prune: ["Forgetting snapshots", "Marking data in use", "Repacking", "Deleting unused packs"],
};
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
/** Seconds the modal stays open after a run completed. */
export const AUTO_CLOSE_MS = 2000;

/** Label of the last step, by how the run ended. */
function lastStepLabel(kind, state) {
  if (state === "failed") return "Failed";
  if (state === "cancelled") return "Cancelled";
  return STEPS[kind]?.at(-1) ?? "Completed";
}

/**
 * The steps as the modal lists them: label, done, current. A run that failed or was cancelled reports
 * its terminal step only, so the steps done are those before `workingStep`, the last working step
 * seen of that run (none when the modal opened after the end).
 * @returns {{label: string, done: boolean, current: boolean}[]}
 */
export function stepMarks(kind, p, workingStep) {
  const names = STEPS[kind] || STEPS.snapshot;
  const st = p?.state;
  const step = p?.step || 0;
  const reached = st === "completed" ? step + 1 : TERMINAL.has(st) ? (workingStep ?? 1) : step;
  return names.map((n, i) => ({
    label: i === names.length - 1 ? lastStepLabel(kind, st) : n,
    done: i + 1 < reached,
    current: i + 1 === step,
  }));
}

export class ProgressModal {
  /**
   * @param {{api, store, onLatency?: (p) => void, setTimeout?: typeof setTimeout, clearTimeout?: typeof clearTimeout}} deps
   */
  constructor(deps) {
    this.api = deps.api;
    this.store = deps.store;
    this.setTimeout = deps.setTimeout ?? ((f, ms) => window.setTimeout(f, ms));
    this.clearTimeout = deps.clearTimeout ?? ((t) => window.clearTimeout(t));
    this.target = null;  // {type: "project", id, awaitRun} | {type: "run", run, kind, project}
    this.closeTimer = null;
    this.sawRunning = new Set();
    this.samples = [];
    /** @type {Map<string, number>} the last working step seen of each run */
    this.workingStep = new Map();

    this.title = h("h2", {id: "modal-title"});
    this.pausedBadge = h("span", {class: "badge badge-paused", hidden: true}, "Paused");
    this.fill = s("rect", {x: 0, y: 0, width: 0, height: 1, class: "bar-fill"});
    this.bar = h("div", {role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0,
      "aria-label": "Progress", class: "bar"},
      s("svg", {viewBox: "0 0 100 1", preserveAspectRatio: "none", "aria-hidden": "true", focusable: "false"},
        s("rect", {x: 0, y: 0, width: 100, height: 1, class: "bar-track"}), this.fill));
    this.percent = h("span", {class: "bar-percent"});
    this.steps = h("ol", {class: "steps", "aria-label": "Steps"});
    this.message = h("p", {class: "message", "aria-live": "polite"});
    this.files = h("dd");
    this.bytes = h("dd");
    this.rate = h("dd");
    this.eta = h("dd");
    this.error = h("p", {class: "error", role: "alert", hidden: true});
    this.notice = h("p", {class: "notice", hidden: true});
    this.pauseButton = h("button", {type: "button", onclick: () => this.togglePause()}, "Pause");
    this.cancelButton = h("button", {type: "button", class: "danger", onclick: () => this.cancel()}, "Cancel");
    // Focus starts on Close, so that Enter after opening never pauses or cancels by accident.
    this.closeButton = h("button", {type: "button", autofocus: true, onclick: () => this.close()}, "Close");
    this.dialog = h("dialog", {class: "modal", "aria-labelledby": "modal-title"},
      h("header", {class: "modal-head"}, this.title, this.pausedBadge),
      h("div", {class: "bar-row"}, this.bar, this.percent),
      this.steps,
      this.message,
      h("dl", {class: "facts counters"},
        h("dt", {}, "Files"), this.files,
        h("dt", {}, "Bytes"), this.bytes,
        h("dt", {}, "Rate"), this.rate,
        h("dt", {}, "ETA"), this.eta),
      this.error,
      this.notice,
      h("div", {class: "actions"}, this.pauseButton, this.cancelButton, this.closeButton));
    this.dialog.addEventListener("close", () => this._closed());
    document.body.append(this.dialog);
    this.store.subscribe((state, change) => {
      if (this.target && (change.type !== "progress" || this._concerns(change.progress))) this.render(state);
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  /** Follows a project's snapshot runs; `awaitRun`: the run just requested (auto-close waits for it). */
  openSnapshot(projectId, awaitRun = null) {
    this._open({type: "project", id: projectId, awaitRun});
  }

  /** Follows an operation run (restore, check) from its first progress object. */
  openRun(progress) {
    if (progress) this.store.applyProgress(progress);
    this._open({type: "run", run: progress.run, kind: progress.kind, project: progress.project});
  }

  /** The run id the modal follows (an operation run), so that polls can fetch it. */
  followedRun() {
    return this.isOpen && this.target?.type === "run" ? this.target.run : null;
  }

  showNotice(text) {
    this.notice.hidden = !text;
    setText(this.notice, text || "");
  }

  _open(target) {
    this._cancelAutoClose();
    this.target = target;
    this.sawRunning = new Set();
    this.samples = [];
    this.showNotice("");
    this.render(this.store.get());
    if (!this.dialog.open) this.dialog.showModal();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  _closed() {
    this._cancelAutoClose();
    this.target = null;
  }

  _cancelAutoClose() {
    if (this.closeTimer !== null) this.clearTimeout(this.closeTimer);
    this.closeTimer = null;
  }

  _concerns(progress) {
    const t = this.target;
    if (!t) return false;
    if (t.type === "run") return progress.run === t.run;
    return progress.project === t.id && (!progress.kind || progress.kind === "snapshot");
  }

  _progress(state) {
    const t = this.target;
    if (t.type === "run") return state.operations.get(t.run) || null;
    return state.projects.get(t.id)?.progress || null;
  }

  render(state) {
    const t = this.target;
    if (!t) return;
    const p = this._progress(state);
    const kind = t.type === "run" ? t.kind : "snapshot";
    const who = t.type === "run" ? t.project : t.id;
    setText(this.title, kind === "check" ? "Store check" : kind === "restore" ? `Restore of ${who}`
      : kind === "prune" ? "Store prune" : `Snapshot of ${who}`);
    setAttr(this.bar, "aria-label", kind === "check" ? "Check progress" : kind === "restore" ? "Restore progress"
      : "Snapshot progress");
    const st = p?.state || "idle";
    const pct = fmt.percent(p?.percent ?? 0);
    setAttr(this.bar, "aria-valuenow", pct);
    setAttr(this.fill, "width", pct);
    setText(this.percent, `${pct}%`);
    this._renderSteps(kind, p);
    setText(this.message, p?.message || (st === "idle" ? "No snapshot has run yet." : st));
    setText(this.files, `${fmt.count(p?.files_done ?? 0)} of ${fmt.count(p?.files_total ?? 0)}`);
    setText(this.bytes, `${fmt.bytes(p?.bytes_done ?? 0)} of ${fmt.bytes(p?.bytes_total ?? 0)}`);
    setText(this.rate, TERMINAL.has(st) || p?.paused ? "–" : fmt.rate(this._rate(p)));
    setText(this.eta, TERMINAL.has(st) ? "–" : fmt.eta(p?.eta_seconds));
    this.pausedBadge.hidden = !p?.paused;
    const err = p?.error;
    this.error.hidden = !(err && (st === "failed" || st === "cancelled"));
    setText(this.error, err ? `${st === "cancelled" ? "Cancelled" : "Failed"}: ${err.message} (${err.code})` : "");
    const project = kind === "snapshot" ? state.projects.get(t.id) : null;
    this.pauseButton.hidden = kind !== "snapshot";
    if (project) setText(this.pauseButton, project.paused ? "Resume" : "Pause");
    this.cancelButton.disabled = !p || TERMINAL.has(st) || st === "idle";
    if (p?.run && !TERMINAL.has(st) && st !== "idle") this.sawRunning.add(p.run);
    if (st === "completed" && this.closeTimer === null && this._shouldAutoClose(p)) {
      this.closeTimer = this.setTimeout(() => {
        this.closeTimer = null;
        this.close();
      }, AUTO_CLOSE_MS);
    } else if (st !== "completed") {
      this._cancelAutoClose();
    }
  }

  _shouldAutoClose(p) {
    const t = this.target;
    if (t.type === "project" && t.awaitRun) return p.run === t.awaitRun;
    return this.sawRunning.has(p.run);
  }

  _rate(p) {
    if (!p || !p.updated_at) return null;
    const at = Date.parse(p.updated_at);
    const last = this.samples.at(-1);
    if (!last || last.run !== p.run || last.step !== p.step) this.samples = [];
    if (!last || last.at !== at) this.samples.push({run: p.run, step: p.step, at, bytes_done: p.bytes_done || 0});
    if (this.samples.length > 20) this.samples.shift();
    return fmt.rateBetween(this.samples[0], this.samples.at(-1));
  }

  _renderSteps(kind, p) {
    const run = p?.run;
    if (run && !TERMINAL.has(p.state) && p.step) this.workingStep.set(run, p.step);
    const marks = stepMarks(kind, p, run ? this.workingStep.get(run) : undefined);
    if (this.steps.children.length !== marks.length) {
      this.steps.replaceChildren(...marks.map(() => h("li", {},
        h("span", {class: "tick", "aria-hidden": "true"}), h("span", {class: "step-name"}), hidden(""))));
    }
    marks.forEach((m, i) => {
      const li = this.steps.children[i];
      li.className = [m.done ? "done" : "", m.current ? "current" : "", m.current && TERMINAL.has(p?.state) ? p.state : ""]
        .filter(Boolean).join(" ");
      if (m.current) setAttr(li, "aria-current", "step");
      else li.removeAttribute("aria-current");
      setText(li.children[0], m.done ? "✓" : m.current ? "●" : "○");
      setText(li.children[1], m.label);
      setText(li.children[2], m.done ? " (done)" : "");
    });
  }

  async togglePause() {
    const t = this.target;
    if (!t || t.type !== "project") return;
    const project = this.store.get().projects.get(t.id);
    try {
      const updated = project?.paused ? await this.api.resume(t.id) : await this.api.pause(t.id);
      if (updated && updated.id) this.store.upsertProject(updated);
    } catch (exc) {
      this.showNotice(exc.message);
    }
  }

  async cancel() {
    const t = this.target;
    if (!t) return;
    try {
      if (t.type === "project") await this.api.cancelSnapshot(t.id);
      else await this.api.cancelOperation(t.run);
      this.showNotice("Cancelling…");
    } catch (exc) {
      this.showNotice(exc.message);
    }
  }
}
