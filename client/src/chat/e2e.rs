//! End-to-end encryption of 1:1 messages: the pure cryptography, no I/O.
//!
//! Each user has one static X25519 key pair; the public half is published
//! with PublishKey as standard base64 of its 32 bytes. Two users derive the
//! same *conversation key* from their own secret and the other's public key:
//!
//! ```text
//! shared = X25519(own secret, peer public)          (32 bytes; rejected if all zero)
//! key    = HKDF-SHA256(salt = LABEL,
//!                      ikm  = shared,
//!                      info = LABEL ‖ " conversation key\n" ‖ lower ‖ "\n" ‖ higher)
//! ```
//!
//! where `lower` and `higher` are the two usernames sorted bytewise (the same
//! name twice for a note to oneself), so both sides compute the same 32-byte
//! key. A message is sealed under a fresh random 96-bit nonce, with the
//! associated data `LABEL ‖ "\n" ‖ sender ‖ "\n" ‖ recipient`. Binding the
//! sender and recipient means the server cannot present alice's message to
//! bob as bob's message to alice.
//!
//! Two schemes share that shape and the key pair, and differ in the label,
//! the cipher and a marker at the start of the wire `content`:
//!
//! | scheme | LABEL | cipher | `content` |
//! |---|---|---|---|
//! | 1 | `chat-e2e-v1` | ChaCha20-Poly1305 | base64(nonce ‖ ciphertext ‖ tag) |
//! | 2 | `chat-e2e-v2` | AES-256-GCM | `v2:` ‖ base64(nonce ‖ ciphertext ‖ tag) |
//!
//! Scheme 2 exists because browsers' WebCrypto has X25519, HKDF and
//! AES-GCM but not ChaCha20-Poly1305, so the web client (`client/web/e2e.js`)
//! can speak only it. [`ConversationKey::seal`] writes scheme 2;
//! [`ConversationKey::open`] reads both, choosing by the marker (base64
//! never contains `:`, so a scheme 1 `content` never starts with `v2:`).
//! Each scheme derives its own key (the label is the HKDF salt), so the two
//! never share a key under two ciphers.
//!
//! Random nonces are safe here: with 96 bits, a collision under one key is
//! negligible below about 2^32 messages per pair of users.

use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

/// Bytes of a nonce, in both schemes (96 bits).
const NONCE_BYTES: usize = 12;
/// Bytes of the authentication tag after the ciphertext, in both schemes.
const TAG_BYTES: usize = 16;
/// Bytes of an X25519 key (public or secret).
pub const KEY_BYTES: usize = 32;

/// The two wire schemes; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    /// `chat-e2e-v1`: ChaCha20-Poly1305, no marker (read only).
    V1,
    /// `chat-e2e-v2`: AES-256-GCM, marker `v2:` (written and read).
    V2,
}

impl Scheme {
    /// The scheme every new message is sealed with.
    const SENT: Scheme = Scheme::V2;

    /// HKDF salt and version label; a future scheme gets a new one, so old
    /// and new never mix silently.
    fn label(self) -> &'static [u8] {
        match self {
            Scheme::V1 => b"chat-e2e-v1",
            Scheme::V2 => b"chat-e2e-v2",
        }
    }

    /// What the wire `content` starts with.
    fn marker(self) -> &'static str {
        match self {
            Scheme::V1 => "",
            Scheme::V2 => "v2:",
        }
    }

    /// The scheme of a wire `content`, and its base64 part.
    fn of(content: &str) -> (Scheme, &str) {
        match content.trim().strip_prefix(Scheme::V2.marker()) {
            Some(rest) => (Scheme::V2, rest),
            None => (Scheme::V1, content.trim()),
        }
    }
}

