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

export class HealthView {
  /** @param {{root: HTMLElement, api, store, modal}} deps */
  constructor(deps) {
    Object.assign(this, deps);
    this.summary = h("p", {class: "store-summary"}, "Store: loading…");
    this.check = h("p", {class: "store-check"});
    this.notice = h("p", {class: "notice", role: "status"});
    this.button = h("button", {type: "button", onclick: () => this.runCheck()}, "Check store");
    this.root.append(h("h2", {class: "visually-hidden"}, "Store"), this.summary, this.check, this.button, this.notice);
    this.store.subscribe((state, change) => {
      if (change.type === "store") this.render(state.store);
      // A run that ended changed the store (a snapshot or prune: its size; a check: its record of it).
      if (change.type === "progress" && ["completed", "failed", "cancelled"].includes(change.progress.state)) this.refresh();
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
