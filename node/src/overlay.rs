//! The node's side of the overlay: starts it (or says why it is off), keeps its peer table in step with the mesh
//! and the guests in the store, carries the relay path over mesh streams, and answers `metac overlay ...`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use metac_mesh::net::{self, Handle, Snapshot};
use metac_mesh::{Identity, NodeKey};
use metac_overlay::advert::TunnelAdvert;
use metac_overlay::{relay, wgconf, Overlay, PeerInfo, Relay, RelayScratch};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::policy::{Policy, Rule};
use crate::store::{Guest, Store};
use metac_resource::clock::unix_now;

/// Datagrams queued per peer on the relay path before new ones are dropped.
const RELAY_QUEUE: usize = 256;
/// How often the peer table is rebuilt from the mesh (at once when the engine asks: a packet found no peer).
const REFRESH: Duration = Duration::from_secs(2);
/// Least time between two rebuilds (a flood of packets to unknown addresses must not spin the node).
const REFRESH_MIN: Duration = Duration::from_millis(100);
/// How long a relay writer that could not open its stream holds its queue (dropping into it) before retrying.
const RELAY_RETRY: Duration = Duration::from_secs(1);

/// How the node runs its overlay.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// Run it at all.
    pub enabled: bool,
    /// TUN device name.
    pub tun: String,
    /// UDP port; 0 picks one.
    pub port: u16,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig { enabled: true, tun: metac_overlay::DEFAULT_TUN.into(), port: metac_overlay::DEFAULT_PORT }
    }
}

/// The overlay of a running node, or why there is none.
pub struct NodeOverlay {
    overlay: Option<Arc<Overlay>>,
    off: String,
    relay: Arc<MeshRelay>,
    epoch: u64,
    /// The inbound policy installed for the TUN device (while the overlay runs).
    policy: Mutex<Option<Policy>>,
}

/// The relay path: one bounded queue and one writer task per peer, each writing frames to a mesh stream.
struct MeshRelay {
    mesh: OnceLock<Handle>,
    rt: tokio::runtime::Handle,
    queues: Mutex<HashMap<NodeKey, mpsc::Sender<Vec<u8>>>>,
    refresh: tokio::sync::Notify,
}

impl Relay for MeshRelay {
    fn send(&self, node: &NodeKey, datagram: &[u8]) {
        let Some(mesh) = self.mesh.get() else { return };
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = queues.get(node) {
            match tx.try_send(datagram.to_vec()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    queues.remove(node);
                }
            }
        }
        let (tx, rx) = mpsc::channel(RELAY_QUEUE);
        let _ = tx.try_send(datagram.to_vec());
        queues.insert(*node, tx);
        self.rt.spawn(relay_writer(mesh.clone(), *node, rx));
    }

    fn wake(&self) {
        self.refresh.notify_one();
    }
}

async fn relay_writer(mesh: Handle, node: NodeKey, mut rx: mpsc::Receiver<Vec<u8>>) {
    let stream = match mesh.open_stream(node, relay::PROTOCOL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%node, error = %e, "overlay relay: cannot open a stream");
            tokio::time::sleep(RELAY_RETRY).await;
            return;
        }
    };
    tracing::debug!(%node, "overlay relay stream open");
    let mut s = stream.compat();
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let _ = relay::encode(&first, &mut buf);
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(more) => {
                    let _ = relay::encode(&more, &mut buf);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = async {
            s.write_all(&buf).await?;
            s.flush().await
        }
        .await
        {
            tracing::debug!(%node, error = %e, "overlay relay stream closed");
            return;
        }
    }
}

async fn relay_reader(overlay: Arc<Overlay>, node: NodeKey, stream: libp2p::Stream) {
    let mut s = tokio::io::BufReader::with_capacity(64 * 1024, stream.compat());
    let mut scratch = RelayScratch::default();
    let mut dgram = vec![0u8; relay::MAX_DATAGRAM];
    loop {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = match relay::check(u16::from_be_bytes(len) as usize) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%node, error = %e, "overlay relay: bad frame; closing the stream");
                return;
            }
        };
        if s.read_exact(&mut dgram[..n]).await.is_err() {
            return;
        }
        overlay.relay_input(node, &dgram[..n], &mut scratch);
    }
}

