//! Reused buffers for the data path. A 1 MiB read moved through four fresh 1 MiB buffers on each side (the data
//! read, the frame encoded, the frame received, the data decoded), and with glibc's mmap threshold fixed low (so
//! that freed buffers go back to the system: see the node's `trim`) each was a mapping of its own, faulted in a
//! page at a time and unmapped again: about a sixth of the CPU of a cold sequential read. Frames and large byte
//! strings now come from a small pool of frame-sized buffers, and go back to it when done.
//!
//! The pool keeps at most [`KEPT`] buffers, and [`release_idle`] (the node's minute-ly trim) drops them once the
//! data path has been idle, so an idle bind costs nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::MAX_FRAME;

/// Byte strings this long and longer come from the pool; shorter ones are plain allocations.
pub const LARGE: usize = 64 * 1024;
/// The most buffers the pool keeps.
pub const KEPT: usize = 8;
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
        if !(LARGE..=MAX_FRAME).contains(&len) {
            return Vec::with_capacity(len);
        }
        self.used = Some(Instant::now());
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(MAX_FRAME))
    }

    fn give(&mut self, mut v: Vec<u8>) {
        if v.capacity() < MAX_FRAME || v.capacity() > 2 * MAX_FRAME || self.free.len() >= KEPT {
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

/// An empty buffer that holds at least `len` bytes without growing: from the pool for frames and large strings.
pub fn take(len: usize) -> Vec<u8> {
    POOL.lock().expect("buffer pool").take(len)
}

/// A buffer from [`take`] back to the pool (or dropped, if it is not frame-sized or the pool is full).
pub fn give(v: Vec<u8>) {
    POOL.lock().expect("buffer pool").give(v)
}

/// Drops the pooled buffers if none was taken for [`IDLE`]; how many it dropped.
pub fn release_idle() -> usize {
    POOL.lock().expect("buffer pool").release_idle()
}

/// Writes `msg` as one frame (u32 big-endian length, postcard), encoded into a pooled buffer.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), metac_resource::Error> {
    use tokio::io::AsyncWriteExt;
    let mut body = take(MAX_FRAME);
    body.extend_from_slice(&[0; 4]);
    let mut body = postcard::to_extend(msg, body).map_err(|e| metac_resource::Error::Protocol(e.to_string()))?;
    let len = u32::try_from(body.len() - 4).map_err(|_| metac_resource::Error::Protocol("frame too large".into()))?;
    body[..4].copy_from_slice(&len.to_be_bytes());
    let r = async {
        w.write_all(&body).await?;
        w.flush().await
    }
    .await;
    give(body);
    r.map_err(metac_resource::Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pooled writer writes the bytes the project's one framing helper writes (and a request of a borrowed
    /// operation encodes as the owned one), so both ends read either.
    #[tokio::test]
    async fn pooled_frames_are_the_framing_helpers_bytes() {
        use crate::proto::{Op, Request};
        let op = Op::Write { fh: 3, offset: 1 << 40, data: vec![9; 100_000] };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        write_frame(&mut ours, &crate::client::request_ref(7, &op)).await.unwrap();
        metac_resource::frame::write(&mut theirs, &Request { id: 7, op }).await.unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn frames_are_reused_and_an_idle_pool_is_emptied() {
        let mut pool = Pool::new();
        let a = pool.take(MAX_FRAME);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(LARGE);
        assert_eq!(b.as_ptr(), ptr, "the same buffer again");
        assert!(b.is_empty() && b.capacity() >= MAX_FRAME);
        pool.give(b);
        assert!(pool.take(100).capacity() < LARGE, "small strings are plain allocations");
        // More than the pool keeps are dropped, not kept.
        let many: Vec<_> = (0..KEPT + 4).map(|_| pool.take(MAX_FRAME)).collect();
        many.into_iter().for_each(|v| pool.give(v));
        assert_eq!(pool.free.len(), KEPT);
        assert_eq!(pool.release_idle(), 0, "just used");
        pool.used = Some(Instant::now() - IDLE);
        assert_eq!(pool.release_idle(), KEPT);
        assert!(pool.free.is_empty());
    }
}
