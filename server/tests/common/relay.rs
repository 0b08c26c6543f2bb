//! A TCP relay a test can cut and restore ([`TcpRelay`]): one server
//! loses NATS or PostgreSQL while the shared service runs on for everyone
//! else.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the relay waits to reach the service for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP relay in front of a service (NATS, PostgreSQL) for one test's
/// servers: the test cuts it (every relayed connection closed, new ones
/// refused) and restores it, so one server loses the service while the
/// service, shared with other tests, runs on.
pub struct TcpRelay {
    /// Where the relay listens: `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl TcpRelay {
    /// A relay to `target` (`HOST:PORT`), open.
    pub fn start(target: &str) -> TcpRelay {
        let target = target
            .to_socket_addrs()
            .expect("the relayed address")
            .next()
            .expect("an address");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking relay");
        let addr = listener.local_addr().expect("its address");
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (accept_open, accept_stop) = (Arc::clone(&open), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !accept_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if accept_open.load(Ordering::Relaxed) => {
                        relay(client, target, &accept_open, &accept_stop);
                    }
                    Ok(_) => {} // cut: dropped at once
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TcpRelay { addr, open, stop }
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Relaxed);
    }

    /// Accepts and relays again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.open.store(false, Ordering::Relaxed);
    }
}

/// Copies bytes both ways between `client` and `target` until either
/// ends or the relay is cut.
fn relay(client: TcpStream, target: SocketAddr, open: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    for (from, to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ] {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let (open, stop) = (Arc::clone(open), Arc::clone(stop));
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
            let mut buffer = [0u8; 16 * 1024];
            while open.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                match from.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}
