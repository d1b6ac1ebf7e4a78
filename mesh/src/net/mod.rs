//! The libp2p driver of the mesh core: one task that owns the swarm and the [`Core`](crate::core::Core) and loops
//! over commands, network events and a tick (an actor, like iroh's). Callers hold a cheap [`Handle`] that sends
//! commands over a bounded channel; resource data flows over raw libp2p streams opened through the handle.
//!
//! Transports: QUIC and TCP (noise + yamux). Discovery: mDNS on IPv4 and IPv6, `--peer` bootstrap addresses
//! redialed with backoff, and nodes learned from adverts. A private mesh (`--mesh-key`) is enforced at admission:
//! the first sync request and its response carry a keyed hash proving knowledge of the mesh key, bound to both
//! peer ids; a peer that fails it is disconnected and never dialed again, and nothing it gossips is accepted.
//!
//! Layout: this file is the public API ([`spawn`], [`Handle`], what a snapshot holds); `driver` is the task itself,
//! `swarm` the transports and behaviours it runs, `rpc` the messages between nodes and the admission proof, and
//! `addr` the helpers for peer ids and addresses.

mod addr;
mod driver;
pub mod flood;
mod gate;
mod rpc;
mod swarm;
#[cfg(test)]
mod tests;

use std::net::Ipv6Addr;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use addr::{ip_of, is_routable_ip, node_key, parse_peer_addr, peer_id};

/// How often a connection is pinged. A crashed or partitioned peer (no FIN, no RST) is seen when a ping fails:
/// [`PING_TIMEOUT`] to `PING_EVERY + PING_TIMEOUT` after it went. Every 15 s, pings were half of what an idle node
/// in a 20-node mesh spent; a graceful stop or a killed process is seen at once anyway (FIN or RST).
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub use rpc::{decode_request, decode_response, encode, Request, Response, MAX_RPC_BYTES, PAGE_BYTES, PAGE_ENTRIES};

use crate::advert::ResourceInfo;
use crate::core::{self, Via};
use crate::identity::{Identity, NodeKey};
use crate::token::TokenId;
use driver::Driver;

/// How long `connect` waits for a dial.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the mesh driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on port {port}: {reason}")]
    Listen { port: u16, reason: String },
    #[error("the mesh task has stopped")]
    Stopped,
    #[error("node {0} is unknown: no advert of it has reached this node (is it running and in the same mesh?)")]
    UnknownNode(NodeKey),
    #[error("cannot reach node {node}: {reason}")]
    Unreachable { node: NodeKey, reason: String },
    #[error("cannot open a stream to node {node}: {reason}")]
    Stream { node: NodeKey, reason: String },
    #[error("request to node {node} failed: {reason}")]
    Rpc { node: NodeKey, reason: String },
    #[error("{0} is not a valid node key")]
    BadKey(String),
}

/// How a node joins the mesh.
pub struct Config {
    /// The node's identity; its libp2p key is the same ed25519 key.
    pub identity: Identity,
    /// TCP and UDP port to listen on; 0 picks one.
    pub port: u16,
    /// Addresses to dial at start and redial with backoff while disconnected.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses of peers remembered from earlier runs (dialed once at start).
    pub remembered: Vec<Multiaddr>,
    /// Discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// The private mesh key, if any (from `--mesh-key FILE`).
    pub mesh_key: Option<Vec<u8>>,
    /// Core tunables.
    pub core: core::Config,
    /// What this node adverts of its overlay tunnel endpoint (the overlay's format), if it runs one.
    pub tunnel: Option<String>,
}

/// A view of one node for the local API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Node key, hex.
    pub key: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// Overlay address.
    pub overlay: Ipv6Addr,
    /// Addresses from its advert.
    pub addrs: Vec<String>,
    /// True while a connection to it is up.
    pub reachable: bool,
    /// How we learned of it.
    pub via: Via,
    /// Milliseconds since we last heard of it.
    pub last_seen_ms: u64,
    /// Its advert's sequence number.
    pub seq: u64,
    /// Its resources.
    pub resources: Vec<ResourceInfo>,
    /// Token ids it says it revoked (newest first).
    pub revoked: Vec<TokenId>,
    /// Its overlay tunnel endpoint as adverted, if it runs the overlay.
    pub tunnel: Option<String>,
    /// The IP address its live connection comes from (what we observe of it), if connected.
    pub remote_ip: Option<std::net::IpAddr>,
}

/// What the mesh looks like from this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// This node's key, hex.
    pub key: String,
    /// This node's libp2p peer id.
    pub peer_id: String,
    /// This node's overlay address.
    pub overlay: Ipv6Addr,
    /// Addresses this node listens on.
    pub listen: Vec<String>,
    /// Every other node known.
    pub nodes: Vec<NodeView>,
    /// Nodes with an advert in the table and at least one connection up (admitted and synced).
    pub connected: usize,
    /// Connections up (one per peer once duplicates are closed).
    pub connections: usize,
    /// Changes whenever a node's advert or connection does: equal versions, equal `nodes`.
    #[serde(default)]
    pub version: u64,
}

/// Things the mesh tells the node.
#[derive(Debug)]
pub enum Event {
    /// An application request from a peer; answer with [`Handle::reply`].
    Request { from: NodeKey, id: u64, body: Vec<u8> },
}

