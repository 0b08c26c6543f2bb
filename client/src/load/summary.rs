//! `chat-load summary`: one table over several JSON results, with the
//! targets checked where a result matches the configuration the target
//! names. The targets are issue 14's (they supersede issue 4's): closed
//! loops of 100 × 16, 1,000 × 4 and 5,000 × 1, the 10,000 msg/s tail, TLS
//! against plain, resumes with thousands of users, idle memory at 10,000
//! connections; smaller login and idle runs keep issue 4's. Used by
//! `scripts/loadtest.sh` and `scripts/bench.sh`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::report::{count, rate};
use super::{load_error, LoadError};

/// One row of the summary.
pub struct Row {
    /// The result's name (its file stem).
    pub name: String,
    /// The headline numbers.
    pub result: String,
    /// The target that applies, if any.
    pub target: String,
    /// `yes`, `NO`, or `-` when no target applies; `FAILED` when the run
    /// itself failed (loss, unanswered messages, failed logins).
    pub met: &'static str,
}

/// Reads every result file and summarises each; a TLS closed loop is
/// compared with the plain one of the same users and window among them.
pub fn summarise_all(paths: &[PathBuf]) -> Result<Vec<Row>, LoadError> {
    let results = paths
        .iter()
        .map(|path| read_result(path))
        .collect::<Result<Vec<_>, _>>()?;
    let values: Vec<&Value> = results.iter().map(|(_, value)| value).collect();
    Ok(results
        .iter()
        .map(|(name, value)| summarise(name, value, &values))
        .collect())
}

fn read_result(path: &Path) -> Result<(String, Value), LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| load_error(format!("reading {}: {error}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|error| load_error(format!("parsing {}: {error}", path.display())))?;
    let name = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((name, value))
}

/// One result's row; `all` are the results it may be compared with.
fn summarise(name: &str, value: &Value, all: &[&Value]) -> Row {
    let (result, target, met) = match value["scenario"].as_str() {
        Some("messages") => messages(value, all),
        Some("groups") => groups(value),
        Some("logins") => logins(value),
        Some("idle") => idle(value),
        Some("storm") => storm(value),
        _ => ("unknown result".to_string(), String::new(), None),
    };
    let passed = value["passed"].as_bool().unwrap_or(false);
    Row {
        name: name.to_owned(),
        result,
        target,
        met: match (passed, met) {
            (false, _) => "FAILED",
            (true, Some(true)) => "yes",
            (true, Some(false)) => "NO",
            (true, None) => "-",
        },
    }
}

fn num(value: &Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

type Summary = (String, String, Option<bool>);

fn messages(v: &Value, all: &[&Value]) -> Summary {
    let lost = num(v, "/lost") as u64;
    let p = |which: &str| num(v, &format!("/end_to_end_latency/{which}_ms"));
    let result = format!(
        "{} users, {}: acked {} delivered {}; e2e p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.1} ms; ack p99 {:.1} ms; errors {}; lost {}",
        num(v, "/users"),
        match v["mode"].as_str() {
            Some("rate") => format!("rate {}", rate(num(v, "/target_rate"))),
            _ => format!("window {}", num(v, "/window")),
        },
        rate(num(v, "/acked_per_sec")),
        rate(num(v, "/delivered_per_sec")),
        p("p50"),
        p("p99"),
        p("p999"),
        p("max"),
        num(v, "/ack_latency/p99_ms"),
        count(num(v, "/errors") as u64),
        count(lost),
    );
    let acked = num(v, "/acked_per_sec");
    let at_least = |floor: f64| {
        let met = acked >= floor && num(v, "/delivered_per_sec") >= floor && lost == 0;
        Some(met)
    };
    let closed_loop = (num(v, "/users") as u64, num(v, "/window") as u64);
    match v["mode"].as_str() {
        Some("window") if closed_loop == (100, 16) && is_tls(v) => match plain_twin(v, all) {
            Some(plain) => {
                let ratio = acked / num(plain, "/acked_per_sec").max(1.0);
                (
                    format!("{result}; {ratio:.2}× plain"),
                    "≥ 0.9 × the plain closed loop, 0 lost".into(),
                    Some(ratio >= 0.9 && lost == 0),
                )
            }
            None => (result, "≥ 0.9 × plain (no plain run here)".into(), None),
        },
        Some("window") if closed_loop == (100, 16) => (
            result,
            "≥ 150,000/s acked and delivered, 0 lost (loop ≤ 3 µs/msg: the run's server CPU)"
                .into(),
            at_least(150_000.0),
        ),
        Some("window") if closed_loop == (1_000, 4) => {
            (result, "≥ 100,000/s, 0 lost".into(), at_least(100_000.0))
        }
        Some("window") if closed_loop == (5_000, 1) => {
            (result, "≥ 60,000/s, 0 lost".into(), at_least(60_000.0))
        }
        Some("rate") if num(v, "/target_rate") as u64 == 10_000 => {
            let met = p("p99") <= 1.5 && num(v, "/ack_latency/p99_ms") <= 3.0 && lost == 0;
            (result, "e2e p99 ≤ 1.5 ms, ack p99 ≤ 3 ms".into(), Some(met))
        }
        _ => (result, String::new(), None),
    }
}

fn is_tls(v: &Value) -> bool {
    v["tls"].as_bool().unwrap_or(false)
}

/// The plain closed loop with the same users and window as `v`.
fn plain_twin<'a>(v: &Value, all: &[&'a Value]) -> Option<&'a Value> {
    all.iter().copied().find(|other| {
        other["scenario"] == "messages"
            && other["mode"] == "window"
            && !is_tls(other)
            && other["users"] == v["users"]
            && other["window"] == v["window"]
    })
}

