//! This node's binds of other nodes' resources (and its own), as sessions it owns. A bind of any kind is made from
//! a ref and the kind's bind options ([`Node::bind_ref`], `POST /v1/binds`) or by a kind's own route (`file cat`),
//! listed (`GET /v1/binds`), cut by unbind, by revocation (the exporter refuses it from then on), by expiry (at that
//! second) and by node stop, and re-established after a restart when it was made persistent. The runner here
//! drives each session: it retries a session that reconnects with a bounded backoff while its exporter is away, and
//! records why it stopped. A bind belongs to the local user who made it: its kind makes what it needs (a socket)
//! as that user, only that user or root may unbind it, and its ref is shown to them alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::{Path, Query, State as AxState};
use axum::routing::{delete, get};
use axum::Router;
use metac_api::server::Json;
use metac_api::types::{BindReq, BindView, BindsQuery, Unbound};
use metac_mesh::kind::Kind;
use metac_mesh::token::Ref;
use metac_resource::{
    BoxFuture, BoxStream, Caller, Error, Hello, Link, Opener, Session, Start, Started, State, Status,
};
use tokio_util::sync::CancellationToken;

use crate::access::{may_see, owner_only};
use crate::error::ApiError;
use crate::node::{short, unix_now, Node};
use crate::store::BindRecord;

/// Extra attempts at opening a stream that failed before the exporter answered (a connection closed while the
/// mesh settles); a refusal is never retried.
const OPEN_RETRIES: u64 = 3;
/// First wait before a lost session tries again; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two attempts of a session.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long unbind and stop wait for a session to release what it holds.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

struct Entry {
    kind: Kind,
    reference: Ref,
    target: String,
    persistent: bool,
    created: u64,
    owner: Caller,
    status: Arc<Status>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The binds of this node.
#[derive(Default)]
pub(crate) struct Binds(Mutex<HashMap<String, Entry>>);

impl Binds {
    /// Cuts every bind and waits (bounded) for each to release what it holds. Persistent binds stay recorded.
    pub(crate) async fn stop_all(&self) {
        let tasks: Vec<_> = {
            let mut map = self.0.lock().expect("binds lock");
            map.values_mut()
                .filter_map(|e| {
                    e.cancel.cancel();
                    e.task.take()
                })
                .collect()
        };
        for t in tasks {
            let _ = tokio::time::timeout(CLOSE_WAIT, t).await;
        }
    }
}

/// The node as kinds see it: a [`metac_resource::Binder`]. Weak, so that a kind holding it keeps no node alive.
pub(crate) struct NodeBinder(pub(crate) Weak<Node>);

impl NodeBinder {
    fn node(&self) -> Result<Arc<Node>, Error> {
        self.0.upgrade().ok_or(Error::Cancelled)
    }
}

impl Opener for NodeBinder {
    fn open<'a>(&'a self, r: &'a Ref, protocol: &'static str) -> BoxFuture<'a, Result<BoxStream, Error>> {
        Box::pin(async move { self.node()?.open_bind(r, protocol).await })
    }
}

impl metac_resource::Binder for NodeBinder {
    fn start(&self, start: Start) -> Result<Started, Error> {
        self.node()?.start_session(None, start)
    }

    fn bind(
        &self,
        reference: Ref,
        options: serde_json::Value,
        persist: bool,
        owner: Caller,
    ) -> BoxFuture<'_, Result<Started, Error>> {
        Box::pin(async move { self.node()?.bind_ref(reference, options, persist, &owner).map_err(api_to_resource) })
    }

    fn unbind<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        // A kind cutting a bind it made: the node's own doing.
        Box::pin(async move { self.node()?.unbind(id, &Caller::root()).await.map(drop).map_err(api_to_resource) })
    }
}

pub(crate) fn api_to_resource(e: ApiError) -> Error {
    match e.status {
        400 => Error::BadOptions(e.message),
        404 => Error::NotFound(e.message),
        503 => Error::Unavailable(e.message),
        403 => Error::Refused { by: "this node".into(), reason: e.message },
        _ => Error::Store(e.message),
    }
}

