//! The `file` kind's API: its routes, merged into the node's, and the request types its CLI sends.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/file/cat` [`CatReq`] | the export's bytes, as a chunked body |
//! | `POST /v1/file/get` [`GetReq`] | the export's bytes from `offset` on; its size in the [`SIZE_HEADER`] |
//! | `POST /v1/file/put` [`PutReq`] | upgrade: `len` raw bytes up, written at `offset` and flushed; [`PutEvent`] lines down |
//!
//! Each route opens the stream to the exporter and runs the NBD handshake before it answers, so a refused ref, a
//! read-only export or a range that does not fit comes back as a JSON error and no byte moves. A read that fails
//! later ends its body with the reason in the [`ERROR_TRAILER`] (if the client asked for trailers, else the body is
//! cut), after the bytes copied; a put ends with a [`PutEvent`] that carries the reason and how far the exporter
//! acknowledged. Both are one-shot sessions the node runs and lists (`metac file ls`) while they last. Binds
//! (`metac file bind`, `ls`, `unbind`) use the node's generic `/v1/binds` routes with this kind's
//! [`FileBind`](super::FileBind) options.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use metac_api::client::UPGRADE_PROTOCOL;
use metac_api::server::Json;
use metac_resource::{BoxStream, Caller, Ctx, Error, Kind, Ref, Start};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::session::Outcome;
use super::{CatSession, PutSession, PROTOCOL};
use crate::Connection;

pub use metac_api::client::ERROR_TRAILER;

/// The header of a `get` answer that gives the export's size in bytes.
pub const SIZE_HEADER: &str = "metac-size";

/// `POST /v1/file/cat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatReq {
    /// The ref to read.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// `POST /v1/file/get`: the export's bytes from `offset` to its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetReq {
    /// The ref to read.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Where to start, in bytes; at most the export's size.
    #[serde(default)]
    pub offset: u64,
}

/// `POST /v1/file/put`, upgraded: the client then sends exactly `len` bytes, written at `offset`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutReq {
    /// The ref to write; it must grant write.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Where the bytes go in the export.
    #[serde(default)]
    pub offset: u64,
    /// How many bytes the client sends; `offset + len` must not pass the export's size.
    pub len: u64,
}

/// One line (JSON, then `\n`) the node sends on an upgraded put: progress while it runs, then a last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutEvent {
    /// Position in the export up to which the exporter acknowledged the writes.
    pub acked: u64,
    /// The last line: the put ended, flushed on the exporter if `error` is `None`.
    #[serde(default)]
    pub done: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The kind's routes, with the VM routes (`/v1/vm...`, [`crate::vm::api`]) on the same node's VMs.
pub fn routes(ctx: Ctx) -> Router {
    let vms = crate::vm::VmManager::new(ctx.clone());
    Router::new()
        .route("/v1/file/cat", post(cat))
        .route("/v1/file/get", post(get))
        .route("/v1/file/put", post(put))
        .with_state(ctx)
        .merge(crate::vm::api::routes(vms))
}

/// Parses a ref given by a user and checks that it is one of `kind`.
pub fn parse_ref(s: &str, kind: Kind) -> Result<Ref, Error> {
    let r: Ref = s.trim().parse().map_err(|e| Error::BadOptions(format!("bad ref: {e}")))?;
    match r.token.kind() {
        k if k == kind => Ok(r),
        k => Err(Error::BadOptions(format!("this ref is for a {k} resource, not a {kind}"))),
    }
}

/// Opens a stream to the exporter of `reference` and runs the NBD handshake on it.
async fn connect(ctx: &Ctx, reference: &Ref) -> Result<Connection<BoxStream>, Error> {
    let stream = ctx.binder.open(reference, PROTOCOL).await?;
    Connection::open(stream).await.map_err(|e| Error::Protocol(format!("NBD handshake with the exporter: {e}")))
}

async fn cat(State(ctx): State<Ctx>, caller: Caller, headers: HeaderMap, Json(req): Json<CatReq>) -> Response {
    read(&ctx, &headers, req.reference, 0, caller).await
}

async fn get(State(ctx): State<Ctx>, caller: Caller, headers: HeaderMap, Json(req): Json<GetReq>) -> Response {
    read(&ctx, &headers, req.reference, req.offset, caller).await
}

