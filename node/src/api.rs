//! The local API: HTTP/1.1 + JSON over a Unix socket, like Docker's and Tailscale's. The `metac` CLI is a client
//! of it, and so is `curl --unix-socket SOCK http://metac/v1/status`. Errors are JSON `{"error": "..."}` with a
//! 4xx/5xx status; file contents stream as the response body.
//!
//! Root, the node's user and the members of the API group may use it ([`crate::access`]): the socket is `0660
//! root:<group>` (`0600` without a group), and every connection's caller is checked with `SO_PEERCRED` and passed
//! to the handlers as a [`Caller`] (a request extension that handlers take as an argument).
//!
//! The routes are an axum [`Router`]: the node's core routes here, merged with the routers kinds contribute
//! ([`router`]); requests and responses are the types of [`metac_api::types`], shared with every client.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as Segment, Query, State};
use axum::routing::{delete, get, post};
use axum::Router;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use metac_api::server::{self, Json};
use metac_api::types::{
    DelegateReq, DelegateResp, ExportReq, ExportResp, ExportView, GuestRemoved, OverlayPolicy, OverlayRuleReq,
    PeerView, RefReq, RefView, Removed, ResourceView, ResourcesQuery, RevokeResp, SaveReq, SavedView, StatusView,
    TokenView, WgConfigReq,
};
use metac_mesh::kind::Kind;
use metac_mesh::token::Caveat;
use metac_resource::Caller;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::access::{admin_only, Access, ApiGroup};
use crate::error::ApiError;
use crate::node::{parse_ref, unix_now, Node};
pub use crate::refs::ref_view;
use crate::Error;

/// What a handler answers: a JSON body, or an error body.
type Answer<T> = Result<Json<T>, server::Error>;

impl From<ApiError> for server::Error {
    fn from(e: ApiError) -> Self {
        server::Error { status: e.status, message: e.message }
    }
}

/// Binds the API socket: refuses to steal the socket of a running node, removes a stale one, and gives it mode
/// `0660` and the API group when there is one (`0600` otherwise). The directories it makes on the way (`/run/metac`
/// for a system node) are `0711` ([`crate::config::passable_dirs`]), so that the group reaches the socket, whose
/// own mode guards it; a directory that exists is never chmodded, and one the group cannot pass gets a warning
/// saying what to do.
pub fn bind(path: &Path, group: Option<&ApiGroup>) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        crate::config::passable_dirs(dir).map_err(|e| Error::Api(format!("cannot create {}: {e}", dir.display())))?;
        if let Some(g) = group {
            warn_if_unreachable(dir, g);
        }
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
    // Bound under a temporary name, given its group and mode, then renamed into place: the socket never exists at
    // its path with the umask's mode, not even for a moment in which another local user could connect.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(|e| Error::Api(format!("cannot listen on {}: {e}", tmp.display())))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::os::unix::fs::chown(&tmp, None, group.map(|g| g.gid))
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::Api(format!("cannot set up the API socket {}: {e}", path.display()))
        })?;
    Ok(l)
}

/// Warns when the members of `group` cannot pass through `dir` to the socket in it.
fn warn_if_unreachable(dir: &Path, group: &ApiGroup) {
    let Ok(m) = std::fs::metadata(dir) else { return };
    let passes = m.mode() & 0o001 != 0 || (m.gid() == group.gid && m.mode() & 0o010 != 0);
    if !passes {
        tracing::warn!(
            "members of group {} cannot reach the API socket: {} (mode {:o}) does not let them through; `chmod \
             o+x` it, or give the node a --socket in a directory they can pass",
            group.name,
            dir.display(),
            m.mode() & 0o777
        );
    }
}

/// Serves the node's API to the callers `access` admits until `cancel` fires: its core routes, the bind routes,
/// and every kind's routes.
pub async fn serve(listener: UnixListener, node: Arc<Node>, access: Access, cancel: CancellationToken) {
    let mut extra = node.kind_routes();
    extra.push(node.bind_routes());
    serve_router(listener, router(node, extra), access, cancel).await
}

/// The whole API: the node's core routes merged with `extra`, the routers of kinds (their state already applied).
/// Paths and methods no route serves answer 404 `{"error": "no API endpoint PATH"}`; request bodies are limited to
/// [`metac_api::MAX_REQUEST`].
pub fn router(node: Arc<Node>, extra: Vec<Router>) -> Router {
    let core = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/resources", get(resources))
        .route("/v1/exports", get(exports).post(export))
        .route("/v1/exports/{id}", delete(unexport))
        .route("/v1/refs", get(refs))
        .route("/v1/refs/show", post(show))
        .route("/v1/refs/saved", get(saved).post(save))
        .route("/v1/refs/saved/{name}", delete(forget))
        .route("/v1/refs/delegate", post(delegate))
        .route("/v1/refs/revoke", post(revoke))
        .route("/v1/overlay", get(overlay))
        .route("/v1/overlay/wg-config", post(wg_config))
        .route("/v1/overlay/guests/{name}", delete(remove_guest))
        .route("/v1/overlay/allow", post(overlay_allow))
        .route("/v1/overlay/deny", post(overlay_deny))
        .with_state(node);
    extra
        .into_iter()
        .fold(core, Router::merge)
        // After the merge, so that they cover the kinds' routes too.
        .fallback(server::no_endpoint)
        .method_not_allowed_fallback(server::no_endpoint)
        .layer(server::body_limit())
}

