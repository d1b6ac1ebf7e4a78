//! metac-fs/2, the wire messages of fs binds (DESIGN section 6). After the resource handshake the binder sends
//! [`Request`]s and the exporter answers each with a [`Response`] carrying the same id, in whatever order the
//! answers are ready: many requests are in flight at once on one stream. The operations mirror FUSE's, on inode
//! numbers the exporter hands out (1 is the export's root) and file handles it opens; a failure is the errno the
//! exporter's kernel gave, so programs on the mount see the error they would see on a local disk.
//!
//! Every message travels as one frame of the one framing helper ([`metac_resource::frame`]: u32 length, postcard),
//! at most [`MAX_FRAME`] bytes, checked before anything is allocated. Decoding a frame is the only way in:
//! [`decode_request`] and [`decode_response`] also refuse names, targets and data longer than the protocol allows,
//! so the rest of the code never sees an oversized value.

use serde::{Deserialize, Serialize};

/// The protocol named in every fs bind's hello.
pub const PROTOCOL: &str = "metac-fs/2";
/// The largest read or write in one request (FUSE's largest with max_pages 256).
pub const MAX_IO: u32 = 1 << 20;
/// The largest frame either side accepts: one [`MAX_IO`] payload and room for the rest of the message.
pub const MAX_FRAME: usize = MAX_IO as usize + 64 * 1024;
/// The longest name of one directory entry (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// The longest symlink target (PATH_MAX less its NUL).
pub const MAX_TARGET: usize = 4095;
/// The most entries in one [`Reply::Dir`].
pub const MAX_DIR_ENTRIES: usize = 1024;
/// The most requests a binder has in flight on one stream; the exporter's queues hold this many, so neither side
/// ever waits on a full queue while the other waits on it.
pub const MAX_IN_FLIGHT: usize = 64;
/// The inode number of the export's root.
pub const ROOT: u64 = 1;
/// The longest extended attribute name (XATTR_NAME_MAX).
pub const MAX_XATTR_NAME: usize = 255;
/// The largest extended attribute value, and the longest list of names (XATTR_SIZE_MAX, XATTR_LIST_MAX).
pub const MAX_XATTR: usize = 64 * 1024;

