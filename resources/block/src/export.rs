//! What is exported: an open regular file or block device, with positional IO for the server.
//!
//! The file is shared (`Arc`) so that the server can hand it to blocking threads, and so that several connections
//! can serve the same `Export` at once: they all go through one kernel page cache, which is why the server may
//! advertise `NBD_FLAG_CAN_MULTI_CONN`.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::Arc;

use crate::nbd::proto::errno;
use crate::Error;

/// What is exported: an open file or block device.
#[derive(Debug, Clone)]
pub struct Export {
    file: Arc<File>,
    size: u64,
    read_only: bool,
}

/// Which file an export is: its device and inode, recorded at export and checked at every later open, so that a
/// path swapped for another file (or for a symlink to a disk) is refused instead of served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl Export {
    /// Opens `path` (a regular file or a block device) for export; `read_only` opens it without write access.
    pub fn open(path: &Path, read_only: bool) -> Result<Export, Error> {
        let open_err = |source| Error::Open { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(open_err)?;
        Export::from_file(path, file, read_only)
    }

    /// Opens `path` as an export must be opened by a node: never through a symlink in its last component
    /// (`O_NOFOLLOW`), a block device only if `block` says so, and, if `expect` is given, only the very file that
    /// was exported (same device and inode).
    pub fn open_exact(path: &Path, read_only: bool, block: bool, expect: Option<FileId>) -> Result<Export, Error> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let open_err = |source| Error::Open { path: path.to_owned(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::Replaced { path: path.to_owned(), what: "a symbolic link".into() },
                _ => open_err(e),
            })?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.file_type().is_block_device() && !block {
            return Err(Error::BlockNotNamed { path: path.to_owned() });
        }
        if let Some(id) = expect {
            if (meta.dev(), meta.ino()) != (id.dev, id.ino) {
                return Err(Error::Replaced { path: path.to_owned(), what: "another file".into() });
            }
        }
        Export::from_file(path, file, read_only)
    }

    /// The device and inode of the open file.
    pub fn id(&self) -> io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata()?;
        Ok(FileId { dev: m.dev(), ino: m.ino() })
    }

    fn from_file(path: &Path, file: File, read_only: bool) -> Result<Export, Error> {
        let open_err = |source| Error::Open { path: path.to_owned(), source };
        let meta = file.metadata().map_err(open_err)?;
        let kind = meta.file_type();
        let size = if kind.is_file() {
            meta.len()
        } else if kind.is_block_device() {
            // lseek(SEEK_END) reports a block device's size, like the BLKGETSIZE64 ioctl, without unsafe code.
            (&file).seek(SeekFrom::End(0)).map_err(open_err)?
        } else {
            return Err(Error::NotExportable { path: path.to_owned() });
        };
        Ok(Export { file: Arc::new(file), size, read_only })
    }

    /// Size in bytes, fixed when opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The same open file, with writes refused if `read_only` (a read-only bind of a writable export).
    pub fn read_only_if(&self, read_only: bool) -> Export {
        Export { file: Arc::clone(&self.file), size: self.size, read_only: self.read_only || read_only }
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The file, for IO on a blocking thread.
    pub(crate) fn file(&self) -> Arc<File> {
        self.file.clone()
    }
}

/// Reads from `offset` only what the page cache already holds, without blocking on the disk; returns the bytes
/// read (0 when nothing is cached or the filesystem cannot tell). Lets the server answer cached reads inline,
/// without a trip through the blocking pool.
pub(crate) fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return 0;
    };
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: `iov` describes `buf`, which is valid for writes of `buf.len()` bytes and borrowed mutably for the
    // whole call; the descriptor belongs to `file`, which outlives the call; preadv2 writes only inside `iov`.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    usize::try_from(n).unwrap_or(0)
}

/// Reads exactly `buf.len()` bytes at `offset` (blocking).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Writes all of `buf` at `offset`, then makes it durable if `fua` (blocking).
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
    file.write_all_at(buf, offset)?;
    if fua {
        file.sync_data()?;
    }
    Ok(())
}

/// `fallocate(mode)` over `len` bytes at `offset`.
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: fallocate only acts on the descriptor, which `file` keeps open for the whole call; no memory is
    // passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `e` says the file or its filesystem cannot do that kind of `fallocate`.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENODEV | libc::EINVAL))
}

/// `NBD_CMD_TRIM`: gives the space of a range back (a hole in a file, a discard on a device). Advisory: where the
/// file cannot do it, nothing happens and the trim still succeeds (its contents are unspecified either way).
pub(crate) fn trim(file: &File, offset: u64, len: u64, fua: bool) -> io::Result<()> {
    match fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
        Ok(()) => {}
        Err(e) if unsupported(&e) => {}
        Err(e) => return Err(e),
    }
    if fua {
        file.sync_data()?;
    }
    Ok(())
}

/// Bytes written at a time when zeroes must be written out.
const ZERO_CHUNK: usize = 1 << 20;

