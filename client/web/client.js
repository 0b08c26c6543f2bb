/**
 * The session layer: logs in (with the password, or by resuming the saved
 * session), catches up with Sync after every (re)connection, confirms what
 * it received (receipts), sends messages with client ids and resends the
 * unacked ones after a reconnect, and turns pushes into store changes. The
 * views call its methods; it never touches the DOM.
 */

import { Connection, serverUrl } from "./connection.js";
import { Keyring } from "./keyring.js";
import { Requests, RequestError, Tag, decode, plainWords } from "./protocol.js";
import * as saved from "./session.js";
import { groupChatId, groupIdOf } from "./store.js";

/** Messages per History page. */
export const HISTORY_PAGE = 50;
/** Messages per Sync page (the protocol allows up to 1000). */
export const SYNC_PAGE = 500;
/** Sync pages fetched after one (re)connection; past that the rest is left to History. */
export const SYNC_PAGES_MAX = 20;
/** Characters in one message (the server's frame limit is 64 KiB; encryption adds a third). */
export const MESSAGE_CHARS_MAX = 16_000;
/** Messages waiting for their Ack at once. */
export const OUTBOX_MAX = 200;
/** A confirmation (Received) is sent this long after the last message that needs one. */
const CONFIRM_DELAY_MS = 300;
/** A Ping every so often finds a dead connection the browser has not noticed. */
const PING_INTERVAL_MS = 25_000;
/** The per-user state is saved at most this often. */
const SAVE_DELAY_MS = 250;

export class ChatClient {
  constructor(store) {
    this.store = store;
    this.connection = new Connection(serverUrl(), {
      open: () => this.connected(),
      frame: (text) => this.frame(text),
      closed: () => this.disconnected(),
      waiting: (delayMs) => this.waiting(delayMs),
    });
    this.requests = new Requests((object) => this.connection.send(object));
    this.keyring = new Keyring(this.requests);
    this.session = saved.loadSession();
    this.userState = null;
    this.loggedIn = false;
    /** client id → {fields, chatId} of messages sent and not acked */
    this.outbox = new Map();
    /** Pushed messages are opened (decrypted) one after another, in order. */
    this.inbound = Promise.resolve();
    this.confirmThrough = 0;
    this.confirmedThrough = 0;
    this.confirmTimer = null;
    this.saveTimer = null;
    this.pingTimer = null;
    /** Ids up to this were seen before the page loaded: not counted as unread again. */
    this.seenAtLoad = 0;
  }

  /** Starts: connects, and resumes the saved session if there is one. */
  boot() {
    if (this.session) {
      this.store.phase = "resuming";
      this.store.me = this.session.username;
    }
    this.store.changed();
    this.connection.start();
    // localStorage writes are synchronous: a pending save is flushed as the page goes.
    window.addEventListener("pagehide", () => this.saveNow());
  }

  // ----- connection --------------------------------------------------------

  connected() {
    this.store.retryAt = null;
    if (this.session) {
      this.store.connection = "connecting";
      this.store.changed();
      this.resume();
    } else {
      this.store.connection = "connected";
      this.store.changed();
    }
  }

  disconnected() {
    this.loggedIn = false;
    clearInterval(this.pingTimer);
    this.requests.failAll();
    this.store.connection = this.session ? "reconnecting" : "offline";
    this.store.changed();
  }

  waiting(delayMs) {
    this.store.retryAt = Date.now() + delayMs;
    this.store.connection = this.session ? "reconnecting" : "offline";
    this.store.changed();
  }