impl NodeOverlay {
    /// Starts the overlay if enabled and possible; otherwise records why not. Call [`NodeOverlay::attach`] once
    /// the mesh runs.
    pub fn start(config: &OverlayConfig, id: &Identity, policy: Policy) -> NodeOverlay {
        let relay = Arc::new(MeshRelay {
            mesh: OnceLock::new(),
            rt: tokio::runtime::Handle::current(),
            queues: Mutex::new(HashMap::new()),
            refresh: tokio::sync::Notify::new(),
        });
        let epoch = u64::from_le_bytes(metac_mesh::identity::random_bytes::<8>().unwrap_or_default()) | 1;
        let off = |off: String| NodeOverlay {
            overlay: None,
            off,
            relay: Arc::clone(&relay),
            epoch,
            policy: Mutex::new(None),
        };
        if !config.enabled {
            return off("off: disabled with --no-overlay".into());
        }
        let cfg = metac_overlay::Config {
            tun: config.tun.clone(),
            port: config.port,
            mtu: metac_overlay::DEFAULT_MTU,
            secret: id.x25519_secret(),
            addr: id.overlay_addr(),
        };
        let r: Box<dyn Relay> = Box::new(RelayRef(Arc::clone(&relay)));
        match Overlay::start(cfg, r) {
            // No packet reaches the host through the TUN device before its inbound policy is in place.
            Ok(o) => match policy.apply() {
                Ok(()) => NodeOverlay {
                    overlay: Some(Arc::new(o)),
                    off: String::new(),
                    relay,
                    epoch,
                    policy: Mutex::new(Some(policy)),
                },
                Err(e) => {
                    o.stop();
                    tracing::warn!("overlay off: {e}");
                    off(format!("off: {e}"))
                }
            },
            Err(e) => {
                tracing::warn!("overlay off: {e}");
                off(format!("off: {e}"))
            }
        }
    }

    /// What the mesh should advert of the tunnel.
    pub fn tunnel_advert(&self) -> Option<String> {
        self.overlay.as_ref().map(|o| TunnelAdvert { port: o.port(), epoch: self.epoch }.to_string())
    }

    /// One line for `metac status`.
    pub fn summary(&self) -> String {
        match &self.overlay {
            Some(o) => match o.failed() {
                Some(f) => format!("failed: {f}"),
                None => format!("on: {} udp port {}", o.tun_name(), o.port()),
            },
            None => self.off.clone(),
        }
    }

