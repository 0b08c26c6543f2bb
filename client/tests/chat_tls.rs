//! `chat` over `wss://`: two scripted clients talk through a TLS server
//! whose development CA they trust with `--ca-file`; without the right CA the
//! client refuses to connect.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
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

/// Generates certificates into `dir/certs` and starts a TLS server there.
fn start_tls_server(dir: &Path) -> TlsServer {
    let certs = dir.join("certs");
    let status = Command::new(server_binary())
        .arg("gen-cert")
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .expect("run chat-server gen-cert");
    assert!(status.success());
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
        .arg(certs.join("cert.pem"))
        .arg("--tls-key")
        .arg(certs.join("key.pem"))
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
