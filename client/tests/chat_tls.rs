//! `chat` over `wss://`: two scripted clients talk through a TLS server
//! whose development CA they trust with `--ca-file`, or through the system
//! trust store (`SSL_CERT_FILE`); a self-signed CA:TRUE certificate given
//! with `--ca-file` is pinned; without the right CA the client refuses to
//! connect, and says why and what to do in words.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{chat_command, run_script, server_binary};

/// A TLS chat-server on an ephemeral port; killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Generates certificates into `dir/certs` (for `names`, or gen-cert's
/// defaults) and starts a TLS server there.
fn start_tls_server(dir: &Path) -> TlsServer {
    start_gen_cert_server(dir, &[])
}

fn start_gen_cert_server(dir: &Path, names: &[&str]) -> TlsServer {
    let certs = dir.join("certs");
    let mut gen_cert = Command::new(server_binary());
    gen_cert.arg("gen-cert").arg(&certs);
    for name in names {
        gen_cert.args(["--name", name]);
    }
    let status = gen_cert
        .stdout(Stdio::null())
        .status()
        .expect("run chat-server gen-cert");
    assert!(status.success());
    start_server_with(dir, &certs.join("cert.pem"), &certs.join("key.pem"))
}

/// Starts a TLS server presenting `cert` (PEM) with `key`.
fn start_server_with(dir: &Path, cert: &Path, key: &Path) -> TlsServer {
    let mut child = Command::new(server_binary())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--pbkdf2-iterations",
            "1000",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--log-file")
        .arg(dir.join("server.log"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chat-server");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let port = line
        .trim()
        .strip_prefix("chat-server listening on 127.0.0.1:")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from chat-server: {line:?}"));
    TlsServer { child, port }
}

/// What `openssl req -x509 -newkey ... -subj /CN=localhost -addext
/// subjectAltName=DNS:localhost` makes: one self-signed certificate with
/// CA:TRUE basic constraints, used as the server's own. Returns the paths
/// of the certificate and its key.
fn self_signed_ca_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("self-signed.pem"), dir.join("self-signed.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A development CA and a server certificate it signed for `localhost`
/// that expired on 2020-01-02. Returns the paths of the CA, the
/// certificate and its key.
fn expired_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = date_time_ymd(2019, 1, 1);
    params.not_after = date_time_ymd(2020, 1, 2);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("expired-ca.pem"),
        dir.join("expired.pem"),
        dir.join("expired.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Registers and logs in `name` through `command`; the run's outcome.
fn register(command: Command, name: &str) -> common::Finished {
    run_script(
        command,
        &format!(
            "/register {name} {name}@example.com password-{name}\n/login {name} password-{name}\n"
        ),
    )
}

/// Registration, login and a message exchange all work over `wss://`.
#[test]
fn two_clients_talk_over_wss() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_tls_server(dir.path());
    let url = format!("wss://localhost:{}", server.port);
    let ca = dir.path().join("certs/ca.pem");
    let chat = |name: &str| {
        let mut command = chat_command(&url, &dir.path().join(format!("{name}.session")));
        command.arg("--ca-file").arg(&ca);
        command
    };
    let done = run_script(
        chat("bob"),
        "/register bob bob@example.com password-bob\n/login bob password-bob\n",
    );
    assert_eq!(done.code, 0, "{done:?}");
    let done = run_script(
        chat("alice"),
        "/register alice alice@example.com password-alice\n\
         /login alice password-alice\n/msg bob hello over tls\n",
    );
    assert_eq!(done.code, 0, "{done:?}");
    let done = run_script(chat("bob"), "/history alice\n");
    assert_eq!(done.code, 0, "{done:?}");
    assert!(done.stdout.contains("hello over tls"), "{done:?}");
}

/// Without `--ca-file`, or with another CA, the client does not connect.
#[test]
fn the_client_refuses_a_server_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_tls_server(dir.path());
    let url = format!("wss://localhost:{}", server.port);
    let session = dir.path().join("x.session");

    let done = run_script(chat_command(&url, &session), "/login x password-x\n");
    assert_ne!(done.code, 0, "{done:?}");
    assert!(done.stderr.contains("not signed by a CA"), "{done:?}");
    assert!(done.stderr.contains("--ca-file"), "{done:?}");

    let other = tempfile::tempdir().unwrap();
    let other_server = start_tls_server(other.path());
    drop(other_server);
    let mut command = chat_command(&url, &session);
    command
        .arg("--ca-file")
        .arg(other.path().join("certs/ca.pem"));
    let done = run_script(command, "/login x password-x\n");
    assert_ne!(done.code, 0, "{done:?}");
}

/// With no `--ca-file`, a server whose CA is in the system trust store
/// (here: the bundle `SSL_CERT_FILE` names, as with OpenSSL) is trusted.
#[test]
fn the_system_trust_store_is_used_without_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_tls_server(dir.path());
    let url = format!("wss://localhost:{}", server.port);
    let mut command = chat_command(&url, &dir.path().join("carol.session"));
    command
        .env("SSL_CERT_FILE", dir.path().join("certs/ca.pem"))
        .env_remove("SSL_CERT_DIR");
    let done = register(command, "carol");
    assert_eq!(done.code, 0, "{done:?}");
    assert!(done.stdout.contains("logged in as carol"), "{done:?}");
}

/// A self-signed certificate with CA:TRUE (as `openssl req -x509` makes)
/// is accepted when that very certificate is given with `--ca-file`; without
/// it, the refusal says what the certificate is and how to trust it.
#[test]
fn a_self_signed_server_certificate_given_with_ca_file_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_ca_certificate(dir.path());
    let server = start_server_with(dir.path(), &cert, &key);
    let url = format!("wss://localhost:{}", server.port);

    let mut command = chat_command(&url, &dir.path().join("dave.session"));
    command.arg("--ca-file").arg(&cert);
    let done = register(command, "dave");
    assert_eq!(done.code, 0, "{done:?}");
    assert!(done.stdout.contains("logged in as dave"), "{done:?}");

    let done = run_script(
        chat_command(&url, &dir.path().join("eve.session")),
        "/login eve password-eve\n",
    );
    assert_eq!(done.code, 2, "{done:?}");
    assert!(
        done.stderr.contains("presents a CA certificate"),
        "{done:?}"
    );
    assert!(done.stderr.contains("--ca-file"), "{done:?}");
}

