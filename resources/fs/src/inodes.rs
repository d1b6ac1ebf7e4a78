//! The binding side's own inode and file numbers. The exporter's numbers belong to one connection (a new stream,
//! after a network break or an exporter restart, has a server with tables of its own), so the kernel is given
//! numbers of the binder's, each kept with the name and parent it was reached by. After a reconnection an inode is
//! found again by walking its path from the root, and an open file is opened again on it (as it was opened, less
//! O_TRUNC, O_CREAT and O_EXCL), the first time it is used; so programs go on with the files and directories they
//! hold. An inode whose path no longer leads to a file of its type (removed or replaced on the exporter while the
//! binder was away, or unlinked while open) answers ESTALE, as NFS does.
//!
//! Lookups are counted on both sides: the kernel's count of each of its inodes, and the exporter's count of the
//! lookups made on the current connection; the exporter is told to forget an inode when the kernel has.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::client::Conn;
use crate::proto::{Attr, Op, Reply, ROOT};

/// The deepest path walked again after a reconnection.
const MAX_DEPTH: usize = 4096;

/// The binder's inodes and open files.
#[derive(Default)]
pub(crate) struct Table {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    /// The exporter's inode numbers of connection `conn`, to the binder's.
    remote: HashMap<u64, u64>,
    /// The inode last reached by each name in a directory.
    by_name: HashMap<(u64, Vec<u8>), u64>,
    conn: u64,
    files: HashMap<u64, File>,
    next_ino: u64,
    next_fh: u64,
    /// Directories' attributes as the exporter told them after a change made through this bind, with when
    /// ([`Table::fresh_attr`]).
    fresh: HashMap<u64, (Attr, std::time::Instant)>,
    /// Counts lookups, to tell which inodes were looked up last ([`Table::coldest`]).
    clock: u64,
}

struct Inode {
    /// The exporter's number for it on connection `conn`.
    remote: u64,
    conn: u64,
    /// The lookups the exporter counted on that connection.
    remote_lookups: u64,
    /// The kernel's lookups.
    lookups: u64,
    parent: u64,
    /// `None` once removed by name (it can then not be found again).
    name: Option<Vec<u8>>,
    /// The S_IFMT bits.
    kind: u32,
    /// The [`State::clock`] of its last lookup.
    seen: u64,
}

struct File {
    remote: u64,
    conn: u64,
    ino: u64,
    flags: i32,
}

/// The binder's numbers an operation carries, as they were before [`Table::to_remote`] swapped them.
#[derive(Clone, Copy, Default)]
pub(crate) struct Local {
    inos: [Option<u64>; 2],
    fh: Option<u64>,
}

impl Local {
    /// Only the file handle `fh`.
    pub(crate) fn with_fh(mut self, fh: u64) -> Local {
        self.fh = Some(fh);
        self
    }
}

/// The inode and file-handle fields of an operation.
fn numbers(op: &mut Op) -> ([Option<&mut u64>; 2], Option<&mut u64>) {
    match op {
        Op::Lookup { parent, .. }
        | Op::Create { parent, .. }
        | Op::Mkdir { parent, .. }
        | Op::Mknod { parent, .. }
        | Op::Unlink { parent, .. }
        | Op::Rmdir { parent, .. }
        | Op::Symlink { parent, .. } => ([Some(parent), None], None),
        Op::Getattr { ino }
        | Op::Readdir { ino, .. }
        | Op::ReaddirPlus { ino, .. }
        | Op::Open { ino, .. }
        | Op::OpenRead { ino, .. }
        | Op::Readlink { ino }
        | Op::Statfs { ino }
        | Op::Getxattr { ino, .. }
        | Op::Listxattr { ino, .. }
        | Op::Setxattr { ino, .. }
        | Op::Removexattr { ino, .. } => ([Some(ino), None], None),
        Op::Setattr { ino, fh, .. } => ([Some(ino), None], fh.as_mut()),
        Op::Rename { parent, newparent, .. } => ([Some(parent), Some(newparent)], None),
        Op::Link { ino, newparent, .. } => ([Some(ino), Some(newparent)], None),
        Op::Read { fh, .. }
        | Op::Write { fh, .. }
        | Op::Fsync { fh, .. }
        | Op::Release { fh }
        | Op::Fallocate { fh, .. }
        | Op::Lseek { fh, .. }
        | Op::Hash { fh, .. } => ([None, None], Some(fh)),
        Op::Forget { .. } | Op::Init { .. } | Op::Features { .. } => ([None, None], None),
    }
}

