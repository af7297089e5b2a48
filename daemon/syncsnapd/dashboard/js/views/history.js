// A project's runs history: a paged table, an inline SVG chart of duration and bytes added over time,
// and a run's details (step timings, "Export events" as an NDJSON download).

import {h, s} from "../dom.js";
import * as fmt from "../format.js";
import {STEPS} from "./modal.js";

export const PAGE_SIZE = 20;
const W = 600;
const H = 160;
const PAD = 28;

/**
 * The chart's geometry, a pure function of the runs (newest first, as the API gives them): points of
 * the duration line and bars of bytes added, in a W x H box, oldest on the left.
 */
export function chartGeometry(runs, width = W, height = H, pad = PAD) {
  const done = runs.filter((r) => r.kind === "snapshot" && r.state === "completed" && r.started_at)
    .map((r) => ({t: Date.parse(r.started_at), d: r.duration_seconds || 0, b: r.snapshot?.bytes_added || 0, run: r.run}))
    .sort((a, b) => a.t - b.t);
  if (done.length === 0) return {points: [], bars: [], maxD: 0, maxB: 0};
  const t0 = done[0].t;
  const span = Math.max(1, done.at(-1).t - t0);
  const maxD = Math.max(...done.map((r) => r.d), 0.001);
  const maxB = Math.max(...done.map((r) => r.b), 1);
  const iw = width - 2 * pad;
  const ih = height - 2 * pad;
  const x = (t) => (done.length === 1 ? pad + iw / 2 : pad + ((t - t0) / span) * iw);
  const barW = Math.max(2, Math.min(16, iw / done.length / 2));
  const points = done.map((r) => ({x: x(r.t), y: pad + ih - (r.d / maxD) * ih, run: r.run, d: r.d}));
  const bars = done.map((r) => {
    const bh = (r.b / maxB) * ih;
    return {x: x(r.t) - barW / 2, y: pad + ih - bh, w: barW, h: bh, run: r.run, b: r.b};
  });
  return {points, bars, maxD, maxB};
}

function chart(runs) {
  const g = chartGeometry(runs);
  const title = "Duration (line) and bytes added (bars) of completed snapshots, oldest on the left";
  if (g.points.length === 0) return h("p", {class: "empty"}, "No completed snapshot on this page to chart.");
  const fmtNum = (n) => n.toFixed(1);
  return h("figure", {class: "chart"},
    s("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart-svg"},
      s("title", {}, title),
      s("line", {x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, class: "axis"}),
      ...g.bars.map((b) => s("rect", {x: fmtNum(b.x), y: fmtNum(b.y), width: fmtNum(b.w), height: fmtNum(b.h), class: "bytes-bar"},
        s("title", {}, `${b.run}: ${fmt.bytes(b.b)} added`))),
      s("polyline", {points: g.points.map((p) => `${fmtNum(p.x)},${fmtNum(p.y)}`).join(" "), class: "duration-line"}),
      ...g.points.map((p) => s("circle", {cx: fmtNum(p.x), cy: fmtNum(p.y), r: 3, class: "duration-dot"},
        s("title", {}, `${p.run}: ${fmt.duration(p.d)}`))),
      s("text", {x: PAD, y: PAD - 8, class: "chart-label"}, `max ${fmt.duration(g.maxD)}`),
      s("text", {x: W - PAD, y: PAD - 8, class: "chart-label end"}, `max ${fmt.bytes(g.maxB)} added`)),
    h("figcaption", {}, h("span", {class: "key key-line"}, "Duration"), " ", h("span", {class: "key key-bar"}, "Bytes added")));
}

