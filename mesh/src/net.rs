//! The libp2p driver of the mesh core: one task that owns the swarm and the [`Core`] and loops over commands,
//! network events and a tick (an actor, like iroh's). Callers hold a cheap [`Handle`] that sends commands over a
//! bounded channel; resource data flows over raw libp2p streams opened through the handle.
//!
//! Transports: QUIC and TCP (noise + yamux). Discovery: mDNS on IPv4 and IPv6, `--peer` bootstrap addresses
//! redialed with backoff, and nodes learned from adverts. A private mesh (`--mesh-key`) is enforced at admission:
//! the first sync request and its response carry a keyed hash proving knowledge of the mesh key, bound to both
//! peer ids; a peer that fails it is disconnected and never dialed again, and nothing it gossips is accepted.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::advert::{ResourceInfo, Signed};
use crate::core::{self, Action, Core, Millis, Via};
use crate::identity::{Identity, NodeKey};

/// Protocol of the mesh RPC (sync + application requests).
const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/metac/rpc/1");
/// Largest RPC message, checked before allocating.
pub const MAX_RPC_BYTES: usize = 16 * 1024 * 1024;
/// Gossip topic of adverts.
const ADVERT_TOPIC: &str = "metac/adverts/1";
/// Most connections we open to nodes learned only from gossip.
const MAX_GOSSIP_DIALS: usize = 64;
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
}

/// Things the mesh tells the node.
#[derive(Debug)]
pub enum Event {
    /// An application request from a peer; answer with [`Handle::reply`].
    Request { from: NodeKey, id: u64, body: Vec<u8> },
}

enum Command {
    SetResources(Vec<ResourceInfo>),
    Snapshot(oneshot::Sender<Snapshot>),
    Connect(NodeKey, oneshot::Sender<Result<(), Error>>),
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

    /// Replaces the resources this node adverts.
    pub async fn set_resources(&self, resources: Vec<ResourceInfo>) -> Result<(), Error> {
        self.tx.send(Command::SetResources(resources)).await.map_err(|_| Error::Stopped)
    }

    /// The mesh as this node sees it.
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.call(Command::Snapshot).await
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

    /// Accepts inbound raw streams for `protocol`: yields (peer's node key, stream).
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

/// The libp2p peer id of a node key, if the key is a valid ed25519 point.
pub fn peer_id(key: &NodeKey) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// The node key inside a libp2p peer id (ed25519 ids inline the key).
pub fn node_key(peer: &PeerId) -> Option<NodeKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(NodeKey(pk.try_into_ed25519().ok()?.to_bytes()))
}

/// Parses a `--peer` value: a multiaddr, or `HOST[:PORT]` (IPv6 in brackets when a port is given), port 4747 by default.
pub fn parse_peer_addr(s: &str) -> Result<Multiaddr, String> {
    if s.starts_with('/') {
        return s.parse().map_err(|e| format!("{s:?} is not a valid multiaddr: {e}"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(|| format!("{s:?}: missing ']' after the IPv6 address"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            None if tail.is_empty() => 4747,
            None => return Err(format!("{s:?}: expected ':PORT' after ']'")),
        };
        (h.to_string(), port)
    } else if s.matches(':').count() > 1 {
        (s.to_string(), 4747) // a bare IPv6 address
    } else if let Some((h, p)) = s.split_once(':') {
        (h.to_string(), p.parse::<u16>().map_err(|_| format!("{s:?}: bad port {p:?}"))?)
    } else {
        (s.to_string(), 4747)
    };
    let proto = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => Protocol::Ip4(a),
        Ok(std::net::IpAddr::V6(a)) => Protocol::Ip6(a),
        Err(_) if !host.is_empty() => Protocol::Dns(host.into()),
        Err(_) => return Err(format!("{s:?}: empty host")),
    };
    Ok(Multiaddr::empty().with(proto).with(Protocol::Tcp(port)))
}

/// True for addresses worth telling others about: not loopback, link-local or unspecified.
fn is_routable(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip6(a)) => !(a.is_loopback() || a.is_unspecified() || (a.segments()[0] & 0xffc0) == 0xfe80),
        Some(Protocol::Ip4(a)) => !(a.is_loopback() || a.is_unspecified() || a.is_link_local()),
        _ => true,
    }
}

