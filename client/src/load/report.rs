//! The human table on stdout and the JSON result file.

use std::path::Path;

use serde::Serialize;

use super::stats::LatencySummary;
use super::{load_error, LoadError};

/// A two-column table with an optional latency block, printed at the end of a
/// scenario.
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    /// An empty table.
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Table {
        self.rows.push((label.into(), value.into()));
        self
    }

    /// Adds the column header of latency rows.
    pub fn latency_header(&mut self) -> &mut Table {
        let header = format!(
            "{:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "p50", "p90", "p99", "p99.9", "max", "samples"
        );
        self.row("latency (ms)", header)
    }

    /// Adds one latency row.
    pub fn latency(&mut self, label: impl Into<String>, latency: &LatencySummary) -> &mut Table {
        let value = format!(
            "{:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10}",
            latency.p50_ms,
            latency.p90_ms,
            latency.p99_ms,
            latency.p999_ms,
            latency.max_ms,
            count(latency.count)
        );
        self.row(label, value)
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        let width = self
            .rows
            .iter()
            .map(|(label, _)| label.len())
            .max()
            .unwrap_or(0);
        println!("{}", self.title);
        for (label, value) in &self.rows {
            println!("  {label:<width$}  {value}");
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A rate, rounded to a whole number per second.
pub fn rate(per_sec: f64) -> String {
    format!("{}/s", count(per_sec.round() as u64))
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), LoadError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| load_error(format!("json: {error}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|error| load_error(format!("writing {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(rate(99999.6), "100,000/s");
    }
}