/// `NBD_CMD_WRITE_ZEROES`: makes a range read as zeroes. A hole is punched if `may_trim` (no `NO_HOLE` flag);
/// otherwise the range is zeroed in place (`FALLOC_FL_ZERO_RANGE`), and where the filesystem can do neither,
/// zeroes are written.
pub(crate) fn write_zeroes(file: &File, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let punched = may_trim && fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len).is_ok();
    if !punched {
        match fallocate(file, libc::FALLOC_FL_ZERO_RANGE | keep, offset, len) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => {
                let zeroes = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
                let mut done = 0u64;
                while done < len {
                    let n = zeroes.len().min(usize::try_from(len - done).unwrap_or(usize::MAX));
                    file.write_all_at(&zeroes[..n], offset + done)?;
                    done += n as u64;
                }
            }
            Err(e) => return Err(e),
        }
    }
    if fua {
        file.sync_data()?;
    }
    Ok(())
}

/// `NBD_CMD_CACHE`: asks the kernel to read a range ahead into the page cache.
pub(crate) fn cache(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise only acts on the descriptor, which `file` keeps open for the whole call. Advice that
    // is not taken changes nothing, so its result is not needed.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
}

/// Maps an IO error to the closest error value the NBD protocol allows.
pub(crate) fn nbd_errno(e: &io::Error) -> u32 {
    use io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied | K::ReadOnlyFilesystem => errno::EPERM,
        // The spec asks for EDQUOT and EFBIG to be reported as ENOSPC.
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => errno::ENOSPC,
        K::InvalidInput => errno::EINVAL,
        K::OutOfMemory => errno::ENOMEM,
        K::Unsupported => errno::ENOTSUP,
        _ => errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Export::open(dir.path(), true), Err(Error::NotExportable { .. })));
        assert!(matches!(Export::open(&dir.path().join("missing"), true), Err(Error::Open { .. })));
    }

    #[test]
    fn cached_reads_return_a_correct_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let e = Export::open(&p, true).unwrap();
        let mut buf = vec![0u8; 50_000];
        let n = read_cached(&e.file(), &mut buf, 30_000);
        assert!(n <= buf.len());
        assert_eq!(buf[..n], data[30_000..30_000 + n]);
        assert_eq!(read_cached(&e.file(), &mut buf, u64::MAX), 0);
    }

    /// Attack (issue 10, finding 5): root exports a file Alice can replace; she swaps it for a symlink to a disk,
    /// and the next open (a restart) served the disk.
    #[test]
    fn a_swapped_file_or_a_symlink_is_refused_and_block_devices_need_naming() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.img");
        std::fs::write(&p, vec![1u8; 4096]).unwrap();
        let e = Export::open_exact(&p, false, false, None).unwrap();
        let id = e.id().unwrap();
        assert!(Export::open_exact(&p, false, false, Some(id)).is_ok(), "the same file opens again");
        // Swapped for a symlink to another file.
        let other = dir.path().join("other");
        std::fs::write(&other, vec![2u8; 4096]).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&other, &p).unwrap();
        let err = Export::open_exact(&p, false, false, Some(id)).unwrap_err();
        assert!(matches!(err, Error::Replaced { .. }), "{err}");
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        // Swapped for another file.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, vec![3u8; 4096]).unwrap();
        let err = Export::open_exact(&p, false, false, Some(id)).unwrap_err();
        assert!(err.to_string().contains("another file"), "{err}");
        // What was opened at export keeps serving the original bytes.
        let mut buf = [0u8; 4];
        read_at(&e.file(), &mut buf, 0).unwrap();
        assert_eq!(buf, [1; 4]);
    }

    /// TRIM and WRITE_ZEROES leave the range reading as zeroes (or, for TRIM, as anything), the rest untouched,
    /// and the size unchanged; with `NO_HOLE` the range stays allocated.
    #[test]
    fn trim_and_write_zeroes_keep_the_rest_and_the_size() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 4 << 20]).unwrap();
        let e = Export::open(&p, false).unwrap();
        let f = e.file();
        write_zeroes(&f, 1 << 20, 1 << 20, true, false).unwrap();
        write_zeroes(&f, 2 << 20, 4096, false, true).unwrap();
        trim(&f, 3 << 20, 1 << 20, false).unwrap();
        cache(&f, 0, 4 << 20);
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 4 << 20);
        assert!(data[..1 << 20].iter().all(|&b| b == 7));
        assert!(data[1 << 20..(2 << 20) + 4096].iter().all(|&b| b == 0));
        assert!(data[(2 << 20) + 4096..3 << 20].iter().all(|&b| b == 7));
        let m = std::fs::metadata(&p).unwrap();
        assert!(m.blocks() * 512 < 4 << 20, "the punched ranges gave their space back: {} blocks", m.blocks());
    }

    #[test]
    fn size_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 12345]).unwrap();
        let e = Export::open(&p, true).unwrap();
        assert_eq!((e.size(), e.read_only()), (12345, true));
    }
}
