//! `chat-load summary`: one table over several JSON results, with the
//! issue's targets checked where a result matches the configuration the
//! target names. Used by `scripts/loadtest.sh` and `scripts/bench.sh`.

use std::path::Path;

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

/// Reads a result file and summarises it.
pub fn summarise(path: &Path) -> Result<Row, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| load_error(format!("reading {}: {error}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|error| load_error(format!("parsing {}: {error}", path.display())))?;
    let name = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (result, target, met) = match value["scenario"].as_str() {
        Some("messages") => messages(&value),
        Some("groups") => groups(&value),
        Some("logins") => logins(&value),
        Some("idle") => idle(&value),
        Some("storm") => storm(&value),
        _ => ("unknown result".to_string(), String::new(), None),
    };
    let passed = value["passed"].as_bool().unwrap_or(false);
    Ok(Row {
        name,
        result,
        target,
        met: match (passed, met) {
            (false, _) => "FAILED",
            (true, Some(true)) => "yes",
            (true, Some(false)) => "NO",
            (true, None) => "-",
        },
    })
}

fn num(value: &Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

type Summary = (String, String, Option<bool>);

fn messages(v: &Value) -> Summary {
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
    let users = num(v, "/users") as u64;
    if v["mode"] == "window" && users == 100 && num(v, "/window") as u64 == 16 {
        let met = num(v, "/acked_per_sec") >= 100_000.0
            && num(v, "/delivered_per_sec") >= 100_000.0
            && lost == 0;
        (
            result,
            "≥ 100,000/s acked and delivered, 0 lost".into(),
            Some(met),
        )
    } else if v["mode"] == "rate" && num(v, "/target_rate") as u64 == 10_000 {
        (
            result,
            "e2e p99 ≤ 3 ms".into(),
            Some(p("p99") <= 3.0 && lost == 0),
        )
    } else {
        (result, String::new(), None)
    }
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
    let met = num(v, "/resume_logins/per_sec") >= 5_000.0;
    (result, "session resumes ≥ 5,000/s".into(), Some(met))
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
    match per_conn {
        Some(bytes) => (
            result,
            "RSS growth ≤ 4 KiB/connection".into(),
            Some(bytes <= 4096.0),
        ),
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
