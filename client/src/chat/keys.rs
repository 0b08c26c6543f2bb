//! The keys of end-to-end encryption: the user's own key pair in its file,
//! and the public keys of the people they talk with, as the server gave them.
//!
//! The key file is `<directory of the session file>/keys/<username>.json`
//! (by default `~/.config/chat/keys/alice.json`), mode 0600 in a 0700
//! directory, holding `{username, public_key, secret_key}` (base64). It is
//! created once, on the first login as that user, and reused by every later
//! login from this account on this machine (whichever server URL, and by all
//! session files in the same directory, so two `chat`s of the same user
//! share one key). Losing it makes earlier encrypted messages unreadable.
//!
//! Peers' keys are trusted on first use: whatever the server answers to
//! GetKey is believed (SECURITY.md, "End-to-end encryption").

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use x25519_dalek::PublicKey;

use crate::chat::e2e::{self, KeyPair, KEY_BYTES};
use crate::chat::session::{self, Replace};

/// What the key file holds.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    username: String,
    public_key: String,
    secret_key: String,
}

/// The key file of `username` for a client whose session file is
/// `session_file`.
pub fn key_path(session_file: &Path, username: &str) -> PathBuf {
    let dir = session_file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join("keys").join(format!("{username}.json"))
}

/// Loads the key pair in `path`, or creates (and saves) one if there is none.
pub fn load_or_create(path: &Path, username: &str) -> io::Result<KeyPair> {
    if let Some(pair) = load(path)? {
        return Ok(pair);
    }
    let pair = KeyPair::generate();
    let file = KeyFile {
        username: username.to_string(),
        public_key: pair.public_base64(),
        secret_key: BASE64.encode(pair.secret_bytes()),
    };
    let text = serde_json::to_string_pretty(&file).map_err(io::Error::other)?;
    if session::write_private(path, &text, Replace::No)? {
        return Ok(pair);
    }
    // Another `chat` of the same user created it meanwhile: use theirs.
    load(path)?.ok_or_else(|| io::Error::other("the key file vanished"))
}

fn load(path: &Path) -> io::Result<Option<KeyPair>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let file: KeyFile = serde_json::from_str(&text).map_err(|error| invalid(&error.to_string()))?;
    let secret: [u8; KEY_BYTES] = BASE64
        .decode(file.secret_key.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| invalid("secret_key is not 32 bytes of base64"))?;
    let pair = KeyPair::from_secret_bytes(secret);
    if pair.public_base64() != file.public_key.trim() {
        return Err(invalid("public_key does not match secret_key"));
    }
    Ok(Some(pair))
}

/// A peer's key as last heard from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKey {
    /// Published, and usable.
    Known(PublicKey),
    /// None published (or not a usable X25519 key).
    Missing,
}

/// The public keys of other users, as the server gave them.
#[derive(Default, Debug)]
pub struct PeerKeys {
    keys: HashMap<String, PeerKey>,
}

impl PeerKeys {
    /// What is known of `username`'s key; `None` when never asked.
    pub fn get(&self, username: &str) -> Option<PeerKey> {
        self.keys.get(username).copied()
    }

    /// Records a Key answer (`public_key` null or not a key → Missing).
    pub fn record(&mut self, username: &str, public_key: Option<&str>) -> PeerKey {
        let key = public_key
            .and_then(|text| e2e::decode_public_key(text).ok())
            .map_or(PeerKey::Missing, PeerKey::Known);
        self.keys.insert(username.to_string(), key);
        key
    }

    /// Forgets `username`'s key so the next use asks the server again.
    pub fn forget(&mut self, username: &str) {
        self.keys.remove(username);
    }

    /// Forgets everyone (another user logged in).
    pub fn clear(&mut self) {
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_file_is_created_once_owner_only_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir.path().join("session.json"), "alice");
        assert_eq!(path, dir.path().join("keys").join("alice.json"));
        let first = load_or_create(&path, "alice").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create(&path, "alice").unwrap();
        assert_eq!(first.public_base64(), second.public_base64());
        assert_eq!(first.secret_bytes(), second.secret_bytes());
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.json");
        fs::write(&path, "{not json").unwrap();
        assert_eq!(
            load_or_create(&path, "alice").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let other = KeyPair::generate();
        let mismatched = format!(
            r#"{{"username":"alice","public_key":"{}","secret_key":"{}"}}"#,
            other.public_base64(),
            BASE64.encode([1u8; KEY_BYTES])
        );
        fs::write(&path, mismatched).unwrap();
        assert!(load_or_create(&path, "alice").is_err());
    }

    #[test]
    fn peer_keys_remember_answers() {
        let mut peers = PeerKeys::default();
        assert_eq!(peers.get("bob"), None);
        let pair = KeyPair::generate();
        assert_eq!(
            peers.record("bob", Some(&pair.public_base64())),
            PeerKey::Known(*pair.public())
        );
        assert_eq!(peers.get("bob"), Some(PeerKey::Known(*pair.public())));
        assert_eq!(peers.record("carol", None), PeerKey::Missing);
        assert_eq!(peers.record("dave", Some("junk")), PeerKey::Missing);
        peers.forget("bob");
        assert_eq!(peers.get("bob"), None);
    }
}