    /// Connects the overlay to the running mesh: relay streams in and out, and the peer table kept in step.
    pub fn attach(
        &self,
        mesh: Handle,
        store: Arc<Store>,
        cancel: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, net::Error> {
        let _ = self.relay.mesh.set(mesh.clone());
        let Some(overlay) = self.overlay.clone() else { return Ok(vec![]) };
        let incoming = mesh.accept(relay::PROTOCOL)?;
        let o = Arc::clone(&overlay);
        let c = cancel.clone();
        let m = mesh.clone();
        let accept = tokio::spawn(async move {
            let mut incoming = std::pin::pin!(incoming);
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    next = incoming.next() => match next {
                        Some((peer, stream)) => {
                            let (o, m) = (Arc::clone(&o), m.clone());
                            // Relay streams pass the same admission check as every other inbound stream.
                            tokio::spawn(async move {
                                if m.wait_admitted(peer, crate::transport::ADMISSION_WAIT).await {
                                    relay_reader(o, peer, stream).await;
                                }
                            });
                        }
                        None => break,
                    },
                }
            }
        });
        let relay = Arc::clone(&self.relay);
        let refresh = tokio::spawn(async move {
            let mut keys = KeyCache::default();
            let mut last: Option<Vec<PeerInfo>> = None;
            // The table is copied only when it changed since the last look, or when asked (a guest came, or a
            // packet went to an address no peer owns).
            let (mut version, mut force) = (0, true);
            loop {
                // Cleared before the snapshot, so that a later miss (or guest) asks again.
                let asked = overlay.wants_refresh();
                let snap =
                    if force || asked { mesh.snapshot().await.map(Some) } else { mesh.snapshot_since(version).await };
                let Ok(snap) = snap else { break };
                if let Some(snap) = snap {
                    version = snap.version;
                    let guests = store.guests().unwrap_or_default();
                    let infos = peer_infos(&snap, &guests, &mut keys);
                    // An idle mesh changes rarely: rebuild the table only when something did.
                    if last.as_ref() != Some(&infos) {
                        overlay.set_peers(infos.clone());
                        last = Some(infos);
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(REFRESH_MIN) => {}
                }
                force = tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = relay.refresh.notified() => true,
                    _ = tokio::time::sleep(REFRESH - REFRESH_MIN) => false,
                };
            }
            overlay.stop();
        });
        Ok(vec![accept, refresh])
    }

    /// Rebuilds the peer set at the next tick (guests changed).
    pub fn request_refresh(&self) {
        if let Some(o) = &self.overlay {
            o.request_refresh();
        }
    }

    /// Stops the overlay threads, removes the TUN device and the inbound policy's table.
    pub fn stop(&self) {
        if let Some(o) = &self.overlay {
            o.stop();
        }
        if let Some(p) = self.policy.lock().expect("policy lock").take() {
            p.remove();
        }
    }

    /// Replaces the inbound rules and installs them; the old ones stay if nftables refuses the new.
    pub fn set_rules(&self, rules: Vec<Rule>) -> Result<(), ApiError> {
        let mut guard = self.policy.lock().expect("policy lock");
        let Some(p) = guard.as_mut() else {
            return Err(ApiError::bad(format!("the overlay is {}; its policy applies when it runs", self.off)));
        };
        let mut next = p.clone();
        next.rules = rules;
        next.apply().map_err(ApiError::internal)?;
        *p = next;
        Ok(())
    }

    /// The inbound policy, for `metac overlay status`.
    pub fn policy(&self) -> Option<Policy> {
        self.policy.lock().expect("policy lock").clone()
    }

    /// `metac overlay status`.
    pub fn status(&self) -> Value {
        let Some(o) = &self.overlay else { return json!({ "state": self.off }) };
        let s = o.status();
        let policy = self.policy().map(|p| {
            json!({ "default": p.default_text(), "rules": p.rules.iter().map(|r| r.to_string()).collect::<Vec<_>>() })
        });
        json!({
            "policy": policy,
            "state": s.failed.as_ref().map(|f| format!("failed: {f}")).unwrap_or_else(|| self.summary()),
            "tun": s.tun,
            "addr": s.addr,
            "port": s.port,
            "mtu": s.mtu,
            "offload": s.offload,
            "gso_segments": s.gso_segments,
            "gro_segments": s.gro_segments,
            "unknown_dst": s.unknown_dst,
            "rejected": s.rejected,
            "spoofed": s.spoofed,
            "peers": s.peers.iter().map(|p| json!({
                "name": p.name,
                "addr": p.addr,
                "endpoint": p.endpoint.map(|e| e.to_string()),
                "narrow": p.narrow,
                "path": p.path,
                "tunnel": p.tunnel,
                "last_handshake_secs": p.last_handshake_secs,
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
                "spoofed": p.spoofed,
            })).collect::<Vec<_>>(),
        })
    }

    /// `metac overlay wg-config NAME`: admits a stock WireGuard peer and returns its wg-quick file.
    pub fn wg_config(
        &self,
        store: &Store,
        snap: &Snapshot,
        name: &str,
        endpoint: Option<&str>,
        public_key: Option<&str>,
    ) -> Result<Value, ApiError> {
        let Some(o) = &self.overlay else {
            return Err(ApiError::bad(format!("the overlay of this node is {}", self.off)));
        };
        if name.is_empty()
            || name.len() > 32
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::bad(format!(
                "guest name {name:?} must be 1 to 32 letters, digits, '-' or '_' (it names the wg-quick interface)"
            )));
        }
        let endpoint = match endpoint {
            Some(e) => parse_endpoint(e, o.port())?,
            None => default_endpoint(snap, o.port()).ok_or_else(|| {
                ApiError::bad(
                    "this node listens on no routable address; give the address guests reach it at with --endpoint",
                )
            })?,
        };
        let (private, public) = match public_key {
            Some(k) => (None, wgconf::key_from_str(k).map_err(ApiError::bad)?),
            None => {
                let (s, p) = wgconf::generate().map_err(|e| ApiError::internal(e.to_string()))?;
                (Some(s), p)
            }
        };
        let replaced = store.guests()?.iter().any(|g| g.name == name);
        store.put_guest(&Guest { name: name.into(), public, created: unix_now() })?;
        o.request_refresh();
        let config = wgconf::GuestConfig {
            name,
            private: private.as_ref(),
            public: &public,
            node: &snap.key,
            node_public: &o.public_key(),
            node_addr: snap.overlay,
            endpoint,
            mtu: o.mtu(),
        }
        .render();
        Ok(json!({
            "name": name,
            "addr": wgconf::guest_addr(&public),
            "public_key": wgconf::key_to_string(&public),
            "replaced": replaced,
            "config": config,
        }))
    }
}

