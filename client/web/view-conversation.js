/**
 * The open conversation: its title and whether it is end-to-end encrypted,
 * the group's members and tools, the messages (text only, with delivery
 * marks), paging back through History, and the composer (Enter sends).
 */

import { byId, el, formatTime, setText, syncList } from "./dom.js";
import { USERNAME_PATTERN, plainWords } from "./protocol.js";
import { parseNames } from "./view-sidebar.js";

/** Pixels from the top of the message list that load the previous page. */
const LOAD_OLDER_AT_PX = 40;
/** Pixels from the bottom that still count as "reading the newest" (stay pinned to the end). */
const PINNED_WITHIN_PX = 60;

/** Wires the conversation pane; `run(promise)` reports failures in the banner. */
export function mountConversation(store, client, run) {
  const input = byId("composer-input");
  const scroller = byId("scroller");
  let shownChat = null;

  const send = () => {
    const text = input.value;
    if (!text.trim() || !store.openChatId) return;
    input.value = "";
    run(client.send(store.openChatId, text)).then((done) => {
      if (!done) input.value = text;
    });
  };
  byId("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });

  byId("back").addEventListener("click", () => client.closeChat());
  byId("load-older").addEventListener("click", () => {
    if (store.openChatId) client.loadOlder(store.openChatId);
  });
  scroller.addEventListener("scroll", () => {
    const chat = store.openChatId && store.chats.get(store.openChatId);
    if (chat && chat.hasMore && chat.historyLoaded && scroller.scrollTop < LOAD_OLDER_AT_PX) {
      client.loadOlder(chat.id);
    }
  });

  byId("add-members-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const chat = store.chats.get(store.openChatId);
    const members = parseNames(byId("add-members").value);
    if (!chat || chat.groupId === null || members.length === 0) return;
    const bad = members.find((member) => !USERNAME_PATTERN.test(member));
    if (bad !== undefined) {
      store.notify(`“${bad}” is not a username. ${plainWords("invalid_username")}`);
      return;
    }
    run(client.addMembers(chat.groupId, members)).then((done) => {
      if (done) byId("add-members").value = "";
    });
  });
  byId("leave-group").addEventListener("click", () => {
    const chat = store.chats.get(store.openChatId);
    if (chat && chat.groupId !== null) run(client.leaveGroup(chat.groupId));
  });

  return function render() {
    const chat = store.openChatId ? store.chat(store.openChatId) : null;
    byId("app").dataset.view = chat ? "chat" : "list";
    byId("no-chat").hidden = chat !== null;
    byId("chat").hidden = chat === null;
    if (!chat) {
      shownChat = null;
      return;
    }
    const switched = shownChat !== chat.id;
    shownChat = chat.id;
    renderHeader(store, chat);
    const pinned = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < PINNED_WITHIN_PX;
    const firstBefore = byId("messages").firstElementChild;
    const offsetBefore = firstBefore ? firstBefore.offsetTop - scroller.scrollTop : 0;
    renderMessages(store, chat);
    const loadOlder = byId("load-older");
    loadOlder.hidden = !chat.hasMore;
    loadOlder.disabled = chat.loadingHistory;
    setText(loadOlder, chat.loadingHistory ? "Loading older messages…" : "Load older messages");
    if (switched || pinned) {
      scroller.scrollTop = scroller.scrollHeight;
    } else if (firstBefore && firstBefore.isConnected) {
      // Older messages came in above: keep what was on screen in place.
      scroller.scrollTop = firstBefore.offsetTop - offsetBefore;
    }
    setText(byId("composer-label"), chat.groupId === null ? `Message to ${chat.id}` : `Message to ${store.titleOf(chat.id)}`);
  };
}

function renderHeader(store, chat) {
  setText(byId("chat-title"), store.titleOf(chat.id));
  const security = byId("chat-security");
  const tools = byId("group-tools");
  if (chat.groupId !== null) {
    const group = store.groups.get(chat.groupId);
    tools.hidden = !group;
    setText(byId("group-member-list"), group ? `Members: ${group.members.join(", ")}` : "");
    security.dataset.state = "plain";
    setText(security, "Group messages are not end-to-end encrypted.");
    return;
  }
  tools.hidden = true;
  const state = store.e2eAvailable ? (store.encryption.get(chat.id) ?? "unknown") : "plain";
  security.dataset.state = state;
  setText(
    security,
    state === "encrypted"
      ? "End-to-end encrypted"
      : state === "unknown"
        ? "Checking encryption…"
        : store.e2eAvailable
          ? `Not encrypted: ${chat.id} has no encryption key yet.`
          : "Not encrypted: this browser cannot encrypt.",
  );
}

function statusWords(store, chat, message) {
  if (!message.mine) return "";
  if (message.status === "failed") return `Not sent: ${message.error ?? "refused"}`;
  if (message.status === "sending") return store.connection === "online" ? "Sending…" : "Waiting for the connection…";
  const through = chat.groupId === null ? store.delivered.get(chat.id) : undefined;
  return through !== undefined && message.id <= through ? "✓✓ Delivered" : "✓ Sent";
}

function renderMessages(store, chat) {
  syncList(
    byId("messages"),
    chat.ordered(),
    (message) => (message.id !== null ? `m${message.id}` : `c${message.clientId}`),
    (message) =>
      el(
        "li",
        { class: `message ${message.mine ? "mine" : "theirs"}`, "data-kind": message.kind },
        el(
          "p",
          { class: "meta" },
          el("span", { class: "sender" }, message.mine ? "You" : message.source),
          " ",
          el("time", { datetime: new Date(message.time * 1000).toISOString() }, formatTime(message.time)),
          message.kind === "e2e" ? el("span", { class: "lock", title: "End-to-end encrypted" }, " · encrypted") : null,
        ),
        el("p", { class: "text" }, message.text),
        el("p", { class: "status" }),
      ),
    (item, message) => {
      if (message.id !== null) item.dataset.id = String(message.id);
      item.dataset.status = message.status;
      const status = statusWords(store, chat, message);
      const statusElement = item.querySelector(".status");
      statusElement.hidden = status === "";
      setText(statusElement, status);
    },
  );
}
