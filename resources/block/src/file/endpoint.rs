//! `metac file bind`: a local NBD endpoint for a remote file, on a Unix socket (the default) or a TCP port on
//! loopback. Any NBD client (nbdinfo, nbdcopy, qemu-img, qemu, nbdfuse, the kernel's nbd-client) uses it as it
//! would nbdkit.
//!
//! The endpoint is an NBD server to its local clients and one NBD client of the exporter:
//!
//! ```text
//!  local client ─┐  requests (checked here)      ┌──────────── upstream (one stream per run) ───────────┐
//!  local client ─┼─► jobs (bounded) ─► writer: cookie, encode, keep in `Pending` ─► exporter ─► reader:
//!  local client ─┘  ◄── replies in each client's order ◄── oneshot ◄─────────────── match cookie, take data
//! ```
//!
//! - **Multiplexed.** Every local connection's requests go onto the one stream to the exporter, with up to
//!   [`MAX_UPSTREAM`] in flight; each reply goes back to its client in that client's request order.
//! - **Acknowledged only once the exporter has it.** A WRITE's reply is the exporter's; FLUSH is forwarded, and
//!   the exporter syncs the file, so FLUSH means durable on the exporter.
//! - **Pauses, not errors.** Requests sent to the exporter stay in [`Pending`], with their data, until their reply
//!   comes. When the stream breaks (network, exporter restart), the run ends with a retryable error, the node
//!   reconnects with backoff, and the next run first sends every pending request again, then goes on. READ,
//!   WRITE, TRIM, WRITE_ZEROES, CACHE and FLUSH may all be repeated safely. Local clients see a pause. The local
//!   side, its listener and its connections outlive the runs; only unbind (or revocation, expiry, stop) ends them.
//! - **Bounded.** Jobs wait in a bounded queue; a client has at most [`CLIENT_IN_FLIGHT`] requests and
//!   [`CLIENT_BYTES`] of payload outstanding; at most [`MAX_CLIENTS`] connections.
//! - **Checked at the door.** A request the exporter would refuse (out of range, unknown command, a write on a
//!   read-only bind) is answered here, and never reaches the network.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use metac_resource::{BoxFuture, Caller, Error, Link, Session, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Remote};
use crate::nbd::proto::{cflag, cmd, errno, tflag, Request, SimpleReply};
use crate::server::{self, within, AbortOnDrop, NEGOTIATION_TIMEOUT, STALL_TIMEOUT};

/// Most requests sent to the exporter and not yet answered.
pub const MAX_UPSTREAM: usize = 64;
/// Most requests one local client has outstanding.
pub const CLIENT_IN_FLIGHT: usize = 32;
/// Most payload bytes (READ and WRITE) one local client has outstanding; at least the largest request (`MAX_REQUEST_LEN`).
pub const CLIENT_BYTES: usize = 64 << 20;
/// Most local connections at once; more are closed at once.
pub const MAX_CLIENTS: usize = 64;
/// Jobs waiting for the upstream writer.
const QUEUE: usize = 128;
/// Buffer size of the upstream reader and writer.
const STREAM_BUF: usize = 256 << 10;

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket, mode 0600, made as the user who binds.
    Unix(PathBuf),
    /// A TCP port on a loopback address (every local user can reach it).
    Tcp(SocketAddr),
}

impl Listen {
    /// A TCP endpoint, refused unless on loopback: a ref's rights must not reach the network through it.
    pub fn tcp(addr: SocketAddr) -> Result<Listen, Error> {
        if !addr.ip().is_loopback() {
            return Err(Error::BadOptions(format!(
                "--listen {addr}: only a loopback address ([::1] or 127.0.0.1) may be given, so that the bind is not \
                 reachable from the network"
            )));
        }
        Ok(Listen::Tcp(addr))
    }
}

/// A request on its way to the exporter, and where its reply goes.
struct Job {
    /// The request; its handle is replaced by the upstream cookie.
    req: Request,
    /// A WRITE's payload (kept until the reply, for replay).
    data: Bytes,
    reply: oneshot::Sender<Reply>,
}

/// The exporter's answer to a job.
struct Reply {
    error: u32,
    /// A successful READ's data.
    data: Vec<u8>,
}

/// Jobs sent upstream and not yet answered, by cookie (kept across runs, so a new stream can replay them).
#[derive(Default)]
struct Pending {
    jobs: BTreeMap<u64, Job>,
    next: u64,
}

