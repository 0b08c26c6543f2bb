/**
 * The parts of the page that are always there: which screen shows (log in,
 * resuming, the app), the connection state (always visible, with its words,
 * not only a colour), who is logged in, and the notice banner for errors in
 * plain words.
 */

import { byId, setText } from "./dom.js";

const CONNECTION_WORDS = {
  connecting: "Connecting…",
  online: "Online",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

/** Wires the status parts to the store and the client. */
export function mountStatus(store, client) {
  byId("logout").addEventListener("click", () => client.logout());
  byId("notice-close").addEventListener("click", () => store.notify(null));
  let ticker = null;

  return function render() {
    byId("auth").hidden = store.phase !== "auth";
    byId("resuming").hidden = store.phase !== "resuming";
    byId("app").hidden = store.phase !== "main";

    const connection = byId("connection");
    connection.dataset.state = store.connection;
    let words = CONNECTION_WORDS[store.connection] ?? store.connection;
    if ((store.connection === "reconnecting" || store.connection === "offline") && store.retryAt) {
      const seconds = Math.max(0, Math.ceil((store.retryAt - Date.now()) / 1000));
      words = seconds > 0 ? `${words.replace("…", "")} — retrying in ${seconds} s` : words;
      clearTimeout(ticker);
      ticker = seconds > 0 ? setTimeout(render, 1000) : null;
    }
    setText(byId("connection-text"), words);

    byId("account").hidden = store.phase !== "main";
    setText(byId("account-name"), store.me ?? "");

    const notice = byId("notice");
    notice.hidden = store.notice === null;
    if (store.notice) {
      notice.dataset.kind = store.notice.kind;
      setText(byId("notice-text"), store.notice.text);
    }
  };
}
