//! Smoke tests of `chat-load` against the real `chat-server`: each starts the
//! server on port 0 with a temporary data directory, runs one short scenario,
//! and checks the exit status and the JSON result. They prove behaviour (no
//! loss, every request answered), not speed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A running chat-server, killed and its data removed on drop.
struct Server {
    child: Child,
    addr: String,
    dir: PathBuf,
    /// The CA to trust when the server speaks TLS.
    ca_file: Option<PathBuf>,
}

impl Server {
    fn start() -> Server {
        Server::start_with(false, None)
    }

    /// With `tls`, the server gets a `gen-cert` certificate and serves wss://.
    /// With `rate_limits`, it runs with those rate-limit flags instead of
    /// `--no-rate-limits`.
    fn start_with(tls: bool, rate_limits: Option<&[&str]>) -> Server {
        let load = Path::new(env!("CARGO_BIN_EXE_chat-load"));
        let binary = load.with_file_name("chat-server");
        assert!(
            binary.exists(),
            "chat-server not found at {} — build it first (`cargo build --workspace` or \
             `cargo test --workspace` builds it)",
            binary.display()
        );
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("chat-load-smoke-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Benchmarks run without rate limits where the server has the switch:
        // a closed loop sends as fast as the server acks.
        let help = Command::new(&binary)
            .arg("--help")
            .output()
            .expect("chat-server --help");
        let mut extra: Vec<String> = Vec::new();
        match rate_limits {
            Some(flags) => extra.extend(flags.iter().map(|flag| flag.to_string())),
            None if String::from_utf8_lossy(&help.stdout).contains("--no-rate-limits") => {
                extra.push("--no-rate-limits".into())
            }
            None => {}
        }
        let mut ca_file = None;
        if tls {
            let certs = dir.join("certs");
            let status = Command::new(&binary)
                .arg("gen-cert")
                .arg(&certs)
                .stdout(Stdio::null())
                .status()
                .expect("chat-server gen-cert");
            assert!(status.success());
            for (flag, file) in [("--tls-cert", "cert.pem"), ("--tls-key", "key.pem")] {
                extra.push(flag.into());
                extra.push(certs.join(file).display().to_string());
            }
            ca_file = Some(certs.join("ca.pem"));
        }
        let mut child = Command::new(&binary)
            .args(extra)
            .args(["--port", "0", "--pbkdf2-iterations", "1000", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--log-file")
            .arg(dir.join("server.log"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chat-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("chat-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from chat-server: {line:?}"))
            .to_string();
        Server {
            child,
            addr,
            dir,
            ca_file,
        }
    }

    /// Runs `chat-load` with `args` and returns its exit code and JSON result.
    fn load(&self, name: &str, args: &[&str]) -> (i32, Value) {
        let json = self.dir.join(format!("{name}.json"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-load"));
        if let Some(ca_file) = &self.ca_file {
            command.arg("--ca-file").arg(ca_file);
        }
        let output = command
            .args(["--addr", &self.addr, "--progress-secs", "0", "--json"])
            .arg(&json)
            .args(args)
            .output()
            .expect("run chat-load");
        let code = output.status.code().unwrap_or(-1);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            code, 0,
            "chat-load {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let text = std::fs::read_to_string(&json).expect("chat-load wrote its JSON result");
        (
            code,
            serde_json::from_str(&text).expect("the JSON result parses"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn number(value: &Value, path: &str) -> f64 {
    value
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {value:#}"))
}

#[test]
fn closed_loop_messages_are_all_acked_and_delivered() {
    let server = Server::start();
    let (_, result) = server.load(
        "messages",
        &[
            "messages",
            "--users",
            "4",
            "--window",
            "4",
            "--duration-secs",
            "2",
        ],
    );
    assert_eq!(result["scenario"], "messages");
    assert_eq!(result["passed"], true);
    assert_eq!(number(&result, "/lost"), 0.0);
    assert_eq!(number(&result, "/unanswered"), 0.0);
    assert_eq!(number(&result, "/errors"), 0.0);
    let sent = number(&result, "/sent");
    assert!(sent > 0.0, "nothing sent: {result:#}");
    assert_eq!(number(&result, "/acked"), sent);
    assert_eq!(number(&result, "/delivered"), sent);
    assert!(number(&result, "/acked_per_sec") > 0.0);
    assert_eq!(number(&result, "/end_to_end_latency/count"), sent);
    let p50 = number(&result, "/end_to_end_latency/p50_ms");
    let max = number(&result, "/end_to_end_latency/max_ms");
    assert!(p50 > 0.0 && p50 <= max, "{result:#}");
}

/// With receipts (the default) every connection confirms what it receives,
/// and every acked message is covered by a Delivered receipt: none lost, a
/// non-zero Delivered count, one receipt latency sample per acked message.
#[test]
fn closed_loop_messages_with_receipts_are_confirmed_and_receipted() {
    let server = Server::start();
    let (_, result) = server.load(
        "receipts",
        &[
            "messages",
            "--users",
            "4",
            "--window",
            "4",
            "--duration-secs",
            "2",
        ],
    );
    assert_eq!(result["receipts"], true, "{result:#}");
    assert_eq!(result["passed"], true, "{result:#}");
    assert_eq!(number(&result, "/lost"), 0.0, "{result:#}");
    assert_eq!(number(&result, "/errors"), 0.0, "{result:#}");
    let sent = number(&result, "/sent");
    assert!(sent > 0.0, "nothing sent: {result:#}");
    assert_eq!(number(&result, "/delivered"), sent, "{result:#}");
    let received_sent = number(&result, "/received_sent");
    assert!(received_sent > 0.0, "no Received sent: {result:#}");
    assert!(
        received_sent <= sent,
        "more than one Received per message: {result:#}"
    );
    assert!(
        number(&result, "/delivered_receipts") > 0.0,
        "no Delivered: {result:#}"
    );
    let acked = number(&result, "/acked");
    assert_eq!(number(&result, "/receipted"), acked, "{result:#}");
    assert_eq!(number(&result, "/unreceipted"), 0.0, "{result:#}");
    assert_eq!(
        number(&result, "/receipt_latency/count"),
        acked,
        "{result:#}"
    );
}

/// `--no-receipts` runs the version-1 path: nothing confirmed, no Delivered,
/// and still nothing lost.
#[test]
fn closed_loop_messages_without_receipts_still_work() {
    let server = Server::start();
    let (_, result) = server.load(
        "no-receipts",
        &[
            "messages",
            "--users",
            "4",
            "--window",
            "4",
            "--duration-secs",
            "2",
            "--no-receipts",
        ],
    );
    assert_eq!(result["receipts"], false, "{result:#}");
    assert_eq!(result["passed"], true, "{result:#}");
    assert_eq!(number(&result, "/lost"), 0.0, "{result:#}");
    assert_eq!(number(&result, "/errors"), 0.0, "{result:#}");
    let sent = number(&result, "/sent");
    assert!(sent > 0.0, "nothing sent: {result:#}");
    assert_eq!(number(&result, "/acked"), sent, "{result:#}");
    assert_eq!(number(&result, "/delivered"), sent, "{result:#}");
    assert_eq!(number(&result, "/received_sent"), 0.0, "{result:#}");
    assert_eq!(number(&result, "/delivered_receipts"), 0.0, "{result:#}");
}

/// Refusals answer exactly the messages they refuse: with a burst of 5 per
/// connection and windows of 8, the server refuses some messages at once
/// (`rate_limited`) while the Acks of earlier ones wait for their commit, and
/// still every message is acked or refused, none is left unanswered, and only
/// acked ones are delivered.
#[test]
fn rate_limited_messages_are_each_refused_or_acked() {
    let limits = ["--messages-per-second", "20", "--message-burst", "5"];
    let server = Server::start_with(false, Some(&limits));
    let (_, result) = server.load(
        "refused",
        &[
            "messages",
            "--users",
            "4",
            "--window",
            "8",
            "--duration-secs",
            "2",
        ],
    );
    let sent = number(&result, "/sent");
    let acked = number(&result, "/acked");
    let refused = number(&result, "/errors_by_kind/rate_limited");
    assert!(refused > 0.0, "nothing was rate limited: {result:#}");
    assert_eq!(acked + refused, sent, "{result:#}");
    assert_eq!(number(&result, "/errors"), refused, "{result:#}");
    assert_eq!(number(&result, "/unanswered"), 0.0, "{result:#}");
    assert_eq!(number(&result, "/lost"), 0.0, "{result:#}");
    assert_eq!(number(&result, "/delivered"), acked, "{result:#}");
    assert_eq!(result["passed"], true);
}

#[test]
fn fixed_rate_messages_keep_the_rate() {
    let server = Server::start();
    let (_, result) = server.load(
        "rate",
        &[
            "messages",
            "--users",
            "4",
            "--rate",
            "200",
            "--duration-secs",
            "2",
        ],
    );
    assert_eq!(result["mode"], "rate");
    assert_eq!(number(&result, "/lost"), 0.0);
    let sent = number(&result, "/sent");
    assert!(
        (300.0..=401.0).contains(&sent),
        "sent {sent} at 200/s for 2 s"
    );
    assert_eq!(number(&result, "/delivered"), sent);
}

#[test]
fn logins_register_log_in_and_resume_every_user() {
    let server = Server::start();
    let (_, result) = server.load(
        "logins",
        &[
            "logins",
            "--users",
            "6",
            "--concurrency",
            "3",
            "--resumes",
            "12",
        ],
    );
    assert_eq!(result["scenario"], "logins");
    assert_eq!(result["passed"], true);
    assert_eq!(number(&result, "/registrations/ok"), 6.0);
    assert_eq!(number(&result, "/password_logins/ok"), 6.0);
    assert_eq!(number(&result, "/resume_logins/ok"), 12.0);
    for flow in ["registrations", "password_logins", "resume_logins"] {
        assert_eq!(number(&result, &format!("/{flow}/failed")), 0.0);
        assert!(number(&result, &format!("/{flow}/per_sec")) > 0.0);
    }
}

#[test]
fn group_messages_reach_every_other_member() {
    // 20 users in 4 groups of 5; every member sends, so each acked message
    // must be delivered to the 4 others and never back to its sender.
    let server = Server::start();
    let (_, result) = server.load(
        "groups",
        &[
            "groups",
            "--users",
            "20",
            "--group-size",
            "5",
            "--window",
            "2",
            "--duration-secs",
            "2",
        ],
    );
    assert_eq!(result["scenario"], "groups");
    assert_eq!(result["passed"], true);
    assert_eq!(number(&result, "/groups"), 4.0);
    assert_eq!(number(&result, "/group_setup/groups"), 4.0);
    assert_eq!(
        number(&result, "/group_setup/all_members_latency/count"),
        4.0
    );
    assert_eq!(number(&result, "/lost"), 0.0);
    assert_eq!(number(&result, "/unanswered"), 0.0);
    assert_eq!(number(&result, "/errors"), 0.0, "{result:#}");
    let sent = number(&result, "/sent");
    assert!(sent > 0.0, "nothing sent: {result:#}");
    assert_eq!(number(&result, "/acked"), sent);
    assert_eq!(number(&result, "/expected_deliveries"), sent * 4.0);
    assert_eq!(number(&result, "/delivered"), sent * 4.0);
    assert_eq!(number(&result, "/end_to_end_latency/count"), sent * 4.0);
    assert_eq!(number(&result, "/fanout_latency/count"), sent);
    // Receipts are on by default: members confirm; Delivered is 1:1 only.
    assert_eq!(result["receipts"], true, "{result:#}");
    assert!(number(&result, "/received_sent") > 0.0, "{result:#}");
    assert_eq!(number(&result, "/delivered_receipts"), 0.0, "{result:#}");
    assert!(number(&result, "/delivered_per_sec") > number(&result, "/acked_per_sec"));
}

/// Over TLS (`wss://` with a `gen-cert` certificate and `--ca-file`), a
/// closed loop delivers and acks every message.
#[test]
fn closed_loop_messages_work_over_tls() {
    let server = Server::start_with(true, None);
    let (_, result) = server.load(
        "tls",
        &[
            "messages",
            "--users",
            "10",
            "--window",
            "4",
            "--duration-secs",
            "1",
        ],
    );
    let sent = number(&result, "/sent");
    assert!(sent > 0.0, "{result}");
    assert_eq!(number(&result, "/acked"), sent, "{result}");
    assert_eq!(number(&result, "/delivered"), sent, "{result}");
    assert_eq!(number(&result, "/lost"), 0.0, "{result}");
}
