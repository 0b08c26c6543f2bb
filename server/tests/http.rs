//! Plain HTTP on the WebSocket port, through the real binary and raw TCP:
//! the embedded web client with its security and cache headers, gzip and
//! 304s, the refusals (404, 405, 400, 431), `--no-web`, `/healthz`,
//! `/metrics` and who may read it, the limits a request shares with a
//! handshake, and WebSocket upgrades on any path.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{logged_in, message_to, register_all, tcp_connect_from, Client, TestServer};
use protocol::ServerMessage;
use tungstenite::client::IntoClientRequest;

/// How long a test waits for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is on a new connection from `stream` and reads the
/// answer until the server closes.
fn exchange(mut stream: TcpStream, request: &[u8]) -> Answer {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => bytes.extend_from_slice(&chunk[..count]),
            // A refusal at accept (503) drops the socket with the request
            // unread, which resets the connection after the answer.
            Err(error) if error.kind() == ErrorKind::ConnectionReset && !bytes.is_empty() => break,
            Err(error) => panic!("the server answers and closes: {error}"),
        }
    }
    parse_answer(&bytes)
}

fn parse_answer(bytes: &[u8]) -> Answer {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("name: value");
            (name.to_owned(), value.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
    }
}

/// `GET path` with `headers` (each `Name: value`) from 127.0.0.1.
fn get(port: u16, path: &str, headers: &[&str]) -> Answer {
    request(port, "GET", path, headers)
}

fn request(port: u16, method: &str, path: &str, headers: &[&str]) -> Answer {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    exchange(stream, text.as_bytes())
}

/// The web client's folder in the repository.
fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../client/web")
}

/// A file of the web client as it is in the repository, by URL path.
fn web_file(url_path: &str) -> Vec<u8> {
    let path = web_dir().join(url_path.trim_start_matches('/'));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The URL paths of the web client's files ending in `.extension`, largest
/// first (whatever the client's files are called: they change with it).
fn web_paths(extension: &str) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, extension: &str, found: &mut Vec<(u64, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') {
                continue; // not embedded (build.rs)
            }
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}/"), extension, found);
            } else if name.ends_with(&format!(".{extension}")) {
                let size = entry.metadata().unwrap().len();
                found.push((size, format!("{prefix}{name}")));
            }
        }
    }
    let mut found = Vec::new();
    walk(&web_dir(), "/", extension, &mut found);
    found.sort_by(|a, b| b.cmp(a));
    assert!(!found.is_empty(), "client/web has no .{extension} file");
    found.into_iter().map(|(_, path)| path).collect()
}

