//! The binding side of the `file` kind.
//!
//! [`Endpoint`] (`metac file bind`) is a local NBD endpoint on a Unix socket: any NBD client (`nbdinfo`,
//! `nbdcopy`, `qemu-img`, qemu) connects to it as to nbdkit, and each connection is spliced to a stream of its own
//! to the exporter. One stream is kept open ahead of the next client, with the server's NBD greeting already read:
//! it makes the next connection faster, and its end tells the session at once that the exporter went away (the
//! node then retries with backoff, so the endpoint comes back by itself with the exporter). The exporter gives a
//! handshake [`NEGOTIATION_TIMEOUT`]; a standby stream unused for [`STANDBY_REFRESH`] is replaced by a fresh one.
//! The socket is made, and removed, as the user who bound it ([`Caller::act`]): it is that user's, where that user
//! may write.
//!
//! [`CatSession`] (`metac file cat`) reads the whole export once, in order, into a pipe the API streams out.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use metac_resource::{BoxFuture, BoxStream, Caller, Error, Link, Session, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::nbd::proto::Greeting;
use crate::NEGOTIATION_TIMEOUT;

/// How long a standby stream waits for a client before it is replaced, well within the exporter's handshake limit.
pub const STANDBY_REFRESH: std::time::Duration = std::time::Duration::from_secs(40);
const _: () =
    assert!(STANDBY_REFRESH.as_secs() * 4 <= NEGOTIATION_TIMEOUT.as_secs() * 3, "refresh the standby in time");

/// A local NBD endpoint for a remote file.
pub struct Endpoint {
    socket: PathBuf,
    owner: Caller,
    listener: Option<UnixListener>,
}

impl Endpoint {
    /// An endpoint that will listen on `socket`, made as `owner`.
    pub fn new(socket: PathBuf, owner: Caller) -> Endpoint {
        Endpoint { socket, owner, listener: None }
    }

    /// Makes the socket, if it is not there yet. [`super::File`] does it when the bind is made, so that a socket
    /// the user may not make is an error of the bind request itself.
    pub(super) fn listen(&mut self) -> Result<(), Error> {
        if self.listener.is_none() {
            let l = self.owner.act(|| listen(&self.socket))?;
            l.set_nonblocking(true)?;
            self.listener = Some(UnixListener::from_std(l)?);
        }
        Ok(())
    }
}

/// Binds `path` (mode 0600), replacing a stale socket but never a live one or another file. The socket is bound
/// under a temporary name, made private, then renamed into place: it never exists at `path` with the umask's
/// mode, not even for a moment in which another user could connect.
fn listen(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    let bad = |why: String| Error::BadOptions(format!("cannot listen on {}: {why}", path.display()));
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(bad("name a socket file".into()));
    };
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(bad("something is already listening there".into()));
            }
            std::fs::remove_file(path).map_err(|e| bad(e.to_string()))?;
        }
        Ok(_) => return Err(bad("a file that is not a socket is in the way".into())),
        Err(_) => {}
    }
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| bad(e.to_string()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        bad(e.to_string())
    })?;
    Ok(l)
}

/// A stream to the exporter with the server's greeting already read.
struct Ready {
    stream: BoxStream,
    greeting: [u8; Greeting::LEN],
}

async fn ready(link: &Link) -> Result<Ready, Error> {
    let mut stream = link.open().await?;
    let mut greeting = [0u8; Greeting::LEN];
    stream
        .read_exact(&mut greeting)
        .await
        .map_err(|e| Error::Unreachable(format!("the exporter closed the stream before its NBD greeting: {e}")))?;
    Greeting::decode(&greeting).map_err(|e| Error::Protocol(format!("the exporter is not speaking NBD: {e}")))?;
    Ok(Ready { stream, greeting })
}

