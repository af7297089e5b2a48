// The store's health: its size, the last check, and a "Check store" button (progress in the modal).

import {h, setText} from "../dom.js";
import * as fmt from "../format.js";

/** "Last check: 3 h ago, no problems" and the like. */
export function lastCheckText(info, now = Date.now()) {
  const c = info?.last_check;
  if (!c) return "Never checked";
  const when = fmt.relative(c.ended_at || c.started_at, now);
  if (c.state === "completed") return `Last check ${when}: no problems`;
  if (c.state === "failed") return `Last check ${when}: ${c.error?.code === "problems_found" ? "problems found" : `failed (${c.error?.code ?? "?"})`}`;
  return `Last check ${when}: ${c.state}`;
}

/** "" while the store answers; else since when it does not and what waits staged for it (GET /store's `health`). */
export function reachText(info, now = Date.now()) {
  const h = info?.health;
  if (!h || h.reachable) return "";
  const staged = h.kind === "s3" ? `; ${fmt.bytes(h.staging_bytes)} of ${fmt.bytes(h.staging_max_bytes)} staged` : "";
  return `Store unreachable since ${fmt.relative(h.since, now)} (${h.error?.code ?? "?"})${staged}: snapshots upload once it answers`;
}

export class HealthView {
  /** @param {{root: HTMLElement, api, store, modal}} deps */
  constructor(deps) {
    Object.assign(this, deps);
    this.summary = h("p", {class: "store-summary"}, "Store: loading…");
    this.check = h("p", {class: "store-check"});
    this.reach = h("p", {class: "store-reach"});
    this.notice = h("p", {class: "notice", role: "status"});
    this.button = h("button", {type: "button", onclick: () => this.runCheck()}, "Check store");
    this.root.append(h("h2", {class: "visually-hidden"}, "Store"), this.summary, this.reach, this.check, this.button, this.notice);
    this.store.subscribe((state, change) => {
      if (change.type === "store") this.render(state.store);
      // A run that ended changed the store (a snapshot or prune: its size; a check: its record of it).
      if (change.type === "progress" && ["completed", "failed", "cancelled"].includes(change.progress.state)) this.refresh();
      // A run waiting for an unreachable store (each attempt says so): show it, and what is staged.
      else if (change.type === "progress" && change.progress.message?.startsWith("store unreachable")) this.refresh();
    });
  }

  async refresh() {
    try {
      this.store.setStoreInfo(await this.api.storeInfo());
    } catch (exc) {
      if (exc.status !== 401) setText(this.summary, `Store: ${exc.message}`);
    }
  }

  render(info, now = Date.now()) {
    if (!info) return;
    setText(this.summary, `Store: ${fmt.countOf(info.snapshots, "snapshot")}, ${fmt.bytes(info.bytes_stored)} in ${fmt.countOf(info.packs, "pack")}`);
    setText(this.check, lastCheckText(info, now));
    setText(this.reach, reachText(info, now));
  }

  async runCheck() {
    setText(this.notice, "");
    try {
      const answer = await this.api.check(false);
      this.modal.openRun(answer.progress);
    } catch (exc) {
      const running = this.store.get().store?.check_running;
      if (exc.code === "busy" && running) {
        try {
          this.modal.openRun(await this.api.operation(running));
          return;
        } catch (_) { /* fall through to the message */ }
      }
      setText(this.notice, `${exc.message}`);
    }
  }
}
