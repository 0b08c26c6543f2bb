//! The saved session: one small JSON file that lets the next `chat` resume
//! without the password and catch up from the last message it saw.
//!
//! The file holds `{url, username, session_id, last_message_id,
//! confirmed_through, delivered}` (the last two: receipts, see
//! `crate::chat::receipts`). A session id
//! is as good as a password until it ends, so the file is created with mode
//! 0600 (in a 0700 directory) and replaced atomically (write a temporary file,
//! then rename) so a crash never leaves half a file. It is used only for the
//! same server URL; one file holds one session.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File mode of the session file: only its owner may read it.
const SESSION_FILE_MODE: u32 = 0o600;
/// Mode of a configuration directory this client creates.
const CONFIG_DIR_MODE: u32 = 0o700;

/// What is kept between runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    /// The server this session belongs to.
    pub url: String,
    /// Who is logged in.
    pub username: String,
    /// The server's session id (resumes without the password).
    pub session_id: String,
    /// The highest message_id seen; `Sync` starts after it.
    #[serde(default)]
    pub last_message_id: i64,
    /// The highest id of a message addressed to the user that this device
    /// has shown, which it confirms with `Received{through}`; messages the
    /// server pushes again at or below it are dropped as duplicates.
    #[serde(default)]
    pub confirmed_through: i64,
    /// How far the user's 1:1 messages are delivered: recipient → the
    /// `through` of their last `Delivered` receipt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delivered: BTreeMap<String, i64>,
}

/// The default place: `$XDG_CONFIG_HOME/chat/session.json`, else
/// `$HOME/.config/chat/session.json`; `None` when neither variable is usable.
pub fn default_path() -> Option<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    if let Some(config) = absolute("XDG_CONFIG_HOME") {
        return Some(config.join("chat").join("session.json"));
    }
    absolute("HOME").map(|home| home.join(".config").join("chat").join("session.json"))
}

/// Reads the session file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> io::Result<Option<SavedSession>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Writes the session file atomically with mode 0600.
pub fn save(path: &Path, session: &SavedSession) -> io::Result<()> {
    let text = serde_json::to_string_pretty(session).map_err(io::Error::other)?;
    write_private(path, &text, Replace::Yes).map(|_| ())
}

/// Whether [`write_private`] may replace a file that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Replace it atomically.
    Yes,
    /// Keep it: the first writer wins (two `chat`s starting at once).
    No,
}

/// Writes `text` and a line end to `path` with mode 0600, creating its
/// directory (mode 0700) if needed, through a temporary file so a crash never
/// leaves half a file. Returns false when `replace` is [`Replace::No`] and the
/// file already existed (it is left as it was).
pub(crate) fn write_private(path: &Path, text: &str, replace: Replace) -> io::Result<bool> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(CONFIG_DIR_MODE)
                .create(dir)?;
        }
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(SESSION_FILE_MODE)
            .open(&temporary)?;
        // `mode` applies only when the file is created; a stale temporary file
        // left by someone else must not keep looser permissions.
        file.set_permissions(fs::Permissions::from_mode(SESSION_FILE_MODE))?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    match replace {
        Replace::Yes => fs::rename(&temporary, path).map(|()| true),
        Replace::No => {
            // A hard link is created only if nothing has the name yet.
            let linked = fs::hard_link(&temporary, path);
            let _ = fs::remove_file(&temporary);
            match linked {
                Ok(()) => Ok(true),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(error) => Err(error),
            }
        }
    }
}

/// Removes the session file; a missing file is not an error.
pub fn forget(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedSession {
        SavedSession {
            url: "ws://127.0.0.1:8765".into(),
            username: "alice".into(),
            session_id: "9d5c2f8e-6b1a-4c3d-8e2f-1a2b3c4d5e6f".into(),
            last_message_id: 42,
            confirmed_through: 40,
            delivered: BTreeMap::from([("bob".to_string(), 39)]),
        }
    }

    #[test]
    fn saves_with_owner_only_mode_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("session.json");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &sample()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap(), Some(sample()));
        let updated = SavedSession {
            last_message_id: 43,
            confirmed_through: 43,
            delivered: BTreeMap::new(),
            ..sample()
        };
        save(&path, &updated).unwrap();
        assert_eq!(load(&path).unwrap(), Some(updated));
        forget(&path).unwrap();
        forget(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }

    #[test]
    fn a_file_from_before_receipts_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        fs::write(
            &path,
            r#"{"url":"ws://h","username":"alice","session_id":"s","last_message_id":7}"#,
        )
        .unwrap();
        let saved = load(&path).unwrap().unwrap();
        assert_eq!((saved.last_message_id, saved.confirmed_through), (7, 0));
        assert!(saved.delivered.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        fs::write(&path, "{not json").unwrap();
        assert_eq!(load(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