/// Whether an operation may be sent again on a new connection when the one it went on broke before the answer
/// came: not one that makes, removes or renames a name (it may have been done, and doing it again would fail).
/// Writes are: the kernel sends every write at an offset of its own (O_APPEND is its to keep, with writeback
/// caching, and never reaches the exporter), so sending one twice writes the same bytes to the same place.
/// Nor a hash: an exporter older than the operation ends the stream on it, and would again on every retry (the
/// binder then reads without its cache).
pub(crate) fn retriable(op: &Op) -> bool {
    !matches!(
        op,
        Op::Hash { .. }
            | Op::Create { .. }
            | Op::Mkdir { .. }
            | Op::Mknod { .. }
            | Op::Unlink { .. }
            | Op::Rmdir { .. }
            | Op::Rename { .. }
            | Op::Symlink { .. }
            | Op::Link { .. }
    )
}

impl State {
    /// Enters what the exporter answered for `name` in `parent` on connection `conn`: the binder's number for it,
    /// counting one lookup on both sides.
    fn entered(&mut self, parent: u64, name: &[u8], a: &Attr, conn: u64) -> u64 {
        let current = self.sync(conn);
        self.clock += 1;
        let seen = self.clock;
        if current {
            if let Some(&ino) = self.remote.get(&a.ino) {
                if let Some(n) = self.inodes.get_mut(&ino) {
                    n.seen = seen;
                    n.lookups += 1;
                    n.remote_lookups += 1;
                    self.by_name.insert((parent, name.to_vec()), ino);
                    return ino;
                }
            }
        }
        let kind = a.mode & libc::S_IFMT;
        // The name led, on an earlier connection, to an inode of the same type the kernel still holds: it is that
        // one, found again (so its number stays what the kernel, and the programs on the mount, know).
        if let Some(&ino) = self.by_name.get(&(parent, name.to_vec())) {
            if let Some(n) = self.inodes.get_mut(&ino).filter(|n| n.conn < conn && n.kind == kind) {
                (n.remote, n.conn, n.remote_lookups, n.seen) = (a.ino, conn, 1, seen);
                n.lookups += 1;
                if current {
                    self.remote.insert(a.ino, ino);
                }
                return ino;
            }
        }
        self.next_ino = self.next_ino.max(ROOT) + 1;
        let ino = self.next_ino;
        let named = Some(name.to_vec());
        let node = Inode { remote: a.ino, conn, remote_lookups: 1, lookups: 1, parent, name: named, kind, seen };
        self.inodes.insert(ino, node);
        self.by_name.insert((parent, name.to_vec()), ino);
        if current {
            self.remote.insert(a.ino, ino);
        }
        ino
    }

    /// Moves the table on to connection `conn` if it is newer; whether `conn` is the current one.
    fn sync(&mut self, conn: u64) -> bool {
        if conn > self.conn {
            self.conn = conn;
            self.remote.clear();
        }
        conn == self.conn
    }

    /// Marks inode `ino` found again as `remote` on connection `conn`.
    fn refound(&mut self, ino: u64, remote: u64, conn: u64) {
        let current = self.sync(conn);
        let Some(n) = self.inodes.get_mut(&ino) else { return };
        if n.conn == conn && n.remote == remote {
            n.remote_lookups += 1;
        } else {
            (n.remote, n.conn, n.remote_lookups) = (remote, conn, 1);
        }
        if current {
            self.remote.insert(remote, ino);
        }
    }

    /// The name `name` in `parent` is gone: the inode it led to can no longer be found by it.
    fn unnamed(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let ino = self.by_name.remove(&(parent, name.to_vec()))?;
        let n = self.inodes.get_mut(&ino)?;
        if n.parent == parent && n.name.as_deref() == Some(name) {
            n.name = None;
        }
        Some(ino)
    }

    /// Inode `ino` is now `name` in `parent`.
    fn renamed(&mut self, ino: u64, parent: u64, name: &[u8]) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            (n.parent, n.name) = (parent, Some(name.to_vec()));
            self.by_name.insert((parent, name.to_vec()), ino);
        }
    }
}

