//! metac-fs: the `fs` kind. A directory tree exported by one node (`metac fs export local:PATH`) and mounted on
//! another with FUSE (`metac fs bind MOUNTPOINT REF`), over metac-fs/2 (DESIGN section 6).
//!
//! - [`proto`]: the wire messages and their bounded decoders;
//! - [`server`]: the exporting side's filesystem logic, on O_PATH handles, every name resolved beneath the export;
//! - `exporter`: the per-export object, serving each bind's stream with a few worker threads as the exporting user;
//! - [`client`]: the binding side's pipelined connection (many requests in flight on one stream);
//! - [`mount`]: the FUSE glue (fuser), a library other kinds use to mount an fs ref (its `cached` part serves
//!   opens from the content cache);
//! - `session`: the bind as a session the node runs (mounted until unbind, revocation, expiry or stop);
//! - [`cache`]: the binding side's content cache of read-only files, by blake3 hash; [`digest`] the exporting
//!   side's hashes of files and its figures; [`api`]: `GET /v1/fs/stats`.
//!
//! The node may run as root; an export is opened, and served, as the user who made it ([`Caller::act`]), so a
//! binder gets no more of the tree than that user's own rights give.

pub mod api;
pub mod buffers;
pub mod cache;
pub mod client;
pub mod digest;
mod exporter;
mod inodes;
pub mod mount;
mod order;
pub mod proto;
pub mod server;
mod session;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use metac_resource::{BoxFuture, Caller, Ctx, Error, ExportSpec, Exporter, Kind, Prepared, Ref, ResourceKind, Session};
use serde::{Deserialize, Serialize};

pub use proto::PROTOCOL;
pub use session::FsSession;

/// What an fs export records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsExport {
    /// The exported directory: absolute, symlinks resolved at export.
    pub path: PathBuf,
    /// The directory exported (device and inode), checked at every later open so that a path swapped for another
    /// directory is not served in its place (set by the node at export).
    #[serde(default)]
    pub id: Option<(u64, u64)>,
}

/// What an fs bind asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsBind {
    /// Where to mount: an existing directory, absolute.
    pub mountpoint: PathBuf,
    /// Mount read-only even if the ref grants write.
    #[serde(default)]
    pub read_only: bool,
    /// Seconds an operation waits for an exporter that is away before it fails with EIO [default: 60].
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Serve read-only files from the node's content cache (by blake3 hash, checked against the exporter's; see
    /// [`cache`]): a file read again, through this bind or a later one, is not fetched again. Only on a read-only
    /// mount (the ref lacks write, or `read_only`); ignored on a writable one.
    #[serde(default)]
    pub cache: bool,
}

/// The `fs` kind: one per node (it holds the node's content cache and the figures of its exports).
#[derive(Clone)]
pub struct Fs {
    inner: Arc<Inner>,
}

struct Inner {
    cache_limit: u64,
    /// Made at first use, in the kind's state directory.
    cache: OnceLock<Arc<cache::Cache>>,
    digests: Arc<digest::Digests>,
}

impl Default for Fs {
    fn default() -> Fs {
        Fs::with_cache_limit(cache::DEFAULT_LIMIT)
    }
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").field("cache_limit", &self.inner.cache_limit).finish_non_exhaustive()
    }
}

impl Fs {
    /// The kind with a content cache of at most `limit` bytes (`metac node --cache-size`).
    pub fn with_cache_limit(limit: u64) -> Fs {
        Fs { inner: Arc::new(Inner { cache_limit: limit, cache: OnceLock::new(), digests: Arc::default() }) }
    }

    /// The node's content cache, in `<state_dir>/cache`.
    fn cache(&self, ctx: &Ctx) -> Arc<cache::Cache> {
        let limit = self.inner.cache_limit;
        Arc::clone(self.inner.cache.get_or_init(|| Arc::new(cache::Cache::new(ctx.state_dir.join("cache"), limit))))
    }

    /// What `GET /v1/fs/stats` answers: content served and files hashed by this node's exports, and its cache.
    pub fn stats(&self) -> api::Stats {
        let cache = match self.inner.cache.get() {
            Some(c) => c.stats(),
            None => cache::Stats { limit: self.inner.cache_limit, ..Default::default() },
        };
        api::Stats { served_bytes: self.inner.digests.served(), hashes: self.inner.digests.hashes(), cache }
    }
}

impl ResourceKind for Fs {
    type ExportOptions = FsExport;
    type BindOptions = FsBind;

