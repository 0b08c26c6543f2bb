//! The protocol's rules for usernames, emails, secrets and sizes, shared by the
//! server (which enforces them) and clients (which can check before sending).

/// Shortest username, in characters.
pub const USERNAME_CHARS_MIN: usize = 3;
/// Longest username, in characters.
pub const USERNAME_CHARS_MAX: usize = 32;
/// Shortest accepted secret, in characters.
pub const SECRET_CHARS_MIN: usize = 8;
/// Longest accepted email, in bytes (RFC 5321's path limit).
pub const EMAIL_BYTES_MAX: usize = 254;
/// Longest public key accepted by PublishKey, in bytes.
pub const PUBLIC_KEY_BYTES_MAX: usize = 4096;
/// Longest client `message_id`, in characters.
pub const CLIENT_MESSAGE_ID_CHARS_MAX: usize = 64;
/// Longest string `request_id`, in characters (protocol 1.1).
pub const REQUEST_ID_CHARS_MAX: usize = 64;

/// 3–32 characters of `A-Z a-z 0-9 _ . -`.
pub fn is_valid_username(username: &str) -> bool {
    let length = username.chars().count();
    (USERNAME_CHARS_MIN..=USERNAME_CHARS_MAX).contains(&length)
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A non-empty local part, exactly one `@`, and a domain containing a dot
/// (with something on both sides of it), no whitespace, at most 254 bytes.
pub fn is_valid_email(email: &str) -> bool {
    if email.len() > EMAIL_BYTES_MAX || email.chars().any(char::is_whitespace) {
        return false;
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
}

/// At least 8 characters.
pub fn is_strong_enough_secret(secret: &str) -> bool {
    secret.chars().count() >= SECRET_CHARS_MIN
}

/// Text the server keeps (message content and ids, group names, keys)
/// holds no NUL character (U+0000): not every database can store one.
pub fn is_storable_text(text: &str) -> bool {
    !text.contains('\0')
}

/// The refusal's detail for text with a NUL character.
pub const NUL_REFUSAL: &str = "text may not contain the NUL character (U+0000)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for good in ["ann", "ANN", "a.b-c_d", "x23", &"a".repeat(32)] {
            assert!(is_valid_username(good), "{good}");
        }
        for bad in [
            "",
            "ab",
            "has space",
            "é_accent",
            "a/b",
            &"a".repeat(33),
            "semi;colon",
        ] {
            assert!(!is_valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn emails() {
        for good in ["a@b.c", "first.last@example.co.uk"] {
            assert!(is_valid_email(good), "{good}");
        }
        for bad in [
            "", "@b.c", "a@b", "a@@b.c", "a@b@c.d", "a b@c.d", "a@.c", "a@b.",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert!(is_strong_enough_secret("12345678"));
        assert!(!is_strong_enough_secret("1234567"));
        assert!(is_strong_enough_secret("пароль12"));
    }
}
