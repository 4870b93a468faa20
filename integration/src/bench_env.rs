//! Small helpers the benchmarks share: their `BENCH_*`/`CM_BENCH_*`
//! settings and a process's resident memory.

use std::str::FromStr;

/// The environment variable `name` parsed, else `default`.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of process `pid` in bytes (0 when it cannot be read).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The upper bound (`le`) of one Prometheus text-format histogram bucket
/// series (`name_bucket{…,le="0.005"}`); `+Inf` is infinity, anything
/// unreadable NaN. Shared by the benchmarks that read histograms.
pub fn bucket_bound(series: &str) -> f64 {
    let le = series
        .split("le=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("");
    if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().unwrap_or(f64::NAN)
    }
}
