//! TLS for `wss://`, shared by `chat` and `chat-load`: whom to trust, and
//! what to tell a person when a server's certificate is not trusted.
//!
//! Trust is what every other client does: the system's trust store
//! (`rustls-native-certs`, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`
//! as OpenSSL does), plus every certificate in the `--ca-file` PEM file.
//! A certificate from `--ca-file` that is exactly the one the server
//! presents is accepted as it is (pinned): that is how a self-signed
//! certificate (`openssl req -x509 …`, which marks itself CA:TRUE) is
//! trusted, since a CA certificate may not be a server's own under the
//! usual rules. Everything else goes through rustls's WebPKI verifier.
//!
//! A failed verification is explained in plain words with the fix
//! ([`explain`]): the CA to give, the name the certificate lacks, the date
//! it expired.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Why the TLS settings could not be made; `Display` is a sentence.
#[derive(Debug)]
pub enum TrustError {
    /// The `--ca-file` could not be read or holds a malformed certificate.
    CaFile {
        /// The file given.
        path: PathBuf,
        /// What went wrong, in the PEM reader's words.
        problem: String,
    },
    /// The `--ca-file` holds no certificate at all.
    NoCertificate(PathBuf),
    /// Nothing to trust: the system store is empty and no `--ca-file`.
    NothingTrusted,
    /// rustls refused the settings (a bug or a broken build).
    Settings(String),
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::CaFile { path, problem } => {
                write!(f, "cannot use {} as --ca-file: {problem}", path.display())
            }
            TrustError::NoCertificate(path) => write!(
                f,
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
            TrustError::NothingTrusted => f.write_str(
                "this system has no trusted CA certificates (none found in its trust store, \
                 SSL_CERT_FILE or SSL_CERT_DIR): give the server's CA with --ca-file PATH",
            ),
            TrustError::Settings(why) => write!(f, "cannot set up TLS: {why}"),
        }
    }
}

impl StdError for TrustError {}

