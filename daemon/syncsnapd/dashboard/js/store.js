// The one state store the views render from: plain data, replaced (never mutated in place) and
// announced to subscribers after every change.

import {Ordering} from "./ordering.js";

/**
 * @typedef {{
 *   connection: {mode: string, retryIn: number|null},
 *   projects: Map<string, any>,
 *   operations: Map<string, any>,
 *   unauthorized: boolean,
 *   store: any,
 *   refreshes: number,
 * }} State
 */

export class Store {
  constructor() {
    /** @type {State} */
    this.state = {
      connection: {mode: "connecting", retryIn: 0},
      projects: new Map(),
      operations: new Map(),
      unauthorized: false,
      store: null,
      refreshes: 0,
    };
    this.ordering = new Ordering();
    /** @type {Set<(state: State, change: {type: string, [k: string]: any}) => void>} */
    this.listeners = new Set();
  }

  /** @returns {State} */
  get() {
    return this.state;
  }

  /**
   * Calls `listener(state, change)` after every change; returns the function that unsubscribes.
   * @param {(state: State, change: any) => void} listener
   */
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  _set(patch, change) {
    this.state = {...this.state, ...patch};
    for (const listener of [...this.listeners]) listener(this.state, change);
  }

  setConnection(mode, retryIn = null) {
    const c = this.state.connection;
    if (c.mode === mode && c.retryIn === retryIn) return;
    this._set({connection: {mode, retryIn}}, {type: "connection"});
  }

  setUnauthorized() {
    if (!this.state.unauthorized) this._set({unauthorized: true}, {type: "unauthorized"});
  }

  setStoreInfo(info) {
    this._set({store: info}, {type: "store"});
  }

  /**
   * A progress object from the stream (`streamed`) or from a poll or an answer. Returns whether it
   * was applied (false: a duplicate or older than what is shown).
   */
  applyProgress(progress, streamed = false) {
    const fresh = streamed ? this.ordering.acceptStreamed(progress) : this.ordering.accept(progress);
    if (!fresh) return false;
    if (progress.kind && progress.kind !== "snapshot") {
      const operations = new Map(this.state.operations);
      operations.set(progress.run, progress);
      this._set({operations}, {type: "progress", progress});
      return true;
    }
    const old = this.state.projects.get(progress.project);
    if (!old) return false;  // a project not (yet) known: the next refresh brings it with its progress
    const projects = new Map(this.state.projects);
    const project = {...old, progress, state: progress.state};
    if (progress.state === "completed" && progress.snapshot) {
      project.last_snapshot = {...progress.snapshot, time: progress.updated_at, project: progress.project};
    }
    projects.set(progress.project, project);
    this._set({projects}, {type: "progress", progress});
    return true;
  }

  /** Replaces the whole list of projects (GET /api/v1/projects: the first load, a poll, a gap). */
  replaceProjects(list, reason = "refresh") {
    const projects = new Map();
    for (const p of list) {
      const old = this.state.projects.get(p.id);
      // Keep a newer streamed progress over an older polled one.
      if (old && old.progress && p.progress && (old.progress.event_id || 0) > (p.progress.event_id || 0)) {
        projects.set(p.id, {...p, progress: old.progress, state: old.state});
      } else {
        projects.set(p.id, p);
        if (p.progress) this.ordering.accept(p.progress);
      }
    }
    this._set({projects, refreshes: this.state.refreshes + 1}, {type: "projects", reason});
  }

  /** One project's new record (the answer to pause or resume). */
  upsertProject(project) {
    const projects = new Map(this.state.projects);
    const old = projects.get(project.id);
    if (old && old.progress && project.progress && (old.progress.event_id || 0) > (project.progress.event_id || 0)) {
      projects.set(project.id, {...project, progress: old.progress, state: old.state});
    } else {
      projects.set(project.id, project);
    }
    this._set({projects}, {type: "project", id: project.id});
  }
}
