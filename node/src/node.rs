//! The node: it owns the identity, the store, the mesh, the overlay and the kinds, and wires them together. What
//! it does is split by concern: [`crate::exports`] (exports and their open exporters), [`crate::serve`] (inbound
//! binds: the exporter checks every token here), [`crate::binds`] (this node's own binds, as sessions),
//! [`crate::refs`] (tokens, delegation, revocation).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use metac_mesh::net::{self, Handle, Snapshot};
use metac_mesh::token::{SigCache, TokenId};
use metac_mesh::{Identity, NodeKey};
use metac_resource::{Clock, Ctx, Kind, Plugin, Transport};
use tokio_util::sync::CancellationToken;

use crate::binds::Binds;
use crate::error::ApiError;
use crate::exports::OpenExports;
use crate::overlay::NodeOverlay;
use crate::serve::Served;
use crate::store::{KindTable, Store};
use crate::transport::{DirectTransport, MeshTransport};
use crate::{rpc, Config, Error};

pub use crate::refs::{parse_ref, ref_view};
pub use metac_resource::clock::unix_now;

/// How often the notes of exports (compute's load figures) are looked at, and re-adverted if they changed.
const NOTES_EVERY: Duration = Duration::from_secs(15);

/// A running node.
pub struct Node {
    pub(crate) id: Identity,
    pub(crate) store: Arc<Store>,
    pub(crate) mesh: Handle,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) overlay: NodeOverlay,
    pub(crate) kinds: Vec<Arc<dyn Plugin>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) run_dir: PathBuf,
    pub(crate) revoked: Mutex<HashSet<TokenId>>,
    pub(crate) revocations: crate::refs::RevocationLimit,
    pub(crate) sigs: SigCache,
    remembered: Mutex<HashMap<String, Vec<String>>>,
    /// Exports of this node, opened.
    pub(crate) open: OpenExports,
    /// Whether the mesh is private (`--mesh-key`): only then may an export's ref go in its advert.
    pub(crate) private: bool,
    /// Exports kinds made for a run ([`crate::host`]): in memory only, never adverted.
    pub(crate) ephemeral: Mutex<HashMap<metac_mesh::token::ResourceId, crate::store::Export>>,
    /// The notes of exports last adverted (compute's load), to re-advert when they change.
    pub(crate) notes: Mutex<HashMap<metac_mesh::token::ResourceId, String>>,
    /// Binds of other nodes that this node serves right now.
    pub(crate) served: Served,
    /// This node's own binds.
    pub(crate) binds: Binds,
    pub(crate) cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    state: PathBuf,
    pub(crate) me_weak: Weak<Node>,
}