  /** Waits until the socket is open (for Register and a password Login). */
  async whenOpen() {
    for (let tries = 0; !this.connection.isOpen(); tries++) {
      if (tries > 100) throw new RequestError("disconnected");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  frame(text) {
    const frame = decode(text);
    if (!frame || this.requests.handle(frame)) return;
    this.push(frame);
  }

  // ----- accounts ----------------------------------------------------------

  /** Creates an account, then logs in with it. */
  async register(username, email, password) {
    await this.whenOpen();
    await this.requests.request(Tag.Register, { username, secret: password, email });
    await this.login(username, password);
  }

  /** Logs in with the password (a new session: this browser becomes a device). */
  async login(username, password) {
    await this.whenOpen();
    const reply = await this.requests.request(Tag.Login, { username, secret: password, receipts: true });
    this.session = { username: reply.username, sessionId: reply.session_id };
    saved.saveSession(reply.username, reply.session_id);
    await this.loggedInAs(reply.username);
  }

  /** Resumes the saved session on a fresh connection. */
  async resume() {
    const { username, sessionId } = this.session;
    try {
      const reply = await this.requests.request(Tag.Login, { username, session_id: sessionId, receipts: true });
      await this.loggedInAs(reply.username);
    } catch (error) {
      if (error.errorType === "invalid_session" || error.errorType === "invalid_credentials") {
        this.endSession(plainWords("invalid_session"));
      } else if (error.errorType !== "disconnected") {
        this.store.notify(`Could not resume your session: ${error.message}`);
        setTimeout(() => this.connection.restart(), 3_000);
      }
    }
  }

  /** Logs out: the server ends this session; this browser forgets it. */
  async logout() {
    try {
      await this.requests.request(Tag.Logout, {}, 5_000);
    } catch {
      // Offline: the session is forgotten here anyway (it expires on the server).
    }
    this.endSession(null);
    this.connection.restart();
  }

  endSession(why) {
    this.saveNow();
    this.userState = null;
    saved.clearSession();
    this.session = null;
    this.loggedIn = false;
    this.outbox.clear();
    this.keyring.stop();
    clearInterval(this.pingTimer);
    this.store.reset();
    this.store.connection = this.connection.isOpen() ? "connected" : "offline";
    if (why) this.store.notice = { text: why, kind: "error" };
    this.store.changed();
  }

  /** After any successful login: load the lists, catch up, resend, publish the key. */
  async loggedInAs(username) {
    const store = this.store;
    const firstLogin = store.phase !== "main" || store.me !== username;
    if (firstLogin) {
      store.reset();
      store.me = username;
      this.userState = saved.loadUserState(username);
      this.restoreUserState();
    }
    this.loggedIn = true;
    store.phase = "main";
    store.connection = "online";
    store.notice = null;
    store.changed();
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.ping(), PING_INTERVAL_MS);
    const lists = Promise.all([this.refreshDirectory(), this.refreshGroups()]);
    if (firstLogin) {
      // Messages pushed from now on wait in the inbound queue until the
      // keys are ready, so none is opened without them.
      const keys = this.keyring.start(username).catch(() => false);
      this.inbound = this.inbound.then(() => keys);
      store.e2eAvailable = await keys;
      if (!store.e2eAvailable) store.notify("End-to-end encryption is not available in this browser: messages are sent unencrypted.", "info");
    }
    await lists;
    await this.catchUp();
    this.resendOutbox();
    if (store.openChatId) await this.openChat(store.openChatId);
  }

  restoreUserState() {
    const state = this.userState;
    this.seenAtLoad = state.lastSeen ?? 0;
    this.confirmedThrough = 0;
    this.confirmThrough = 0;
    for (const [chatId, count] of Object.entries(state.unread)) {
      if (Number.isInteger(count) && count > 0) this.store.chat(chatId).unread = count;
    }
    for (const [name, through] of Object.entries(state.delivered)) {
      if (Number.isInteger(through)) this.store.delivered.set(name, through);
    }
    this.store.requests = [...state.requests];
    this.store.openChatId = state.openChat;
  }

  /** Saves the per-user state soon (unread counts, last id, …). */
  saveSoon() {
    if (!this.userState || this.saveTimer) return;
    this.saveTimer = setTimeout(() => this.saveNow(), SAVE_DELAY_MS);
  }

  /** Saves the per-user state now (also when the page goes away, so a reload loses nothing). */
  saveNow() {
    clearTimeout(this.saveTimer);
    this.saveTimer = null;
    const store = this.store;
    if (!this.userState || !store.me) return;
    const unread = {};
    for (const [id, chat] of store.chats) if (chat.unread) unread[id] = chat.unread;
    this.userState.unread = unread;
    this.userState.delivered = Object.fromEntries(store.delivered);
    this.userState.requests = store.requests;
    this.userState.openChat = store.openChatId;
    saved.saveUserState(store.me, this.userState);
  }

  async ping() {
    try {
      await this.requests.request(Tag.Ping, {}, 10_000);
    } catch (error) {
      if (error.errorType === "timeout") this.connection.restart();
    }
  }

  // ----- catching up, receiving -------------------------------------------

  /**
   * Sync from the last id seen on this browser, page by page (on a first
   * visit from the start, to list past conversations, none counted unread:
   * what was unread came as the offline queue).
   */
  async catchUp() {
    const firstVisit = this.userState.lastSeen === null;
    let since = this.userState.lastSeen ?? 0;
    for (let page = 0; page < SYNC_PAGES_MAX; page++) {
      const reply = await this.requests.request(Tag.Sync, { since, limit: SYNC_PAGE });
      await this.receive(reply.data, true, !firstVisit);
      if (!reply.has_more || reply.data.length === 0) break;
      since = reply.data[reply.data.length - 1].message_id;
    }
    // From now on whatever Sync finds arrived after this visit began.
    this.userState.lastSeen ??= 0;
    this.saveSoon();
  }

  /**
   * Takes delivered messages (pushes or a Sync page, `complete` = nothing
   * addressed to us below them is missing, so they may be confirmed;
   * `countUnread`: new ones from others count as unread).
   */
  receive(messages, complete, countUnread = complete) {
    const step = this.inbound.then(async () => {
      for (const message of messages) await this.take(message, complete, countUnread);
      this.store.changed();
      this.saveSoon();
    });
    this.inbound = step.catch(() => {});
    return step;
  }

  /** The chat a delivered message belongs to. */
  chatIdOf(message) {
    if (message.group_id != null) return groupChatId(message.group_id);
    return message.source_id === this.store.me ? message.dest_id : message.source_id;
  }

  async take(message, complete, countUnread) {
    const id = message.message_id;
    if (!Number.isInteger(id) || typeof message.source_id !== "string") return;
    if (complete) {
      this.userState.lastSeen = Math.max(this.userState.lastSeen ?? 0, id);
      this.confirmSoon(id);
    }
    const chat = this.store.chat(this.chatIdOf(message));
    if (chat.messages.has(id)) return;
    const opened = await this.keyring.open(message);
    const mine = message.source_id === this.store.me;
    const added = chat.add({
      id,
      source: message.source_id,
      dest: message.dest_id ?? null,
      time: Number(message.time) || 0,
      text: opened.text,
      kind: opened.kind,
      mine,
      status: "sent",
    });
    if (added && countUnread && !mine && id > this.seenAtLoad && this.store.openChatId !== chat.id) {
      chat.unread += 1;
    }
  }

  /** Confirms (Received) everything up to `id` soon, once per batch. */
  confirmSoon(id) {
    this.confirmThrough = Math.max(this.confirmThrough, id);
    if (this.confirmTimer) return;
    this.confirmTimer = setTimeout(() => {
      this.confirmTimer = null;
      if (this.loggedIn && this.confirmThrough > this.confirmedThrough) {
        if (this.requests.notify(Tag.Received, { through: this.confirmThrough })) {
          this.confirmedThrough = this.confirmThrough;
        }
      }
    }, CONFIRM_DELAY_MS);
  }

  /** A frame that answers no request of ours. */
  push(frame) {
    const store = this.store;
    switch (frame.tag) {
      case Tag.Message:
        this.receive([frame], true);
        return;
      case Tag.Presence: {
        // Presence goes only to mutual contacts: it also says the pair became mutual.
        const contact = store.contacts.get(frame.username);
        if (contact) {
          contact.online = Boolean(frame.online);
          contact.mutual = true;
        }
        break;
      }
      case Tag.ContactRequest:
        if (!store.contacts.has(frame.username) && !store.requests.includes(frame.username)) {
          store.requests.push(frame.username);
        }
        break;
      case Tag.GroupInfo:
        this.groupInfo(frame);
        break;
      case Tag.Delivered:
        store.delivered.set(frame.username, Math.max(store.delivered.get(frame.username) ?? 0, frame.through));
        break;
      case Tag.Error:
        store.notice = { text: plainWords(frame.error_type), kind: "error" };
        break;
      default:
        return;
    }
    store.changed();
    this.saveSoon();
  }

  // ----- contacts and groups ----------------------------------------------

  directory(reply) {
    const contacts = new Map();
    for (const entry of reply.data ?? []) {
      contacts.set(entry.username, {
        mutual: Boolean(entry.mutual),
        online: Boolean(entry.online),
        lastActivity: entry.last_activity ?? null,
      });
    }
    this.store.contacts = contacts;
    this.store.requests = this.store.requests.filter((name) => !contacts.has(name));
    this.store.changed();
    this.saveSoon();
  }

  async refreshDirectory() {
    this.directory(await this.requests.request(Tag.GetDirectory));
  }

  async refreshGroups() {
    this.groups(await this.requests.request(Tag.GetGroups));
  }

  groups(reply) {
    this.store.groups = new Map();
    for (const info of reply.data ?? []) this.groupInfo(info);
    const openGroup = this.store.openChatId && groupIdOf(this.store.openChatId);
    if (openGroup !== null && openGroup !== undefined && !this.store.groups.has(openGroup)) {
      this.store.openChatId = null;
    }
    this.store.changed();
  }

  groupInfo(info) {
    const members = Array.isArray(info.members) ? info.members : [];
    if (members.includes(this.store.me)) {
      this.store.groups.set(info.group_id, { name: String(info.name), members });
    } else {
      this.store.groups.delete(info.group_id);
    }
  }

  /** Adds a contact (or accepts a request). */
  async addContact(username) {
    this.directory(await this.requests.request(Tag.AddContact, { username }));
  }

  /** Removes a contact. */
  async removeContact(username) {
    this.directory(await this.requests.request(Tag.RemoveContact, { username }));
  }

  /** Dismisses a contact request without adding. */
  dismissRequest(username) {
    this.store.requests = this.store.requests.filter((name) => name !== username);
    this.store.changed();
    this.saveSoon();
  }

  /** Creates a group and opens it. */
  async createGroup(name, members) {
    const info = await this.requests.request(Tag.CreateGroup, { name, members });
    this.groupInfo(info);
    await this.openChat(groupChatId(info.group_id));
  }

  /** Adds members to a group. */
  async addMembers(groupId, members) {
    this.groupInfo(await this.requests.request(Tag.AddGroupMembers, { group_id: groupId, members }));
    this.store.changed();
  }

  /** Leaves a group. */
  async leaveGroup(groupId) {
    this.groups(await this.requests.request(Tag.LeaveGroup, { group_id: groupId }));
    this.store.chats.delete(groupChatId(groupId));
    if (this.store.openChatId === groupChatId(groupId)) this.store.openChatId = null;
    this.store.changed();
    this.saveSoon();
  }

  // ----- conversations -----------------------------------------------------

  /** Opens a conversation: clears its unread count and loads its latest page. */
  async openChat(chatId) {
    const store = this.store;
    store.openChatId = chatId;
    const chat = store.chat(chatId);
    chat.unread = 0;
    store.changed();
    this.saveSoon();
    if (chat.groupId === null && !store.encryption.has(chatId)) this.checkEncryption(chatId);
    if (!chat.historyLoaded && this.loggedIn) await this.loadOlder(chatId);
  }

  /** Closes the open conversation (the phone layout's "back"). */
  closeChat() {
    this.store.openChatId = null;
    this.store.changed();
    this.saveSoon();
  }

  async checkEncryption(peer) {
    this.store.encryption.set(peer, "unknown");
    const encrypted = await this.keyring.canEncrypt(peer);
    this.store.encryption.set(peer, encrypted ? "encrypted" : "plain");
    this.store.changed();
  }

  /** Loads the page of History before the oldest message shown. */
  async loadOlder(chatId) {
    const chat = this.store.chat(chatId);
    if (chat.loadingHistory || (chat.historyLoaded && !chat.hasMore)) return;
    chat.loadingHistory = true;
    this.store.changed();
    try {
      const before = chat.historyLoaded ? chat.oldestId() : null;
      const fields = { chat_id: chatId, limit: HISTORY_PAGE };
      if (before !== null) fields.before = before;
      const reply = await this.requests.request(Tag.GetHistory, fields);
      await this.receive(reply.data ?? [], false);
      chat.hasMore = Boolean(reply.has_more);
      chat.historyLoaded = true;
    } catch (error) {
      this.store.notify(`Could not load the conversation: ${error.message}`);
    } finally {
      chat.loadingHistory = false;
      this.store.changed();
    }
  }

  /** Sends `text` to the open conversation (encrypted 1:1 when both have keys). */
  async send(chatId, text) {
    if (text.length > MESSAGE_CHARS_MAX) {
      throw new RequestError("too_large");
    }
    if (this.outbox.size >= OUTBOX_MAX) throw new RequestError("server_busy");
    const store = this.store;
    const chat = store.chat(chatId);
    const clientId = crypto.randomUUID();
    const fields = { message_id: clientId };
    let kind = "plain";
    if (chat.groupId !== null) {
      Object.assign(fields, { group_id: chat.groupId, content: text, is_encrypted: false });
    } else {
      const sealed = store.e2eAvailable ? await this.keyring.sealFor(chatId, text).catch(() => null) : null;
      const { content, encrypted } = sealed ?? { content: text, encrypted: false };
      Object.assign(fields, { dest_id: chatId, content, is_encrypted: encrypted });
      kind = encrypted ? "e2e" : "plain";
      store.encryption.set(chatId, encrypted ? "encrypted" : "plain");
    }
    chat.pending.set(clientId, {
      clientId,
      id: null,
      source: store.me,
      dest: chat.groupId === null ? chatId : null,
      time: Math.floor(Date.now() / 1000),
      text,
      kind,
      mine: true,
      status: "sending",
    });
    chat.lastActivity = Math.floor(Date.now() / 1000);
    this.outbox.set(clientId, { fields, chatId });
    store.changed();
    this.transmit(clientId);
  }

  /** Sends (or resends, with the same client id) one outbox message. */
  async transmit(clientId) {
    const entry = this.outbox.get(clientId);
    if (!entry || !this.loggedIn) return;
    const chat = this.store.chat(entry.chatId);
    try {
      const ack = await this.requests.request(Tag.Message, entry.fields);
      this.outbox.delete(clientId);
      const message = chat.pending.get(clientId);
      chat.pending.delete(clientId);
      if (message && !chat.messages.has(ack.message_id)) {
        chat.add({ ...message, id: ack.message_id, status: "sent" });
      }
    } catch (error) {
      if (error.errorType === "disconnected" || error.errorType === "timeout") return; // resent after the reconnect
      this.outbox.delete(clientId);
      const message = chat.pending.get(clientId);
      if (message) {
        message.status = "failed";
        message.error = error.message;
      }
    }
    this.store.changed();
  }

  resendOutbox() {
    for (const clientId of this.outbox.keys()) this.transmit(clientId);
  }
}
