/**
 * What this browser remembers between visits, in localStorage: the session
 * (username and session id, so a reload resumes without the password; see
 * SECURITY.md "Web client") and, per user, the small state that makes a
 * reload seamless (the highest message id seen, unread counts, delivery
 * marks, pending contact requests, the open conversation). No message text
 * and no key is kept here.
 */

const SESSION_KEY = "chat.session";
const STATE_PREFIX = "chat.state.";
/** Pending contact requests remembered per user (older ones are dropped). */
export const REQUESTS_MAX = 100;
/** Conversations whose unread count or delivery mark is remembered per user. */
export const CHATS_MAX = 500;

function readJson(key) {
  try {
    return JSON.parse(localStorage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

function writeJson(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: the page still works, a reload forgets more.
  }
}

/** The saved session `{username, sessionId}`, or null. */
export function loadSession() {
  const saved = readJson(SESSION_KEY);
  if (typeof saved?.username !== "string" || typeof saved?.sessionId !== "string") return null;
  return saved;
}

/** Remembers the session so a reload resumes it. */
export function saveSession(username, sessionId) {
  writeJson(SESSION_KEY, { username, sessionId });
}

/** Forgets the session (logout, or the server ended it). */
export function clearSession() {
  localStorage.removeItem(SESSION_KEY);
}

/** The remembered state of `username` in this browser. */
export function loadUserState(username) {
  const saved = readJson(STATE_PREFIX + username) ?? {};
  const record = (value) => (value && typeof value === "object" && !Array.isArray(value) ? value : {});
  return {
    lastSeen: Number.isInteger(saved.lastSeen) ? saved.lastSeen : null,
    unread: record(saved.unread),
    delivered: record(saved.delivered),
    requests: Array.isArray(saved.requests) ? saved.requests.filter((name) => typeof name === "string") : [],
    openChat: typeof saved.openChat === "string" ? saved.openChat : null,
  };
}

/** Keeps only the last `max` entries of an object. */
function capped(object, max) {
  const entries = Object.entries(object);
  return Object.fromEntries(entries.slice(Math.max(0, entries.length - max)));
}

/** Saves the state of `username`, within the named bounds. */
export function saveUserState(username, state) {
  writeJson(STATE_PREFIX + username, {
    lastSeen: state.lastSeen,
    unread: capped(state.unread, CHATS_MAX),
    delivered: capped(state.delivered, CHATS_MAX),
    requests: state.requests.slice(-REQUESTS_MAX),
    openChat: state.openChat,
  });
}