/// Byte strings (names, data, targets) as postcard's bytes: a length and the bytes, as a sequence of u8 is on the
/// wire too, so the encoding is the same, but read and written in one copy rather than one call per byte (which
/// was a quarter of a binder's CPU reading a file).
mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                // Large ones (the data of reads and writes) in a reused buffer.
                let mut b = crate::buffers::take(v.len());
                b.extend_from_slice(v);
                Ok(b)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// One request of the binder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the binder; the response carries it back.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// The operations, as FUSE names them. `name`s are one path component; `ino`s and `fh`s are the exporter's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The entry `name` in directory `parent`: [`Reply::Entry`], counting one lookup of it.
    Lookup {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    /// The binder's kernel forgot `n` lookups of `ino`: [`Reply::Empty`].
    Forget { ino: u64, n: u64 },
    /// [`Reply::Attr`].
    Getattr { ino: u64 },
    /// Changes what `set` names, through `fh` when given: [`Reply::Attr`].
    Setattr { ino: u64, fh: Option<u64>, set: SetAttr },
    /// Entries of directory `ino` after the position `offset` (0: from the start): [`Reply::Dir`].
    Readdir { ino: u64, offset: u64 },
    /// Opens file `ino` with open(2) `flags`: [`Reply::Opened`].
    Open { ino: u64, flags: i32 },
    /// At most `size` bytes at `offset`: [`Reply::Data`], shorter only at the end of the file.
    Read { fh: u64, offset: u64, size: u32 },
    /// [`Reply::Written`].
    Write {
        fh: u64,
        offset: u64,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// Creates and opens a file for `who`: [`Reply::Created`].
    Create {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        flags: i32,
        who: Who,
    },
    /// [`Reply::Entry`].
    Mkdir {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        who: Who,
    },
    /// [`Reply::Empty`].
    Unlink {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    /// [`Reply::Empty`].
    Rmdir {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    /// renameat2(2) with its `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE): [`Reply::Empty`].
    Rename {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        newparent: u64,
        #[serde(with = "bytes")]
        newname: Vec<u8>,
        flags: u32,
    },
    /// A symlink to `target`, stored as given and never followed by the exporter: [`Reply::Entry`].
    Symlink {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        #[serde(with = "bytes")]
        target: Vec<u8>,
        who: Who,
    },
    /// [`Reply::Data`] with the target.
    Readlink { ino: u64 },
    /// A hard link to `ino`: [`Reply::Entry`].
    Link {
        ino: u64,
        newparent: u64,
        #[serde(with = "bytes")]
        newname: Vec<u8>,
    },
    /// [`Reply::Statfs`].
    Statfs { ino: u64 },
    /// [`Reply::Empty`].
    Fsync { fh: u64, datasync: bool },
    /// Closes `fh`: [`Reply::Empty`].
    Release { fh: u64 },
    /// Entries of directory `ino` after `offset`, each with its attributes and counted as one lookup (but `.` and
    /// `..`), as many as FUSE's readdirplus encoding fits in `size` bytes: [`Reply::DirPlus`].
    ReaddirPlus { ino: u64, offset: u64, size: u32 },
    /// The first request of a bind: the binding user's ids, which the exporter shows its own user's files as
    /// owned by (and maps back in chown and in what is created): [`Reply::Init`] with the exporting user's.
    Init { uid: u32, gid: u32 },
    /// A FIFO, socket, device or empty regular file (`mode` has the S_IFMT bits): [`Reply::Entry`].
    Mknod {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        rdev: u64,
        who: Who,
    },
    /// The value of extended attribute `name`: [`Reply::Data`], or [`Reply::Size`] of it when `size` is 0;
    /// ERANGE when it is longer than `size`.
    Getxattr {
        ino: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        size: u32,
    },
    /// The names of the extended attributes, each ending in NUL: as [`Op::Getxattr`].
    Listxattr { ino: u64, size: u32 },
    /// setxattr(2) with its `flags` (XATTR_CREATE, XATTR_REPLACE): [`Reply::Empty`].
    Setxattr {
        ino: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
        #[serde(with = "bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    /// [`Reply::Empty`].
    Removexattr {
        ino: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    /// fallocate(2) on an open file, with its `mode` (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, ...):
    /// [`Reply::Empty`].
    Fallocate { fh: u64, offset: u64, length: u64, mode: i32 },
    /// lseek(2) on an open file with SEEK_DATA or SEEK_HOLE: [`Reply::Offset`].
    Lseek { fh: u64, offset: i64, whence: i32 },
    /// The blake3 hash of the whole content of the open regular file `fh`, as the exporter reads it now:
    /// [`Reply::Hash`]; EFBIG, without reading it, for a file larger than `max` bytes (one the binder would not
    /// cache). What a binder's content cache is keyed by; an exporter that does not know it answers ENOSYS (see
    /// [`Error::UnknownOp`]).
    Hash { fh: u64, max: u64 },
    /// Opens file `ino` for reading with open(2) `flags` (no access but O_RDONLY, no O_TRUNC: else EINVAL) and, if
    /// it is a regular file of at most `max` bytes, reads all of it: [`Reply::OpenedWith`]. What `cat` of a small
    /// file costs is then one round trip, not two. An exporter that does not know it answers ENOSYS.
    OpenRead { ino: u64, flags: i32, max: u32 },
    /// What the exporter does beyond the operations themselves: [`Reply::Features`]; `want`: the bits of
    /// [`DIR_ATTRS`] kind the binder asks for. An exporter that does not know it answers ENOSYS, and does none.
    Features { want: u64 },
}

/// [`Reply::Features`] bit: the exporter does the operations naming one inode (or a file open on it) in the order
/// they arrive, reads among themselves at once ([`Op::is_ordered`]). A binder may then answer the kernel's
/// writes of cached pages before the exporter has them (write-behind), and send what follows without waiting.
pub const ORDERED: u64 = 1;

/// [`Op::Features`] bit (asked for, and granted): an operation that changes a directory (makes, links or removes
/// a name in it) is answered with the directory's attributes after it ([`Reply::EntryIn`], [`Reply::CreatedIn`],
/// [`Reply::DoneIn`]). The binder's kernel, told the directory changed, asks for them (its permission check of
/// the next name there needs them): one round trip per file of an untar, answered without one.
pub const DIR_ATTRS: u64 = 2;

/// What an operation names: an inode, or a file open on one (see [`Op::is_ordered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    /// An inode number.
    Inode(u64),
    /// A file handle.
    File(u64),
}

/// Who asks for something to be made: the ids of the binder's process, which the new inode is owned by where
/// the bind may say so (the admin right, on an export of root's), else it is the exporting user's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// The process's (filesystem) user id.
    pub uid: u32,
    /// Its (filesystem) group id.
    pub gid: u32,
}

/// What a [`Op::Setattr`] changes; `None` leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Truncate or extend to this size.
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<Time>,
    /// Modification time.
    pub mtime: Option<Time>,
}

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Time {
    /// The exporter's now.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At { sec: i64, nsec: u32 },
}

/// The exporter's answer to the request `id`: a reply, or the errno of the failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The outcome.
    pub result: Result<Reply, i32>,
}

/// The answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// An entry the binder now holds one more lookup of.
    Entry(Attr),
    /// Attributes.
    Attr(Attr),
    /// Directory entries in order; empty at the end.
    Dir(Vec<DirEntry>),
    /// An open file.
    Opened { fh: u64 },
    /// A created and opened file.
    Created { attr: Attr, fh: u64 },
    /// Bytes read, or a symlink's target.
    Data(#[serde(with = "bytes")] Vec<u8>),
    /// Bytes written.
    Written(u32),
    /// Filesystem figures.
    Statfs(Statfs),
    /// Done.
    Empty,
    /// Directory entries in order, each with its attributes when the exporter looked it up (the binder then holds
    /// one more lookup of it); empty at the end.
    DirPlus(Vec<(DirEntry, Option<Attr>)>),
    /// The exporting user's ids, in answer to [`Op::Init`].
    Init { uid: u32, gid: u32 },
    /// How long an extended attribute value or list is.
    Size(u32),
    /// A position in a file.
    Offset(u64),
    /// Changes made on the exporter by others than this bind, told unasked in a response of id 0 (no request
    /// has it): the binder drops what it cached of them.
    Changed(Vec<Change>),
    /// The content hash of a file, in answer to [`Op::Hash`]: blake3 of its `size` bytes.
    Hash { blake3: [u8; 32], size: u64 },
    /// A file opened by [`Op::OpenRead`]; `whole`: `data` is all its content (else `data` is empty: the file was
    /// larger than asked, or not a regular file).
    OpenedWith {
        fh: u64,
        whole: bool,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// What the exporter does beyond the operations, in answer to [`Op::Features`]: [`ORDERED`] and
    /// [`DIR_ATTRS`] bits.
    Features(u64),
    /// [`Reply::Entry`], with the attributes of the directory it was made in after ([`DIR_ATTRS`]).
    EntryIn { attr: Attr, dir: Attr },
    /// [`Reply::Created`], with the attributes of the directory it was made in after ([`DIR_ATTRS`]).
    CreatedIn { attr: Attr, fh: u64, dir: Attr },
    /// [`Reply::Empty`] of a removal, with the attributes of the directory after ([`DIR_ATTRS`]).
    DoneIn { dir: Attr },
}

/// A change made on the exporter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    /// The name `name` in directory `parent` came, went or now leads elsewhere.
    Entry {
        parent: u64,
        #[serde(with = "bytes")]
        name: Vec<u8>,
    },
    /// The data or attributes of inode `ino` changed.
    Inode { ino: u64 },
}

/// An inode's attributes, as stat(2) gives them, with the exporter's inode number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// The exporter's inode number for it (not the one on its disk).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last access, seconds and nanoseconds.
    pub atime: (i64, u32),
    /// Last modification.
    pub mtime: (i64, u32),
    /// Last status change.
    pub ctime: (i64, u32),
    /// File type and permission bits (st_mode).
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device file.
    pub rdev: u32,
    /// Preferred IO size.
    pub blksize: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// An inode number for it (the exporter's when it has handed one out, else the one on its disk).
    pub ino: u64,
    /// Its file type, as the S_IFMT bits of st_mode.
    pub kind: u32,
    /// Where the next read of the directory starts after this entry.
    pub offset: u64,
    /// Its name.
    #[serde(with = "bytes")]
    pub name: Vec<u8>,
}