    fn kind(&self) -> Kind {
        Kind::Fs
    }

    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn prepare(&self, source: &str, options: Option<FsExport>, caller: &Caller) -> Result<Prepared<FsExport>, Error> {
        let path = match options {
            Some(o) => o.path,
            None => PathBuf::from(source.strip_prefix("local:").unwrap_or(source)),
        };
        if !path.is_absolute() {
            return Err(Error::BadOptions(format!(
                "{}: name the directory to export as local:/absolute/path",
                path.display()
            )));
        }
        // Resolved, and opened, as the caller: a directory the caller may not read is not exported.
        let (real, id) = caller
            .act(|| {
                let real = std::fs::canonicalize(&path)?;
                let dir = open_root(&real, None)?;
                let m = std::fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)))?;
                Ok::<_, std::io::Error>((real, (m.dev(), m.ino())))
            })
            .map_err(|e| cannot(&path, caller, e))?;
        let name = real.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
        Ok(Prepared { source: real.display().to_string(), name, options: FsExport { path: real, id: Some(id) } })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<FsExport>,
        _ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        let digests = Arc::clone(&self.inner.digests);
        Box::pin(async move { Ok(Arc::new(exporter::FsExporter::open(spec, digests)?) as Arc<dyn Exporter>) })
    }

    fn bind(&self, _reference: &Ref, options: FsBind, caller: &Caller, ctx: &Ctx) -> Result<Box<dyn Session>, Error> {
        check_mountpoint(&options.mountpoint, caller)?;
        let session = FsSession::new(options, caller.clone(), Arc::clone(&ctx.store));
        Ok(Box::new(session.with_cache(self.cache(ctx))))
    }

    fn routes(&self, ctx: Ctx) -> axum::Router {
        // The cache is known (and its figures with it) from the start, not only from the first bind.
        self.cache(&ctx);
        api::routes(self.clone())
    }

    /// A node killed without stopping (kill -9, a crash) leaves its mounts behind, dead: every access answers
    /// ENOTCONN. Each mount is recorded while it is up; at the next start the dead ones are detached.
    fn recover(&self, ctx: &Ctx) {
        // The cache's index is rebuilt, and what a crash left half written removed, before any bind uses it.
        let cache = self.cache(ctx);
        if let Err(e) = cache.load() {
            tracing::warn!("fs: cannot open the content cache {}: {e}", cache.dir().display());
        }
        let Ok(records) = ctx.store.list() else { return };
        for (key, _) in records {
            let Some(path) = key.strip_prefix(session::MOUNT_KEY) else { continue };
            match mount::clear_dead_mount(std::path::Path::new(path)) {
                Ok(true) => tracing::info!(mountpoint = path, "detached a mount left by a node that did not stop"),
                Ok(false) => {
                    tracing::debug!(mountpoint = path, "a recorded mount is not a dead one of ours: left alone")
                }
                Err(e) => tracing::warn!(mountpoint = path, "cannot detach a dead mount: {e}"),
            }
            let _ = ctx.store.remove(&key);
        }
    }
}

/// A mount point must be an absolute path to a directory the caller can reach and owns (or the caller is root), as
/// fusermount3 asks: nobody mounts over a directory of someone else's.
fn check_mountpoint(mp: &Path, caller: &Caller) -> Result<(), Error> {
    if !mp.is_absolute() {
        return Err(Error::BadOptions(format!("{}: the mount point must be an absolute path", mp.display())));
    }
    let m = caller
        .act(|| std::fs::metadata(mp))
        .map_err(|e| Error::BadOptions(format!("cannot mount on {}: {e}", mp.display())))?;
    if !m.is_dir() {
        return Err(Error::BadOptions(format!("cannot mount on {}: not a directory", mp.display())));
    }
    if !caller.is_root() && m.uid() != caller.uid {
        return Err(Error::Refused {
            by: "this node".into(),
            reason: format!("{caller} may mount only on a directory of its own, and {} is not", mp.display()),
        });
    }
    Ok(())
}

/// Opens the export's directory: O_PATH would do for the server, but reading it proves the user may list it.
fn open_root(path: &Path, id: Option<(u64, u64)>) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let fd =
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    if let Some(id) = id {
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_dev, st.st_ino) != id {
            return Err(std::io::Error::other(format!(
                "{} is no longer the directory that was exported (replaced since); export it again",
                path.display()
            )));
        }
    }
    Ok(fd)
}

