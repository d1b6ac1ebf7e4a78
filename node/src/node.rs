//! The node: exports, the tokens issued for them, live binds and revocation. The exporter is the only verifier
//! that matters: every inbound bind is checked here (signatures, narrowing, expiry, audience against the
//! authenticated peer, revocation list) before the kind's handler sees a byte.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use metac_mesh::advert::ResourceInfo;
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::net::{self, Handle, Snapshot};
use metac_mesh::token::{Caveat, Ref, ResourceId, SigCache, Token, TokenId};
use metac_mesh::{Identity, NodeKey};
use metac_resource::{frame, Bind, BoxFuture, BoxStream, ExportSpec, Hello, Reply, Transport, RESOURCE_PROTOCOL};
use serde::Serialize;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use crate::overlay::NodeOverlay;
use crate::registry::Registry;
use crate::store::{Export, Store, TokenRecord};
use crate::{rpc, Config, Error};

/// Extra attempts of a bind whose stream failed before the exporter answered.
const BIND_RETRIES: u64 = 3;
/// How long a binder has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Now in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An error for the API: an HTTP status class and a message the user can act on.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// 400: the request itself is wrong.
    pub fn bad(m: impl Into<String>) -> ApiError {
        ApiError { status: 400, message: m.into() }
    }
    /// 403: refused by a token check.
    pub fn refused(m: impl Into<String>) -> ApiError {
        ApiError { status: 403, message: m.into() }
    }
    /// 404: no such thing.
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError { status: 404, message: m.into() }
    }
    /// 502: another node could not be reached or failed.
    pub fn remote(m: impl Into<String>) -> ApiError {
        ApiError { status: 502, message: m.into() }
    }
    /// 500: this node failed.
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError { status: 500, message: m.into() }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::internal(e.to_string())
    }
}

struct Session {
    ids: Vec<TokenId>,
    resource: ResourceId,
    cancel: CancellationToken,
}

/// A running node.
pub struct Node {
    id: Identity,
    store: Arc<Store>,
    mesh: Handle,
    overlay: NodeOverlay,
    registry: Registry,
    revoked: Mutex<HashSet<TokenId>>,
    sigs: SigCache,
    remembered: Mutex<HashMap<String, Vec<String>>>,
    sessions: Mutex<HashMap<u64, Session>>,
    next_session: AtomicU64,
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    state: PathBuf,
}

/// A view of one export for the API.
#[derive(Debug, Serialize)]
pub struct ExportView {
    /// Resource id.
    pub id: String,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// What is exported.
    pub source: String,
    /// Unix seconds when exported.
    pub created: u64,
    /// Tokens issued for it.
    pub tokens: usize,
    /// Live binds right now.
    pub binds: usize,
}

