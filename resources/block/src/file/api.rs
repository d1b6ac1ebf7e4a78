//! The `file` kind's API: its routes, merged into the node's, and the request types its CLI sends.
//!
//! `POST /v1/file/cat {"ref": REF}` streams the export's bytes as a chunked body. The handshake with the exporter
//! happens before the `200`, so a refused ref comes back as a JSON error; a transfer that fails later ends the body
//! with an error, which the client reports. Binds (`metac file bind`, `ls`, `unbind`) use the node's generic
//! `/v1/binds` routes with this kind's [`FileBind`](super::FileBind) options.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use metac_api::server::Json;
use metac_resource::{Caller, Ctx, Error, Kind, Ref, Start};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use super::{CatSession, PROTOCOL};

/// `POST /v1/file/cat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatReq {
    /// The ref to read.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// The kind's routes, with the VM routes (`/v1/vm...`, [`crate::vm::api`]) on the same node's VMs.
pub fn routes(ctx: Ctx) -> Router {
    let vms = crate::vm::VmManager::new(ctx.clone());
    Router::new().route("/v1/file/cat", post(cat)).with_state(ctx).merge(crate::vm::api::routes(vms))
}

/// Parses a ref given by a user and checks that it is one of `kind`.
pub fn parse_ref(s: &str, kind: Kind) -> Result<Ref, Error> {
    let r: Ref = s.trim().parse().map_err(|e| Error::BadOptions(format!("bad ref: {e}")))?;
    match r.token.kind() {
        k if k == kind => Ok(r),
        k => Err(Error::BadOptions(format!("this ref is for a {k} resource, not a {kind}"))),
    }
}

async fn cat(State(ctx): State<Ctx>, caller: Caller, Json(req): Json<CatReq>) -> Response {
    match start_cat(&ctx, &req, caller).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

type Chunk = Result<Bytes, std::io::Error>;

async fn start_cat(
    ctx: &Ctx,
    req: &CatReq,
    owner: Caller,
) -> Result<impl futures::Stream<Item = Chunk> + Send + 'static, Error> {
    let reference = parse_ref(&req.reference, Kind::File)?;
    let stream = ctx.binder.open(&reference, PROTOCOL).await?;
    let (writer, mut reader) = tokio::io::duplex(1 << 20);
    let (result_tx, result_rx) = oneshot::channel();
    let session = CatSession::new(stream, writer).report_to(result_tx);
    ctx.binder.start(Start { kind: Kind::File, reference, session: Box::new(session), persist: None, owner })?;
    // Pump the pipe into the body; the size is known only after the NBD handshake, so the body is chunked.
    let (tx, rx) = mpsc::channel::<Chunk>(8);
    tokio::spawn(async move {
        loop {
            let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
            match reader.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(Ok(buf.freeze())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        // The session reports a failure after the bytes it managed to copy; the body then ends with an error.
        match result_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
            }
            Err(_) => {
                let _ = tx.send(Err(std::io::Error::other("the transfer was cut"))).await;
            }
        }
    });
    Ok(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }))
}