/// What the local side shares: the job queue, and what the exporter said of its export.
struct Shared {
    jobs: mpsc::Sender<Job>,
    remote: watch::Receiver<Option<Remote>>,
    read_only: bool,
}

/// The bound listener.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A local NBD endpoint for a remote file.
pub struct Endpoint {
    listen: Listen,
    owner: Caller,
    read_only: bool,
    listener: Option<Listener>,
    /// Filled in when the listener is bound (a TCP port 0 becomes the port chosen).
    bound: Option<String>,
    jobs: mpsc::Receiver<Job>,
    jobs_tx: mpsc::Sender<Job>,
    remote: watch::Sender<Option<Remote>>,
    pending: Arc<Mutex<Pending>>,
    accepting: Option<AbortOnDrop<()>>,
}

impl Endpoint {
    /// An endpoint that will listen at `listen`, made as `owner`; `read_only` refuses writes locally and
    /// advertises the export as read-only (as the exporter does for a read-only ref).
    pub fn new(listen: Listen, owner: Caller, read_only: bool) -> Endpoint {
        let (jobs_tx, jobs) = mpsc::channel(QUEUE);
        Endpoint {
            listen,
            owner,
            read_only,
            listener: None,
            bound: None,
            jobs,
            jobs_tx,
            remote: watch::channel(None).0,
            pending: Arc::default(),
            accepting: None,
        }
    }

    /// Makes the socket, if it is not there yet. [`super::File`] does it when the bind is made, so that a socket
    /// the user may not make is an error of the bind request itself.
    pub(super) fn listen(&mut self) -> Result<(), Error> {
        if self.listener.is_some() || self.accepting.is_some() {
            return Ok(());
        }
        let listener = match &self.listen {
            Listen::Unix(path) => {
                let l = self.owner.act(|| listen_unix(path))?;
                l.set_nonblocking(true)?;
                self.bound = Some(path.display().to_string());
                Listener::Unix(UnixListener::from_std(l)?)
            }
            Listen::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|e| Error::BadOptions(format!("cannot listen on {addr}: {e}")))?;
                l.set_nonblocking(true)?;
                let at = l.local_addr()?;
                self.bound = Some(format!("nbd://{at}"));
                Listener::Tcp(TcpListener::from_std(l)?)
            }
        };
        self.listener = Some(listener);
        Ok(())
    }

    /// Starts taking local connections, once; they are served across runs.
    fn accept(&mut self) {
        if self.accepting.is_some() {
            return;
        }
        let Some(listener) = self.listener.take() else { return };
        let shared =
            Arc::new(Shared { jobs: self.jobs_tx.clone(), remote: self.remote.subscribe(), read_only: self.read_only });
        self.accepting = Some(AbortOnDrop(tokio::spawn(accept(listener, shared))));
    }
}

/// Binds `path` (mode 0600), replacing a stale socket but never a live one or another file. The socket is bound
/// under a temporary name, made private, then renamed into place: it never exists at `path` with the umask's
/// mode, not even for a moment in which another user could connect.
fn listen_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
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

impl Session for Endpoint {
    fn target(&self) -> String {
        match (&self.bound, &self.listen) {
            (Some(b), _) => b.clone(),
            (None, Listen::Unix(p)) => p.display().to_string(),
            (None, Listen::Tcp(a)) => format!("nbd://{a}"),
        }
    }

    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // The endpoint is there from the start, also while the exporter is away: local clients wait in their
            // handshake until the exporter has been reached once, and after that only their requests wait.
            self.listen()?;
            self.accept();
            // Not buffered here: the stream buffers (sealed records are opened in their read buffer), and a READ's
            // data is read straight from there into its reply, one copy less than through a `BufReader`.
            let mut stream = link.open().await?;
            let remote = within(NEGOTIATION_TIMEOUT, "the exporter's NBD handshake", async {
                client::negotiate(&mut stream).await.map_err(|e| io::Error::other(e.to_string()))
            })
            .await
            .map_err(|e| Error::Unreachable(format!("the exporter's NBD handshake failed: {e}")))?;
            match *self.remote.borrow() {
                Some(known) if known.size != remote.size => tracing::warn!(
                    "the export's size changed from {} to {} bytes; local clients keep the size they were given",
                    known.size,
                    remote.size
                ),
                _ => {}
            }
            if self.remote.borrow().is_none() {
                self.remote.send_replace(Some(remote));
            }
            link.up();
            tokio::select! {
                () = cancel.cancelled() => Ok(()),
                r = upstream(stream, &mut self.jobs, &self.pending, link.status()) => r,
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Local connections end with the accept task; requests still pending are dropped, and their clients'
            // connections closed.
            self.accepting = None;
            self.pending.lock().expect("pending lock").jobs.clear();
            self.listener = None;
            if let Listen::Unix(path) = &self.listen {
                if self.bound.take().is_some() {
                    // As its owner: a path the owner swapped meanwhile (a directory for a symlink) leads nowhere
                    // the owner could not remove things anyway.
                    let _ = self.owner.act(|| std::fs::remove_file(path));
                }
            }
        })
    }
}