/// A view of one recorded token for the API.
#[derive(Debug, Serialize)]
pub struct TokenView {
    /// Token id.
    pub id: String,
    /// Parent token id when delegated.
    pub parent: Option<String>,
    /// Resource id.
    pub resource: String,
    /// Kind.
    pub kind: Kind,
    /// Effective rights.
    pub rights: String,
    /// Unix seconds of expiry.
    pub expires: Option<u64>,
    /// Audience node key.
    pub audience: Option<String>,
    /// Revoked (it or an ancestor).
    pub revoked: bool,
    /// The ref.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// A decoded ref for `metac ref show`.
#[derive(Debug, Serialize)]
pub struct RefView {
    /// The exporting node's key.
    pub issuer: String,
    /// Its overlay address.
    pub overlay: String,
    /// Resource id.
    pub resource: String,
    /// Kind.
    pub kind: Kind,
    /// Effective rights.
    pub rights: String,
    /// Expiry, unix seconds.
    pub expires: Option<u64>,
    /// Audience node key.
    pub audience: Option<String>,
    /// Sub-path.
    pub path: Option<String>,
    /// Token id (last block).
    pub id: String,
    /// Every block id, root first.
    pub chain: Vec<String>,
    /// No more attenuation possible.
    pub sealed: bool,
}

/// Describes a ref without verifying it (only the exporter can).
pub fn describe(r: &Ref) -> RefView {
    let t = &r.token;
    let g = t.effective();
    RefView {
        issuer: t.issuer().to_hex(),
        overlay: r.addr.to_string(),
        resource: g.resource.to_string(),
        kind: g.kind,
        rights: g.rights.to_string(),
        expires: g.expires,
        audience: g.audience.map(|a| a.to_hex()),
        path: g.path,
        id: t.id().to_string(),
        chain: t.ids().iter().map(|i| i.to_string()).collect(),
        sealed: t.is_sealed(),
    }
}

/// Parses a ref given by a user.
pub fn parse_ref(s: &str) -> Result<Ref, ApiError> {
    s.trim().parse::<Ref>().map_err(|e| ApiError::bad(format!("bad ref: {e}")))
}

/// The transport of resource streams in this build: raw libp2p streams (noise-authenticated to the node key).
struct MeshTransport(Handle);

impl Transport for MeshTransport {
    fn open(&self, node: NodeKey, protocol: &'static str) -> BoxFuture<'_, Result<BoxStream, metac_resource::Error>> {
        Box::pin(async move {
            let s = self
                .0
                .open_stream(node, protocol)
                .await
                .map_err(|e| metac_resource::Error::Transport(e.to_string()))?;
            Ok(Box::new(s.compat()) as BoxStream)
        })
    }
}

impl Node {
    /// Loads identity and store, starts the mesh, restores exports.
    pub async fn start(config: &Config, cancel: CancellationToken) -> Result<Arc<Node>, Error> {
        std::fs::create_dir_all(&config.state)
            .map_err(|source| Error::StateDir { path: config.state.display().to_string(), source })?;
        // The store holds tokens that grant access: the state directory is the node's alone (like ~/.ssh).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.state, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| Error::StateDir { path: config.state.display().to_string(), source })?;
        let id = Identity::load_or_create(&config.state.join("identity.key"))?;
        let store = Arc::new(Store::open(&config.state.join("metac.redb"))?);
        let mesh_key = match &config.mesh_key {
            Some(p) => {
                let k = std::fs::read(p)
                    .map_err(|e| Error::MeshKey { path: p.display().to_string(), reason: e.to_string() })?;
                if k.len() < 16 {
                    return Err(Error::MeshKey {
                        path: p.display().to_string(),
                        reason: format!("{} bytes is too short: use at least 16 random bytes (e.g. `head -c 32 /dev/urandom > FILE`)", k.len()),
                    });
                }
                Some(k)
            }
            None => None,
        };
        let mut bootstrap = vec![];
        for p in &config.peers {
            bootstrap.push(net::parse_peer_addr(p).map_err(|e| Error::Api(format!("--peer {e}")))?);
        }
        let remembered = store.peer_addrs()?.iter().filter_map(|a| a.parse().ok()).collect();
        let overlay = NodeOverlay::start(&config.overlay, &id);
        let (mesh, mut events, mesh_task) = net::spawn(
            net::Config {
                identity: id.clone(),
                port: config.port,
                bootstrap,
                remembered,
                mdns: config.mdns,
                mesh_key,
                core: Default::default(),
                tunnel: overlay.tunnel_advert(),
            },
            cancel.clone(),
        )
        .await?;
        let revoked = store.revoked()?.iter().filter_map(|s| s.parse().ok()).collect();
        let mut tasks = vec![mesh_task];
        tasks.extend(overlay.attach(mesh.clone(), Arc::clone(&store), cancel.clone())?);
        let node = Arc::new(Node {
            id,
            store,
            mesh,
            overlay,
            registry: Registry::with_builtin(),
            revoked: Mutex::new(revoked),
            sigs: SigCache::new(4096),
            remembered: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            cancel: cancel.clone(),
            tasks: Mutex::new(tasks),
            state: config.state.clone(),
        });
        node.publish().await;

        // Inbound binds.
        let incoming = node.mesh.accept(RESOURCE_PROTOCOL)?;
        let n = Arc::clone(&node);
        let accept = tokio::spawn(async move {
            let mut incoming = std::pin::pin!(incoming);
            loop {
                tokio::select! {
                    _ = n.cancel.cancelled() => break,
                    next = incoming.next() => match next {
                        Some((peer, stream)) => {
                            let n = Arc::clone(&n);
                            tokio::spawn(async move { n.serve_bind(peer, Box::new(stream.compat())).await });
                        }
                        None => break,
                    },
                }
            }
        });
        // Requests from other nodes, and remembering peers.
        let n = Arc::clone(&node);
        let requests = tokio::spawn(async move {
            let mut remember = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = n.cancel.cancelled() => break,
                    ev = events.recv() => match ev {
                        Some(net::Event::Request { from, id, body }) => {
                            let answer = n.on_request(from, &body).await;
                            let _ = n.mesh.reply(id, rpc::encode(&answer)).await;
                        }
                        None => break,
                    },
                    _ = remember.tick() => n.remember_peers().await,
                }
            }
        });
        node.tasks.lock().expect("tasks lock").extend([accept, requests]);
        Ok(node)
    }