/// A certificate without the name connected to is refused with the names
/// it has and the command that makes a right one.
#[test]
fn a_certificate_for_another_name_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_gen_cert_server(dir.path(), &["localhost"]);
    let url = format!("wss://127.0.0.1:{}", server.port);
    let mut command = chat_command(&url, &dir.path().join("x.session"));
    command
        .arg("--ca-file")
        .arg(dir.path().join("certs/ca.pem"));
    let done = run_script(command, "/login x password-x\n");
    assert_eq!(done.code, 2, "{done:?}");
    assert!(
        done.stderr.contains("not valid for the name 127.0.0.1"),
        "{done:?}"
    );
    assert!(done.stderr.contains("localhost"), "{done:?}");
    assert!(
        done.stderr
            .contains("chat-server gen-cert DIR --name 127.0.0.1"),
        "{done:?}"
    );
}

/// An expired certificate is refused with its date and the fix.
#[test]
fn an_expired_certificate_is_explained_with_its_date() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = expired_certificate(dir.path());
    let server = start_server_with(dir.path(), &cert, &key);
    let url = format!("wss://localhost:{}", server.port);
    let mut command = chat_command(&url, &dir.path().join("x.session"));
    command.arg("--ca-file").arg(&ca);
    let done = run_script(command, "/login x password-x\n");
    assert_eq!(done.code, 2, "{done:?}");
    assert!(
        done.stderr.contains("expired on 2020-01-02 00:00 UTC"),
        "{done:?}"
    );
    assert!(done.stderr.contains("gen-cert"), "{done:?}");
}

/// A server that does not speak TLS is named as such.
#[test]
fn a_plain_server_behind_wss_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path());
    let url = format!("wss://127.0.0.1:{}", server.port);
    let done = run_script(
        chat_command(&url, &dir.path().join("x.session")),
        "/login x password-x\n",
    );
    assert_eq!(done.code, 2, "{done:?}");
    assert!(done.stderr.contains("during the TLS handshake"), "{done:?}");
    assert!(done.stderr.contains("connect with ws://"), "{done:?}");
}
