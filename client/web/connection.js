/**
 * The WebSocket to the server this page came from, reopened with backoff when
 * it drops. It reports what happens (`open`, `frame`, `closed`, `waiting`)
 * and knows nothing of logins: the session layer decides what to do on each.
 */

/** First wait before reconnecting; doubled per failed attempt. */
export const RECONNECT_FIRST_MS = 500;
/** Longest wait between attempts (a server that is down for long is retried every 15 s). */
export const RECONNECT_MAX_MS = 15_000;
/** An attempt whose socket does not open within this is abandoned and retried. */
export const CONNECT_TIMEOUT_MS = 10_000;

/** The server's WebSocket address: the page's own host, ws or wss to match http or https. */
export function serverUrl(location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/`;
}

/** A self-reopening WebSocket. */
export class Connection {
  /**
   * `handlers`: `open()`, `frame(text)`, `closed(wasOpen)`,
   * `waiting(delayMs)` (a reconnect is scheduled).
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.socket = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.connectTimer = null;
    this.wanted = false;
  }

  /** Opens the connection (and keeps it open until `stop`). */
  start() {
    this.wanted = true;
    this.attempt = 0;
    if (!this.socket && !this.retryTimer) this.open();
  }

  /** Closes it for good (log out). */
  stop() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.socket) this.socket.close(1000);
  }

  /** Drops the current socket and reconnects (a dead link was noticed). */
  restart() {
    if (this.socket) this.socket.close(4000);
  }

  /** True while the socket is open. */
  isOpen() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Sends one JSON object; false if the socket is not open. */
  send(object) {
    if (!this.isOpen()) return false;
    this.socket.send(JSON.stringify(object));
    return true;
  }

  open() {
    this.retryTimer = null;
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.socket = socket;
    let wasOpen = false;
    this.connectTimer = setTimeout(() => socket.close(), CONNECT_TIMEOUT_MS);
    socket.addEventListener("open", () => {
      clearTimeout(this.connectTimer);
      wasOpen = true;
      this.attempt = 0;
      this.handlers.open();
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") this.handlers.frame(event.data);
    });
    socket.addEventListener("close", () => {
      clearTimeout(this.connectTimer);
      if (this.socket !== socket) return;
      this.socket = null;
      this.handlers.closed(wasOpen);
      if (this.wanted) this.scheduleRetry();
    });
  }

  scheduleRetry() {
    const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** this.attempt);
    // Full jitter on the upper half, so many tabs do not return in step.
    const delayMs = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.attempt = Math.min(this.attempt + 1, 16);
    this.handlers.waiting(delayMs);
    this.retryTimer = setTimeout(() => this.open(), delayMs);
  }
}
