//! The FUSE glue of the binding side, and the library other kinds (compute) use to put an fs ref on a path:
//! [`Mount::new`] mounts a [`Conn`] at a directory with fuser, [`Mount::unmount`] takes it off.
//!
//! The kernel's requests arrive on fuser's threads; each becomes a task on the tokio runtime that sends the
//! metac-fs/2 request and answers the kernel when the reply comes, so the fuser thread never waits on the network
//! and many requests are in flight at once. The kernel caches entries and attributes for [`TTL`], and drops them
//! sooner when the exporter says they changed; writes are cached (writeback); reads and writes go up to 1 MiB.
//!
//! The connection sits in a [`Slot`] that the session fills on every (re)connection. While the exporter is away,
//! operations wait for it to come back, up to the bind's stall limit ([`Options::stall`], 60 s by default), and
//! then fail with EIO; when the bind is cut for good they fail with ENOTCONN at once. The kernel's inode and file
//! numbers are the binder's own (the `inodes` module), found again on the next connection by their paths: requests
//! cut by the break are sent again (but namespace changes, EIO), and only what vanished meanwhile answers ESTALE.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::cache::Cache;
use crate::client::{Conn, Origin, Replay};
use crate::inodes::{self, Table};
use crate::proto::{Attr, Op, Reply, SetAttr, Time, Who, MAX_IO, MAX_NAME, MAX_TARGET, MAX_XATTR, MAX_XATTR_NAME};

mod cached;
mod prefetched;

use cached::{from_cache, pread, reads_only, Cached};
use prefetched::Prefetched;

/// The bytes of entries the kernel takes in one directory read (one page; fuser does not say what it asked for).
const READDIR_BUFFER: u32 = 4096;

/// How long the kernel may trust an entry or attributes it was given.
pub const TTL: Duration = Duration::from_secs(1);
/// How long the FUSE threads may take to end after an unmount before the connection is aborted.
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(2);

/// Where the FUSE side finds the current connection to the exporter.
#[derive(Clone)]
pub struct Slot(Arc<tokio::sync::watch::Sender<Phase>>, Arc<Replay>);

/// Where a bind's connection is.
pub enum Phase {
    /// Not connected now (not yet, or the exporter went away): operations wait.
    Away,
    /// Connected.
    Up(Conn),
    /// Cut for good (unbind, refusal, node stop): operations fail with ENOTCONN.
    Closed,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot(Arc::new(tokio::sync::watch::Sender::new(Phase::Away)), Arc::default())
    }
}

impl Slot {
    /// Sets where the connection is; operations waiting for one go on.
    pub fn set(&self, phase: Phase) {
        self.0.send_replace(phase);
    }

    /// What the bind's broken connections left to send again, in order (give it to each new [`Conn`]).
    pub fn replay(&self) -> Arc<Replay> {
        Arc::clone(&self.1)
    }

    /// The connection, once there is one: within `stall`, else EIO; ENOTCONN once closed.
    pub async fn conn(&self, stall: Duration) -> Result<Conn, Errno> {
        let mut rx = self.0.subscribe();
        // A connection that has broken counts as away: the session is about to say so, and to reconnect.
        let ready = |p: &Phase| match p {
            Phase::Away => false,
            Phase::Up(c) => !c.closed().is_cancelled(),
            Phase::Closed => true,
        };
        let r = match tokio::time::timeout(stall, rx.wait_for(ready)).await {
            Ok(Ok(p)) => match &*p {
                Phase::Up(c) => Ok(c.clone()),
                _ => Err(Errno::ENOTCONN),
            },
            Ok(Err(_)) => Err(Errno::ENOTCONN),
            Err(_) => Err(Errno::EIO),
        };
        r
    }
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A read-only mount (writes fail with EROFS in the binder's kernel).
    pub read_only: bool,
    /// Let users other than the node's own reach the mount (the kernel still checks permissions).
    pub allow_other: bool,
    /// What `mount` shows as the source.
    pub source: String,
    /// How long an operation waits for an exporter that is away before it fails with EIO [default: 60 s].
    pub stall: Option<Duration>,
    /// Serve files opened read-only from this content cache ([`crate::cache`]); only on a read-only mount
    /// (ignored on another).
    pub cache: Option<Arc<Cache>>,
    /// The most inodes the kernel is let hold through the mount [default: [`MAX_KNOWN`]].
    pub max_known: Option<usize>,
}

/// How long an operation waits for an exporter that is away, unless the bind says otherwise.
pub const STALL: Duration = Duration::from_secs(60);

/// The most inodes the kernel is let hold through one mount. The exporter holds a descriptor for each (as long as
/// the kernel may name it), and a kernel with memory to spare forgets none: a `find` of a tree of a million
/// files would hold a million descriptors on the exporter, past a non-root exporter's limit. Past this many, the
/// names looked up longest ago are dropped from the kernel's cache (FUSE_NOTIFY_INVAL_ENTRY): it forgets those
/// inodes it does not use, and the exporter lets go of them; a name used again is looked up again.
pub const MAX_KNOWN: usize = 32 << 10;

/// How often the mount looks at how many inodes the kernel holds.
const TRIM_EVERY: Duration = Duration::from_millis(500);

/// A mounted fs.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    conn: Option<u32>,
    /// Mounted by fusermount3 (a node that is not root), so unmounted by it too.
    fusermount: bool,
}

impl Mount {
    /// Serves a FUSE session at `path` from `stream`, a stream to an exporter already past the resource handshake
    /// (what other kinds use to put an fs on a path of their own; a bind the node owns goes through
    /// `Binder::bind` with [`crate::FsBind`] options instead). The mount fails with ENOTCONN once the stream ends.
    pub fn serve(stream: metac_resource::BoxStream, path: &Path, options: &Options) -> std::io::Result<Mount> {
        let slot = Slot::default();
        let conn = Conn::start_in(stream, None, Some(slot.replay()));
        let ended = slot.clone();
        tokio::spawn(async move {
            // Operations wait until the exporter has said what it does (whether writes may go behind).
            conn.ask_features().await;
            ended.set(Phase::Up(conn.clone()));
            conn.closed().cancelled().await;
            ended.set(Phase::Closed);
        });
        Mount::new(path, slot, options)
    }

    /// Mounts the connection in `slot` at `path` (an existing directory). Must be called within a tokio runtime,
    /// which then runs the requests.
    pub fn new(path: &Path, slot: Slot, options: &Options) -> std::io::Result<Mount> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Mount::with_helper(path, slot, options, !root)
    }

    /// [`Mount::new`], mounting with mount(2) or through fusermount3.
    fn with_helper(path: &Path, slot: Slot, options: &Options, through_fusermount: bool) -> std::io::Result<Mount> {
        let mut mount_options = vec![
            MountOption::FSName(if options.source.is_empty() { "metac".into() } else { options.source.clone() }),
            MountOption::Subtype("metac".into()),
            MountOption::DefaultPermissions,
            // A peer's setuid file or device node is not a way into this host.
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        if options.read_only {
            mount_options.push(MountOption::RO);
        }
        let mut config = Config::default();
        config.mount_options = mount_options;
        config.acl = if options.allow_other { SessionACL::All } else { SessionACL::Owner };
        config.n_threads = Some(2);
        let readahead = Arc::new(Readahead::default());
        let inodes: Arc<Table> = Arc::default();
        let fs = Fuse {
            sender: Sender {
                slot: slot.clone(),
                stall: options.stall.unwrap_or(STALL),
                inodes: Arc::clone(&inodes),
                replay: slot.replay(),
            },
            behind: (!options.read_only).then(Behind::new).map(Arc::new),
            rt: Handle::current(),
            readahead: Arc::clone(&readahead),
            read_only: options.read_only,
            cached: options.cache.clone().filter(|_| options.read_only).map(Cached::new),
            no_caps: Arc::default(),
            made: Arc::default(),
            prefetched: Arc::default(),
        };
        let (no_caps, made, prefetched) = (Arc::clone(&fs.no_caps), Arc::clone(&fs.made), Arc::clone(&fs.prefetched));
        let session = if !through_fusermount {
            fuser::spawn_mount(fs, path, &config)?
        } else {
            let fd = fusermount(path, options)?;
            let acl = config.acl;
            fuser::Session::from_fd(fs, fd, acl, config)?.spawn()?
        };
        let caches = Caches { no_caps, made, prefetched };
        trim(session.notifier(), Arc::downgrade(&inodes), options.max_known.unwrap_or(MAX_KNOWN));
        forget_what_changes(&slot, session.notifier(), inodes, !options.read_only, caches)?;
        let conn = connection(path);
        if let Some(c) = conn {
            readahead.conn.store(c, Ordering::Release);
        }
        Ok(Mount { session: Some(session), path: path.to_path_buf(), conn, fusermount: through_fusermount })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits for the FUSE threads to end. When the kernel keeps the filesystem alive past the unmount
    /// (files still open on it, so the unmount is refused; or a copy of the mount in a mount namespace made while
    /// it was up, which the unmount does not reach), the mount is detached and its FUSE connection aborted, so
    /// that whatever still holds it gets ENOTCONN, as from a FUSE server that died, and nothing waits for ever.
    pub async fn unmount(mut self) {
        let Some(s) = self.session.take() else { return };
        let path = self.path.clone();
        if self.fusermount {
            // The session holds no mount of its own to take off: fusermount3 made it, and takes it off.
            let p = path.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("fusermount3").arg("-u").arg("--").arg(&p).output()
            })
            .await;
            if !matches!(out, Ok(Ok(ref o)) if o.status.success()) {
                if let Err(e) = detach(&path) {
                    tracing::warn!("cannot detach {}: {e}", path.display());
                }
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own rather than the runtime's blocking pool: if it never ends, the process still can.
        let spawned = std::thread::Builder::new().name("metac-fs-umount".into()).spawn(move || {
            let _ = tx.send(s.umount_and_join());
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot unmount {}: {e}", path.display());
            return;
        }
        let why = match tokio::time::timeout(UNMOUNT_WAIT, rx).await {
            Ok(Ok(Ok(()))) | Ok(Err(_)) => return,
            Ok(Ok(Err(e))) => {
                if let Err(e) = detach(&path) {
                    tracing::warn!("cannot detach {}: {e}", path.display());
                }
                format!("the unmount was refused ({e})")
            }
            Err(_) => format!("the filesystem is still held {UNMOUNT_WAIT:?} after the unmount"),
        };
        match self.conn.map(abort) {
            Some(Ok(())) => tracing::info!("{}: {why}; its FUSE connection was aborted", path.display()),
            Some(Err(e)) => tracing::warn!("{}: {why}, and its FUSE connection cannot be aborted: {e}", path.display()),
            None => tracing::warn!("{}: {why}, and its FUSE connection is not known", path.display()),
        }
    }
}

/// How far ahead the kernel reads a file read in sequence, KiB: four [`MAX_IO`] requests in flight.
pub const READAHEAD_KB: u32 = 4 * (MAX_IO >> 10);

/// The kernel's readahead for a mount, widened once. The kernel offers a FUSE filesystem at most its default
/// (128 KiB), and a sequential read then goes one or two 128 KiB requests at a time, a round trip each; only the
/// connection's `read_ahead_kb`, written once the kernel has taken the filesystem's INIT reply (which would narrow
/// it again), goes further. The first open does it. Best effort: a node that is not root cannot write it, and reads
/// are slower, not wrong.
struct Readahead {
    /// The FUSE connection, once the mount knows it (`u32::MAX` before).
    conn: AtomicU32,
    done: AtomicBool,
}

impl Default for Readahead {
    fn default() -> Readahead {
        Readahead { conn: AtomicU32::new(u32::MAX), done: AtomicBool::new(false) }
    }
}

impl Readahead {
    fn widen_once(&self) {
        let conn = self.conn.load(Ordering::Acquire);
        if conn == u32::MAX || self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let path = format!("/sys/class/bdi/0:{conn}/read_ahead_kb");
        if let Err(e) = std::fs::write(&path, READAHEAD_KB.to_string()) {
            tracing::debug!("cannot widen the readahead of FUSE connection {conn} ({path}): {e}");
        }
    }
}

/// The FUSE connection (fusectl's number: the minor device number) of what is mounted at `path`, from
/// /proc/self/mountinfo: reading it asks the filesystem nothing.
fn connection(path: &Path) -> Option<u32> {
    let path = path.canonicalize().ok()?;
    let path = path.to_str()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(path))
        .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("fuse")))
        .filter_map(|l| l.split(' ').nth(2)?.split(':').nth(1)?.parse().ok())
        .next_back()
}

