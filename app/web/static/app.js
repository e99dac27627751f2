/* The live page: follows /api/v1/memory/events/sse?snapshot=1 and shows the current state of the
 * keys that pass its filter beside every change as it happens.
 *
 * The stream starts with a snapshot (each current record as `event: snapshot`, then
 * `event: snapshot_end` with the log position they reflect) and goes on with the events after
 * it, so the state is exact from the first frame on. The browser reconnects by itself with
 * Last-Event-ID and the server replays what was missed; when it cannot, it sends a fresh snapshot
 * instead, which replaces the state and tells the page that the feed has a gap.
 *
 * Before a stream opens, the filter is checked with a plain request to the history route, which
 * applies the same rules: EventSource hides response bodies, so this is the only way to show the
 * server's own message for a bad pattern or a missing key.
 */
import { clock, eventItem, fillRecordRow, gapItem, recordRow } from "./render.js";

const API = "api/v1/memory/";
const SCOPES = ["workflow", "session", "actor", "global"];
const STREAM_ENDINGS = ["overflow", "shutdown", "lifetime"];
const RECENT_EVENTS = 20;
const FEED_LIMIT = 500;
const RETRY_BASE_MS = 1000;
const RETRY_CAP_MS = 30000;
const KEY_STORAGE = "memory-events.api-key";
const STATUS_TEXT = {
  idle: "disconnected",
  connecting: "connecting…",
  connected: "connected",
  reconnecting: "reconnecting…",
  error: "error",
};

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("filters"), scope: $("scope"), scopeId: $("scope_id"), patterns: $("patterns"),
  apiKey: $("api_key"), disconnect: $("disconnect"), status: $("status"),
  statusText: $("status-text"), error: $("error"), reset: $("reset"), resetText: $("reset-text"),
  dismiss: $("dismiss"), stateTable: $("state-table"), stateRows: $("state-rows"),
  stateCount: $("state-count"), stateEmpty: $("state-empty"), events: $("events"),
  empty: $("empty"), count: $("count"), clear: $("clear"), template: $("event-template"),
};

const state = {
  filters: {},    // what the page shows, fixed when Connect is pressed
  apiKey: "",     // in memory and this tab's sessionStorage only, never in the address bar
  source: null,   // the open EventSource, if any
  lastId: null,   // where a new stream resumes: the newest event applied, or a snapshot's end
  fresh: true,    // the feed is still to be filled with recent events
  retries: 0,
  retryTimer: 0,
  generation: 0,  // bumped by every (re)subscribe, so a late answer to an older one is dropped
  session: 0,     // bumped by every Connect, for answers that outlive a reconnect but not that
};

/** The current records that pass the filter, as the table shows them. */
const records = {
  entries: new Map(),  // identity → {record, row}
  order: [],           // the same entries, sorted as the table is
  pending: null,       // a snapshot being received: identity → record, until snapshot_end
  loaded: false,
};

class ServerError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `The server answered ${status}.`);
    this.status = status;
    this.code = body && body.error;
  }
}

// --- talking to the server ---------------------------------------------------------------

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, value);
  }
  return search.toString();
}

async function getJSON(route, params) {
  const headers = state.apiKey ? { "X-API-Key": state.apiKey } : {};
  const response = await fetch(`${API}${route}?${query(params)}`, { headers, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ServerError(response.status, body);
  return body;
}

// --- the stream --------------------------------------------------------------------------

/** Check the filter, then open the stream. */
async function subscribe() {
  const generation = ++state.generation;
  const stale = () => generation !== state.generation;
  closeSource();
  setStatus(state.lastId === null ? "connecting" : "reconnecting");
  try {
    await getJSON("events/history", { ...state.filters, limit: 1 });
  } catch (failure) {
    if (!stale()) failed(failure);
    return;
  }
  if (!stale()) openSource();
}

function openSource() {
  // Without a resume point the server starts with a snapshot; with one it replays after it,
  // or sends a fresh snapshot when it no longer can.
  const params = { ...state.filters, snapshot: 1, last_event_id: state.lastId,
                   api_key: state.apiKey };
  const source = new EventSource(`${API}events/sse?${query(params)}`);
  state.source = source;
  source.onopen = () => {
    state.retries = 0;
    records.pending = null; // a snapshot cut short by a reconnect starts again
    hideError();
    setStatus("connected");
  };
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Answered with something other than a stream: find out why, then try again later.
      closeSource();
      scheduleRetry();
    } else {
      setStatus("reconnecting"); // the browser retries by itself, sending Last-Event-ID
    }
  };
  source.addEventListener("snapshot", (message) => {
    const record = JSON.parse(message.data);
    if (records.pending === null) records.pending = new Map();
    records.pending.set(identity(record), record);
  });
  source.addEventListener("snapshot_end", (message) => {
    onSnapshotEnd(JSON.parse(message.data).last_id);
  });
  for (const ending of STREAM_ENDINGS) {
    source.addEventListener(ending, (message) => {
      // Closed before the browser reconnects by itself: it would resume after the last id it
      // saw, but last_id is where this stream stopped.
      closeSource();
      state.lastId = JSON.parse(message.data).last_id;
      setStatus("reconnecting");
      openSource();
    });
  }
}

