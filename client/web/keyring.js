/**
 * The keys end-to-end encryption uses on this page: the user's own key pair
 * (e2e.js, kept in IndexedDB), the peers' public keys as the server gives
 * them (GetKey, trusted on first use as `chat` does), and the conversation
 * keys derived from both. Opening and sealing messages goes through here.
 */

import * as e2e from "./e2e.js";
import { Tag } from "./protocol.js";

/** Peers whose public keys are remembered on this page (a page talks with far fewer). */
export const PEER_KEYS_MAX = 1_000;

/** Shown instead of a message that cannot be decrypted (never its ciphertext). */
export const UNDECRYPTABLE = "[encrypted message could not be decrypted]";

export class Keyring {
  /** `requests`: the protocol's Requests (for GetKey and PublishKey). */
  constructor(requests) {
    this.requests = requests;
    this.me = null;
    this.own = null;
    /** username → Promise<CryptoKey | null> (null: no usable key published) */
    this.peers = new Map();
    /** `${peer}\n${public key}` → Promise<CryptoKey> */
    this.conversations = new Map();
    /** peers whose key was fetched again after a failure (once per page) */
    this.refreshed = new Set();
  }

  /** Loads (or creates) `me`'s key pair and publishes it if the server holds another. Resolves false when this browser cannot do X25519. */
  async start(me) {
    this.me = me;
    this.peers.clear();
    this.conversations.clear();
    this.own = null;
    if (!(await e2e.supported())) return false;
    this.own = await e2e.loadOrCreateKeyPair(me);
    const published = await this.requests.request(Tag.GetKey, { username: me });
    if (published.public_key !== this.own.publicBase64) {
      await this.requests.request(Tag.PublishKey, { public_key: this.own.publicBase64 });
    }
    return true;
  }

  /** Forgets everything (logout). */
  stop() {
    this.me = null;
    this.own = null;
    this.peers.clear();
    this.conversations.clear();
  }

  /** The peer's public key (null if they published none usable). */
  peerKey(username) {
    if (username === this.me && this.own) return Promise.resolve(this.own.publicKey);
    let key = this.peers.get(username);
    if (!key) {
      if (this.peers.size >= PEER_KEYS_MAX) this.peers.clear();
      key = this.requests
        .request(Tag.GetKey, { username })
        .then((reply) => (reply.public_key ? e2e.importPublicKey(reply.public_key) : null))
        .catch((error) => {
          this.peers.delete(username); // ask again next time
          if (error instanceof e2e.Undecryptable) return null;
          throw error;
        });
      this.peers.set(username, key);
    }
    return key;
  }

  /** The conversation key with `peer`, or null when either side has no key. */
  async conversationKey(peer) {
    if (!this.own) return null;
    const peerKey = await this.peerKey(peer);
    if (!peerKey) return null;
    const raw = e2e.toBase64(await crypto.subtle.exportKey("raw", peerKey));
    const cacheKey = `${peer}\n${raw}`;
    let key = this.conversations.get(cacheKey);
    if (!key) {
      key = e2e.deriveConversationKey(this.own.privateKey, peerKey, this.me, peer);
      key.catch(() => this.conversations.delete(cacheKey));
      this.conversations.set(cacheKey, key);
    }
    return key;
  }

  /** Will a message to `peer` be encrypted? (Both sides have a key.) */
  async canEncrypt(peer) {
    try {
      return (await this.conversationKey(peer)) !== null;
    } catch {
      return false;
    }
  }

  /** The wire content for `text` to `peer`: `{content, encrypted}`. */
  async sealFor(peer, text) {
    const key = await this.conversationKey(peer);
    if (!key) return { content: text, encrypted: false };
    return { content: await e2e.seal(key, this.me, peer, text), encrypted: true };
  }

  /**
   * What a delivered message says: `{text, kind}` with kind "plain", "e2e"
   * or "undecryptable" (then `text` is UNDECRYPTABLE, never the ciphertext).
   */
  async open(message) {
    if (!message.is_encrypted) return { text: String(message.content), kind: "plain" };
    const undecryptable = { text: UNDECRYPTABLE, kind: "undecryptable" };
    const dest = message.dest_id;
    if (message.group_id != null || typeof dest !== "string" || !this.own) return undecryptable;
    const peer = message.source_id === this.me ? dest : dest === this.me ? message.source_id : null;
    if (peer === null) return undecryptable;
    for (;;) {
      try {
        const key = await this.conversationKey(peer);
        if (key) return { text: await e2e.open(key, message.source_id, dest, String(message.content)), kind: "e2e" };
      } catch {
        // fall through: maybe the peer has a new key
      }
      if (peer === this.me || this.refreshed.has(peer)) return undecryptable;
      this.refreshed.add(peer);
      this.peers.delete(peer);
    }
  }
}