/** Downloads text as a file: a Blob and an object URL, clicked through a temporary link. */
export function download(text, filename, type) {
  const url = URL.createObjectURL(new Blob([text], {type}));
  const a = h("a", {href: url, download: filename, hidden: true});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export class HistoryView {
  constructor(panel, api) {
    this.panel = panel;
    this.api = api;
  }

  async show(projectId) {
    this.project = projectId;
    this.cursors = [null];  // `before` of each page seen; the last is the current page
    await this._load();
  }

  async _load() {
    const before = this.cursors.at(-1);
    const body = this.panel.open(`History of ${this.project}`);
    body.append(h("p", {class: "loading"}, "Loading…"));
    let page;
    try {
      page = await this.api.runs(this.project, PAGE_SIZE, before);
    } catch (exc) {
      body.replaceChildren(h("p", {class: "error", role: "alert"}, exc.message));
      return;
    }
    this.next = page.next;
    this.details = h("div", {class: "run-details"});
    const rows = page.runs.map((r) => h("tr", {},
      h("td", {}, h("button", {type: "button", class: "link", onclick: () => this.showRun(r.run)},
        fmt.dateTime(r.started_at))),
      h("td", {}, r.trigger || "–"),
      h("td", {"data-state": r.state}, r.state + (r.error ? ` (${r.error.code})` : "")),
      h("td", {class: "num"}, fmt.duration(r.duration_seconds)),
      h("td", {class: "num"}, r.snapshot ? fmt.count(r.snapshot.files) : "–"),
      h("td", {class: "num"}, r.snapshot ? fmt.bytes(r.snapshot.bytes_added) : "–")));
    body.replaceChildren(
      chart(page.runs),
      page.runs.length === 0 ? h("p", {class: "empty"}, "No runs yet.") :
        h("div", {class: "table-wrap"}, h("table", {},
          h("caption", {class: "visually-hidden"}, `Runs of ${this.project}, newest first`),
          h("thead", {}, h("tr", {}, ["Started", "Trigger", "State", "Duration", "Files", "Added"]
            .map((c, i) => h("th", {scope: "col", class: i >= 3 ? "num" : null}, c)))),
          h("tbody", {}, rows))),
      h("div", {class: "pager"},
        h("button", {type: "button", disabled: this.cursors.length <= 1, onclick: () => this.newer()}, "Newer runs"),
        h("button", {type: "button", disabled: !this.next, onclick: () => this.older()}, "Older runs")),
      this.details);
  }

  older() {
    if (!this.next) return;
    this.cursors.push(this.next);
    return this._load();
  }

  newer() {
    if (this.cursors.length <= 1) return;
    this.cursors.pop();
    return this._load();
  }

  async showRun(runId) {
    let run;
    try {
      run = await this.api.run(runId);
    } catch (exc) {
      this.details.replaceChildren(h("p", {class: "error", role: "alert"}, exc.message));
      return;
    }
    const names = STEPS[run.kind] || STEPS.snapshot;
    const steps = Object.entries(run.step_seconds || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
    const max = Math.max(0.001, ...steps.map(([, v]) => v));
    const status = h("p", {class: "notice", role: "status"});
    this.details.replaceChildren(h("section", {class: "run", "aria-label": `Run ${run.run}`},
      h("h3", {}, `Run ${run.run}`),
      h("p", {}, `${run.kind}, ${run.trigger || "–"}, ${run.state}`, run.error ? ` — ${run.error.message} (${run.error.code})` : "",
        `, ${fmt.duration(run.duration_seconds)}`, run.paused_seconds ? `, paused ${fmt.duration(run.paused_seconds)}` : ""),
      steps.length === 0 ? h("p", {}, "No step timings.") :
        h("table", {class: "steps-table"},
          h("caption", {}, "Step timings"),
          h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Step"), h("th", {scope: "col", class: "num"}, "Time"), h("th", {scope: "col"}, h("span", {class: "visually-hidden"}, "Share")))),
          h("tbody", {}, steps.map(([n, v]) => h("tr", {},
            h("td", {}, `${n}. ${names[Number(n) - 1] ?? ""}`),
            h("td", {class: "num"}, fmt.duration(v)),
            h("td", {}, s("svg", {viewBox: "0 0 100 4", preserveAspectRatio: "none", class: "step-bar", "aria-hidden": "true"},
              s("rect", {x: 0, y: 0, height: 4, width: ((v / max) * 100).toFixed(1)}))))))),
      h("button", {type: "button", onclick: () => this.exportEvents(run.run, status)}, "Export events"),
      status));
  }

  async exportEvents(runId, status) {
    try {
      const text = await this.api.runEventsNdjson(runId);
      download(text, `${runId}.ndjson`, "application/x-ndjson");
      status.textContent = `Exported ${text.split("\n").filter(Boolean).length} events.`;
    } catch (exc) {
      status.textContent = `Export failed: ${exc.message}`;
    }
  }
}