impl Table {
    /// Swaps the binder's numbers in `op` for the exporter's on `conn`, finding inodes and files again first where
    /// they were the numbers of an earlier connection. Gives back what was swapped, to swap back (for a retry) or
    /// to read the answer with.
    pub(crate) async fn to_remote(&self, conn: &Conn, op: &mut Op) -> Result<Local, i32> {
        let mut local = Local::default();
        let (inos, fh) = numbers(op);
        for (slot, ino) in local.inos.iter_mut().zip(inos) {
            if let Some(ino) = ino {
                *slot = Some(*ino);
                *ino = self.remote_ino(conn, *ino).await?;
            }
        }
        if let Some(fh) = fh {
            local.fh = Some(*fh);
            *fh = self.remote_fh(conn, *fh).await?;
        }
        Ok(local)
    }

    /// Puts the binder's numbers back in `op`.
    pub(crate) fn to_local(op: &mut Op, local: Local) {
        let (inos, fh) = numbers(op);
        for (slot, ino) in local.inos.iter().zip(inos) {
            if let (Some(v), Some(ino)) = (slot, ino) {
                *ino = *v;
            }
        }
        if let (Some(v), Some(fh)) = (local.fh, fh) {
            *fh = v;
        }
    }

    /// Whether the open file `fh` is one of an earlier connection than `conn` (so its release goes nowhere).
    pub(crate) fn is_stale(&self, fh: u64, conn: u64) -> bool {
        let s = self.state.lock().expect("inodes");
        s.files.get(&fh).is_none_or(|f| f.conn != conn)
    }

    /// The exporter's number for the binder's inode `ino` on `conn`, walking its path again if it was reached on
    /// an earlier connection.
    async fn remote_ino(&self, conn: &Conn, ino: u64) -> Result<u64, i32> {
        if ino == ROOT {
            return Ok(ROOT);
        }
        // The inodes up to one the connection knows (or the root), nearest first.
        let mut walk = Vec::new();
        let mut base = {
            let s = self.state.lock().expect("inodes");
            let mut cur = ino;
            loop {
                if cur == ROOT {
                    break ROOT;
                }
                let n = s.inodes.get(&cur).ok_or(libc::ESTALE)?;
                if n.conn == conn.id() {
                    break n.remote;
                }
                let name = n.name.clone().ok_or(libc::ESTALE)?;
                walk.push((cur, name, n.kind));
                if walk.len() > MAX_DEPTH {
                    return Err(libc::ESTALE);
                }
                cur = n.parent;
            }
        };
        for (ino, name, kind) in walk.into_iter().rev() {
            let a = match conn.call(Op::Lookup { parent: base, name }).await {
                Ok(Reply::Entry(a)) => a,
                Ok(_) => return Err(libc::EIO),
                Err(libc::ENOENT) => return Err(libc::ESTALE),
                Err(e) => return Err(e),
            };
            if a.mode & libc::S_IFMT != kind {
                let _ = conn.call(Op::Forget { ino: a.ino, n: 1 }).await;
                return Err(libc::ESTALE);
            }
            tracing::debug!(ino, remote = a.ino, "fs: found an inode again after a reconnection");
            self.state.lock().expect("inodes").refound(ino, a.ino, conn.id());
            base = a.ino;
        }
        Ok(base)
    }

