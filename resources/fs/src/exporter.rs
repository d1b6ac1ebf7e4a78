//! The exporting side of the `fs` kind: the export's directory is opened once (as the user who exported it, and
//! checked to be the very directory exported), and each bind is served from it by a [`crate::server::Server`] of
//! its own, beneath the ref's sub-path if it has one, read-only unless both the export and the ref grant write,
//! with the admin right (owners, permission bits, extended attributes) only where both grant it.
//!
//! One bind: a task reads requests (bounded frames, bounded decoder) into a queue; [`WORKERS`] threads, each with
//! the exporting user's filesystem identity ([`Caller::act`]), take them in turn, do the syscalls and queue the
//! responses; a task writes them back. Both queues hold [`MAX_IN_FLIGHT`] requests, the most a binder may have
//! outstanding, so slow operations do not hold up quick ones and nothing waits on a full queue for ever.
//!
//! When the exporting user is the node's own (no identity to take), the quick operations that only read or change
//! metadata (lookup, getattr, forget, release, mkdir, create, unlink, rename, utimensat...; [`Server::is_quick`])
//! are done by the reading task itself, which writes the answer at once: a metadata round trip then wakes no other
//! thread on this side (each hand-over between threads cost tens of microseconds, most of a round trip).
//!
//! Operations on one inode are done in the order they arrive ([`crate::order`]; reads of it side by side), so a
//! binder may send what follows a write without waiting for it (write-behind, [`crate::proto::ORDERED`]).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use metac_resource::{frame, Bind, BoxFuture, BoxStream, Caller, Error, ExportSpec, Exporter, Rights};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::digest::Digests;
use crate::order::Order;
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
    digests: Arc<Digests>,
}

impl FsExporter {
    /// Opens the exported directory as its owner; its binds hash with, and count what they serve in, `digests`.
    pub(crate) fn open(spec: ExportSpec<FsExport>, digests: Arc<Digests>) -> Result<FsExporter, Error> {
        let o = &spec.options;
        let root = spec.owner.act(|| crate::open_root(&o.path, o.id)).map_err(|e| {
            Error::Unavailable(format!("export {} ({}) cannot be opened: {e}", spec.name, o.path.display()))
        })?;
        let (writable, admin) = (spec.rights.contains(Rights::WRITE), spec.rights.contains(Rights::ADMIN));
        Ok(FsExporter { root, owner: spec.owner, writable, admin, name: spec.name, digests })
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
            let server = Server::new(root, read_only)?
                .with_admin(admin)
                .exported_by(self.owner.uid, self.owner.gid)
                .with_digests(Arc::clone(&self.digests));
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
    let wr = Arc::new(tokio::sync::Mutex::new(tokio::io::BufWriter::with_capacity(64 << 10, wr)));
    let inline = !owner.switches()?;
    // Fires when serving ends, however it ends: a worker waiting to write lets go then.
    let done = cancel.child_token();
    let _done = done.clone().drop_guard();
    let (req_tx, req_rx) = mpsc::channel::<Job>(MAX_IN_FLIGHT);
    let req_rx = Arc::new(Mutex::new(req_rx));
    let rt = tokio::runtime::Handle::current();
    let order = Arc::new(Order::<Waiting>::default());
    // Operations waiting their turn on an inode are bounded as the queue is: the reader waits for room.
    let room = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    for i in 0..WORKERS {
        let (server, owner, req_rx, wr, done, rt, order) = (
            Arc::clone(&server),
            owner.clone(),
            Arc::clone(&req_rx),
            Arc::clone(&wr),
            done.clone(),
            rt.clone(),
            Arc::clone(&order),
        );
        std::thread::Builder::new().name(format!("metac-fs-{i}")).spawn(move || {
            // The whole loop runs with the exporting user's identity: the kernel checks every call as theirs.
            let r = owner.act(|| {
                own_umask()?;
                loop {
                    // One worker waits on the queue at a time; the others wait for the lock.
                    let next = req_rx.lock().expect("request queue").blocking_recv();
                    let Some(job) = next else { return Ok::<(), std::io::Error>(()) };
                    // What waited for this operation on its inode runs next, here, in order.
                    let mut jobs = std::collections::VecDeque::from([job]);
                    while let Some((req, order_of)) = jobs.pop_front() {
                        let resp = Response { id: req.id, result: server.handle(req.op) };
                        // The worker writes its answer itself (one hand-over less per round trip), but never
                        // waits past the end of the bind for a binder that stopped reading.
                        let written = rt.block_on(async {
                            tokio::select! {
                                () = done.cancelled() => false,
                                r = answer(&wr, resp) => r.is_ok(),
                            }
                        });
                        if !written {
                            done.cancel();
                            return Ok(());
                        }
                        if let Some((ino, after_all)) = order_of {
                            jobs.extend(order.done(ino, after_all).into_iter().map(|w| w.job(ino)));
                        }
                    }
                }
            });
            if let Err(e) = r {
                tracing::warn!("fs worker cannot act as the exporting user: {e}");
            }
        })?;
    }
    let reader = async {
        loop {
            let body = match read_body(&mut rd).await {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            };
            let req = proto::decode_request(&body);
            crate::buffers::give(body);
            let req = match req {
                Ok(req) => req,
                // A newer binder trying an operation this node does not know: it hears so and falls back.
                Err(proto::Error::UnknownOp { id, op }) => {
                    tracing::debug!(id, op, "fs: a request of an unknown operation, answered ENOSYS");
                    answer(&wr, Response { id, result: Err(libc::ENOSYS) }).await?;
                    continue;
                }
                Err(e) => return Err(Error::Protocol(e.to_string())),
            };
            let order_of = server.order_of(&req.op);
            let req = match order_of {
                Some((ino, after_all)) => {
                    let room = Arc::clone(&room).acquire_owned().await.map_err(|_| Error::Cancelled)?;
                    match order.admit(ino, after_all, Waiting { req, after_all, _room: room }) {
                        Some(w) => w.req,
                        None => continue,
                    }
                }
                None => req,
            };
            let id = req.id;
            let result = if inline && server.is_quick(&req.op) {
                Some(server.handle(req.op))
            } else if let Some(result) = inline.then(|| server.handle_now(&req.op)).flatten() {
                Some(result)
            } else {
                if req_tx.send((req, order_of)).await.is_err() {
                    return Err(Error::Protocol("the fs workers stopped".into()));
                }
                None
            };
            if let Some(result) = result {
                answer(&wr, Response { id, result }).await?;
                if let Some((ino, after_all)) = order_of {
                    for w in order.done(ino, after_all) {
                        if req_tx.send(w.job(ino)).await.is_err() {
                            return Err(Error::Protocol("the fs workers stopped".into()));
                        }
                    }
                }
            }
        }
    };
    let r = tokio::select! {
        () = done.cancelled() => Ok(()),
        r = reader => r,
        r = tell_changes(&server, &wr) => r,
    };
    // Workers still writing let go of the writer first; a binder that stopped reading does not hold the end.
    done.cancel();
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, async { wr.lock().await.shutdown().await }).await;
    r
}

