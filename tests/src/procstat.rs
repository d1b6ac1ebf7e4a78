//! What a process costs, from /proc: resident memory and CPU time, for benchmarks and bounded-cost tests.

use crate::{Error, Result};

/// Clock ticks per second of /proc/PID/stat: USER_HZ, 100 on every Linux architecture metac targets.
pub const USER_HZ: u64 = 100;

/// A field of /proc/PID/status in KiB (`VmRSS`, `RssAnon`, `RssFile`, `VmHWM`...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Error::InvalidArg(format!("no {field} in {path}")))
}

/// Resident KiB and CPU ticks (user + system) of a process so far.
pub fn proc_stat(pid: u32) -> Result<(u64, u64)> {
    let rss_kib = status_kib(pid, "VmRSS")?;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    let bad = || Error::InvalidArg(format!("cannot parse {path}"));
    let fields: Vec<&str> = stat.rsplit_once(')').ok_or_else(bad)?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad);
    Ok((rss_kib, tick(11)? + tick(12)?))
}

/// CPU milliseconds from a difference of ticks.
pub fn ticks_to_ms(ticks: u64) -> f64 {
    ticks as f64 * 1000.0 / USER_HZ as f64
}