    /// The exporter's handle of the binder's open file `fh` on `conn`, opening the file again if it was opened on
    /// an earlier connection.
    async fn remote_fh(&self, conn: &Conn, fh: u64) -> Result<u64, i32> {
        let (ino, flags) = {
            let s = self.state.lock().expect("inodes");
            let f = s.files.get(&fh).ok_or(libc::EBADF)?;
            if f.conn == conn.id() {
                return Ok(f.remote);
            }
            (f.ino, f.flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL))
        };
        let remote_ino = self.remote_ino(conn, ino).await?;
        let remote = match conn.call(Op::Open { ino: remote_ino, flags }).await {
            Ok(Reply::Opened { fh }) => fh,
            Ok(_) => return Err(libc::EIO),
            Err(e) => return Err(e),
        };
        tracing::debug!(fh, remote, "fs: opened a file again after a reconnection");
        let kept = match self.state.lock().expect("inodes").files.get_mut(&fh) {
            Some(f) => {
                (f.remote, f.conn) = (remote, conn.id());
                true
            }
            None => false,
        };
        if !kept {
            // Released meanwhile: the new handle is let go.
            let _ = conn.call(Op::Release { fh: remote }).await;
            return Err(libc::EBADF);
        }
        Ok(remote)
    }

    /// Reads the exporter's answer to `op` (sent with the exporter's numbers on connection `conn`; `local` its
    /// binder's numbers) as the kernel is to get it: inode and file numbers the binder's, names and files entered.
    pub(crate) fn answer(&self, op: &Op, local: Local, conn: u64, r: Result<Reply, i32>) -> Result<Reply, i32> {
        let mut s = self.state.lock().expect("inodes");
        // The operation's first inode: the parent of a name, or the inode itself.
        let parent = local.inos[0].unwrap_or(ROOT);
        // A directory's attributes after a change of it ([`proto::DIR_ATTRS`]) are kept for the kernel's next
        // look at it; the answer is the usual one.
        let (r, dir) = match r {
            Ok(Reply::EntryIn { attr, dir }) => (Ok(Reply::Entry(attr)), Some(dir)),
            Ok(Reply::CreatedIn { attr, fh, dir }) => (Ok(Reply::Created { attr, fh }), Some(dir)),
            Ok(Reply::DoneIn { dir }) => (Ok(Reply::Empty), Some(dir)),
            r => (r, None),
        };
        if let Some(mut dir) = dir {
            let at = if matches!(op, Op::Link { .. }) { local.inos[1] } else { local.inos[0] };
            if let Some(at) = at {
                dir.ino = at;
                s.fresh_dir(dir);
            }
        }
        match (op, r) {
            (Op::Release { .. }, r) => {
                if let Some(fh) = local.fh {
                    s.files.remove(&fh);
                }
                r
            }
            (
                Op::Lookup { name, .. } | Op::Mkdir { name, .. } | Op::Mknod { name, .. } | Op::Symlink { name, .. },
                Ok(Reply::Entry(mut a)),
            ) => {
                a.ino = s.entered(parent, name, &a, conn);
                Ok(Reply::Entry(a))
            }
            (Op::Link { newname, .. }, Ok(Reply::Entry(mut a))) => {
                a.ino = s.entered(local.inos[1].unwrap_or(ROOT), newname, &a, conn);
                Ok(Reply::Entry(a))
            }
            (Op::Create { name, flags, .. }, Ok(Reply::Created { mut attr, fh })) => {
                attr.ino = s.entered(parent, name, &attr, conn);
                let fh = s.opened(fh, attr.ino, *flags, conn);
                Ok(Reply::Created { attr, fh })
            }
            (Op::Open { flags, .. }, Ok(Reply::Opened { fh })) => {
                let fh = s.opened(fh, parent, *flags, conn);
                Ok(Reply::Opened { fh })
            }
            (Op::OpenRead { flags, .. }, Ok(Reply::OpenedWith { fh, whole, data })) => {
                let fh = s.opened(fh, parent, *flags, conn);
                Ok(Reply::OpenedWith { fh, whole, data })
            }
            (Op::Getattr { .. } | Op::Setattr { .. }, Ok(Reply::Attr(mut a))) => {
                a.ino = parent;
                s.fresh.remove(&parent);
                Ok(Reply::Attr(a))
            }
            (Op::ReaddirPlus { .. }, Ok(Reply::DirPlus(mut entries))) => {
                for (e, a) in &mut entries {
                    match a {
                        Some(a) => {
                            a.ino = s.entered(parent, &e.name, a, conn);
                            e.ino = a.ino;
                        }
                        None => e.ino = s.shown_ino(e.ino, conn),
                    }
                }
                Ok(Reply::DirPlus(entries))
            }
            (Op::Readdir { .. }, Ok(Reply::Dir(mut entries))) => {
                for e in &mut entries {
                    e.ino = s.shown_ino(e.ino, conn);
                }
                Ok(Reply::Dir(entries))
            }
            (Op::Unlink { name, .. } | Op::Rmdir { name, .. }, Ok(r)) => {
                s.unnamed(parent, name);
                Ok(r)
            }
            (Op::Rename { name, newname, flags, .. }, Ok(r)) => {
                let newparent = local.inos[1].unwrap_or(ROOT);
                let (from, to) = (s.unnamed(parent, name), s.unnamed(newparent, newname));
                if let (Some(to), true) = (to, flags & libc::RENAME_EXCHANGE != 0) {
                    s.renamed(to, parent, name);
                }
                if let Some(from) = from {
                    s.renamed(from, newparent, newname);
                }
                Ok(r)
            }
            (_, r) => r,
        }
    }

    /// The kernel forgot `n` lookups of `ino`: the exporter's number and count to forget on connection `conn`,
    /// once the kernel has forgotten them all (and if the exporter still has it then).
    pub(crate) fn forget(&self, ino: u64, n: u64, conn: u64) -> Option<(u64, u64)> {
        if ino == ROOT {
            return None;
        }
        let mut s = self.state.lock().expect("inodes");
        let node = s.inodes.get_mut(&ino)?;
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return None;
        }
        let node = s.inodes.remove(&ino).expect("there");
        if s.remote.get(&node.remote) == Some(&ino) && node.conn == s.conn {
            s.remote.remove(&node.remote);
        }
        if let Some(name) = node.name {
            let key = (node.parent, name);
            if s.by_name.get(&key) == Some(&ino) {
                s.by_name.remove(&key);
            }
        }
        (node.conn == conn).then_some((node.remote, node.remote_lookups))
    }
}

