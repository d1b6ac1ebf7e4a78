//! The binding side's connection: metac-fs/2 requests pipelined on one stream. [`Conn::call`] may be called from
//! many tasks at once; up to [`MAX_IN_FLIGHT`] requests are outstanding (a permit each, taken before the request is
//! sent), each answered in whatever order the exporter finishes them.
//!
//! A caller writes its request itself (the writing half behind an async mutex, held for one frame) and waits for
//! its answer; one task reads answers (bounded frames, bounded decoder) and hands each straight to its caller. No
//! task sits between the two: each hop was a wake-up of another thread on a request's round trip. When the stream
//! ends or breaks every waiting request gets EIO, as does every later one, and [`Conn::closed`] fires so the
//! session knows to reconnect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metac_resource::{BoxStream, Status};
use tokio::io::{BufWriter, WriteHalf};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::proto::{self, Change, Op, Reply, MAX_IN_FLIGHT};

type Answer = oneshot::Sender<Result<Reply, i32>>;

/// Requests sent and not answered yet, each with where it was first sent ([`Origin`]) if its sender sends it again
/// after a break ([`Conn::call_sent`]); `None` once the connection is gone.
type Waiting = Arc<Mutex<Option<HashMap<u64, (Answer, Option<Origin>)>>>>;

/// Where a request was first sent: the connection's [`Conn::id`] and its request id there. Origins order requests
/// as they first left (connection ids grow), whichever connection they went on again.
pub type Origin = (u64, u64);

/// The requests of broken connections still to be sent again, by [`Origin`]: each is sent again only once those
/// before it have been (or given up), and nothing new is sent before all have. An exporter that orders what
/// arrives on an inode ([`proto::ORDERED`]) then sees it in the order the binder's kernel made it, across the
/// break too: a write answered ahead (write-behind) is not overtaken by the `utimensat` or the newer write of the
/// same page that followed it.
#[derive(Default)]
pub struct Replay {
    lost: Mutex<std::collections::BTreeSet<Origin>>,
    any: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl Replay {
    fn lose(&self, origins: impl Iterator<Item = Origin>) {
        let mut lost = self.lost.lock().expect("lost");
        lost.extend(origins);
        self.any.store(!lost.is_empty(), std::sync::atomic::Ordering::Release);
    }

    /// Waits until `me` is the first request still to be sent again (at once if it is not one), or with `None`
    /// (a request sent for the first time) until none is left.
    pub async fn turn(&self, me: Option<Origin>) {
        if me.is_none() && !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let lost = self.lost.lock().expect("lost");
                let now = match me {
                    Some(me) => lost.first() == Some(&me) || !lost.contains(&me),
                    None => lost.is_empty(),
                };
                if now {
                    return;
                }
            }
            changed.await;
        }
    }

    /// `me` has been sent again, or given up: the next may go.
    pub fn settle(&self, me: Origin) {
        let mut lost = self.lost.lock().expect("lost");
        if lost.remove(&me) {
            self.any.store(!lost.is_empty(), std::sync::atomic::Ordering::Release);
            drop(lost);
            self.changed.notify_waiters();
        }
    }

    /// Requests still to be sent again (for tests).
    #[cfg(test)]
    pub(crate) fn left(&self) -> usize {
        self.lost.lock().expect("lost").len()
    }
}

/// A [`proto::Request`] of a borrowed operation: the same bytes on the wire.
#[derive(serde::Serialize)]
struct RequestRef<'a> {
    id: u64,
    op: &'a Op,
}

/// The request `id` of `op`, borrowed (for tests of the encoding).
#[cfg(test)]
pub(crate) fn request_ref(id: u64, op: &Op) -> impl serde::Serialize + '_ {
    RequestRef { id, op }
}

/// A pipelined connection to an exporter.
#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

/// Where a connection hands the changes its exporter tells of (see [`Conn::tell_changes_to`]).
pub type Changes = tokio::sync::mpsc::Sender<(u64, Vec<Change>)>;

struct Inner {
    id: u64,
    changes: Arc<Mutex<Option<Changes>>>,
    writer: tokio::sync::Mutex<(u64, BufWriter<WriteHalf<BoxStream>>)>,
    waiting: Lost,
    permits: Semaphore,
    closed: CancellationToken,
    status: Option<Arc<Status>>,
    /// [`proto::Reply::Features`] of the exporter, once asked ([`Conn::ask_features`]).
    features: std::sync::atomic::AtomicU64,
}

impl Conn {
    /// Starts the connection's reading task on `stream` (already past the resource handshake), counting bytes in
    /// `status` when given.
    pub fn start(stream: BoxStream, status: Option<Arc<Status>>) -> Conn {
        Conn::start_in(stream, status, None)
    }

