//! The exporting side of the content cache: the blake3 hash of an open file ([`crate::proto::Op::Hash`]), with a
//! bounded memo so that a file that has not changed is read through once however many binds ask, and the figures
//! `metac fs stats` shows of the exports (content bytes served, files hashed).
//!
//! A file is hashed by reading the descriptor the binder opened, never by its path again. The memo is keyed by what
//! changes when the content does (device, inode, size, modification and status-change times, to the nanosecond);
//! a file that changes while it is hashed is answered EAGAIN (the binder reads it uncached) and not remembered.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

use crate::proto::MAX_IO;

/// The most hashes remembered; the memo is emptied when it is full (a program's files are asked for again within
/// one run, so recency within the memo buys little).
pub const MEMO: usize = 4096;

/// What identifies a version of a file's content: device, inode, size, mtime and ctime (seconds, nanoseconds).
type Version = (u64, u64, u64, (i64, i64), (i64, i64));

/// The exports' hashes and figures, one per node (shared by every export and bind of the fs kind).
#[derive(Default)]
pub struct Digests {
    memo: Mutex<HashMap<Version, [u8; 32]>>,
    hashes: AtomicU64,
    served: AtomicU64,
}

impl Digests {
    /// Counts `n` bytes of file content served (the data of read answers).
    pub fn count_served(&self, n: u64) {
        self.served.fetch_add(n, Ordering::Relaxed);
    }

    /// The file content bytes served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// How many files were read through to be hashed (not counting answers from the memo).
    pub fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// The blake3 hash and size of the regular file open as `fd`: from the memo if this version was hashed
    /// before, else by reading it. EINVAL for anything but a regular file, EFBIG (unread) for one larger than
    /// `max` bytes, EAGAIN if it changed meanwhile.
    pub fn hash(&self, fd: &OwnedFd, max: u64) -> Result<([u8; 32], u64), i32> {
        let before = stat(fd)?;
        if FileType::from_raw_mode(before.st_mode) != FileType::RegularFile {
            return Err(libc::EINVAL);
        }
        if before.st_size as u64 > max {
            return Err(libc::EFBIG);
        }
        let v = version(&before);
        if let Some(h) = self.memo.lock().expect("memo").get(&v) {
            return Ok((*h, v.2));
        }
        let hash = read_hash(fd)?;
        self.hashes.fetch_add(1, Ordering::Relaxed);
        if version(&stat(fd)?) != v {
            return Err(libc::EAGAIN);
        }
        let mut memo = self.memo.lock().expect("memo");
        if memo.len() >= MEMO {
            memo.clear();
        }
        memo.insert(v, hash);
        Ok((hash, v.2))
    }
}

fn stat(fd: &OwnedFd) -> Result<Stat, i32> {
    rustix::fs::fstat(fd).map_err(|e| e.raw_os_error())
}

fn version(st: &Stat) -> Version {
    (
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        (st.st_mtime, st.st_mtime_nsec as i64),
        (st.st_ctime, st.st_ctime_nsec as i64),
    )
}

/// blake3 of everything `fd` holds, read from the start to the end in [`MAX_IO`] pieces.
fn read_hash(fd: &OwnedFd) -> Result<[u8; 32], i32> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = crate::buffers::take(MAX_IO as usize);
    buf.resize(MAX_IO as usize, 0);
    let mut offset = 0u64;
    let r = loop {
        match rustix::io::pread(fd, &mut buf[..], offset) {
            Ok(0) => break Ok(*hasher.finalize().as_bytes()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => break Err(e.raw_os_error()),
        }
    };
    crate::buffers::give(buf);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &std::path::Path) -> OwnedFd {
        std::fs::File::open(p).unwrap().into()
    }

    /// A file is read through once while it stays the same, and again once it changes; the hash is blake3 of the
    /// content, whatever its size.
    #[test]
    fn an_unchanged_file_is_hashed_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let content: Vec<u8> = (0..(MAX_IO as usize * 2 + 5)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &content).unwrap();
        let d = Digests::default();
        let want = *blake3::hash(&content).as_bytes();
        let max = u64::MAX;
        assert_eq!(d.hash(&open(&p), max).unwrap(), (want, content.len() as u64));
        assert_eq!(d.hash(&open(&p), max).unwrap(), (want, content.len() as u64));
        assert_eq!(d.hashes(), 1, "the second answer came from the memo");
        std::fs::write(&p, b"changed").unwrap();
        assert_eq!(d.hash(&open(&p), max).unwrap(), (*blake3::hash(b"changed").as_bytes(), 7));
        assert_eq!(d.hashes(), 2);
        assert_eq!(d.hash(&open(dir.path()), max), Err(libc::EINVAL), "a directory has no content hash");
        assert_eq!(d.hash(&open(&p), 6), Err(libc::EFBIG), "larger than the binder caches: not read");
        assert_eq!(d.hashes(), 2);
    }
}