    /// This node's key.
    pub fn me(&self) -> NodeKey {
        self.id.public()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &PathBuf {
        &self.state
    }

    /// Stops everything: live binds are cut, the mesh task ends, peers are remembered.
    pub async fn shutdown(&self) {
        self.remember_peers().await;
        for s in self.sessions.lock().expect("sessions lock").values() {
            s.cancel.cancel();
        }
        self.cancel.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        self.overlay.stop();
    }

    /// The overlay: status and guests.
    pub fn overlay(&self) -> &NodeOverlay {
        &self.overlay
    }

    /// `metac overlay wg-config`.
    pub async fn wg_config(
        &self,
        name: &str,
        endpoint: Option<&str>,
        public_key: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let snap = self.snapshot().await?;
        self.overlay.wg_config(&self.store, &snap, name, endpoint, public_key)
    }

    /// Removes a guest of the overlay.
    pub fn remove_guest(&self, name: &str) -> Result<(), ApiError> {
        if self.store.remove_guest(name)? {
            self.overlay.request_refresh();
            Ok(())
        } else {
            Err(ApiError::not_found(format!("no overlay guest named {name:?} (see `metac overlay status`)")))
        }
    }

    async fn remember_peers(&self) {
        let Ok(snap) = self.mesh.snapshot().await else { return };
        for n in snap.nodes.iter().filter(|n| n.reachable) {
            let addrs: Vec<String> = n.addrs.iter().map(|a| format!("{a}/p2p/{}", n.peer_id)).collect();
            // Write only what changed: an idle node should not touch its disk.
            if self.remembered.lock().expect("remembered lock").get(&n.key) == Some(&addrs) {
                continue;
            }
            self.remembered.lock().expect("remembered lock").insert(n.key.clone(), addrs.clone());
            if let Err(e) = self.store.put_peer(&n.key, &addrs) {
                tracing::warn!("cannot remember peer {}: {e}", n.key);
            }
        }
    }

    async fn publish(&self) {
        let resources = match self.store.exports() {
            Ok(e) => e
                .into_iter()
                .map(|e| ResourceInfo {
                    id: e.id,
                    kind: e.kind,
                    name: e.name,
                    description: String::new(),
                    public_ref: None,
                })
                .collect(),
            Err(e) => {
                tracing::error!("cannot read exports: {e}");
                return;
            }
        };
        let revoked = match self.store.recent_revocations(metac_mesh::advert::MAX_REVOKED) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read revocations: {e}");
                vec![]
            }
        };
        let _ = self.mesh.set_local(resources, revoked).await;
    }

    /// The mesh as this node sees it.
    pub async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        self.mesh.snapshot().await.map_err(|e| ApiError::internal(e.to_string()))
    }

    /// This node's exports.
    pub fn exports(&self) -> Result<Vec<ExportView>, ApiError> {
        let tokens = self.store.tokens()?;
        let sessions = self.sessions.lock().expect("sessions lock");
        Ok(self
            .store
            .exports()?
            .into_iter()
            .map(|e| ExportView {
                id: e.id.to_string(),
                kind: e.kind,
                tokens: tokens.iter().filter(|t| t.resource == e.id).count(),
                binds: sessions.values().filter(|s| s.resource == e.id).count(),
                name: e.name,
                source: e.source,
                created: e.created,
            })
            .collect())
    }

    /// Exports a resource and issues its first token. Returns the export and the ref.
    pub async fn export(
        &self,
        kind: Kind,
        source: String,
        name: Option<String>,
        rights: Option<Rights>,
    ) -> Result<(Export, Ref), ApiError> {
        let handler = self.registry.get(kind).map_err(ApiError::bad)?;
        let spec = ExportSpec { kind, source: source.clone() };
        handler.check(&spec).map_err(|e| ApiError::bad(format!("cannot export {source}: {e}")))?;
        let rights = rights.unwrap_or_else(|| kind.rights());
        if rights.is_empty() || !rights.is_subset_of(kind.rights()) {
            return Err(ApiError::bad(format!(
                "rights {rights} are not valid for kind {kind} (valid: {})",
                kind.rights()
            )));
        }
        let id = ResourceId::random().map_err(|e| ApiError::internal(e.to_string()))?;
        let name = name.unwrap_or_else(|| {
            std::path::Path::new(&source)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or(source.clone())
        });
        let export = Export { id, kind, name, source, created: unix_now() };
        let token =
            Token::issue(&self.id, id, kind, rights, None, None).map_err(|e| ApiError::internal(e.to_string()))?;
        let r = Ref::new(token);
        self.store.put_export(&export)?;
        self.record_token(&r, None)?;
        self.publish().await;
        Ok((export, r))
    }

    fn record_token(&self, r: &Ref, parent: Option<TokenId>) -> Result<(), ApiError> {
        let t = &r.token;
        self.store.put_token(&TokenRecord {
            id: t.id(),
            resource: t.resource(),
            reference: r.to_string(),
            created: unix_now(),
            parent,
        })?;
        Ok(())
    }

    /// Removes an export: its tokens are revoked and its live binds cut.
    pub async fn unexport(&self, id: &str) -> Result<Export, ApiError> {
        let rid: ResourceId = self.resolve_export(id)?;
        let export = self
            .store
            .remove_export(&rid, unix_now())?
            .ok_or_else(|| ApiError::not_found(format!("no export {id}")))?;
        *self.revoked.lock().expect("revoked lock") =
            self.store.revoked()?.iter().filter_map(|s| s.parse().ok()).collect();
        for s in self.sessions.lock().expect("sessions lock").values().filter(|s| s.resource == rid) {
            s.cancel.cancel();
        }
        self.publish().await;
        Ok(export)
    }

    /// Finds an export by full id, unique id prefix, or name.
    fn resolve_export(&self, q: &str) -> Result<ResourceId, ApiError> {
        let all = self.store.exports()?;
        let hits: Vec<_> = all.iter().filter(|e| e.id.to_string().starts_with(q) || e.name == q).collect();
        match hits.as_slice() {
            [one] => Ok(one.id),
            [] => Err(ApiError::not_found(format!("no export matches {q:?} (see `metac exports`)"))),
            _ => Err(ApiError::bad(format!("{q:?} matches {} exports: give more of the id", hits.len()))),
        }
    }

    /// Tokens recorded here.
    pub fn refs(&self) -> Result<Vec<TokenView>, ApiError> {
        let revoked = self.revoked.lock().expect("revoked lock").clone();
        let mut out = vec![];
        for t in self.store.tokens()? {
            let Ok(r) = t.reference.parse::<Ref>() else { continue };
            let g = r.token.effective();
            out.push(TokenView {
                id: t.id.to_string(),
                parent: t.parent.map(|p| p.to_string()),
                resource: t.resource.to_string(),
                kind: g.kind,
                rights: g.rights.to_string(),
                expires: g.expires,
                audience: g.audience.map(|a| a.to_hex()),
                revoked: r.token.ids().iter().any(|i| revoked.contains(i)),
                reference: t.reference,
            });
        }
        out.sort_by_key(|t| t.id.clone());
        Ok(out)
    }

    /// Resolves a node given as a hex key, a peer id or an overlay address.
    pub async fn resolve_node(&self, q: &str) -> Result<NodeKey, ApiError> {
        if let Some(k) = NodeKey::from_hex(q) {
            return Ok(k);
        }
        if let Ok(p) = q.parse::<libp2p::PeerId>() {
            return net::node_key(&p)
                .ok_or_else(|| ApiError::bad(format!("peer id {q} does not carry an ed25519 key")));
        }
        if let Ok(a) = q.trim_matches(|c| c == '[' || c == ']').parse::<std::net::Ipv6Addr>() {
            if a == self.me().overlay_addr() {
                return Ok(self.me());
            }
            let snap = self.snapshot().await?;
            return snap.nodes.iter().find(|n| n.overlay == a).and_then(|n| NodeKey::from_hex(&n.key)).ok_or_else(
                || ApiError::not_found(format!("no known node has overlay address {a} (see `metac peers`)")),
            );
        }
        Err(ApiError::bad(format!("{q:?} is not a node key (64 hex digits), a peer id or an overlay address")))
    }

    /// Narrows a ref offline-style (any node can, with the secret the token carries) and records the result.
    pub fn delegate(&self, r: &Ref, caveat: &Caveat, seal: bool) -> Result<Ref, ApiError> {
        let t = r.token.attenuate(caveat).map_err(|e| ApiError::bad(format!("cannot delegate: {e}")))?;
        let t = if seal { t.seal() } else { t };
        let child = Ref::new(t);
        self.record_token(&child, Some(r.token.id()))?;
        Ok(child)
    }

    /// Revokes a ref: here when this node issued it, otherwise by asking its exporter.
    pub async fn revoke(&self, r: &Ref) -> Result<String, ApiError> {
        let issuer = r.token.issuer();
        if issuer == self.me() {
            return self.revoke_local(&r.token).await.map_err(ApiError::refused);
        }
        let body = rpc::encode(&rpc::Request::Revoke { token: r.token.encode() });
        let answer = self.mesh.request(issuer, body).await.map_err(|e| ApiError::remote(e.to_string()))?;
        match rpc::decode::<rpc::Response>(&answer).map_err(ApiError::remote)? {
            rpc::Response::Ok(m) => Ok(m),
            rpc::Response::Err(m) => Err(ApiError::refused(format!("the exporting node refused: {m}"))),
        }
    }

    async fn revoke_local(&self, token: &Token) -> Result<String, String> {
        let me = self.me();
        // Only authentic tokens may revoke: check the chain (any expiry, any audience).
        let bearer = token.effective().audience.unwrap_or(me);
        token.verify(&me, 0, &bearer, |_| false).map_err(|e| e.to_string())?;
        let id = token.id();
        self.store.revoke(&id, unix_now()).map_err(|e| e.to_string())?;
        self.revoked.lock().expect("revoked lock").insert(id);
        let mut cut = 0;
        for s in self.sessions.lock().expect("sessions lock").values().filter(|s| s.ids.contains(&id)) {
            s.cancel.cancel();
            cut += 1;
        }
        tracing::info!(%id, cut, "token revoked");
        // Tell the mesh too, for everyone's information (this node enforces it either way).
        self.publish().await;
        Ok(format!("revoked token {id}{}", if cut > 0 { format!("; cut {cut} live bind(s)") } else { String::new() }))
    }

    async fn on_request(&self, from: NodeKey, body: &[u8]) -> rpc::Response {
        match rpc::decode::<rpc::Request>(body) {
            Ok(rpc::Request::Revoke { token }) => match Token::decode(&token) {
                Ok(t) => match self.revoke_local(&t).await {
                    Ok(m) => {
                        tracing::info!(%from, "revocation requested by peer");
                        rpc::Response::Ok(m)
                    }
                    Err(e) => rpc::Response::Err(e),
                },
                Err(e) => rpc::Response::Err(format!("bad token: {e}")),
            },
            Err(e) => rpc::Response::Err(e),
        }
    }

    /// What this node knows of a ref's revocation: from its own list when it issued the ref, otherwise from the
    /// revocations its exporter adverts (the newest few hundred; only the exporter knows for sure).
    pub async fn revocation_state(&self, r: &Ref) -> &'static str {
        let ids = r.token.ids();
        if r.token.issuer() == self.me() {
            let revoked = self.revoked.lock().expect("revoked lock");
            return if ids.iter().any(|i| revoked.contains(i)) { "revoked" } else { "valid" };
        }
        let Ok(snap) = self.mesh.snapshot().await else { return "unknown" };
        let issuer = r.token.issuer().to_hex();
        match snap.nodes.iter().find(|n| n.key == issuer) {
            Some(n) if ids.iter().any(|i| n.revoked.contains(i)) => "revoked",
            Some(_) => "not revoked as far as its exporter's advert says",
            None => "unknown: this node has no advert of the exporter",
        }
    }

    /// Opens a bind to the resource a ref names: a stream to its exporter, past the handshake.
    pub async fn bind(self: &Arc<Self>, r: &Ref, protocol: &'static str) -> Result<BoxStream, ApiError> {
        // A stream can die with its connection while the mesh settles (a duplicate connection closed, a peer
        // that just restarted): such failures are retried a few times; a refusal by the exporter never is.
        let mut attempt = 0;
        loop {
            match self.try_bind(r, protocol).await {
                Err(e) if e.status == 502 && attempt < BIND_RETRIES => {
                    attempt += 1;
                    tracing::debug!("bind attempt {attempt} failed, retrying: {}", e.message);
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_bind(self: &Arc<Self>, r: &Ref, protocol: &'static str) -> Result<BoxStream, ApiError> {
        let issuer = r.token.issuer();
        let mut stream: BoxStream = if issuer == self.me() {
            // A ref of our own: serve it in-process through the same checks.
            let (a, b) = tokio::io::duplex(1 << 20);
            let n = Arc::clone(self);
            tokio::spawn(async move { n.serve_bind(n.me(), Box::new(b)).await });
            Box::new(a)
        } else {
            match MeshTransport(self.mesh.clone()).open(issuer, RESOURCE_PROTOCOL).await {
                Ok(s) => s,
                // An unknown node will not become known by retrying at once.
                Err(e) if e.to_string().contains("is unknown") => return Err(ApiError::not_found(e.to_string())),
                Err(e) => return Err(ApiError::remote(e.to_string())),
            }
        };
        let hello = Hello { token: r.token.encode(), protocol: protocol.into(), version: 1 };
        match metac_resource::hello(&mut stream, &hello).await {
            Ok(()) => Ok(stream),
            Err(metac_resource::Error::Refused(reason)) => {
                Err(ApiError::refused(format!("refused by node {}: {reason}", short(&issuer))))
            }
            Err(e) => Err(ApiError::remote(format!("bind to node {} failed: {e}", short(&issuer)))),
        }
    }

    /// Serves one inbound bind: handshake, verification, then the kind's handler.
    async fn serve_bind(&self, peer: NodeKey, mut stream: BoxStream) {
        let hello = match tokio::time::timeout(
            HELLO_TIMEOUT,
            frame::read::<_, Hello>(&mut stream, metac_resource::MAX_HELLO_BYTES),
        )
        .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad hello: {e}");
                return;
            }
            Err(_) => return,
        };
        let (spec, bind, ids, resource) = match self.authorize(peer, &hello) {
            Ok(x) => x,
            Err(reason) => {
                tracing::info!(peer = %short(&peer), "bind refused: {reason}");
                let _ = frame::write(&mut stream, &Reply::Refuse { reason }).await;
                return;
            }
        };
        let handler = match self.registry.get(spec.kind) {
            Ok(h) => h,
            Err(reason) => {
                let _ = frame::write(&mut stream, &Reply::Refuse { reason }).await;
                return;
            }
        };
        if frame::write(&mut stream, &Reply::Accept).await.is_err() {
            return;
        }
        let cancel = self.cancel.child_token();
        let sid = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(sid, Session { ids: ids.clone(), resource, cancel: cancel.clone() });
        // A revocation that landed between the check and the registration must still cut this bind.
        if ids.iter().any(|i| self.revoked.lock().expect("revoked lock").contains(i)) {
            cancel.cancel();
        }
        tracing::info!(peer = %short(&peer), kind = %spec.kind, "bind accepted");
        let result = handler.serve(spec, bind, stream, cancel).await;
        self.sessions.lock().expect("sessions lock").remove(&sid);
        if let Err(e) = result {
            tracing::info!(peer = %short(&peer), "bind ended: {e}");
        }
    }

    fn authorize(&self, peer: NodeKey, hello: &Hello) -> Result<(ExportSpec, Bind, Vec<TokenId>, ResourceId), String> {
        let token = Token::decode(&hello.token).map_err(|e| format!("bad token: {e}"))?;
        let revoked = self.revoked.lock().expect("revoked lock");
        let grant = token
            .verify_cached(&self.me(), unix_now(), &peer, |id| revoked.contains(id), &self.sigs)
            .map_err(|e| e.to_string())?;
        drop(revoked);
        let export = self
            .store
            .exports()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|e| e.id == grant.resource)
            .ok_or_else(|| format!("resource {} is no longer exported", grant.resource))?;
        let handler = self.registry.get(export.kind)?;
        if hello.protocol != handler.protocol() {
            return Err(format!(
                "protocol {} does not serve {} resources (use {})",
                hello.protocol,
                export.kind,
                handler.protocol()
            ));
        }
        let bind = Bind { peer, rights: grant.rights, path: grant.path };
        Ok((ExportSpec { kind: export.kind, source: export.source }, bind, token.ids(), export.id))
    }
}

/// The first 16 hex digits of a key, for messages.
pub fn short(k: &NodeKey) -> String {
    k.to_hex()[..16].to_string()
}
