//! The exporting side of the `fs` kind: the export's directory is opened once (as the user who exported it, and
//! checked to be the very directory exported), and each bind is served from it by a [`crate::server::Server`] of
//! its own, beneath the ref's sub-path if it has one, read-only unless both the export and the ref grant write,
//! with the admin right (owners, permission bits, extended attributes) only where both grant it.
//!
//! One bind: a task reads requests (bounded frames, bounded decoder) into a queue; [`WORKERS`] threads, each with
//! the exporting user's filesystem identity ([`Caller::act`]), take them in turn, do the syscalls and queue the
//! responses; a task writes them back. Both queues hold [`MAX_IN_FLIGHT`] requests, the most a binder may have
//! outstanding, so slow operations do not hold up quick ones and nothing waits on a full queue for ever.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use metac_resource::{frame, Bind, BoxFuture, BoxStream, Caller, Error, ExportSpec, Exporter, Rights};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::{self, Request, Response, MAX_FRAME, MAX_IN_FLIGHT};
use crate::server::Server;
use crate::FsExport;

/// Worker threads per bind.
pub const WORKERS: usize = 4;

/// An open fs export.
pub(crate) struct FsExporter {
    root: OwnedFd,
    owner: Caller,
    writable: bool,
    admin: bool,
    name: String,
}

impl FsExporter {
    /// Opens the exported directory as its owner.
    pub(crate) fn open(spec: ExportSpec<FsExport>) -> Result<FsExporter, Error> {
        let o = &spec.options;
        let root = spec.owner.act(|| crate::open_root(&o.path, o.id)).map_err(|e| {
            Error::Unavailable(format!("export {} ({}) cannot be opened: {e}", spec.name, o.path.display()))
        })?;
        let (writable, admin) = (spec.rights.contains(Rights::WRITE), spec.rights.contains(Rights::ADMIN));
        Ok(FsExporter { root, owner: spec.owner, writable, admin, name: spec.name })
    }
}

impl Exporter for FsExporter {
    fn serve(
        self: Arc<Self>,
        bind: Bind,
        stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            if !bind.rights.contains(Rights::READ) {
                return Err(Error::Refused { by: "this node".into(), reason: "the ref does not grant read".into() });
            }
            let read_only = !(self.writable && bind.rights.contains(Rights::WRITE));
            let root = match &bind.path {
                Some(sub) => self.owner.act(|| Server::beneath(&self.root, sub)),
                None => self.root.try_clone(),
            }
            .map_err(|e| Error::Unavailable(format!("export {}: sub-path {:?}: {e}", self.name, bind.path)))?;
            let admin = self.admin && bind.rights.contains(Rights::ADMIN);
            let server = Server::new(root, read_only)?.with_admin(admin).exported_by(self.owner.uid, self.owner.gid);
            let server = Arc::new(server);
            serve(server, self.owner.clone(), stream, cancel).await
        })
    }
}

/// Serves one bind's stream until the binder closes it, breaks a rule of the protocol, or `cancel` fires.
pub async fn serve(
    server: Arc<Server>,
    owner: Caller,
    stream: BoxStream,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let (mut rd, wr) = tokio::io::split(stream);
    // A frame's length and body leave in one write (one transport frame), not two.
    let mut wr = tokio::io::BufWriter::with_capacity(64 << 10, wr);
    let (req_tx, req_rx) = mpsc::channel::<Request>(MAX_IN_FLIGHT);
    let (resp_tx, mut resp_rx) = mpsc::channel::<Response>(MAX_IN_FLIGHT);
    let req_rx = Arc::new(Mutex::new(req_rx));
    for i in 0..WORKERS {
        let (server, owner, req_rx, resp_tx) =
            (Arc::clone(&server), owner.clone(), Arc::clone(&req_rx), resp_tx.clone());
        std::thread::Builder::new().name(format!("metac-fs-{i}")).spawn(move || {
            // The whole loop runs with the exporting user's identity: the kernel checks every call as theirs.
            let r = owner.act(|| {
                own_umask()?;
                loop {
                    // One worker waits on the queue at a time; the others wait for the lock.
                    let next = req_rx.lock().expect("request queue").blocking_recv();
                    let Some(req) = next else { return Ok::<(), std::io::Error>(()) };
                    let result = server.handle(req.op);
                    if resp_tx.blocking_send(Response { id: req.id, result }).is_err() {
                        return Ok(());
                    }
                }
            });
            if let Err(e) = r {
                tracing::warn!("fs worker cannot act as the exporting user: {e}");
            }
        })?;
    }
    drop(resp_tx);
    let reader = async {
        loop {
            let body = match read_body(&mut rd).await {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            };
            let req = proto::decode_request(&body).map_err(|e| Error::Protocol(e.to_string()))?;
            if req_tx.send(req).await.is_err() {
                return Err(Error::Protocol("the fs workers stopped".into()));
            }
        }
    };
    let writer = async {
        while let Some(resp) = resp_rx.recv().await {
            frame::write(&mut wr, &resp).await?;
        }
        Ok::<(), Error>(())
    };
    let r = tokio::select! {
        () = cancel.cancelled() => Ok(()),
        r = reader => r,
        r = writer => r,
    };
    let _ = wr.shutdown().await;
    r
}

/// Gives the calling thread a umask of its own, 0: the binder's kernel has applied the binding process's umask to
/// the modes it sends (and sent it, which the server applies too), so the node's must not narrow them again.
fn own_umask() -> std::io::Result<()> {
    // SAFETY: unshare(CLONE_FS) takes no pointers; it gives the calling thread its own root, cwd and umask.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: umask takes a plain mode and cannot fail; after the unshare it changes this thread's alone.
    unsafe { libc::umask(0) };
    Ok(())
}

/// Reads one frame's body, `None` at a clean end of stream; the length is checked before anything is allocated.
pub(crate) async fn read_body<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, Error> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Io(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(frame::Error::TooLarge { len, max: MAX_FRAME }.into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}
