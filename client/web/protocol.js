/**
 * The wire protocol (version 1.1, /work/shared/PROTOCOL.md in the project's
 * terms: tags, request ids, replies matched by id, errors in plain words).
 * Knows nothing of sockets: `Requests` is given a `send(object)` function and
 * fed every decoded frame.
 */

/** Every tag, named once. */
export const Tag = Object.freeze({
  Register: 1, Login: 2, Logout: 3, GetDirectory: 4, GetHistory: 5,
  AddContact: 6, RemoveContact: 7, Ping: 8, PublishKey: 9, GetKey: 10,
  Message: 11, CreateGroup: 12, AddGroupMembers: 13, LeaveGroup: 14,
  GetGroups: 15, Sync: 16, Received: 17,
  SuccessRegister: 21, SuccessLogin: 22, SuccessLogout: 23, Ack: 24,
  History: 25, Directory: 26, Presence: 27, FailRegister: 28, FailLogin: 29,
  Error: 30, ContactRequest: 31, Pong: 32, Key: 33, GroupInfo: 34,
  Groups: 35, Synced: 36, Delivered: 37,
});

/** How long a request waits for its reply before it fails (a login hashes a password: allow for a busy server). */
export const REQUEST_TIMEOUT_MS = 20_000;
/** Requests waiting for replies at once; past this, new ones fail at once instead of piling up. */
export const PENDING_MAX = 512;

/** Usernames: 3–32 characters of A-Z a-z 0-9 _ . - (PROTOCOL.md). */
export const USERNAME_PATTERN = /^[A-Za-z0-9_.-]{3,32}$/;

/** What each `error_type` means, in plain words, for the person at the keyboard. */
const PLAIN_WORDS = {
  username_taken: "That username is already taken.",
  invalid_username: "Usernames are 3 to 32 letters, digits, dots, dashes or underscores.",
  invalid_email: "That email address does not look right.",
  weak_secret: "The password needs at least 8 characters.",
  rate_limited: "Too many attempts. Wait a few seconds and try again.",
  invalid_credentials: "Wrong username or password.",
  invalid_session: "Your session has ended. Please log in again.",
  already_logged_in: "You are already logged in.",
  bad_request: "The server did not understand that request.",
  unknown_tag: "The server does not know that request.",
  not_logged_in: "You are not logged in.",
  forbidden: "You are not allowed to do that.",
  unknown_user: "There is no user with that name.",
  unknown_group: "That group does not exist any more.",
  too_large: "That is too long to send.",
  server_busy: "The server is busy. Try again in a moment.",
  timeout: "The server did not answer in time.",
  disconnected: "The connection was lost before the server answered.",
  too_many_requests: "Too many requests are waiting for the server.",
};

/** A request the server refused (or that never got its answer). */
export class RequestError extends Error {
  constructor(errorType, detail = "") {
    super(plainWords(errorType));
    this.errorType = errorType;
    this.detail = detail;
  }
}

/** The plain-words explanation of an `error_type`. */
export function plainWords(errorType) {
  return PLAIN_WORDS[errorType] ?? `The server refused that (${String(errorType)}).`;
}

/** Decodes one text frame: an object with an integer `tag`, or null. */
export function decode(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return null;
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) return null;
  return Number.isInteger(frame.tag) ? frame : null;
}

/** Is this tag a refusal (FailRegister, FailLogin, Error)? */
function isRefusal(tag) {
  return tag === Tag.FailRegister || tag === Tag.FailLogin || tag === Tag.Error;
}

/**
 * Requests with ids, and their replies: `request(tag, fields)` sends
 * `{tag, request_id, ...fields}` and resolves with the reply carrying that id
 * (rejects with a RequestError for 28, 29 or 30). Pushes (frames without a
 * known id) are left to the caller.
 */
export class Requests {
  /** `send(object)` writes one frame, returning false when it could not. */
  constructor(send) {
    this.send = send;
    this.nextId = 1;
    this.pending = new Map();
  }

  /** Sends a request and waits for its reply. */
  request(tag, fields = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (this.pending.size >= PENDING_MAX) {
      return Promise.reject(new RequestError("too_many_requests"));
    }
    const requestId = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new RequestError("timeout"));
      }, timeoutMs);
      this.pending.set(requestId, { resolve, reject, timer });
      if (!this.send({ tag, request_id: requestId, ...fields })) {
        this.settle(requestId).reject(new RequestError("disconnected"));
      }
    });
  }

  /** Sends a frame that gets no reply (Received). */
  notify(tag, fields = {}) {
    return this.send({ tag, ...fields });
  }

  /** Takes a decoded frame; true if it answered a pending request. */
  handle(frame) {
    if (!this.pending.has(frame.request_id)) return false;
    const waiter = this.settle(frame.request_id);
    if (isRefusal(frame.tag)) {
      waiter.reject(new RequestError(frame.error_type, frame.detail ?? ""));
    } else {
      waiter.resolve(frame);
    }
    return true;
  }

  /** Fails every request still waiting (the connection closed). */
  failAll() {
    for (const requestId of [...this.pending.keys()]) {
      this.settle(requestId).reject(new RequestError("disconnected"));
    }
  }

  settle(requestId) {
    const waiter = this.pending.get(requestId);
    this.pending.delete(requestId);
    clearTimeout(waiter.timer);
    return waiter;
  }
}