/// statfs(2) figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// What a frame may not be.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a message of this protocol.
    #[error("malformed metac-fs/2 frame: {0}")]
    Malformed(String),
    /// A field is longer than the protocol allows.
    #[error("metac-fs/2 {what} of {len} bytes is longer than the {max} allowed")]
    TooLong { what: &'static str, len: usize, max: usize },
    /// A request of an operation this side does not know (from a newer binder): the exporter answers it with
    /// ENOSYS and goes on, so a binder can try an operation and fall back.
    #[error("metac-fs/2 request {id} of an operation this node does not know ({op})")]
    UnknownOp { id: u64, op: u32 },
}

fn check(what: &'static str, len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::TooLong { what, len, max });
    }
    Ok(())
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    check("frame", bytes.len(), MAX_FRAME)?;
    metac_resource::frame::decode(bytes).map_err(|e| Error::Malformed(e.to_string()))
}

/// The number of operations this side knows: [`Op`]'s variants, whose index is the first thing after a request's
/// id on the wire.
const OPS: u32 = 31;

/// Decodes a request and checks its bounds. A request of an operation past those this side knows is
/// [`Error::UnknownOp`], with its id, so that it can be answered rather than end the stream.
pub fn decode_request(bytes: &[u8]) -> Result<Request, Error> {
    let r: Request = match body(bytes) {
        Ok(r) => r,
        Err(e) => return Err(unknown_op(bytes).unwrap_or(e)),
    };
    r.op.check()?;
    Ok(r)
}