function onEvent(event) {
  applyEvent(event);
  placeEvent(event);
  state.lastId = event.id;
}

/** The snapshot is complete: it becomes the state, and the stream goes on after ``lastId``. */
function onSnapshotEnd(lastId) {
  // A page that had a resume point asked to resume; a snapshot means the server could not.
  const missed = state.lastId !== null;
  replaceRecords(records.pending || new Map(), missed);
  records.pending = null;
  state.lastId = lastId;
  if (missed) showGap();
  if (state.fresh) {
    state.fresh = false;
    fillFeed(state.session);
  }
}

function closeSource() {
  if (state.source) state.source.close();
  state.source = null;
}

function scheduleRetry() {
  clearTimeout(state.retryTimer);
  const delay = Math.min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** state.retries);
  state.retries += 1;
  setStatus("reconnecting");
  state.retryTimer = setTimeout(subscribe, delay * (0.5 + Math.random() / 2));
}

/** A mistake (4xx) stops and says what the server said; anything else is retried. */
function failed(failure) {
  if (failure instanceof ServerError && failure.status < 500) {
    showError(failure.message, failure.code);
    setStatus("error");
    if (!records.loaded) ui.stateCount.textContent = "not loaded";
    if (failure.status === 401) ui.apiKey.focus();
    return;
  }
  const reason = failure instanceof ServerError ? failure.message
                                                : "The server cannot be reached.";
  showError(`${reason} Retrying…`);
  scheduleRetry();
}

function stop() {
  state.generation += 1;
  clearTimeout(state.retryTimer);
  closeSource();
  setStatus("idle");
  if (!records.loaded) ui.stateCount.textContent = "not loaded";
}

// --- the state ---------------------------------------------------------------------------

/** Records are told apart by scope, scope id and key. */
function identity(record) {
  return JSON.stringify([record.scope, record.scope_id, record.key]);
}