/// Runs one stream to the exporter: replays what is pending, then sends jobs and matches replies, until the
/// stream fails (a retryable error: the pending jobs stay for the next run).
async fn upstream<S>(
    stream: S,
    jobs: &mut mpsc::Receiver<Job>,
    pending: &Arc<Mutex<Pending>>,
    status: &Arc<Status>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let free = MAX_UPSTREAM.saturating_sub(pending.lock().expect("pending lock").jobs.len());
    let room = Arc::new(Semaphore::new(free));
    let broken = |e: crate::Error| Error::Unreachable(format!("the connection to the exporter broke: {e}"));
    // The reader runs as a task of its own, so that it keeps taking replies whatever the writer waits for.
    let mut reader = AbortOnDrop(tokio::spawn({
        let (pending, room, status) = (Arc::clone(pending), Arc::clone(&room), Arc::clone(status));
        async move { receive(rd, &pending, &room, &status).await }
    }));
    tokio::select! {
        r = send(wr, jobs, pending, &room, status) => r.map_err(|e| broken(e.into())),
        r = &mut reader.0 => match r {
            Ok(r) => r.map_err(broken),
            Err(e) => Err(Error::Io(io::Error::other(e))),
        },
    }
}

/// The upstream writer: every pending job again, then new ones as room allows.
async fn send<W>(
    wr: W,
    jobs: &mut mpsc::Receiver<Job>,
    pending: &Mutex<Pending>,
    room: &Semaphore,
    status: &Status,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut w = BufWriter::with_capacity(STREAM_BUF, wr);
    // Replay: the cookies stay, so late replies of the old stream cannot be confused with new ones (that stream
    // is gone anyway). The lock is not held across writes: the replayed requests are encoded first.
    let replay: Vec<u8> = {
        let p = pending.lock().expect("pending lock");
        let mut b = Vec::new();
        for (&cookie, job) in &p.jobs {
            b.extend_from_slice(&Request { handle: cookie, ..job.req }.encode());
            b.extend_from_slice(&job.data);
        }
        if !p.jobs.is_empty() {
            tracing::info!("sending {} unanswered requests to the exporter again", p.jobs.len());
        }
        b
    };
    w.write_all(&replay).await?;
    w.flush().await?;
    loop {
        // No room: push out what is buffered before waiting for replies, or they never come.
        if room.available_permits() == 0 {
            within(STALL_TIMEOUT, "sending requests to the exporter", w.flush()).await.map_err(io::Error::other)?;
        }
        match room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return Ok(()),
        }
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(_) => {
                // Nothing more right now: push out what is buffered before waiting.
                within(STALL_TIMEOUT, "sending requests to the exporter", w.flush()).await.map_err(io::Error::other)?;
                match jobs.recv().await {
                    Some(job) => job,
                    None => return Ok(()),
                }
            }
        };
        // Pending before it is sent: its reply may come back before `write_all` returns. Kept if sending fails:
        // the next stream sends it again.
        let (header, data) = (job.req, job.data.clone());
        let cookie = {
            let mut p = pending.lock().expect("pending lock");
            let cookie = p.next;
            p.next += 1;
            p.jobs.insert(cookie, job);
            cookie
        };
        w.write_all(&Request { handle: cookie, ..header }.encode()).await?;
        w.write_all(&data).await?;
        status.count((Request::LEN + data.len()) as u64);
    }
}