/// The id and operation number of a request whose operation is past those this side knows (postcard: the id as a
/// varint, then the variant index as a varint).
fn unknown_op(bytes: &[u8]) -> Option<Error> {
    let (id, rest) = postcard::take_from_bytes::<u64>(bytes).ok()?;
    let (op, _) = postcard::take_from_bytes::<u32>(rest).ok()?;
    (op >= OPS).then_some(Error::UnknownOp { id, op })
}

/// Decodes a response and checks its bounds.
pub fn decode_response(bytes: &[u8]) -> Result<Response, Error> {
    let r: Response = body(bytes)?;
    match &r.result {
        Ok(Reply::Data(d) | Reply::OpenedWith { data: d, .. }) => check("data", d.len(), MAX_IO as usize)?,
        Ok(Reply::Size(n)) => check("extended attribute size", *n as usize, MAX_XATTR)?,
        Ok(Reply::Changed(changes)) => {
            check("list of changes", changes.len(), MAX_DIR_ENTRIES)?;
            for c in changes {
                if let Change::Entry { name, .. } = c {
                    check("name", name.len(), MAX_NAME)?;
                }
            }
        }
        Ok(Reply::Dir(entries)) => {
            check("directory listing", entries.len(), MAX_DIR_ENTRIES)?;
            for e in entries {
                check("name", e.name.len(), MAX_NAME)?;
            }
        }
        Ok(Reply::DirPlus(entries)) => {
            check("directory listing", entries.len(), MAX_DIR_ENTRIES)?;
            for (e, _) in entries {
                check("name", e.name.len(), MAX_NAME)?;
            }
        }
        _ => {}
    }
    Ok(r)
}

impl Op {
    /// Checks names, targets and data against the protocol's limits.
    pub fn check(&self) -> Result<(), Error> {
        match self {
            Op::Lookup { name, .. }
            | Op::Create { name, .. }
            | Op::Mkdir { name, .. }
            | Op::Unlink { name, .. }
            | Op::Rmdir { name, .. }
            | Op::Mknod { name, .. } => check("name", name.len(), MAX_NAME),
            Op::Link { newname, .. } => check("name", newname.len(), MAX_NAME),
            Op::Rename { name, newname, .. } => {
                check("name", name.len(), MAX_NAME)?;
                check("name", newname.len(), MAX_NAME)
            }
            Op::Symlink { name, target, .. } => {
                check("name", name.len(), MAX_NAME)?;
                check("symlink target", target.len(), MAX_TARGET)
            }
            Op::Write { data, .. } => check("write", data.len(), MAX_IO as usize),
            Op::Read { size, .. } => check("read", *size as usize, MAX_IO as usize),
            Op::OpenRead { max, .. } => check("read", *max as usize, MAX_IO as usize),
            Op::ReaddirPlus { size, .. } => check("readdirplus buffer", *size as usize, MAX_IO as usize),
            Op::Getxattr { name, size, .. } => {
                check("extended attribute name", name.len(), MAX_XATTR_NAME)?;
                check("extended attribute buffer", *size as usize, MAX_XATTR)
            }
            Op::Listxattr { size, .. } => check("extended attribute buffer", *size as usize, MAX_XATTR),
            Op::Setxattr { name, value, .. } => {
                check("extended attribute name", name.len(), MAX_XATTR_NAME)?;
                check("extended attribute value", value.len(), MAX_XATTR)
            }
            Op::Removexattr { name, .. } => check("extended attribute name", name.len(), MAX_XATTR_NAME),
            _ => Ok(()),
        }
    }