fn cannot(path: &Path, caller: &Caller, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Refused {
            by: "this node".into(),
            reason: format!(
                "{caller} may not read {} ({e}): the node exports a tree as the user who asks",
                path.display()
            ),
        },
        _ => Error::BadOptions(format!("cannot export {}: {e} (name a directory)", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metac_resource::{ResourceId, Rights};
    use std::os::unix::fs::PermissionsExt;

    /// A user exports a tree only as far as the kernel lets that user go: not a directory it may not read, and
    /// once exported, every request is served with its rights (a root-only file in the tree stays closed, a file
    /// made through the bind is the user's). Needs root (it acts as another user); under CI it runs and fails
    /// loudly without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tree_is_served_only_as_far_as_the_exporting_user_may_go() {
        use crate::proto::{Op, Reply, ROOT};
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test acts as another user and needs root");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (shared, private) = (dir.path().join("shared"), dir.path().join("private"));
        std::fs::create_dir(&shared).unwrap();
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(shared.join("root-only"), b"root's").unwrap();
        std::fs::set_permissions(shared.join("root-only"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(shared.join("public"), b"everyone's").unwrap();
        let nobody = Caller { uid: 65534, gid: 65534, groups: vec![] };

        let e = ResourceKind::prepare(&Fs::default(), private.to_str().unwrap(), None, &nobody).unwrap_err();
        assert!(matches!(e, Error::Refused { .. }) && e.to_string().contains("uid 65534 may not read"), "{e}");
        let p = ResourceKind::prepare(&Fs::default(), shared.to_str().unwrap(), None, &nobody).unwrap();
        let spec = ExportSpec {
            id: ResourceId([1; 16]),
            kind: Kind::Fs,
            name: p.name,
            rights: Rights::READ | Rights::WRITE,
            owner: nobody.clone(),
            options: p.options,
        };
        let exporter = Arc::new(exporter::FsExporter::open(spec, Arc::default()).unwrap());
        let (a, b) = tokio::io::duplex(1 << 16);
        let bind = metac_resource::Bind {
            peer: metac_resource::NodeKey([7; 32]),
            rights: Rights::READ | Rights::WRITE,
            path: None,
            expires: None,
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(Exporter::serve(exporter, bind, Box::new(b), cancel.clone()));
        let c = client::Conn::start(Box::new(a), None);
        let lookup = |name: &str| {
            let c = c.clone();
            let name = name.as_bytes().to_vec();
            async move {
                match c.call(Op::Lookup { parent: ROOT, name }).await? {
                    Reply::Entry(a) => Ok::<_, i32>(a),
                    r => panic!("{r:?}"),
                }
            }
        };
        let secret = lookup("root-only").await.unwrap();
        assert_eq!(c.call(Op::Open { ino: secret.ino, flags: libc::O_RDONLY }).await, Err(libc::EACCES));
        let public = lookup("public").await.unwrap();
        assert!(matches!(c.call(Op::Open { ino: public.ino, flags: libc::O_RDONLY }).await, Ok(Reply::Opened { .. })));
        assert_eq!(c.call(Op::Open { ino: public.ino, flags: libc::O_WRONLY }).await, Err(libc::EACCES));
        let made = c
            .call(Op::Mkdir { parent: ROOT, name: b"made".to_vec(), mode: 0o755, umask: 0, who: Default::default() })
            .await
            .unwrap();
        let Reply::Entry(made) = made else { panic!() };
        assert_eq!((made.uid, made.gid), (65534, 65534), "what the binder makes is the exporting user's");
        // Changing ownership is the kernel's to allow, and it does not let nobody give a file away.
        let set = proto::SetAttr { uid: Some(0), ..proto::SetAttr::default() };
        assert_eq!(c.call(Op::Setattr { ino: made.ino, fh: None, set }).await, Err(libc::EPERM));
        cancel.cancel();
    }

    /// Nobody mounts over someone else's directory, nor on a path it cannot reach. Needs root (it acts as another
    /// user); under CI it runs and fails loudly without it.
    #[test]
    fn a_user_mounts_only_on_a_directory_of_its_own() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test acts as another user and needs root");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (roots, own, file) = (dir.path().join("roots"), dir.path().join("own"), dir.path().join("file"));
        std::fs::create_dir(&roots).unwrap();
        std::fs::create_dir(&own).unwrap();
        std::os::unix::fs::chown(&own, Some(65534), Some(65534)).unwrap();
        std::fs::write(&file, b"").unwrap();
        let nobody = Caller { uid: 65534, gid: 65534, groups: vec![] };
        let e = check_mountpoint(&roots, &nobody).unwrap_err();
        assert!(matches!(e, Error::Refused { .. }) && e.to_string().contains("a directory of its own"), "{e}");
        check_mountpoint(&own, &nobody).unwrap();
        check_mountpoint(&roots, &Caller::root()).unwrap();
        let e = check_mountpoint(&file, &Caller::root()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = check_mountpoint(Path::new("relative"), &Caller::root()).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = check_mountpoint(&dir.path().join("missing"), &Caller::root()).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    #[test]
    fn an_export_names_a_directory_by_its_real_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let src = format!("local:{}", dir.path().join("link").display());
        let p = ResourceKind::prepare(&Fs::default(), &src, None, &Caller::root()).unwrap();
        assert_eq!(p.options.path, dir.path().join("real").canonicalize().unwrap());
        assert_eq!(p.name, "real");
        assert!(p.options.id.is_some());
        let e = ResourceKind::prepare(&Fs::default(), "local:relative", None, &Caller::root()).unwrap_err();
        assert!(e.to_string().contains("local:/absolute/path"), "{e}");
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let e = ResourceKind::prepare(&Fs::default(), dir.path().join("file").to_str().unwrap(), None, &Caller::root())
            .unwrap_err();
        assert!(e.to_string().contains("name a directory"), "{e}");
        // A directory swapped after the export is not served in its place.
        std::fs::rename(dir.path().join("real"), dir.path().join("old")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let e = open_root(&p.options.path, p.options.id).unwrap_err();
        assert!(e.to_string().contains("no longer the directory that was exported"), "{e}");
    }
}