fn groups(v: &Value) -> Summary {
    let p = |which: &str| num(v, &format!("/end_to_end_latency/{which}_ms"));
    let result = format!(
        "{} users in groups of {} ({} senders each), {}: acked {} deliveries {}; e2e p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.1} ms; whole fan-out p99 {:.1} ms; ack p99 {:.1} ms; errors {}; lost deliveries {}",
        num(v, "/users"),
        num(v, "/group_size"),
        num(v, "/senders_per_group"),
        match v["mode"].as_str() {
            Some("rate") => format!("rate {}", rate(num(v, "/target_rate"))),
            _ => format!("window {}", num(v, "/window")),
        },
        rate(num(v, "/acked_per_sec")),
        rate(num(v, "/delivered_per_sec")),
        p("p50"),
        p("p99"),
        p("p999"),
        p("max"),
        num(v, "/fanout_latency/p99_ms"),
        num(v, "/ack_latency/p99_ms"),
        count(num(v, "/errors") as u64),
        count(num(v, "/lost") as u64),
    );
    // The issue sets no throughput target for groups; loss fails the run.
    (result, String::new(), None)
}

fn logins(v: &Value) -> Summary {
    let flow = |name: &str| {
        format!(
            "{} {} (p99 {:.1} ms, {} failed)",
            name.replace('_', " "),
            rate(num(v, &format!("/{name}/per_sec"))),
            num(v, &format!("/{name}/latency/p99_ms")),
            num(v, &format!("/{name}/failed"))
        )
    };
    let result = format!(
        "{} users, concurrency {}: {}; {}; {}",
        num(v, "/users"),
        num(v, "/concurrency"),
        flow("registrations"),
        flow("password_logins"),
        flow("resume_logins")
    );
    // Issue 14's rate is for the full run (thousands of users, enough
    // concurrency); a small run keeps issue 4's.
    let (floor, target) = if num(v, "/users") >= 1_000.0 {
        (10_000.0, "session resumes ≥ 10,000/s")
    } else {
        (5_000.0, "session resumes ≥ 5,000/s (issue 4; a small run)")
    };
    let met = num(v, "/resume_logins/per_sec") >= floor;
    (result, target.into(), Some(met))
}

fn idle(v: &Value) -> Summary {
    let per_conn = v["bytes_per_connection"].as_f64();
    let result = format!(
        "{} connections logged in ({} failed), {} closed while held; server RSS {} → {} KiB; {}",
        count(num(v, "/logins/ok") as u64),
        num(v, "/logins/failed"),
        num(v, "/closed_while_held"),
        count(num(v, "/rss_before_kib") as u64),
        count(num(v, "/rss_after_kib") as u64),
        per_conn.map_or("no RSS (no --server-pid)".to_string(), |b| {
            format!("{:.2} KiB per connection", b / 1024.0)
        }),
    );
    // Issue 14's bound is at 10,000 connections; smaller runs keep issue
    // 4's (a fixed cost weighs more on fewer connections).
    let (bound, target) = if num(v, "/logins/ok") >= 10_000.0 {
        (2048.0, "RSS growth ≤ 2 KiB/connection")
    } else {
        (4096.0, "RSS growth ≤ 4 KiB/connection (issue 4)")
    };
    match per_conn {
        Some(bytes) => (result, target.into(), Some(bytes <= bound)),
        None => (result, String::new(), None),
    }
}

