//! [`CatSession`] (`metac file cat`) reads the whole export once, in order, into a pipe the API streams out. The
//! bind's endpoint (`metac file bind`) is in `endpoint`.

use metac_resource::{BoxFuture, BoxStream, Error, Link, Session};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

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