/// The TLS client settings for `wss://`: the system's trust store plus the
/// certificates in `ca_file`, which are also pinned (see the module docs).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TrustError> {
    let pinned = match ca_file {
        Some(path) => read_certificates(path)?,
        None => Vec::new(),
    };
    let mut roots = RootCertStore::empty();
    // Certificates the system store cannot parse are skipped, as every
    // client does; the store's own errors (an unreadable file) likewise.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    // A self-signed server certificate is a fine trust anchor too; one that
    // webpki cannot take as an anchor is still pinned.
    roots.add_parsable_certificates(pinned.iter().cloned());
    if roots.is_empty() && pinned.is_empty() {
        return Err(TrustError::NothingTrusted);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinningVerifier::new(pinned, roots, Arc::clone(&provider))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TrustError::Settings(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every certificate in the PEM file `path` (at least one).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let problem = |problem: String| TrustError::CaFile {
        path: path.to_path_buf(),
        problem,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| problem(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| problem(error.to_string()))?;
    if certificates.is_empty() {
        return Err(TrustError::NoCertificate(path.to_path_buf()));
    }
    Ok(certificates)
}

/// WebPKI verification, except that a server certificate equal byte for
/// byte to one given with `--ca-file` is accepted as it is.
#[derive(Debug)]
struct PinningVerifier {
    pinned: Vec<CertificateDer<'static>>,
    /// `None` when only pinned certificates are trusted and none of them
    /// can be a trust anchor: then nothing but a pinned one is accepted.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl PinningVerifier {
    fn new(
        pinned: Vec<CertificateDer<'static>>,
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TrustError> {
        let webpki = if roots.is_empty() {
            None
        } else {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|error| TrustError::Settings(error.to_string()))?;
            Some(verifier)
        };
        Ok(PinningVerifier {
            pinned,
            webpki,
            provider,
        })
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|pinned| pinned == end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(webpki) => webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(CertificateError::UnknownIssuer.into()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An I/O error during a TLS handshake with `host` as a sentence that says
/// what to do, when it is about TLS: rustls refused something, or the
/// server hung up on the ClientHello (as a plain `ws://` server does).
pub fn explain_handshake(error: &io::Error, host: &str) -> Option<String> {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(explain(tls, host));
    }
    (error.kind() == io::ErrorKind::UnexpectedEof).then(|| {
        format!(
            "{host} closed the connection during the TLS handshake: if it serves \
             plain WebSockets, connect with ws:// instead of wss://"
        )
    })
}

/// A TLS failure with `host` as a sentence that says what to do.
pub fn explain(error: &rustls::Error, host: &str) -> String {
    let certificate = match error {
        rustls::Error::InvalidCertificate(certificate) => certificate,
        rustls::Error::InvalidMessage(_) => {
            return format!(
                "{host} did not answer in TLS ({error}): if it serves plain \
                 WebSockets, connect with ws:// instead of wss://"
            )
        }
        _ => return format!("TLS with {host} failed: {error}"),
    };
    match certificate {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "{host}'s certificate is not signed by a CA this client trusts (the system's \
             trust store, or --ca-file): give its CA with --ca-file PATH (the ca.pem of \
             `chat-server gen-cert`), or, if the server's certificate is self-signed, \
             that certificate itself"
        ),
        CertificateError::NotValidForName => format!(
            "{host}'s certificate is not valid for the name {host} (no subjectAltName \
             for it): connect with a name it lists, or make one that lists it with \
             `chat-server gen-cert DIR --name {host}`"
        ),
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "{host}'s certificate is not valid for the name {host}: its subjectAltName \
             lists only {}; connect with one of those, or make a certificate for {host} \
             with `chat-server gen-cert DIR --name {host}`",
            if presented.is_empty() {
                "nothing".to_string()
            } else {
                let names: Vec<&str> = presented.iter().map(|name| bare_name(name)).collect();
                names.join(", ")
            }
        ),
        CertificateError::Expired => format!(
            "{host}'s certificate has expired: the server needs a new one \
             (`chat-server gen-cert DIR`), or this machine's clock is wrong"
        ),
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "{host}'s certificate expired on {}: the server needs a new one \
             (`chat-server gen-cert DIR`), or this machine's clock is wrong",
            date(*not_after)
        ),
        CertificateError::NotValidYet => {
            format!("{host}'s certificate is not valid yet: check this machine's clock")
        }
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "{host}'s certificate is valid only from {}: check this machine's clock",
            date(*not_before)
        ),
        other if is_ca_used_as_end_entity(other) => format!(
            "{host} presents a CA certificate (CA:TRUE, e.g. from `openssl req -x509`) as \
             its own: give that very certificate with --ca-file to trust it (it is then \
             pinned), or give the server a certificate signed by a CA (`chat-server gen-cert DIR`)"
        ),
        other => format!("{host}'s certificate is not acceptable: {other}"),
    }
}

/// webpki's `CaUsedAsEndEntity` reaches rustls only as an opaque "other"
/// error; its name in the debug text is all there is to recognise it by.
fn is_ca_used_as_end_entity(error: &CertificateError) -> bool {
    matches!(error, CertificateError::Other(_))
        && format!("{error:?}").contains("CaUsedAsEndEntity")
}

/// `localhost` from webpki's `DnsName("localhost")` (an IP address comes
/// likewise); anything else as it is.
fn bare_name(presented: &str) -> &str {
    match (presented.find('"'), presented.rfind('"')) {
        (Some(first), Some(last)) if first < last => &presented[first + 1..last],
        _ => presented,
    }
}

/// A certificate time as a UTC date and time.
fn date(time: UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
        .map(|timestamp| timestamp.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| format!("{} (Unix time)", time.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_name_the_fix() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(explain(&unknown, "chat.example.com").contains("--ca-file"));
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("chat.example.com").unwrap(),
            presented: vec!["DnsName(\"localhost\")".into()],
        });
        let text = explain(&name, "chat.example.com");
        assert!(text.contains("lists only localhost;"), "{text}");
        assert!(
            text.contains("gen-cert DIR --name chat.example.com"),
            "{text}"
        );
        let expired = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_709_214_330)),
        });
        assert!(explain(&expired, "h").contains("expired on 2024-02-29 13:45 UTC"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = client_config(Some(&path)).unwrap_err();
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
        let missing = client_config(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(missing.to_string().contains("cannot use"), "{missing}");
    }
}
