//! TLS (`wss://`): rustls under tungstenite, inside the same non-blocking
//! loop, and development certificates.
//!
//! [`Transport`] is what a [`Connection`](crate::connection::Connection)'s
//! WebSocket runs over: the plain socket, or a rustls server session on it.
//! rustls does its handshake as the first bytes are read; when the socket
//! would block, the `WouldBlock` travels up through tungstenite like any
//! other, and the connection resumes on the next readiness event.
//!
//! The connection reads the request head itself (to tell a WebSocket
//! upgrade from plain HTTP) and gives the bytes back with
//! [`Transport::unread`], so tungstenite's handshake reads them again.
//!
//! One adaptation: rustls buffers at most 64 KiB of unsent plaintext and then
//! accepts zero bytes, which tungstenite would take for a broken connection,
//! so a full rustls buffer is reported as `WouldBlock` instead — the frames
//! stay in tungstenite's buffer, where the slow-consumer cap sees them.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// Why TLS could not be set up.
#[derive(Debug)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed: check the path
    /// and that it is PEM.
    Pem(String),
    /// rustls refused the certificate/key pair (e.g. they do not match).
    Config(rustls::Error),
    /// Generating a development certificate failed.
    Generate(String),
    /// Writing the generated files failed.
    Io(io::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem(detail) => write!(f, "cannot read PEM: {detail}"),
            TlsError::Config(error) => write!(f, "TLS configuration refused: {error}"),
            TlsError::Generate(detail) => write!(f, "cannot generate a certificate: {detail}"),
            TlsError::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Loads a certificate chain and its private key (PEM) into a server config.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(format!("{}: no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// A connection's byte stream: plain TCP or TLS over it, and the bytes of
/// the request head read ahead to route it, which the WebSocket handshake
/// then reads again.
pub struct Transport {
    stream: Stream,
    /// Bytes already read from the stream, given back first (empty once the
    /// handshake has read them: the hot path then costs one comparison).
    read_ahead: Vec<u8>,
    /// How much of `read_ahead` has been given back.
    read_ahead_at: usize,
    /// The last read of the plain socket filled less than it was given, so
    /// the socket had nothing more: the next read answers `WouldBlock`
    /// without asking the kernel, until the socket is reported readable
    /// again ([`Transport::readable`]). Epoll is edge-triggered: bytes that
    /// arrive after that read raise a new readiness event, so nothing waits
    /// unseen, and each frame read costs one `recv` instead of two.
    drained: bool,
    /// A readiness event said the peer closed its side: its FIN may sit
    /// behind the bytes a short read took, and no further event comes for
    /// it, so from then on every read asks the kernel (until end-of-stream).
    peer_closed: bool,
}

enum Stream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Transport {
    /// Wraps an accepted socket; with `tls`, a new rustls server session.
    pub fn new(socket: TcpStream, tls: Option<&Arc<ServerConfig>>) -> io::Result<Transport> {
        let stream = match tls {
            None => Stream::Plain(socket),
            Some(config) => {
                let session =
                    ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
                Stream::Tls(Box::new(StreamOwned::new(session, socket)))
            }
        };
        Ok(Transport {
            stream,
            read_ahead: Vec::new(),
            read_ahead_at: 0,
            drained: false,
            peer_closed: false,
        })
    }

    /// The socket underneath, for mio (de)registration.
    pub fn socket_mut(&mut self) -> &mut TcpStream {
        match &mut self.stream {
            Stream::Plain(socket) => socket,
            Stream::Tls(stream) => &mut stream.sock,
        }
    }

    /// The socket was reported ready (`peer_closed`: the event said the
    /// peer shut its side): the next read asks the kernel.
    pub fn readable(&mut self, peer_closed: bool) {
        self.drained = false;
        self.peer_closed |= peer_closed;
    }

    /// Puts bytes already read back in front of the stream: the next reads
    /// return them first.
    pub fn unread(&mut self, bytes: Vec<u8>) {
        assert!(
            self.read_ahead_at == self.read_ahead.len(),
            "bytes are unread once, before anything else reads them"
        );
        self.read_ahead = bytes;
        self.read_ahead_at = 0;
    }

    /// Ends our direction of the connection after an answer (TLS:
    /// close_notify first, best effort): the peer reads end-of-stream.
    pub fn close_write(&mut self) {
        if let Stream::Tls(stream) = &mut self.stream {
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
        let _ = self.socket_mut().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read_ahead_at < self.read_ahead.len() {
            let ahead = &self.read_ahead[self.read_ahead_at..];
            let count = ahead.len().min(buf.len());
            buf[..count].copy_from_slice(&ahead[..count]);
            self.read_ahead_at += count;
            if self.read_ahead_at == self.read_ahead.len() {
                self.read_ahead = Vec::new();
                self.read_ahead_at = 0;
            }
            return Ok(count);
        }
        match &mut self.stream {
            Stream::Plain(socket) => {
                if self.drained {
                    self.drained = false;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let count = socket.read(buf)?;
                self.drained = !self.peer_closed && count > 0 && count < buf.len();
                Ok(count)
            }
            Stream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Tls(stream) => match stream.write(buf)? {
                // rustls's plaintext buffer is full: wait for WRITABLE.
                0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
                written => Ok(written),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

/// Writes a development CA (`ca.pem`) and a server certificate signed by it
/// (`cert.pem`, `key.pem`, mode 0600) for `hosts` into `dir`. Clients trust
/// `ca.pem` (`chat --ca-file`). For development only: the CA's key is not
/// kept, so nothing else can ever be signed with it.
pub fn generate_dev_certificates(dir: &Path, hosts: &[String]) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());

    let ca_key = KeyPair::generate().map_err(generate)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chat-server development CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(generate)?;
    let mut server_params = CertificateParams::new(hosts.to_vec()).map_err(generate)?;
    server_params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("localhost", String::as_str),
    );
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(generate)?;

    std::fs::create_dir_all(dir).map_err(TlsError::Io)?;
    write_private(&dir.join("ca.pem"), &ca_cert.pem())?;
    write_private(&dir.join("cert.pem"), &server_cert.pem())?;
    write_private(&dir.join("key.pem"), &server_key.serialize_pem())?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(TlsError::Io)?;
    file.write_all(text.as_bytes()).map_err(TlsError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain transport over a real loopback socket, and its peer.
    fn plain_pair() -> (Transport, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let transport = Transport::new(TcpStream::from_std(accepted), None).unwrap();
        (transport, peer)
    }

    /// Reads until bytes come (the peer's write crosses loopback).
    fn read_some(transport: &mut Transport, buf: &mut [u8]) -> usize {
        for _ in 0..1000 {
            match transport.read(buf) {
                Ok(count) => return count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    transport.readable(false);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(error) => panic!("{error}"),
            }
        }
        panic!("nothing arrived");
    }

    #[test]
    fn a_short_read_skips_the_next_recv_until_the_socket_is_readable_again() {
        let (mut transport, mut peer) = plain_pair();
        let mut buf = [0u8; 64];
        peer.write_all(b"hello").unwrap();
        assert_eq!(read_some(&mut transport, &mut buf), 5);
        // Bytes that arrive after the short read wait for their readiness
        // event: the read does not ask the kernel.
        peer.write_all(b"world").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let skipped = transport.read(&mut buf).unwrap_err();
        assert_eq!(skipped.kind(), io::ErrorKind::WouldBlock);
        transport.readable(false);
        assert_eq!(transport.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"world");
    }

    /// Bytes and the FIN behind them raise one event: the read after the
    /// short one must still find the end of the stream.
    #[test]
    fn after_an_event_that_saw_the_peer_close_every_read_asks_the_kernel() {
        let (mut transport, mut peer) = plain_pair();
        peer.write_all(b"bye").unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        transport.readable(true);
        let mut buf = [0u8; 64];
        assert_eq!(transport.read(&mut buf).unwrap(), 3);
        assert_eq!(transport.read(&mut buf).unwrap(), 0, "end of stream");
    }

    #[test]
    fn a_full_read_asks_the_kernel_again() {
        let (mut transport, mut peer) = plain_pair();
        peer.write_all(&[7u8; 100]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut buf = [0u8; 64];
        assert_eq!(read_some(&mut transport, &mut buf), 64);
        assert_eq!(transport.read(&mut buf).unwrap(), 36);
    }

    #[test]
    fn generated_certificates_load_into_a_server_config() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        generate_dev_certificates(dir.path(), &hosts).unwrap();
        server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        let missing = server_config(&dir.path().join("nope.pem"), &dir.path().join("key.pem"));
        assert!(matches!(missing, Err(TlsError::Pem(_))));
        let mismatched = server_config(&dir.path().join("ca.pem"), &dir.path().join("key.pem"));
        assert!(
            mismatched.is_err(),
            "a key that is not the certificate's is refused"
        );
    }
}
