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
//! `/msg` to someone whose key is not known first sends GetKey as the
//! command's own request, then the message (see `App::message` below).
//!
//! Peers' keys are trusted on first use: whatever the server answers to
//! GetKey is believed (SECURITY.md, "End-to-end encryption").

use std::collections::{HashMap, HashSet};
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

/// The end-to-end keys the client holds for the logged-in user.
#[derive(Default)]
pub struct Keyring {
    /// The user's key pair; `None` while end-to-end encryption is off (not
    /// logged in, or no key file could be used).
    pub(crate) own: Option<KeyPair>,
    /// Other users' public keys, as the server gave them.
    pub(crate) peers: PeerKeys,
    /// True once this login sent PublishKey (at most once per login).
    pub(crate) published: bool,
    /// Peers whose key was asked for again after one of their messages did
    /// not decrypt; until one decrypts, the next failure is final.
    pub(crate) refreshed: HashSet<String>,
}

// ----- the client's key traffic ----------------------------------------------
// (sealing what `/msg` sends, opening what arrives, GetKey and PublishKey)

use crate::chat::app::App;
use crate::chat::inbox::Patience;
use crate::chat::link::*;
use crate::chat::render::{Asked, Opened};
use crate::chat::requests::Purpose;
use protocol::client::{PublishKey, SendMessage, UserRef};
use protocol::server::{Delivered, Key};
use protocol::ClientMessage;

impl App {
    /// `/msg`: encrypted when both sides have a key (looked up first if
    /// not known), plain with `--plain` or when the recipient has none.
    pub(super) fn message(&mut self, to: String, text: String, plain: bool) {
        let Some(own_key) = self.keys.own.as_ref().filter(|_| !plain) else {
            self.send_message(to, text, None);
            return;
        };
        if self.logged_in_as(&to) {
            let own_public = *own_key.public();
            self.send_message(to, text, Some(own_public));
            return;
        }
        match self.keys.peers.get(&to) {
            Some(PeerKey::Known(public)) => self.send_message(to, text, Some(public)),
            // Unknown, or none published when last asked (there may be one
            // by now): ask, and send once the answer is in (`on_key`).
            _ => self.submit(
                Asked::Message {
                    to: to.clone(),
                    text,
                    encrypted: true,
                },
                ClientMessage::GetKey(UserRef { username: to }),
            ),
        }
    }

    /// Sends a message, sealed for `peer_public` when given.
    pub(super) fn send_message(
        &mut self,
        to: String,
        text: String,
        peer_public: Option<PublicKey>,
    ) {
        let me = self.my_name().unwrap_or_default();
        let sealed = match (&self.keys.own, peer_public) {
            (Some(own_key), Some(peer_public)) => Some(
                own_key
                    .conversation_key(&me, &to, &peer_public)
                    .and_then(|key| key.seal(&me, &to, &text)),
            ),
            _ => None,
        };
        let (content, is_encrypted) = match sealed {
            None => (text.clone(), false),
            Some(Ok(content)) => (content, true),
            Some(Err(error)) => {
                self.fail(&format!(
                    "message to {to} not sent: it could not be encrypted ({error:?}); \
                     /msg --plain sends it unencrypted"
                ));
                return;
            }
        };
        self.client_message_count += 1;
        // The client's own id makes the Ack traceable in --json output.
        let message_id = format!("chat-{}-{}", std::process::id(), self.client_message_count);
        self.submit(
            Asked::Message {
                to: to.clone(),
                text,
                encrypted: is_encrypted,
            },
            ClientMessage::Message(SendMessage {
                dest_id: Some(to),
                group_id: None,
                content,
                message_id: Some(message_id),
                source_id: None,
                is_encrypted,
            }),
        );
    }

