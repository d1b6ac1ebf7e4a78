//! One-shot transfers a route of the kind starts: [`CatSession`] (`metac file cat` and `get`) reads the export
//! from an offset to its end into a pipe the API streams out; [`PutSession`] (`metac file put`) writes a stream
//! into a range of the export and flushes it. Both are handed a [`Connection`] already past the NBD handshake, so
//! that a refused ref, a read-only export or a size that does not fit reaches the caller as an error of the
//! request, before any byte moves. The bind's endpoint (`metac file bind`) is in `endpoint`.

use metac_resource::{BoxFuture, BoxStream, Error, Link, Session};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::Connection;

/// How a one-shot transfer ended, for the route that streams it: `Err` carries the reason in words.
pub type Outcome = Result<(), String>;

/// `metac file cat` and `get`: the export from an offset to its end, once, into `out`. Not retried: the bytes
/// already sent cannot be unsent.
pub struct CatSession<W> {
    conn: Option<Connection<BoxStream>>,
    offset: u64,
    out: W,
    report: Option<oneshot::Sender<Outcome>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> CatSession<W> {
    /// A read of the export behind `conn` from `offset` into `out`.
    pub fn new(conn: Connection<BoxStream>, offset: u64, out: W) -> CatSession<W> {
        CatSession { conn: Some(conn), offset, out, report: None }
    }

    /// Also sends the outcome to `tx` (the API ends the body with the error, after the bytes copied).
    pub fn report_to(mut self, tx: oneshot::Sender<Outcome>) -> CatSession<W> {
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
            let conn = self.conn.take().ok_or_else(|| Error::Protocol("a one-shot read runs once".into()))?;
            link.up();
            let status = link.status();
            let mut last = self.offset;
            let copy = conn.read_to(self.offset, &mut self.out, |done, _| {
                status.count(done - last);
                last = done;
            });
            let r = tokio::select! {
                () = cancel.cancelled() => Err(Error::Cancelled),
                r = copy => r.map(drop).map_err(|e| Error::Protocol(e.to_string())),
            };
            // Close the pipe first, so the reader sees the end of the data before the outcome.
            let _ = self.out.shutdown().await;
            report(&mut self.report, &r);
            r
        })
    }
}

/// `metac file put`: `len` bytes of `input` into the export at `offset`, flushed, once. `acked` follows the
/// position in the export up to which the exporter acknowledged the writes.
pub struct PutSession<R> {
    conn: Option<Connection<BoxStream>>,
    offset: u64,
    len: u64,
    input: R,
    acked: watch::Sender<u64>,
    report: Option<oneshot::Sender<Outcome>>,
}

impl<R: AsyncRead + Unpin + Send + 'static> PutSession<R> {
    /// A write of `len` bytes of `input` at `offset` through `conn`; progress goes to `acked`, the outcome to
    /// `report`.
    pub fn new(
        conn: Connection<BoxStream>,
        offset: u64,
        len: u64,
        input: R,
        acked: watch::Sender<u64>,
        report: oneshot::Sender<Outcome>,
    ) -> PutSession<R> {
        PutSession { conn: Some(conn), offset, len, input, acked, report: Some(report) }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Session for PutSession<R> {
    fn target(&self) -> String {
        "stdin".into()
    }

    fn reconnects(&self) -> bool {
        false
    }

    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let conn = self.conn.take().ok_or_else(|| Error::Protocol("a one-shot write runs once".into()))?;
            link.up();
            let status = link.status();
            let (acked, mut last) = (&self.acked, self.offset);
            let copy = conn.write_from(self.offset, self.len, &mut self.input, |done, _| {
                status.count(done - last);
                last = done;
                acked.send_replace(done);
            });
            let r = tokio::select! {
                () = cancel.cancelled() => Err(Error::Cancelled),
                r = copy => r.map(drop).map_err(|e| Error::Protocol(e.to_string())),
            };
            report(&mut self.report, &r);
            r
        })
    }
}

fn report(to: &mut Option<oneshot::Sender<Outcome>>, r: &Result<(), Error>) {
    if let Some(tx) = to.take() {
        let _ = tx.send(r.as_ref().map(drop).map_err(|e| match e {
            Error::Cancelled => "the transfer was cut (ref revoked or expired, or the node stopped)".into(),
            e => e.to_string(),
        }));
    }
}