fn random_id() -> Result<String, Error> {
    let b: [u8; 6] = metac_mesh::identity::random_bytes().map_err(|e| Error::Store(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Node {
    /// Opens one stream to the exporter of `r` for `protocol`, past the handshake. A ref of this node's own is
    /// served in-process through the same checks.
    pub(crate) async fn open_bind(&self, r: &Ref, protocol: &'static str) -> Result<BoxStream, Error> {
        let mut attempt = 0;
        loop {
            match self.try_open_bind(r, protocol).await {
                Err(e @ (Error::Unreachable(_) | Error::Frame(_))) if attempt < OPEN_RETRIES => {
                    attempt += 1;
                    tracing::debug!("bind attempt {attempt} failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_open_bind(&self, r: &Ref, protocol: &'static str) -> Result<BoxStream, Error> {
        let issuer = r.token.issuer();
        let mut stream: BoxStream = if issuer == self.me() {
            let node = self.me_weak.upgrade().ok_or(Error::Cancelled)?;
            let (a, b) = tokio::io::duplex(1 << 20);
            tokio::spawn(async move { node.serve_bind(node.me(), Box::new(b)).await });
            Box::new(a)
        } else {
            self.transport.open(issuer, metac_resource::RESOURCE_PROTOCOL).await?
        };
        let hello = Hello { token: r.token.encode(), protocol: protocol.into(), version: 1 };
        match metac_resource::hello(&mut stream, &hello).await {
            Ok(()) => Ok(stream),
            Err(Error::Refused { reason, .. }) => {
                Err(Error::Refused { by: format!("node {}", short(&issuer)), reason })
            }
            Err(e) => Err(Error::Unreachable(format!("bind to node {} failed: {e}", short(&issuer)))),
        }
    }

    /// Binds `reference` for `owner` with its kind's bind `options`; `persist` records it to come back after a
    /// restart.
    pub fn bind_ref(
        &self,
        reference: Ref,
        options: serde_json::Value,
        persist: bool,
        owner: &Caller,
    ) -> Result<Started, ApiError> {
        let kind = reference.token.kind();
        let plugin = self.kind(kind)?;
        let session = plugin.bind(&reference, options.clone(), owner, &self.ctx(kind))?;
        let persist = persist.then_some(options);
        Ok(self.start_session(None, Start { kind, reference, session, persist, owner: owner.clone() })?)
    }

    /// Registers a session and runs it; `id` is given when a persistent bind comes back after a restart.
    pub(crate) fn start_session(&self, id: Option<String>, start: Start) -> Result<Started, Error> {
        let Start { kind, reference, session, persist, owner } = start;
        let id = match id {
            Some(id) => id,
            None => random_id()?,
        };
        if let Some(options) = &persist {
            self.store.put_bind(&BindRecord {
                id: id.clone(),
                kind,
                reference: reference.to_string(),
                options: options.to_string(),
                created: unix_now(),
                owner: owner.clone(),
            })?;
        }
        let status = Arc::new(Status::default());
        let cancel = self.cancel.child_token();
        let protocol = self.kind(kind).map_err(|e| Error::BadOptions(e.message))?.protocol();
        let opener: Arc<dyn Opener> = Arc::new(NodeBinder(self.me_weak.clone()));
        let link = Link::new(reference.clone(), protocol, opener, Arc::clone(&status));
        let entry = Entry {
            kind,
            target: session.target(),
            reference,
            persistent: persist.is_some(),
            created: unix_now(),
            owner,
            status: Arc::clone(&status),
            cancel: cancel.clone(),
            task: None,
        };
        self.binds.0.lock().expect("binds lock").insert(id.clone(), entry);
        let task = tokio::spawn(run(self.me_weak.clone(), id.clone(), session, link, cancel));
        if let Some(e) = self.binds.0.lock().expect("binds lock").get_mut(&id) {
            e.task = Some(task);
        }
        tracing::info!(%id, %kind, "bind started");
        Ok(Started { id, status })
    }

    /// Starts the persistent binds recorded in the store (at start).
    pub(crate) fn restore_binds(&self) {
        let records = match self.store.binds() {
            Ok(r) => r,
            Err(e) => return tracing::error!("cannot read persistent binds: {e}"),
        };
        for b in records {
            let restored = (|| -> Result<Started, ApiError> {
                let reference = crate::node::parse_ref(&b.reference)?;
                let options: serde_json::Value =
                    serde_json::from_str(&b.options).map_err(|e| ApiError::internal(e.to_string()))?;
                let plugin = self.kind(b.kind)?;
                let session = plugin.bind(&reference, options.clone(), &b.owner, &self.ctx(b.kind))?;
                let start = Start { kind: b.kind, reference, session, persist: Some(options), owner: b.owner.clone() };
                Ok(self.start_session(Some(b.id.clone()), start)?)
            })();
            if let Err(e) = restored {
                tracing::warn!(bind = %b.id, "cannot restore a persistent bind: {e}");
            }
        }
    }

    /// This node's binds, of one kind or all, as `viewer` may see them: every one listed, the ref only when the
    /// bind is the viewer's (or the viewer is root).
    pub fn binds(&self, kind: Option<Kind>, viewer: &Caller) -> Vec<BindView> {
        let map = self.binds.0.lock().expect("binds lock");
        let mut out: Vec<BindView> = map
            .iter()
            .filter(|(_, e)| kind.is_none_or(|k| k == e.kind))
            .map(|(id, e)| {
                let state = e.status.state();
                BindView {
                    id: id.clone(),
                    kind: e.kind.to_string(),
                    reference: if may_see(viewer, e.owner.uid) { e.reference.to_string() } else { String::new() },
                    exporter: short(&e.reference.token.issuer()),
                    target: e.target.clone(),
                    state: state.name().into(),
                    reason: state.reason().map(str::to_string),
                    persistent: e.persistent,
                    created: e.created,
                    bytes: e.status.bytes(),
                    owner: e.owner.uid,
                }
            })
            .collect();
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out
    }

    /// Cuts a bind given by id, unique id prefix or target, if `caller` owns it or is root; waits for it to release
    /// what it holds, and forgets it (also across restarts). Returns its id.
    pub async fn unbind(&self, q: &str, caller: &Caller) -> Result<String, ApiError> {
        let (id, task) = {
            let mut map = self.binds.0.lock().expect("binds lock");
            let hits: Vec<&String> = map
                .iter()
                .filter(|(id, e)| !q.is_empty() && (id.starts_with(q) || e.target == q))
                .map(|(id, _)| id)
                .collect();
            let id = match hits.as_slice() {
                [one] => (*one).clone(),
                [] => return Err(ApiError::not_found(format!("no bind matches {q:?} (see `metac binds`)"))),
                _ => return Err(ApiError::bad(format!("{q:?} matches {} binds: give more of the id", hits.len()))),
            };
            let owner = map[&id].owner.uid;
            owner_only(caller, owner, &format!("bind {id}"))?;
            let mut e = map.remove(&id).expect("bind just found");
            e.cancel.cancel();
            (id, e.task.take())
        };
        if let Some(t) = task {
            let _ = tokio::time::timeout(CLOSE_WAIT, t).await;
        }
        self.store.remove_bind(&id)?;
        tracing::info!(%id, "unbound");
        Ok(id)
    }

    /// The bind API: `GET /v1/binds[?kind=K]`, `POST /v1/binds`, `DELETE /v1/binds/{id|target}`.
    pub fn bind_routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/binds", get(list).post(create))
            .route("/v1/binds/{id}", delete(remove))
            .with_state(Arc::clone(self))
    }
}

async fn list(
    AxState(node): AxState<Arc<Node>>,
    caller: Caller,
    Query(q): Query<BindsQuery>,
) -> Result<Json<Vec<BindView>>, ApiError> {
    let kind = match q.kind {
        Some(k) => Some(k.parse::<Kind>().map_err(|e| ApiError::bad(e.to_string()))?),
        None => None,
    };
    Ok(Json(node.binds(kind, &caller)))
}

async fn create(
    AxState(node): AxState<Arc<Node>>,
    caller: Caller,
    Json(req): Json<BindReq>,
) -> Result<Json<BindView>, ApiError> {
    let reference = crate::node::parse_ref(&req.reference)?;
    let started = node.bind_ref(reference, req.options, req.persistent, &caller)?;
    // Answer once the bind is up or has a reason not to be, so the user sees a refusal at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while matches!(started.status.state(), State::Connecting) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let view = node.binds(None, &caller).into_iter().find(|b| b.id == started.id);
    view.map(Json).ok_or_else(|| ApiError::internal("the bind ended at once"))
}

async fn remove(
    AxState(node): AxState<Arc<Node>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Unbound>, ApiError> {
    // A target is a path, sent percent-encoded as one segment.
    Ok(Json(Unbound { id: node.unbind(&id, &caller).await? }))
}

/// Resolves when the mesh connects to `exporter` after having no connection to it: a session waiting out its
/// backoff tries again at once then, instead of at the end of a long wait.
async fn exporter_returns(node: &Weak<Node>, exporter: metac_mesh::NodeKey) {
    let mut was_away = false;
    loop {
        let Some(n) = node.upgrade() else { return std::future::pending().await };
        let connected = exporter == n.me() || n.mesh.is_connected(exporter).await;
        drop(n);
        if connected && was_away {
            return;
        }
        was_away |= !connected;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs one session until it ends, is cut, or expires; see the module docs.
async fn run(node: Weak<Node>, id: String, mut session: Box<dyn Session>, link: Link, cancel: CancellationToken) {
    let status = Arc::clone(link.status());
    let expires = link.reference().token.effective().expires;
    let clock = match node.upgrade() {
        Some(n) => Arc::clone(&n.clock),
        None => return,
    };
    let expiry = async move {
        match expires {
            Some(at) => clock.sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let mut expiry = std::pin::pin!(expiry);
    let mut attempt = 0u32;
    loop {
        let r = tokio::select! {
            r = session.run(&link, &cancel) => r,
            () = &mut expiry => {
                status.set(State::Expired);
                cancel.cancel();
                break;
            }
        };
        let was_up = status.state() == State::Up;
        match r {
            _ if cancel.is_cancelled() => break,
            Ok(()) => {
                status.set(State::Done);
                break;
            }
            Err(Error::Refused { reason, by }) => {
                status.set(State::Refused { reason: format!("{reason} ({by})") });
                break;
            }
            Err(e) if e.retryable() && session.reconnects() => {
                attempt = if was_up { 1 } else { attempt + 1 };
                status.set(State::Retrying { reason: e.to_string(), attempt });
                let wait = BACKOFF_MIN.saturating_mul(1 << (attempt - 1).min(6)).min(BACKOFF_MAX);
                tracing::info!(%id, "bind lost ({e}); retrying in {wait:?}");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = &mut expiry => {
                        status.set(State::Expired);
                        break;
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = exporter_returns(&node, link.reference().token.issuer()) => {}
                }
            }
            Err(e) => {
                status.set(State::Failed { reason: e.to_string() });
                break;
            }
        }
    }
    session.close().await;
    let state = status.state();
    tracing::info!(%id, %state, "bind ended");
    let Some(node) = node.upgrade() else { return };
    // One-shot work is forgotten when it ends; a bind that can never work again (refused, expired) stops being
    // re-established, but stays listed with its reason until unbound.
    if matches!(state, State::Refused { .. } | State::Expired) {
        let _ = node.store.remove_bind(&id);
    }
    if !session.reconnects() {
        node.binds.0.lock().expect("binds lock").remove(&id);
    }
}
