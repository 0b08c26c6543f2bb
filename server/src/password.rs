//! Password hashes: PBKDF2-HMAC-SHA256 with a 16-byte random salt, stored as
//! PHC strings (`$pbkdf2-sha256$i=600000$<salt>$<hash>`, unpadded standard
//! base64) so each hash carries its own iteration count and the default can
//! rise later without breaking old accounts. Also session-id hashing.
//!
//! Everything here is slow on purpose (PBKDF2) and runs on the hashing
//! workers, never on the event loop — except [`session_hash`], one SHA-256.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Salt length in bytes.
pub const SALT_BYTES: usize = 16;
/// Derived key length in bytes.
pub const HASH_BYTES: usize = 32;
/// The PHC algorithm identifier.
const ALGORITHM: &str = "pbkdf2-sha256";
/// Iteration counts above this in a stored hash are refused (a corrupted or
/// hostile database must not make one login burn minutes of CPU).
const ITERATIONS_MAX: u32 = 10_000_000;
/// Longest stored PHC string accepted, in bytes. Ours are about 90; 256
/// leaves room for other tools' longer salts and parameters. A longer one is
/// refused by `import-json` and never verifies: PBKDF2 costs the iteration
/// count once per 32 bytes of output, so a 48 KB hash made one failed login
/// cost seconds.
pub const PHC_BYTES_MAX: usize = 256;
/// Longest derived key in a stored hash, in bytes: two SHA-256 blocks, so a
/// verification costs at most twice the iteration count.
const STORED_HASH_BYTES_MAX: usize = 2 * HASH_BYTES;

/// A freshly derived password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordHash {
    /// The full PHC string, stored in `users.password_hash`.
    pub phc: String,
    /// The salt alone (base64), stored in `users.salt` as the original schema had it.
    pub salt: String,
}

/// Derives a new hash of `secret` with a random salt.
pub fn hash_password(secret: &str, iterations: u32) -> PasswordHash {
    let mut salt = [0u8; SALT_BYTES];
    rand::fill(&mut salt[..]);
    hash_with_salt(secret, &salt, iterations)
}

fn hash_with_salt(secret: &str, salt: &[u8], iterations: u32) -> PasswordHash {
    let hash = derive(secret, salt, iterations);
    let salt = STANDARD_NO_PAD.encode(salt);
    let phc = format!(
        "${ALGORITHM}$i={iterations}${salt}${}",
        STANDARD_NO_PAD.encode(hash)
    );
    PasswordHash { phc, salt }
}

fn derive(secret: &str, salt: &[u8], iterations: u32) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), salt, iterations, &mut out);
    out
}

/// A stored hash, parsed.
struct Parsed {
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

fn parse(phc: &str) -> Option<Parsed> {
    if phc.len() > PHC_BYTES_MAX {
        return None;
    }
    let mut fields = phc.split('$');
    let (Some(""), Some(ALGORITHM), Some(params), Some(salt), Some(hash), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    // `i=N` possibly followed by other parameters such as `l=32`.
    let iterations = params
        .split(',')
        .find_map(|p| p.strip_prefix("i="))?
        .parse::<u32>()
        .ok()
        .filter(|i| (1..=ITERATIONS_MAX).contains(i))?;
    Some(Parsed {
        iterations,
        salt: STANDARD_NO_PAD.decode(salt).ok()?,
        hash: STANDARD_NO_PAD
            .decode(hash)
            .ok()
            .filter(|hash| (1..=STORED_HASH_BYTES_MAX).contains(&hash.len()))?,
    })
}

/// Whether `phc` is a stored hash this module would verify against (within
/// [`PHC_BYTES_MAX`], the iteration bound and the key-length bound).
pub fn is_verifiable(phc: &str) -> bool {
    parse(phc).is_some()
}

/// The salt field (base64) of a PHC string this module can verify — what
/// `users.salt` holds beside it — or `None` if the string would never verify.
/// Used to check imported hashes before they are stored.
pub fn phc_salt(phc: &str) -> Option<&str> {
    parse(phc)?;
    phc.split('$').nth(3)
}

/// Whether `secret` matches the stored PHC string. A malformed stored hash
/// never matches. The comparison takes the same time wherever bytes differ.
pub fn verify_password(secret: &str, phc: &str) -> bool {
    let Some(parsed) = parse(phc) else {
        return false;
    };
    let mut out = vec![0u8; parsed.hash.len()];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), &parsed.salt, parsed.iterations, &mut out);
    constant_time_eq(&out, &parsed.hash)
}