    /// Whether the operation takes the admin right: a change of owner or permission bits, or of an extended
    /// attribute (refused with EPERM without it).
    pub fn takes_admin(&self) -> bool {
        match self {
            Op::Setattr { set, .. } => set.mode.is_some() || set.uid.is_some() || set.gid.is_some(),
            Op::Setxattr { .. } | Op::Removexattr { .. } => true,
            _ => false,
        }
    }

    /// Whether the operation only reads or changes metadata the exporter's kernel has at hand (a few
    /// microseconds, never waiting on data IO or a lock long held): done on the spot, not handed to a worker (a
    /// hand-over between threads costs about what the rest of a round trip does). Making, linking, renaming and
    /// removing names are such (a removed file's blocks are freed when the exporter lets go of its inode, at its
    /// forget), as are a chmod, chown or utimensat; a truncate is not.
    pub fn is_quick(&self) -> bool {
        match self {
            // Opening an existing file (not truncating it) is a lookup of its inode.
            Op::Open { flags, .. } if flags & libc::O_TRUNC == 0 => true,
            // Making a file, but not opening one that is there (a FIFO's open waits for the other end).
            Op::Create { flags, .. } => flags & libc::O_EXCL != 0 && flags & libc::O_TRUNC == 0,
            Op::Setattr { set, .. } => set.size.is_none(),
            Op::Mkdir { .. }
            | Op::Mknod { .. }
            | Op::Symlink { .. }
            | Op::Link { .. }
            | Op::Unlink { .. }
            | Op::Rmdir { .. }
            | Op::Rename { .. }
            | Op::Setxattr { .. }
            | Op::Removexattr { .. } => true,
            Op::Lookup { .. }
            | Op::Forget { .. }
            | Op::Getattr { .. }
            | Op::Release { .. }
            | Op::Readlink { .. }
            | Op::Statfs { .. }
            | Op::Init { .. }
            | Op::Getxattr { .. }
            | Op::Listxattr { .. } => true,
            _ => false,
        }
    }

    /// The inode (or open file) whose earlier operations this one must come after, and whether it must come after
    /// all of them (`true`: a change of its data or attributes, or its close) or only after those that change it
    /// (`false`: a read of it). `None`: an operation of names, free to run beside any other. What an [`ORDERED`]
    /// exporter orders by.
    pub fn is_ordered(&self) -> Option<(Handle, bool)> {
        Some(match *self {
            Op::Read { fh, .. } | Op::Lseek { fh, .. } | Op::Hash { fh, .. } => (Handle::File(fh), false),
            Op::Write { fh, .. } | Op::Fsync { fh, .. } | Op::Fallocate { fh, .. } | Op::Release { fh } => {
                (Handle::File(fh), true)
            }
            Op::Getattr { ino } | Op::OpenRead { ino, .. } => (Handle::Inode(ino), false),
            Op::Open { ino, flags } => (Handle::Inode(ino), flags & libc::O_TRUNC != 0),
            Op::Setattr { ino, .. } | Op::Forget { ino, .. } => (Handle::Inode(ino), true),
            _ => return None,
        })
    }

    /// Whether the operation changes the export (refused with EROFS on a read-only bind).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Op::Setattr { .. }
                | Op::Write { .. }
                | Op::Create { .. }
                | Op::Mkdir { .. }
                | Op::Unlink { .. }
                | Op::Rmdir { .. }
                | Op::Rename { .. }
                | Op::Symlink { .. }
                | Op::Link { .. }
                | Op::Mknod { .. }
                | Op::Setxattr { .. }
                | Op::Removexattr { .. }
                | Op::Fallocate { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        postcard::to_allocvec(v).unwrap()
    }

