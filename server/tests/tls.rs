//! `wss://`: a server started with a generated certificate serves TLS
//! clients that trust its CA, refuses plain WebSocket clients cleanly, and is
//! refused by clients that trust another CA.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{message_to, register_message, TestServer, SECRET};
use protocol::{decode_server, encode_client, ServerMessage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::{Message, WebSocket};

type TlsSocket = WebSocket<StreamOwned<ClientConnection, TcpStream>>;

/// Runs `chat-server gen-cert DIR` and returns DIR's path.
fn generate_certificates(dir: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("gen-cert")
        .arg(dir)
        .status()
        .expect("run chat-server gen-cert");
    assert!(status.success());
    for name in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.join(name).exists(), "{name} written");
    }
}

fn client_config(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Opens a `wss://` connection trusting `ca`.
fn connect_tls(port: u16, ca: &Path) -> Result<TlsSocket, String> {
    let socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let session = ClientConnection::new(client_config(ca), name).map_err(|e| e.to_string())?;
    let stream = StreamOwned::new(session, socket);
    tungstenite::client(format!("wss://localhost:{port}/"), stream)
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn send(ws: &mut TlsSocket, message: &protocol::ClientMessage) {
    ws.send(Message::text(encode_client(message))).unwrap();
}

fn recv(ws: &mut TlsSocket) -> ServerMessage {
    loop {
        match ws.read().expect("a frame over TLS") {
            Message::Text(text) => return decode_server(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn log_in(ws: &mut TlsSocket, name: &str) {
    send(ws, &register_message(name, SECRET, "x@example.com"));
    assert!(matches!(recv(ws), ServerMessage::SuccessRegister(_)));
    send(ws, &common::login_with_secret(name, SECRET));
    assert!(matches!(recv(ws), ServerMessage::SuccessLogin(_)));
}

/// A server serving `wss://` with the certificate generated in `certs`.
fn start_tls_server(certs: &Path) -> TestServer {
    let cert = certs.join("cert.pem");
    let key = certs.join("key.pem");
    TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
}

/// Two clients exchange a message over `wss://` with a generated
/// certificate; the log says the server speaks TLS.
#[test]
fn messages_flow_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    generate_certificates(certs.path());
    let server = start_tls_server(certs.path());
    assert!(
        server.log_text().contains("wss://"),
        "{}",
        server.log_text()
    );
    let ca = certs.path().join("ca.pem");
    let mut alice = connect_tls(server.port, &ca).expect("TLS handshake");
    let mut bob = connect_tls(server.port, &ca).expect("TLS handshake");
    log_in(&mut alice, "alice");
    log_in(&mut bob, "bob");
    send(&mut alice, &message_to("bob", "over tls", Some("t1")));
    assert!(matches!(recv(&mut bob), ServerMessage::Message(m) if m.content == "over tls"));
    assert!(
        matches!(recv(&mut alice), ServerMessage::Ack(a) if a.client_message_id.as_deref() == Some("t1"))
    );
}

/// A plain `ws://` client against the TLS port fails cleanly, and TLS
/// clients are served before and after it.
#[test]
fn a_plain_client_on_the_tls_port_fails_without_hurting_others() {
    let certs = tempfile::tempdir().unwrap();
    generate_certificates(certs.path());
    let server = start_tls_server(certs.path());
    let ca = certs.path().join("ca.pem");
    let mut alice = connect_tls(server.port, &ca).expect("TLS handshake");
    log_in(&mut alice, "alice");
    assert!(
        common::Client::try_connect(server.port).is_err(),
        "plain ws on a TLS port"
    );
    send(&mut alice, &protocol::ClientMessage::Ping);
    assert!(matches!(recv(&mut alice), ServerMessage::Pong));
    let mut again = connect_tls(server.port, &ca).expect("still serving TLS");
    send(&mut again, &protocol::ClientMessage::Ping);
    assert!(matches!(recv(&mut again), ServerMessage::Pong));
}

/// A client that trusts another CA refuses the server's certificate.
#[test]
fn a_client_trusting_another_ca_refuses_the_server() {
    let certs = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    generate_certificates(certs.path());
    generate_certificates(other.path());
    let server = start_tls_server(certs.path());
    let refused = connect_tls(server.port, &other.path().join("ca.pem"));
    let Err(error) = refused else {
        panic!("the wrong CA must be refused");
    };
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
}

/// The web client and `/healthz` are served over TLS too: the same port
/// answers plain HTTPS requests, and ends each answer with close_notify.
#[test]
fn plain_https_requests_are_answered() {
    use std::io::{Read, Write};
    let certs = tempfile::tempdir().unwrap();
    generate_certificates(certs.path());
    let server = start_tls_server(certs.path());
    let ca = certs.path().join("ca.pem");
    for (path, expected) in [("/", "<!doctype html>"), ("/healthz", "\"status\":\"ok\"")] {
        let socket = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let session = ClientConnection::new(client_config(&ca), name).unwrap();
        let mut stream = StreamOwned::new(session, socket);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            server.port
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("the whole answer, then close_notify");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains(expected), "{answer}");
    }
}
