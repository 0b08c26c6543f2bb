/**
 * The side panel: incoming contact requests (accept or dismiss), the
 * conversations with presence dots and unread counts, the contacts (add,
 * remove), and the new-group form.
 */

import { byId, el, setText, syncList } from "./dom.js";
import { USERNAME_PATTERN, plainWords } from "./protocol.js";
import { groupIdOf } from "./store.js";

/** "ann, bob carol" → ["ann", "bob", "carol"] */
export function parseNames(text) {
  return [...new Set(text.split(/[\s,]+/).filter(Boolean))];
}

/** The presence of a 1:1 chat's user: "online", "offline" or "unknown" (not a mutual contact). */
function presenceOf(store, chatId) {
  const contact = store.contacts.get(chatId);
  if (!contact?.mutual) return "unknown";
  return contact.online ? "online" : "offline";
}

const PRESENCE_WORDS = { online: "online", offline: "offline", unknown: "" };

/** Wires the side panel; `run(promise)` reports failures in the banner. */
export function mountSidebar(store, client, run) {
  byId("add-contact-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byId("add-contact-name");
    const username = input.value.trim();
    if (!USERNAME_PATTERN.test(username)) {
      store.notify(plainWords("invalid_username"));
      return;
    }
    if (username === store.me) {
      store.notify("You cannot add yourself as a contact.");
      return;
    }
    run(client.addContact(username)).then((done) => {
      if (done) input.value = "";
    });
  });

  byId("group-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = byId("group-name").value.trim();
    const members = parseNames(byId("group-members").value);
    if (!name) {
      store.notify("Give the group a name.");
      return;
    }
    const bad = members.find((member) => !USERNAME_PATTERN.test(member));
    if (bad !== undefined) {
      store.notify(`“${bad}” is not a username. ${plainWords("invalid_username")}`);
      return;
    }
    run(client.createGroup(name, members)).then((done) => {
      if (!done) return;
      byId("group-name").value = "";
      byId("group-members").value = "";
      byId("composer-input").focus();
    });
  });

  return function render() {
    renderRequests(store, client, run);
    renderConversations(store, client);
    renderContacts(store, client, run);
  };
}

function renderRequests(store, client, run) {
  byId("requests-section").hidden = store.requests.length === 0;
  syncList(
    byId("requests"),
    store.requests,
    (name) => name,
    (name) => {
      const accept = el("button", { type: "button", class: "primary", "aria-label": `Accept ${name}` }, "Accept");
      accept.addEventListener("click", () => run(client.addContact(name)));
      const dismiss = el("button", { type: "button", "aria-label": `Dismiss the request from ${name}` }, "Dismiss");
      dismiss.addEventListener("click", () => client.dismissRequest(name));
      return el("li", { class: "request" }, el("span", { class: "name" }, `${name} wants to add you`), accept, dismiss);
    },
    () => {},
  );
}

function renderConversations(store, client) {
  const ids = store.conversations();
  byId("no-conversations").hidden = ids.length > 0;
  syncList(
    byId("conversations"),
    ids,
    (id) => id,
    (id) => {
      const button = el(
        "button",
        { type: "button", class: "conversation-button" },
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("span", { class: "name" }),
        el("span", { class: "badge" }),
      );
      button.addEventListener("click", () => {
        client.openChat(id);
        queueMicrotask(() => byId("composer-input").focus());
      });
      return el("li", {}, button);
    },
    (item, id) => {
      const button = item.firstElementChild;
      const chat = store.chats.get(id);
      const unread = chat?.unread ?? 0;
      const isGroup = groupIdOf(id) !== null;
      const presence = isGroup ? "group" : presenceOf(store, id);
      const title = store.titleOf(id);
      button.querySelector(".dot").dataset.presence = presence;
      setText(button.querySelector(".name"), title);
      const badge = button.querySelector(".badge");
      badge.hidden = unread === 0;
      setText(badge, String(unread));
      const words = [title, isGroup ? "group" : PRESENCE_WORDS[presence], unread ? `${unread} unread` : ""];
      button.setAttribute("aria-label", words.filter(Boolean).join(", "));
      if (store.openChatId === id) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    },
  );
}

function renderContacts(store, client, run) {
  syncList(
    byId("contacts"),
    [...store.contacts.keys()].sort(),
    (name) => name,
    (name) => {
      const open = el("button", { type: "button", class: "link", "aria-label": `Message ${name}` }, "Message");
      open.addEventListener("click", () => {
        client.openChat(name);
        queueMicrotask(() => byId("composer-input").focus());
      });
      const remove = el("button", { type: "button", class: "danger", "aria-label": `Remove ${name} from contacts` }, "Remove");
      remove.addEventListener("click", () => run(client.removeContact(name)));
      return el(
        "li",
        { class: "contact" },
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("span", { class: "name" }, name),
        el("span", { class: "state" }),
        open,
        remove,
      );
    },
    (item, name) => {
      const presence = presenceOf(store, name);
      item.querySelector(".dot").dataset.presence = presence;
      setText(item.querySelector(".state"), presence === "unknown" ? "waiting for them to add you" : presence);
    },
  );
}