/// One user's key pair.
#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret half.
        f.debug_struct("KeyPair")
            .field("public", &encode_public_key(&self.public))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> KeyPair {
        KeyPair::from_secret_bytes(StaticSecret::random().to_bytes())
    }

    /// The key pair whose secret half is `bytes`.
    pub fn from_secret_bytes(bytes: [u8; KEY_BYTES]) -> KeyPair {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    /// The secret half, for the key file only.
    pub fn secret_bytes(&self) -> [u8; KEY_BYTES] {
        self.secret.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The public half as published: base64 of its 32 bytes.
    pub fn public_base64(&self) -> String {
        encode_public_key(&self.public)
    }

    /// The key of the conversation between `me` (this key pair's owner) and
    /// `peer`, whose public key is `peer_public` (for both schemes).
    pub fn conversation_key(
        &self,
        me: &str,
        peer: &str,
        peer_public: &PublicKey,
    ) -> Result<ConversationKey, CryptoError> {
        let shared = self.secret.diffie_hellman(peer_public);
        if !shared.was_contributory() {
            // A low-order "public key" forces a known shared secret.
            return Err(CryptoError::BadPublicKey);
        }
        let (lower, higher) = if me <= peer { (me, peer) } else { (peer, me) };
        let derive = |scheme: Scheme| {
            let label = scheme.label();
            let mut info = Vec::with_capacity(64);
            info.extend_from_slice(label);
            info.extend_from_slice(b" conversation key\n");
            info.extend_from_slice(lower.as_bytes());
            info.push(b'\n');
            info.extend_from_slice(higher.as_bytes());
            let mut key = [0u8; KEY_BYTES];
            Hkdf::<Sha256>::new(Some(label), shared.as_bytes())
                .expand(&info, &mut key)
                .map(|()| key)
                .map_err(|_| CryptoError::BadPublicKey)
        };
        Ok(ConversationKey {
            v1: derive(Scheme::V1)?,
            v2: derive(Scheme::V2)?,
        })
    }
}

/// Why something could not be encrypted or decrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// The published key is not 32 bytes of base64, or is a weak point.
    BadPublicKey,
    /// The content is not base64, is too short, or fails authentication
    /// (tampered, or sealed under another key): show it as undecryptable.
    Undecryptable,
    /// The system's random source failed (no nonce, so nothing is sent).
    NoRandomness,
}

/// The public key as published (base64 of the 32 bytes).
pub fn encode_public_key(public: &PublicKey) -> String {
    BASE64.encode(public.as_bytes())
}

/// A published key back to a [`PublicKey`].
pub fn decode_public_key(text: &str) -> Result<PublicKey, CryptoError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|_| CryptoError::BadPublicKey)?;
    let bytes: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| CryptoError::BadPublicKey)?;
    Ok(PublicKey::from(bytes))
}

/// The symmetric keys two users share for their conversation, one per
/// scheme.
#[derive(Clone)]
pub struct ConversationKey {
    v1: [u8; KEY_BYTES],
    v2: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConversationKey(..)")
    }
}

impl ConversationKey {
    /// Encrypts `plaintext` sent by `sender` to `recipient` with the
    /// current scheme (2); returns the wire `content`
    /// (`v2:` ‖ base64 of nonce ‖ ciphertext ‖ tag).
    pub fn seal(
        &self,
        sender: &str,
        recipient: &str,
        plaintext: &str,
    ) -> Result<String, CryptoError> {
        let nonce = Nonce::try_generate().map_err(|_| CryptoError::NoRandomness)?;
        let nonce: [u8; NONCE_BYTES] = nonce.into();
        self.seal_with_nonce(Scheme::SENT, &nonce, sender, recipient, plaintext)
    }

    /// [`ConversationKey::seal`] with a chosen scheme and nonce: the one
    /// place that encrypts (and, in tests, the fixed test vector).
    fn seal_with_nonce(
        &self,
        scheme: Scheme,
        nonce: &[u8; NONCE_BYTES],
        sender: &str,
        recipient: &str,
        plaintext: &str,
    ) -> Result<String, CryptoError> {
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: &associated_data(scheme, sender, recipient),
        };
        // Encryption fails only for absurd lengths (about 64 GiB or more).
        let sealed = match scheme {
            Scheme::V1 => ChaCha20Poly1305::new(&self.v1.into()).encrypt(&(*nonce).into(), payload),
            Scheme::V2 => Aes256Gcm::new(&self.v2.into()).encrypt(&(*nonce).into(), payload),
        }
        .map_err(|_| CryptoError::Undecryptable)?;
        let mut wire = Vec::with_capacity(NONCE_BYTES + sealed.len());
        wire.extend_from_slice(nonce);
        wire.extend_from_slice(&sealed);
        Ok(format!("{}{}", scheme.marker(), BASE64.encode(wire)))
    }

    /// Decrypts the wire `content` of a message from `sender` to
    /// `recipient`, in whichever scheme its marker names.
    pub fn open(
        &self,
        sender: &str,
        recipient: &str,
        content: &str,
    ) -> Result<String, CryptoError> {
        let (scheme, encoded) = Scheme::of(content);
        let wire = BASE64
            .decode(encoded)
            .map_err(|_| CryptoError::Undecryptable)?;
        if wire.len() < NONCE_BYTES + TAG_BYTES {
            return Err(CryptoError::Undecryptable);
        }
        let (nonce, sealed) = wire.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| CryptoError::Undecryptable)?;
        let payload = Payload {
            msg: sealed,
            aad: &associated_data(scheme, sender, recipient),
        };
        let plaintext = match scheme {
            Scheme::V1 => ChaCha20Poly1305::new(&self.v1.into()).decrypt(&nonce.into(), payload),
            Scheme::V2 => Aes256Gcm::new(&self.v2.into()).decrypt(&nonce.into(), payload),
        }
        .map_err(|_| CryptoError::Undecryptable)?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::Undecryptable)
    }
}