    /// Decrypts a message for display; `None` when a key was asked for and
    /// the message must wait for it.
    pub(super) fn open(&mut self, delivered: &Delivered, patience: Patience) -> Option<Opened> {
        if !delivered.is_encrypted {
            return Some(Opened::AsSent);
        }
        // Without a key of our own (end-to-end encryption off) nothing opens.
        let (Some(me), Some(own_public)) = (
            self.my_name(),
            self.keys.own.as_ref().map(|own_key| *own_key.public()),
        ) else {
            return Some(Opened::Undecryptable);
        };
        // Group messages are never encrypted by this client; one that
        // claims to be cannot be opened.
        let (None, Some(dest)) = (delivered.group_id, delivered.dest_id.as_deref()) else {
            return Some(Opened::Undecryptable);
        };
        let peer = if delivered.source_id == me {
            dest
        } else if dest == me {
            delivered.source_id.as_str()
        } else {
            return Some(Opened::Undecryptable);
        };
        let peer_public = if peer == me {
            own_public
        } else {
            match self.keys.peers.get(peer) {
                Some(PeerKey::Known(public)) => public,
                Some(PeerKey::Missing) => return self.ask_again_or_give_up(peer, patience),
                None if patience == Patience::None => return Some(Opened::Undecryptable),
                None => {
                    self.request_key(peer);
                    return None;
                }
            }
        };
        let own_key = self.keys.own.as_ref()?;
        let opened = own_key
            .conversation_key(&me, peer, &peer_public)
            .and_then(|key| key.open(&delivered.source_id, dest, &delivered.content));
        match opened {
            Ok(text) => {
                if patience == Patience::Live {
                    self.keys.refreshed.remove(peer);
                }
                Some(Opened::Decrypted(text))
            }
            Err(_) if peer != me => self.ask_again_or_give_up(peer, patience),
            Err(_) => Some(Opened::Undecryptable),
        }
    }

    /// A message from `peer` did not decrypt with the key known for them:
    /// ask the server for their key once (it may have changed), then give up.
    pub(super) fn ask_again_or_give_up(
        &mut self,
        peer: &str,
        patience: Patience,
    ) -> Option<Opened> {
        if patience == Patience::None || !self.keys.refreshed.insert(peer.to_string()) {
            return Some(Opened::Undecryptable);
        }
        self.keys.peers.forget(peer);
        self.request_key(peer);
        None
    }

    /// True when a request can be sent now and will be answered.
    pub(super) fn can_send_requests(&self) -> bool {
        matches!(self.link, Link::Up(_)) && !self.resuming && self.identity.is_some()
    }

    /// Sends GetKey for `username` unless one is already on its way. When
    /// it cannot be sent now, what waits for it asks again after the next
    /// login (`on_success_login` drives the inbox).
    pub(super) fn request_key(&mut self, username: &str) {
        if self.requests.is_getting_key(username) || !self.can_send_requests() {
            return;
        }
        let get_key = ClientMessage::GetKey(UserRef {
            username: username.to_string(),
        });
        self.send_request(Purpose::GetKey(username.to_string()), &get_key);
    }

    /// After a login: loads (or creates) the user's key pair and asks for
    /// the server's copy of the public key, to publish it if it differs.
    pub(super) fn set_up_own_key(&mut self, username: &str) {
        self.keys.published = false;
        self.keys.own = None;
        let Some(session_file) = &self.options.session_file else {
            self.out.notice(
                "* end-to-end encryption is off: there is no place to keep your key \
                 (give --session-file PATH)",
            );
            return;
        };
        let path = key_path(session_file, username);
        match load_or_create(&path, username) {
            Ok(pair) => self.keys.own = Some(pair),
            Err(error) => {
                self.out.notice(&format!(
                    "* end-to-end encryption is off: cannot use the key file {}: {error}",
                    path.display()
                ));
                return;
            }
        }
        self.request_key(username);
    }

    /// A Key answering the client's own GetKey.
    pub(super) fn on_key(&mut self, key: &Key) {
        self.keys
            .peers
            .record(&key.username, key.public_key.as_deref());
        if self.logged_in_as(&key.username) {
            self.publish_own_key_unless(key.public_key.as_deref());
        }
        self.drive_inbox();
    }

    /// The recipient's Key, looked up by `/msg`: the message goes now,
    /// sealed for the key if there is one.
    pub(super) fn on_recipient_key(&mut self, to: String, text: String, key: &Key) {
        let recorded = self
            .keys
            .peers
            .record(&key.username, key.public_key.as_deref());
        let public = match recorded {
            PeerKey::Known(public) => Some(public),
            PeerKey::Missing => None,
        };
        self.send_message(to, text, public);
        self.drive_inbox();
    }

    /// Publishes the user's key when the server's copy (`published`)
    /// differs, once per login.
    pub(super) fn publish_own_key_unless(&mut self, published: Option<&str>) {
        let Some(own_key) = &self.keys.own else {
            return;
        };
        let public_key = own_key.public_base64();
        if published == Some(public_key.as_str()) || self.keys.published {
            return;
        }
        self.keys.published = true;
        let publish = ClientMessage::PublishKey(PublishKey { public_key });
        self.send_request(Purpose::PublishKey, &publish);
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