/// Orders dial addresses TCP first: on Linux, TCP + noise + yamux is the faster and lighter of the two here
/// (DESIGN section 6), and one connection per peer is all we keep.
fn tcp_first(mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs.sort_by_key(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)));
    addrs
}

fn mesh_secret(key: Option<&[u8]>) -> [u8; 32] {
    match key {
        Some(k) => blake3::derive_key("metac mesh key v1", k),
        None => blake3::derive_key("metac public mesh v1", b""),
    }
}

/// Proof that `from` knows the mesh key, bound to both peers so it cannot be replayed by anyone else.
fn admission_proof(secret: &[u8; 32], from: &PeerId, to: &PeerId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"metac admit v1");
    h.update(&from.to_bytes());
    h.update(&to.to_bytes());
    *h.finalize().as_bytes()
}

/// RPC requests between nodes.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Sync { proof: [u8; 32], digest: Vec<(NodeKey, u64)> },
    App(Vec<u8>),
}

/// RPC responses.
#[derive(Debug, Serialize, Deserialize)]
enum Response {
    Sync { proof: [u8; 32], adverts: Vec<Signed> },
    Denied(String),
    App(Vec<u8>),
}

/// Length-prefixed postcard frames, bounded by [`MAX_RPC_BYTES`].
#[derive(Clone, Default)]
struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send, M: serde::de::DeserializeOwned>(io: &mut T) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RPC_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("rpc frame of {len} bytes is too large")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad rpc frame: {e}")))
}