/// What a [`Handle`] asks of the mesh task.
enum Command {
    SetLocal(Vec<ResourceInfo>, Vec<TokenId>),
    Snapshot(oneshot::Sender<Snapshot>),
    SnapshotSince(u64, oneshot::Sender<Option<Snapshot>>),
    Connect(NodeKey, oneshot::Sender<Result<(), Error>>),
    Admitted(PeerId, oneshot::Sender<bool>),
    Connected(PeerId, oneshot::Sender<bool>),
    RemoteIp(PeerId, oneshot::Sender<Option<std::net::IpAddr>>),
    Request(NodeKey, Vec<u8>, oneshot::Sender<Result<Vec<u8>, Error>>),
    Reply(u64, Vec<u8>),
}

/// A cheap handle to the mesh task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    me: NodeKey,
}

impl Handle {
    /// This node's key.
    pub fn me(&self) -> NodeKey {
        self.me
    }

    async fn call<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Replaces what this node adverts: its resources and the token ids it revoked.
    pub async fn set_local(&self, resources: Vec<ResourceInfo>, revoked: Vec<TokenId>) -> Result<(), Error> {
        self.tx.send(Command::SetLocal(resources, revoked)).await.map_err(|_| Error::Stopped)
    }

    /// The mesh as this node sees it.
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.call(Command::Snapshot).await
    }

    /// The mesh as this node sees it, if it changed since the snapshot of `version` (cheap when it did not: the
    /// table is not copied).
    pub async fn snapshot_since(&self, version: u64) -> Result<Option<Snapshot>, Error> {
        self.call(|tx| Command::SnapshotSince(version, tx)).await
    }

    /// Makes sure a connection to `node` is up, dialing its advertised addresses if needed.
    pub async fn connect(&self, node: NodeKey) -> Result<(), Error> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.call(|tx| Command::Connect(node, tx))).await {
            Ok(r) => r?,
            Err(_) => Err(Error::Unreachable { node, reason: format!("no connection within {CONNECT_TIMEOUT:?}") }),
        }
    }

    /// Sends an application request to `node` and waits for its answer.
    pub async fn request(&self, node: NodeKey, body: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.connect(node).await?;
        self.call(|tx| Command::Request(node, body, tx)).await?
    }

    /// Answers an [`Event::Request`].
    pub async fn reply(&self, id: u64, body: Vec<u8>) -> Result<(), Error> {
        self.tx.send(Command::Reply(id, body)).await.map_err(|_| Error::Stopped)
    }

    /// Opens a raw stream for `protocol` to `node`, authenticated to its key by the connection's handshake.
    pub async fn open_stream(&self, node: NodeKey, protocol: &'static str) -> Result<libp2p::Stream, Error> {
        self.connect(node).await?;
        let peer = peer_id(&node).ok_or(Error::BadKey(node.to_hex()))?;
        let mut control = self.control.clone();
        control
            .open_stream(peer, StreamProtocol::new(protocol))
            .await
            .map_err(|e| Error::Stream { node, reason: e.to_string() })
    }

    /// Whether `node` has proven the mesh key (in a public mesh: completed the first sync), so that its streams
    /// and requests may be served.
    pub async fn is_admitted(&self, node: NodeKey) -> bool {
        let Some(peer) = peer_id(&node) else { return false };
        self.call(|tx| Command::Admitted(peer, tx)).await.unwrap_or(false)
    }

    /// Whether a connection to `node` is up now.
    pub async fn is_connected(&self, node: NodeKey) -> bool {
        let Some(peer) = peer_id(&node) else { return false };
        self.call(|tx| Command::Connected(peer, tx)).await.unwrap_or(false)
    }

    /// The IP address `node`'s live connection comes from, if one is up: where a direct connection to it goes.
    pub async fn remote_ip(&self, node: NodeKey) -> Option<std::net::IpAddr> {
        let peer = peer_id(&node)?;
        self.call(|tx| Command::RemoteIp(peer, tx)).await.ok().flatten()
    }

    /// Waits up to `within` for `node` to be admitted (a stream can arrive just before the sync that admits its
    /// sender is answered). False if it is not by then.
    pub async fn wait_admitted(&self, node: NodeKey, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.is_admitted(node).await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Accepts inbound raw streams for `protocol`: yields (peer's node key, stream). Callers check admission
    /// ([`Handle::wait_admitted`]) before serving a stream.
    pub fn accept(
        &self,
        protocol: &'static str,
    ) -> Result<impl futures::Stream<Item = (NodeKey, libp2p::Stream)>, Error> {
        let mut control = self.control.clone();
        let incoming = control
            .accept(StreamProtocol::new(protocol))
            .map_err(|e| Error::Transport(format!("protocol {protocol}: {e}")))?;
        Ok(incoming.filter_map(|(peer, s)| async move { node_key(&peer).map(|k| (k, s)) }))
    }
}

/// Starts the mesh task. Returns its handle, the events it sends the node, and the task.
pub async fn spawn(
    config: Config,
    cancel: CancellationToken,
) -> Result<(Handle, mpsc::Receiver<Event>, tokio::task::JoinHandle<()>), Error> {
    let (swarm, topic) = swarm::build(&config)?;
    let control = swarm.behaviour().streams.new_control();
    let me = config.identity.public();
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let driver = Driver::new(swarm, topic, config, ev_tx);
    let task = tokio::spawn(driver.run(cmd_rx, cancel));
    Ok((Handle { tx: cmd_tx, control, me }, ev_rx, task))
}
