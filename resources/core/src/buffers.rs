//! Reused buffers for the data paths. A 1 MiB read moved through fresh 1 MiB buffers on each side, and with
//! glibc's mmap threshold fixed low (so that freed buffers go back to the system: see the node's `trim`) each was a
//! mapping of its own, faulted in a page at a time and unmapped again: about a sixth of the CPU of a cold
//! sequential read through an fs bind, and a tenth of a block bind's. Large buffers now come from one small pool
//! of [`POOLED`]-byte buffers, and go back to it when done.
//!
//! The pool keeps at most [`KEPT`] buffers, and [`release_idle`] (the node's minute-ly trim) drops them once the
//! data paths have been idle, so an idle bind costs nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The size of the pool's buffers: a 1 MiB request or reply and its framing.
pub const POOLED: usize = (1 << 20) + 64 * 1024;
/// Buffers this long and longer (up to [`POOLED`]) come from the pool; shorter ones are plain allocations.
pub const LARGE: usize = 64 * 1024;
/// The most buffers the pool keeps.
pub const KEPT: usize = 32;
/// How long the pool's buffers stay after the last use, at least.
pub const IDLE: Duration = Duration::from_secs(10);

struct Pool {
    free: Vec<Vec<u8>>,
    used: Option<Instant>,
}

impl Pool {
    const fn new() -> Pool {
        Pool { free: Vec::new(), used: None }
    }

    fn take(&mut self, len: usize) -> Vec<u8> {
        if !(LARGE..=POOLED).contains(&len) {
            return Vec::with_capacity(len);
        }
        self.used = Some(Instant::now());
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(POOLED))
    }

    fn give(&mut self, mut v: Vec<u8>) {
        if v.capacity() < POOLED || v.capacity() > 2 * POOLED || self.free.len() >= KEPT {
            return;
        }
        v.clear();
        self.free.push(v);
    }

    fn release_idle(&mut self) -> usize {
        if self.used.is_some_and(|t| t.elapsed() < IDLE) {
            return 0;
        }
        std::mem::take(&mut self.free).len()
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new());

/// An empty buffer that holds at least `len` bytes without growing: from the pool for large ones.
pub fn take(len: usize) -> Vec<u8> {
    POOL.lock().expect("buffer pool").take(len)
}

/// A buffer from [`take`] back to the pool (or dropped, if it is not pool-sized or the pool is full).
pub fn give(v: Vec<u8>) {
    POOL.lock().expect("buffer pool").give(v)
}

/// Drops the pooled buffers if none was taken for [`IDLE`]; how many it dropped.
pub fn release_idle() -> usize {
    POOL.lock().expect("buffer pool").release_idle()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_reused_and_an_idle_pool_is_emptied() {
        let mut pool = Pool::new();
        let a = pool.take(POOLED);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(LARGE);
        assert_eq!(b.as_ptr(), ptr, "the same buffer again");
        assert!(b.is_empty() && b.capacity() >= POOLED);
        pool.give(b);
        assert!(pool.take(100).capacity() < LARGE, "small strings are plain allocations");
        // More than the pool keeps are dropped, not kept.
        let many: Vec<_> = (0..KEPT + 4).map(|_| pool.take(POOLED)).collect();
        many.into_iter().for_each(|v| pool.give(v));
        assert_eq!(pool.free.len(), KEPT);
        assert_eq!(pool.release_idle(), 0, "just used");
        pool.used = Some(Instant::now() - IDLE);
        assert_eq!(pool.release_idle(), KEPT);
        assert!(pool.free.is_empty());
    }
}