/// Lets the engine own a `Box<dyn Relay>` while the node keeps the `Arc`.
struct RelayRef(Arc<MeshRelay>);

impl Relay for RelayRef {
    fn send(&self, node: &NodeKey, datagram: &[u8]) {
        self.0.send(node, datagram)
    }

    fn wake(&self) {
        self.0.wake()
    }
}

fn parse_endpoint(s: &str, port: u16) -> Result<SocketAddr, ApiError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, port)).map_err(|_| {
        ApiError::bad(format!(
            "--endpoint {s:?} is not an IP address or IP:PORT (e.g. 192.0.2.1 or [2001:db8::1]:51820)"
        ))
    })
}

fn default_endpoint(snap: &Snapshot, port: u16) -> Option<SocketAddr> {
    snap.listen
        .iter()
        .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
        .filter_map(|a| net::ip_of(&a))
        .find(net::is_routable_ip)
        .map(|ip| SocketAddr::new(ip, port))
}

/// Nodes' X25519 keys, derived once (a point decompression each).
#[derive(Default)]
pub struct KeyCache(HashMap<NodeKey, Option<[u8; 32]>>);

impl KeyCache {
    fn get(&mut self, key: NodeKey) -> Option<[u8; 32]> {
        if self.0.len() > 100_000 {
            self.0.clear(); // bounded: a churning mesh must not grow it for ever
        }
        *self.0.entry(key).or_insert_with(|| key.x25519_public().ok())
    }
}

/// The overlay's peers: every node whose advert says it runs the overlay, and the guests.
pub fn peer_infos(snap: &Snapshot, guests: &[Guest], keys: &mut KeyCache) -> Vec<PeerInfo> {
    let mut out = vec![];
    for n in &snap.nodes {
        let Some(t) = n.tunnel.as_deref().and_then(|t| t.parse::<TunnelAdvert>().ok()) else { continue };
        let Some(key) = NodeKey::from_hex(&n.key) else { continue };
        let Some(public) = keys.get(key) else { continue };
        let mut endpoints: Vec<SocketAddr> = vec![];
        let adverted =
            n.addrs.iter().filter_map(|a| a.parse::<libp2p::Multiaddr>().ok()).filter_map(|a| net::ip_of(&a));
        for ip in n.remote_ip.into_iter().chain(adverted).filter(net::is_routable_ip) {
            let e = SocketAddr::new(ip, t.port);
            if !endpoints.contains(&e) {
                endpoints.push(e);
            }
        }
        out.push(PeerInfo {
            name: n.key.clone(),
            node: Some(key),
            public,
            addr: n.overlay,
            endpoints,
            epoch: t.epoch,
            relay: n.reachable,
        });
    }
    for g in guests {
        out.push(PeerInfo {
            name: format!("guest:{}", g.name),
            node: None,
            public: g.public,
            addr: wgconf::guest_addr(&g.public),
            endpoints: vec![],
            epoch: 0,
            relay: false,
        });
    }
    out
}