/// Answers with the export's bytes from `offset` on, or with the error that kept the read from starting.
async fn read(ctx: &Ctx, headers: &HeaderMap, reference: String, offset: u64, owner: Caller) -> Response {
    let reference = match parse_ref(&reference, Kind::File) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let conn = match connect(ctx, &reference).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let size = conn.size();
    if offset > size {
        return Error::BadOptions(format!("offset {offset} is past the end of the export ({size} bytes)"))
            .into_response();
    }
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let (result_tx, result_rx) = oneshot::channel();
    let session = CatSession::new(conn, offset, writer).report_to(result_tx);
    let start = Start { kind: Kind::File, reference, session: Box::new(session), persist: None, owner };
    if let Err(e) = ctx.binder.start(start) {
        return e.into_response();
    }
    let trailers = headers.get(header::TE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("trailers"));
    let body = pump(reader, result_rx, trailers);
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(body)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(SIZE_HEADER, HeaderValue::from(size));
    if trailers {
        h.insert(header::TRAILER, HeaderValue::from_static(ERROR_TRAILER));
    }
    resp
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

/// The pipe's bytes as body frames, from a task of their own, at most 8 chunks ahead of the client. A failure
/// the session reports after its bytes ends the body with the [`ERROR_TRAILER`] if the client takes trailers,
/// else with an error, which cuts the body.
fn pump(
    mut reader: tokio::io::DuplexStream,
    result: oneshot::Receiver<Outcome>,
    trailers: bool,
) -> impl futures::Stream<Item = Chunk> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Chunk>(8);
    tokio::spawn(async move {
        loop {
            let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
            match reader.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(Ok(Frame::data(buf.freeze()))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        let why = match result.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "the transfer was cut".to_string(),
        };
        let end = if trailers {
            let mut t = HeaderMap::new();
            t.insert(ERROR_TRAILER, header_text(&why));
            Ok(Frame::trailers(t))
        } else {
            Err(std::io::Error::other(why))
        };
        let _ = tx.send(end).await;
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// `s` as a header value: printable ASCII, at most 1000 characters.
fn header_text(s: &str) -> HeaderValue {
    let text: String = s.chars().take(1000).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("the transfer failed"))
}

/// Checks the put (ref, write access, size) with the exporter, then upgrades and runs it on the connection.
async fn put(State(ctx): State<Ctx>, caller: Caller, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let put = match axum::body::to_bytes(body, metac_api::MAX_REQUEST).await {
        Ok(b) => serde_json::from_slice::<PutReq>(&b).map_err(|e| Error::BadOptions(format!("bad put request: {e}"))),
        Err(e) => Err(Error::BadOptions(format!("bad put request: {e}"))),
    };
    let checked = match put {
        Ok(put) => check_put(&ctx, put).await,
        Err(e) => Err(e),
    };
    let (reference, conn, put) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut req = Request::from_parts(parts, ());
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => run_put(&ctx, TokioIo::new(up), reference, conn, put, caller).await,
            Err(e) => tracing::debug!("file put: the upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE_PROTOCOL)
        .body(Body::empty())
        .expect("response")
}

async fn check_put(ctx: &Ctx, put: PutReq) -> Result<(Ref, Connection<BoxStream>, PutReq), Error> {
    let reference = parse_ref(&put.reference, Kind::File)?;
    let conn = connect(ctx, &reference).await?;
    if conn.read_only() {
        return Err(Error::BadOptions(
            "this ref is read-only (it grants no write, or the file was exported read-only): put needs a ref with \
             write access"
                .into(),
        ));
    }
    let size = conn.size();
    match put.offset.checked_add(put.len) {
        Some(end) if end <= size => Ok((reference, conn, put)),
        _ => Err(Error::BadOptions(format!(
            "{} bytes at offset {} do not fit the export of {size} bytes: a put cannot grow an export",
            put.len, put.offset
        ))),
    }
}

/// Runs the put as a session the node lists, and sends its progress and outcome down the connection.
async fn run_put(
    ctx: &Ctx,
    io: TokioIo<hyper::upgrade::Upgraded>,
    reference: Ref,
    conn: Connection<BoxStream>,
    put: PutReq,
    owner: Caller,
) {
    let (rd, mut wr) = tokio::io::split(io);
    let (acked_tx, mut acked) = watch::channel(put.offset);
    let (result_tx, mut result) = oneshot::channel();
    let session = PutSession::new(conn, put.offset, put.len, rd, acked_tx, result_tx);
    let start = Start { kind: Kind::File, reference, session: Box::new(session), persist: None, owner };
    let outcome = match ctx.binder.start(start) {
        Ok(_) => loop {
            tokio::select! {
                r = &mut result => break r.unwrap_or_else(|_| Err("the transfer was cut".into())),
                Ok(()) = acked.changed() => {
                    let line = PutEvent { acked: *acked.borrow_and_update(), done: false, error: None };
                    if send_line(&mut wr, &line).await.is_err() {
                        // The client went away; the session ends when its input does.
                        return;
                    }
                }
            }
        },
        Err(e) => Err(e.to_string()),
    };
    let last = PutEvent { acked: *acked.borrow(), done: true, error: outcome.err() };
    let _ = send_line(&mut wr, &last).await;
    let _ = wr.shutdown().await;
}

async fn send_line<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, e: &PutEvent) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}
