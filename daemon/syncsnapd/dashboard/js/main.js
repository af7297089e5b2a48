// The dashboard's entry point: builds the page, wires the store, the connection and the views.

import {Api} from "./api.js";
import {Connection, browserClock} from "./connection.js";
import {h, setText} from "./dom.js";
import {ReconnectPolicy} from "./policy.js";
import {Store} from "./store.js";
import {HealthView} from "./views/health.js";
import {HistoryView} from "./views/history.js";
import {ProgressModal} from "./views/modal.js";
import {ProjectsView} from "./views/projects.js";
import {SnapshotsView} from "./views/snapshots.js";

/** Latency samples (ms) kept for the benchmark, at most this many. */
export const MAX_LATENCIES = 10000;

/** The connection indicator's text, exactly as documented. */
export function connectionText(mode, retryIn) {
  switch (mode) {
    case "live": return "Live";
    case "polling": return "Polling";
    case "offline":
    case "unauthorized": return "Offline";
    default: return `Reconnecting in ${retryIn ?? 0} s`;
  }
}

/** A region below the list that shows one thing at a time (a history, a snapshots list). */
class Panel {
  constructor(root) {
    this.root = root;
    this.title = h("h2", {id: "panel-title", tabindex: "-1"});
    this.body = h("div", {class: "panel-body"});
    root.setAttribute("aria-labelledby", "panel-title");
    root.append(h("header", {class: "panel-head"}, this.title,
      h("button", {type: "button", onclick: () => this.close()}, "Close panel")), this.body);
  }

  open(title) {
    setText(this.title, title);
    this.body.replaceChildren();
    if (this.root.hidden) {
      this.root.hidden = false;
      this.title.focus();
      this.root.scrollIntoView({block: "start"});
    }
    return this.body;
  }

  close() {
    this.root.hidden = true;
    this.body.replaceChildren();
  }
}

function main() {
  const app = document.getElementById("app");
  const store = new Store();
  window.syncsnapLatencies = [];
  let connection = null;

  const onUnauthorized = () => {
    store.setUnauthorized();
    if (connection) connection.unauthorized();
  };
  const api = new Api({onUnauthorized});

  const status = h("p", {role: "status", "aria-label": "Connection", class: "conn", "data-mode": "connecting"},
    "Reconnecting in 0 s");
  const notice = h("p", {class: "page-notice", role: "alert"});
  const list = h("div", {class: "projects"});
  const panelRoot = h("section", {class: "panel", hidden: true});
  const healthRoot = h("section", {class: "health", "aria-label": "Store"});
  app.replaceChildren(
    h("header", {class: "top"},
      h("h1", {}, "syncsnap"),
      status,
      h("button", {type: "button", class: "quiet", onclick: async () => {
        try { await api.logout(); } catch (_) { /* reload shows the sign-in page either way */ }
        location.reload();
      }}, "Sign out")),
    notice,
    healthRoot,
    h("h2", {class: "visually-hidden"}, "Projects"),
    list,
    panelRoot);

  const modal = new ProgressModal({api, store});
  const panel = new Panel(panelRoot);
  const history = new HistoryView(panel, api);
  const snapshots = new SnapshotsView({panel, api, modal});
  const health = new HealthView({root: healthRoot, api, store, modal});

  const say = (text) => setText(notice, text || "");
  const projects = new ProjectsView(list, {
    async snapshot(id) {
      say("");
      try {
        const answer = await api.snapshotNow(id);
        if (answer.progress) store.applyProgress(answer.progress);
        modal.openSnapshot(id, answer.run);
      } catch (exc) {
        if (exc.status !== 401) say(`${id}: ${exc.message}`);
      }
    },
    async togglePause(id) {
      say("");
      const project = store.get().projects.get(id);
      try {
        store.upsertProject(project?.paused ? await api.resume(id) : await api.pause(id));
      } catch (exc) {
        if (exc.status !== 401) say(`${id}: ${exc.message}`);
      }
    },
    showProgress: (id) => modal.openSnapshot(id),
    history: (id) => history.show(id),
    snapshots: (id) => snapshots.show(id),
  });

  store.subscribe((state, change) => {
    if (change.type === "connection" || change.type === "unauthorized") {
      const {mode, retryIn} = state.connection;
      setText(status, connectionText(state.unauthorized ? "unauthorized" : mode, retryIn));
      status.dataset.mode = state.unauthorized ? "offline" : mode;
    }
    if (change.type === "unauthorized") {
      modal.close();
      app.replaceChildren(h("section", {class: "signed-out", "aria-labelledby": "signed-out-title"},
        h("h1", {id: "signed-out-title"}, "syncsnap"),
        h("p", {}, "Your session has ended (it expired, or the daemon was restarted or signed out)."),
        h("p", {}, "To open the dashboard again, run ", h("code", {}, "syncsnap open"), " in a terminal.")));
      return;
    }
    if (change.type === "progress" && change.progress.project && (!change.progress.kind || change.progress.kind === "snapshot")) {
      projects.renderOne(state, change.progress.project);
    } else if (change.type === "projects" || change.type === "project") {
      projects.render(state);
    }
  });

  // GET /api/v1/projects: the first load, each poll, a gap; and the operation the modal follows.
  let refreshing = null;
  const refresh = () => {
    if (!refreshing) {
      refreshing = (async () => {
        try {
          const answer = await api.projects();
          store.replaceProjects(answer.projects);
          const run = modal.followedRun();
          if (run) store.applyProgress(await api.operation(run));
        } finally {
          refreshing = null;
        }
      })();
    }
    return refreshing;
  };

  const latencies = window.syncsnapLatencies;
  connection = new Connection({
    EventSource: window.EventSource,
    clock: browserClock,
    policy: new ReconnectPolicy(),
    lastEventId: () => store.ordering.lastEventId,
    poll: refresh,
    onProgress(progress) {
      const known = !progress.project || progress.kind !== "snapshot" || store.get().projects.has(progress.project);
      if (store.applyProgress(progress, true)) {
        // Applied to the DOM (the views render synchronously): how long since the daemon stamped it.
        const ms = performance.timeOrigin + performance.now() - Date.parse(progress.updated_at);
        if (Number.isFinite(ms)) {
          if (latencies.length >= MAX_LATENCIES) latencies.shift();
          latencies.push(ms);
        }
      } else if (!known) {
        refresh().catch(() => {});  // a project added by a configuration reload
      }
    },
    onGap(data) {
      store.ordering.gap(data);
      refresh().catch(() => {});
    },
    onMode(mode, retryIn) {
      store.setConnection(mode, retryIn);
    },
  });

  refresh().catch((exc) => {
    if (exc.status !== 401) say(`The daemon cannot be reached: ${exc.message}`);
  }).finally(() => {
    if (!store.get().unauthorized) connection.start();
  });
  health.refresh();
  // Relative times ("5 min ago") move on by themselves.
  setInterval(() => {
    if (!store.get().unauthorized) {
      projects.render(store.get());
      health.render(store.get().store);
    }
  }, 15000);
  window.addEventListener("pagehide", () => connection.stop());
}

if (typeof document !== "undefined" && document.getElementById("app")) main();