fn associated_data(scheme: Scheme, sender: &str, recipient: &str) -> Vec<u8> {
    let label = scheme.label();
    let mut aad = Vec::with_capacity(label.len() + sender.len() + recipient.len() + 2);
    aad.extend_from_slice(label);
    aad.push(b'\n');
    aad.extend_from_slice(sender.as_bytes());
    aad.push(b'\n');
    aad.extend_from_slice(recipient.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_keys() -> (KeyPair, KeyPair, ConversationKey, ConversationKey) {
        let alice = KeyPair::generate();
        let bob = KeyPair::generate();
        let at_alice = alice
            .conversation_key("alice", "bob", bob.public())
            .unwrap();
        let at_bob = bob
            .conversation_key("bob", "alice", alice.public())
            .unwrap();
        (alice, bob, at_alice, at_bob)
    }

    #[test]
    fn both_sides_derive_the_same_key() {
        let (_, _, at_alice, at_bob) = pair_keys();
        assert_eq!(at_alice.v1, at_bob.v1);
        assert_eq!(at_alice.v2, at_bob.v2);
        assert_ne!(at_alice.v1, at_alice.v2);
        // Other names give another key, even from the same shared secret.
        let alice = KeyPair::from_secret_bytes([7; KEY_BYTES]);
        let bob = KeyPair::from_secret_bytes([9; KEY_BYTES]);
        let named = alice
            .conversation_key("alice", "bob", bob.public())
            .unwrap();
        let renamed = alice
            .conversation_key("alice", "carol", bob.public())
            .unwrap();
        assert_ne!(named.v2, renamed.v2);
    }

    #[test]
    fn a_message_round_trips_and_the_sender_can_read_it_too() {
        let (_, _, at_alice, at_bob) = pair_keys();
        let content = at_alice.seal("alice", "bob", "lunch at noon? ✓").unwrap();
        assert!(!content.contains("lunch"));
        assert_eq!(
            at_bob.open("alice", "bob", &content).unwrap(),
            "lunch at noon? ✓"
        );
        assert_eq!(
            at_alice.open("alice", "bob", &content).unwrap(),
            "lunch at noon? ✓"
        );
        // Fresh nonce each time: the same text never looks the same.
        assert_ne!(
            content,
            at_alice.seal("alice", "bob", "lunch at noon? ✓").unwrap()
        );
    }

    #[test]
    fn tampering_is_detected() {
        let (_, _, at_alice, at_bob) = pair_keys();
        let content = at_alice.seal("alice", "bob", "pay 10 euros").unwrap();
        let mut wire = BASE64.decode(content.strip_prefix("v2:").unwrap()).unwrap();
        for index in [0, NONCE_BYTES, wire.len() - 1] {
            wire[index] ^= 0x01;
            let tampered = format!("v2:{}", BASE64.encode(&wire));
            assert_eq!(
                at_bob.open("alice", "bob", &tampered),
                Err(CryptoError::Undecryptable)
            );
            wire[index] ^= 0x01;
        }
        // The direction is authenticated too.
        assert_eq!(
            at_bob.open("bob", "alice", &content),
            Err(CryptoError::Undecryptable)
        );
        // Content sealed in one scheme is not read as the other.
        let as_v1 = content.strip_prefix("v2:").unwrap();
        assert_eq!(
            at_bob.open("alice", "bob", as_v1),
            Err(CryptoError::Undecryptable)
        );
        for garbage in ["", "not base64!", "AAAA", "v2:", "v2:AAAA", "v3:AAAA"] {
            assert_eq!(
                at_bob.open("alice", "bob", garbage),
                Err(CryptoError::Undecryptable)
            );
        }
    }

    #[test]
    fn a_wrong_key_fails() {
        let (_, bob, at_alice, _) = pair_keys();
        let mallory = KeyPair::generate();
        let content = at_alice.seal("alice", "bob", "for bob only").unwrap();
        let at_mallory = mallory
            .conversation_key("bob", "alice", bob.public())
            .unwrap();
        assert_eq!(
            at_mallory.open("alice", "bob", &content),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn public_keys_round_trip_through_base64_and_bad_ones_are_refused() {
        let pair = KeyPair::generate();
        let text = pair.public_base64();
        assert_eq!(decode_public_key(&text).unwrap(), *pair.public());
        assert_eq!(
            KeyPair::from_secret_bytes(pair.secret_bytes()).public_base64(),
            text
        );
        assert_eq!(decode_public_key("AAAA"), Err(CryptoError::BadPublicKey));
        assert_eq!(decode_public_key("%%%"), Err(CryptoError::BadPublicKey));
        // The all-zero point is of low order: no conversation with it.
        let zero = decode_public_key(&BASE64.encode([0u8; KEY_BYTES])).unwrap();
        assert_eq!(
            pair.conversation_key("alice", "bob", &zero).unwrap_err(),
            CryptoError::BadPublicKey
        );
        assert!(!format!("{pair:?}").contains(&BASE64.encode(pair.secret_bytes())));
    }

    #[test]
    fn scheme_1_messages_from_older_clients_still_open() {
        let (_, _, at_alice, at_bob) = pair_keys();
        let nonce = [3u8; NONCE_BYTES];
        let old = at_alice
            .seal_with_nonce(Scheme::V1, &nonce, "alice", "bob", "from an old chat")
            .unwrap();
        assert!(!old.contains(':'), "scheme 1 has no marker: {old}");
        assert_eq!(
            at_bob.open("alice", "bob", &old).unwrap(),
            "from an old chat"
        );
        // What is sent now is scheme 2.
        assert!(at_alice
            .seal("alice", "bob", "new")
            .unwrap()
            .starts_with("v2:"));
    }

    /// The fixed vector the browser test checks too (`server/tests/web_client.rs`
    /// runs `client/web/e2e.js` on it): same keys, same nonce, same content.
    #[derive(serde::Deserialize)]
    struct Vector {
        alice_secret: String,
        alice_public: String,
        bob_secret: String,
        bob_public: String,
        sender: String,
        recipient: String,
        nonce: String,
        plaintext: String,
        content_v1: String,
        content_v2: String,
    }

    fn bytes<const N: usize>(text: &str) -> [u8; N] {
        BASE64.decode(text).unwrap().try_into().unwrap()
    }

    #[test]
    fn the_shared_test_vector_holds() {
        let vector: Vector = serde_json::from_str(include_str!("e2e_test_vector.json")).unwrap();
        let alice = KeyPair::from_secret_bytes(bytes(&vector.alice_secret));
        let bob = KeyPair::from_secret_bytes(bytes(&vector.bob_secret));
        assert_eq!(alice.public_base64(), vector.alice_public);
        assert_eq!(bob.public_base64(), vector.bob_public);
        let (sender, recipient) = (vector.sender.as_str(), vector.recipient.as_str());
        let at_alice = alice
            .conversation_key(sender, recipient, bob.public())
            .unwrap();
        let at_bob = bob
            .conversation_key(recipient, sender, alice.public())
            .unwrap();
        let nonce = bytes(&vector.nonce);
        for (scheme, expected) in [
            (Scheme::V1, &vector.content_v1),
            (Scheme::V2, &vector.content_v2),
        ] {
            let sealed = at_alice
                .seal_with_nonce(scheme, &nonce, sender, recipient, &vector.plaintext)
                .unwrap();
            assert_eq!(&sealed, expected, "{scheme:?}");
            assert_eq!(
                at_bob.open(sender, recipient, expected).unwrap(),
                vector.plaintext
            );
        }
    }
}