impl Node {
    /// Loads identity and store, starts the mesh, opens the exports and re-establishes persistent binds.
    pub async fn start(config: &Config, cancel: CancellationToken) -> Result<Arc<Node>, Error> {
        crate::config::private_dir(&config.state)?;
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
        let remembered: Vec<_> = store.peer_addrs()?.iter().filter_map(|a| a.parse().ok()).collect();
        tracing::debug!(count = remembered.len(), "peers remembered from the last run");
        let mesh_key_given = mesh_key.is_some();
        let policy = crate::policy::Policy {
            tun: config.overlay.tun.clone(),
            addr: id.overlay_addr(),
            private: mesh_key.is_some(),
            rules: store.overlay_rules()?,
        };
        let overlay = NodeOverlay::start(&config.overlay, &id, policy);
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
        let run_dir = config.run_dir();
        crate::config::run_dir(&run_dir)?;
        let transport: Arc<dyn Transport> = match config.direct_port {
            Some(port) => {
                let (direct, direct_tasks) = DirectTransport::start(mesh.clone(), port, cancel.clone()).await?;
                tasks.extend(direct_tasks);
                Arc::new(direct)
            }
            None => Arc::new(MeshTransport(mesh.clone())),
        };
        let node = Arc::new_cyclic(|me_weak| Node {
            id,
            store,
            transport,
            mesh,
            overlay,
            kinds: config.kinds.clone().unwrap_or_else(|| crate::kinds::configured(config)),
            clock: Arc::clone(&config.clock),
            run_dir,
            revoked: Mutex::new(revoked),
            revocations: Default::default(),
            sigs: SigCache::new(4096),
            remembered: Mutex::new(HashMap::new()),
            open: OpenExports::default(),
            private: mesh_key_given,
            ephemeral: Mutex::new(HashMap::new()),
            notes: Mutex::new(HashMap::new()),
            served: Served::default(),
            binds: Binds::default(),
            cancel: cancel.clone(),
            tasks: Mutex::new(tasks),
            state: config.state.clone(),
            me_weak: me_weak.clone(),
        });
        for k in &node.kinds {
            k.recover(&node.ctx(k.kind()));
        }
        node.open_exports().await;
        node.publish().await;
        let accept = node.accept_binds()?;
        // Requests from other nodes, and remembering peers.
        let n = Arc::clone(&node);
        let requests = tokio::spawn(async move {
            let mut remember = tokio::time::interval(Duration::from_secs(30));
            let mut notes = tokio::time::interval(NOTES_EVERY);
            let mut seen = 0;
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
                    _ = remember.tick() => seen = n.remember_peers(seen).await,
                    _ = notes.tick() => {
                        if n.notes_changed() {
                            n.publish().await;
                        }
                    }
                }
            }
        });
        node.tasks.lock().expect("tasks lock").extend([accept, requests]);
        node.restore_binds();
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

    /// The kind plug-in for `kind`, or why there is none.
    pub(crate) fn kind(&self, kind: Kind) -> Result<&Arc<dyn Plugin>, ApiError> {
        self.kinds
            .iter()
            .find(|k| k.kind() == kind)
            .ok_or_else(|| ApiError::bad(format!("resource kind {kind} is not served by this build of metac")))
    }

    /// What the node lends `kind`: its transport, clock, store corner and a way to bind refs.
    pub fn ctx(&self, kind: Kind) -> Ctx {
        Ctx {
            me: self.me(),
            transport: Arc::clone(&self.transport),
            clock: Arc::clone(&self.clock),
            store: Arc::new(KindTable::new(Arc::clone(&self.store), kind)),
            binder: Arc::new(crate::binds::NodeBinder(self.me_weak.clone())),
            host: Arc::new(crate::host::NodeHost(self.me_weak.clone())),
            run_dir: self.run_dir.clone(),
            state_dir: self.state.join("kinds").join(kind.to_string()),
        }
    }

    /// The API routes every kind contributes, with their state applied.
    pub fn kind_routes(&self) -> Vec<axum::Router> {
        self.kinds.iter().map(|k| k.routes(self.ctx(k.kind()))).collect()
    }

    /// Stops everything: this node's binds and the binds it serves are cut, exports closed, the mesh task ends,
    /// peers are remembered.
    pub async fn shutdown(&self) {
        // Bounded: the mesh may be stopping at the same moment (the same signal stops both).
        let _ = tokio::time::timeout(Duration::from_secs(2), self.remember_peers(0)).await;
        self.binds.stop_all().await;
        self.served.cut_all();
        self.cancel.cancel();
        tracing::debug!("closing exports");
        self.close_exports().await;
        for k in &self.kinds {
            k.stop();
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        // All at once, within one limit: waited for one by one, a few slow ones under load used to add up past
        // what a service manager waits after SIGTERM.
        let n = tasks.len();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(Duration::from_secs(3), all).await.is_err() {
            tracing::warn!("some of the node's {n} tasks did not end within 3 s of the stop; leaving them");
        }
        tracing::debug!("stopping the overlay");
        self.overlay.stop();
    }

    /// Where binds' data travels, in a line (`metac status`).
    pub fn transport_summary(&self) -> String {
        self.transport.summary()
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

    /// `metac overlay allow|deny PORT[/PROTO] [--from NODE]`: `allow` adds a rule and drops a denial of the same
    /// port and source; `deny` drops an allowance of the same port and source, or adds a denial if there was none.
    pub async fn overlay_rule(
        &self,
        action: crate::policy::Action,
        port: &str,
        from: Option<&str>,
    ) -> Result<Vec<crate::policy::Rule>, ApiError> {
        use crate::policy::{Action, Port, Rule};
        let Port(port, proto) = port.parse().map_err(ApiError::bad)?;
        let (from, from_node) = match from {
            Some(n) => {
                let k = self.resolve_node(n).await?;
                (Some(k.overlay_addr()), Some(k.to_hex()))
            }
            None => (None, None),
        };
        let same = |r: &Rule| r.port == port && r.proto == proto && r.from == from;
        let mut rules = self.store.overlay_rules()?;
        let before = rules.len();
        let opposite = match action {
            Action::Allow => Action::Deny,
            Action::Deny => Action::Allow,
        };
        rules.retain(|r| !(same(r) && r.action == opposite));
        let undid = rules.len() < before;
        let add = action == Action::Allow || !undid;
        if add && !rules.iter().any(|r| same(r) && r.action == action) {
            rules.push(Rule { action, port, proto, from, from_node });
        }
        self.overlay.set_rules(rules.clone())?;
        self.store.set_overlay_rules(&rules)?;
        Ok(rules)
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

    /// Stores the addresses of connected peers that changed, if the mesh changed since `version`; returns the
    /// version seen.
    async fn remember_peers(&self, version: u64) -> u64 {
        let Ok(Some(snap)) = self.mesh.snapshot_since(version).await else { return version };
        let mut changed = vec![];
        {
            let mut remembered = self.remembered.lock().expect("remembered lock");
            for n in snap.nodes.iter().filter(|n| n.reachable) {
                let addrs: Vec<String> = n.addrs.iter().map(|a| format!("{a}/p2p/{}", n.peer_id)).collect();
                // Write only what changed: an idle node should not touch its disk.
                if remembered.get(&n.key) != Some(&addrs) {
                    remembered.insert(n.key.clone(), addrs.clone());
                    changed.push((n.key.clone(), addrs));
                }
            }
        }
        if !changed.is_empty() {
            tracing::debug!(peers = changed.len(), "remembering peers");
            // One transaction: a node joining a mesh of 20 used to sync its disk 19 times.
            if let Err(e) = self.store.put_peers(&changed) {
                tracing::warn!("cannot remember {} peers: {e}", changed.len());
            }
        }
        snap.version
    }

    /// The mesh as this node sees it.
    pub async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        self.mesh.snapshot().await.map_err(|e| ApiError::internal(e.to_string()))
    }
}

/// The first 16 hex digits of a key, for messages.
pub fn short(k: &NodeKey) -> String {
    k.to_hex()[..16].to_string()
}