function compareText(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** By key, then scope (most specific first), then scope id. */
function compareRecords(a, b) {
  return compareText(a.key, b.key) ||
    SCOPES.indexOf(a.scope) - SCOPES.indexOf(b.scope) ||
    compareText(a.scope_id, b.scope_id);
}

/** Where ``record`` belongs in ``records.order``. */
function position(record) {
  let low = 0;
  let high = records.order.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (compareRecords(records.order[middle].record, record) < 0) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** The whole state from a snapshot; rows of keys that stay are kept and refilled in place. */
function replaceRecords(snapshot, markChanges) {
  const sorted = [...snapshot.values()].sort(compareRecords);
  const entries = new Map();
  const rows = document.createDocumentFragment();
  for (const record of sorted) {
    const id = identity(record);
    const kept = records.entries.get(id);
    const entry = { record, row: kept ? kept.row : recordRow() };
    fillRecordRow(entry.row, record);
    if (markChanges && (!kept || kept.record.version !== record.version)) flash(entry.row);
    entries.set(id, entry);
    rows.append(entry.row);
  }
  records.entries = entries;
  records.order = [...entries.values()];
  ui.stateRows.replaceChildren(rows);
  records.loaded = true;
  ui.stateTable.setAttribute("aria-busy", "false");
  updateStateCount();
}

/** A live change: a set puts the key's row (in place when it is shown), a delete removes it. */
function applyEvent(event) {
  const id = identity(event);
  const kept = records.entries.get(id);
  if (event.action === "delete") {
    if (!kept) return;
    records.entries.delete(id);
    records.order.splice(records.order.indexOf(kept), 1);
    kept.row.remove();
  } else {
    const record = {
      key: event.key, data: event.data, scope: event.scope, scope_id: event.scope_id,
      created_at: kept ? kept.record.created_at : event.timestamp,
      updated_at: event.timestamp, version: event.id,
    };
    if (kept) {
      kept.record = record;
    } else {
      const at = position(record);
      const entry = { record, row: recordRow() };
      records.order.splice(at, 0, entry);
      records.entries.set(id, entry);
      const next = records.order[at + 1];
      ui.stateRows.insertBefore(entry.row, next ? next.row : null);
    }
    const row = records.entries.get(id).row;
    fillRecordRow(row, record);
    flash(row);
  }
  updateStateCount();
}

/** Start the row's "just changed" highlight again, even if it is still running. */
function flash(row) {
  row.classList.remove("record--changed");
  void row.offsetWidth; // a style flush, so the animation restarts
  row.classList.add("record--changed");
}

function clearRecords() {
  records.entries = new Map();
  records.order = [];
  records.pending = null;
  records.loaded = false;
  ui.stateRows.replaceChildren();
  ui.stateTable.setAttribute("aria-busy", "true");
  updateStateCount();
}

function updateStateCount() {
  const count = records.order.length;
  ui.stateCount.textContent = !records.loaded ? "loading…"
    : `${count} ${count === 1 ? "key" : "keys"}`;
  ui.stateEmpty.hidden = !records.loaded || count > 0;
  ui.stateTable.hidden = records.loaded && count === 0;
}

// --- the feed ----------------------------------------------------------------------------

/** Ids are decimal strings of up to 63 bits: more digits is more, else compare as text. */
function compareIds(a, b) {
  return a.length - b.length || compareText(a, b);
}

/** Put an event in the feed, newest first, once. Events from the stream come in order and
 * go on top; recent history loaded after them goes below, without repeating any. The search
 * stops at a gap: ids on the other side of it may belong to a log that was replaced. */
function placeEvent(event) {
  let next = ui.events.firstElementChild;
  while (next && next.classList.contains("event")) {
    const order = compareIds(next.dataset.id, event.id);
    if (order === 0) return;
    if (order < 0) break;
    next = next.nextElementSibling;
  }
  ui.events.insertBefore(eventItem(ui.template, event), next);
  trimFeed();
  updateCount();
}

/** The most recent matching events, so the feed does not start empty. */
async function fillFeed(session) {
  try {
    const recent = await getJSON("events/history", { ...state.filters, limit: RECENT_EVENTS });
    if (session === state.session) recent.forEach(placeEvent);
  } catch (failure) {
    if (session === state.session) {
      showError(`Recent events could not be loaded: ${failure.message}`);
    }
  }
}

/** The stream could not resume: say so above, and mark the place in the feed. */
function showGap() {
  const now = clock(new Date().toISOString());
  ui.resetText.textContent = "The server could not resume from the last change this page had " +
    "seen (its log no longer holds it), so changes made in between are missing from the " +
    `events. The state is exact: it was reloaded from a fresh snapshot at ${now}.`;
  ui.reset.hidden = false;
  if (ui.events.firstElementChild && !ui.events.firstElementChild.classList.contains("gap")) {
    ui.events.prepend(gapItem(`Changes may be missing here (state reloaded at ${now}).`));
    trimFeed();
  }
}

function trimFeed() {
  while (ui.events.childElementCount > FEED_LIMIT) ui.events.lastElementChild.remove();
}

function clearFeed() {
  ui.events.replaceChildren();
  updateCount();
}

function updateCount() {
  const shown = ui.events.querySelectorAll(".event").length;
  ui.count.textContent = shown ? `${shown} shown` : "none yet";
  ui.empty.hidden = shown > 0;
}

// --- the page ----------------------------------------------------------------------------

function setStatus(name) {
  ui.status.dataset.state = name;
  ui.statusText.textContent = STATUS_TEXT[name];
  ui.disconnect.disabled = name === "idle" || name === "error";
}

function showError(message, code) {
  ui.error.textContent = code ? `${message} (${code})` : message;
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

function readForm() {
  const scope = ui.scope.value;
  return {
    scope,
    scope_id: scope === "global" ? "" : ui.scopeId.value.trim(),
    patterns: ui.patterns.value.trim(),
  };
}

/** The filter comes from the address, so a view can be bookmarked; the key from this tab. */
function fillForm() {
  const search = new URLSearchParams(location.search);
  ui.scope.value = SCOPES.includes(search.get("scope")) ? search.get("scope") : "";
  ui.scopeId.value = search.get("scope_id") || "";
  ui.patterns.value = search.get("patterns") || "";
  ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
  syncScopeId();
}

function syncScopeId() {
  ui.scopeId.disabled = ui.scope.value === "global";
}

/** Start over with the filter in the form. */
function connect() {
  state.filters = readForm();
  state.apiKey = ui.apiKey.value.trim();
  if (state.apiKey) sessionStorage.setItem(KEY_STORAGE, state.apiKey);
  else sessionStorage.removeItem(KEY_STORAGE);
  const search = query(state.filters);
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
  state.lastId = null;
  state.fresh = true;
  state.retries = 0;
  state.session += 1;
  clearTimeout(state.retryTimer);
  clearFeed();
  clearRecords();
  hideError();
  ui.reset.hidden = true;
  subscribe();
}

ui.form.addEventListener("submit", (submit) => {
  submit.preventDefault();
  connect();
});
ui.disconnect.addEventListener("click", stop);
ui.dismiss.addEventListener("click", () => { ui.reset.hidden = true; });
ui.scope.addEventListener("change", syncScopeId);
ui.clear.addEventListener("click", clearFeed);

fillForm();
connect();