/// How long changes are gathered before they are told: a file written in many pieces is told once.
const CHANGES_GATHERED: std::time::Duration = std::time::Duration::from_millis(20);

/// Tells the binder of changes made to the export by others (see [`Server::changes`]), unasked, in responses of
/// id 0; runs until the stream breaks (or for ever without inotify).
async fn tell_changes(server: &Server, wr: &Writer) -> Result<(), Error> {
    let Some(fd) = server.watch_changes() else { return std::future::pending().await };
    // SAFETY: the descriptor is the server's inotify descriptor, open as long as the server, which this future
    // borrows, so it outlives the registration (dropped with the future).
    let fd = match unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!("fs: change notices off: {e}");
            return std::future::pending().await;
        }
    };
    loop {
        fd.readable().await?.clear_ready();
        tokio::time::sleep(CHANGES_GATHERED).await;
        loop {
            let changes = server.changes();
            if changes.is_empty() {
                break;
            }
            let resp = Response { id: 0, result: Ok(proto::Reply::Changed(changes)) };
            answer(wr, resp).await?;
        }
    }
}

/// A request for a worker, with the inode it is ordered by ([`Server::order_of`]).
type Job = (Request, Option<(u64, bool)>);

/// A request waiting for earlier ones on its inode ([`Order`]), holding its room in the bound.
struct Waiting {
    req: Request,
    after_all: bool,
    _room: tokio::sync::OwnedSemaphorePermit,
}

impl Waiting {
    /// The request, for a worker, now that its turn on `ino` has come (its room freed).
    fn job(self, ino: u64) -> Job {
        (self.req, Some((ino, self.after_all)))
    }
}

/// Writes one answer; the data it carried goes back to the buffer pool.
async fn answer(wr: &Writer, resp: Response) -> Result<(), Error> {
    let r = crate::buffers::write_frame(&mut *wr.lock().await, &resp).await;
    if let Ok(proto::Reply::Data(d) | proto::Reply::OpenedWith { data: d, .. }) = resp.result {
        crate::buffers::give(d);
    }
    r
}

/// The writing half of a bind's stream, shared by whoever answers.
type Writer = tokio::sync::Mutex<tokio::io::BufWriter<tokio::io::WriteHalf<BoxStream>>>;