fn storm(v: &Value) -> Summary {
    let p99 = |phase: &str| num(v, &format!("/latency_{phase}/p99_ms"));
    let result = format!(
        "{} password logins at {} in {:.1} s during {} messages: e2e p99 before {:.2} / during {:.2} / after {:.2} ms (ratio {:.2}); lost {}",
        num(v, "/burst/ok"),
        rate(num(v, "/burst/per_sec")),
        num(v, "/burst_window_secs/1") - num(v, "/burst_window_secs/0"),
        rate(num(v, "/target_rate")),
        p99("before"),
        p99("during"),
        p99("after"),
        num(v, "/p99_ratio"),
        num(v, "/lost"),
    );
    let met = num(v, "/p99_ratio") <= 2.0;
    (result, "p99 during ≤ 2 × before".into(), Some(met))
}

/// Prints the rows as a Markdown table (also readable in a terminal).
pub fn print(rows: &[Row]) {
    println!("| run | result | target | met |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.name, row.result, row.target, row.met
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn closed_loop(users: u64, window: u64, per_sec: f64, tls: bool) -> Value {
        json!({
            "scenario": "messages", "mode": "window", "users": users, "window": window,
            "tls": tls, "acked_per_sec": per_sec, "delivered_per_sec": per_sec,
            "lost": 0, "passed": true,
        })
    }

    fn met(value: &Value, all: &[&Value]) -> &'static str {
        summarise("run", value, all).met
    }

    #[test]
    fn closed_loops_meet_issue_14s_floors() {
        let fast = closed_loop(100, 16, 150_000.0, false);
        let slow = closed_loop(100, 16, 149_999.0, false);
        assert_eq!(met(&fast, &[&fast]), "yes");
        assert_eq!(met(&slow, &[&slow]), "NO");
        let many = closed_loop(5_000, 1, 53_355.0, false);
        assert_eq!(met(&many, &[&many]), "NO", "5,000 × 1 needs 60,000/s");
        let thousand = closed_loop(1_000, 4, 100_000.0, false);
        assert_eq!(met(&thousand, &[&thousand]), "yes");
        let mut lost = fast.clone();
        lost["lost"] = json!(1);
        lost["passed"] = json!(false);
        assert_eq!(met(&lost, &[&lost]), "FAILED");
    }

    #[test]
    fn tls_is_compared_with_the_plain_closed_loop_of_the_same_shape() {
        let plain = closed_loop(100, 16, 200_000.0, false);
        let close = closed_loop(100, 16, 180_000.0, true);
        let far = closed_loop(100, 16, 179_000.0, true);
        let other_shape = closed_loop(1_000, 4, 400_000.0, false);
        let all = [&plain, &close, &far, &other_shape];
        assert_eq!(met(&close, &all), "yes", "0.90×");
        assert_eq!(met(&far, &all), "NO", "0.895×");
        assert!(summarise("run", &close, &all)
            .result
            .ends_with("0.90× plain"));
        assert_eq!(met(&close, &[&close, &other_shape]), "-", "no plain twin");
    }

    #[test]
    fn resumes_and_idle_memory_are_held_to_issue_14_at_full_size_only() {
        let logins = |users: u64, per_sec: f64| {
            json!({ "scenario": "logins", "users": users, "passed": true,
                    "resume_logins": { "per_sec": per_sec } })
        };
        let big = logins(5_000, 9_999.0);
        let small = logins(40, 9_346.0);
        assert_eq!(met(&big, &[&big]), "NO");
        assert_eq!(met(&small, &[&small]), "yes", "issue 4's 5,000/s");
        let idle = |connections: u64, bytes: f64| {
            json!({ "scenario": "idle", "logins": { "ok": connections }, "passed": true,
                    "bytes_per_connection": bytes })
        };
        let full = idle(10_000, 2_100.0);
        let few = idle(1_000, 2_100.0);
        assert_eq!(met(&full, &[&full]), "NO");
        assert_eq!(met(&few, &[&few]), "yes", "issue 4's 4 KiB");
    }

    #[test]
    fn the_10k_rate_needs_both_tails() {
        let rate = |e2e: f64, ack: f64| {
            json!({
                "scenario": "messages", "mode": "rate", "target_rate": 10_000, "users": 100,
                "end_to_end_latency": { "p99_ms": e2e }, "ack_latency": { "p99_ms": ack },
                "lost": 0, "passed": true,
            })
        };
        let ok = rate(1.1, 1.1);
        let slow_e2e = rate(1.6, 1.1);
        let slow_ack = rate(1.4, 3.1);
        assert_eq!(met(&ok, &[&ok]), "yes");
        assert_eq!(met(&slow_e2e, &[&slow_e2e]), "NO");
        assert_eq!(met(&slow_ack, &[&slow_ack]), "NO");
    }
}