impl Session for Endpoint {
    fn target(&self) -> String {
        self.socket.display().to_string()
    }

    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let status = Arc::clone(link.status());
            // The socket is there from the start, also while the exporter is away: clients wait in its backlog
            // until the bind is up instead of finding no socket.
            self.listen()?;
            loop {
                let mut next = ready(link).await?;
                let listener = self.listener.as_ref().expect("listening");
                link.up();
                let mut probe = [0u8; 1];
                let client = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    // A server says nothing before the client's flags: any byte or the end means it is gone.
                    r = next.stream.read(&mut probe) => {
                        let why = match r {
                            Ok(0) => "the exporter closed the connection".to_string(),
                            Ok(_) => "the exporter sent data out of turn".to_string(),
                            Err(e) => format!("the connection to the exporter broke: {e}"),
                        };
                        return Err(Error::Unreachable(why));
                    }
                    c = listener.accept() => c.map_err(Error::Io)?.0,
                    // Unused for a while: replace it before the exporter's handshake limit cuts it.
                    () = tokio::time::sleep(STANDBY_REFRESH) => continue,
                };
                let cancel = cancel.child_token();
                let status = Arc::clone(&status);
                tokio::spawn(async move {
                    if let Err(e) = splice(client, next, &status, &cancel).await {
                        tracing::debug!("file endpoint connection ended: {e}");
                    }
                });
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.listener.take().is_some() {
                // As its owner: a path the owner swapped meanwhile (a directory for a symlink) leads nowhere the
                // owner could not remove things anyway.
                let _ = self.owner.act(|| std::fs::remove_file(&self.socket));
            }
        })
    }
}

/// Joins a local NBD client to a stream to the exporter until either side closes or the bind is cut.
async fn splice(
    mut client: UnixStream,
    mut remote: Ready,
    status: &Status,
    cancel: &CancellationToken,
) -> io::Result<()> {
    client.write_all(&remote.greeting).await?;
    status.count(Greeting::LEN as u64);
    let (mut cr, mut cw) = client.split();
    let (mut rr, mut rw) = tokio::io::split(&mut remote.stream);
    tokio::select! {
        () = cancel.cancelled() => Ok(()),
        r = async { tokio::try_join!(pump(&mut cr, &mut rw, status), pump(&mut rr, &mut cw, status)) } => r.map(drop),
    }
}

/// Copies until end of stream, counting bytes, then half-closes the writer.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W, status: &Status) -> io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        status.count(n as u64);
    }
}

/// `metac file cat`: the whole export, once, into `out`. Not retried: the bytes already sent cannot be unsent.
pub struct CatSession<W> {
    stream: Option<BoxStream>,
    out: W,
    report: Option<oneshot::Sender<Result<(), String>>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> CatSession<W> {
    /// A read of the export behind `stream` (already past the handshake, so that refusals reach the caller before
    /// any byte) into `out`.
    pub fn new(stream: BoxStream, out: W) -> CatSession<W> {
        CatSession { stream: Some(stream), out, report: None }
    }

    /// Also sends the outcome to `tx` (the API ends the body with the error, after the bytes copied).
    pub fn report_to(mut self, tx: oneshot::Sender<Result<(), String>>) -> CatSession<W> {
        self.report = Some(tx);
        self
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Session for CatSession<W> {
    fn target(&self) -> String {
        "stdout".into()
    }

    fn reconnects(&self) -> bool {
        false
    }

    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let stream = match self.stream.take() {
                Some(s) => s,
                None => link.open().await?,
            };
            link.up();
            let status = link.status();
            let mut last = 0;
            let copy = crate::cat(stream, &mut self.out, |done, _| {
                status.count(done - last);
                last = done;
            });
            let r = tokio::select! {
                () = cancel.cancelled() => Err(Error::Cancelled),
                r = copy => r.map(drop).map_err(|e| Error::Protocol(e.to_string())),
            };
            // Close the pipe first, so the reader sees the end of the data before the outcome.
            let _ = self.out.shutdown().await;
            if let Some(tx) = self.report.take() {
                let _ = tx.send(r.as_ref().map(drop).map_err(|e| match e {
                    Error::Cancelled => "the bind was cut (revoked, expired, unbound or the node stopped)".into(),
                    e => e.to_string(),
                }));
            }
            r
        })
    }
}