    /// [`Conn::start`], the requests waiting when it breaks handed to `replay` to be sent again in order.
    pub fn start_in(stream: BoxStream, status: Option<Arc<Status>>, replay: Option<Arc<Replay>>) -> Conn {
        let (rd, wr) = tokio::io::split(stream);
        let closed = CancellationToken::new();
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let changes = Arc::new(Mutex::new(None));
        let told = Told { id, to: Arc::clone(&changes) };
        let lost = Lost { waiting: Arc::clone(&waiting), replay };
        let gone = lost.clone();
        tokio::spawn(read_answers(rd, lost, status.clone(), closed.clone(), told));
        Conn {
            inner: Arc::new(Inner {
                id,
                changes,
                // A frame's length and body leave in one write (one transport frame), not two.
                writer: tokio::sync::Mutex::new((0, BufWriter::with_capacity(64 << 10, wr))),
                waiting: gone,
                permits: Semaphore::new(MAX_IN_FLIGHT),
                closed,
                status,
                features: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Asks the exporter what it does beyond the operations ([`Op::Features`]), asking for directories'
    /// attributes with the changes of them ([`proto::DIR_ATTRS`]); one that does not know the question does none
    /// of it.
    pub async fn ask_features(&self) -> u64 {
        let bits = match self.call(Op::Features { want: proto::DIR_ATTRS }).await {
            Ok(Reply::Features(bits)) => bits,
            _ => 0,
        };
        self.inner.features.store(bits, std::sync::atomic::Ordering::Relaxed);
        bits
    }

    /// Whether the exporter does the operations on one inode in the order they arrive ([`proto::ORDERED`]).
    pub fn ordered(&self) -> bool {
        self.inner.features.load(std::sync::atomic::Ordering::Relaxed) & proto::ORDERED != 0
    }

    /// Sends `op` and waits for its answer: the reply, or the errno of the failure (EIO when the connection is
    /// gone).
    pub async fn call(&self, op: Op) -> Result<Reply, i32> {
        self.call_ref(&op).await
    }

    /// [`Conn::call`] of an operation the caller keeps (to send again on another connection).
    pub async fn call_ref(&self, op: &Op) -> Result<Reply, i32> {
        self.send(op, None, None, || {}).await
    }

    /// [`Conn::call_ref`] of a request first sent from `origin` (`None`: first sent now), calling `then` once it
    /// is on its way (written, in order, after every request written before it); `sent` is set to its
    /// [`Origin`] once it has one, and then it is the caller's to settle if the connection breaks (see
    /// [`Replay`]).
    pub async fn call_sent(
        &self,
        op: &Op,
        origin: Option<Origin>,
        sent: &mut Option<Origin>,
        then: impl FnOnce(),
    ) -> Result<Reply, i32> {
        self.send(op, origin, Some(sent), then).await
    }

    /// Sends `op` and waits for its answer; with `sent`, as [`Conn::call_sent`] (a request lost in a break is
    /// then the caller's to settle), else a request nobody sends again (lost to no replay).
    async fn send(
        &self,
        op: &Op,
        origin: Option<Origin>,
        sent: Option<&mut Option<Origin>>,
        then: impl FnOnce(),
    ) -> Result<Reply, i32> {
        let c = &self.inner;
        let _permit = c.permits.acquire().await.map_err(|_| libc::EIO)?;
        let (answer, rx) = oneshot::channel();
        let len = match op {
            Op::Write { data, .. } => data.len() + 32,
            _ => 32,
        };
        {
            // Neither waiting for the writer nor writing outlives the connection: an exporter that stops reading
            // must not hold callers once the bind is closed.
            let mut w = tokio::select! {
                w = c.writer.lock() => w,
                () = c.closed.cancelled() => return Err(libc::EIO),
            };
            w.0 += 1;
            let id = w.0;
            let origin = origin.unwrap_or((c.id, id));
            let tracked = sent.is_some().then_some(origin);
            match c.waiting.waiting.lock().expect("waiting").as_mut() {
                Some(waiting) => waiting.insert(id, (answer, tracked)),
                None => return Err(libc::EIO),
            };
            if let Some(sent) = sent {
                *sent = Some(origin);
            }
            let req = RequestRef { id, op };
            let written = tokio::select! {
                r = crate::buffers::write_frame(&mut w.1, &req) => r,
                () = c.closed.cancelled() => Ok(()), // the reader has failed or will fail every waiting request
            };
            if let Err(e) = written {
                tracing::debug!("fs connection: {e}");
                c.closed.cancel();
                c.waiting.fail_all();
                return Err(libc::EIO);
            }
            if !c.closed.is_cancelled() {
                then();
            }
        }
        if let Some(s) = &c.status {
            s.count(len as u64);
        }
        rx.await.unwrap_or(Err(libc::EIO))
    }

    /// A number no other connection of this process has: the exporter's inode and file numbers are this
    /// connection's alone.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Hands the changes the exporter tells of from now on to `to`, with this connection's [`Conn::id`] (whose
    /// inode numbers they name); none are kept for later, and none wait on a full channel.
    pub fn tell_changes_to(&self, to: Changes) {
        *self.inner.changes.lock().expect("changes") = Some(to);
    }

    /// Fires when the stream has ended or broken.
    pub fn closed(&self) -> &CancellationToken {
        &self.inner.closed
    }

    /// Ends the connection.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }
}

impl Drop for Inner {
    /// The last handle gone: the reading task ends and the stream with it.
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// Reads answers until the stream ends, breaks, carries garbage or the connection is closed; then fails everything
/// still waiting with EIO (the senders drop) and says the connection is closed.
/// Where a connection's reader hands told changes.
struct Told {
    id: u64,
    to: Arc<Mutex<Option<Changes>>>,
}

/// A connection's waiting requests, and where they go when it breaks.
#[derive(Clone)]
struct Lost {
    waiting: Waiting,
    replay: Option<Arc<Replay>>,
}

impl Lost {
    /// Fails every waiting request with EIO (its answer dropped), handing its origin to the replay; nothing waits
    /// from now on.
    fn fail_all(&self) {
        let gone = self.waiting.lock().expect("waiting").take();
        if let (Some(gone), Some(replay)) = (gone, &self.replay) {
            replay.lose(gone.into_values().filter_map(|(_, origin)| origin));
        }
    }
}

async fn read_answers(
    mut rd: tokio::io::ReadHalf<BoxStream>,
    lost: Lost,
    status: Option<Arc<Status>>,
    closed: CancellationToken,
    told: Told,
) {
    let r = async {
        while let Some(body) = crate::exporter::read_body(&mut rd).await? {
            if let Some(s) = &status {
                s.count(body.len() as u64 + 4);
            }
            let resp = proto::decode_response(&body).map_err(|e| metac_resource::Error::Protocol(e.to_string()));
            crate::buffers::give(body);
            let resp = resp?;
            if resp.id == 0 {
                // Told unasked: changes on the exporter's side.
                if let Ok(Reply::Changed(changes)) = resp.result {
                    if let Some(to) = told.to.lock().expect("changes").as_ref() {
                        let _ = to.try_send((told.id, changes));
                    }
                }
                continue;
            }
            let answer = lost.waiting.lock().expect("waiting").as_mut().and_then(|w| w.remove(&resp.id));
            match answer {
                Some((a, _)) => {
                    let _ = a.send(resp.result);
                }
                None => {
                    return Err(metac_resource::Error::Protocol(format!(
                        "the exporter answered request {} that is not waiting",
                        resp.id
                    )))
                }
            }
        }
        Ok::<(), metac_resource::Error>(())
    };
    tokio::select! {
        () = closed.cancelled() => {}
        r = r => if let Err(e) = r {
            tracing::debug!("fs connection: {e}");
        },
    }
    closed.cancel();
    // Everything still waiting gets EIO, and nothing waits from now on.
    lost.fail_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ROOT;

    /// A binder's connection against a real server on a real directory, over an in-memory stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_requests_in_flight_each_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200 {
            std::fs::write(dir.path().join(format!("f{i}")), format!("file {i}")).unwrap();
        }
        let root = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let server = Arc::new(crate::server::Server::new(root, false).unwrap());
        let (a, b) = tokio::io::duplex(1 << 16);
        let cancel = CancellationToken::new();
        let served =
            tokio::spawn(crate::exporter::serve(server, metac_resource::Caller::root(), Box::new(b), cancel.clone()));
        let status = Arc::new(Status::default());
        let c = Conn::start(Box::new(a), Some(Arc::clone(&status)));
        let calls = (0..200).map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let Reply::Entry(e) =
                    c.call(Op::Lookup { parent: ROOT, name: format!("f{i}").into_bytes() }).await.unwrap()
                else {
                    panic!()
                };
                let Reply::Opened { fh } = c.call(Op::Open { ino: e.ino, flags: libc::O_RDONLY }).await.unwrap() else {
                    panic!()
                };
                let r = c.call(Op::Read { fh, offset: 0, size: 100 }).await.unwrap();
                c.call(Op::Release { fh }).await.unwrap();
                assert_eq!(r, Reply::Data(format!("file {i}").into_bytes()));
            })
        });
        for t in calls.collect::<Vec<_>>() {
            t.await.unwrap();
        }
        assert_eq!(c.call(Op::Lookup { parent: ROOT, name: b"nope".to_vec() }).await, Err(libc::ENOENT));
        assert!(status.bytes() > 0);
        // The exporter going away fails what comes next with EIO, and says so.
        cancel.cancel();
        served.await.unwrap().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), c.closed().cancelled()).await.unwrap();
        assert_eq!(c.call(Op::Getattr { ino: ROOT }).await, Err(libc::EIO));
    }

    /// An exporter that stops reading holds callers only until the bind is closed: then every one, those waiting
    /// to write and the one writing, fails with EIO.
    #[tokio::test]
    async fn callers_stuck_behind_an_exporter_that_does_not_read_are_let_go_on_close() {
        let (a, _b) = tokio::io::duplex(256);
        let c = Conn::start(Box::new(a), None);
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.call(Op::Write { fh: 1, offset: i * 4096, data: vec![7; 4096] }).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(calls.iter().all(|t| !t.is_finished()), "the writes wait for the exporter");
        c.close();
        for t in calls {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), t).await.expect("let go").unwrap();
            assert_eq!(r, Err(libc::EIO));
        }
    }

    /// A connection that breaks hands the origins of the requests waiting on it to the replay; those are let go
    /// again strictly in the order first sent, whatever order their senders come back in, and a request sent for
    /// the first time waits until all of them have gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_a_broken_connection_lost_go_again_in_the_order_first_sent_and_new_ones_after_them() {
        let replay = Arc::new(Replay::default());
        let (a, b) = tokio::io::duplex(1 << 16);
        let c = Conn::start_in(Box::new(a), None, Some(Arc::clone(&replay)));
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut sent = None;
                    let r = c.call_sent(&Op::Getattr { ino: ROOT }, None, &mut sent, || {}).await;
                    (r, sent)
                })
            })
            .collect();
        // A request of a caller that does not send again (a plain call) is not one to wait for after a break.
        let plain = tokio::spawn({
            let c = c.clone();
            async move { c.call(Op::Getattr { ino: ROOT }).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(replay.left(), 0, "nothing is lost while the connection stands");
        drop(b);
        assert_eq!(plain.await.unwrap(), Err(libc::EIO));
        let mut origins = Vec::new();
        for t in calls {
            let (r, sent) = t.await.unwrap();
            assert_eq!(r, Err(libc::EIO));
            origins.push(sent.expect("sent before the break"));
        }
        origins.sort();
        origins.dedup();
        assert_eq!(origins.len(), 3, "{origins:?}");
        assert!(origins.iter().all(|&(conn, id)| conn == c.id() && (1..=4).contains(&id)), "{origins:?}");
        assert_eq!(replay.left(), 3, "each waiting request of a sender that sends again is one to send again");
        // A fourth origin of an older connection, and the senders back in the wrong order.
        replay.lose(std::iter::once((0, 7)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        let mut all = origins.clone();
        all.push((0, 7));
        for o in all.iter().rev().copied().map(Some).chain([None]) {
            let (replay, order) = (Arc::clone(&replay), Arc::clone(&order));
            waiting.push(tokio::spawn(async move {
                replay.turn(o).await;
                order.lock().unwrap().push(o);
                if let Some(o) = o {
                    replay.settle(o);
                }
            }));
            tokio::task::yield_now().await;
        }
        for t in waiting {
            tokio::time::timeout(std::time::Duration::from_secs(5), t).await.expect("every one goes").unwrap();
        }
        let mut want: Vec<_> = [(0, 7)].into_iter().chain(origins).map(Some).collect();
        want.push(None);
        assert_eq!(*order.lock().unwrap(), want);
        assert_eq!(replay.left(), 0);
        // Nothing lost: a new request does not wait.
        tokio::time::timeout(std::time::Duration::from_secs(1), replay.turn(None)).await.unwrap();
    }

    /// An exporter that sends garbage is cut off, not believed.
    #[tokio::test]
    async fn a_garbage_answer_closes_the_connection() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let c = Conn::start(Box::new(a), None);
        let call = tokio::spawn({
            let c = c.clone();
            async move { c.call(Op::Getattr { ino: ROOT }).await }
        });
        b.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        assert_eq!(call.await.unwrap(), Err(libc::EIO));
        // A frame claiming more than the limit is refused before it is read.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let c2 = Conn::start(Box::new(a), None);
        b.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), c2.closed().cancelled()).await.unwrap();
        drop(c);
    }
}
