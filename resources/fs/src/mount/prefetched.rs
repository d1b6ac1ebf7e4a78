//! Small files read whole with their open ([`Op::OpenRead`](crate::proto::Op::OpenRead)): `cat` of a small file
//! costs one round trip (the open, which brings the content) where it cost two (the open, then the read).
//!
//! The content is the file's as the exporter had it at the open, and serves the reads the kernel sends for that
//! open file (those it has no cached pages for) for [`Prefetched::FOR`] after the open: no longer than the kernel
//! trusts the size it was given (the attribute TTL), so a file that grows afterwards is read from the exporter past
//! its old end, not cut there. What this mount writes to the inode, and a change the exporter tells of it, drop it
//! at once, so a read never returns less than what was written through the mount.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The content of one open file.
struct File {
    ino: u64,
    data: Vec<u8>,
    at: Instant,
}

#[derive(Default)]
struct Held {
    /// By the binder's file handle.
    files: HashMap<u64, File>,
    bytes: usize,
}

/// The content read with opens, by file handle, within a bound of bytes held.
#[derive(Default)]
pub(super) struct Prefetched {
    held: Mutex<Held>,
    /// The exporter does not know [`Op::OpenRead`](crate::proto::Op::OpenRead) (an older node): plain opens.
    unknown: AtomicBool,
}

impl Prefetched {
    /// The largest file read with its open: what `cat` asks in one read, and more than most source files.
    pub(super) const MAX: u32 = 128 << 10;
    /// The most bytes held at once (then opens read nothing more until some are released).
    const BUDGET: usize = 32 << 20;
    /// How long after its open a file's content serves its reads.
    const FOR: Duration = super::TTL;

    /// Whether an open should ask for the content: the exporter knows how, and there is room for it.
    pub(super) fn asks(&self) -> bool {
        !self.unknown.load(Ordering::Relaxed) && self.held.lock().expect("prefetched").bytes < Self::BUDGET
    }

    /// The exporter answered ENOSYS: it does not know the operation.
    pub(super) fn unknown(&self) {
        self.unknown.store(true, Ordering::Relaxed);
    }

    /// Keeps `data`, the whole content of `ino` as just opened with handle `fh`.
    pub(super) fn keep(&self, fh: u64, ino: u64, data: Vec<u8>) {
        let mut h = self.held.lock().expect("prefetched");
        let now = Instant::now();
        if h.bytes + data.len() > Self::BUDGET {
            // Files opened and never closed (or closed long ago, their release lost) go first.
            h.files.retain(|_, f| now.duration_since(f.at) < Self::FOR);
            h.bytes = h.files.values().map(|f| f.data.len()).sum();
            if h.bytes + data.len() > Self::BUDGET {
                return crate::buffers::give(data);
            }
        }
        h.bytes += data.len();
        if let Some(old) = h.files.insert(fh, File { ino, data, at: now }) {
            h.bytes -= old.data.len();
            crate::buffers::give(old.data);
        }
    }

    /// The bytes at `offset` of open file `fh` (at most `size`; fewer at the end of the file), if its content is
    /// here and still current.
    pub(super) fn read(&self, fh: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        let h = self.held.lock().expect("prefetched");
        let f = h.files.get(&fh).filter(|f| f.at.elapsed() < Self::FOR)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(f.data.len());
        let end = start.saturating_add(size as usize).min(f.data.len());
        let mut out = crate::buffers::take(end - start);
        out.extend_from_slice(&f.data[start..end]);
        Some(out)
    }

    /// Open file `fh` was released.
    pub(super) fn released(&self, fh: u64) {
        let mut h = self.held.lock().expect("prefetched");
        if let Some(f) = h.files.remove(&fh) {
            h.bytes -= f.data.len();
            crate::buffers::give(f.data);
        }
    }

    /// `ino` changed (written here, or on the exporter): what was read of it is no longer its content.
    pub(super) fn changed(&self, ino: u64) {
        let mut h = self.held.lock().expect("prefetched");
        let mut freed = 0;
        h.files.retain(|_, f| {
            if f.ino != ino {
                return true;
            }
            freed += f.data.len();
            crate::buffers::give(std::mem::take(&mut f.data));
            false
        });
        h.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_cut_at_the_end_and_past_it_are_empty() {
        let p = Prefetched::default();
        p.keep(1, 10, b"hello".to_vec());
        assert_eq!(p.read(1, 0, 4096).unwrap(), b"hello");
        assert_eq!(p.read(1, 3, 1).unwrap(), b"l");
        assert_eq!(p.read(1, 5, 4096).unwrap(), b"");
        assert_eq!(p.read(1, u64::MAX, u32::MAX).unwrap(), b"");
        assert!(p.read(2, 0, 1).is_none(), "another file");
    }

    #[test]
    fn a_change_or_a_release_drops_the_content() {
        let p = Prefetched::default();
        p.keep(1, 10, b"a".to_vec());
        p.keep(2, 10, b"b".to_vec());
        p.keep(3, 11, b"c".to_vec());
        p.changed(10);
        assert!(p.read(1, 0, 1).is_none() && p.read(2, 0, 1).is_none());
        assert_eq!(p.read(3, 0, 1).unwrap(), b"c");
        p.released(3);
        assert!(p.read(3, 0, 1).is_none());
        assert_eq!(p.held.lock().unwrap().bytes, 0);
    }

    #[test]
    fn the_budget_bounds_what_is_held() {
        let p = Prefetched::default();
        let n = Prefetched::BUDGET / Prefetched::MAX as usize;
        for fh in 0..n as u64 {
            p.keep(fh, fh, vec![0; Prefetched::MAX as usize]);
        }
        assert!(!p.asks(), "full");
        p.keep(u64::MAX, 1, vec![0; 1]);
        assert!(p.read(u64::MAX, 0, 1).is_none(), "not kept past the budget");
        p.released(0);
        assert!(p.asks());
    }

    #[test]
    fn the_content_serves_reads_only_for_a_while() {
        let p = Prefetched::default();
        p.keep(1, 10, b"a".to_vec());
        p.held.lock().unwrap().files.get_mut(&1).unwrap().at -= Prefetched::FOR;
        assert!(p.read(1, 0, 1).is_none());
    }

    #[test]
    fn an_exporter_without_the_operation_is_not_asked_again() {
        let p = Prefetched::default();
        assert!(p.asks());
        p.unknown();
        assert!(!p.asks());
    }
}
