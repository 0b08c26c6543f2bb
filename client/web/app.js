/**
 * The page's entry point: builds the store and the session layer, mounts the
 * views, and re-renders them after every change. Modules, by concept:
 * connection.js (WebSocket, reconnect with backoff), protocol.js (tags,
 * request ids, errors in plain words), client.js (login, resume, Sync,
 * receipts, sending), e2e.js + keyring.js + keystore.js (end-to-end
 * encryption), session.js (what localStorage keeps), store.js (state),
 * view-*.js (the DOM, text only), dom.js (helpers).
 */

import { ChatClient } from "./client.js";
import { Store } from "./store.js";
import { mountAuth } from "./view-auth.js";
import { mountConversation } from "./view-conversation.js";
import { mountSidebar } from "./view-sidebar.js";
import { mountStatus } from "./view-status.js";

const store = new Store();
const client = new ChatClient(store);

/** Runs an action; a failure is explained in the banner. Resolves true if it succeeded. */
function run(promise) {
  return Promise.resolve(promise).then(
    () => {
      if (store.notice?.kind === "error") store.notify(null);
      return true;
    },
    (error) => {
      store.notify(error?.message || "Something went wrong.");
      return false;
    },
  );
}

const renders = [
  mountStatus(store, client),
  mountAuth(store, client, run),
  mountSidebar(store, client, run),
  mountConversation(store, client, run),
];
store.subscribe(() => {
  for (const render of renders) render();
});

client.boot();