    /// The encoding is the protocol: these bytes must not change within metac-fs/2.
    #[test]
    fn golden_encodings() {
        let r = Request { id: 7, op: Op::Lookup { parent: 1, name: b"a".to_vec() } };
        assert_eq!(encode(&r), [7, 0, 1, 1, b'a']);
        let r = Request { id: 300, op: Op::Read { fh: 2, offset: 4096, size: 1 << 20 } };
        assert_eq!(encode(&r), [0xac, 0x02, 6, 2, 0x80, 0x20, 0x80, 0x80, 0x40]);
        let ok = Response { id: 7, result: Ok(Reply::Written(5)) };
        assert_eq!(encode(&ok), [7, 0, 6, 5]);
        let r = Request { id: 1, op: Op::ReaddirPlus { ino: 1, offset: 0, size: 4096 } };
        assert_eq!(encode(&r), [1, 19, 1, 0, 0x80, 0x20]);
        let e = DirEntry { ino: 2, kind: 0, offset: 3, name: b"n".to_vec() };
        let ok = Response { id: 1, result: Ok(Reply::DirPlus(vec![(e, None)])) };
        assert_eq!(encode(&ok), [1, 0, 9, 1, 2, 0, 3, 1, b'n', 0]);
        let err = Response { id: 8, result: Err(libc::ENOENT) };
        assert_eq!(encode(&err), [8, 1, 4]);
        let set = Request { id: 1, op: Op::Setattr { ino: 3, fh: None, set: SetAttr::default() } };
        assert_eq!(encode(&set), [1, 3, 3, 0, 0, 0, 0, 0, 0, 0]);
        // metac-fs/2: who makes what, the bind's start, special files, extended attributes, space and holes.
        let who = Who { uid: 1, gid: 2 };
        let mkdir = Request { id: 1, op: Op::Mkdir { parent: 1, name: b"d".to_vec(), mode: 0o755, umask: 0o22, who } };
        assert_eq!(encode(&mkdir), [1, 9, 1, 1, b'd', 0xed, 0x03, 18, 1, 2]);
        let init = Request { id: 1, op: Op::Init { uid: 1000, gid: 1000 } };
        assert_eq!(encode(&init), [1, 20, 0xe8, 7, 0xe8, 7]);
        let seek = Request { id: 1, op: Op::Lseek { fh: 1, offset: -1, whence: libc::SEEK_DATA } };
        assert_eq!(encode(&seek), [1, 27, 1, 1, 6]);
        let replies = [
            (Reply::Init { uid: 0, gid: 0 }, vec![1, 0, 10, 0, 0]),
            (Reply::Size(4), vec![1, 0, 11, 4]),
            (Reply::Offset(8), vec![1, 0, 12, 8]),
        ];
        for (reply, bytes) in replies {
            assert_eq!(encode(&Response { id: 1, result: Ok(reply) }), bytes);
        }
        // The content cache: a file's hash, added at the end so that every earlier index stays as it was.
        let hash = Request { id: 1, op: Op::Hash { fh: 3, max: 128 } };
        assert_eq!(encode(&hash), [1, 28, 3, 0x80, 0x01]);
        let mut bytes = vec![1, 0, 14];
        bytes.extend(0..32u8);
        bytes.extend([0x80, 0x80, 0xc0, 0x01]);
        let blake3 = std::array::from_fn(|i| i as u8);
        let reply = Response { id: 1, result: Ok(Reply::Hash { blake3, size: 3 << 20 }) };
        assert_eq!(encode(&reply), bytes);
        assert_eq!(decode_response(&bytes).unwrap(), reply);
        // A small file read with its open, added after.
        let open = Request { id: 1, op: Op::OpenRead { ino: 2, flags: 0, max: 128 } };
        assert_eq!(encode(&open), [1, 29, 2, 0, 0x80, 0x01]);
        let reply = Response { id: 1, result: Ok(Reply::OpenedWith { fh: 3, whole: true, data: b"ab".to_vec() }) };
        assert_eq!(encode(&reply), [1, 0, 15, 3, 1, 2, b'a', b'b']);
        assert_eq!(decode_response(&encode(&reply)).unwrap(), reply);
        // The exporter's features, added after.
        assert_eq!(encode(&Request { id: 1, op: Op::Features { want: DIR_ATTRS } }), [1, 30, 2]);
        let reply = Response { id: 1, result: Ok(Reply::Features(ORDERED | DIR_ATTRS)) };
        assert_eq!(encode(&reply), [1, 0, 16, 3]);
        assert_eq!(decode_response(&encode(&reply)).unwrap(), reply);
        // A directory's attributes after a change of it, with the answer.
        let dir = Attr { ino: 1, mode: 0o40755, ..Attr::default() };
        let reply = Response { id: 1, result: Ok(Reply::DoneIn { dir: dir.clone() }) };
        let mut bytes = vec![1, 0, 19];
        bytes.extend(encode(&dir));
        assert_eq!(encode(&reply), bytes);
        let attr = Attr { ino: 5, ..Attr::default() };
        let reply = Response { id: 1, result: Ok(Reply::CreatedIn { attr: attr.clone(), fh: 3, dir: dir.clone() }) };
        let mut bytes = vec![1, 0, 18];
        bytes.extend(encode(&attr));
        bytes.push(3);
        bytes.extend(encode(&dir));
        assert_eq!(encode(&reply), bytes);
        assert_eq!(decode_response(&bytes).unwrap(), reply);
        assert_eq!(encode(&Reply::EntryIn { attr, dir })[0], 17);
    }

