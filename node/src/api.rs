//! The local API: HTTP/1.1 + JSON over a Unix socket (mode 0600), like Docker's and Tailscale's. The `metac` CLI
//! is a client of it, and so is `curl --unix-socket SOCK http://metac/v1/status`. Errors are JSON
//! `{"error": "..."}` with a 4xx/5xx status; file contents stream as the response body.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::token::Caveat;
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::node::{describe, parse_ref, unix_now, Node};
use crate::Error;

/// Largest JSON request body.
const MAX_BODY: usize = 64 * 1024;

type Body = BoxBody<Bytes, std::io::Error>;

/// Binds the API socket: refuses to steal the socket of a running node, removes a stale one, sets mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Api(format!("cannot create {}: {e}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Api(format!(
                "another metac node is already running on {} (stop it, or give this one --socket PATH)",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|e| Error::Api(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Api(format!("cannot chmod {}: {e}", path.display())))?;
    Ok(l)
}

/// Serves API connections until `cancel` fires.
pub async fn serve(listener: UnixListener, node: Arc<Node>, cancel: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => break,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let node = Arc::clone(&node);
                async move { Ok::<_, Infallible>(handle(node, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
            {
                tracing::debug!("api connection: {e}");
            }
        });
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let body = Full::new(Bytes::from(v.to_string())).map_err(|never| match never {}).boxed();
    Response::builder().status(status).header("content-type", "application/json").body(body).expect("valid response")
}

fn error_response(e: ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({ "error": e.message }),
    )
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad(format!("cannot read the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("bad request body: {e}")))
}

async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let result = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/status") => status(&node).await,
        (Method::GET, "/v1/peers") => peers(&node).await,
        (Method::GET, "/v1/resources") => resources(&node, &query).await,
        (Method::GET, "/v1/exports") => node.exports().map(|e| json!(e)),
        (Method::POST, "/v1/exports") => export(&node, req).await,
        (Method::DELETE, p) if p.starts_with("/v1/exports/") => node
            .unexport(&p["/v1/exports/".len()..])
            .await
            .map(|e| json!({ "removed": e.id.to_string(), "name": e.name })),
        (Method::GET, "/v1/refs") => node.refs().map(|r| json!(r)),
        (Method::POST, "/v1/refs/show") => show(&node, req).await,
        (Method::POST, "/v1/refs/delegate") => delegate(&node, req).await,
        (Method::POST, "/v1/refs/revoke") => revoke(&node, req).await,
        (Method::GET, "/v1/overlay") => Ok(node.overlay().status()),
        (Method::POST, "/v1/overlay/wg-config") => wg_config(&node, req).await,
        (Method::DELETE, p) if p.starts_with("/v1/overlay/guests/") => node
            .remove_guest(&p["/v1/overlay/guests/".len()..])
            .map(|_| json!({ "removed": &p["/v1/overlay/guests/".len()..] })),
        (_, p) => Err(ApiError::not_found(format!("no API endpoint {p}"))),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
struct WgConfigReq {
    name: String,
    endpoint: Option<String>,
    public_key: Option<String>,
}

async fn wg_config(node: &Node, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let r: WgConfigReq = read_json(req).await?;
    node.wg_config(&r.name, r.endpoint.as_deref(), r.public_key.as_deref()).await
}

async fn status(node: &Node) -> Result<serde_json::Value, ApiError> {
    let snap = node.snapshot().await?;
    let exports = node.exports()?.len();
    Ok(json!({
        "key": snap.key,
        "peer_id": snap.peer_id,
        "overlay": snap.overlay,
        "listen": snap.listen,
        "peers": snap.connected,
        "connections": snap.connections,
        "known_nodes": snap.nodes.len(),
        "exports": exports,
        "state": node.state_dir(),
        "overlay_status": node.overlay().summary(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn peers(node: &Node) -> Result<serde_json::Value, ApiError> {
    let snap = node.snapshot().await?;
    let list: Vec<_> = snap
        .nodes
        .iter()
        .map(|n| {
            json!({
                "key": n.key, "peer_id": n.peer_id, "overlay": n.overlay, "addrs": n.addrs,
                "reachable": n.reachable, "via": n.via, "last_seen_ms": n.last_seen_ms, "resources": n.resources.len(),
            })
        })
        .collect();
    Ok(json!(list))
}

async fn resources(node: &Node, query: &str) -> Result<serde_json::Value, ApiError> {
    let kind = match query.split('&').find_map(|kv| kv.strip_prefix("kind=")) {
        Some(k) => Some(k.parse::<Kind>().map_err(|e| ApiError::bad(e.to_string()))?),
        None => None,
    };
    let snap = node.snapshot().await?;
    let me = node.me().to_hex();
    let mut out = vec![];
    let mine = node.exports()?;
    for e in mine.iter().filter(|e| kind.is_none_or(|k| k == e.kind)) {
        out.push(
            json!({ "node": me, "overlay": snap.overlay, "kind": e.kind, "name": e.name, "id": e.id, "local": true }),
        );
    }
    for n in &snap.nodes {
        for r in n.resources.iter().filter(|r| kind.is_none_or(|k| k == r.kind)) {
            out.push(json!({
                "node": n.key, "overlay": n.overlay, "kind": r.kind, "name": r.name, "id": r.id.to_string(),
                "local": false, "reachable": n.reachable,
            }));
        }
    }
    Ok(json!(out))
}

#[derive(Deserialize)]
struct ExportReq {
    kind: String,
    source: String,
    name: Option<String>,
    #[serde(default)]
    read_only: bool,
}

async fn export(node: &Node, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let r: ExportReq = read_json(req).await?;
    let kind: Kind = r.kind.parse().map_err(|e: metac_mesh::kind::Error| ApiError::bad(e.to_string()))?;
    let rights = r.read_only.then(|| kind.rights().remove(Rights::WRITE));
    let (e, reference) = node.export(kind, r.source, r.name, rights, serde_json::Value::Null).await?;
    Ok(json!({ "id": e.id.to_string(), "name": e.name, "kind": e.kind, "ref": reference.to_string() }))
}

#[derive(Deserialize)]
struct RefReq {
    #[serde(rename = "ref")]
    reference: String,
}

async fn show(node: &Node, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let r: RefReq = read_json(req).await?;
    let reference = parse_ref(&r.reference)?;
    let mut v = json!(describe(&reference));
    v["state"] = json!(node.revocation_state(&reference).await);
    Ok(v)
}

#[derive(Deserialize)]
struct DelegateReq {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    read_only: bool,
    /// Seconds from now.
    expires_in: Option<u64>,
    to: Option<String>,
    #[serde(default)]
    seal: bool,
}

async fn delegate(node: &Node, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let d: DelegateReq = read_json(req).await?;
    let r = parse_ref(&d.reference)?;
    let current = r.token.effective();
    let rights = d.read_only.then(|| current.rights.remove(Rights::WRITE));
    if rights.is_some_and(|r| r.is_empty()) {
        return Err(ApiError::bad("a read-only copy of this ref would grant nothing"));
    }
    let audience = match d.to {
        Some(n) => Some(node.resolve_node(&n).await?),
        None => None,
    };
    let caveat = Caveat { rights, expires: d.expires_in.map(|s| unix_now() + s), audience, path: None };
    let child = node.delegate(&r, &caveat, d.seal)?;
    Ok(json!({ "ref": child.to_string(), "id": child.token.id().to_string() }))
}

async fn revoke(node: &Node, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let r: RefReq = read_json(req).await?;
    let message = node.revoke(&parse_ref(&r.reference)?).await?;
    Ok(json!({ "revoked": true, "message": message }))
}
