// Ordering of progress events: de-duplication by event id, and what to do about a gap.
//
// Event ids are global and increase (docs/api.md), but a slow reader may get a run's intermediate
// events coalesced, so a jump in ids is no gap. Each "key" (a project's snapshot runs, or one operation
// run such as a restore or a check) keeps the highest id applied: an event at or below it is a
// duplicate (a replay after a resume, a poll that saw it first) and is dropped. The daemon says when it
// could not resume (`event: gap`): then the page refreshes the current state from the JSON API.

/** The key under which a progress object replaces the previous one. */
export function keyOf(progress) {
  if (progress.kind && progress.kind !== "snapshot") return `run:${progress.run}`;
  return `project:${progress.project}`;
}

export class Ordering {
  constructor() {
    /** The highest id seen on the stream: sent back as `last_event_id` on the next connection. */
    this.lastEventId = 0;
    /** @type {Map<string, number>} */
    this.applied = new Map();
    this.duplicates = 0;
    this.gaps = 0;
  }

  /**
   * Whether an event from the stream is new and must be applied.
   * @param {{event_id: number}} progress
   * @returns {boolean}
   */
  acceptStreamed(progress) {
    const id = Number(progress.event_id) || 0;
    if (id > this.lastEventId) this.lastEventId = id;
    return this.accept(progress);
  }

  /**
   * Whether a progress object (from the stream or a poll) is newer than what its key shows.
   * Polls do not move `lastEventId`: a stream resumes from the last event it delivered.
   * @param {{event_id: number}} progress
   */
  accept(progress) {
    const id = Number(progress.event_id) || 0;
    const key = keyOf(progress);
    const seen = this.applied.get(key);
    if (seen !== undefined && id <= seen) {
      this.duplicates += 1;
      return false;
    }
    this.applied.set(key, id);
    return true;
  }

  /**
   * The daemon could not resume from our id (`event: gap`). The answer is to refresh the state.
   * @param {{last_event_id?: number}} data
   * @returns {{action: "refresh", missedAfter: number}}
   */
  gap(data) {
    this.gaps += 1;
    return {action: "refresh", missedAfter: Number(data?.last_event_id) || 0};
  }
}
