//! A mount's opens served from the node's content cache ([`crate::cache`]): a file opened read-only on a mount
//! that uses the cache is still opened on the exporter (permissions, the handle kept until release), then asked
//! for its content hash; if the cache has (or can fetch and check) that content, every read of the open file is a
//! read of the local cache file, with no round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::Errno;

use super::{unexpected, Sender};
use crate::cache::Cache;
use crate::proto::{Op, Reply};

/// A mount's opens served from the content cache: each such open file handle (the binder's) reads a local file
/// of the cache, whatever happens to the cache afterwards (an evicted file stays readable while open).
pub(super) struct Cached {
    pub(super) cache: Arc<Cache>,
    pub(super) files: Arc<std::sync::Mutex<HashMap<u64, Arc<std::fs::File>>>>,
    /// Whether to ask the exporter for hashes: not once it answered that it does not know how (an older
    /// exporter), nor once asking broke the connection (older still: it ended the stream on the request).
    pub(super) asking: Arc<AtomicBool>,
}

impl Cached {
    pub(super) fn new(cache: Arc<Cache>) -> Cached {
        Cached { cache, files: Arc::default(), asking: Arc::new(AtomicBool::new(true)) }
    }

    /// The cache file open as `fh`, if that open is served from the cache.
    pub(super) fn file(&self, fh: u64) -> Option<Arc<std::fs::File>> {
        self.files.lock().expect("cached files").get(&fh).cloned()
    }
}

/// Whether an open with `flags` can be served from a content cache: read-only, and not truncating.
pub(super) fn reads_only(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC == 0
}

/// The cache file for the binder's open file `fh`: the exporter's hash of it, then the cache's file of that hash,
/// fetched and checked first if the cache has none. `None` (the open reads through the exporter) when the
/// exporter cannot say, the file is too large to cache, or the fetch failed or did not match the hash.
pub(super) async fn from_cache(sender: &Sender, cache: &Cache, asking: &AtomicBool, fh: u64) -> Option<std::fs::File> {
    let (hash, size) = match sender.send(&mut Op::Hash { fh, max: cache.max_file() }).await {
        Ok(Reply::Hash { blake3, size }) => (blake3, size),
        Err(e) if e == Errno::ENOSYS || e == Errno::EIO => {
            tracing::info!("fs: the exporter gives no content hashes ({e:?}); this mount reads without the cache");
            asking.store(false, Ordering::Relaxed);
            return None;
        }
        Ok(r) => {
            let _ = unexpected(r);
            return None;
        }
        // Larger than the cache takes (EFBIG), changed while hashed (EAGAIN), not a regular file (EINVAL): read
        // through the exporter.
        Err(e) => {
            tracing::debug!("fs: no content hash for an open file: {e:?}");
            return None;
        }
    };
    if size > cache.max_file() {
        return None;
    }
    if let Some(f) = cache.open(&hash, size) {
        return Some(f);
    }
    let read = |offset, size| {
        let sender = sender.clone();
        async move {
            match sender.send(&mut Op::Read { fh, offset, size }).await {
                Ok(Reply::Data(d)) => Ok(d),
                Ok(r) => Err(unexpected(r).code()),
                Err(e) => Err(e.code()),
            }
        }
    };
    match cache.fill(&hash, size, read).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("fs: a file read uncached: {e}");
            None
        }
    }
}

/// Reads `size` bytes at `offset` of a local file (short at its end).
pub(super) fn pread(f: &std::fs::File, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = crate::buffers::take(size as usize);
    buf.resize(size as usize, 0);
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}