    /// A request of an operation from a newer binder is told apart from garbage, with its id, so that the exporter
    /// answers it (ENOSYS) and the bind goes on; the last operation this side knows is not such a one.
    #[test]
    fn an_unknown_operation_is_told_with_its_id() {
        let e = decode_request(&[0xac, 0x02, OPS as u8, 7, 7]).unwrap_err();
        assert!(matches!(e, Error::UnknownOp { id: 300, op: OPS }), "{e}");
        let e = decode_request(&[5, 0x80, 0x01]).unwrap_err();
        assert!(matches!(e, Error::UnknownOp { id: 5, op: 128 }), "{e}");
        assert_eq!(decode_request(&[1, 28, 3, 9]).unwrap(), Request { id: 1, op: Op::Hash { fh: 3, max: 9 } });
        // A known operation with a broken body is garbage, not an unknown operation.
        let e = decode_request(&[1, 28, 3]).unwrap_err();
        assert!(matches!(e, Error::Malformed(_)), "{e}");
    }

    #[test]
    fn round_trips() {
        let reqs = [
            Op::Rename { parent: 1, name: b"x".to_vec(), newparent: 2, newname: b"y".to_vec(), flags: 1 },
            Op::Write { fh: 9, offset: u64::MAX, data: vec![1; 1000] },
            Op::Setattr {
                ino: 5,
                fh: Some(3),
                set: SetAttr {
                    mode: Some(0o644),
                    atime: Some(Time::Now),
                    mtime: Some(Time::At { sec: -1, nsec: 5 }),
                    ..SetAttr::default()
                },
            },
            Op::Symlink { parent: 1, name: b"l".to_vec(), target: b"../../etc".to_vec(), who: Who { uid: 1, gid: 2 } },
            Op::Setxattr { ino: 2, name: b"user.a".to_vec(), value: vec![0; 3], flags: libc::XATTR_CREATE },
            Op::Mknod {
                parent: 1,
                name: b"p".to_vec(),
                mode: libc::S_IFIFO | 0o600,
                umask: 0o22,
                rdev: 0,
                who: Who::default(),
            },
        ];
        for (id, op) in reqs.into_iter().enumerate() {
            let r = Request { id: id as u64, op };
            assert_eq!(decode_request(&encode(&r)).unwrap(), r);
        }
        let dir = Response {
            id: 1,
            result: Ok(Reply::Dir(vec![DirEntry { ino: 1, kind: libc::S_IFDIR, offset: 1, name: b".".to_vec() }])),
        };
        assert_eq!(decode_response(&encode(&dir)).unwrap(), dir);
    }

