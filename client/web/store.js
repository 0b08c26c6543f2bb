/**
 * The state the views show, in one place: who is logged in, the connection,
 * contacts and their presence, contact requests, groups, and conversations
 * with their messages and unread counts. Views subscribe and re-render;
 * only the session layer (client.js) changes it, then calls `changed()`.
 */

/** Messages kept in memory per conversation; older ones are dropped and can be paged back in with History. */
export const MESSAGES_PER_CHAT_MAX = 2_000;

/** The chat id of a group (as GetHistory's `chat_id` names it). */
export function groupChatId(groupId) {
  return `g:${groupId}`;
}

/** The group id of a group chat id, or null for a 1:1 chat. */
export function groupIdOf(chatId) {
  return chatId.startsWith("g:") ? Number(chatId.slice(2)) : null;
}

/** One conversation: a 1:1 chat (its id is the other user's name) or a group chat (`g:<id>`). */
export class Chat {
  constructor(id) {
    this.id = id;
    this.groupId = groupIdOf(id);
    /** Stored messages by server id. */
    this.messages = new Map();
    /** Messages sent from here and not acked yet, by client id. */
    this.pending = new Map();
    this.unread = 0;
    this.lastActivity = 0;
    this.hasMore = true;
    this.historyLoaded = false;
    this.loadingHistory = false;
  }

  /** Messages oldest first, unacked ones last. */
  ordered() {
    const stored = [...this.messages.values()].sort((a, b) => a.id - b.id);
    return stored.concat([...this.pending.values()]);
  }

  /** The oldest stored id (History pages before it), or null. */
  oldestId() {
    let oldest = null;
    for (const id of this.messages.keys()) if (oldest === null || id < oldest) oldest = id;
    return oldest;
  }

  /** Adds a stored message; false if it was there already. */
  add(message) {
    if (this.messages.has(message.id)) return false;
    this.messages.set(message.id, message);
    this.lastActivity = Math.max(this.lastActivity, message.time);
    if (this.messages.size > MESSAGES_PER_CHAT_MAX) {
      this.messages.delete(this.oldestId());
      this.hasMore = true;
    }
    return true;
  }
}

/** Everything the views show. */
export class Store {
  constructor() {
    this.listeners = new Set();
    this.scheduled = false;
    this.reset();
  }

  /** Back to logged out. */
  reset() {
    /** "auth" (log in / register), "resuming", or "main". */
    this.phase = "auth";
    this.me = null;
    /** "connecting", "online", "connected" (not logged in), "reconnecting", "offline". */
    this.connection = "connecting";
    this.retryAt = null;
    /** username → {mutual, online, lastActivity} */
    this.contacts = new Map();
    /** usernames who asked to add us */
    this.requests = [];
    /** group id → {name, members} */
    this.groups = new Map();
    /** chat id → Chat */
    this.chats = new Map();
    this.openChatId = null;
    /** username → highest id of our messages their devices confirmed */
    this.delivered = new Map();
    /** username → "encrypted" | "plain" | "unknown": what sending to them does */
    this.encryption = new Map();
    this.e2eAvailable = false;
    /** {text, kind: "error" | "info"} shown in the banner, or null */
    this.notice = null;
  }

  /** The conversation `chatId`, created when first needed. */
  chat(chatId) {
    let chat = this.chats.get(chatId);
    if (!chat) {
      chat = new Chat(chatId);
      this.chats.set(chatId, chat);
    }
    return chat;
  }

  /** A conversation's title: the user's name, or `# group name`. */
  titleOf(chatId) {
    const groupId = groupIdOf(chatId);
    if (groupId === null) return chatId;
    return `# ${this.groups.get(groupId)?.name ?? `group ${groupId}`}`;
  }

  /** Every conversation to list: contacts, groups, and whoever wrote; newest activity first. */
  conversations() {
    const ids = new Set([...this.contacts.keys()]);
    for (const groupId of this.groups.keys()) ids.add(groupChatId(groupId));
    for (const [id, chat] of this.chats) {
      if (chat.groupId === null || this.groups.has(chat.groupId)) {
        if (chat.messages.size || chat.pending.size || chat.unread) ids.add(id);
      }
    }
    const activity = (id) => this.chats.get(id)?.lastActivity ?? 0;
    return [...ids].sort((a, b) => activity(b) - activity(a) || a.localeCompare(b));
  }

  /** Shows a notice in the banner (null clears it). */
  notify(text, kind = "error") {
    this.notice = text === null ? null : { text, kind };
    this.changed();
  }

  /** Calls `listener(store)` after every batch of changes. */
  subscribe(listener) {
    this.listeners.add(listener);
  }

  /** Schedules one re-render for everything changed in this turn. */
  changed() {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      for (const listener of this.listeners) listener(this);
    });
  }
}