/// Serves `router` on `listener` until `cancel` fires. Each connection's caller comes from the kernel
/// ([`crate::access::peer`]); one that `access` refuses gets 403 with the reason for every request, the others
/// reach `router` with their [`Caller`] in every request. Connections are not waited for: a stream or an upgraded
/// session ends with the node's shutdown of whatever feeds it. Upgrades are on, for attach and exec.
pub async fn serve_router(listener: UnixListener, router: Router, access: Access, cancel: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => break,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let (caller, pid) = match crate::access::peer(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("API connection without credentials (dropped): {e}");
                continue;
            }
        };
        let routes = match access.admits(&caller) {
            Ok(()) => router.clone(),
            Err(why) => {
                tracing::warn!(uid = caller.uid, pid, "refused an API connection: {why}");
                refuse_all(why)
            }
        };
        let inner = TowerToHyperService::new(routes);
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(caller.clone());
            inner.call(req)
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("api connection: {e}");
            }
        });
    }
}

/// The routes of a refused connection: 403 with `why` for every request.
fn refuse_all(why: String) -> Router {
    Router::new().fallback(move || async move { server::Error { status: 403, message: why } })
}

async fn status(State(node): State<Arc<Node>>) -> Answer<StatusView> {
    let snap = node.snapshot().await?;
    let exports = node.exports()?.len();
    Ok(Json(StatusView {
        key: snap.key,
        peer_id: snap.peer_id,
        overlay: snap.overlay.to_string(),
        listen: snap.listen,
        peers: snap.connected,
        connections: snap.connections,
        known_nodes: snap.nodes.len(),
        exports,
        state: node.state_dir().to_string_lossy().into_owned(),
        overlay_status: node.overlay().summary(),
        transport: node.transport_summary(),
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

async fn peers(State(node): State<Arc<Node>>) -> Answer<Vec<PeerView>> {
    let snap = node.snapshot().await?;
    let list = snap
        .nodes
        .into_iter()
        .map(|n| PeerView {
            key: n.key,
            peer_id: n.peer_id,
            overlay: n.overlay.to_string(),
            addrs: n.addrs,
            reachable: n.reachable,
            via: via_name(n.via),
            last_seen_ms: n.last_seen_ms,
            resources: n.resources.len(),
        })
        .collect();
    Ok(Json(list))
}

/// How a peer was learned of, by its serde name (the mesh gives `Via` no `Display`).
fn via_name(via: metac_mesh::core::Via) -> String {
    serde_json::to_value(via).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

async fn resources(
    State(node): State<Arc<Node>>,
    query: Result<Query<ResourcesQuery>, QueryRejection>,
) -> Answer<Vec<ResourceView>> {
    let Query(query) = query.map_err(|e| server::Error::bad(e.body_text()))?;
    let kind = match query.kind {
        Some(k) => Some(k.parse::<Kind>().map_err(|e| server::Error::bad(e.to_string()))?),
        None => None,
    };
    let snap = node.snapshot().await?;
    let me = node.me().to_hex();
    let overlay = snap.overlay.to_string();
    let mut out = vec![];
    for e in node.exports()?.into_iter().filter(|e| kind.is_none_or(|k| k.to_string() == e.kind)) {
        out.push(ResourceView {
            node: me.clone(),
            overlay: overlay.clone(),
            kind: e.kind,
            name: e.name,
            id: e.id,
            local: true,
            reachable: None,
        });
    }
    for n in &snap.nodes {
        for r in n.resources.iter().filter(|r| kind.is_none_or(|k| k == r.kind)) {
            out.push(ResourceView {
                node: n.key.clone(),
                overlay: n.overlay.to_string(),
                // `kind-N` for a kind this build does not know: listed all the same.
                kind: r.kind.to_string(),
                name: r.name.clone(),
                id: r.id.to_string(),
                local: false,
                reachable: Some(n.reachable),
            });
        }
    }
    Ok(Json(out))
}

async fn exports(State(node): State<Arc<Node>>) -> Answer<Vec<ExportView>> {
    Ok(Json(node.exports()?))
}

async fn export(State(node): State<Arc<Node>>, caller: Caller, Json(r): Json<ExportReq>) -> Answer<ExportResp> {
    let kind: Kind = r.kind.parse().map_err(|e: metac_mesh::kind::Error| server::Error::bad(e.to_string()))?;
    let rights = crate::refs::narrowed(kind.rights(), r.read_only, None)?;
    let (e, reference) = node.export(kind, r.source, r.name, rights, r.options, &caller).await?;
    Ok(Json(ExportResp {
        id: e.id.to_string(),
        name: e.name,
        kind: e.kind.to_string(),
        reference: reference.to_string(),
    }))
}

async fn unexport(State(node): State<Arc<Node>>, caller: Caller, Segment(id): Segment<String>) -> Answer<Removed> {
    let e = node.unexport(&id, &caller).await?;
    Ok(Json(Removed { removed: e.id.to_string(), name: e.name }))
}

async fn refs(State(node): State<Arc<Node>>, caller: Caller) -> Answer<Vec<TokenView>> {
    Ok(Json(node.refs(&caller)?))
}

async fn saved(State(node): State<Arc<Node>>, caller: Caller) -> Answer<Vec<SavedView>> {
    let mut out = vec![];
    for s in node.saved_refs(&caller)? {
        let Ok(r) = parse_ref(&s.reference) else { continue };
        let g = r.token.effective();
        out.push(SavedView {
            name: s.name,
            kind: g.kind.to_string(),
            rights: g.rights.to_string(),
            issuer: r.token.issuer().to_hex(),
            expires: g.expires,
            state: node.revocation_state(&r).await.to_string(),
            created: s.created,
            reference: s.reference,
        });
    }
    Ok(Json(out))
}

async fn save(State(node): State<Arc<Node>>, caller: Caller, Json(s): Json<SaveReq>) -> Answer<Removed> {
    let r = parse_ref(&s.reference)?;
    node.save_ref(&s.name, &r, &caller)?;
    Ok(Json(Removed { removed: r.token.id().to_string(), name: s.name }))
}

async fn forget(State(node): State<Arc<Node>>, caller: Caller, Segment(name): Segment<String>) -> Answer<Removed> {
    node.forget_ref(&name, &caller)?;
    Ok(Json(Removed { removed: String::new(), name }))
}

async fn show(State(node): State<Arc<Node>>, Json(r): Json<RefReq>) -> Answer<RefView> {
    let reference = parse_ref(&r.reference)?;
    let state = node.revocation_state(&reference).await;
    Ok(Json(ref_view(&reference, state)))
}

async fn delegate(State(node): State<Arc<Node>>, caller: Caller, Json(d): Json<DelegateReq>) -> Answer<DelegateResp> {
    let r = parse_ref(&d.reference)?;
    let rights = crate::refs::narrowed(r.token.effective().rights, d.read_only, d.rights.as_deref())?;
    let audience = match d.to {
        Some(n) => Some(node.resolve_node(&n).await?),
        None => None,
    };
    let path = crate::refs::sub_path(r.token.kind(), d.path.as_deref())?;
    let caveat = Caveat { rights, expires: d.expires_in.map(|s| unix_now() + s), audience, path };
    let child = node.delegate(&r, &caveat, d.seal, &caller)?;
    Ok(Json(DelegateResp { reference: child.to_string(), id: child.token.id().to_string() }))
}

async fn revoke(State(node): State<Arc<Node>>, caller: Caller, Json(r): Json<RefReq>) -> Answer<RevokeResp> {
    let message = node.revoke(&parse_ref(&r.reference)?, &caller).await?;
    Ok(Json(RevokeResp { revoked: true, message }))
}

async fn overlay(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    Json(node.overlay().status())
}

async fn wg_config(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Json(r): Json<WgConfigReq>,
) -> Answer<serde_json::Value> {
    admin_only(&caller, "admitting a WireGuard guest to the overlay")?;
    Ok(Json(node.wg_config(&r.name, r.endpoint.as_deref(), r.public_key.as_deref()).await?))
}

async fn overlay_allow(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Json(r): Json<OverlayRuleReq>,
) -> Answer<OverlayPolicy> {
    overlay_rule(&node, &caller, crate::policy::Action::Allow, r).await
}

async fn overlay_deny(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Json(r): Json<OverlayRuleReq>,
) -> Answer<OverlayPolicy> {
    overlay_rule(&node, &caller, crate::policy::Action::Deny, r).await
}

async fn overlay_rule(
    node: &Node,
    caller: &Caller,
    action: crate::policy::Action,
    r: OverlayRuleReq,
) -> Answer<OverlayPolicy> {
    admin_only(caller, "the overlay's inbound policy")?;
    let rules = node.overlay_rule(action, &r.rule, r.from.as_deref()).await?;
    let default = node.overlay().policy().map(|p| p.default_text().to_string()).unwrap_or_default();
    Ok(Json(OverlayPolicy { default, rules: rules.iter().map(|r| r.to_string()).collect() }))
}

async fn remove_guest(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Segment(name): Segment<String>,
) -> Answer<GuestRemoved> {
    admin_only(&caller, "removing a WireGuard guest of the overlay")?;
    node.remove_guest(&name)?;
    Ok(Json(GuestRemoved { removed: name }))
}
