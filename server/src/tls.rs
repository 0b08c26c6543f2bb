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
//! Reads are buffered here, not in tungstenite: its codec keeps its read
//! buffer for the connection's whole life, so it is given a small one
//! ([`config::CODEC_READ_BYTES`]), and a read smaller than
//! [`config::READ_AHEAD_BYTES`] takes that much from the socket (or rustls)
//! into the thread's one scratch buffer ([`SCRATCH`]). What the codec's
//! buffer cannot take is copied into a read-ahead of the connection's own,
//! exactly that long, which exists only while it holds unread bytes: an
//! idle connection holds none, a frame that fits the codec's buffer costs no
//! allocation, and a busy connection still asks the kernel once per 2 KiB.
//!
//! One adaptation: rustls buffers at most 64 KiB of unsent plaintext and then
//! accepts zero bytes, which tungstenite would take for a broken connection,
//! so a full rustls buffer is reported as `WouldBlock` instead — the frames
//! stay in tungstenite's buffer, where the slow-consumer cap sees them.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::config;

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

thread_local! {
    /// Where a small read lands first: one [`config::READ_AHEAD_BYTES`]
    /// buffer per thread (the event loop's), reused by every connection, so
    /// a read allocates and zeroes nothing; only what the caller cannot take
    /// is copied out (`Transport::read`). A buffer of each connection's own
    /// was calloc'd and freed per read: 17 % of the loop's instructions
    /// (`scripts/callgrind.sh`).
    static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; config::READ_AHEAD_BYTES].into_boxed_slice());
}

/// A connection's byte stream: plain TCP or TLS over it, and the bytes read
/// ahead of the reader: the request head read to route it (which the
/// WebSocket handshake then reads again), or the rest of a
/// [`config::READ_AHEAD_BYTES`] read that the codec's small reads have not
/// taken yet.
pub struct Transport {
    stream: Stream,
    /// Bytes already read from the stream, given back first. Without
    /// capacity (nothing allocated) whenever it is empty: it is freed as
    /// its last byte is given out.
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
    /// return them first (then what was read ahead and not yet given out).
    pub fn unread(&mut self, mut bytes: Vec<u8>) {
        bytes.extend_from_slice(&self.read_ahead[self.read_ahead_at..]);
        self.read_ahead = bytes;
        self.read_ahead_at = 0;
        if self.read_ahead.is_empty() {
            self.read_ahead = Vec::new();
        }
    }

    /// Gives out read-ahead bytes into `buf`; frees the buffer once empty.
    fn give_ahead(&mut self, buf: &mut [u8]) -> usize {
        let ahead = &self.read_ahead[self.read_ahead_at..];
        let count = ahead.len().min(buf.len());
        buf[..count].copy_from_slice(&ahead[..count]);
        self.read_ahead_at += count;
        if self.read_ahead_at == self.read_ahead.len() {
            self.read_ahead = Vec::new();
            self.read_ahead_at = 0;
        }
        count
    }

    /// One read of the stream itself into `buf`.
    fn read_stream(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
            return Ok(self.give_ahead(buf));
        }
        if buf.len() >= config::READ_AHEAD_BYTES || buf.is_empty() {
            return self.read_stream(buf);
        }
        // A small read: take a whole read-ahead's worth into the scratch,
        // give out what fits, keep only the rest.
        SCRATCH.with_borrow_mut(|scratch| {
            let count = self.read_stream(scratch)?;
            let given = count.min(buf.len());
            buf[..given].copy_from_slice(&scratch[..given]);
            if count > given {
                self.read_ahead = scratch[given..count].to_vec();
                self.read_ahead_at = 0;
            }
            Ok(given)
        })
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

    /// The codec's small reads: one `recv` of up to a read-ahead's worth,
    /// given out in pieces, and the buffer freed once the last is taken.
    #[test]
    fn small_reads_share_one_recv_and_the_read_ahead_is_freed_once_drained() {
        let (mut transport, mut peer) = plain_pair();
        let sent: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        peer.write_all(&sent).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut buf = [0u8; config::CODEC_READ_BYTES];
        let mut got = Vec::new();
        let first = read_some(&mut transport, &mut buf);
        got.extend_from_slice(&buf[..first]);
        assert_eq!(got.len(), config::CODEC_READ_BYTES);
        assert_eq!(
            transport.read_ahead.len(),
            sent.len() - config::CODEC_READ_BYTES,
            "the rest of the one recv, kept"
        );
        // Bytes sent now are not read before the next readiness event: the
        // rest comes from the one `recv` already made.
        peer.write_all(b"later").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        while got.len() < sent.len() {
            let count = transport.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..count]);
        }
        assert_eq!(got, sent);
        assert_eq!(transport.read_ahead.capacity(), 0, "freed once drained");
        let skipped = transport.read(&mut buf).unwrap_err();
        assert_eq!(skipped.kind(), io::ErrorKind::WouldBlock);
        transport.readable(false);
        assert_eq!(transport.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"later");
        assert_eq!(transport.read_ahead.capacity(), 0, "nothing left over");
    }

    /// A frame that fits the caller's buffer leaves nothing behind: no
    /// read-ahead is allocated at all.
    #[test]
    fn a_read_that_fits_the_callers_buffer_keeps_no_read_ahead() {
        let (mut transport, mut peer) = plain_pair();
        peer.write_all(&[9u8; 100]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut buf = [0u8; config::CODEC_READ_BYTES];
        assert_eq!(read_some(&mut transport, &mut buf), 100);
        assert_eq!(&buf[..100], &[9u8; 100]);
        assert_eq!(transport.read_ahead.capacity(), 0);
    }

    /// A large read goes straight to the socket: no read-ahead.
    #[test]
    fn a_read_as_large_as_the_read_ahead_uses_no_read_ahead() {
        let (mut transport, mut peer) = plain_pair();
        peer.write_all(&[1u8; 3000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut buf = vec![0u8; config::READ_AHEAD_BYTES];
        assert_eq!(
            read_some(&mut transport, &mut buf),
            config::READ_AHEAD_BYTES
        );
        assert_eq!(transport.read_ahead.capacity(), 0);
    }

    /// Bytes given back go in front of what was read ahead.
    #[test]
    fn unread_bytes_come_before_the_rest_of_the_read_ahead() {
        let (mut transport, mut peer) = plain_pair();
        peer.write_all(b"abcdef").unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(read_some(&mut transport, &mut buf), 2);
        transport.unread(b"xy".to_vec());
        let mut rest = Vec::new();
        while rest.len() < 6 {
            let count = transport.read(&mut buf).unwrap();
            rest.extend_from_slice(&buf[..count]);
        }
        assert_eq!(rest, b"xycdef");
        assert_eq!(transport.read_ahead.capacity(), 0);
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
