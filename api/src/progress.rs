//! Bytes, rate and (when the size is known) percentage and time left of a transfer on stderr, for `metac file
//! cat`, `get`, `put` and the streams after them.

use std::time::{Duration, Instant};

/// How often the line is redrawn: often enough to look alive, rarely enough to cost nothing.
const REDRAW: Duration = Duration::from_millis(250);

/// A progress line on stderr, redrawn at most four times a second; only when asked (stderr is a terminal).
pub struct Progress {
    on: bool,
    start: Instant,
    last: Instant,
    /// Where the transfer started (a resumed one does not start at 0) and where it ends, if known.
    from: u64,
    total: Option<u64>,
}

impl Progress {
    /// A progress line, drawn only if `on`.
    pub fn new(on: bool) -> Progress {
        let now = Instant::now();
        Progress { on, start: now, last: now, from: 0, total: None }
    }

    /// A progress line for a transfer from position `from` to `total`, with percentage and time left; the rate
    /// counts only what this run moved.
    pub fn sized(on: bool, from: u64, total: u64) -> Progress {
        Progress { from, total: Some(total), ..Progress::new(on) }
    }

    /// At position `n` (bytes done so far, for a transfer of unknown size).
    pub fn update(&mut self, n: u64) {
        if self.on && self.last.elapsed() >= REDRAW {
            self.last = Instant::now();
            self.draw(n);
        }
    }

    fn draw(&self, n: u64) {
        eprint!("\r{}", self.line(n, self.start.elapsed()));
    }

    /// The line at position `n`, `elapsed` after the start.
    fn line(&self, n: u64, elapsed: Duration) -> String {
        const MIB: f64 = (1 << 20) as f64;
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = n.saturating_sub(self.from) as f64 / secs;
        let mib = n as f64 / MIB;
        match self.total {
            None => format!("{mib:10.1} MiB  {:8.1} MiB/s", rate / MIB),
            Some(total) => {
                let pct = if total == 0 { 100.0 } else { n as f64 * 100.0 / total as f64 };
                let eta = match total.saturating_sub(n) {
                    0 => "done".to_string(),
                    _ if rate < 1.0 => "ETA --:--".to_string(),
                    left => {
                        let s = (left as f64 / rate).ceil() as u64;
                        format!("ETA {}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                    }
                };
                format!("{mib:10.1} / {:.1} MiB {pct:5.1}%  {:8.1} MiB/s  {eta}  ", total as f64 / MIB, rate / MIB)
            }
        }
    }

    /// The transfer ended at `n` bytes: a last line if any was drawn (short transfers print nothing).
    pub fn finish(&mut self, n: u64) {
        if self.on && self.start.elapsed() >= REDRAW {
            self.draw(n);
            eprintln!();
        }
        self.on = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sized_line_shows_percentage_rate_and_time_left() {
        let p = Progress::sized(false, 1 << 20, 11 << 20);
        // 4 MiB moved in 2 s since the start at 1 MiB: 2 MiB/s, 6 MiB left, 3 s.
        let line = p.line(5 << 20, Duration::from_secs(2));
        assert!(line.contains("5.0 / 11.0 MiB"), "{line}");
        assert!(line.contains("45.5%"), "{line}");
        assert!(line.contains("2.0 MiB/s"), "{line}");
        assert!(line.contains("ETA 0:00:03"), "{line}");
        assert!(p.line(11 << 20, Duration::from_secs(5)).contains("done"));
        assert!(Progress::new(false).line(1 << 20, Duration::from_secs(1)).contains("1.0 MiB/s"));
    }
}
