/* The live page: follows /api/v1/memory/events/sse and shows each change as it happens.
 *
 * Before a stream opens, the filter is checked with a plain request to the history route, which
 * applies the same rules: EventSource hides response bodies, so this is the only way to show the
 * server's own message for a bad pattern or a missing key.
 */
import { keyMatcher } from "./globs.js";
import { clock, eventItem, recordRow } from "./render.js";

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
const RESET_TEXT = {
  history_trimmed: "The server's log no longer holds every change since the last event shown " +
    "here, so some changes may be missing below.",
  unknown_last_event_id: "The server does not know the last event this page saw (its log was " +
    "replaced), so some changes may be missing below.",
};

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("filters"), scope: $("scope"), scopeId: $("scope_id"), patterns: $("patterns"),
  apiKey: $("api_key"), disconnect: $("disconnect"), status: $("status"),
  statusText: $("status-text"), error: $("error"), reset: $("reset"), resetText: $("reset-text"),
  resync: $("resync"), snapshot: $("snapshot"), snapshotNote: $("snapshot-note"),
  snapshotRows: $("snapshot-rows"), events: $("events"), empty: $("empty"), count: $("count"),
  clear: $("clear"), template: $("event-template"),
};

const state = {
  filters: {},    // what the feed shows, fixed when Connect is pressed
  apiKey: "",     // in memory and this tab's sessionStorage only, never in the address bar
  source: null,   // the open EventSource, if any
  lastId: null,   // where a new stream resumes: the newest event shown, or the server's last_id
  fresh: true,    // the feed is still to be filled with recent events
  retries: 0,
  retryTimer: 0,
  generation: 0,  // bumped by every (re)subscribe, so a late answer to an older one is dropped
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

/** The newest id in the whole log: the resume point while no matching event exists yet. */
async function headId() {
  const newest = await getJSON("events/history", { limit: 1 });
  return newest.length ? newest[0].id : null;
}

// --- the stream --------------------------------------------------------------------------

/** Check the filter, fill an empty feed with recent events, then open the stream. */
async function subscribe() {
  const generation = ++state.generation;
  const stale = () => generation !== state.generation;
  closeSource();
  setStatus(state.fresh ? "connecting" : "reconnecting");
  try {
    const recent = await getJSON("events/history",
                                 { ...state.filters, limit: state.fresh ? RECENT_EVENTS : 1 });
    if (stale()) return;
    if (state.fresh) {
      state.fresh = false;
      recent.forEach(showEvent);
    }
    if (state.lastId === null) state.lastId = await headId();
  } catch (failure) {
    if (!stale()) failed(failure);
    return;
  }
  if (!stale()) openSource();
}

function openSource() {
  const params = { ...state.filters, last_event_id: state.lastId, api_key: state.apiKey };
  const source = new EventSource(`${API}events/sse?${query(params)}`);
  state.source = source;
  source.onopen = () => {
    state.retries = 0;
    hideError();
    setStatus("connected");
  };
  source.onmessage = (message) => showEvent(JSON.parse(message.data));
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Answered with something other than a stream: find out why, then try again later.
      closeSource();
      scheduleRetry();
    } else {
      setStatus("reconnecting"); // the browser retries by itself, sending Last-Event-ID
    }
  };
  source.addEventListener("reset", (message) => onReset(JSON.parse(message.data)));
  for (const ending of STREAM_ENDINGS) {
    source.addEventListener(ending, (message) => {
      // Closed before the browser reconnects by itself: it would resume after the last event
      // it saw, or from the server's head if it saw none, but last_id is where this one stopped.
      closeSource();
      state.lastId = JSON.parse(message.data).last_id;
      setStatus("reconnecting");
      openSource();
    });
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
}

// --- reset and resync --------------------------------------------------------------------

function onReset(data) {
  // The stream goes on live from here; the old id means nothing to the server any more.
  state.lastId = null;
  ui.resetText.textContent = `${RESET_TEXT[data.reason] || "The stream was reset."} ` +
    "Current values are reloaded from the store.";
  ui.reset.hidden = false;
  resync();
}

/** Current values from /memory/list, narrowed to the feed's filter. */
async function resync() {
  const { scope, scope_id: scopeId, patterns } = state.filters;
  const matches = keyMatcher(patterns);
  try {
    const lists = await Promise.all((scope ? [scope] : SCOPES).map(
      (name) => getJSON("list", { scope: name, scope_id: scopeId })));
    const records = lists.flat()
      .filter((record) => (!scopeId || record.scope_id === scopeId) && matches(record.key))
      .sort((a, b) => a.key.localeCompare(b.key) || a.scope.localeCompare(b.scope));
    ui.snapshotRows.replaceChildren(...records.map(recordRow));
    ui.snapshotNote.textContent = `${records.length} ${records.length === 1 ? "key" : "keys"} ` +
      `matching this filter, loaded at ${clock(new Date().toISOString())}.`;
    ui.snapshot.hidden = false;
  } catch (failure) {
    showError(`Resync failed: ${failure.message}`);
  }
}

// --- the page ----------------------------------------------------------------------------

function showEvent(event) {
  ui.events.prepend(eventItem(ui.template, event));
  while (ui.events.childElementCount > FEED_LIMIT) ui.events.lastElementChild.remove();
  state.lastId = event.id;
  updateCount();
}

function clearFeed() {
  ui.events.replaceChildren();
  updateCount();
}

function updateCount() {
  const shown = ui.events.childElementCount;
  ui.count.textContent = shown ? `${shown} shown` : "none yet";
  ui.empty.hidden = shown > 0;
}

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
  clearTimeout(state.retryTimer);
  clearFeed();
  hideError();
  ui.reset.hidden = true;
  ui.snapshot.hidden = true;
  subscribe();
}

ui.form.addEventListener("submit", (submit) => {
  submit.preventDefault();
  connect();
});
ui.disconnect.addEventListener("click", stop);
ui.resync.addEventListener("click", resync);
ui.scope.addEventListener("change", syncScopeId);
ui.clear.addEventListener("click", clearFeed);

fillForm();
connect();