async fn write_frame<T: AsyncWrite + Unpin + Send, M: Serialize>(io: &mut T, msg: &M) -> io::Result<()> {
    let buf = postcard::to_allocvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if buf.len() > MAX_RPC_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "rpc frame too large"));
    }
    io.write_all(&(buf.len() as u32).to_be_bytes()).await?;
    io.write_all(&buf).await?;
    io.close().await
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        read_frame(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        read_frame(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        write_frame(io, &req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns4: Toggle<mdns::tokio::Behaviour>,
    mdns6: Toggle<mdns::tokio::Behaviour>,
    gossip: gossipsub::Behaviour,
    rpc: request_response::Behaviour<Codec>,
    streams: libp2p_stream::Behaviour,
}

struct Bootstrap {
    addr: Multiaddr,
    peer: Option<PeerId>,
    next: Option<Instant>,
    backoff: Duration,
    dialing: Option<ConnectionId>,
}

/// Starts the mesh task. Returns its handle, the events it sends the node, and the task.
pub async fn spawn(
    config: Config,
    cancel: CancellationToken,
) -> Result<(Handle, mpsc::Receiver<Event>, tokio::task::JoinHandle<()>), Error> {
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(config.identity.secret())
        .map_err(|e| Error::Transport(e.to_string()))?;
    let mdns_on = config.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_quic()
        .with_dns()
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mdns_cfg = |v6| mdns::Config { enable_ipv6: v6, ..Default::default() };
            let mdns4 = mdns_on.then(|| mdns::tokio::Behaviour::new(mdns_cfg(false), peer)).transpose()?;
            let mdns6 = mdns_on.then(|| mdns::tokio::Behaviour::new(mdns_cfg(true), peer)).transpose()?;
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(crate::advert::MAX_ADVERT_BYTES + 1024)
                .message_id_fn(|m| gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
                .build()
                .map_err(|e| io::Error::other(e.to_string()))?;
            let gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)
                .map_err(io::Error::other)?;
            Ok(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new("/metac/id/1".into(), key.public())
                        .with_agent_version(format!("metac/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(15)).with_timeout(Duration::from_secs(10)),
                ),
                mdns4: mdns4.into(),
                mdns6: mdns6.into(),
                gossip,
                rpc: request_response::Behaviour::with_codec(
                    Codec,
                    [(RPC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
                ),
                streams: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();

    let port = config.port;
    let tcp6: Multiaddr = format!("/ip6/::/tcp/{port}").parse().expect("valid");
    swarm.listen_on(tcp6).map_err(|e| Error::Listen { port, reason: e.to_string() })?;
    // The other listeners are best effort: a host may lack IPv4, or UDP may be filtered.
    for a in [
        format!("/ip6/::/udp/{port}/quic-v1"),
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ] {
        if let Err(e) = swarm.listen_on(a.parse().expect("valid")) {
            tracing::warn!("cannot listen on {a}: {e}");
        }
    }
    let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
    swarm.behaviour_mut().gossip.subscribe(&topic).map_err(|e| Error::Transport(e.to_string()))?;

    let control = swarm.behaviour().streams.new_control();
    let me = config.identity.public();
    let seq =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1);
    let start = Instant::now();
    let core = Core::new(config.identity.clone(), config.core.clone(), seq, 0);
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let mut bootstrap: Vec<Bootstrap> = config
        .bootstrap
        .into_iter()
        .map(|addr| Bootstrap {
            addr,
            peer: None,
            next: Some(Instant::now()),
            backoff: Duration::from_secs(1),
            dialing: None,
        })
        .collect();
    for addr in config.remembered {
        if !bootstrap.iter().any(|b| b.addr == addr) {
            // Remembered peers are dialed once; mDNS and gossip find them again if they moved.
            bootstrap.push(Bootstrap {
                addr,
                peer: None,
                next: Some(Instant::now()),
                backoff: Duration::MAX,
                dialing: None,
            });
        }
    }
    let driver = Driver {
        swarm,
        core,
        topic,
        start,
        secret: mesh_secret(config.mesh_key.as_deref()),
        me,
        bootstrap,
        resources: vec![],
        listen: vec![],
        addrs_dirty: false,
        via: HashMap::new(),
        admitted: HashSet::new(),
        denied: HashSet::new(),
        waiting: HashMap::new(),
        pending: HashMap::new(),
        inbound: HashMap::new(),
        next_inbound: 0,
        events: ev_tx,
        conns: HashMap::new(),
        redial: HashMap::new(),
        syncs: HashMap::new(),
    };
    let task = tokio::spawn(driver.run(cmd_rx, cancel));
    Ok((Handle { tx: cmd_tx, control, me }, ev_rx, task))
}

struct Driver {
    swarm: Swarm<Behaviour>,
    core: Core,
    topic: gossipsub::IdentTopic,
    start: Instant,
    secret: [u8; 32],
    me: NodeKey,
    bootstrap: Vec<Bootstrap>,
    resources: Vec<ResourceInfo>,
    listen: Vec<Multiaddr>,
    addrs_dirty: bool,
    via: HashMap<PeerId, Via>,
    admitted: HashSet<PeerId>,
    denied: HashSet<PeerId>,
    waiting: HashMap<PeerId, Vec<oneshot::Sender<Result<(), Error>>>>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, Error>>>,
    inbound: HashMap<u64, ResponseChannel<Response>>,
    next_inbound: u64,
    events: mpsc::Sender<Event>,
    conns: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    redial: HashMap<PeerId, (Instant, Duration)>,
    syncs: HashMap<OutboundRequestId, PeerId>,
}

impl Driver {
    fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                _ = tick.tick() => self.on_tick(),
            }
            self.drain_actions();
        }
        tracing::debug!("mesh task stopped");
    }

    fn on_tick(&mut self) {
        let now = self.now();
        if self.addrs_dirty {
            self.addrs_dirty = false;
            self.publish_local();
        }
        self.core.handle_tick(now);
        self.redial_lost();
        let t = Instant::now();
        for i in 0..self.bootstrap.len() {
            let b = &mut self.bootstrap[i];
            if b.dialing.is_some() || b.next.is_none_or(|n| n > t) {
                continue;
            }
            if b.peer.is_some_and(|p| self.swarm.is_connected(&p)) {
                b.next = None;
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(b.addr.clone()).build();
            b.dialing = Some(opts.connection_id());
            b.next = None;
            tracing::debug!(addr = %b.addr, "dialing bootstrap peer");
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(addr = %self.bootstrap[i].addr, "dial failed: {e}");
                self.retry_later(i);
            }
        }
    }

    fn retry_later(&mut self, i: usize) {
        let b = &mut self.bootstrap[i];
        b.dialing = None;
        if b.backoff == Duration::MAX {
            return; // remembered peer: one try only
        }
        b.next = Some(Instant::now() + b.backoff);
        b.backoff = (b.backoff * 2).min(Duration::from_secs(30));
    }

    fn publish_local(&mut self) {
        let mut addrs: Vec<String> = self.listen.iter().filter(|a| is_routable(a)).map(|a| a.to_string()).collect();
        if addrs.is_empty() {
            addrs = self.listen.iter().map(|a| a.to_string()).collect();
        }
        addrs.truncate(crate::advert::MAX_ADDRS);
        let now = self.now();
        self.core.set_local(addrs, None, self.resources.clone(), now);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetResources(r) => {
                self.resources = r;
                self.publish_local();
            }
            Command::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
            }
            Command::Connect(node, tx) => self.connect(node, tx),
            Command::Request(node, body, tx) => match peer_id(&node) {
                Some(p) if self.swarm.is_connected(&p) => {
                    let id = self.swarm.behaviour_mut().rpc.send_request(&p, Request::App(body));
                    self.pending.insert(id, tx);
                }
                _ => {
                    let _ = tx.send(Err(Error::Unreachable { node, reason: "not connected".into() }));
                }
            },
            Command::Reply(id, body) => {
                if let Some(ch) = self.inbound.remove(&id) {
                    let _ = self.swarm.behaviour_mut().rpc.send_response(ch, Response::App(body));
                }
            }
        }
    }

    fn connect(&mut self, node: NodeKey, tx: oneshot::Sender<Result<(), Error>>) {
        if node == self.me {
            let _ = tx.send(Ok(()));
            return;
        }
        let Some(peer) = peer_id(&node) else {
            let _ = tx.send(Err(Error::BadKey(node.to_hex())));
            return;
        };
        if self.swarm.is_connected(&peer) {
            let _ = tx.send(Ok(()));
            return;
        }
        let Some(entry) = self.core.entry(&node) else {
            let _ = tx.send(Err(Error::UnknownNode(node)));
            return;
        };
        let addrs: Vec<Multiaddr> = entry.advert.advert().addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let first = !self.waiting.contains_key(&peer);
        self.waiting.entry(peer).or_default().push(tx);
        if first {
            if let Err(e) = self.swarm.dial(DialOpts::peer_id(peer).addresses(tcp_first(addrs)).build()) {
                self.fail_waiting(&peer, e.to_string());
            }
        }
    }

    fn fail_waiting(&mut self, peer: &PeerId, reason: String) {
        let node = node_key(peer).unwrap_or(self.me);
        for tx in self.waiting.remove(peer).unwrap_or_default() {
            let _ = tx.send(Err(Error::Unreachable { node, reason: reason.clone() }));
        }
    }

    fn snapshot(&self) -> Snapshot {
        let now = self.now();
        let me = self.me;
        let nodes: Vec<NodeView> = self
            .core
            .entries()
            .filter(|(k, _)| **k != me)
            .map(|(k, e)| {
                let peer = self.core.peer(k);
                let last = peer.map(|p| p.last_seen.max(e.last_heard)).unwrap_or(e.last_heard);
                let reachable = self.core.is_reachable(k);
                NodeView {
                    key: k.to_hex(),
                    peer_id: peer_id(k).map(|p| p.to_string()).unwrap_or_default(),
                    overlay: k.overlay_addr(),
                    addrs: e.advert.advert().addrs.clone(),
                    reachable,
                    via: peer.map(|p| p.via).unwrap_or(Via::Gossip),
                    last_seen_ms: if reachable { 0 } else { now.saturating_sub(last) },
                    seq: e.advert.seq(),
                    resources: e.advert.advert().resources.clone(),
                }
            })
            .collect();
        let connected = nodes.iter().filter(|n| n.reachable).count();
        Snapshot {
            key: me.to_hex(),
            peer_id: self.swarm.local_peer_id().to_string(),
            overlay: me.overlay_addr(),
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
            nodes,
            connected,
            connections: self.swarm.network_info().connection_counters().num_established() as usize,
        }
    }

    fn send_sync(&mut self, p: PeerId, digest: Vec<(NodeKey, u64)>) {
        let proof = admission_proof(&self.secret, self.swarm.local_peer_id(), &p);
        let id = self.swarm.behaviour_mut().rpc.send_request(&p, Request::Sync { proof, digest });
        self.syncs.insert(id, p);
    }

    /// Closes duplicate connections to a peer: once a connection dialed by the smaller peer id is up, those
    /// dialed the other way go. Both ends see the same set of such connections, so they agree without talking,
    /// and a connection of the kept kind is never closed (ordering by local ids could make each end close the
    /// other's choice). Simultaneous dials (mDNS finds both ends at once) would otherwise double every peer's
    /// connections, pings and gossip.
    fn dedupe(&mut self, peer: PeerId) {
        let Some(list) = self.conns.get(&peer) else { return };
        let i_dial = self.swarm.local_peer_id().to_bytes() < peer.to_bytes();
        if !list.iter().any(|c| c.1 == i_dial) {
            return;
        }
        let close: Vec<ConnectionId> = list.iter().filter(|c| c.1 != i_dial).map(|c| c.0).collect();
        for c in close {
            self.swarm.close_connection(c);
        }
    }

    /// Dials known nodes whose connections all went down, with backoff, while their advert is still in the
    /// table: a partition that heals reconnects without waiting for mDNS or a bootstrap retry.
    fn redial_lost(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self.redial.iter().filter(|(_, (at, _))| *at <= now).map(|(p, _)| *p).collect();
        for p in due {
            let addrs = node_key(&p).and_then(|k| self.core.entry(&k)).map(|e| {
                e.advert.advert().addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()).collect::<Vec<_>>()
            });
            match addrs {
                Some(addrs) if !addrs.is_empty() && !self.swarm.is_connected(&p) && !self.denied.contains(&p) => {
                    let entry = self.redial.get_mut(&p).expect("due entry");
                    entry.1 = (entry.1 * 2).min(Duration::from_secs(60));
                    entry.0 = now + entry.1;
                    tracing::debug!(%p, "redialing a lost peer");
                    let _ = self.swarm.dial(DialOpts::peer_id(p).addresses(tcp_first(addrs)).build());
                }
                _ => {
                    self.redial.remove(&p);
                }
            }
        }
    }

    fn drain_actions(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::SendSync { to, digest } => {
                    if let Some(p) = peer_id(&to) {
                        self.send_sync(p, digest);
                    }
                }
                Action::Publish(signed) => {
                    let topic = self.topic.clone();
                    if let Err(e) = self.swarm.behaviour_mut().gossip.publish(topic, signed.encode()) {
                        // No peers yet is normal: sync on connect carries the advert instead.
                        tracing::trace!("advert not gossiped: {e}");
                    }
                }
                Action::Event(core::Event::Updated { node, addrs }) => {
                    let Some(p) = peer_id(&node) else { continue };
                    let gossip_dials = self.via.values().filter(|v| **v == Via::Gossip).count();
                    if !self.swarm.is_connected(&p) && !self.denied.contains(&p) && gossip_dials < MAX_GOSSIP_DIALS {
                        let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
                        if !addrs.is_empty() {
                            self.via.entry(p).or_insert(Via::Gossip);
                            let _ = self.swarm.dial(DialOpts::peer_id(p).addresses(tcp_first(addrs)).build());
                        }
                    }
                }
                Action::Event(core::Event::Expired { node }) => {
                    tracing::info!(%node, "node expired after the grace period");
                }
            }
        }
    }

    fn deny(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, "refusing peer: {why}");
        self.denied.insert(peer);
        self.admitted.remove(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let now = self.now();
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}");
                self.listen.push(address);
                self.addrs_dirty = true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen.retain(|a| *a != address);
                self.addrs_dirty = true;
            }
            SwarmEvent::ConnectionEstablished { peer_id: peer, connection_id, endpoint, .. } => {
                if self.denied.contains(&peer) {
                    self.swarm.close_connection(connection_id);
                    return;
                }
                for b in self.bootstrap.iter_mut().filter(|b| b.dialing == Some(connection_id)) {
                    b.dialing = None;
                    b.peer = Some(peer);
                    b.backoff = Duration::from_secs(1);
                }
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    tracing::debug!(%peer, %address, "connected (outbound)");
                }
                self.redial.remove(&peer);
                self.conns.entry(peer).or_default().push((connection_id, endpoint.is_dialer()));
                self.dedupe(peer);
                let via =
                    *self.via.entry(peer).or_insert(if endpoint.is_dialer() { Via::Bootstrap } else { Via::Inbound });
                if let Some(node) = node_key(&peer) {
                    self.core.handle_connected(node, via, now);
                }
                for tx in self.waiting.remove(&peer).unwrap_or_default() {
                    let _ = tx.send(Ok(()));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id: peer, connection_id, num_established, .. } => {
                if let Some(list) = self.conns.get_mut(&peer) {
                    list.retain(|c| c.0 != connection_id);
                    if list.is_empty() {
                        self.conns.remove(&peer);
                    }
                }
                if let Some(node) = node_key(&peer) {
                    self.core.handle_disconnected(node, now);
                }
                if num_established == 0 {
                    self.admitted.remove(&peer);
                    if !self.denied.contains(&peer) {
                        self.redial.insert(peer, (Instant::now() + Duration::from_secs(1), Duration::from_secs(1)));
                    }
                    for i in 0..self.bootstrap.len() {
                        if self.bootstrap[i].peer == Some(peer) && !self.denied.contains(&peer) {
                            self.bootstrap[i].backoff = Duration::from_secs(1).min(self.bootstrap[i].backoff);
                            self.retry_later(i);
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error, .. } => {
                if let Some(i) = self.bootstrap.iter().position(|b| b.dialing == Some(connection_id)) {
                    tracing::debug!(addr = %self.bootstrap[i].addr, "bootstrap dial failed: {error}");
                    self.retry_later(i);
                }
                if let Some(p) = peer_id {
                    if !self.swarm.is_connected(&p) {
                        self.fail_waiting(&p, error.to_string());
                    }
                }
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour(b, now),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent, now: Millis) {
        match ev {
            BehaviourEvent::Mdns4(mdns::Event::Discovered(list))
            | BehaviourEvent::Mdns6(mdns::Event::Discovered(list)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (p, a) in list {
                    if is_routable(&a) && !self.denied.contains(&p) {
                        by_peer.entry(p).or_default().push(a);
                    }
                }
                for (p, addrs) in by_peer {
                    if !self.swarm.is_connected(&p) {
                        tracing::debug!(%p, ?addrs, "discovered by mDNS");
                        self.via.insert(p, Via::Mdns);
                        let _ = self.swarm.dial(DialOpts::peer_id(p).addresses(tcp_first(addrs)).build());
                    }
                }
            }
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) }) => {
                tracing::debug!(%peer, "ping failed, closing the connection: {e}");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Gossip(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let verdict = if !self.admitted.contains(&propagation_source) {
                    gossipsub::MessageAcceptance::Ignore
                } else {
                    match Signed::decode(&message.data) {
                        Ok(s) => {
                            self.core.handle_gossip(s, now);
                            gossipsub::MessageAcceptance::Accept
                        }
                        Err(e) => {
                            tracing::debug!("bad advert from {propagation_source}: {e}");
                            gossipsub::MessageAcceptance::Reject
                        }
                    }
                };
                self.swarm.behaviour_mut().gossip.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    verdict,
                );
            }
            BehaviourEvent::Rpc(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_request(peer, request, channel, now)
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_response(peer, request_id, response, now)
                }
            },
            BehaviourEvent::Rpc(request_response::Event::OutboundFailure { request_id, error, peer, .. }) => {
                // A sync lost with a connection that was closed as a duplicate is sent again on the one kept.
                if self.syncs.remove(&request_id).is_some() && self.swarm.is_connected(&peer) {
                    tracing::debug!(%peer, "sync failed ({error}), sending it again");
                    let digest = self.core.digest();
                    self.send_sync(peer, digest);
                }
                if let Some(tx) = self.pending.remove(&request_id) {
                    let node = node_key(&peer).unwrap_or(self.me);
                    let _ = tx.send(Err(Error::Rpc { node, reason: error.to_string() }));
                }
            }
            _ => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>, now: Millis) {
        let Some(node) = node_key(&peer) else { return };
        match request {
            Request::Sync { proof, digest } => {
                if proof != admission_proof(&self.secret, &peer, self.swarm.local_peer_id()) {
                    let _ = self.swarm.behaviour_mut().rpc.send_response(
                        channel,
                        Response::Denied("not a member of this mesh (mesh key differs)".into()),
                    );
                    self.deny(peer, "its mesh key differs from ours");
                    return;
                }
                self.admitted.insert(peer);
                let adverts = self.core.handle_sync_request(node, &digest, now);
                let proof = admission_proof(&self.secret, self.swarm.local_peer_id(), &peer);
                let _ = self.swarm.behaviour_mut().rpc.send_response(channel, Response::Sync { proof, adverts });
            }
            Request::App(body) => {
                if !self.admitted.contains(&peer) {
                    let _ =
                        self.swarm.behaviour_mut().rpc.send_response(channel, Response::Denied("not admitted".into()));
                    return;
                }
                let id = self.next_inbound;
                self.next_inbound += 1;
                match self.events.try_send(Event::Request { from: node, id, body }) {
                    Ok(()) => {
                        self.inbound.insert(id, channel);
                    }
                    Err(_) => {
                        let _ =
                            self.swarm.behaviour_mut().rpc.send_response(channel, Response::Denied("node busy".into()));
                    }
                }
            }
        }
    }

    fn on_response(&mut self, peer: PeerId, id: OutboundRequestId, response: Response, now: Millis) {
        let node = node_key(&peer).unwrap_or(self.me);
        match response {
            Response::Sync { proof, adverts } => {
                self.syncs.remove(&id);
                if proof != admission_proof(&self.secret, &peer, self.swarm.local_peer_id()) {
                    self.deny(peer, "its sync answer does not prove our mesh key");
                    return;
                }
                self.admitted.insert(peer);
                self.core.handle_adverts(adverts, now);
            }
            Response::Denied(why) => {
                if let Some(tx) = self.pending.remove(&id) {
                    let _ = tx.send(Err(Error::Rpc { node, reason: why }));
                } else {
                    self.deny(peer, &format!("it refused us: {why}"));
                }
            }
            Response::App(body) => {
                if let Some(tx) = self.pending.remove(&id) {
                    let _ = tx.send(Ok(body));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trip() {
        let id = Identity::from_secret([5; 32]);
        let p = peer_id(&id.public()).unwrap();
        assert_eq!(node_key(&p), Some(id.public()));
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(id.secret()).unwrap();
        assert_eq!(kp.public().to_peer_id(), p);
    }

    #[test]
    fn peer_addr_forms() {
        assert_eq!(parse_peer_addr("[fd00:77::2]:4000").unwrap().to_string(), "/ip6/fd00:77::2/tcp/4000");
        assert_eq!(parse_peer_addr("fd00:77::2").unwrap().to_string(), "/ip6/fd00:77::2/tcp/4747");
        assert_eq!(parse_peer_addr("127.0.0.1:9").unwrap().to_string(), "/ip4/127.0.0.1/tcp/9");
        assert_eq!(parse_peer_addr("node1").unwrap().to_string(), "/dns/node1/tcp/4747");
        assert_eq!(parse_peer_addr("/ip6/::1/udp/5/quic-v1").unwrap().to_string(), "/ip6/::1/udp/5/quic-v1");
        assert!(parse_peer_addr("[fd00::1").unwrap_err().contains("missing ']'"));
        assert!(parse_peer_addr("host:notaport").unwrap_err().contains("bad port"));
        assert!(parse_peer_addr("/nonsense").is_err());
    }

    #[test]
    fn admission_proof_depends_on_key_and_direction() {
        let a = PeerId::random();
        let b = PeerId::random();
        let k1 = mesh_secret(Some(b"one"));
        let k2 = mesh_secret(Some(b"two"));
        let open = mesh_secret(None);
        assert_ne!(admission_proof(&k1, &a, &b), admission_proof(&k2, &a, &b));
        assert_ne!(admission_proof(&k1, &a, &b), admission_proof(&k1, &b, &a));
        assert_ne!(admission_proof(&k1, &a, &b), admission_proof(&open, &a, &b));
    }

    #[test]
    fn tcp_is_dialed_first() {
        let a: Vec<Multiaddr> =
            ["/ip6/fd00::1/udp/1/quic-v1", "/ip6/fd00::1/tcp/1"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(tcp_first(a)[0].to_string(), "/ip6/fd00::1/tcp/1");
    }

    #[test]
    fn routable_filter() {
        for (a, ok) in [
            ("/ip6/::1/tcp/1", false),
            ("/ip6/fe80::1/tcp/1", false),
            ("/ip6/fd00:77::1/tcp/1", true),
            ("/ip4/127.0.0.1/tcp/1", false),
            ("/ip4/0.0.0.0/tcp/1", false),
        ] {
            assert_eq!(is_routable(&a.parse().unwrap()), ok, "{a}");
        }
    }
}
