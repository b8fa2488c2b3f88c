//! RESULT lines and process measurements.

use std::fmt::Write;
use std::time::Duration;

/// One `RESULT` line under construction.
pub struct Result {
    line: String,
}

impl Result {
    /// Starts `RESULT <workload> <implementation>`.
    pub fn new(workload: &str, implementation: &str) -> Result {
        Result {
            line: format!("RESULT {workload} {implementation}"),
        }
    }

    /// Appends `key=value`.
    pub fn key(mut self, key: &str, value: impl std::fmt::Display) -> Result {
        let _ = write!(self.line, " {key}={value}");
        self
    }

    /// Appends `total_ms` and `vmhwm_kib` and prints the line.
    pub fn print(self, total: Duration) {
        let line = self
            .key("total_ms", format!("{:.1}", total.as_secs_f64() * 1e3))
            .key("vmhwm_kib", peak_rss_kib())
            .line;
        println!("{line}");
    }
}

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    status_field("VmHWM:").unwrap_or(0)
}

/// Current resident set size of this process (VmRSS), in KiB.
pub fn rss_kib() -> u64 {
    status_field("VmRSS:").unwrap_or(0)
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(name))?;
    line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A parsed `RESULT` line: workload, implementation, and its `key=value` pairs.
pub type Row = (String, String, Vec<(String, String)>);

/// Parses a `RESULT` line.
pub fn parse(line: &str) -> Option<Row> {
    let mut words = line.strip_prefix("RESULT ")?.split_whitespace();
    let workload = words.next()?.to_string();
    let implementation = words.next()?.to_string();
    let keys = words
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some((workload, implementation, keys))
}
