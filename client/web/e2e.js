/**
 * End-to-end encryption of 1:1 messages, scheme 2 ("chat-e2e-v2"), with
 * WebCrypto only. The same scheme as `client/src/chat/e2e.rs` (whose module
 * doc and protocol/README.md "End-to-end encryption" describe it):
 *
 *   shared = X25519(own private key, peer public key)   (all zero: refused)
 *   key    = HKDF-SHA256(salt = "chat-e2e-v2", ikm = shared,
 *            info = "chat-e2e-v2 conversation key\n" ‖ lower ‖ "\n" ‖ higher)
 *   content = "v2:" ‖ base64(nonce ‖ AES-256-GCM(key, nonce, text,
 *            aad = "chat-e2e-v2\n" ‖ sender ‖ "\n" ‖ recipient))
 *
 * Scheme 1 (ChaCha20-Poly1305, content without a marker) is what older
 * `chat` versions sent; WebCrypto has no ChaCha20, so such a message shows
 * as undecryptable here. Keys are created in this browser, non-extractable,
 * and kept in IndexedDB (keystore.js).
 */

import { loadKeys, saveKeysOnce } from "./keystore.js";

/** HKDF salt and version label of the scheme. */
export const LABEL = "chat-e2e-v2";
/** What a scheme 2 `content` starts with. */
export const MARKER = "v2:";
/** Bytes of an AES-GCM nonce. */
const NONCE_BYTES = 12;
/** Bytes of the GCM tag. */
const TAG_BYTES = 16;
/** Bytes of an X25519 key. */
const KEY_BYTES = 32;

const utf8 = new TextEncoder();

/** Thrown when a message cannot be decrypted (shown as such, never as ciphertext). */
export class Undecryptable extends Error {}

/** Standard base64 (with padding) of bytes. */
export function toBase64(bytes) {
  let binary = "";
  for (const byte of new Uint8Array(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** Bytes of standard base64; throws Undecryptable on anything else. */
export function fromBase64(text) {
  try {
    return Uint8Array.from(atob(text), (char) => char.charCodeAt(0));
  } catch {
    throw new Undecryptable("not base64");
  }
}

/** Does this browser have X25519 in WebCrypto? */
export async function supported() {
  try {
    await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
    return true;
  } catch {
    return false;
  }
}

/**
 * This browser's key pair for `username`: the stored one, or a new one
 * (private half non-extractable) stored now. Resolves with
 * `{privateKey, publicKey, publicBase64}`.
 */
export async function loadOrCreateKeyPair(username) {
  const stored = await loadKeys(username);
  if (stored) return stored;
  const pair = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
  const raw = await crypto.subtle.exportKey("raw", pair.publicKey);
  return saveKeysOnce({
    username,
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
    publicBase64: toBase64(raw),
  });
}

/** A published key (base64 of 32 bytes) as a CryptoKey; throws if it is not one. */
export async function importPublicKey(base64) {
  const raw = fromBase64(base64.trim());
  if (raw.length !== KEY_BYTES) throw new Undecryptable("not an X25519 key");
  return crypto.subtle.importKey("raw", raw, { name: "X25519" }, true, []);
}

/** The bytes `a ‖ b ‖ …` of strings and byte arrays. */
function concat(...parts) {
  const arrays = parts.map((part) => (typeof part === "string" ? utf8.encode(part) : part));
  const out = new Uint8Array(arrays.reduce((sum, array) => sum + array.length, 0));
  let offset = 0;
  for (const array of arrays) {
    out.set(array, offset);
    offset += array.length;
  }
  return out;
}

/** Bytewise order of two usernames, as Rust's `<=` on str compares them. */
function sortedPair(me, peer) {
  const [a, b] = [utf8.encode(me), utf8.encode(peer)];
  for (let index = 0; index < Math.min(a.length, b.length); index++) {
    if (a[index] !== b[index]) return a[index] < b[index] ? [me, peer] : [peer, me];
  }
  return a.length <= b.length ? [me, peer] : [peer, me];
}

/**
 * The AES-256-GCM key (non-extractable) of the conversation between `me`
 * and `peer`. Rejects for a weak (low-order) peer key.
 */
export async function deriveConversationKey(privateKey, peerPublicKey, me, peer) {
  const shared = await crypto.subtle.deriveBits(
    { name: "X25519", public: peerPublicKey },
    privateKey,
    KEY_BYTES * 8,
  );
  if (new Uint8Array(shared).every((byte) => byte === 0)) {
    throw new Undecryptable("weak public key");
  }
  const [lower, higher] = sortedPair(me, peer);
  const ikm = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    {
      name: "HKDF",
      hash: "SHA-256",
      salt: utf8.encode(LABEL),
      info: concat(LABEL, " conversation key\n", lower, "\n", higher),
    },
    ikm,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

function associatedData(sender, recipient) {
  return concat(LABEL, "\n", sender, "\n", recipient);
}

/** Seals `text` from `sender` to `recipient` under a given nonce (the test vector uses a fixed one). */
export async function sealWithNonce(key, nonce, sender, recipient, text) {
  const sealed = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv: nonce, additionalData: associatedData(sender, recipient), tagLength: TAG_BYTES * 8 },
    key,
    utf8.encode(text),
  );
  return MARKER + toBase64(concat(nonce, new Uint8Array(sealed)));
}

/** Seals `text` under a fresh random nonce; returns the wire `content`. */
export function seal(key, sender, recipient, text) {
  return sealWithNonce(key, crypto.getRandomValues(new Uint8Array(NONCE_BYTES)), sender, recipient, text);
}

/** Opens a wire `content`; throws Undecryptable if it is not scheme 2 or fails authentication. */
export async function open(key, sender, recipient, content) {
  const trimmed = content.trim();
  if (!trimmed.startsWith(MARKER)) throw new Undecryptable("not scheme 2");
  const wire = fromBase64(trimmed.slice(MARKER.length));
  if (wire.length < NONCE_BYTES + TAG_BYTES) throw new Undecryptable("too short");
  let plain;
  try {
    plain = await crypto.subtle.decrypt(
      {
        name: "AES-GCM",
        iv: wire.slice(0, NONCE_BYTES),
        additionalData: associatedData(sender, recipient),
        tagLength: TAG_BYTES * 8,
      },
      key,
      wire.slice(NONCE_BYTES),
    );
  } catch {
    throw new Undecryptable("authentication failed");
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(plain);
  } catch {
    throw new Undecryptable("not UTF-8");
  }
}
