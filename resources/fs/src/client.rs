//! The binding side's connection: metac-fs/1 requests pipelined on one stream. [`Conn::call`] may be called from
//! many tasks at once; up to [`MAX_IN_FLIGHT`] requests are outstanding (a permit each, taken before the request is
//! queued), each answered in whatever order the exporter finishes them.
//!
//! One task owns the stream's writing half and the table of requests waiting for answers; a second reads answers
//! (bounded frames, bounded decoder) and hands them over. When the stream ends or breaks every waiting request gets
//! EIO, as does every later one, and [`Conn::closed`] fires so the session knows to reconnect.

use std::collections::HashMap;
use std::sync::Arc;

use metac_resource::{frame, BoxStream, Status};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::proto::{self, Op, Reply, Request, Response, MAX_IN_FLIGHT};

type Answer = oneshot::Sender<Result<Reply, i32>>;

/// A pipelined connection to an exporter.
#[derive(Clone)]
pub struct Conn {
    tx: mpsc::Sender<(Op, Answer)>,
    permits: Arc<Semaphore>,
    closed: CancellationToken,
}

impl Conn {
    /// Starts the connection's tasks on `stream` (already past the resource handshake), counting bytes in
    /// `status` when given.
    pub fn start(stream: BoxStream, status: Option<Arc<Status>>) -> Conn {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let closed = CancellationToken::new();
        tokio::spawn(drive(stream, rx, status, closed.clone()));
        Conn { tx, permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)), closed }
    }

    /// Sends `op` and waits for its answer: the reply, or the errno of the failure (EIO when the connection is
    /// gone).
    pub async fn call(&self, op: Op) -> Result<Reply, i32> {
        let _permit = self.permits.acquire().await.map_err(|_| libc::EIO)?;
        let (answer, rx) = oneshot::channel();
        self.tx.send((op, answer)).await.map_err(|_| libc::EIO)?;
        rx.await.unwrap_or(Err(libc::EIO))
    }

    /// Fires when the stream has ended or broken.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Ends the connection.
    pub fn close(&self) {
        self.closed.cancel();
    }
}

async fn drive(
    stream: BoxStream,
    mut rx: mpsc::Receiver<(Op, Answer)>,
    status: Option<Arc<Status>>,
    closed: CancellationToken,
) {
    let (mut rd, wr) = tokio::io::split(stream);
    // A frame's length and body leave in one write (one transport frame), not two.
    let mut wr = tokio::io::BufWriter::with_capacity(64 << 10, wr);
    let (resp_tx, mut resp_rx) = mpsc::channel::<Response>(MAX_IN_FLIGHT);
    let count = |n: usize| {
        if let Some(s) = &status {
            s.count(n as u64);
        }
    };
    let reader = {
        let closed = closed.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let r = async {
                while let Some(body) = crate::exporter::read_body(&mut rd).await? {
                    if let Some(s) = &status {
                        s.count(body.len() as u64 + 4);
                    }
                    let resp =
                        proto::decode_response(&body).map_err(|e| metac_resource::Error::Protocol(e.to_string()))?;
                    if resp_tx.send(resp).await.is_err() {
                        break;
                    }
                }
                Ok::<(), metac_resource::Error>(())
            }
            .await;
            if let Err(e) = r {
                tracing::debug!("fs connection: {e}");
            }
            closed.cancel();
        })
    };
    let mut waiting: HashMap<u64, Answer> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            () = closed.cancelled() => break,
            cmd = rx.recv() => {
                let Some((op, answer)) = cmd else { break };
                next_id += 1;
                let req = Request { id: next_id, op };
                waiting.insert(next_id, answer);
                let len = match &req.op { Op::Write { data, .. } => data.len() + 32, _ => 32 };
                if let Err(e) = frame::write(&mut wr, &req).await {
                    tracing::debug!("fs connection: {e}");
                    break;
                }
                count(len);
            }
            resp = resp_rx.recv() => {
                let Some(resp) = resp else { break };
                match waiting.remove(&resp.id) {
                    Some(answer) => { let _ = answer.send(resp.result); }
                    None => {
                        tracing::warn!("fs connection: the exporter answered request {} that is not waiting", resp.id);
                        break;
                    }
                }
            }
        }
    }
    closed.cancel();
    reader.abort();
    // Everything still waiting, or queued, gets EIO (the senders drop).
    drop(waiting);
    rx.close();
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
