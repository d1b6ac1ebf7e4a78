//! The exporting side's filesystem logic: metac-fs/2 operations on the export's tree, with no IO of the network.
//!
//! Every inode the binder knows is an O_PATH descriptor in a table ([`Server`] hands out the numbers; 1 is the
//! root). A name is only ever resolved as one component beneath the descriptor of its parent directory, with
//! openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS) and O_NOFOLLOW, and the other calls that
//! take a name (mkdirat, unlinkat, renameat2, symlinkat, linkat) take the parent's descriptor and one component
//! too. So `..`, a name with a `/`, an absolute or relative symlink and a symlink swapped in for a directory after it
//! was looked up never lead out of the export: a symlink is stored and read, never followed by the exporter, and a
//! looked-up inode stays the inode it was whatever is renamed over its name later.
//!
//! Opening an inode for IO, changing its mode or times goes through `/proc/self/fd/N` of its O_PATH descriptor,
//! the one path that reaches that very inode (as virtiofsd does); symlinks are never opened so.
//!
//! A read-only server refuses every change with EROFS, whatever the binder's kernel thinks of its mount. Changing
//! ownership, permission bits and extended attributes, making device nodes and setuid or setgid files take the
//! admin right besides (EPERM without it). Only regular files and directories are ever opened: a FIFO, socket or
//! device node in the export is the binder's kernel's to handle, never the exporter's.
//!
//! Ownership follows sshfs's `idmap=user`: what the exporting user owns is shown as the binding user's, and the
//! binding user's ids are taken for the exporting user's in a chown (a swap of the two, so nothing else changes
//! and root on both sides maps to itself). What a binder makes belongs to the process that asked when the bind has
//! the admin right on an export of root's (as on a local disk); otherwise to the exporting user, who made it.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::fs::inotify::{self, WatchFlags};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat, Timespec, Timestamps};
use rustix::io::{Errno, ReadWriteFlags};

use crate::digest::Digests;
use crate::proto::{
    self, Attr, Change, DirEntry, Op, Reply, SetAttr, Time, Who, MAX_DIR_ENTRIES, MAX_IO, MAX_XATTR, ROOT,
};

/// The most inodes one bind may hold looked up at once (ENFILE beyond).
pub const MAX_INODES: usize = 1 << 20;
/// The most files one bind may hold open at once (EMFILE beyond).
pub const MAX_FILES: usize = 4096;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS).union(ResolveFlags::NO_SYMLINKS);

/// One bind's view of an export: its inode and file tables.
pub struct Server {
    proc_fd: OwnedFd,
    read_only: bool,
    admin: bool,
    ids: Mutex<Ids>,
    inodes: Mutex<Inodes>,
    files: Mutex<Files>,
    watches: Mutex<Option<Watches>>,
    /// Whether `watches` is set (read on every operation, without the lock).
    watching: std::sync::atomic::AtomicBool,
    /// Whether the binder asked for [`proto::DIR_ATTRS`].
    dir_attrs: std::sync::atomic::AtomicBool,
    /// The process's umask, which what is made on the spot (not by a worker, whose umask is 0) is made with.
    umask: u32,
    /// Names and inodes this bind changed lately, whose inotify events are its own echo, not news.
    own: Mutex<HashMap<Own, std::time::Instant>>,
    /// The node's memo of file hashes and its figures of content served.
    digests: Arc<Digests>,
    /// The node's descriptors, which every bind's inode and file tables draw on ([`Descriptors`]).
    descriptors: Arc<Descriptors>,
}

/// What an operation of the binder's changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Own {
    Name(u64, Vec<u8>),
    Ino(u64),
}

/// How long after an operation of the binder's the events of what it changed are taken for its echo.
const ECHO: std::time::Duration = std::time::Duration::from_millis(200);

/// One open file of the binder's.
struct Open {
    fd: Arc<OwnedFd>,
    ino: u64,
    writes: bool,
    _held: descriptors::Held,
}

/// The directories of the bind's table watched with inotify, so that changes made on the exporter (by anyone but
/// this bind) are told to the binder ([`Server::changes`]).
struct Watches {
    fd: OwnedFd,
    by_wd: HashMap<i32, u64>,
    by_ino: HashMap<u64, i32>,
}

/// What a watched directory hears of.
const WATCH: WatchFlags = WatchFlags::MODIFY
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::EXCL_UNLINK);

/// The most directories one bind watches (inotify watches are a per-user kernel resource); changes in others are
/// seen when the binder's cache times out.
pub const MAX_WATCHES: usize = 4096;
/// The most changes told in one [`Reply::Changed`].
pub const MAX_CHANGES: usize = proto::MAX_DIR_ENTRIES;

/// The exporting user's ids and the binding user's, which stand for each other on the way out and in.
#[derive(Debug, Clone, Copy)]
struct Ids {
    here: (u32, u32),
    there: (u32, u32),
}

impl Ids {
    fn swap(x: u32, (a, b): (u32, u32)) -> u32 {
        if x == a {
            b
        } else if x == b {
            a
        } else {
            x
        }
    }

    /// A user id on one side as the other side knows it (the swap is its own inverse).
    fn uid(&self, uid: u32) -> u32 {
        Ids::swap(uid, (self.here.0, self.there.0))
    }

    fn gid(&self, gid: u32) -> u32 {
        Ids::swap(gid, (self.here.1, self.there.1))
    }
}

struct Node {
    fd: Arc<OwnedFd>,
    key: (u64, u64),
    lookups: u64,
    /// The descriptor's place in the node's budget; none for the root, which every bind holds.
    _held: Option<descriptors::Held>,
}

struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
}

struct Files {
    open: HashMap<u64, Open>,
    /// How many handles open for writing each inode has (its changes are the binder's own).
    writers: HashMap<u64, u32>,
    next: u64,
}

