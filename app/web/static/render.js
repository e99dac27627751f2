/* Events and records as DOM nodes. Every piece of data goes in through textContent, so a key or
 * value that looks like markup is shown as the text it is.
 */

/** The event's metadata the feed shows, each where it is not empty, and what it is called. */
const METADATA = [["agent_id", "agent"], ["actor_id", "actor"], ["workflow_id", "workflow"]];

/** A feed entry built from the page's <template>: key, action (and why, for an expiry),
 * scope, time, who made the change, value, previous. */
export function eventItem(template, event) {
  const item = template.content.firstElementChild.cloneNode(true);
  const part = (selector) => item.querySelector(selector);
  const metadata = event.metadata || {};
  item.dataset.id = event.id;
  item.classList.add(`event--${event.action}`);
  part(".badge").textContent = event.action;
  if (metadata.reason) {
    part(".event__reason").textContent = metadata.reason;
    part(".event__reason").hidden = false;
  }
  part(".event__key").textContent = event.key;
  part(".event__scope").textContent = `${event.scope}/${event.scope_id}`;
  setTime(part(".event__time"), event.timestamp);
  part(".event__id").textContent = `#${event.id}`;
  const authors = part(".event__meta");
  for (const [field, label] of METADATA) {
    if (!metadata[field]) continue;
    const entry = authors.appendChild(document.createElement("div"));
    entry.className = "event__author";
    entry.appendChild(document.createElement("dt")).textContent = label;
    entry.appendChild(document.createElement("dd")).textContent = metadata[field];
  }
  authors.hidden = authors.childElementCount === 0;
  if (event.action === "delete") {
    absent(part(".value__new"), "deleted");
  } else {
    part(".value__new").textContent = JSON.stringify(event.data, null, 2);
  }
  if (event.previous_data === null) {
    absent(part(".value__old"), "null");
  } else {
    part(".value__old").textContent = JSON.stringify(event.previous_data, null, 2);
  }
  return item;
}

/** Where the feed lost changes: events below it came before a gap the server could not fill. */
export function gapItem(text) {
  const item = document.createElement("li");
  item.className = "gap";
  item.setAttribute("role", "separator");
  item.textContent = text;
  return item;
}

/** An empty row of the state table, to be filled (and refilled in place) by fillRecordRow. */
export function recordRow() {
  const row = document.createElement("tr");
  row.className = "record";
  row.setAttribute("role", "row");
  const key = row.appendChild(document.createElement("th"));
  key.scope = "row";
  key.setAttribute("role", "rowheader");
  key.className = "record__key";
  key.appendChild(document.createElement("code"));
  for (const [name, child] of [["scope"], ["value", "code"], ["updated", "time"]]) {
    const cell = row.appendChild(document.createElement("td"));
    cell.className = `record__${name}`;
    cell.setAttribute("role", "cell");
    if (child) cell.appendChild(document.createElement(child));
  }
  return row;
}

/** Show ``record`` in ``row``: key, scope, value (one line of JSON) and when it changed. */
export function fillRecordRow(row, record) {
  const part = (selector) => row.querySelector(selector);
  row.dataset.key = record.key;
  row.dataset.scope = record.scope;
  row.dataset.scopeId = record.scope_id;
  row.dataset.version = record.version;
  part(".record__key code").textContent = record.key;
  // A line may break after the slash, not inside a scope id.
  part(".record__scope").replaceChildren(`${record.scope}/`, document.createElement("wbr"),
                                         record.scope_id);
  part(".record__value code").textContent = JSON.stringify(record.data);
  const time = part(".record__updated time");
  setTime(time, record.updated_at);
  time.title = `${record.updated_at}, version ${record.version}`;
}

/** Local time to the millisecond, with the date when it is not today. */
export function clock(timestamp) {
  const moment = new Date(timestamp);
  if (Number.isNaN(moment.getTime())) return timestamp;
  const time = moment.toLocaleTimeString([], { hour12: false }) +
    `.${String(moment.getMilliseconds()).padStart(3, "0")}`;
  const today = moment.toDateString() === new Date().toDateString();
  return today ? time : `${moment.toLocaleDateString()} ${time}`;
}

function setTime(element, timestamp) {
  element.dateTime = timestamp;
  element.title = timestamp;
  element.textContent = clock(timestamp);
}

function absent(element, text) {
  element.textContent = text;
  element.classList.add("value__none");
}