/// The upstream reader: matches each reply to its job by cookie and passes it on. Waits for as long as it likes
/// while nothing is asked; once a request is pending, the exporter has [`STALL_TIMEOUT`] to say something.
async fn receive<R>(mut rd: R, pending: &Mutex<Pending>, room: &Semaphore, status: &Status) -> Result<(), crate::Error>
where
    R: AsyncRead + Unpin,
{
    loop {
        let mut header = [0u8; SimpleReply::LEN];
        // `read` is cancel-safe: a timeout before the first byte loses nothing.
        match tokio::time::timeout(STALL_TIMEOUT, rd.read(&mut header[..1])).await {
            Ok(Ok(0)) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if pending.lock().expect("pending lock").jobs.is_empty() => continue,
            Err(_) => {
                return Err(crate::Error::Stalled(format!(
                    "the exporter answered nothing for {STALL_TIMEOUT:?} with requests pending"
                )))
            }
        }
        within(STALL_TIMEOUT, "the rest of a reply", rd.read_exact(&mut header[1..])).await?;
        let reply = SimpleReply::decode(&header)?;
        let job = pending.lock().expect("pending lock").jobs.remove(&reply.handle);
        let Some(job) = job else {
            return Err(crate::Error::Violation(format!("a reply to request {} that was not sent", reply.handle)));
        };
        let mut data = Vec::new();
        if job.req.command == cmd::READ && reply.error == 0 {
            data = metac_resource::buffers::take(job.req.len as usize);
            if let Err(e) = within(STALL_TIMEOUT, "a READ's data", read_len(&mut rd, job.req.len, &mut data)).await {
                // Not answered after all: back in the pending set for the next stream.
                pending.lock().expect("pending lock").jobs.insert(reply.handle, job);
                return Err(e);
            }
        }
        status.count((SimpleReply::LEN + data.len()) as u64);
        room.add_permits(1);
        // The local client may have gone; its reply is then dropped.
        let _ = job.reply.send(Reply { error: reply.error, data });
    }
}

