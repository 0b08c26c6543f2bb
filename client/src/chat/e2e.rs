//! End-to-end encryption of 1:1 messages: the pure cryptography, no I/O.
//!
//! Each user has one static X25519 key pair; the public half is published
//! with PublishKey as standard base64 of its 32 bytes. Two users derive the
//! same *conversation key* from their own secret and the other's public key:
//!
//! ```text
//! shared = X25519(own secret, peer public)          (32 bytes; rejected if all zero)
//! key    = HKDF-SHA256(salt = "chat-e2e-v1",
//!                      ikm  = shared,
//!                      info = "chat-e2e-v1 conversation key\n" ‖ lower ‖ "\n" ‖ higher)
//! ```
//!
//! where `lower` and `higher` are the two usernames sorted bytewise (the same
//! name twice for a note to oneself), so both sides compute the same 32-byte
//! key. A message is sealed with ChaCha20-Poly1305 under a fresh random
//! 96-bit nonce, with the associated data `"chat-e2e-v1\n" ‖ sender ‖ "\n" ‖
//! recipient`; the wire `content` is standard base64 (with padding) of
//! `nonce ‖ ciphertext ‖ tag`. Binding the sender and recipient means the
//! server cannot present alice's message to bob as bob's message to alice.
//!
//! Random nonces are safe here: with 96 bits, a collision under one key is
//! negligible below about 2^32 messages per pair of users.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

/// HKDF salt and the version label of the whole scheme; a future change of
/// the scheme changes this label, so old and new never mix silently.
const SCHEME_LABEL: &[u8] = b"chat-e2e-v1";
/// Bytes of a ChaCha20-Poly1305 nonce (96 bits).
const NONCE_BYTES: usize = 12;
/// Bytes of the Poly1305 tag after the ciphertext.
const TAG_BYTES: usize = 16;
/// Bytes of an X25519 key (public or secret).
pub const KEY_BYTES: usize = 32;

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
    /// `peer`, whose public key is `peer_public`.
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
        let mut info = Vec::with_capacity(64);
        info.extend_from_slice(SCHEME_LABEL);
        info.extend_from_slice(b" conversation key\n");
        info.extend_from_slice(lower.as_bytes());
        info.push(b'\n');
        info.extend_from_slice(higher.as_bytes());
        let mut key = [0u8; KEY_BYTES];
        Hkdf::<Sha256>::new(Some(SCHEME_LABEL), shared.as_bytes())
            .expand(&info, &mut key)
            .map_err(|_| CryptoError::BadPublicKey)?;
        Ok(ConversationKey { key })
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

/// The symmetric key two users share for their conversation.
#[derive(Clone)]
pub struct ConversationKey {
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConversationKey(..)")
    }
}

impl ConversationKey {
    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.key.into())
    }

    /// Encrypts `plaintext` sent by `sender` to `recipient`; returns the
    /// wire `content` (base64 of nonce ‖ ciphertext ‖ tag).
    pub fn seal(
        &self,
        sender: &str,
        recipient: &str,
        plaintext: &str,
    ) -> Result<String, CryptoError> {
        let nonce = Nonce::try_generate().map_err(|_| CryptoError::NoRandomness)?;
        let aad = associated_data(sender, recipient);
        let sealed = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            // Encryption fails only for absurd lengths (about 256 GiB).
            .map_err(|_| CryptoError::Undecryptable)?;
        let mut wire = Vec::with_capacity(NONCE_BYTES + sealed.len());
        wire.extend_from_slice(&nonce);
        wire.extend_from_slice(&sealed);
        Ok(BASE64.encode(wire))
    }

    /// Decrypts the wire `content` of a message from `sender` to `recipient`.
    pub fn open(
        &self,
        sender: &str,
        recipient: &str,
        content: &str,
    ) -> Result<String, CryptoError> {
        let wire = BASE64
            .decode(content.trim())
            .map_err(|_| CryptoError::Undecryptable)?;
        if wire.len() < NONCE_BYTES + TAG_BYTES {
            return Err(CryptoError::Undecryptable);
        }
        let (nonce, sealed) = wire.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Undecryptable)?;
        let aad = associated_data(sender, recipient);
        let plaintext = self
            .cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Undecryptable)?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::Undecryptable)
    }
}

fn associated_data(sender: &str, recipient: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SCHEME_LABEL.len() + sender.len() + recipient.len() + 2);
    aad.extend_from_slice(SCHEME_LABEL);
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
        assert_eq!(at_alice.key, at_bob.key);
        // Other names give another key, even from the same shared secret.
        let alice = KeyPair::from_secret_bytes([7; KEY_BYTES]);
        let bob = KeyPair::from_secret_bytes([9; KEY_BYTES]);
        let named = alice
            .conversation_key("alice", "bob", bob.public())
            .unwrap();
        let renamed = alice
            .conversation_key("alice", "carol", bob.public())
            .unwrap();
        assert_ne!(named.key, renamed.key);
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
        let mut wire = BASE64.decode(&content).unwrap();
        for index in [0, NONCE_BYTES, wire.len() - 1] {
            wire[index] ^= 0x01;
            let tampered = BASE64.encode(&wire);
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
        for garbage in ["", "not base64!", "AAAA"] {
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
}
