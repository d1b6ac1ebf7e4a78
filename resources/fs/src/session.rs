//! An fs bind as a session the node runs (`metac fs bind MOUNTPOINT REF`). The first run connects to the exporter,
//! checks that it serves the export's root, and mounts; the mount then stays up across reconnections (the node
//! retries a lost exporter with backoff). While the exporter is away operations wait for it up to the bind's
//! timeout ([`crate::mount`]); inodes and open files of before a break are found again after it. Unbind,
//! revocation, expiry and node stop unmount ([`Session::close`]).
//!
//! The mount is made by the node (with mount(2) as root; through fusermount3 otherwise, as sshfs is). A node that
//! is root opens every mount to all users (`allow_other`), as a local disk is, with the kernel checking permissions
//! (`default_permissions`) against the owners and modes it shows; it mounts only on a directory the caller owns
//! ([`crate::Fs`] checks, as fusermount3 does).

use std::sync::Arc;
use std::time::Duration;

use metac_resource::{BoxFuture, Caller, Error, KindStore, Link, Rights, Session};
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::client::Conn;
use crate::mount::{Mount, Options, Phase, Slot};
use crate::proto::{Op, Reply, ROOT};
use crate::FsBind;

/// The kind-store key prefix of a mount that is up (`mount:/path`), so that the next start can detach it if the
/// node was killed without unmounting ([`crate::Fs`]'s `recover`).
pub const MOUNT_KEY: &str = "mount:";

/// One fs bind.
pub struct FsSession {
    options: FsBind,
    owner: Caller,
    slot: Slot,
    mount: Option<Mount>,
    store: Arc<dyn KindStore>,
    cache: Option<Arc<Cache>>,
}

impl FsSession {
    /// A bind that will mount at `options.mountpoint` for `owner`, recording its mount in `store` while it is up.
    pub fn new(options: FsBind, owner: Caller, store: Arc<dyn KindStore>) -> FsSession {
        FsSession { options, owner, slot: Slot::default(), mount: None, store, cache: None }
    }

    /// The same bind serving read-only files from `cache` if its options ask for it ([`FsBind::cache`]).
    pub fn with_cache(mut self, cache: Arc<Cache>) -> FsSession {
        self.cache = self.options.cache.then_some(cache);
        self
    }

    fn record_key(&self) -> String {
        format!("{MOUNT_KEY}{}", self.options.mountpoint.display())
    }
}

impl Session for FsSession {
    fn target(&self) -> String {
        self.options.mountpoint.display().to_string()
    }

    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let stream = link.open().await?;
            let conn = Conn::start_in(stream, Some(Arc::clone(link.status())), Some(self.slot.replay()));
            // The exporting user's files are shown as the binding user's (sshfs's idmap=user).
            let (uid, gid) = (self.owner.uid, self.owner.gid);
            match conn.call(Op::Init { uid, gid }).await {
                Ok(Reply::Init { uid, gid }) => tracing::debug!(uid, gid, "the exporter serves as this user"),
                Ok(r) => return Err(Error::Protocol(format!("unexpected answer to init: {r:?}"))),
                Err(e) => {
                    let e = std::io::Error::from_raw_os_error(e);
                    return Err(Error::Unavailable(format!("the exporter refused the bind's start: {e}")));
                }
            }
            let features = conn.ask_features().await;
            tracing::debug!(features, "what the exporter does beyond the operations");
            match conn.call(Op::Getattr { ino: ROOT }).await {
                Ok(Reply::Attr(a)) if a.mode & libc::S_IFMT == libc::S_IFDIR => {}
                Ok(r) => return Err(Error::Protocol(format!("the exporter's root is not a directory: {r:?}"))),
                Err(e) => {
                    let e = std::io::Error::from_raw_os_error(e);
                    return Err(Error::Unavailable(format!("the exporter cannot serve its root: {e}")));
                }
            }
            self.slot.set(Phase::Up(conn.clone()));
            if self.mount.is_none() {
                let rights = link.reference().token.effective().rights;
                let options = Options {
                    read_only: self.options.read_only || !rights.contains(Rights::WRITE),
                    // SAFETY: geteuid has no preconditions and cannot fail.
                    allow_other: unsafe { libc::geteuid() } == 0,
                    source: format!("metac:{}", &link.reference().token.resource().to_string()[..12]),
                    stall: self.options.timeout.map(Duration::from_secs),
                    cache: self.cache.clone(),
                    max_known: None,
                };
                let mp = self.options.mountpoint.clone();
                let mount = Mount::new(&mp, self.slot.clone(), &options).map_err(|e| {
                    Error::Io(std::io::Error::new(e.kind(), format!("cannot mount on {}: {e}", mp.display())))
                })?;
                self.mount = Some(mount);
                if let Err(e) = self.store.put(&self.record_key(), b"") {
                    tracing::warn!("cannot record the mount on {}: {e}", mp.display());
                }
            }
            link.up();
            tokio::select! {
                () = cancel.cancelled() => {
                    conn.close();
                    Ok(())
                }
                () = conn.closed().cancelled() => {
                    self.slot.set(Phase::Away);
                    Err(Error::Unreachable("the connection to the exporter ended".into()))
                }
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.slot.set(Phase::Closed);
            if let Some(m) = self.mount.take() {
                m.unmount().await;
                let _ = self.store.remove(&self.record_key());
            }
        })
    }
}
