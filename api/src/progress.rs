//! Bytes and rate of a transfer on stderr, for `metac file cat` and the streams after it.

use std::time::{Duration, Instant};

/// How often the line is redrawn: often enough to look alive, rarely enough to cost nothing.
const REDRAW: Duration = Duration::from_millis(250);

/// A progress line on stderr, redrawn at most four times a second; only when asked (stderr is a terminal).
pub(crate) struct Progress {
    on: bool,
    start: Instant,
    last: Instant,
}

impl Progress {
    /// A progress line, drawn only if `on`.
    pub(crate) fn new(on: bool) -> Progress {
        let now = Instant::now();
        Progress { on, start: now, last: now }
    }

    /// `n` bytes done so far.
    pub(crate) fn update(&mut self, n: u64) {
        if self.on && self.last.elapsed() >= REDRAW {
            self.last = Instant::now();
            self.draw(n);
        }
    }

    fn draw(&self, n: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let mib = n as f64 / (1 << 20) as f64;
        eprint!("\r{mib:10.1} MiB  {:8.1} MiB/s", mib / secs);
    }

    /// The transfer ended at `n` bytes: a last line if any was drawn (short transfers print nothing).
    pub(crate) fn finish(&mut self, n: u64) {
        if self.on && self.start.elapsed() >= REDRAW {
            self.draw(n);
            eprintln!();
        }
        self.on = false;
    }
}