/// How long a directory's attributes told with a change of it answer the kernel's next look at it: its TTL.
const FRESH: std::time::Duration = crate::mount::TTL;

/// Directories with attributes kept, at most (a listing's worth: an untar makes files in a few at a time).
const MAX_FRESH: usize = 1024;

impl Table {
    /// When the kernel holds more than `keep` inodes: the names (parent and name) of the ones looked up longest
    /// ago, a tenth of `keep` past it, for the kernel to drop (then forget, and the exporter let go of them). Each
    /// counts as looked up now, so that one the kernel keeps (open, or a directory in use) is not named again at
    /// once.
    pub(crate) fn coldest(&self, keep: usize) -> Vec<(u64, Vec<u8>)> {
        let mut s = self.state.lock().expect("inodes");
        if s.inodes.len() <= keep {
            return Vec::new();
        }
        let n = s.inodes.len() - keep + keep / 10;
        let mut by_age: Vec<(u64, u64)> =
            s.inodes.iter().filter(|(_, node)| node.name.is_some()).map(|(&ino, node)| (node.seen, ino)).collect();
        if n < by_age.len() {
            by_age.select_nth_unstable(n);
            by_age.truncate(n);
        }
        s.clock += 1;
        let now = s.clock;
        by_age
            .into_iter()
            .filter_map(|(_, ino)| {
                let node = s.inodes.get_mut(&ino)?;
                node.seen = now;
                Some((node.parent, node.name.clone()?))
            })
            .collect()
    }

    /// The attributes of directory `ino` as the exporter told them after this bind's last change of it, if that
    /// was within the TTL and nothing has been said of it since; taken (the kernel keeps them for the TTL).
    pub(crate) fn fresh_attr(&self, ino: u64) -> Option<Attr> {
        let mut s = self.state.lock().expect("inodes");
        let (a, at) = s.fresh.remove(&ino)?;
        (at.elapsed() < FRESH).then_some(a)
    }

    /// The exporter told of a change of `ino` (or in it): what was kept of it is stale.
    pub(crate) fn stale(&self, ino: u64) {
        self.state.lock().expect("inodes").fresh.remove(&ino);
    }

    /// The binder's number of the exporter's inode `remote` of connection `conn`, if the kernel holds it.
    pub(crate) fn local_of(&self, remote: u64, conn: u64) -> Option<u64> {
        if remote == ROOT {
            return Some(ROOT);
        }
        let s = self.state.lock().expect("inodes");
        (s.conn == conn).then(|| s.remote.get(&remote).copied()).flatten()
    }
}

impl State {
    /// Keeps directory `dir`'s attributes (told after a change of it), unless newer ones are kept (answers of
    /// changes of one directory may come in another order than the changes).
    fn fresh_dir(&mut self, dir: Attr) {
        let now = std::time::Instant::now();
        if self.fresh.len() >= MAX_FRESH {
            self.fresh.retain(|_, (_, at)| now.duration_since(*at) < FRESH);
            if self.fresh.len() >= MAX_FRESH {
                return;
            }
        }
        let newer = |kept: &Attr| (kept.ctime, kept.mtime) > (dir.ctime, dir.mtime);
        match self.fresh.get(&dir.ino) {
            Some((kept, _)) if newer(kept) => {}
            _ => {
                self.fresh.insert(dir.ino, (dir, now));
            }
        }
    }

    fn opened(&mut self, remote: u64, ino: u64, flags: i32, conn: u64) -> u64 {
        self.next_fh += 1;
        self.files.insert(self.next_fh, File { remote, conn, ino, flags });
        self.next_fh
    }

    /// The number a directory entry is listed with: the binder's when the inode is known, else the exporter's
    /// (only what getdents shows).
    fn shown_ino(&mut self, remote: u64, conn: u64) -> u64 {
        if self.sync(conn) {
            if let Some(&ino) = self.remote.get(&remote) {
                return ino;
            }
        }
        remote
    }
}
