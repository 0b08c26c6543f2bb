/**
 * DOM helpers. Every piece of text reaches the page through `textContent`
 * (never `innerHTML`), so a message like `<img src=x onerror=alert(1)>` shows
 * those characters and runs nothing.
 */

/**
 * Creates an element: `el("button", {class: "link", type: "button"}, "Accept")`.
 * Attributes are set with setAttribute; children are nodes or strings (as text).
 */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return element;
}

/** The element with this id (throws if the page lacks it: a bug, not input). */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element;
}

/** Sets an element's text, only when it changed (keeps screen readers calm). */
export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/**
 * Makes `parent`'s children match `items` in order, reusing the element of
 * each key (so focus and scroll survive an update): `create(item)` builds a
 * new element, `update(element, item)` refreshes one.
 */
export function syncList(parent, items, keyOf, create, update) {
  const existing = new Map();
  for (const child of parent.children) existing.set(child.dataset.key, child);
  let cursor = parent.firstElementChild;
  for (const item of items) {
    const key = String(keyOf(item));
    let element = existing.get(key);
    if (element) {
      existing.delete(key);
    } else {
      element = create(item);
      element.dataset.key = key;
    }
    update(element, item);
    if (element !== cursor) {
      parent.insertBefore(element, cursor);
    } else {
      cursor = cursor.nextElementSibling;
    }
  }
  for (const stale of existing.values()) stale.remove();
}

/** "14:03" today, "3 Mar 14:03" on another day (local time). */
export function formatTime(unixSeconds) {
  const date = new Date(unixSeconds * 1000);
  const now = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === now.toDateString()) return time;
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}
