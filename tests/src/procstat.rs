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

/// CPU time of a process so far in nanoseconds, summed over its live threads (`/proc/PID/task/*/schedstat`, the
/// scheduler's own count): exact where [`proc_stat`]'s ticks are 10 ms apart, which matters for an idle process
/// that runs a few milliseconds in ten seconds. Threads that ended are not counted.
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("read {dir}"), e))?;
    let mut total = 0u64;
    for t in tasks.flatten() {
        // A thread may end between the listing and the read.
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
        total += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

/// CPU nanoseconds so far of each live thread of a process, by thread name (threads of one name summed): where an
/// idle process spends its time.
pub fn cpu_ns_by_thread(pid: u32) -> Result<std::collections::BTreeMap<String, u64>> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("read {dir}"), e))?;
    let mut out = std::collections::BTreeMap::new();
    for t in tasks.flatten() {
        let (Ok(s), Ok(name)) =
            (std::fs::read_to_string(t.path().join("schedstat")), std::fs::read_to_string(t.path().join("comm")))
        else {
            continue;
        };
        let ns = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(name.trim().to_string()).or_insert(0) += ns;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One thread spinning until the count shows 50 ms of CPU takes at least 50 ms of wall time (a count in the
    /// wrong unit would get there at once) and gets there (a count of nothing never would).
    #[test]
    fn cpu_ns_counts_this_process_precisely() {
        let pid = std::process::id();
        let before = cpu_ns(pid).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_ns(pid).unwrap() - before < 50_000_000 {
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            assert!(t.elapsed() < std::time::Duration::from_secs(20), "50 ms of CPU not counted in 20 s");
        }
        std::hint::black_box(x);
        assert!(t.elapsed() >= std::time::Duration::from_millis(45), "50 ms of CPU counted in {:?}", t.elapsed());
    }
}
