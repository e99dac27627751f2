/* Events and records as DOM nodes. Every piece of data goes in through textContent, so a key or
 * value that looks like markup is shown as the text it is.
 */

/** A feed entry built from the page's <template>: key, action, scope, time, value, previous. */
export function eventItem(template, event) {
  const item = template.content.firstElementChild.cloneNode(true);
  const part = (selector) => item.querySelector(selector);
  item.dataset.id = event.id;
  item.classList.add(`event--${event.action}`);
  part(".badge").textContent = event.action;
  part(".event__key").textContent = event.key;
  part(".event__scope").textContent = `${event.scope}/${event.scope_id}`;
  const time = part(".event__time");
  time.dateTime = event.timestamp;
  time.title = event.timestamp;
  time.textContent = clock(event.timestamp);
  part(".event__id").textContent = `#${event.id}`;
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

/** A row of the current-values table. */
export function recordRow(record) {
  const row = document.createElement("tr");
  const cells = [[record.key, "code"], [`${record.scope}/${record.scope_id}`],
                 [JSON.stringify(record.data), "code"], [clock(record.updated_at)]];
  for (const [text, tag] of cells) {
    const cell = row.appendChild(document.createElement("td"));
    (tag ? cell.appendChild(document.createElement(tag)) : cell).textContent = text;
  }
  return row;
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

function absent(element, text) {
  element.textContent = text;
  element.classList.add("value__none");
}