/// The errno of a failure, as the binder's programs will see it.
pub type Result<T> = std::result::Result<T, i32>;

fn errno(e: Errno) -> i32 {
    e.raw_os_error()
}

impl Server {
    /// A server of the tree under `root` (a directory, opened O_PATH or not), read-only if asked.
    pub fn new(root: OwnedFd, read_only: bool) -> std::io::Result<Server> {
        let proc_fd =
            rustix::fs::open("/proc/self/fd", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let root = rustix::fs::openat(&root, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let st = rustix::fs::fstat(&root)?;
        let key = (st.st_dev, st.st_ino);
        let node = Node { fd: Arc::new(root), key, lookups: 1, _held: None };
        let inodes =
            Inodes { by_ino: HashMap::from([(ROOT, node)]), by_key: HashMap::from([(key, ROOT)]), next: ROOT + 1 };
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let me = unsafe { (libc::geteuid(), libc::getegid()) };
        Ok(Server {
            proc_fd,
            read_only,
            admin: !read_only,
            ids: Mutex::new(Ids { here: me, there: me }),
            inodes: Mutex::new(inodes),
            watches: Mutex::new(None),
            watching: std::sync::atomic::AtomicBool::new(false),
            dir_attrs: std::sync::atomic::AtomicBool::new(false),
            umask: process_umask(),
            own: Mutex::new(HashMap::new()),
            files: Mutex::new(Files { open: HashMap::new(), writers: HashMap::new(), next: 1 }),
            digests: Arc::default(),
            descriptors: Descriptors::node(),
        })
    }

    /// The same server hashing with, and counting what it serves in, `digests` (the node's; a server of its own
    /// by default).
    pub fn with_digests(mut self, digests: Arc<Digests>) -> Server {
        self.digests = digests;
        self
    }

    /// The same server drawing its descriptors from `budget` (the node's by default).
    pub fn with_descriptors(mut self, budget: Arc<Descriptors>) -> Server {
        self.descriptors = budget;
        self
    }

    /// The same server with the admin right given or not (a writable server has it unless told otherwise).
    pub fn with_admin(mut self, admin: bool) -> Server {
        self.admin = admin && !self.read_only;
        self
    }

    /// The same server for a tree exported by the user `uid`:`gid` (the process's own by default), whose files
    /// are shown as the binding user's once the binder says who that is ([`Op::Init`]).
    pub fn exported_by(self, uid: u32, gid: u32) -> Server {
        *self.ids.lock().expect("ids") = Ids { here: (uid, gid), there: (uid, gid) };
        self
    }

    /// The tree under `sub` (a relative path, resolved beneath `root` as any name is) of the export at `root`.
    pub fn beneath(root: &OwnedFd, sub: &str) -> std::io::Result<OwnedFd> {
        let sub = sub.trim_start_matches('/');
        let sub = if sub.is_empty() { "." } else { sub };
        // Symlinks inside the sub-path are followed, but only as far as they stay beneath the root.
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        Ok(rustix::fs::openat2(root, sub, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), how)?)
    }

    /// How many inodes and open files the bind holds (for tests and limits).
    pub fn held(&self) -> (usize, usize) {
        (self.inodes.lock().expect("inodes").by_ino.len(), self.files.lock().expect("files").open.len())
    }

    /// Does one operation; one that changes a directory is answered with its attributes after, if the binder
    /// asked for them ([`proto::DIR_ATTRS`]).
    pub fn handle(&self, op: Op) -> Result<Reply> {
        let dir = match op {
            _ if !self.dir_attrs.load(std::sync::atomic::Ordering::Relaxed) => None,
            Op::Create { parent, .. }
            | Op::Mkdir { parent, .. }
            | Op::Mknod { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. } => Some(parent),
            Op::Link { newparent, .. } => Some(newparent),
            _ => None,
        };
        let r = self.handle_op(op);
        let Some(dir) = dir.filter(|_| r.is_ok()) else { return r };
        // A directory that cannot be looked at now is asked for by the binder's kernel as usual.
        let Ok(dir) = self.attr(dir) else { return r };
        match r {
            Ok(Reply::Entry(attr)) => Ok(Reply::EntryIn { attr, dir }),
            Ok(Reply::Created { attr, fh }) => Ok(Reply::CreatedIn { attr, fh, dir }),
            Ok(Reply::Empty) => Ok(Reply::DoneIn { dir }),
            r => r,
        }
    }

    fn handle_op(&self, op: Op) -> Result<Reply> {
        if self.read_only
            && (op.writes()
                || matches!(op, Op::Open { flags, .. } | Op::OpenRead { flags, .. } if opens_for_writing(flags)))
        {
            return Err(libc::EROFS);
        }
        if !self.admin && op.takes_admin() {
            return Err(libc::EPERM);
        }
        if !self.watching.load(std::sync::atomic::Ordering::Acquire) {
            return self.run(op);
        }
        self.mark_own(&op);
        let makes = matches!(op, Op::Create { .. } | Op::Mkdir { .. } | Op::Mknod { .. } | Op::Symlink { .. });
        let r = self.run(op);
        if let (true, Ok(Reply::Entry(a) | Reply::Created { attr: a, .. })) = (makes, &r) {
            // What was just made (its owner given by a chown, say) is the binder's own too.
            self.own.lock().expect("own").insert(Own::Ino(a.ino), std::time::Instant::now());
        }
        r
    }

    /// Notes what `op` changes, so that its echo from inotify is not told back to the binder.
    fn mark_own(&self, op: &Op) {
        let marks = match op {
            Op::Create { parent, name, .. }
            | Op::Mkdir { parent, name, .. }
            | Op::Mknod { parent, name, .. }
            | Op::Symlink { parent, name, .. }
            | Op::Unlink { parent, name }
            | Op::Rmdir { parent, name } => vec![Own::Name(*parent, name.clone())],
            Op::Link { ino, newparent, newname } => vec![Own::Ino(*ino), Own::Name(*newparent, newname.clone())],
            Op::Rename { parent, name, newparent, newname, .. } => {
                vec![Own::Name(*parent, name.clone()), Own::Name(*newparent, newname.clone())]
            }
            Op::Setattr { ino, .. } | Op::Setxattr { ino, .. } | Op::Removexattr { ino, .. } => vec![Own::Ino(*ino)],
            // Closing a file written through this bind: its CLOSE_WRITE (and the last writes') are echoes too.
            Op::Release { fh } => match self.files.lock().expect("files").open.get(fh) {
                Some(f) if f.writes => vec![Own::Ino(f.ino)],
                _ => return,
            },
            _ => return,
        };
        let now = std::time::Instant::now();
        let mut own = self.own.lock().expect("own");
        if own.len() > 4 * MAX_CHANGES {
            own.retain(|_, at| now.duration_since(*at) < ECHO);
        }
        for m in marks {
            own.insert(m, now);
        }
    }

    /// Whether `what` was changed by this bind lately.
    fn is_own(&self, what: &Own) -> bool {
        self.own.lock().expect("own").get(what).is_some_and(|at| at.elapsed() < ECHO)
    }

    fn run(&self, op: Op) -> Result<Reply> {
        match op {
            Op::Lookup { parent, name } => self.lookup(parent, &name).map(Reply::Entry),
            Op::Forget { ino, n } => {
                self.forget(ino, n);
                Ok(Reply::Empty)
            }
            Op::Getattr { ino } => self.attr(ino).map(Reply::Attr),
            Op::Init { uid, gid } => {
                let mut ids = self.ids.lock().expect("ids");
                ids.there = (uid, gid);
                Ok(Reply::Init { uid: ids.here.0, gid: ids.here.1 })
            }
            Op::Features { want } => {
                self.dir_attrs.store(want & proto::DIR_ATTRS != 0, std::sync::atomic::Ordering::Relaxed);
                Ok(Reply::Features(proto::ORDERED | (want & proto::DIR_ATTRS)))
            }
            Op::Setattr { ino, fh, set } => self.setattr(ino, fh, &set).map(Reply::Attr),
            Op::Readdir { ino, offset } => self.readdir(ino, offset).map(Reply::Dir),
            Op::ReaddirPlus { ino, offset, size } => self.readdir_plus(ino, offset, size).map(Reply::DirPlus),
            Op::Open { ino, flags } => self.open(ino, flags).map(|fh| Reply::Opened { fh }),
            Op::OpenRead { ino, flags, max } => {
                self.open_read(ino, flags, max, false).expect("one that may wait answers")
            }
            Op::Read { fh, offset, size } => {
                let data = self.read(fh, offset, size)?;
                self.digests.count_served(data.len() as u64);
                Ok(Reply::Data(data))
            }
            Op::Hash { fh, max } => {
                let (blake3, size) = self.digests.hash(&*self.file(fh)?, max)?;
                Ok(Reply::Hash { blake3, size })
            }
            Op::Write { fh, offset, data } => {
                let f = self.file(fh)?;
                let mut done = 0;
                while done < data.len() {
                    match rustix::io::pwrite(&*f, &data[done..], offset + done as u64) {
                        Ok(0) => return Err(libc::EIO),
                        Ok(n) => done += n,
                        Err(Errno::INTR) => {}
                        Err(e) => return Err(errno(e)),
                    }
                }
                crate::buffers::give(data);
                Ok(Reply::Written(done as u32))
            }
            Op::Create { parent, name, mode, umask, flags, who } => {
                self.create(parent, &name, self.new_mode(mode & !umask), flags, who)
            }
            Op::Mkdir { parent, name, mode, umask, who } => {
                let p = self.fd(parent)?;
                let mode = self.new_mode(mode & !umask);
                rustix::fs::mkdirat(&*p, component(&name)?, Mode::from_raw_mode(mode)).map_err(errno)?;
                self.made(&p, &name, mode, who).map(Reply::Entry)
            }
            Op::Mknod { parent, name, mode, umask, rdev, who } => {
                let p = self.fd(parent)?;
                let kind = FileType::from_raw_mode(mode);
                let allowed = match kind {
                    FileType::RegularFile | FileType::Fifo | FileType::Socket => true,
                    FileType::CharacterDevice | FileType::BlockDevice => self.admin,
                    _ => false,
                };
                if !allowed {
                    return Err(libc::EPERM);
                }
                let perm = self.new_mode(mode & !umask & 0o7777);
                rustix::fs::mknodat(&*p, component(&name)?, kind, Mode::from_raw_mode(perm), rdev).map_err(errno)?;
                self.made(&p, &name, perm, who).map(Reply::Entry)
            }
            Op::Unlink { parent, name } => {
                let p = self.fd(parent)?;
                rustix::fs::unlinkat(&*p, component(&name)?, AtFlags::empty()).map_err(errno)?;
                Ok(Reply::Empty)
            }
            Op::Rmdir { parent, name } => {
                let p = self.fd(parent)?;
                rustix::fs::unlinkat(&*p, component(&name)?, AtFlags::REMOVEDIR).map_err(errno)?;
                Ok(Reply::Empty)
            }
            Op::Rename { parent, name, newparent, newname, flags } => {
                let (p, np) = (self.fd(parent)?, self.fd(newparent)?);
                let flags = RenameFlags::from_bits(flags).ok_or(libc::EINVAL)?;
                rustix::fs::renameat_with(&*p, component(&name)?, &*np, component(&newname)?, flags).map_err(errno)?;
                Ok(Reply::Empty)
            }
            Op::Symlink { parent, name, target, who } => {
                let p = self.fd(parent)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(libc::EINVAL);
                }
                rustix::fs::symlinkat(target.as_slice(), &*p, component(&name)?).map_err(errno)?;
                self.made(&p, &name, 0o777, who).map(Reply::Entry)
            }
            Op::Readlink { ino } => {
                let fd = self.fd(ino)?;
                let target = rustix::fs::readlinkat(&*fd, "", Vec::new()).map_err(errno)?;
                Ok(Reply::Data(target.into_bytes()))
            }
            Op::Link { ino, newparent, newname } => {
                let (fd, np) = (self.fd(ino)?, self.fd(newparent)?);
                if file_type(&stat(&fd)?) == FileType::Directory {
                    return Err(libc::EPERM);
                }
                // Through /proc: linkat(fd, "", AT_EMPTY_PATH) would take CAP_DAC_READ_SEARCH.
                let proc = fd.as_raw_fd().to_string();
                rustix::fs::linkat(&self.proc_fd, proc.as_str(), &*np, component(&newname)?, AtFlags::SYMLINK_FOLLOW)
                    .map_err(errno)?;
                self.lookup(newparent, &newname).map(Reply::Entry)
            }
            Op::Statfs { ino } => {
                let s = rustix::fs::fstatfs(&*self.fd(ino)?).map_err(errno)?;
                Ok(Reply::Statfs(proto::Statfs {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: s.f_bsize as u32,
                    namelen: s.f_namelen as u32,
                    frsize: s.f_frsize as u32,
                }))
            }
            Op::Fsync { fh, datasync } => {
                let f = self.file(fh)?;
                if datasync { rustix::fs::fdatasync(&*f) } else { rustix::fs::fsync(&*f) }.map_err(errno)?;
                Ok(Reply::Empty)
            }
            Op::Release { fh } => self.release(fh).map(|()| Reply::Empty),
            Op::Getxattr { ino, name, size } => {
                let (path, name) = (self.xattr_path(ino, XattrUse::Read)?.ok_or(libc::ENODATA)?, xattr_name(&name)?);
                if size == 0 {
                    let n = rustix::fs::getxattr_query(&path, &name).map_err(errno)?;
                    return Ok(Reply::Size(n.min(MAX_XATTR) as u32));
                }
                let mut buf = vec![0u8; (size as usize).min(MAX_XATTR)];
                let n = rustix::fs::getxattr(&path, &name, &mut buf[..]).map_err(errno)?;
                buf.truncate(n);
                Ok(Reply::Data(buf))
            }
            Op::Listxattr { ino, size } => {
                let Some(path) = self.xattr_path(ino, XattrUse::List)? else {
                    return Ok(if size == 0 { Reply::Size(0) } else { Reply::Data(Vec::new()) });
                };
                if size == 0 {
                    let n = rustix::fs::listxattr_query(&path).map_err(errno)?;
                    return Ok(Reply::Size(n.min(MAX_XATTR) as u32));
                }
                let mut buf = vec![0u8; (size as usize).min(MAX_XATTR)];
                let n = rustix::fs::listxattr(&path, &mut buf[..]).map_err(errno)?;
                buf.truncate(n);
                Ok(Reply::Data(buf))
            }
            Op::Setxattr { ino, name, value, flags } => {
                let (path, name) = (self.xattr_path(ino, XattrUse::Change)?.ok_or(libc::EPERM)?, xattr_name(&name)?);
                let flags = rustix::fs::XattrFlags::from_bits(flags as u32).ok_or(libc::EINVAL)?;
                rustix::fs::setxattr(&path, &name, &value, flags).map_err(errno)?;
                Ok(Reply::Empty)
            }
            Op::Removexattr { ino, name } => {
                let (path, name) = (self.xattr_path(ino, XattrUse::Change)?.ok_or(libc::EPERM)?, xattr_name(&name)?);
                rustix::fs::removexattr(&path, &name).map_err(errno)?;
                Ok(Reply::Empty)
            }
            Op::Fallocate { fh, offset, length, mode } => {
                let f = self.file(fh)?;
                let mode = rustix::fs::FallocateFlags::from_bits(mode as u32).ok_or(libc::EOPNOTSUPP)?;
                rustix::fs::fallocate(&*f, mode, offset, length).map_err(errno)?;
                Ok(Reply::Empty)
            }
            Op::Lseek { fh, offset, whence } => {
                let f = self.file(fh)?;
                let offset = u64::try_from(offset).map_err(|_| libc::ENXIO)?;
                let pos = match whence {
                    libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset),
                    libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset),
                    _ => return Err(libc::EINVAL),
                };
                rustix::fs::seek(&*f, pos).map(Reply::Offset).map_err(errno)
            }
        }
    }

    /// Starts telling the binder of changes made to the export by others than this bind: the descriptor to wait on
    /// (readable when [`Server::changes`] has something), or `None` if inotify is not to be had.
    pub fn watch_changes(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        let mut w = self.watches.lock().expect("watches");
        if w.is_none() {
            let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
                .map_err(|e| tracing::debug!("fs: no inotify, so no change notices: {e}"))
                .ok()?;
            *w = Some(Watches { fd, by_wd: HashMap::new(), by_ino: HashMap::new() });
            self.watching.store(true, std::sync::atomic::Ordering::Release);
            drop(w);
            let t = self.inodes.lock().expect("inodes");
            for (&ino, n) in &t.by_ino {
                if stat(&*n.fd).is_ok_and(|st| file_type(&st) == FileType::Directory) {
                    self.watch(ino, &n.fd);
                }
            }
            w = self.watches.lock().expect("watches");
        }
        let fd = w.as_ref()?.fd.as_raw_fd();
        // SAFETY: the inotify descriptor lives as long as the server (it is only ever closed with it).
        Some(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
    }

    /// Watches directory `ino` (best effort: within [`MAX_WATCHES`], where the exporting user may read it).
    fn watch(&self, ino: u64, fd: &OwnedFd) {
        let mut w = self.watches.lock().expect("watches");
        let Some(w) = w.as_mut() else { return };
        if w.by_ino.len() >= MAX_WATCHES {
            return;
        }
        match inotify::add_watch(&w.fd, format!("/proc/self/fd/{}", fd.as_raw_fd()), WATCH) {
            Ok(wd) => {
                if let Some(old) = w.by_wd.insert(wd, ino) {
                    w.by_ino.remove(&old);
                }
                w.by_ino.insert(ino, wd);
            }
            Err(e) => tracing::debug!(ino, "fs: cannot watch a directory: {e}"),
        }
    }

    /// The changes heard of since the last call (at most [`MAX_CHANGES`], each once): a name in a directory that
    /// came, went or was renamed, and inodes (known to the binder) whose data or attributes changed. Writes through
    /// a handle of this bind's are its own and not told.
    pub fn changes(&self) -> Vec<Change> {
        use rustix::fs::inotify::ReadFlags as R;
        // The events of each name once, in the order first heard (a file written in many pieces is many events).
        let mut heard: Vec<(u64, Option<Vec<u8>>, R)> = Vec::new();
        {
            let w = self.watches.lock().expect("watches");
            let Some(w) = w.as_ref() else { return Vec::new() };
            let mut at: HashMap<(u64, Option<Vec<u8>>), usize> = HashMap::new();
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut events = inotify::Reader::new(&w.fd, &mut buf);
            for _ in 0..MAX_CHANGES * 4 {
                let Ok(e) = events.next() else { break };
                let Some(&dir) = w.by_wd.get(&e.wd()) else { continue };
                let name = e.file_name().map(|n| n.to_bytes().to_vec()).filter(|n| !n.is_empty());
                match at.entry((dir, name.clone())) {
                    std::collections::hash_map::Entry::Occupied(i) => heard[*i.get()].2 |= e.events(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(heard.len());
                        heard.push((dir, name, e.events()));
                    }
                }
            }
        }
        let mut out: Vec<Change> = Vec::new();
        let mut told = std::collections::HashSet::new();
        let mut add = |c: Change, out: &mut Vec<Change>| {
            if out.len() < MAX_CHANGES && told.insert(c.clone()) {
                out.push(c);
            }
        };
        for (dir, name, what) in heard {
            let Some(name) = name else {
                // The directory itself.
                add(Change::Inode { ino: dir }, &mut out);
                continue;
            };
            if what.intersects(R::CREATE | R::DELETE | R::MOVED_FROM | R::MOVED_TO)
                && !self.is_own(&Own::Name(dir, name.clone()))
            {
                add(Change::Entry { parent: dir, name: name.clone() }, &mut out);
                add(Change::Inode { ino: dir }, &mut out);
            }
            if what.intersects(R::MODIFY | R::ATTRIB | R::CLOSE_WRITE) {
                if let Some(ino) = self.known(dir, &name) {
                    let writing = self.files.lock().expect("files").writers.contains_key(&ino);
                    let echo = self.is_own(&Own::Ino(ino)) || (writing && !what.contains(R::ATTRIB));
                    if !echo {
                        add(Change::Inode { ino }, &mut out);
                    }
                }
            }
        }
        out
    }

    /// The number of the inode `name` in directory `dir` leads to now, if this bind has handed it out.
    fn known(&self, dir: u64, name: &[u8]) -> Option<u64> {
        let d = self.fd(dir).ok()?;
        let st = rustix::fs::statat(&*d, component(name).ok()?.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        self.inodes.lock().expect("inodes").by_key.get(&(st.st_dev, st.st_ino)).copied()
    }

    /// Attributes as the binder is shown them: owners through the id map.
    fn shown(&self, ino: u64, st: &Stat) -> Attr {
        let mut a = attr(ino, st);
        let ids = *self.ids.lock().expect("ids");
        (a.uid, a.gid) = (ids.uid(a.uid), ids.gid(a.gid));
        a
    }

    /// The permission bits something is made with: without the admin right, never setuid or setgid (a file of
    /// the exporting user's that others there would run as that user).
    fn new_mode(&self, mode: u32) -> u32 {
        if self.admin {
            mode
        } else {
            mode & !(libc::S_ISUID | libc::S_ISGID)
        }
    }

    /// Looks up what was just made as `name` in `p` and, where the bind may say who owns it, gives it to `who`
    /// (the group stays the directory's in a setgid directory, as the kernel chose it); the chown took setuid and
    /// setgid bits away, and they are put back as asked.
    fn made(&self, p: &OwnedFd, name: &[u8], mode: u32, who: Who) -> Result<Attr> {
        let fd = rustix::fs::openat2(
            p,
            component(name)?,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(errno)?;
        self.give(&fd, p, mode, who)?;
        self.remember(fd)
    }

    fn give(&self, fd: &OwnedFd, parent: &OwnedFd, mode: u32, who: Who) -> Result<()> {
        let ids = *self.ids.lock().expect("ids");
        if !self.admin || ids.here.0 != 0 {
            return Ok(());
        }
        let st = stat(fd)?;
        let uid = ids.uid(who.uid);
        let gid = if stat(parent)?.st_mode & libc::S_ISGID != 0 { st.st_gid } else { ids.gid(who.gid) };
        if (st.st_uid, st.st_gid) == (uid, gid) {
            return Ok(());
        }
        let (u, g) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        rustix::fs::chownat(fd, "", Some(u), Some(g), AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno)?;
        let kind = file_type(&st);
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 && kind != FileType::Symlink && kind != FileType::Directory {
            let proc = fd.as_raw_fd().to_string();
            let m = Mode::from_raw_mode(st.st_mode & 0o7777 | mode & (libc::S_ISUID | libc::S_ISGID));
            rustix::fs::chmodat(&self.proc_fd, proc.as_str(), m, AtFlags::empty()).map_err(errno)?;
        }
        Ok(())
    }

    /// The path the xattr calls take to inode `ino` (through /proc, as for opening it). A symlink's extended
    /// attributes are not reached through it: none are listed, reading one finds none, changing one is refused.
    fn xattr_path(&self, ino: u64, how: XattrUse) -> Result<Option<String>> {
        let fd = self.fd(ino)?;
        if file_type(&stat(&fd)?) == FileType::Symlink {
            return match how {
                XattrUse::List => Ok(None),
                XattrUse::Read => Err(libc::ENODATA),
                XattrUse::Change => Err(libc::EPERM),
            };
        }
        Ok(Some(format!("/proc/self/fd/{}", fd.as_raw_fd())))
    }

    fn fd(&self, ino: u64) -> Result<Arc<OwnedFd>> {
        // An inode number this bind was never given (or forgot, or had before the exporter restarted) is stale.
        self.inodes.lock().expect("inodes").by_ino.get(&ino).map(|n| Arc::clone(&n.fd)).ok_or(libc::ESTALE)
    }

    fn file(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        self.files.lock().expect("files").open.get(&fh).map(|f| Arc::clone(&f.fd)).ok_or(libc::EBADF)
    }

    fn attr(&self, ino: u64) -> Result<Attr> {
        Ok(self.shown(ino, &stat(&self.fd(ino)?)?))
    }

    /// Resolves one component beneath `parent` and counts a lookup of what it names.
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let p = self.fd(parent)?;
        let fd = rustix::fs::openat2(
            &*p,
            component(name)?,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(errno)?;
        self.remember(fd)
    }

    /// Enters an O_PATH descriptor in the inode table (once per inode) and gives its attributes.
    fn remember(&self, fd: OwnedFd) -> Result<Attr> {
        let st = stat(&fd)?;
        let key = (st.st_dev, st.st_ino);
        let mut t = self.inodes.lock().expect("inodes");
        if let Some(&ino) = t.by_key.get(&key) {
            t.by_ino.get_mut(&ino).expect("inode table is consistent").lookups += 1;
            drop(t);
            return Ok(self.shown(ino, &st));
        }
        if t.by_ino.len() >= MAX_INODES {
            return Err(libc::ENFILE);
        }
        let held = self.descriptors.take().ok_or(libc::ENFILE)?;
        let ino = t.next;
        t.next += 1;
        t.by_key.insert(key, ino);
        if file_type(&st) == FileType::Directory {
            self.watch(ino, &fd);
        }
        t.by_ino.insert(ino, Node { fd: Arc::new(fd), key, lookups: 1, _held: Some(held) });
        drop(t);
        Ok(self.shown(ino, &st))
    }

    fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.inodes.lock().expect("inodes");
        let Some(node) = t.by_ino.get_mut(&ino) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let key = node.key;
            t.by_ino.remove(&ino);
            t.by_key.remove(&key);
            if let Some(w) = self.watches.lock().expect("watches").as_mut() {
                if let Some(wd) = w.by_ino.remove(&ino) {
                    w.by_wd.remove(&wd);
                    let _ = inotify::remove_watch(&w.fd, wd);
                }
            }
        }
    }

    /// Reopens the inode behind an O_PATH descriptor for IO, through /proc: only a regular file or directory,
    /// never a symlink (ELOOP), nor a FIFO, socket or device (ENXIO), whose opening here would block a worker or
    /// hand the binder one of the exporter's devices.
    fn reopen(&self, fd: &OwnedFd, flags: OFlags) -> Result<OwnedFd> {
        match file_type(&stat(fd)?) {
            FileType::RegularFile | FileType::Directory => {}
            FileType::Symlink => return Err(libc::ELOOP),
            _ => return Err(libc::ENXIO),
        }
        let proc = fd.as_raw_fd().to_string();
        rustix::fs::openat(&self.proc_fd, proc.as_str(), flags | OFlags::CLOEXEC, Mode::empty()).map_err(errno)
    }

    fn keep_open(&self, f: OwnedFd, ino: u64, flags: i32) -> Result<u64> {
        let mut t = self.files.lock().expect("files");
        if t.open.len() >= MAX_FILES {
            return Err(libc::EMFILE);
        }
        let held = self.descriptors.take().ok_or(libc::ENFILE)?;
        let fh = t.next;
        t.next += 1;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writes {
            *t.writers.entry(ino).or_default() += 1;
        }
        t.open.insert(fh, Open { fd: Arc::new(f), ino, writes, _held: held });
        Ok(fh)
    }

    fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let fd = self.fd(ino)?;
        // A file opened for writing alone is opened for reading too where the exporting user may: the binder's
        // kernel caches writes (writeback) and reads the rest of a page it writes part of.
        let f = match self.reopen(&fd, open_flags(readable(flags))) {
            Err(libc::EACCES) if readable(flags) != flags => self.reopen(&fd, open_flags(flags)),
            r => r,
        }?;
        self.keep_open(f, ino, flags)
    }

    fn release(&self, fh: u64) -> Result<()> {
        let mut t = self.files.lock().expect("files");
        let f = t.open.remove(&fh).ok_or(libc::EBADF)?;
        if f.writes {
            if let Some(n) = t.writers.get_mut(&f.ino) {
                *n -= 1;
                if *n == 0 {
                    t.writers.remove(&f.ino);
                }
            }
        }
        Ok(())
    }

    /// [`Op::OpenRead`]: the file opened, and read whole if it is a regular file of at most `max` bytes (its
    /// size taken from the open file, so a file replaced meanwhile is read as what was opened). With `now`, only
    /// if that needs no waiting on the disk (the content is in the page cache): `None` if it would wait.
    fn open_read(&self, ino: u64, flags: i32, max: u32, now: bool) -> Option<Result<Reply>> {
        if opens_for_writing(flags) {
            return if now { None } else { Some(Err(libc::EINVAL)) };
        }
        let fh = match self.open(ino, flags) {
            Ok(fh) => fh,
            Err(_) if now => return None,
            Err(e) => return Some(Err(e)),
        };
        let st = match self.file(fh).and_then(|f| stat(&*f)) {
            Ok(st) => st,
            Err(e) => {
                let _ = self.release(fh);
                return (!now).then_some(Err(e));
            }
        };
        let size = st.st_size as u64;
        if !matches!(file_type(&st), FileType::RegularFile) || size > u64::from(max) {
            return Some(Ok(Reply::OpenedWith { fh, whole: false, data: Vec::new() }));
        }
        // One byte more than the size: a file that grew since the stat reads longer, and is not sent cut.
        let want = (size + 1).min(u64::from(max)) as u32;
        let read = if now { self.read_cached(fh, want, size) } else { Some(self.read(fh, 0, want)) };
        match read {
            Some(Ok(data)) if data.len() as u64 <= size => {
                self.digests.count_served(data.len() as u64);
                Some(Ok(Reply::OpenedWith { fh, whole: true, data }))
            }
            Some(Ok(data)) => {
                crate::buffers::give(data);
                Some(Ok(Reply::OpenedWith { fh, whole: false, data: Vec::new() }))
            }
            Some(Err(e)) => {
                let _ = self.release(fh);
                Some(Err(e))
            }
            None => {
                let _ = self.release(fh);
                None
            }
        }
    }

    /// The first `want` bytes of open file `fh` (of `size` bytes when stated), if the page cache holds them all:
    /// `None` if reading them would wait on the disk (or the filesystem cannot say).
    fn read_cached(&self, fh: u64, want: u32, size: u64) -> Option<Result<Vec<u8>>> {
        let f = self.file(fh).ok()?;
        let mut buf = crate::buffers::take(want as usize);
        buf.resize(want as usize, 0);
        let got = rustix::io::preadv2(&*f, &mut [std::io::IoSliceMut::new(&mut buf)], 0, ReadWriteFlags::NOWAIT);
        match got {
            // All asked, or all there is: a short read that is not the end is a part not cached.
            Ok(n) if n == want as usize || n as u64 == size => {
                buf.truncate(n);
                Some(Ok(buf))
            }
            _ => {
                crate::buffers::give(buf);
                None
            }
        }
    }

    /// Whether `op` may be done on the spot by the task reading requests ([`Op::is_quick`]): not something made
    /// with permission bits the process's umask would take away (a worker, whose umask is 0, makes it).
    pub fn is_quick(&self, op: &Op) -> bool {
        let masked = |mode: u32, umask: u32| mode & !umask & 0o777 & self.umask != 0;
        match *op {
            Op::Create { mode, umask, .. } | Op::Mkdir { mode, umask, .. } | Op::Mknod { mode, umask, .. }
                if masked(mode, umask) =>
            {
                false
            }
            _ => op.is_quick(),
        }
    }

    /// The inode `op` must be ordered by, and whether it must come after all earlier operations of it (see
    /// [`Op::is_ordered`]); `None` for an operation of names, or of a file handle this bind does not have (an
    /// error, which needs no order).
    pub fn order_of(&self, op: &Op) -> Option<(u64, bool)> {
        let (handle, after_all) = op.is_ordered()?;
        let ino = match handle {
            proto::Handle::Inode(ino) => ino,
            proto::Handle::File(fh) => self.files.lock().expect("files").open.get(&fh)?.ino,
        };
        Some((ino, after_all))
    }

    /// Does `op` on the spot if it needs no waiting on IO (an [`Op::OpenRead`] of a file whose content is in the
    /// page cache, which otherwise waits for a worker, a hand-over between threads that costs about what the
    /// rest of the round trip does); `None`: it is for a worker.
    pub fn handle_now(&self, op: &Op) -> Option<Result<Reply>> {
        match *op {
            Op::OpenRead { ino, flags, max } => self.open_read(ino, flags, max, true),
            _ => None,
        }
    }

    fn create(&self, parent: u64, name: &[u8], mode: u32, flags: i32, who: Who) -> Result<Reply> {
        let p = self.fd(parent)?;
        let how = open_flags(readable(flags)) | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let f = rustix::fs::openat2(&*p, component(name)?, how, Mode::from_raw_mode(mode & 0o7777), RESOLVE)
            .map_err(errno)?;
        // The inode's O_PATH handle comes from the file just opened, not from its name again.
        let proc = f.as_raw_fd().to_string();
        let path = rustix::fs::openat(&self.proc_fd, proc.as_str(), OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno)?;
        self.give(&path, &p, mode, who)?;
        let attr = self.remember(path)?;
        let fh = self.keep_open(f, attr.ino, flags)?;
        Ok(Reply::Created { attr, fh })
    }

    fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let f = self.file(fh)?;
        let mut buf = crate::buffers::take(size.min(MAX_IO) as usize);
        buf.resize(size.min(MAX_IO) as usize, 0);
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&*f, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>> {
        let fd = self.fd(ino)?;
        let dir = rustix::fs::openat(&*fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno)?;
        let mut d = Dir::new(dir).map_err(errno)?;
        if offset != 0 {
            d.seek(offset as i64).map_err(errno)?;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < MAX_DIR_ENTRIES && bytes < 64 * 1024 {
            let Some(e) = d.read() else { break };
            let e = e.map_err(errno)?;
            let name = e.file_name().to_bytes().to_vec();
            bytes += name.len() + 24;
            out.push(DirEntry { ino: e.ino(), kind: kind_bits(e.file_type()), offset: e.offset() as u64, name });
        }
        // Entries this bind has looked up carry the numbers it knows them by; the others their disk's (never 0,
        // which some readers skip).
        let t = self.inodes.lock().expect("inodes");
        let dev = t.by_ino.get(&ino).map(|n| n.key.0);
        for e in &mut out {
            e.ino = dev.and_then(|dev| t.by_key.get(&(dev, e.ino)).copied()).unwrap_or(e.ino.max(2));
        }
        Ok(out)
    }

    /// [`Server::readdir`] with each entry looked up (so counted, as the kernel counts it), as many as fill
    /// `size` bytes of FUSE's encoding (a `fuse_direntplus` is 152 bytes and the name, 8-aligned): the kernel takes
    /// them all, and no lookup is counted for an entry it would drop. An entry that vanished between the listing
    /// and its lookup goes without attributes, as a plain entry.
    fn readdir_plus(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<(DirEntry, Option<Attr>)>> {
        let mut out = Vec::new();
        let mut used = 0usize;
        for e in self.readdir(ino, offset)? {
            let len = (152 + e.name.len() + 7) & !7;
            if used + len > size as usize {
                break;
            }
            used += len;
            let attr = match e.name.as_slice() {
                b"." | b".." => None,
                name => self.lookup(ino, name).ok(),
            };
            out.push((e, attr));
        }
        Ok(out)
    }

    fn setattr(&self, ino: u64, fh: Option<u64>, set: &SetAttr) -> Result<Attr> {
        let fd = self.fd(ino)?;
        let is_link = file_type(&stat(&fd)?) == FileType::Symlink;
        let proc = fd.as_raw_fd().to_string();
        if let Some(mode) = set.mode {
            if is_link {
                return Err(libc::EOPNOTSUPP);
            }
            rustix::fs::chmodat(&self.proc_fd, proc.as_str(), Mode::from_raw_mode(mode & 0o7777), AtFlags::empty())
                .map_err(errno)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let ids = *self.ids.lock().expect("ids");
            let uid = set.uid.map(|u| rustix::fs::Uid::from_raw(ids.uid(u)));
            let gid = set.gid.map(|g| rustix::fs::Gid::from_raw(ids.gid(g)));
            rustix::fs::chownat(&*fd, "", uid, gid, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        }
        if let Some(size) = set.size {
            let f = match fh.map(|fh| self.file(fh)).transpose()? {
                Some(f) => f,
                None => Arc::new(self.reopen(&fd, OFlags::WRONLY)?),
            };
            rustix::fs::ftruncate(&*f, size).map_err(errno)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = Timestamps { last_access: timespec(set.atime), last_modification: timespec(set.mtime) };
            if is_link {
                // The link itself, through its own O_PATH descriptor (the /proc path would be the magic link).
                let how = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
                rustix::fs::utimensat(&*fd, "", &ts, how).map_err(errno)?;
            } else {
                rustix::fs::utimensat(&self.proc_fd, proc.as_str(), &ts, AtFlags::empty()).map_err(errno)?;
            }
        }
        Ok(self.shown(ino, &stat(&fd)?))
    }
}

/// What an xattr call does to the inode.
#[derive(Clone, Copy)]
enum XattrUse {
    List,
    Read,
    Change,
}

/// An extended attribute's name: not empty, no NUL.
fn xattr_name(name: &[u8]) -> Result<std::ffi::CString> {
    if name.is_empty() {
        return Err(libc::ERANGE);
    }
    std::ffi::CString::new(name).map_err(|_| libc::EINVAL)
}

/// One path component: not empty, no `/`, no NUL, not `.` or `..` (which would name the parent, or leave it).
fn component(name: &[u8]) -> Result<std::ffi::CString> {
    if name == b".." || name == b"." {
        return Err(libc::EPERM);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(libc::EINVAL);
    }
    if name.len() > proto::MAX_NAME {
        return Err(libc::ENAMETOOLONG);
    }
    std::ffi::CString::new(name).map_err(|_| libc::EINVAL)
}

/// `flags` with O_WRONLY made O_RDWR.
fn readable(flags: i32) -> i32 {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        (flags & !libc::O_ACCMODE) | libc::O_RDWR
    } else {
        flags
    }
}

fn opens_for_writing(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// The open(2) flags a binder may pass on: access mode and the ones that change how IO behaves, never ones that
/// change what is opened (O_CREAT, O_NOFOLLOW, O_PATH, O_DIRECTORY are the exporter's to choose).
fn open_flags(flags: i32) -> OFlags {
    let pass = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_EXCL
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NOATIME;
    OFlags::from_bits_truncate((flags & pass) as u32)
}

fn stat(fd: &impl AsFd) -> Result<Stat> {
    rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
}

fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn kind_bits(t: FileType) -> u32 {
    match t {
        FileType::RegularFile => libc::S_IFREG,
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Fifo => libc::S_IFIFO,
        FileType::Socket => libc::S_IFSOCK,
        FileType::CharacterDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Unknown => 0,
    }
}

fn timespec(t: Option<Time>) -> Timespec {
    match t {
        None => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        Some(Time::Now) => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
        Some(Time::At { sec, nsec }) => Timespec { tv_sec: sec, tv_nsec: nsec.into() },
    }
}

fn attr(ino: u64, st: &Stat) -> Attr {
    Attr {
        ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: (st.st_atime, st.st_atime_nsec as u32),
        mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

/// The process's umask (from /proc; all bits, so that nothing is made on the spot, if it cannot be read).
fn process_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let umask = status.lines().find_map(|l| l.strip_prefix("Umask:")).map(str::trim);
    umask.and_then(|u| u32::from_str_radix(u, 8).ok()).unwrap_or(0o777)
}

mod descriptors;
#[cfg(test)]
mod tests;

pub use descriptors::Descriptors;