    #[test]
    fn oversized_fields_are_refused_with_what_was_too_long() {
        let long = Request { id: 1, op: Op::Lookup { parent: 1, name: vec![b'a'; MAX_NAME + 1] } };
        let e = decode_request(&encode(&long)).unwrap_err();
        assert_eq!(e.to_string(), "metac-fs/2 name of 256 bytes is longer than the 255 allowed");
        let big = Request { id: 1, op: Op::Write { fh: 1, offset: 0, data: vec![0; MAX_IO as usize + 1] } };
        assert!(matches!(decode_request(&encode(&big)), Err(Error::TooLong { what: "write", .. })));
        let read = Request { id: 1, op: Op::Read { fh: 1, offset: 0, size: MAX_IO + 1 } };
        assert!(matches!(decode_request(&encode(&read)), Err(Error::TooLong { what: "read", .. })));
        let open = Request { id: 1, op: Op::OpenRead { ino: 1, flags: 0, max: MAX_IO + 1 } };
        assert!(matches!(decode_request(&encode(&open)), Err(Error::TooLong { what: "read", .. })));
        let data = vec![0; MAX_IO as usize + 1];
        let opened = Response { id: 1, result: Ok(Reply::OpenedWith { fh: 1, whole: true, data }) };
        assert!(matches!(decode_response(&encode(&opened)), Err(Error::TooLong { what: "data", .. })));
        let target = Request {
            id: 1,
            op: Op::Symlink { parent: 1, name: b"l".to_vec(), target: vec![b'x'; 5000], who: Who::default() },
        };
        assert!(matches!(decode_request(&encode(&target)), Err(Error::TooLong { what: "symlink target", .. })));
        assert!(matches!(decode_request(&vec![0; MAX_FRAME + 1]), Err(Error::TooLong { what: "frame", .. })));
        // A binder asking for a listing larger than any frame, and an exporter answering with too many entries
        // or too long a name, are refused alike.
        let value = Request {
            id: 1,
            op: Op::Setxattr { ino: 1, name: b"user.a".to_vec(), value: vec![0; MAX_XATTR + 1], flags: 0 },
        };
        assert!(matches!(
            decode_request(&encode(&value)),
            Err(Error::TooLong { what: "extended attribute value", .. })
        ));
        let name = Request { id: 1, op: Op::Removexattr { ino: 1, name: vec![b'a'; MAX_XATTR_NAME + 1] } };
        assert!(matches!(decode_request(&encode(&name)), Err(Error::TooLong { what: "extended attribute name", .. })));
        let list = Request { id: 1, op: Op::Listxattr { ino: 1, size: u32::MAX } };
        assert!(matches!(
            decode_request(&encode(&list)),
            Err(Error::TooLong { what: "extended attribute buffer", .. })
        ));
        let size = Response { id: 1, result: Ok(Reply::Size(u32::MAX)) };
        assert!(matches!(decode_response(&encode(&size)), Err(Error::TooLong { what: "extended attribute size", .. })));
        let plus = Request { id: 1, op: Op::ReaddirPlus { ino: 1, offset: 0, size: MAX_IO + 1 } };
        assert!(matches!(decode_request(&encode(&plus)), Err(Error::TooLong { what: "readdirplus buffer", .. })));
        let entry = |name: Vec<u8>| (DirEntry { ino: 2, kind: 0, offset: 1, name }, None);
        let many = Response { id: 1, result: Ok(Reply::DirPlus(vec![entry(b"e".to_vec()); MAX_DIR_ENTRIES + 1])) };
        assert!(matches!(decode_response(&encode(&many)), Err(Error::TooLong { what: "directory listing", .. })));
        let long = Response { id: 1, result: Ok(Reply::DirPlus(vec![entry(vec![b'n'; MAX_NAME + 1])])) };
        assert!(matches!(decode_response(&encode(&long)), Err(Error::TooLong { what: "name", .. })));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        // A length prefix claiming a vector of 2^60 names: postcard checks it against the bytes there are.
        let e = decode_request(&[1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x10]).unwrap_err();
        assert!(e.to_string().starts_with("malformed metac-fs/2 frame"), "{e}");
        assert!(decode_request(&[]).is_err());
        assert!(decode_request(&[1, 200]).is_err(), "no operation 200");
        assert!(decode_response(&[1, 2]).is_err(), "a Result is 0 or 1");
        let mut ok = encode(&Request { id: 1, op: Op::Getattr { ino: 1 } });
        ok.push(0);
        assert!(decode_request(&ok).is_err(), "trailing bytes");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn any_write_round_trips(id: u64, fh: u64, offset: u64, data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let r = Request { id, op: Op::Write { fh, offset, data } };
            proptest::prop_assert_eq!(decode_request(&encode(&r)).unwrap(), r);
        }
    }
}
