// The fetch wrapper: JSON in and out, errors as ApiError {status, code, message}, the session cookie
// sent with every request (same origin; the browser adds `Origin` to state-changing ones itself).

export class ApiError extends Error {
  /**
   * @param {number} status  HTTP status, 0 when the daemon could not be reached
   * @param {string} code    the API's error code (docs/api.md), or "network"
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/**
 * Percent-encodes a value for a URL. Paths from the API may hold lone surrogates U+DC80..U+DCFF, which
 * stand for bytes of a name that is not UTF-8 (docs/api.md): each goes back as that byte, so the daemon
 * finds the same name. (encodeURIComponent throws on them, and URLSearchParams turns them into U+FFFD.)
 */
export function encodeValue(s) {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xdc80 && c <= 0xdcff) {
      out += `%${(c - 0xdc00).toString(16).toUpperCase()}`;
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      out += encodeURIComponent(s.slice(i, i + 2));
      i++;
    } else if (c >= 0xd800 && c <= 0xdfff) {
      out += "%EF%BF%BD";  // any other lone surrogate names nothing: the daemon answers path_unknown
    } else {
      out += encodeURIComponent(s[i]);
    }
  }
  return out;
}

/** Query string from an object, leaving out null, undefined and empty values. */
export function query(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") parts.push(`${encodeValue(k)}=${encodeValue(String(v))}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

export const seg = (s) => encodeValue(s);

export class Api {
  /**
   * @param {{fetch?: typeof fetch, onUnauthorized?: () => void}} [opts]
   */
  constructor(opts = {}) {
    this.fetch = opts.fetch ?? ((...a) => globalThis.fetch(...a));
    this.onUnauthorized = opts.onUnauthorized ?? (() => {});
  }

  /** The raw Response of a request; throws ApiError for anything but 2xx. */
  async request(method, path, {body, accept = "application/json"} = {}) {
    const init = {method, credentials: "same-origin", headers: {Accept: accept}, cache: "no-store"};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await this.fetch(path, init);
    } catch (exc) {
      throw new ApiError(0, "network", "The daemon cannot be reached.");
    }
    if (res.ok) return res;
    let code = `http_${res.status}`;
    let message = `${res.status} ${res.statusText || ""}`.trim();
    try {
      const err = (await res.json()).error;
      if (err && err.code) ({code, message} = err);
    } catch (_) { /* not JSON: keep the status line */ }
    if (res.status === 401) this.onUnauthorized();
    throw new ApiError(res.status, code, message);
  }

  async json(method, path, body) {
    const res = await this.request(method, path, {body});
    if (res.status === 204) return null;
    return res.json();
  }

  get(path) { return this.json("GET", path); }
  post(path, body) { return this.json("POST", path, body); }
  del(path) { return this.json("DELETE", path); }

  projects() { return this.get("/api/v1/projects"); }
  snapshotNow(id) { return this.post(`/api/v1/projects/${seg(id)}/snapshots`); }
  cancelSnapshot(id) { return this.del(`/api/v1/projects/${seg(id)}/runs/current`); }
  cancelOperation(run) { return this.del(`/api/v1/operations/${seg(run)}`); }
  operation(run) { return this.get(`/api/v1/operations/${seg(run)}`); }
  pause(id) { return this.post(`/api/v1/projects/${seg(id)}/pause`); }
  resume(id) { return this.post(`/api/v1/projects/${seg(id)}/resume`); }
  progress(id) { return this.get(`/api/v1/projects/${seg(id)}/progress`); }
  runs(id, limit, before) { return this.get(`/api/v1/projects/${seg(id)}/runs${query({limit, before})}`); }
  run(run) { return this.get(`/api/v1/runs/${seg(run)}`); }
  snapshots(id) { return this.get(`/api/v1/projects/${seg(id)}/snapshots`); }
  tree(id, snap, path) { return this.get(`/api/v1/projects/${seg(id)}/snapshots/${seg(snap)}/tree${query({path})}`); }
  fileUrl(id, snap, path) { return `/api/v1/projects/${seg(id)}/snapshots/${seg(snap)}/files${query({path})}`; }
  restore(id, body) { return this.post(`/api/v1/projects/${seg(id)}/restore`, body); }
  diff(id, from, to) { return this.get(`/api/v1/projects/${seg(id)}/diff${query({from, to, limit: 1000})}`); }
  check(readData = false) { return this.post("/api/v1/check", {read_data: readData}); }
  storeInfo() { return this.get("/api/v1/store"); }
  logout() { return this.json("POST", "/api/v1/logout"); }
  versions(id, path) { return this.get(`/api/v1/projects/${seg(id)}/versions${query({path})}`); }

  /** A run's events as NDJSON text (for the export download). */
  async runEventsNdjson(run) {
    const res = await this.request("GET", `/api/v1/runs/${seg(run)}/events`, {accept: "application/x-ndjson"});
    return res.text();
  }
}