/// A hash to verify against when the username does not exist, so that an
/// unknown user costs the same work as a wrong password.
pub fn dummy_hash(iterations: u32) -> String {
    hash_with_salt("not a password of anyone", &[0x5a; SALT_BYTES], iterations).phc
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The SHA-256 (hex) under which a session id is stored; the id itself is
/// never stored or logged.
pub fn session_hash(session_id: &str) -> String {
    let digest = Sha256::digest(session_id.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_secret_only() {
        let hash = hash_password("correct horse", 1000);
        assert!(
            hash.phc.starts_with("$pbkdf2-sha256$i=1000$"),
            "{}",
            hash.phc
        );
        assert!(verify_password("correct horse", &hash.phc));
        assert!(!verify_password("correct horsf", &hash.phc));
        assert!(!verify_password("", &hash.phc));
    }

    #[test]
    fn salts_differ_between_hashes() {
        let a = hash_password("same secret", 10);
        let b = hash_password("same secret", 10);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.phc, b.phc);
    }

    #[test]
    fn the_iteration_count_lives_with_the_hash() {
        let old = hash_password("secret123", 7);
        // Verification reads the count from the string, not from any setting.
        assert!(verify_password("secret123", &old.phc));
        assert!(old.phc.contains("$i=7$"));
        let with_length = old.phc.replace("$i=7$", "$i=7,l=32$");
        assert!(verify_password("secret123", &with_length));
    }

    #[test]
    fn the_salt_field_is_read_from_a_well_formed_hash_only() {
        let hash = hash_password("secret123", 3);
        assert_eq!(phc_salt(&hash.phc), Some(hash.salt.as_str()));
        assert_eq!(phc_salt("$pbkdf2-sha256$i=0$AAAA$AAAA"), None);
        assert_eq!(phc_salt("plain"), None);
    }

    #[test]
    fn malformed_hashes_never_verify() {
        for phc in [
            "",
            "plain",
            "$pbkdf2-sha256$i=0$AAAA$AAAA",
            "$pbkdf2-sha256$i=99999999999$AAAA$AAAA",
            "$pbkdf2-sha512$i=10$AAAA$AAAA",
            "$pbkdf2-sha256$i=10$!!!$AAAA",
            "$pbkdf2-sha256$i=10$AAAA",
        ] {
            assert!(!verify_password("x", phc), "{phc}");
        }
    }

    #[test]
    fn oversized_hashes_never_verify_and_cost_nothing() {
        let hash = hash_password("secret123", 1000);
        let long_key = STANDARD_NO_PAD.encode(vec![7u8; 36 * 1024]);
        let huge = format!("$pbkdf2-sha256$i=600000${}${long_key}", hash.salt);
        let started = std::time::Instant::now();
        assert!(!verify_password("secret123", &huge));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert!(!is_verifiable(&huge) && phc_salt(&huge).is_none());
        let padded = format!("{}{}", hash.phc, "A".repeat(PHC_BYTES_MAX));
        assert!(!is_verifiable(&padded));
        let three_blocks = format!(
            "$pbkdf2-sha256$i=10${}${}",
            hash.salt,
            STANDARD_NO_PAD.encode([1u8; 3 * HASH_BYTES])
        );
        assert!(three_blocks.len() <= PHC_BYTES_MAX && !is_verifiable(&three_blocks));
        assert!(is_verifiable(&hash.phc));
    }

    #[test]
    fn known_vector_matches_rfc_7914() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256 ("passwd", "salt", c=1, dkLen=64).
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"passwd", b"salt", 1, &mut out);
        assert_eq!(out[..4], [0x55, 0xac, 0x04, 0x6e]);
    }

    #[test]
    fn session_hash_is_sha256_hex() {
        assert_eq!(
            session_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