/// Reads exactly `len` bytes into `data` (empty, from the buffer pool where it is large), without zeroing the buffer
/// first (a READ reply's data is most of what crosses a bind; zeroing it cost a few percent of the binder's CPU).
async fn read_len<R: AsyncRead + Unpin>(rd: &mut R, len: u32, data: &mut Vec<u8>) -> io::Result<()> {
    data.reserve_exact(len as usize);
    let n = rd.take(len.into()).read_to_end(data).await?;
    if n < len as usize {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Takes local connections until aborted (with [`Endpoint::close`]), which ends them all.
async fn accept(listener: Listener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let accepted: io::Result<Box<dyn Local>> = tokio::select! {
            Some(_) = conns.join_next() => continue,
            c = accept_one(&listener) => c,
        };
        match accepted {
            Ok(_) if conns.len() >= MAX_CLIENTS => {
                tracing::warn!("file endpoint: more than {MAX_CLIENTS} connections; one refused");
            }
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                conns.spawn(async move {
                    if let Err(e) = serve_local(stream, &shared).await {
                        tracing::debug!("file endpoint connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("file endpoint: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// A local connection, Unix or TCP.
trait Local: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Local for T {}

async fn accept_one(listener: &Listener) -> io::Result<Box<dyn Local>> {
    Ok(match listener {
        Listener::Unix(l) => Box::new(l.accept().await?.0),
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

/// The transmission flags local clients get: the exporter's, read-only if the bind is.
fn local_flags(remote: u16, read_only: bool) -> u16 {
    if read_only {
        (remote | tflag::READ_ONLY) & !(tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES)
    } else {
        remote
    }
}

/// A reply owed to the local client, in request order.
enum Owed {
    /// Answered here (refused at the door, or empty).
    Now { handle: u64, error: u32 },
    /// Waiting for the exporter.
    Later { handle: u64, reply: oneshot::Receiver<Reply>, _bytes: Option<OwnedSemaphorePermit> },
}

/// Serves one local client: handshake with what the exporter said, then its requests.
async fn serve_local(stream: Box<dyn Local>, shared: &Shared) -> Result<(), crate::Error> {
    let mut remote = shared.remote.clone();
    let remote = match remote.wait_for(Option::is_some).await {
        Ok(r) => r.expect("waited for Some"),
        Err(_) => return Ok(()),
    };
    let flags = local_flags(remote.flags, shared.read_only);
    let mut stream = BufReader::with_capacity(STREAM_BUF, stream);
    let handshake = server::negotiate(&mut stream, remote.size, flags);
    let negotiated = tokio::time::timeout(NEGOTIATION_TIMEOUT, handshake).await.map_err(|_| {
        crate::Error::Stalled(format!("the client did not finish the handshake within {NEGOTIATION_TIMEOUT:?}"))
    })?;
    if !negotiated? {
        return Ok(());
    }
    let (rd, wr) = tokio::io::split(stream);
    let (owed_tx, owed_rx) = mpsc::channel(CLIENT_IN_FLIGHT);
    tokio::try_join!(requests(rd, shared, remote.size, flags, owed_tx), replies(wr, owed_rx))?;
    Ok(())
}

/// Reads a local client's requests until `NBD_CMD_DISC` or the end of its stream.
async fn requests<R: AsyncRead + Unpin>(
    mut rd: R,
    shared: &Shared,
    size: u64,
    flags: u16,
    owed: mpsc::Sender<Owed>,
) -> Result<(), crate::Error> {
    let budget = Arc::new(Semaphore::new(CLIENT_BYTES));
    loop {
        let mut header = [0u8; Request::LEN];
        if rd.read(&mut header[..1]).await? == 0 {
            return Ok(());
        }
        within(STALL_TIMEOUT, "the rest of a request header", rd.read_exact(&mut header[1..])).await?;
        let req = Request::decode(&header)?;
        if req.command == cmd::DISC {
            return Ok(());
        }
        let next = match server::check(&req, size, flags) {
            Err(error) => {
                if req.command == cmd::WRITE {
                    within(STALL_TIMEOUT, "a refused WRITE's payload", server::discard(&mut rd, req.len)).await?;
                }
                Owed::Now { handle: req.handle, error }
            }
            Ok(()) if req.len == 0 && req.command != cmd::FLUSH => Owed::Now { handle: req.handle, error: 0 },
            Ok(()) => {
                let payload = matches!(req.command, cmd::READ | cmd::WRITE);
                let bytes = if payload { budget.clone().acquire_many_owned(req.len).await.ok() } else { None };
                let mut data = Vec::new();
                if req.command == cmd::WRITE {
                    within(STALL_TIMEOUT, "a WRITE's payload", read_len(&mut rd, req.len, &mut data)).await?;
                }
                let data = Bytes::from(data);
                let (tx, rx) = oneshot::channel();
                let flags = req.flags & (cflag::FUA | cflag::NO_HOLE);
                let job = Job { req: Request { flags, handle: 0, ..req }, data, reply: tx };
                if shared.jobs.send(job).await.is_err() {
                    return Ok(());
                }
                Owed::Later { handle: req.handle, reply: rx, _bytes: bytes }
            }
        };
        if owed.send(next).await.is_err() {
            return Ok(());
        }
    }
}

/// Writes a local client's replies in its request order.
async fn replies<W: AsyncWrite + Unpin>(wr: W, mut owed: mpsc::Receiver<Owed>) -> Result<(), crate::Error> {
    let mut w = BufWriter::with_capacity(STREAM_BUF, wr);
    loop {
        let next = match owed.try_recv() {
            Ok(o) => o,
            Err(_) => {
                within(STALL_TIMEOUT, "taking replies", w.flush()).await?;
                match owed.recv().await {
                    Some(o) => o,
                    None => break,
                }
            }
        };
        let (handle, error, data) = match next {
            Owed::Now { handle, error } => (handle, error, Vec::new()),
            Owed::Later { handle, mut reply, _bytes } => {
                let reply = match (&mut reply).now_or_never() {
                    Some(r) => r,
                    None => {
                        within(STALL_TIMEOUT, "taking replies", w.flush()).await?;
                        reply.await
                    }
                };
                match reply {
                    Ok(r) => (handle, r.error, r.data),
                    // The endpoint is closing: the request will never be answered.
                    Err(_) => (handle, errno::ESHUTDOWN, Vec::new()),
                }
            }
        };
        within(STALL_TIMEOUT, "taking a reply", w.write_all(&SimpleReply { error, handle }.encode())).await?;
        if error == 0 && !data.is_empty() {
            within(STALL_TIMEOUT, "taking a reply", w.write_all(&data)).await?;
        }
        metac_resource::buffers::give(data);
        if error == errno::ESHUTDOWN {
            break;
        }
    }
    w.flush().await?;
    let _ = w.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_on_the_network_is_refused() {
        let e = Listen::tcp("0.0.0.0:10809".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("only a loopback address"), "{e}");
        assert!(Listen::tcp("[fd00:77::1]:10809".parse().unwrap()).is_err());
        assert_eq!(Listen::tcp("[::1]:0".parse().unwrap()).unwrap(), Listen::Tcp("[::1]:0".parse().unwrap()));
    }

    #[test]
    fn a_read_only_bind_advertises_read_only_and_no_trim() {
        let rw = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
        assert_eq!(local_flags(rw, false), rw);
        assert_eq!(local_flags(rw, true), tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::READ_ONLY);
    }
}