/// Detaches what a node killed without stopping left mounted at `path`: only a FUSE mount of ours (type
/// `fuse.metac`, as /proc/self/mountinfo says, which asks the filesystem nothing) whose connection is gone (the
/// kernel answers ENOTCONN). A live mount there, another node's, is left alone; so is one that does not answer
/// within 2 s. Returns whether it detached one.
pub fn clear_dead_mount(path: &Path) -> std::io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    if !is_metac_mount(&info, path) {
        return Ok(false);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let p = path.to_path_buf();
    // statfs always asks the file system (a stat may be answered from the attributes the kernel still caches for
    // a mount whose server died a moment ago).
    std::thread::spawn(move || {
        let _ = tx.send(rustix::fs::statfs(&p).err().map(|e| e.raw_os_error()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(2)) {
        Ok(Some(libc::ENOTCONN)) => detach(path).map(|()| true),
        _ => Ok(false),
    }
}

/// Whether `mountinfo` (the text of /proc/self/mountinfo) shows a FUSE mount of ours at `path` (spelled as
/// mountinfo spells it: space, tab, newline and backslash in octal).
fn is_metac_mount(mountinfo: &str, path: &Path) -> bool {
    let Some(p) = path.to_str() else { return false };
    let escaped = p.replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012");
    // Mounted with a subtype (fusermount3) the type is `fuse.metac`; mounted by root with mount(2) it is `fuse`,
    // and the source (`metac:ID`) says whose it is.
    mountinfo.lines().any(|l| {
        let mut after = l.split(" - ").nth(1).unwrap_or("").split(' ');
        let (kind, source) = (after.next(), after.next().unwrap_or(""));
        l.split(' ').nth(4) == Some(escaped.as_str())
            && (kind == Some("fuse.metac") || (kind == Some("fuse") && source.starts_with("metac:")))
    })
}

/// Aborts a FUSE connection through fusectl, mounting fusectl where systemd would if nothing has.
fn abort(conn: u32) -> std::io::Result<()> {
    let ctl = Path::new("/sys/fs/fuse/connections");
    if !ctl.join(conn.to_string()).exists() {
        rustix::mount::mount("fusectl", ctl, "fusectl", rustix::mount::MountFlags::empty(), None)?;
    }
    std::fs::write(ctl.join(conn.to_string()).join("abort"), b"1")
}

/// Mounts FUSE at `path` through fusermount3 (setuid root), as a node that is not root must (as sshfs does): it
/// opens /dev/fuse, mounts it, and hands the descriptor back over a socket (its `_FUSE_COMMFD` protocol). The
/// mount is `nosuid,nodev` (fusermount3 makes it so for users in any case), and open to other users only if asked
/// (which /etc/fuse.conf must allow with `user_allow_other`).
fn fusermount(path: &Path, options: &Options) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let fsname = if options.source.is_empty() { "metac" } else { options.source.as_str() };
    let mut opts = format!("fsname={},subtype=metac,default_permissions,nosuid,nodev", fsname.replace(',', "_"));
    if options.read_only {
        opts.push_str(",ro");
    }
    if options.allow_other {
        opts.push_str(",allow_other");
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    // fusermount3 inherits its end of the socket.
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())?;
    let out = std::process::Command::new("fusermount3")
        .arg("-o")
        .arg(&opts)
        .arg("--")
        .arg(path)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("fusermount3 (package fuse3): {e}")))?;
    drop(theirs);
    if !out.status.success() {
        return Err(std::io::Error::other(format!("fusermount3: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    rustix::net::recvmsg(&ours, &mut iov, &mut control, rustix::net::RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(std::io::Error::other("fusermount3 mounted but handed back no /dev/fuse descriptor"))
}

/// Detaches the mount at `path` (a lazy unmount): as root with umount2, else with `fusermount3 -u -z`.
fn detach(path: &Path) -> std::io::Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => {
            let out = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(path).output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

struct Fuse {
    sender: Sender,
    rt: Handle,
    readahead: Arc<Readahead>,
    read_only: bool,
    /// Opens served from the content cache, when the mount uses one.
    cached: Option<Cached>,
    /// Inodes known to have no file capabilities.
    no_caps: Arc<NoCaps>,
    /// Directories this mount made, and the names made in them since.
    made: Arc<Made>,
    /// Small files' content, read with their opens.
    prefetched: Arc<Prefetched>,
    /// Writes answered before the exporter has them; `None` on a read-only mount.
    behind: Option<Arc<Behind>>,
}

/// Write-behind: the kernel's writes of cached pages (writeback) are answered once they are on their way to an
/// exporter that orders operations ([`Conn::ordered`]), not once it has done them. The kernel writes a file's
/// dirty pages back, and waits for them, before a `utimensat`, `chmod` or `chown` of it and at its close: each
/// such wait was a round trip (tar's restoring a file's mtime cost two, the write and the setattr). What follows
/// a write on the same file is still done after it (the exporter orders them, and so does a replay after a
/// break), and what went wrong is told, as a local disk's writeback errors are, at the next fsync or close of the
/// file (and the close waits for the file's writes to be done, so an error is never lost at it). At most
/// [`Behind::ROOM`] bytes are on their way at once; a write past that waits for room.
struct Behind {
    /// Room for bytes on their way, in KiB.
    room: Arc<tokio::sync::Semaphore>,
    /// Writes on their way, by inode, and the first error of each inode's since its last fsync or close.
    inodes: std::sync::Mutex<std::collections::HashMap<u64, Writes>>,
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct Writes {
    on_their_way: u32,
    error: Option<Errno>,
}

impl Behind {
    /// Bytes of writes on their way to the exporter, at most.
    const ROOM: usize = 32 << 20;

    fn new() -> Behind {
        Behind {
            room: Arc::new(tokio::sync::Semaphore::new(Behind::ROOM >> 10)),
            inodes: Default::default(),
            done: tokio::sync::Notify::new(),
        }
    }

    fn started(&self, ino: u64) {
        self.inodes.lock().expect("behind").entry(ino).or_default().on_their_way += 1;
    }

    /// A write of `ino` started ([`Behind::started`]) has ended, with `error` if it failed after it was answered.
    fn ended(&self, ino: u64, error: Option<Errno>) {
        let mut inodes = self.inodes.lock().expect("behind");
        let w = inodes.entry(ino).or_default();
        w.on_their_way = w.on_their_way.saturating_sub(1);
        if w.error.is_none() {
            w.error = error;
        }
        if w.on_their_way == 0 && w.error.is_none() {
            inodes.remove(&ino);
        }
        drop(inodes);
        self.done.notify_waiters();
    }

    /// The error of `ino`'s writes since it was last asked, taken, if none is on its way; `Err(())` if one is.
    fn settled(&self, ino: u64) -> Result<Option<Errno>, ()> {
        let mut inodes = self.inodes.lock().expect("behind");
        match inodes.get(&ino) {
            None => Ok(None),
            Some(w) if w.on_their_way > 0 => Err(()),
            Some(_) => Ok(inodes.remove(&ino).and_then(|w| w.error)),
        }
    }

    /// Waits until none of `ino`'s writes is on its way; the error of them since it was last asked, taken.
    async fn wait(&self, ino: u64) -> Option<Errno> {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if let Ok(e) = self.settled(ino) {
                return e;
            }
            done.await;
        }
    }
}

/// Directories this mount made, with every name made in them since: a lookup of any other name there is answered
/// "no such entry" without a round trip. An untar looks up each name before it creates it (the kernel does, for
/// `open(O_CREAT)` and `mkdir`), one round trip of the few each file costs. A directory is forgotten (and its
/// lookups go to the exporter again) when the exporter tells of a change in it, when a name in it is removed or
/// renamed here, when it holds more than [`Made::NAMES`] names, and when the connection changes (the exporter may
/// have changed anything meanwhile). What a lookup could miss is what the TTL of a negative entry misses already:
/// a name made on the exporter in the moment before its change is told.
#[derive(Default)]
struct Made(std::sync::Mutex<std::collections::HashMap<u64, std::collections::HashSet<Vec<u8>>>>);

impl Made {
    /// The most directories remembered (then all are forgotten at once).
    const DIRS: usize = 4096;
    /// The most names remembered in one directory.
    const NAMES: usize = 4096;

    fn made_dir(&self, ino: u64) {
        let mut m = self.0.lock().expect("made");
        if m.len() >= Self::DIRS {
            m.clear();
        }
        m.insert(ino, Default::default());
    }

    fn added(&self, dir: u64, name: &[u8]) {
        let mut m = self.0.lock().expect("made");
        if let Some(names) = m.get_mut(&dir) {
            if names.len() >= Self::NAMES {
                m.remove(&dir);
            } else {
                names.insert(name.to_vec());
            }
        }
    }

    /// Whether `name` is surely not in `dir`.
    fn absent(&self, dir: u64, name: &[u8]) -> bool {
        self.0.lock().expect("made").get(&dir).is_some_and(|names| !names.contains(name))
    }

    fn forget(&self, dir: u64) {
        self.0.lock().expect("made").remove(&dir);
    }

    fn forget_all(&self) {
        self.0.lock().expect("made").clear();
    }
}

/// The xattr of file capabilities, which the kernel asks for before every write and chown of a file (to drop it).
const CAPS: &[u8] = b"security.capability";

/// Inodes known to have no `security.capability`, and since when: the kernel asks for it before each write to a file
/// and each chown (to remove it), two round trips of the six or so an untarred file costs, and the answer is almost
/// always "none". A file this mount created has none; a "none" from the exporter holds for [`TTL`]. Changes told by
/// the exporter and xattr changes made here forget it. A stale "none" cannot keep a capability on a changed file:
/// the exporter's own kernel drops it when the write or chown is done there.
#[derive(Default)]
struct NoCaps(std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>);

impl NoCaps {
    /// The most inodes remembered (then all are forgotten at once).
    const MAX: usize = 1 << 16;

    fn known(&self, ino: u64) -> bool {
        self.0.lock().expect("no caps").get(&ino).is_some_and(|t| t.elapsed() < TTL)
    }

    fn note(&self, ino: u64) {
        let mut m = self.0.lock().expect("no caps");
        if m.len() >= Self::MAX {
            m.clear();
        }
        m.insert(ino, std::time::Instant::now());
    }

    fn forget(&self, ino: u64) {
        self.0.lock().expect("no caps").remove(&ino);
    }
}

/// How many times an operation is sent again after the connection it went on broke.
const RETRIES: usize = 8;

/// What sends an operation of the kernel's to the exporter: the connection's slot and the binder's numbers.
#[derive(Clone)]
struct Sender {
    slot: Slot,
    stall: Duration,
    inodes: Arc<Table>,
    replay: Arc<Replay>,
}

/// What is called once an operation is on its way to an exporter that orders operations ([`Conn::ordered`]).
type OnItsWay<'a> = Option<Box<dyn FnOnce() + Send + 'a>>;

/// A request's place among those a broken connection left to send again: given up when dropped, however the
/// sending ends.
struct Place<'a> {
    replay: &'a Replay,
    origin: Option<Origin>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.origin {
            self.replay.settle(o);
        }
    }
}

impl Sender {
    /// Sends `op` (with the binder's inode and file numbers) once there is a connection, and gives its outcome
    /// (with the binder's numbers). Sent again on the next connection if the one it went on broke, where that is
    /// safe ([`inodes::retriable`]).
    async fn send(&self, op: &mut Op) -> Result<Reply, Errno> {
        self.send_then(op, &mut None).await
    }

    /// [`Sender::send`], calling `then` once `op` is on its way, if the exporter orders operations.
    async fn send_then(&self, op: &mut Op, then: &mut OnItsWay<'_>) -> Result<Reply, Errno> {
        let Sender { slot, stall, inodes, replay } = self;
        let mut tries = 0;
        let mut place = Place { replay, origin: None };
        loop {
            let c = slot.conn(*stall).await?;
            // Sent again after a break in the order first sent, and anything new after all of those.
            replay.turn(place.origin).await;
            if let Op::Release { fh } = *op {
                if inodes.is_stale(fh, c.id()) {
                    // Opened on a connection that is gone: nothing to close on this one.
                    let local = inodes::Local::default();
                    return inodes.answer(op, local.with_fh(fh), c.id(), Ok(Reply::Empty)).map_err(Errno::from_i32);
                }
            }
            let r = match inodes.to_remote(&c, op).await {
                Ok(local) => {
                    let (before, ordered) = (place.origin, c.ordered());
                    let on_its_way = || {
                        if let Some(o) = before {
                            replay.settle(o);
                        }
                        if let Some(then) = then.take().filter(|_| ordered) {
                            then();
                        }
                    };
                    let mut sent = None;
                    let r = c.call_sent(op, before, &mut sent, on_its_way).await;
                    place.origin = sent.or(before);
                    let broke = r == Err(libc::EIO) && c.closed().is_cancelled();
                    Table::to_local(op, local);
                    if !broke {
                        return inodes.answer(op, local, c.id(), r).map_err(Errno::from_i32);
                    }
                    r
                }
                Err(e) if e == libc::EIO && c.closed().is_cancelled() => Err(e),
                Err(e) => return Err(Errno::from_i32(e)),
            };
            tries += 1;
            if tries > RETRIES || !inodes::retriable(op) {
                return r.map_err(Errno::from_i32);
            }
        }
    }
}

impl Fuse {
    /// A function that forgets one lookup of an inode (from any thread).
    fn forgetter(&self) -> impl Fn(u64) + Send + 'static {
        let (slot, inodes, rt) = (self.sender.slot.clone(), Arc::clone(&self.sender.inodes), self.rt.clone());
        move |ino| forget(&rt, &slot, &inodes, ino, 1)
    }

    /// Sends `op` on a task ([`Sender::send`]) and hands its outcome to `done` there.
    /// `done`, for an operation that changes the content of `ino` if `data`: what was read of it with an open is
    /// dropped now and again when the exporter has answered (an open may have read it meanwhile).
    fn changing(
        &self,
        ino: u64,
        data: bool,
        done: impl FnOnce(Result<Reply, Errno>) + Send + 'static,
    ) -> impl FnOnce(Result<Reply, Errno>) + Send + 'static {
        let prefetched = data.then(|| Arc::clone(&self.prefetched));
        if let Some(p) = &prefetched {
            p.changed(ino);
        }
        move |r| {
            if let Some(p) = prefetched {
                p.changed(ino);
            }
            done(r)
        }
    }

    /// Opens `ino` for reading, and keeps its content if the exporter sent it (a small file).
    fn open_read(&self, ino: u64, flags: i32, reply: ReplyOpen) {
        let (sender, prefetched) = (self.sender.clone(), Arc::clone(&self.prefetched));
        self.rt.spawn(async move {
            let r = match sender.send(&mut Op::OpenRead { ino, flags, max: Prefetched::MAX }).await {
                Err(Errno::ENOSYS) => {
                    prefetched.unknown();
                    sender.send(&mut Op::Open { ino, flags }).await
                }
                r => r,
            };
            match r {
                Ok(Reply::OpenedWith { fh, whole, data }) => {
                    if whole {
                        prefetched.keep(fh, ino, data);
                    }
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
                }
                Ok(Reply::Opened { fh }) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Ok(r) => reply.error(unexpected(r)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn call(&self, mut op: Op, done: impl FnOnce(Result<Reply, Errno>) + Send + 'static) {
        let sender = self.sender.clone();
        self.rt.spawn(async move {
            let r = sender.send(&mut op).await;
            if let Op::Write { data, .. } = op {
                crate::buffers::give(data);
            }
            done(r)
        });
    }
}

/// What the mount keeps of the exporter's beside the kernel's caches, and drops when the exporter tells of a
/// change.
struct Caches {
    no_caps: Arc<NoCaps>,
    made: Arc<Made>,
    prefetched: Arc<Prefetched>,
}

/// How many batches of told changes wait for the kernel at most (more are dropped: the cache's TTL still bounds
/// how long a change goes unseen).
const CHANGES_QUEUED: usize = 64;

/// Has the kernel drop what it cached of what the exporter says changed: every connection the slot gets tells its
/// changes to a thread of the mount's, which invalidates entries and inodes (a thread of its own: an invalidation
/// waits for the kernel's locks of the directory, which a request in flight may hold until it is answered).
///
/// With writeback caching (`writeback`, a writable mount) the kernel keeps its own size of a regular file and never
/// takes the exporter's (`fuse_get_cache_mask`), so a file that grew on the exporter would read cut at its old end.
/// For a changed regular file the thread asks the exporter for its size and last byte, and stores that byte
/// (`FUSE_NOTIFY_STORE`), which moves the kernel's size up to the exporter's (a store of nothing would not: the
/// kernel moves the size only for bytes stored); a size below the kernel's changes nothing, so data the binder
/// wrote and the kernel has not sent yet is not cut.
fn forget_what_changes(
    slot: &Slot,
    notifier: fuser::Notifier,
    inodes: Arc<Table>,
    writeback: bool,
    caches: Caches,
) -> std::io::Result<()> {
    let Caches { no_caps, made, prefetched } = caches;
    let made_now = Arc::clone(&made);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Vec<crate::proto::Change>)>(CHANGES_QUEUED);
    // The thread looks at the slot's phase when it needs the connection, through a receiver: holding a connection
    // (or the slot's sender) itself would keep the connection, its stream and the exporter's side alive after an
    // unbind, in a cycle through the connection's change channel to this thread.
    let (now, rt) = (slot.0.subscribe(), Handle::current());
    std::thread::Builder::new().name("metac-fs-changes".into()).spawn(move || {
        while let Some((conn, changes)) = rx.blocking_recv() {
            for c in changes {
                // The kernel answers ENOENT for what it does not hold: nothing to drop then.
                let _ = match c {
                    crate::proto::Change::Inode { ino } => match inodes.local_of(ino, conn) {
                        Some(local) => {
                            inodes.stale(local);
                            no_caps.forget(local);
                            made.forget(local);
                            prefetched.changed(local);
                            let r = notifier.inval_inode(INodeNo(local), 0, 0);
                            if writeback {
                                let c = match &*now.borrow() {
                                    Phase::Up(c) if c.id() == conn => Some(c.clone()),
                                    _ => None,
                                };
                                if let Some((size, last)) = c.and_then(|c| last_byte(&rt, &c, ino)) {
                                    let _ = notifier.store(INodeNo(local), size - 1, &[last]);
                                }
                            }
                            r
                        }
                        None => Ok(()),
                    },
                    crate::proto::Change::Entry { parent, name } => match inodes.local_of(parent, conn) {
                        Some(parent) => {
                            inodes.stale(parent);
                            made.forget(parent);
                            notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name))
                        }
                        None => Ok(()),
                    },
                };
            }
        }
    })?;
    let mut phases = slot.0.subscribe();
    tokio::spawn(async move {
        loop {
            if let Phase::Up(c) = &*phases.borrow_and_update() {
                made_now.forget_all();
                c.tell_changes_to(tx.clone());
            }
            if phases.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The exporter's size of `ino` on `c` and its last byte, if it is a regular file that is not empty (asked from
/// the changes thread, so it may wait; three round trips, for files that changed on the exporter only).
fn last_byte(rt: &Handle, c: &Conn, ino: u64) -> Option<(u64, u8)> {
    // The timers are made inside `block_on`, where the runtime is this thread's.
    rt.block_on(async {
        let ask = |op| tokio::time::timeout(Duration::from_secs(5), c.call(op));
        let size = match ask(Op::Getattr { ino }).await {
            Ok(Ok(Reply::Attr(a))) if a.mode & libc::S_IFMT == libc::S_IFREG && a.size > 0 => a.size,
            _ => return None,
        };
        let Ok(Ok(Reply::Opened { fh })) = ask(Op::Open { ino, flags: libc::O_RDONLY }).await else { return None };
        let read = ask(Op::Read { fh, offset: size - 1, size: 1 }).await;
        let _ = ask(Op::Release { fh }).await;
        match read {
            Ok(Ok(Reply::Data(d))) if d.len() == 1 => Some((size, d[0])),
            _ => None,
        }
    })
}

/// Keeps the inodes the kernel holds through the mount at most `keep` (see [`MAX_KNOWN`]), until the mount's table
/// is gone.
fn trim(notifier: fuser::Notifier, inodes: std::sync::Weak<Table>, keep: usize) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(table) = inodes.upgrade() else { return };
            let names = table.coldest(keep);
            drop(table);
            if names.is_empty() {
                continue;
            }
            let notifier = notifier.clone();
            // Each is a write to the FUSE device: off the runtime's threads.
            let dropped = tokio::task::spawn_blocking(move || {
                // The kernel answers ENOENT for a name it no longer holds, and keeps one in use: both are fine.
                names
                    .iter()
                    .filter(|(parent, name)| notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name)).is_ok())
                    .count()
            })
            .await
            .unwrap_or(0);
            tracing::debug!(dropped, keep, "names dropped from the kernel's cache");
        }
    });
}

/// Forgets `n` lookups of inode `ino`, telling the exporter once the kernel holds none.
fn forget(rt: &Handle, slot: &Slot, inodes: &Arc<Table>, ino: u64, n: u64) {
    let (slot, inodes) = (slot.clone(), Arc::clone(inodes));
    rt.spawn(async move {
        // Forgetting never waits for a connection: one that is away has forgotten everything already.
        let c = match &*slot.0.borrow() {
            Phase::Up(c) if !c.closed().is_cancelled() => c.clone(),
            _ => {
                inodes.forget(ino, n, 0);
                return;
            }
        };
        // After what a broken connection left to send again (a change of the inode, say).
        slot.1.turn(None).await;
        if let Some((remote, n)) = inodes.forget(ino, n, c.id()) {
            let _ = c.call(Op::Forget { ino: remote, n }).await;
        }
    });
}

/// Attributes of inode 0: to the kernel, a name that is not there (in a lookup's answer) or an entry given
/// without attributes (in a readdirplus answer).
fn no_entry() -> FileAttr {
    FileAttr { ino: INodeNo(0), ..file_attr(&Attr::default()) }
}

/// An answer of the wrong sort: the exporter broke the protocol.
fn unexpected(r: Reply) -> Errno {
    tracing::warn!("fs: unexpected answer from the exporter: {r:?}");
    Errno::EIO
}

/// The bytes of a name, or ENAMETOOLONG for one longer than any the exporter takes (which the protocol refuses,
/// so it is answered here, and the bind goes on).
fn name(n: &OsStr) -> Result<Vec<u8>, Errno> {
    bounded(n, MAX_NAME, Errno::ENAMETOOLONG)
}

fn bounded(n: &OsStr, max: usize, too_long: Errno) -> Result<Vec<u8>, Errno> {
    if n.len() > max {
        return Err(too_long);
    }
    Ok(n.as_bytes().to_vec())
}

/// The process a request comes from, as the owner of what it makes.
fn who(req: &Request) -> Who {
    Who { uid: req.uid(), gid: req.gid() }
}

/// The value of `$e`, or `$reply` answered with its error.
macro_rules! or_reply {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

fn time((sec, nsec): (i64, u32)) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: UNIX_EPOCH,
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<Time> {
    t.map(|t| match t {
        TimeOrNow::Now => Time::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time::At { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Time::At { sec, nsec }
            }
        },
    })
}

fn entry(reply: ReplyEntry) -> impl FnOnce(Result<Reply, Errno>) {
    move |r| match r {
        Ok(Reply::Entry(a)) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Ok(r) => reply.error(unexpected(r)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty) -> impl FnOnce(Result<Reply, Errno>) {
    move |r| match r {
        Ok(Reply::Empty) => reply.ok(),
        Ok(r) => reply.error(unexpected(r)),
        Err(e) => reply.error(e),
    }
}

fn attr(reply: ReplyAttr) -> impl FnOnce(Result<Reply, Errno>) {
    move |r| match r {
        Ok(Reply::Attr(a)) => reply.attr(&TTL, &file_attr(&a)),
        Ok(r) => reply.error(unexpected(r)),
        Err(e) => reply.error(e),
    }
}

fn xattr(reply: ReplyXattr) -> impl FnOnce(Result<Reply, Errno>) {
    move |r| match r {
        Ok(Reply::Size(n)) => reply.size(n),
        Ok(Reply::Data(d)) => reply.data(&d),
        Ok(r) => reply.error(unexpected(r)),
        Err(e) => reply.error(e),
    }
}

fn data(reply: ReplyData) -> impl FnOnce(Result<Reply, Errno>) {
    move |r| match r {
        Ok(Reply::Data(d)) => {
            reply.data(&d);
            crate::buffers::give(d);
        }
        Ok(r) => reply.error(unexpected(r)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Best effort: the kernel may allow less, and says so in the error, which is then what it uses.
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // Directory listings carry attributes (one round trip for `ls -l` or `find` of a directory, not one per
        // entry), and the kernel uses them where lookups would follow.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // A file's cached pages outlive its opens (FOPEN_KEEP_CACHE on every open), and go when its attributes,
        // fetched anew once their TTL is past, show another size or modification time: a re-read costs nothing,
        // and a change made on the exporter is seen at the next open after the TTL, as NFS's close-to-open.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        // Writes are cached and sent in the background, in large requests (errors come at fsync and close, as
        // on a local disk): the kernel keeps the size and times of what it writes, and appends at its own idea
        // of the end (so O_APPEND is not passed on), and reads what it needs of a page it writes part of (the
        // exporter opens a file opened for writing alone for reading too). Not on a read-only mount: there the
        // kernel would keep the size it first saw of a file, and not see it grow or shrink on the exporter.
        if !self.read_only {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let name = or_reply!(reply, name(n));
        if self.made.absent(parent.0, &name) {
            return reply.entry(&TTL, &no_entry(), Generation(0));
        }
        self.call(Op::Lookup { parent: parent.0, name }, move |r| match r {
            // A name that is not there is cached as such for the TTL (an entry with inode 0), as a name that is:
            // the many lookups of missing names (a compiler's search path, git's .gitignore in every directory)
            // cost one round trip per second, not one each.
            Err(Errno::ENOENT) => reply.entry(&TTL, &no_entry(), Generation(0)),
            r => entry(reply)(r),
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        forget(&self.rt, &self.sender.slot, &self.sender.inodes, ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // A directory this mount just changed: the kernel dropped its attributes for the change, and the exporter
        // told them with it.
        if let Some(a) = self.sender.inodes.fresh_attr(ino.0) {
            return reply.attr(&TTL, &file_attr(&a));
        }
        self.call(Op::Getattr { ino: ino.0 }, attr(reply));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr { mode, uid, gid, size, atime: set_time(atime), mtime: set_time(mtime) };
        let done = self.changing(ino.0, size.is_some(), attr(reply));
        self.call(Op::Setattr { ino: ino.0, fh: fh.map(|f| f.0), set }, done);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.call(Op::Readlink { ino: ino.0 }, data(reply));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let name = or_reply!(reply, name(n));
        let made = Arc::clone(&self.made);
        let op = Op::Mkdir { parent: parent.0, name: name.clone(), mode, umask, who: who(req) };
        self.call(op, move |r| {
            match &r {
                Ok(Reply::Entry(a)) => {
                    made.added(parent.0, &name);
                    made.made_dir(a.ino);
                }
                // Not made (EEXIST: a name made elsewhere that this side did not know of): ask again from now on.
                _ => made.forget(parent.0),
            }
            entry(reply)(r)
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let name = or_reply!(reply, name(n));
        let op = Op::Mknod { parent: parent.0, name, mode, umask, rdev: rdev.into(), who: who(req) };
        self.made.forget(parent.0);
        self.call(op, entry(reply));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let name = or_reply!(reply, name(n));
        self.made.forget(parent.0);
        self.call(Op::Unlink { parent: parent.0, name }, empty(reply));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let name = or_reply!(reply, name(n));
        self.made.forget(parent.0);
        self.call(Op::Rmdir { parent: parent.0, name }, empty(reply));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, n: &OsStr, target: &Path, reply: ReplyEntry) {
        let name = or_reply!(reply, name(n));
        let target = or_reply!(reply, bounded(target.as_os_str(), MAX_TARGET, Errno::ENAMETOOLONG));
        self.made.forget(parent.0);
        self.call(Op::Symlink { parent: parent.0, name, target, who: who(req) }, entry(reply));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (or_reply!(reply, name(n)), or_reply!(reply, name(newname)));
        self.made.forget(parent.0);
        self.made.forget(newparent.0);
        let op = Op::Rename { parent: parent.0, name, newparent: newparent.0, newname, flags: flags.bits() };
        self.call(op, empty(reply));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let newname = or_reply!(reply, name(newname));
        self.made.forget(newparent.0);
        self.call(Op::Link { ino: ino.0, newparent: newparent.0, newname }, entry(reply));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.readahead.widen_once();
        let mut op = Op::Open { ino: ino.0, flags: flags.0 & !libc::O_APPEND };
        let cached = self.cached.as_ref().filter(|c| reads_only(flags.0) && c.asking.load(Ordering::Relaxed));
        let Some(c) = cached else {
            if reads_only(flags.0) && self.prefetched.asks() {
                return self.open_read(ino.0, flags.0 & !libc::O_APPEND, reply);
            }
            return self.call(op, move |r| match r {
                Ok(Reply::Opened { fh }) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Ok(r) => reply.error(unexpected(r)),
                Err(e) => reply.error(e),
            });
        };
        // Opened on the exporter as any file is (its handle kept until release), then, if the cache has or can
        // fetch the content the exporter states, read from the cache.
        let (sender, cache, files, asking) =
            (self.sender.clone(), Arc::clone(&c.cache), Arc::clone(&c.files), Arc::clone(&c.asking));
        self.rt.spawn(async move {
            let fh = match sender.send(&mut op).await {
                Ok(Reply::Opened { fh }) => fh,
                Ok(r) => return reply.error(unexpected(r)),
                Err(e) => return reply.error(e),
            };
            if let Some(f) = from_cache(&sender, &cache, &asking, fh).await {
                files.lock().expect("cached files").insert(fh, Arc::new(f));
            }
            reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(d) = self.prefetched.read(fh.0, offset, size) {
            reply.data(&d);
            return crate::buffers::give(d);
        }
        if let Some(f) = self.cached.as_ref().and_then(|c| c.file(fh.0)) {
            // A local file: read on this thread, no round trip.
            return match pread(&f, offset, size.min(MAX_IO)) {
                Ok(d) => {
                    reply.data(&d);
                    crate::buffers::give(d);
                }
                Err(e) => reply.error(Errno::from(e)),
            };
        }
        self.call(Op::Read { fh: fh.0, offset, size: size.min(MAX_IO) }, data(reply));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if bytes.len() > MAX_IO as usize {
            return reply.error(Errno::EINVAL);
        }
        let mut data = crate::buffers::take(bytes.len());
        data.extend_from_slice(bytes);
        let written = move |reply: ReplyWrite, r| match r {
            Ok(Reply::Written(n)) => reply.written(n),
            Ok(r) => reply.error(unexpected(r)),
            Err(e) => reply.error(e),
        };
        let behind = self.behind.clone().filter(|_| write_flags.contains(WriteFlags::FUSE_WRITE_CACHE));
        let Some(behind) = behind else {
            let done = self.changing(ino.0, true, move |r| written(reply, r));
            return self.call(Op::Write { fh: fh.0, offset, data }, done);
        };
        let (ino, len, sender) = (ino.0, bytes.len(), self.sender.clone());
        let changed = self.changing(ino, true, |_| {});
        self.rt.spawn(async move {
            let Ok(_room) = Arc::clone(&behind.room).acquire_many_owned(len.div_ceil(1024) as u32).await else {
                return reply.error(Errno::EIO);
            };
            behind.started(ino);
            let early = std::sync::Mutex::new(Some(reply));
            let mut op = Op::Write { fh: fh.0, offset, data };
            let r = {
                let mut then: OnItsWay = Some(Box::new(|| {
                    if let Some(reply) = early.lock().expect("reply").take() {
                        reply.written(len as u32);
                    }
                }));
                sender.send_then(&mut op, &mut then).await
            };
            if let Op::Write { data, .. } = op {
                crate::buffers::give(data);
            }
            changed(Ok(Reply::Empty));
            let not_answered = early.lock().expect("reply").take();
            let error = match (&r, not_answered) {
                (_, Some(reply)) => {
                    written(reply, r);
                    None
                }
                (Ok(Reply::Written(n)), None) if *n as usize == len => None,
                (Ok(_), None) => Some(Errno::EIO),
                (Err(e), None) => Some(*e),
            };
            if let Some(e) = error {
                tracing::debug!(ino, "a write answered ahead failed: {e:?}");
            }
            behind.ended(ino, error);
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // The kernel has written the file's dirty pages back before this. Without write-behind every write has
        // reached the exporter when it was answered, so a close has nothing to flush: ENOSYS says so once, and
        // the kernel sends no more. With it, the close waits for the file's writes on their way, and is told
        // what went wrong with them.
        let Some(behind) = self.behind.clone() else { return reply.error(Errno::ENOSYS) };
        match behind.settled(ino.0) {
            Ok(None) => reply.ok(),
            Ok(Some(e)) => reply.error(e),
            Err(()) => {
                self.rt.spawn(async move {
                    match behind.wait(ino.0).await {
                        None => reply.ok(),
                        Some(e) => reply.error(e),
                    }
                });
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(c) = &self.cached {
            c.files.lock().expect("cached files").remove(&fh.0);
        }
        self.prefetched.released(fh.0);
        self.call(Op::Release { fh: fh.0 }, empty(reply));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let Some(behind) = self.behind.clone() else {
            return self.call(Op::Fsync { fh: fh.0, datasync }, empty(reply));
        };
        // What went wrong with writes answered ahead is told here; the exporter does the fsync after them.
        let sender = self.sender.clone();
        self.rt.spawn(async move {
            if let Some(e) = behind.wait(ino.0).await {
                return reply.error(e);
            }
            empty(reply)(sender.send(&mut Op::Fsync { fh: fh.0, datasync }).await)
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.call(Op::Readdir { ino: ino.0, offset }, move |r| match r {
            Ok(Reply::Dir(entries)) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.offset, kind(e.kind), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Ok(r) => reply.error(unexpected(r)),
            Err(e) => reply.error(e),
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let forget = self.forgetter();
        self.call(Op::ReaddirPlus { ino: ino.0, offset, size: READDIR_BUFFER }, move |r| match r {
            Ok(Reply::DirPlus(entries)) => {
                let mut full = false;
                for (e, a) in entries {
                    if !full {
                        let (ino, fa) = match &a {
                            Some(a) => (a.ino, file_attr(a)),
                            None => (e.ino, no_entry()),
                        };
                        full = reply.add(INodeNo(ino), e.offset, OsStr::from_bytes(&e.name), &TTL, &fa, Generation(0));
                        if !full {
                            continue;
                        }
                    }
                    // The exporter fitted its answer to the buffer; should an entry not fit after all, the lookup
                    // it counted is given back.
                    if let Some(a) = a {
                        forget(a.ino);
                    }
                }
                reply.ok();
            }
            Ok(r) => reply.error(unexpected(r)),
            Err(e) => reply.error(e),
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.call(Op::Statfs { ino: ino.0 }, move |r| match r {
            Ok(Reply::Statfs(s)) => {
                reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize)
            }
            Ok(r) => reply.error(unexpected(r)),
            Err(e) => reply.error(e),
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let name = or_reply!(reply, bounded(n, MAX_XATTR_NAME, Errno::ERANGE));
        let size = size.min(MAX_XATTR as u32);
        if name != CAPS {
            return self.call(Op::Getxattr { ino: ino.0, name, size }, xattr(reply));
        }
        if self.no_caps.known(ino.0) {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let no_caps = Arc::clone(&self.no_caps);
        self.call(Op::Getxattr { ino: ino.0, name, size }, move |r| {
            if matches!(&r, Err(e) if e.code() == libc::ENODATA) {
                no_caps.note(ino.0);
            }
            xattr(reply)(r)
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.call(Op::Listxattr { ino: ino.0, size: size.min(MAX_XATTR as u32) }, xattr(reply));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = or_reply!(reply, bounded(n, MAX_XATTR_NAME, Errno::ERANGE));
        if value.len() > MAX_XATTR {
            return reply.error(Errno::E2BIG);
        }
        self.no_caps.forget(ino.0);
        self.call(Op::Setxattr { ino: ino.0, name, value: value.to_vec(), flags }, empty(reply));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let name = or_reply!(reply, bounded(n, MAX_XATTR_NAME, Errno::ERANGE));
        self.no_caps.forget(ino.0);
        self.call(Op::Removexattr { ino: ino.0, name }, empty(reply));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let done = self.changing(ino.0, true, empty(reply));
        self.call(Op::Fallocate { fh: fh.0, offset, length, mode }, done);
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        self.call(Op::Lseek { fh: fh.0, offset, whence }, move |r| match r {
            Ok(Reply::Offset(o)) => reply.offset(o as i64),
            Ok(r) => reply.error(unexpected(r)),
            Err(e) => reply.error(e),
        });
    }

    fn create(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let name = or_reply!(reply, name(n));
        let flags = flags & !libc::O_APPEND;
        let (no_caps, made) = (Arc::clone(&self.no_caps), Arc::clone(&self.made));
        let op = Op::Create { parent: parent.0, name: name.clone(), mode, umask, flags, who: who(req) };
        self.call(op, move |r| match r {
            Ok(Reply::Created { attr, fh }) => {
                made.added(parent.0, &name);
                // A new file has no capabilities (they are never inherited).
                no_caps.note(attr.ino);
                reply.created(&TTL, &file_attr(&attr), Generation(0), FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(r) => reply.error(unexpected(r)),
            Err(e) => {
                made.forget(parent.0);
                reply.error(e)
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory holding `src` (to serve) and `mnt` (to mount on), for a test that mounts FUSE and so
    /// needs root (under CI it runs and fails loudly without it).
    fn mount_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts FUSE and needs root");
        let dir = tempfile::tempdir().unwrap();
        let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        (dir, src, mnt)
    }

    /// `src` served as root over an in-memory stream and mounted at `mnt`: the server (for its tables), the mount,
    /// and what ends the serving side.
    fn served(src: &Path, mnt: &Path) -> (Arc<crate::server::Server>, Mount, tokio_util::sync::CancellationToken) {
        served_with(src, mnt, &Options::default())
    }

    fn served_with(
        src: &Path,
        mnt: &Path,
        options: &Options,
    ) -> (Arc<crate::server::Server>, Mount, tokio_util::sync::CancellationToken) {
        let root = rustix::fs::open(src, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(crate::server::Server::new(root, false).unwrap());
        let (a, b) = tokio::io::duplex(1 << 20);
        let cancel = tokio_util::sync::CancellationToken::new();
        let caller = metac_resource::Caller::root();
        tokio::spawn(crate::exporter::serve(Arc::clone(&server), caller, Box::new(b), cancel.clone()));
        (server, Mount::serve(Box::new(a), mnt, options).unwrap(), cancel)
    }

    /// The FUSE side alone, against a server on an in-memory stream: real /dev/fuse, real `cat`, `ls`, `sh` on the
    /// mount. Needs root (it mounts); under CI it runs and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_served_mount_is_used_by_real_tools_and_fails_with_enotconn_when_its_stream_ends() {
        let (_dir, src, mnt) = mount_dirs();
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"served").unwrap();
        let (_server, m, cancel) = served(&src, &mnt);
        let sh = |script: String| {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("timeout").args(["30", "sh", "-c", &script]).output().unwrap()
            })
        };
        let out = sh(format!("cat {0}/d/f && ls {0} && echo new > {0}/d/g", mnt.display())).await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, b"servedd\n", "cat, then ls");
        assert_eq!(std::fs::read(src.join("d/g")).unwrap(), b"new\n");
        // The exporter's side ends: the mount answers ENOTCONN, it does not hang.
        cancel.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = sh(format!("ls {}/d", mnt.display())).await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("not connected"), "{err}");
        m.unmount().await;
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(mnt.to_str().unwrap()), "unmounted");
    }

    /// `src` served over an in-memory stream through a proxy that counts the binder's requests `counted` picks, and
    /// mounted at `mnt`: the mount, what ends the serving side, and the count.
    fn served_counting(
        src: &Path,
        mnt: &Path,
        counted: fn(&Op) -> bool,
    ) -> (Mount, tokio_util::sync::CancellationToken, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let root = rustix::fs::open(src, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(crate::server::Server::new(root, false).unwrap());
        let (binder, proxy_in) = tokio::io::duplex(1 << 20);
        let (proxy_out, exporter) = tokio::io::duplex(1 << 20);
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::exporter::serve(
            server,
            metac_resource::Caller::root(),
            Box::new(exporter),
            cancel.clone(),
        ));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (mut from_binder, mut to_binder) = tokio::io::split(proxy_in);
        let (mut from_exporter, mut to_exporter) = tokio::io::split(proxy_out);
        let n = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok(Some(body)) = crate::exporter::read_body(&mut from_binder).await {
                if crate::proto::decode_request(&body).is_ok_and(|r| counted(&r.op)) {
                    n.fetch_add(1, Ordering::SeqCst);
                }
                let len = (body.len() as u32).to_be_bytes();
                if to_exporter.write_all(&len).await.is_err() || to_exporter.write_all(&body).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut b = vec![0u8; 1 << 16];
            while let Ok(n) = from_exporter.read(&mut b).await {
                if n == 0 || to_binder.write_all(&b[..n]).await.is_err() {
                    return;
                }
            }
        });
        (Mount::serve(Box::new(binder), mnt, &Options::default()).unwrap(), cancel, count)
    }

    /// `sh -c script` on a blocking thread, which must succeed.
    async fn sh_ok(script: String) {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("timeout").args(["30", "sh", "-c", &script]).output().unwrap();
            assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        })
        .await
        .unwrap();
    }

    /// The kernel asks for a file's capabilities before each write and chown (to drop them): a file this mount
    /// made is known to have none, and a "none" from the exporter is kept for the TTL, so those round trips are
    /// not made again; an xattr change made here forgets it. Needs root (it mounts); under CI it runs and fails
    /// loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_files_missing_capabilities_are_asked_for_once() {
        let (_dir, src, mnt) = mount_dirs();
        std::fs::write(src.join("theirs"), b"made on the exporter\n").unwrap();
        let (m, cancel, asked) =
            served_counting(&src, &mnt, |op| matches!(op, Op::Getxattr { name, .. } if name == CAPS));
        let d = mnt.display();
        // Made here: no round trip for its capabilities, however often it is written and chowned.
        sh_ok(format!("echo hi > {d}/ours && chown 1:1 {d}/ours && echo more >> {d}/ours && chown 0:0 {d}/ours")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 0, "a file made here has none");
        // Made there: asked once, then known for the TTL.
        sh_ok(format!("echo x >> {d}/theirs && chown 1:1 {d}/theirs && chown 2:2 {d}/theirs")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 1, "asked once");
        // An xattr set here: asked again.
        sh_ok(format!("setfattr -n user.note -v 1 {d}/theirs && chown 0:0 {d}/theirs")).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2, "asked again after an xattr change");
        assert_eq!(std::fs::read(src.join("ours")).unwrap(), b"hi\nmore\n");
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(src.join("theirs")).unwrap());
        assert_eq!(owner, 0, "the chowns landed");
        m.unmount().await;
        cancel.cancel();
    }

    /// A small file comes with its open: `cat` of files up to [`Prefetched::MAX`] sends no read, a larger one
    /// does, and every one reads its exact bytes. A file that grows on the exporter while open here reads on past
    /// its old end, and a write through the mount is read back by an open that came before it. Needs root (it
    /// mounts); under CI it runs and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_file_comes_with_its_open() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let (_dir, src, mnt) = mount_dirs();
        let max = Prefetched::MAX as usize;
        let sizes = [0, 1, 4095, 4096, 100_000, max];
        for n in sizes {
            std::fs::write(src.join(format!("f{n}")), (0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
        }
        std::fs::write(src.join("large"), vec![3u8; max + 1]).unwrap();
        let (m, cancel, reads) = served_counting(&src, &mnt, |op| matches!(op, Op::Read { .. }));
        let d = mnt.display();
        let names: Vec<String> = sizes.iter().map(|n| format!("{d}/f{n}")).collect();
        sh_ok(format!("cat {} > /dev/null", names.join(" "))).await;
        assert_eq!(reads.load(Ordering::SeqCst), 0, "small files are read with their opens");
        for n in sizes {
            let through = tokio::fs::read(mnt.join(format!("f{n}"))).await.unwrap();
            assert_eq!(through, std::fs::read(src.join(format!("f{n}"))).unwrap(), "f{n}");
        }
        sh_ok(format!("cat {d}/large > /dev/null")).await;
        assert!(reads.load(Ordering::SeqCst) > 0, "a larger file is read as before");

        // Grown on the exporter while open here: read on past the old end once the exporter has told of it.
        let grows = src.join("grows");
        std::fs::write(&grows, b"first\n").unwrap();
        let path = mnt.join("grows");
        let seen = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path).unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "first\n");
            std::fs::OpenOptions::new().append(true).open(&grows).unwrap().write_all(b"second\n").unwrap();
            for _ in 0..50 {
                let mut s = String::new();
                f.seek(SeekFrom::Start(0)).unwrap();
                f.read_to_string(&mut s).unwrap();
                if s == "first\nsecond\n" {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
        .await
        .unwrap();
        assert!(seen, "a file grown on the exporter reads whole through an open made before");

        // Written through the mount after an open for reading: that open reads what was written.
        std::fs::write(src.join("written"), b"old content\n").unwrap();
        let path = mnt.join("written");
        tokio::task::spawn_blocking(move || {
            let mut r = std::fs::File::open(&path).unwrap();
            let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            w.write_all(b"NEW").unwrap();
            w.sync_all().unwrap();
            drop(w);
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            assert_eq!(s, "NEW content\n");
        })
        .await
        .unwrap();
        m.unmount().await;
        cancel.cancel();
    }

    /// In a directory this mount made, names it did not make are known to be missing: an untar-like run of creates
    /// looks nothing up. A name made there on the exporter is seen once its change is told, and a removal here
    /// makes lookups go out again. Needs root (it mounts); under CI it runs and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_in_a_directory_the_mount_made_are_not_looked_up() {
        let (_dir, src, mnt) = mount_dirs();
        // Lookups of `new` itself are not counted: one (or a second, when a loaded machine takes past its TTL).
        let (m, cancel, lookups) =
            served_counting(&src, &mnt, |op| matches!(op, Op::Lookup { name, .. } if name != b"new"));
        let d = mnt.display();
        sh_ok(format!("mkdir {d}/new && for i in $(seq 50); do echo $i > {d}/new/f$i; done && mkdir {d}/new/sub"))
            .await;
        sh_ok(format!("echo deep > {d}/new/sub/g && cat {d}/new/f7")).await;
        // None is looked up before it is made (each would be one, 52 in all). A loaded machine that takes past the
        // entries' TTL revalidates what the second script walks to that it did not make: `sub` and `f7`, two at most.
        let n = lookups.load(Ordering::SeqCst);
        assert!(n <= 2, "{n} lookups for 52 names made in `new`");
        assert_eq!(std::fs::read(src.join("new/sub/g")).unwrap(), b"deep\n");
        // Made on the exporter: seen through the mount once the exporter has told of it.
        std::fs::write(src.join("new/theirs"), b"from the exporter\n").unwrap();
        let mut seen = false;
        for _ in 0..50 {
            if std::fs::read(mnt.join("new/theirs")).is_ok_and(|b| b == b"from the exporter\n") {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen, "a name made on the exporter is found");
        // A removal here: lookups in that directory go to the exporter again.
        let before = lookups.load(Ordering::SeqCst);
        sh_ok(format!("rm {d}/new/sub/g && ls {d}/new/sub/nothing-here 2>/dev/null; true")).await;
        assert!(lookups.load(Ordering::SeqCst) > before, "looked up again after a removal");
        m.unmount().await;
        cancel.cancel();
    }

    /// Files made, written and stamped as tar does (create, write, utimensat, close) through a mount with
    /// write-behind: the writes are answered before the exporter has them, and still every byte and every mtime
    /// is right on the exporter, as are a log's appends of the same page. The kernel's look at the directory
    /// after each file made (its permission check) is answered from what the exporter told with the making: no
    /// getattr of it goes out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_written_ahead_land_whole_and_in_order_and_their_directory_is_not_asked_for() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, src, mnt) = mount_dirs();
        std::fs::create_dir(src.join("d")).unwrap();
        let (m, cancel, getattrs) = served_counting(&src, &mnt, |op| matches!(op, Op::Getattr { .. }));
        let dir = mnt.join("d");
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            // The directory's attributes are known once (a lookup), and then kept fresh by each making.
            std::fs::metadata(&dir).unwrap();
            for i in 0..100u32 {
                let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(dir.join(format!("f{i}")));
                let f = f.as_mut().unwrap();
                f.write_all(&vec![i as u8; 10_000 + i as usize]).unwrap();
                let t = std::time::UNIX_EPOCH + Duration::new(1_600_000_000 + u64::from(i), 5);
                f.set_modified(t).unwrap();
            }
            let mut log = std::fs::OpenOptions::new().append(true).create(true).open(dir.join("log")).unwrap();
            for i in 0..200 {
                writeln!(log, "line {i}").unwrap();
                log.flush().unwrap();
                if i % 50 == 0 {
                    // The page written back, then written again: the newer bytes land last.
                    log.sync_data().unwrap();
                }
            }
            log.sync_all().unwrap();
        })
        .await
        .unwrap();
        let n = getattrs.load(Ordering::SeqCst);
        assert!(n <= 5, "the directory's attributes came with the makings, not by getattr: {n} sent");
        m.unmount().await;
        cancel.cancel();
        for i in 0..100u32 {
            let path = src.join(format!("d/f{i}"));
            let data = std::fs::read(&path).unwrap();
            assert_eq!(data.len(), 10_000 + i as usize, "f{i}");
            assert!(data.iter().all(|&b| b == i as u8), "f{i}");
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_600_000_000 + i64::from(i), 5), "f{i}'s mtime");
        }
        let log: String = (0..200).map(|i| format!("line {i}\n")).collect();
        assert_eq!(std::fs::read_to_string(src.join("d/log")).unwrap(), log);
    }

    /// A walk of more files than the mount lets the kernel hold: the kernel is told to drop the names looked up
    /// longest ago, forgets them, and the exporter lets go of their descriptors (it holds about the mount's
    /// bound, not one per file walked); a file open meanwhile reads on, and a dropped name is found again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_inodes_a_walk_leaves_behind_are_bounded_on_both_sides() {
        let (_dir, src, mnt) = mount_dirs();
        for d in 0..10 {
            std::fs::create_dir(src.join(format!("d{d}"))).unwrap();
            for f in 0..100 {
                std::fs::write(src.join(format!("d{d}/f{f}")), format!("{d}/{f}")).unwrap();
            }
        }
        let options = Options { max_known: Some(200), ..Options::default() };
        let (server, m, cancel) = served_with(&src, &mnt, &options);
        let (mnt2, walked) = (mnt.clone(), std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let open = tokio::task::spawn_blocking({
            let walked = Arc::clone(&walked);
            move || {
                let mut open = std::fs::File::open(mnt2.join("d0/f0")).unwrap();
                for d in 0..10 {
                    for f in 0..100 {
                        std::fs::metadata(mnt2.join(format!("d{d}/f{f}"))).unwrap();
                        walked.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let mut s = String::new();
                std::io::Read::read_to_string(&mut open, &mut s).unwrap();
                assert_eq!(s, "0/0", "the open file reads on");
                open
            }
        })
        .await
        .unwrap();
        assert_eq!(walked.load(Ordering::SeqCst), 1000);
        let mut held = server.held().0;
        for _ in 0..100 {
            if held <= 300 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = server.held().0;
        }
        assert!(held <= 300, "the exporter holds {held} inodes for 1011 walked, with a bound of 200");
        let mnt2 = mnt.clone();
        tokio::task::spawn_blocking(move || {
            assert_eq!(std::fs::read_to_string(mnt2.join("d0/f1")).unwrap(), "0/1", "a dropped name is found again");
            drop(open);
        })
        .await
        .unwrap();
        m.unmount().await;
        cancel.cancel();
    }

    /// The exporter restarts (a server with tables of its own, on a new stream) while files are open and inodes
    /// known: an open file reads on with the right bytes, a known path keeps its inode number, and a file removed
    /// on the exporter meanwhile is gone, its open descriptor stale. Needs root (it mounts); under CI it runs and
    /// fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_files_and_known_inodes_carry_on_across_an_exporter_restart() {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let (_dir, src, mnt) = mount_dirs();
        std::fs::create_dir_all(src.join("d")).unwrap();
        let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("d/big"), &big).unwrap();
        std::fs::write(src.join("gone"), b"soon gone").unwrap();
        let slot = Slot::default();
        let up = |slot: &Slot| {
            let root = rustix::fs::open(&src, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
            let server = Arc::new(crate::server::Server::new(root, false).unwrap());
            let (a, b) = tokio::io::duplex(1 << 20);
            let cancel = tokio_util::sync::CancellationToken::new();
            let caller = metac_resource::Caller::root();
            tokio::spawn(crate::exporter::serve(server, caller, Box::new(b), cancel.clone()));
            slot.set(Phase::Up(Conn::start(Box::new(a), None)));
            cancel
        };
        let first = up(&slot);
        let m = Mount::new(&mnt, slot.clone(), &Options::default()).unwrap();
        let (big_path, gone_path) = (mnt.join("d/big"), mnt.join("gone"));
        let (mut f, mut g, head, ino) = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&big_path).unwrap();
            let mut head = vec![0u8; 1 << 20];
            f.read_exact(&mut head).unwrap();
            let g = std::fs::File::open(&gone_path).unwrap();
            (f, g, head, std::fs::metadata(&big_path).unwrap().ino())
        })
        .await
        .unwrap();
        assert_eq!(head, big[..1 << 20]);

        // The exporter goes away; meanwhile a file is removed there; it comes back with empty tables.
        first.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        slot.set(Phase::Away);
        std::fs::remove_file(src.join("gone")).unwrap();
        let _second = up(&slot);
        // Past the kernel's caches, so that every path below is asked of the new server.
        tokio::time::sleep(TTL + Duration::from_millis(300)).await;
        let (mnt2, big2) = (mnt.clone(), big.clone());
        tokio::task::spawn_blocking(move || {
            let mut rest = Vec::new();
            f.read_to_end(&mut rest).unwrap();
            assert!(rest == big2[1 << 20..], "the open file read on with the right bytes");
            assert_eq!(std::fs::metadata(mnt2.join("d/big")).unwrap().ino(), ino, "the same inode by its path");
            assert_eq!(std::fs::read(mnt2.join("d/big")).unwrap().len(), big2.len());
            let e = std::fs::metadata(mnt2.join("gone")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
            let mut buf = [0u8; 4];
            let e = std::os::unix::fs::FileExt::read_at(&g, &mut buf, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "the removed file's descriptor is stale: {e}");
            let _ = g.read(&mut buf);
        })
        .await
        .unwrap();
        m.unmount().await;
    }

    /// The path a node that is not root takes: fusermount3 mounts and hands back /dev/fuse, the session serves it,
    /// real tools use it, and fusermount3 takes it off at unmount (run as root here; fusermount3, setuid root,
    /// does the same for a user). Needs root; under CI it runs and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mount_made_through_fusermount3_serves_and_is_taken_off_by_it() {
        let (_dir, src, mnt) = mount_dirs();
        std::fs::write(src.join("f"), b"through fusermount3").unwrap();
        let root = rustix::fs::open(&src, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(crate::server::Server::new(root, false).unwrap());
        let (a, b) = tokio::io::duplex(1 << 20);
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::exporter::serve(server, metac_resource::Caller::root(), Box::new(b), cancel.clone()));
        let slot = Slot::default();
        slot.set(Phase::Up(Conn::start(Box::new(a), None)));
        let m = Mount::with_helper(&mnt, slot, &Options::default(), true).unwrap();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info.lines().find(|l| l.contains(mnt.to_str().unwrap())).expect("mounted").to_string();
        assert!(line.contains("fuse.metac") && line.contains("nosuid") && line.contains("nodev"), "{line}");
        let mnt2 = mnt.clone();
        let (read, wrote) = tokio::task::spawn_blocking(move || {
            let read = std::fs::read(mnt2.join("f")).unwrap();
            std::fs::write(mnt2.join("g"), b"back").unwrap();
            (read, std::fs::read(mnt2.join("g")).unwrap())
        })
        .await
        .unwrap();
        assert_eq!((read.as_slice(), wrote.as_slice()), (&b"through fusermount3"[..], &b"back"[..]));
        m.unmount().await;
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(mnt.to_str().unwrap()), "fusermount3 took it off");
        assert_eq!(std::fs::read(src.join("g")).unwrap(), b"back");
        cancel.cancel();
    }

    /// Changes made on the exporter are seen through the mount at once, not when the cache times out: new bytes of
    /// a file (same size), a new file where a name was missing, a removed one, a renamed one, a changed mode. Each
    /// is seen within 300 ms, well inside the TTL of what the kernel caches. Needs root (it mounts); under CI it
    /// runs and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_on_the_exporter_are_seen_through_the_mount_at_once() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, src, mnt) = mount_dirs();
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"version 1").unwrap();
        std::fs::write(src.join("d/old"), b"old").unwrap();
        let (_server, m, _cancel) = served(&src, &mnt);
        // What the binder sees, cached: the file's bytes, its mode, a missing name, and a listing.
        let look = |mnt: PathBuf| {
            tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(mnt.join("d/f")).unwrap_or_default();
                let mode = std::fs::metadata(mnt.join("d/f")).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
                let new = std::fs::read(mnt.join("d/new")).ok();
                let mut names: Vec<_> =
                    std::fs::read_dir(mnt.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
                names.sort();
                (bytes, mode, new, names)
            })
        };
        let before = look(mnt.clone()).await.unwrap();
        assert_eq!((before.0.as_slice(), before.2.as_deref()), (&b"version 1"[..], None));
        // What the binder saw: the file's bytes and mode, the new file's bytes, the listing's names.
        type Looked = (Vec<u8>, u32, Option<Vec<u8>>, Vec<std::ffi::OsString>);
        type Change = Box<dyn Fn(&Path)>;
        type Seen = Box<dyn Fn(&Looked) -> bool>;
        let changes: [(&str, Change, Seen); 4] = [
            (
                "new bytes",
                Box::new(|s| std::fs::write(s.join("d/f"), b"version 2").unwrap()),
                Box::new(|l| l.0 == b"version 2"),
            ),
            (
                "a new file",
                Box::new(|s| std::fs::write(s.join("d/new"), b"new").unwrap()),
                Box::new(|l| l.2.as_deref() == Some(&b"new"[..])),
            ),
            (
                "a rename",
                Box::new(|s| std::fs::rename(s.join("d/old"), s.join("d/renamed")).unwrap()),
                Box::new(|l| l.3.iter().any(|n| n == "renamed") && !l.3.iter().any(|n| n == "old")),
            ),
            (
                "a mode",
                Box::new(|s| std::fs::set_permissions(s.join("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap()),
                Box::new(|l| l.1 == 0o600),
            ),
        ];
        for (what, change, seen) in changes {
            // The binder's caches are warm and fresh.
            look(mnt.clone()).await.unwrap();
            let t = std::time::Instant::now();
            change(&src);
            loop {
                if seen(&look(mnt.clone()).await.unwrap()) {
                    break;
                }
                assert!(t.elapsed() < Duration::from_millis(300), "{what} not seen within 300 ms");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!("{what} seen after {:?}", t.elapsed());
        }
        m.unmount().await;
    }

    /// Writes are cached and sent in the background, so an error of the exporter's disk comes where a local
    /// disk's would: at fsync and close. A 4 MiB write onto an export on a 1 MiB tmpfs fails there with ENOSPC
    /// (and a program that checks them sees it), and the mount goes on. Needs root (it mounts); under CI it runs
    /// and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_exporter_disk_is_reported_at_fsync_and_at_close() {
        use std::io::Write;
        let (_dir, src, mnt) = mount_dirs();
        let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&src).status();
        assert!(st.unwrap().success(), "mount a 1 MiB tmpfs");
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
        let _tmpfs = Unmount(src.clone());
        let (_server, m, _cancel) = served(&src, &mnt);
        let (mnt2, src2) = (mnt.clone(), src.clone());
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::create(mnt2.join("big")).unwrap();
            // The writes themselves land in the binder's cache.
            let wrote = (0..4).try_for_each(|_| f.write_all(&[1u8; 1 << 20]));
            let synced = wrote.and_then(|()| f.sync_all());
            let e = synced.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            drop(f);
            // Without an fsync, the close tells it: it waits for the writes answered ahead.
            std::fs::remove_file(mnt2.join("big")).unwrap();
            let mut f = std::fs::File::create(mnt2.join("big")).unwrap();
            (0..4).for_each(|_| f.write_all(&[2u8; 1 << 20]).unwrap());
            let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
            // SAFETY: `fd` was just taken from the file, which no longer owns it; it is closed once, here.
            let closed = unsafe { libc::close(fd) };
            let e = std::io::Error::last_os_error();
            assert_eq!((closed, e.raw_os_error()), (-1, Some(libc::ENOSPC)), "close: {e}");
            // A file that fits is written whole, and the mount goes on, once the space is back (when the exporter
            // lets go of the removed file's inode, at the kernel's forget of it).
            std::fs::remove_file(mnt2.join("big")).unwrap();
            let free = || rustix::fs::statvfs(&src2).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
            for _ in 0..100 {
                if free() >= 512 << 10 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(free() >= 512 << 10, "the removed file's space is given back");
            let mut g = std::fs::File::create(mnt2.join("small")).unwrap();
            g.write_all(b"fits").unwrap();
            g.sync_all().unwrap();
            drop(g);
            assert_eq!(std::fs::read(src2.join("small")).unwrap(), b"fits");
        })
        .await
        .unwrap();
        m.unmount().await;
    }

    /// What programs rely on beyond reading and writing, with real tools on the mount: a name too long is refused
    /// with ENAMETOOLONG and the bind goes on; a process of another user makes files of its own; FIFOs, extended
    /// attributes, preallocation and sparse files past 4 GiB work; and the mount is nosuid and nodev. Needs root
    /// (it mounts); under CI it runs and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn posix_corners_work_through_the_mount_with_real_tools() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts FUSE and needs root");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
        std::fs::create_dir(&src).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let (_server, m, _cancel) = served_with(&src, &mnt, &Options { allow_other: true, ..Options::default() });
        let sh = |script: String| {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("timeout").args(["30", "sh", "-c", &script]).output().unwrap()
            })
        };
        let long = "n".repeat(300);
        let out = sh(format!("cd {} && touch {long}", mnt.display())).await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("File name too long"), "{err}");
        let script = format!(
            "cd {} && setpriv --reuid 65534 --regid 65533 --clear-groups mkdir theirs && mkfifo fifo \
             && fallocate -l 1M pre && truncate -s 5G sparse && echo end >> sparse && (umask 0 && mkdir open) && ls",
            mnt.display()
        );
        let out = sh(script).await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "fifo\nopen\npre\nsparse\ntheirs\n", "the bind went on");
        let open = std::fs::metadata(src.join("open")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(open, 0o777, "the asker's umask, not the exporting node's");
        let theirs = std::fs::metadata(src.join("theirs")).unwrap();
        assert_eq!((theirs.uid(), theirs.gid()), (65534, 65533), "made by nobody, so nobody's");
        assert!(std::fs::metadata(src.join("fifo")).unwrap().file_type().is_fifo());
        assert_eq!(std::fs::metadata(src.join("pre")).unwrap().len(), 1 << 20);
        let sparse = std::fs::metadata(src.join("sparse")).unwrap();
        assert_eq!(sparse.len(), (5 << 30) + 4);
        assert!(sparse.blocks() < 1024, "still sparse: {} blocks", sparse.blocks());
        let mut end = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(mnt.join("sparse")).unwrap(), &mut end, 5 << 30)
            .unwrap();
        assert_eq!(&end, b"end\n", "read back past 4 GiB");
        rustix::fs::setxattr(mnt.join("pre"), "user.colour", b"blue", rustix::fs::XattrFlags::empty()).unwrap();
        let mut buf = [0u8; 16];
        let n = rustix::fs::getxattr(src.join("pre"), "user.colour", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"blue", "set through the mount, seen on the export");
        let n = rustix::fs::getxattr(mnt.join("pre"), "user.colour", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"blue");
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info.lines().find(|l| l.contains(mnt.to_str().unwrap())).unwrap();
        assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
        m.unmount().await;
    }

    /// Listings carry attributes (readdirplus): `ls -l` and `find` of a directory of 300 files see every name,
    /// size and mode right, and each lookup the listings counted is given back when the kernel forgets the entries
    /// (none leaks in the exporter's table).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_with_attributes_are_right_and_their_lookups_are_given_back() {
        let (_dir, src, mnt) = mount_dirs();
        std::fs::create_dir_all(src.join("many")).unwrap();
        for i in 0..300 {
            std::fs::write(src.join(format!("many/file-with-a-longer-name-{i:03}")), vec![b'x'; i]).unwrap();
        }
        let (server, m, _cancel) = served(&src, &mnt);
        let sh = |script: String| {
            tokio::task::spawn_blocking(move || {
                let o = std::process::Command::new("timeout").args(["30", "sh", "-c", &script]).output().unwrap();
                assert!(o.status.success(), "`{script}`: {}", String::from_utf8_lossy(&o.stderr));
                String::from_utf8(o.stdout).unwrap()
            })
        };
        let listing = |root: &Path| format!("cd {} && find many -printf '%p %s %m\\n' | LC_ALL=C sort", root.display());
        let (want, got) = (sh(listing(&src)).await.unwrap(), sh(listing(&mnt)).await.unwrap());
        assert_eq!(got.lines().count(), 301);
        assert_eq!(got, want, "find through the mount");
        let ls = sh(format!("ls -l {}/many | wc -l", mnt.display())).await.unwrap();
        assert_eq!(ls.trim(), "301", "ls -l: a total line and 300 entries");
        assert!(server.held().0 > 300, "the entries were looked up: {:?}", server.held());
        // The kernel forgets what it no longer caches; every lookup comes back, the root's aside.
        sh("sync && echo 2 > /proc/sys/vm/drop_caches".into()).await.unwrap();
        let mut held = server.held();
        for _ in 0..50 {
            if held.0 <= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = server.held();
        }
        assert!(held.0 <= 1, "lookups given back: {held:?} still held");
        m.unmount().await;
    }

    /// A read-only mount with a content cache: files opened read-only are fetched whole once, then served from the
    /// cache, through this mount and a second one, with no content crossing again (counted on the exporter); a
    /// changed file is fetched anew (the cache is by content, not name); without the cache every read crosses.
    /// Needs root (it mounts); under CI it runs and fails loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_read_only_mount_fetches_each_content_once() {
        let (dir, src, mnt) = mount_dirs();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("big"), &big).unwrap();
        std::fs::write(src.join("small"), b"small file").unwrap();
        let cache = Arc::new(Cache::new(dir.path().join("cache"), 64 << 20));
        let digests = Arc::new(crate::digest::Digests::default());
        let mount = |mnt: &Path, cache: Option<Arc<Cache>>| {
            let root = rustix::fs::open(&src, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
            let server = crate::server::Server::new(root, true).unwrap().with_digests(Arc::clone(&digests));
            let (a, b) = tokio::io::duplex(1 << 20);
            let cancel = tokio_util::sync::CancellationToken::new();
            let caller = metac_resource::Caller::root();
            tokio::spawn(crate::exporter::serve(Arc::new(server), caller, Box::new(b), cancel.clone()));
            let options = Options { read_only: true, cache, ..Options::default() };
            (Mount::serve(Box::new(a), mnt, &options).unwrap(), cancel)
        };
        let read = |mnt: PathBuf, name: &'static str| {
            tokio::task::spawn_blocking(move || std::fs::read(mnt.join(name)).unwrap())
        };
        let (m, _c) = mount(&mnt, Some(Arc::clone(&cache)));
        assert_eq!(read(mnt.clone(), "big").await.unwrap(), big);
        assert_eq!(read(mnt.clone(), "small").await.unwrap(), b"small file");
        let served = digests.served();
        assert_eq!(served, big.len() as u64 + 10, "each file fetched whole, once");
        assert_eq!(cache.stats().entries, 2);
        m.unmount().await;

        let mnt2 = dir.path().join("mnt2");
        std::fs::create_dir(&mnt2).unwrap();
        let (m, _c) = mount(&mnt2, Some(Arc::clone(&cache)));
        assert_eq!(read(mnt2.clone(), "big").await.unwrap(), big);
        assert_eq!(read(mnt2.clone(), "small").await.unwrap(), b"small file");
        assert_eq!(digests.served(), served, "a new mount reads from the cache: no content crossed");
        assert_eq!(digests.hashes(), 2, "and the exporter hashed each file once");
        std::fs::write(src.join("small"), b"changed on the exporter").unwrap();
        tokio::time::sleep(TTL + Duration::from_millis(200)).await;
        assert_eq!(read(mnt2.clone(), "small").await.unwrap(), b"changed on the exporter");
        assert_eq!(digests.served(), served + 23, "the new content was fetched");
        m.unmount().await;

        let (m, _c) = mount(&mnt, None);
        assert_eq!(read(mnt.clone(), "big").await.unwrap(), big);
        assert!(digests.served() >= served + 23 + big.len() as u64, "without the cache, reads cross");
        m.unmount().await;
    }

    #[test]
    fn times_before_the_epoch_keep_their_nanoseconds() {
        let t = time((-2, 250_000_000));
        assert_eq!(set_time(Some(TimeOrNow::SpecificTime(t))), Some(Time::At { sec: -2, nsec: 250_000_000 }));
        let t = time((1_700_000_000, 123));
        assert_eq!(set_time(Some(TimeOrNow::SpecificTime(t))), Some(Time::At { sec: 1_700_000_000, nsec: 123 }));
        assert_eq!(kind(libc::S_IFLNK | 0o777), FileType::Symlink);
    }

    /// Mounts a FUSE filesystem of our type at `path` with no server, and closes the device: what a node killed
    /// without stopping leaves behind (the kernel aborts the connection when the last device handle goes).
    pub(crate) fn mount_dead(path: &Path) {
        let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").unwrap();
        let data = format!("fd={},rootmode=40000,user_id=0,group_id=0", std::os::fd::AsRawFd::as_raw_fd(&dev));
        let data = std::ffi::CString::new(data).unwrap();
        rustix::mount::mount("metac:dead", path, "fuse.metac", rustix::mount::MountFlags::empty(), data.as_c_str())
            .unwrap();
        drop(dev);
    }

    /// A dead mount of ours is detached; a path with no mount, a mount of another type and a mountinfo line that
    /// only looks alike are left alone.
    #[test]
    fn a_dead_mount_left_behind_is_detached_and_nothing_else() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts FUSE and needs root");
        let dir = tempfile::tempdir().unwrap();
        let (dead, plain, tmp) = (dir.path().join("dead one"), dir.path().join("plain"), dir.path().join("tmp"));
        for d in [&dead, &plain, &tmp] {
            std::fs::create_dir(d).unwrap();
        }
        mount_dead(&dead);
        let e = std::fs::symlink_metadata(&dead).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "a dead FUSE mount answers ENOTCONN");
        rustix::mount::mount("tmpfs", &tmp, "tmpfs", rustix::mount::MountFlags::empty(), None).unwrap();
        assert!(!clear_dead_mount(&plain).unwrap(), "no mount there");
        assert!(!clear_dead_mount(&tmp).unwrap(), "not ours");
        assert!(clear_dead_mount(&dead).unwrap(), "ours and dead");
        assert!(std::fs::symlink_metadata(&dead).unwrap().is_dir(), "the directory is back");
        assert!(!clear_dead_mount(&dead).unwrap(), "once");
        rustix::mount::unmount(&tmp, rustix::mount::UnmountFlags::empty()).unwrap();
        let line = "36 35 0:50 / /a\\040b rw - fuse.metac metac:x rw\n37 35 0:51 / /c rw - fuse.other x rw\n\
                    38 35 0:52 / /d ro,nosuid - fuse metac:64cd0215ffee ro,user_id=0\n39 35 0:53 / /e rw - fuse sshfs rw";
        assert!(is_metac_mount(line, Path::new("/a b")));
        assert!(!is_metac_mount(line, Path::new("/c")) && !is_metac_mount(line, Path::new("/a")));
        assert!(is_metac_mount(line, Path::new("/d")), "mounted by root with mount(2): type fuse, source metac:");
        assert!(!is_metac_mount(line, Path::new("/e")), "another FUSE file system");
    }
}