/// How long the end of a bind waits to close its stream cleanly.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
    let mut body = crate::buffers::take(len);
    body.resize(len, 0);
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Op, Reply, ROOT};
    use std::collections::HashMap;

    /// What a binder with write-behind sends without waiting, the exporter does in the order it came, file by
    /// file: a write and then a newer write of the same bytes, a utimensat after them (done on the spot, where the
    /// writes go to workers), a read after those and the close last. Files made with their directory's
    /// attributes, as asked for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_on_one_file_are_done_in_the_order_they_came() {
        use crate::proto::{SetAttr, Time, Who, DIR_ATTRS, ORDERED};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(Server::new(root, false).unwrap());
        let (binder, exporter) = tokio::io::duplex(4 << 20);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(Arc::clone(&server), Caller::root(), Box::new(exporter), cancel.clone()));
        let (mut rd, mut wr) = tokio::io::split(binder);
        let ask = |id, op| (id, Request { id, op });
        let (_, features) = ask(1, Op::Features { want: DIR_ATTRS });
        frame::write(&mut wr, &features).await.unwrap();
        let answer = proto::decode_response(&read_body(&mut rd).await.unwrap().unwrap()).unwrap();
        assert_eq!(answer.result, Ok(Reply::Features(ORDERED | DIR_ATTRS)));
        const FILES: usize = 64;
        let mut files = Vec::new();
        for i in 0..FILES {
            let name = format!("f{i}").into_bytes();
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            let op = Op::Create { parent: ROOT, name, mode: 0o644, umask: 0o022, flags, who: Who::default() };
            frame::write(&mut wr, &ask(10 + i as u64, op).1).await.unwrap();
            let answer = proto::decode_response(&read_body(&mut rd).await.unwrap().unwrap()).unwrap();
            let Ok(Reply::CreatedIn { attr, fh, dir }) = answer.result else { panic!("{answer:?}") };
            assert_eq!(dir.mode & libc::S_IFMT, libc::S_IFDIR, "the directory's attributes come with it");
            files.push((attr.ino, fh));
        }
        // Everything at once, answers read meanwhile (the exporter must not wait on a full stream).
        let reader = tokio::spawn(async move {
            let mut reads = HashMap::new();
            for _ in 0..FILES * 5 {
                let answer = proto::decode_response(&read_body(&mut rd).await.unwrap().unwrap()).unwrap();
                assert!(answer.result.is_ok(), "{answer:?}");
                if let Ok(Reply::Data(d)) = answer.result {
                    reads.insert(answer.id, d);
                }
            }
            reads
        });
        let mut id = 1000;
        for (i, &(ino, fh)) in files.iter().enumerate() {
            let mut send = |op| {
                id += 1;
                Request { id, op }
            };
            let old = send(Op::Write { fh, offset: 0, data: vec![b'o'; 256 << 10] });
            let new = send(Op::Write { fh, offset: 0, data: vec![b'n'; 256 << 10] });
            let mtime = Some(Time::At { sec: 1_000_000 + i as i64, nsec: 7 });
            let set = send(Op::Setattr { ino, fh: None, set: SetAttr { mtime, ..SetAttr::default() } });
            let read = send(Op::Read { fh, offset: 0, size: 4 });
            let close = send(Op::Release { fh });
            for r in [old, new, set, read, close] {
                frame::write(&mut wr, &r).await.unwrap();
            }
        }
        let reads = tokio::time::timeout(std::time::Duration::from_secs(30), reader).await.unwrap().unwrap();
        assert_eq!(reads.len(), FILES);
        assert!(reads.values().all(|d| d == b"nnnn"), "every read came after the writes before it");
        for i in 0..FILES {
            let path = dir.path().join(format!("f{i}"));
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000 + i as i64, 7), "f{i}: the mtime set after the writes");
            assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == b'n'), "f{i}: the newer write last");
        }
        assert_eq!(server.held().1, 0, "every file closed");
        cancel.cancel();
    }

    /// A binder that makes operations wait their turn on an inode and keeps sending more: a change of the inode
    /// behind reads that cannot end (their answers are never read), then tens of thousands of getattrs of it
    /// behind the change. The exporter keeps at most the queue's bound of them and then stops reading the stream
    /// (the binder's writes stall), rather than holding whatever it is sent; the bind still ends at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_held_for_their_turn_are_bounded_and_a_binder_past_the_bound_is_not_read() {
        use crate::proto::{SetAttr, Time};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![7u8; 1 << 20]).unwrap();
        let root = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(Server::new(root, false).unwrap());
        let (mut binder, exporter) = tokio::io::duplex(64 << 10);
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve(Arc::clone(&server), Caller::root(), Box::new(exporter), cancel.clone()));
        let send = |id, op| Request { id, op };
        frame::write(&mut binder, &send(1, Op::Lookup { parent: ROOT, name: b"big".to_vec() })).await.unwrap();
        let body = read_body(&mut binder).await.unwrap().unwrap();
        let Ok(Reply::Entry(a)) = proto::decode_response(&body).unwrap().result else { panic!() };
        frame::write(&mut binder, &send(2, Op::Open { ino: a.ino, flags: libc::O_RDONLY })).await.unwrap();
        let body = read_body(&mut binder).await.unwrap().unwrap();
        let Ok(Reply::Opened { fh }) = proto::decode_response(&body).unwrap().result else { panic!() };
        // From here on the binder reads nothing: the reads' answers fill the stream and the reads never end.
        for id in 3..11 {
            frame::write(&mut binder, &send(id, Op::Read { fh, offset: 0, size: 1 << 20 })).await.unwrap();
        }
        let mtime = Some(Time::At { sec: 1, nsec: 0 });
        let set = Op::Setattr { ino: a.ino, fh: None, set: SetAttr { mtime, ..SetAttr::default() } };
        frame::write(&mut binder, &send(11, set)).await.unwrap();
        let flood = async {
            for id in 12..40_000 {
                frame::write(&mut binder, &send(id, Op::Getattr { ino: a.ino })).await.unwrap();
            }
        };
        let stalled = tokio::time::timeout(std::time::Duration::from_secs(3), flood).await.is_err();
        assert!(stalled, "40000 operations held for their turn were all taken in: nothing bounds them");
        cancel.cancel();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(3), served).await;
        assert!(ended.is_ok(), "the bind ended within 3 s of its cancellation");
    }

    /// A binder that asks for many large reads and never reads the answers: the workers writing them wait, and
    /// the bind still ends at once when it is cancelled (nothing holds it), as it does when the binder goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_binder_that_stops_reading_does_not_hold_the_bind_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![7u8; 1 << 20]).unwrap();
        let root = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(Server::new(root, false).unwrap());
        let (mut binder, exporter) = tokio::io::duplex(64 << 10);
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve(Arc::clone(&server), Caller::root(), Box::new(exporter), cancel.clone()));
        let send = |id, op| Request { id, op };
        frame::write(&mut binder, &send(1, Op::Lookup { parent: ROOT, name: b"big".to_vec() })).await.unwrap();
        let body = read_body(&mut binder).await.unwrap().unwrap();
        let Ok(Reply::Entry(a)) = proto::decode_response(&body).unwrap().result else { panic!() };
        frame::write(&mut binder, &send(2, Op::Open { ino: a.ino, flags: libc::O_RDONLY })).await.unwrap();
        let body = read_body(&mut binder).await.unwrap().unwrap();
        let Ok(Reply::Opened { fh }) = proto::decode_response(&body).unwrap().result else { panic!() };
        for id in 3..3 + MAX_IN_FLIGHT as u64 {
            frame::write(&mut binder, &send(id, Op::Read { fh, offset: 0, size: 1 << 20 })).await.unwrap();
        }
        // Quick answers wait behind the stuck writer too; the bind is then cancelled.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!served.is_finished(), "the binder's reads are outstanding");
        cancel.cancel();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(3), served).await;
        assert!(ended.is_ok(), "the bind ended within 3 s of its cancellation");
        drop(binder);
    }

    /// A request of an operation this exporter does not know (a newer binder's) is answered ENOSYS and the bind
    /// goes on; the binder falls back on what it knows.
    #[tokio::test]
    async fn an_unknown_operation_is_answered_enosys_and_the_bind_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let root = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(Server::new(root, false).unwrap());
        let (mut binder, exporter) = tokio::io::duplex(64 << 10);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(server, Caller::root(), Box::new(exporter), cancel.clone()));
        // Request 9 of operation 200 (postcard: id, then the variant index, both varints).
        let body = [9u8, 0xc8, 0x01, 1, 2, 3];
        binder.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
        binder.write_all(&body).await.unwrap();
        let answer = proto::decode_response(&read_body(&mut binder).await.unwrap().unwrap()).unwrap();
        assert_eq!(answer, Response { id: 9, result: Err(libc::ENOSYS) });
        frame::write(&mut binder, &Request { id: 10, op: Op::Getattr { ino: ROOT } }).await.unwrap();
        let answer = proto::decode_response(&read_body(&mut binder).await.unwrap().unwrap()).unwrap();
        assert!(matches!(answer, Response { id: 10, result: Ok(Reply::Attr(_)) }), "{answer:?}");
        cancel.cancel();
    }
}