/// `GET /` serves the embedded index.html with the CSP (no inline script,
/// connections only to this server), nosniff, no referrer, an ETag and
/// `Cache-Control: no-cache`; its module and style sheet come with their
/// content types.
#[test]
fn the_web_client_is_served_with_its_security_and_cache_headers() {
    let server = TestServer::start(&[]);
    let index = get(server.port, "/", &[]);
    assert_eq!(index.status, 200, "{index:?}");
    assert_eq!(index.body, web_file("/index.html"));
    assert_eq!(
        index.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let csp = index.header("Content-Security-Policy").expect("a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(index.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(index.header("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(index.header("Cache-Control"), Some("no-cache"));
    let etag = index.header("ETag").expect("an ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );
    assert_eq!(index.header("Connection"), Some("close"));

    for path in web_paths("js") {
        let script = get(server.port, &path, &[]);
        assert_eq!(script.status, 200, "{path}");
        assert_eq!(script.body, web_file(&path), "{path}");
        let content_type = script.header("Content-Type");
        assert_eq!(content_type, Some("text/javascript; charset=utf-8"));
    }
    for path in web_paths("css") {
        let style = get(server.port, &path, &[]);
        assert_eq!(style.body, web_file(&path), "{path}");
        assert_eq!(
            style.header("Content-Type"),
            Some("text/css; charset=utf-8")
        );
        assert_ne!(
            style.header("ETag"),
            index.header("ETag"),
            "an ETag per file"
        );
    }
}

/// A browser that accepts gzip gets the build-time gzip copy (its own ETag,
/// `Vary: Accept-Encoding`), which unpacks to the file.
#[test]
fn gzip_is_sent_when_the_browser_accepts_it() {
    let server = TestServer::start(&[]);
    // The largest script: big enough for gzip to pay (build.rs keeps a gzip
    // copy only when it is smaller).
    let script = &web_paths("js")[0];
    let plain = get(server.port, script, &[]);
    let packed = get(server.port, script, &["Accept-Encoding: gzip, deflate, br"]);
    assert_eq!(packed.status, 200);
    assert_eq!(packed.header("Content-Encoding"), Some("gzip"));
    assert_eq!(packed.header("Vary"), Some("Accept-Encoding"));
    assert_ne!(packed.header("ETag"), plain.header("ETag"));
    assert_eq!(
        packed.header("Content-Length"),
        Some(packed.body.len().to_string().as_str())
    );
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(packed.body.as_slice())
        .read_to_end(&mut unpacked)
        .expect("a gzip body");
    assert_eq!(unpacked, web_file(script));
    assert_eq!(plain.header("Content-Encoding"), None);
    assert_eq!(plain.body, web_file(script));
}

/// `If-None-Match` with the ETag just served gets 304 and no body; a stale
/// one gets the file. HEAD gets GET's headers and no body.
#[test]
fn a_matching_etag_gets_304_and_head_gets_no_body() {
    let server = TestServer::start(&[]);
    let first = get(server.port, "/", &[]);
    let etag = first.header("ETag").unwrap().to_owned();
    let again = get(server.port, "/", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("ETag"), Some(etag.as_str()));
    let stale = get(server.port, "/", &["If-None-Match: \"stale\""]);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, first.body);
    let head = request(server.port, "HEAD", "/", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("Content-Length"),
        Some(first.body.len().to_string().as_str())
    );
}

/// Unknown paths are 404, other methods 405 (with `Allow`), garbage and a
/// 1.1 request without Host 400, a TLS handshake a close — and the server
/// goes on serving.
#[test]
fn refusals_are_plain_http_errors() {
    let server = TestServer::start(&[]);
    assert_eq!(get(server.port, "/nope.js", &[]).status, 404);
    assert_eq!(get(server.port, "/../Cargo.toml", &[]).status, 404);
    let post = request(server.port, "POST", "/", &["Content-Length: 0"]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let garbage = exchange(stream, b"\x01\x02\x00 not http\r\n\r\n");
    assert_eq!(garbage.status, 400);
    // A TLS client on the plain port gets no plain-text answer it could not
    // read: the connection just closes (its TLS stack explains).
    let mut tls = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tls.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    tls.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer); // end of stream or a reset
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let no_host = exchange(stream, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(no_host.status, 400);
    assert_eq!(get(server.port, "/", &[]).status, 200);
}

/// A request head over 16 KiB is refused with 431 before it is all read.
#[test]
fn a_request_head_over_the_byte_limit_is_refused() {
    let server = TestServer::start(&[]);
    let cookie = format!("Cookie: {}", "a".repeat(17 * 1024));
    let answer = get(server.port, "/", &[&cookie]);
    assert_eq!(answer.status, 431);
    let fits = format!("Cookie: {}", "a".repeat(8 * 1024));
    assert_eq!(get(server.port, "/", &[&fits]).status, 200);
}

/// A silent half-request holds a connection like a handshake does: with
/// `--max-connections 1` the next connection is refused (503) until it goes.
/// (The 10-second deadline it shares with a handshake is
/// `limits.rs`'s `a_stalled_handshake_is_dropped_after_ten_seconds`, whose
/// stalled request is just such a plain half-request.)
#[test]
fn a_half_request_counts_toward_max_connections() {
    let server = TestServer::start(&["--max-connections", "1"]);
    let mut half = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let refused = get(server.port, "/healthz", &[]);
    assert_eq!(refused.status, 503, "{refused:?}");
    drop(half);
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let answer = get(server.port, "/healthz", &[]);
        if answer.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `--no-web` the client's paths are 404; `/healthz` and `/metrics`
/// still answer, and WebSockets still work.
#[test]
fn no_web_turns_the_client_off_and_nothing_else() {
    let server = TestServer::start(&["--no-web"]);
    assert_eq!(get(server.port, "/", &[]).status, 404);
    assert_eq!(get(server.port, &web_paths("js")[0], &[]).status, 404);
    assert_eq!(get(server.port, "/healthz", &[]).status, 200);
    assert_eq!(get(server.port, "/metrics", &[]).status, 200);
    server.client().ping_pong();
}

/// `/healthz` is 200 with `status`, `connections` and `storage_queue`.
#[test]
fn healthz_reports_ok_with_its_numbers() {
    let server = TestServer::start(&[]);
    let mut idle = server.client();
    idle.ping_pong();
    let answer = get(server.port, "/healthz", &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("Content-Type"), Some("application/json"));
    assert_eq!(answer.header("Cache-Control"), Some("no-store"));
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["status"], "ok");
    assert!(json["connections"].as_u64().unwrap() >= 2, "{json}");
    assert!(json["storage_queue"].as_u64().is_some(), "{json}");
}

/// A health probe that is mid-request when SIGTERM arrives is answered 503
/// `shutting_down`, and the server then exits cleanly.
#[test]
fn healthz_is_503_while_shutting_down() {
    let mut server = TestServer::start(&[]);
    let mut probe = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    probe.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    // The server has taken the probe's connection once it answers another.
    assert_eq!(get(server.port, "/healthz", &[]).status, 200);
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while !server.log_text().contains("shutting down") {
        assert!(Instant::now() < deadline, "SIGTERM not logged");
        std::thread::sleep(Duration::from_millis(10)); // polling the log
    }
    let answer = exchange(probe, b"Host: x\r\n\r\n");
    assert_eq!(answer.status, 503, "{answer:?}");
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["status"], "shutting_down");
    let status = server.wait_for_exit();
    assert!(status.success(), "{status}");
}

/// Checks `text` is the Prometheus text exposition format (0.0.4): `# HELP`
/// and `# TYPE` lines, and samples `name{label="value",…} number` whose
/// family was typed before; returns the samples as `(name+labels, value)`.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let name_ok = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name) = (words.next().unwrap(), words.next().unwrap_or(""));
            assert!(name_ok(name), "bad name in {line:?}");
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    let kind = words.next().unwrap_or("");
                    let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                    assert!(known.contains(&kind), "bad type in {line:?}");
                    typed.push((name.to_owned(), kind.to_owned()));
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels in {line:?}"));
            for pair in inner.split(',') {
                let (key, quoted) = pair.split_once('=').expect("key=value");
                assert!(name_ok(key), "bad label name in {line:?}");
                assert!(quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'));
            }
        }
        let family = typed.iter().find(|(family, kind)| {
            name == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str())))
        });
        assert!(family.is_some(), "{name} has no # TYPE before it");
        samples.push((series.to_owned(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(name, _)| name == series)
        .unwrap_or_else(|| panic!("no sample {series}"))
        .1
}

/// `/metrics` answers loopback in the Prometheus text format, and its
/// counters move with traffic: after n messages, at least n stored, acked
/// and delivered, frames and bytes both ways, the logged-in users counted.
#[test]
fn metrics_are_prometheus_text_and_count_the_traffic() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let sent = 20;
    for i in 0..sent {
        alice.send(&message_to("bob", &format!("m{i}"), Some(&format!("c{i}"))));
    }
    for _ in 0..sent {
        assert!(matches!(alice.recv(), ServerMessage::Ack(_)));
        assert!(matches!(bob.recv(), ServerMessage::Message(_)));
    }
    let answer = get(server.port, "/metrics", &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = parse_exposition(&answer.text());
    let n = f64::from(sent);
    assert!(sample(&samples, "chat_messages_stored_total") >= n);
    assert!(sample(&samples, "chat_acks_total") >= n);
    assert!(sample(&samples, "chat_deliveries_total") >= n);
    assert!(sample(&samples, "chat_frames_received_total") >= n);
    assert!(sample(&samples, "chat_frames_sent_total") >= 2.0 * n);
    assert!(sample(&samples, "chat_received_bytes_total") > 0.0);
    assert!(sample(&samples, "chat_sent_bytes_total") > 0.0);
    assert_eq!(sample(&samples, "chat_users_online"), 2.0);
    assert!(sample(&samples, "chat_connections") >= 3.0);
    assert!(sample(&samples, "chat_storage_commit_seconds_count") >= 1.0);
    assert!(
        sample(&samples, "chat_hash_seconds_count") >= 4.0,
        "2 registers, 2 logins"
    );
    assert_eq!(
        sample(&samples, r#"chat_errors_total{type="bad_request"}"#),
        0.0
    );
    assert_eq!(
        sample(&samples, r#"chat_rate_limited_total{kind="message"}"#),
        0.0
    );
    assert_eq!(
        sample(&samples, r#"chat_closes_total{reason="slow_consumer"}"#),
        0.0
    );
    // An error frame moves its counter.
    alice.send_raw("not json");
    assert!(matches!(alice.recv(), ServerMessage::Error(_)));
    let after = parse_exposition(&get(server.port, "/metrics", &[]).text());
    assert_eq!(
        sample(&after, r#"chat_errors_total{type="bad_request"}"#),
        1.0
    );
    assert_eq!(
        sample(&after, r#"chat_http_responses_total{code="200"}"#),
        1.0,
        "the first scrape"
    );
}

/// The embedded store's index passes are timed in `/metrics`: once the
/// messages are old enough, an idle pass indexes them and its time is
/// counted (the scrape is repeated until then, for at most 30 s).
#[test]
fn index_passes_are_timed_in_metrics() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    alice.send(&message_to("bob", "hello", None));
    assert!(matches!(alice.recv(), ServerMessage::Ack(_)));
    assert!(matches!(bob.recv(), ServerMessage::Message(_)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = parse_exposition(&get(server.port, "/metrics", &[]).text());
        let passes = sample(&samples, "chat_storage_index_pass_seconds_count");
        if passes >= 1.0 {
            assert!(sample(&samples, "chat_storage_index_pass_seconds_sum") > 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "no index pass was timed in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/metrics` is answered only to `--metrics-allow` networks: allowed from
/// 127.0.0.1, 403 from 127.0.0.2 — and with a network that holds no
/// loopback address, 403 to everyone here.
#[test]
fn metrics_are_refused_outside_the_allowed_networks() {
    let server = TestServer::start(&["--metrics-allow", "127.0.0.1/32"]);
    let ask = |source: Ipv4Addr| {
        let stream = tcp_connect_from(source, server.port, None).unwrap();
        exchange(stream, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    };
    assert_eq!(ask(Ipv4Addr::new(127, 0, 0, 1)).status, 200);
    let refused = ask(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(refused.status, 403);
    assert!(!refused.text().contains("chat_"), "{}", refused.text());

    let elsewhere = TestServer::start(&["--metrics-allow", "10.0.0.0/8"]);
    assert_eq!(get(elsewhere.port, "/metrics", &[]).status, 403);
    assert_eq!(get(elsewhere.port, "/healthz", &[]).status, 200);
}

/// A malformed `--metrics-allow` is refused at start with a clear message.
#[test]
fn a_bad_metrics_allow_is_refused_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--port", "0", "--metrics-allow", "10.0.0.0/33"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--metrics-allow"), "{stderr}");
}

/// A request with `Upgrade: websocket` is a WebSocket whatever its path —
/// even `/healthz` — and plain requests keep working beside it.
#[test]
fn websocket_upgrades_work_on_any_path() {
    let server = TestServer::start(&[]);
    for path in ["/", "/chat", "/healthz", "/any/path?x=1"] {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        let url = format!("ws://127.0.0.1:{}{path}", server.port);
        let (ws, _) = tungstenite::client(url, stream).expect("the upgrade");
        Client::from_websocket(ws).ping_pong();
    }
    assert_eq!(get(server.port, "/", &[]).status, 200);
}

/// With `--allowed-origin`, a page served by this very server (Origin =
/// `http://` + the request's Host) may open a WebSocket; another origin may
/// not; with `--no-web` (no page of its own) neither may the server's.
#[test]
fn the_servers_own_page_passes_the_origin_check() {
    let handshake = |port: u16, origin: String| {
        let url = format!("ws://127.0.0.1:{port}/");
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tungstenite::client(request, stream)
            .map(|(ws, _)| ws)
            .map_err(|error| error.to_string())
    };
    let server = TestServer::start(&["--allowed-origin", "https://chat.example"]);
    let own = format!("http://127.0.0.1:{}", server.port);
    let ws = handshake(server.port, own).expect("the server's own page");
    Client::from_websocket(ws).ping_pong();
    let other = format!("http://127.0.0.1:{}", server.port + 1);
    assert!(
        handshake(server.port, other).is_err(),
        "another port is another origin"
    );
    assert!(handshake(server.port, "https://evil.example".into()).is_err());

    let no_web = TestServer::start(&["--allowed-origin", "https://chat.example", "--no-web"]);
    let own = format!("http://127.0.0.1:{}", no_web.port);
    assert!(handshake(no_web.port, own).is_err());
}
