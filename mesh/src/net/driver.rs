//! The mesh task: one actor that owns the swarm and the [`Core`] and loops over commands from the [`Handle`],
//! swarm events and a one-second tick. It turns swarm events into core inputs and core actions into swarm calls,
//! and keeps the connection bookkeeping the core does not see: bootstrap dials and redials with backoff, admission
//! of peers by mesh key, duplicate connections, and requests in flight.
//!
//! [`Handle`]: super::Handle

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{gossipsub, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::addr::{ip_of, is_dialable, is_routable, node_key, peer_id, split_quic};
use super::rpc::{admission_proof, mesh_secret, proof_matches, Request, Response, PAGE_BYTES, PAGE_ENTRIES};
use super::swarm::{Behaviour, BehaviourEvent};
use super::{Command, Config, Error, Event, NodeView, Snapshot};
use crate::advert::{ResourceInfo, Signed};
use crate::core::{self, Action, Core, KeyRange, Millis, Outcome, Via, MAX_SUMMARY_BITS};
use crate::identity::NodeKey;
use crate::token::TokenId;

/// Most connections we open to nodes learned only from gossip.
const MAX_GOSSIP_DIALS: usize = 64;
/// Peers dialed for one mDNS announcement, at most.
const MAX_MDNS_DIALS: usize = 16;
/// Peers whose mDNS-announced addresses are kept for redials, at most, and addresses kept of each.
const MAX_LAN_PEERS: usize = 64;
const MAX_LAN_ADDRS: usize = 8;
/// Dials waiting to fall back to QUIC, at most (one per peer being dialed).
const MAX_PENDING_FALLBACKS: usize = 1024;
/// Peers remembered as denied (wrong mesh key), at most; the oldest are forgotten first.
const MAX_DENIED: usize = 1024;
/// Bytes of adverts of other nodes per second a peer may make us verify (gossip it passes on, sync pages).
const RELAY_RATE: f64 = 256.0 * 1024.0;
/// What a peer may spend on others' adverts at once: the first sync with a mesh of a few thousand nodes (larger
/// ones page on at the rate).
const RELAY_BURST: f64 = 1024.0 * 1024.0;
/// Bytes per second of a peer's own adverts, with their own budget so that what it relays never holds them up.
const OWN_RATE: f64 = 64.0 * 1024.0;
/// What a peer may spend on its own adverts at once: a few dozen quick changes of a large one.
const OWN_BURST: f64 = 1024.0 * 1024.0;
/// The least an advert costs, so that small ones are not free to verify.
const ADVERT_MIN_COST: usize = 512;
/// Sync pages waiting for their peer's budget, at most (one per range and peer in practice).
const MAX_DEFERRED: usize = 1024;
/// Gossip messages a peer may send past its budget (a count that halves every [`OVERDRAFT_HALF_LIFE`]) before it
/// is disconnected and banned for [`BAN_FOR`]: gossipsub checks every message's signature before we see it, so a
/// peer that keeps sending what we ignore costs CPU anyway. An honest relay forwards only what it accepted, within
/// our budget for it; a flooder sending thousands a second passes this within seconds.
const MAX_OVERDRAFT: f64 = 50_000.0;
const OVERDRAFT_HALF_LIFE: Duration = Duration::from_secs(10);
/// Invalid adverts (undecodable, badly signed, past the last seq) a peer may gossip before it is banned: an honest
/// node sends none, but one of a newer version might send an advert we cannot read.
const MAX_REJECTS: u32 = 3;
/// How long a flooder stays banned.
pub const BAN_FOR: Duration = Duration::from_secs(600);
/// Banned peers remembered, at most.
const MAX_BANNED: usize = 1024;
/// How often a node compares a summary of its table with a random peer's (jittered by a fifth either way), and
/// syncs the ranges that differ: a gossip message lost (a full queue, a connection closed under it) is made good
/// within about this long, not at the sender's next refresh minutes later.
const ANTI_ENTROPY: Duration = Duration::from_secs(10);
/// Differing ranges synced per anti-entropy round, at most: the rest wait for the next round, so that a peer
/// claiming that everything differs gets a few pages, within its budget.
const MAX_SUMMARY_RANGES: usize = 4;
/// A peer's summaries are answered at most this often: each costs a pass over the table.
const SUMMARY_GAP: Duration = Duration::from_secs(2);
/// A token bucket in bytes.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Bucket {
        Bucket { tokens: burst, rate, burst }
    }

    fn refill(&mut self, dt: f64) {
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    fn charge(&mut self, bytes: usize) {
        self.tokens -= bytes.max(ADVERT_MIN_COST) as f64;
    }

    /// How long until something may be spent again.
    fn wait(&self) -> Duration {
        Duration::from_secs_f64((-self.tokens).max(0.0) / self.rate)
    }
}

/// A peer's budget of adverts to verify. Adverts past it are ignored (gossip: not forwarded either) and the next
/// sync page waits until it refills, so one peer minting keys costs us a bounded share of CPU however fast it
/// sends, and honest peers' adverts keep flowing beside it.
struct Budget {
    relayed: Bucket,
    own: Bucket,
    /// Gossip messages ignored past the budget, decaying (see [`MAX_OVERDRAFT`]).
    overdraft: f64,
    /// Invalid adverts it gossiped (see [`MAX_REJECTS`]).
    rejects: u32,
    /// When we last answered its summary (see [`SUMMARY_GAP`]).
    summary_at: Option<Instant>,
    at: Instant,
}

impl Budget {
    fn new(now: Instant) -> Budget {
        Budget {
            relayed: Bucket::new(RELAY_RATE, RELAY_BURST),
            own: Bucket::new(OWN_RATE, OWN_BURST),
            overdraft: 0.0,
            rejects: 0,
            summary_at: None,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.relayed.refill(dt);
        self.own.refill(dt);
        self.overdraft *= 0.5f64.powf(dt / OVERDRAFT_HALF_LIFE.as_secs_f64());
        self.at = now;
    }

    /// The bucket an advert draws from (the peer's own adverts, or those it relays), if it has anything left now.
    fn bucket(&mut self, own: bool, now: Instant) -> Option<&mut Bucket> {
        self.refill(now);
        let b = if own { &mut self.own } else { &mut self.relayed };
        (b.tokens > 0.0).then_some(b)
    }

    fn is_idle(&self) -> bool {
        // Its rejects go with it: a peer that left after one or two is forgotten, not remembered for ever.
        self.relayed.tokens >= self.relayed.burst && self.own.tokens >= self.own.burst && self.overdraft < 1.0
    }
}

/// A `--peer` address (or one remembered from an earlier run) and the state of dialing it.
struct Bootstrap {
    addr: Multiaddr,
    /// The peer it turned out to be, once a dial succeeded.
    peer: Option<PeerId>,
    /// When to dial it next; `None` while connected, dialing, or given up.
    next: Option<Instant>,
    /// Delay before the next retry; `Duration::MAX` for a remembered address, which is tried once.
    backoff: Duration,
    /// The dial in progress.
    dialing: Option<ConnectionId>,
}

/// Peers denied for a wrong mesh key, bounded: a stranger minting keys cannot grow it without limit.
#[derive(Default)]
struct Denied {
    set: HashSet<PeerId>,
    order: std::collections::VecDeque<PeerId>,
}

impl Denied {
    fn insert(&mut self, p: PeerId) {
        if self.set.insert(p) {
            self.order.push_back(p);
            if self.order.len() > MAX_DENIED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, p: &PeerId) -> bool {
        self.set.contains(p)
    }
}

/// Addresses peers announced by mDNS, until the announcement expires, for redials: libp2p reports an address once
/// per record lifetime (minutes), so a first dial that fails is retried from here. Bounded: a LAN stranger
/// announcing any number of peers or addresses holds [`MAX_LAN_PEERS`] entries of [`MAX_LAN_ADDRS`] at most.
#[derive(Default)]
struct Lan(HashMap<PeerId, Vec<Multiaddr>>);

impl Lan {
    /// Keeps what `p` announced (within the bounds); returns whether `p` is kept.
    fn remember(&mut self, p: PeerId, addrs: &[Multiaddr]) -> bool {
        if self.0.len() >= MAX_LAN_PEERS && !self.0.contains_key(&p) {
            return false;
        }
        let known = self.0.entry(p).or_default();
        for a in addrs {
            if !known.contains(a) && known.len() < MAX_LAN_ADDRS {
                known.push(a.clone());
            }
        }
        true
    }

    /// Forgets an announcement that expired.
    fn expire(&mut self, p: &PeerId, a: &Multiaddr) {
        if let Some(known) = self.0.get_mut(p) {
            known.retain(|k| k != a);
            if known.is_empty() {
                self.0.remove(p);
            }
        }
    }

    fn addrs(&self, p: &PeerId) -> &[Multiaddr] {
        self.0.get(p).map(Vec::as_slice).unwrap_or_default()
    }
}

/// The state the mesh task owns.
pub(super) struct Driver {
    swarm: Swarm<Behaviour>,
    core: Core,
    /// The gossip topic adverts are published on.
    topic: gossipsub::IdentTopic,
    /// Time zero of the core's clock.
    start: Instant,
    /// Key of the admission proofs, from the mesh key.
    secret: [u8; 32],
    me: NodeKey,
    bootstrap: Vec<Bootstrap>,
    /// Resources this node adverts.
    resources: Vec<ResourceInfo>,
    /// Token ids this node revoked, adverted for everyone's information.
    revoked: Vec<TokenId>,
    /// Addresses the swarm listens on.
    listen: Vec<Multiaddr>,
    /// The listen addresses changed since the local advert was last published.
    addrs_dirty: bool,
    /// How each peer was found.
    via: HashMap<PeerId, Via>,
    /// Peers that proved they know the mesh key.
    admitted: HashSet<PeerId>,
    /// Peers that failed admission: disconnected and never dialed again (the newest [`MAX_DENIED`]).
    denied: Denied,
    /// `connect` callers waiting for a dial to each peer.
    waiting: HashMap<PeerId, Vec<oneshot::Sender<Result<(), Error>>>>,
    /// Application requests sent, waiting for their answers.
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, Error>>>,
    /// Application requests received, waiting for [`super::Handle::reply`].
    inbound: HashMap<u64, ResponseChannel<Response>>,
    next_inbound: u64,
    /// Events for the node.
    events: mpsc::Sender<Event>,
    /// Connections up to each peer, whether we dialed them, and the remote address.
    conns: HashMap<PeerId, Vec<(ConnectionId, bool, Multiaddr)>>,
    /// What this node adverts of its overlay tunnel.
    tunnel: Option<String>,
    /// Peers whose connections all went down, or announced by mDNS and not yet reached: when to redial next, and
    /// the backoff.
    redial: HashMap<PeerId, (Instant, Duration)>,
    /// Addresses peers announced by mDNS, for redials.
    lan: Lan,
    /// QUIC addresses to dial once the TCP dial in progress to each peer fails ([`Driver::dial_peer`]).
    quic_fallback: HashMap<PeerId, Vec<Multiaddr>>,
    /// Sync requests in flight, and the range of each page.
    syncs: HashMap<OutboundRequestId, (PeerId, Option<KeyRange>)>,
    /// Each peer's budget of adverts to verify.
    budgets: HashMap<PeerId, Budget>,
    /// Sync pages to ask for once their peer's budget allows.
    deferred: Vec<(Instant, PeerId, KeyRange)>,
    /// Flooders, disconnected and refused until the time given.
    banned: HashMap<PeerId, Instant>,
    /// Bumped whenever what a snapshot shows of other nodes changes (see [`Snapshot::version`]).
    version: u64,
    /// When each connected peer's first connection came up: a peer not admitted within [`ADMIT_WITHIN`] of it is
    /// disconnected.
    connected_at: HashMap<PeerId, Instant>,
    /// Peers owed a sync with our digest once they are admitted (until then they got the proof alone).
    want_sync: HashSet<PeerId>,
    /// Summaries in flight, and the bits of each.
    summaries: HashMap<OutboundRequestId, (PeerId, u8)>,
    /// When to send the next summary.
    next_summary: Instant,
}

/// How long a connected peer has to prove the mesh key before it is disconnected. A member does so in its first
/// round trip; a stranger that never answers must not stay connected, receiving what members get.
pub const ADMIT_WITHIN: Duration = Duration::from_secs(5);

impl Driver {
    /// A driver for `swarm`, publishing adverts on `topic` and sending events to `events`.
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        topic: gossipsub::IdentTopic,
        config: Config,
        events: mpsc::Sender<Event>,
    ) -> Driver {
        let me = config.identity.public();
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let start = Instant::now();
        let core = Core::new(config.identity, config.core, seq, 0);
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
        Driver {
            swarm,
            core,
            topic,
            start,
            secret: mesh_secret(config.mesh_key.as_deref()),
            me,
            bootstrap,
            resources: vec![],
            revoked: vec![],
            listen: vec![],
            addrs_dirty: false,
            via: HashMap::new(),
            admitted: HashSet::new(),
            denied: Denied::default(),
            waiting: HashMap::new(),
            pending: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 0,
            events,
            conns: HashMap::new(),
            tunnel: config.tunnel,
            redial: HashMap::new(),
            lan: Lan::default(),
            quic_fallback: HashMap::new(),
            syncs: HashMap::new(),
            budgets: HashMap::new(),
            deferred: vec![],
            banned: HashMap::new(),
            version: 1,
            connected_at: HashMap::new(),
            want_sync: HashSet::new(),
            summaries: HashMap::new(),
            next_summary: start + jittered(ANTI_ENTROPY),
        }
    }

    fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>, cancel: CancellationToken) {
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
        // Callers waiting on a command hear "stopped" now, not once the swarm has been dropped (which closes every
        // connection and may take a while): a node's shutdown asks the mesh for its peers as the mesh stops.
        drop(commands);
        tracing::debug!("mesh task stopped");
    }

    fn on_tick(&mut self) {
        let now = self.now();
        if self.addrs_dirty {
            self.addrs_dirty = false;
            self.publish_local();
        }
        self.core.handle_tick(now);
        self.expel_unadmitted();
        self.redial_lost();
        self.resume_deferred();
        let t = Instant::now();
        let swarm = &self.swarm;
        self.budgets.retain(|p, b| {
            b.refill(t);
            swarm.is_connected(p) || !b.is_idle()
        });
        self.banned.retain(|_, until| *until > t);
        self.swarm.behaviour_mut().gate.prune(t);
        if t >= self.next_summary {
            self.next_summary = t + jittered(ANTI_ENTROPY);
            self.send_summary();
        }
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
            let opts = DialOpts::unknown_peer_id().address(b.addr.clone()).allocate_new_port().build();
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
        self.core.set_local(addrs, self.tunnel.clone(), self.resources.clone(), self.revoked.clone(), now);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetLocal(r, revoked) => {
                self.resources = r;
                self.revoked = revoked;
                self.publish_local();
            }
            Command::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
            }
            Command::SnapshotSince(v, tx) => {
                let _ = tx.send((v != self.version).then(|| self.snapshot()));
            }
            Command::Connect(node, tx) => self.connect(node, tx),
            Command::Connected(peer, tx) => {
                let _ = tx.send(self.swarm.is_connected(&peer));
            }
            Command::RemoteIp(peer, tx) => {
                let _ = tx.send(self.conns.get(&peer).and_then(|c| c.first()).and_then(|c| ip_of(&c.2)));
            }
            Command::Admitted(peer, tx) => {
                let _ = tx.send(self.admitted.contains(&peer) && self.swarm.is_connected(&peer));
            }
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
            if let Err(e) = self.dial_peer(peer, addrs) {
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
                    revoked: e.advert.advert().revoked.clone(),
                    tunnel: e.advert.advert().tunnel.clone(),
                    remote_ip: peer_id(k)
                        .and_then(|p| self.conns.get(&p))
                        .and_then(|c| c.first())
                        .and_then(|c| ip_of(&c.2)),
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
            version: self.version,
        }
    }

    /// Connected members that gossip does not know as subscribed to the adverts (a subscription can be lost
    /// when duplicate connections are closed) would miss what was just published: they get our digest instead,
    /// and pull what is newer (see `Core::handle_sync_request`).
    fn sync_unsubscribed(&mut self) {
        let hash = self.topic.hash();
        let gossip = &self.swarm.behaviour().gossip;
        let subscribed: HashSet<PeerId> =
            gossip.all_peers().filter(|(_, topics)| topics.contains(&&hash)).map(|(p, _)| *p).collect();
        let missing: Vec<PeerId> =
            self.admitted.iter().filter(|p| !subscribed.contains(p) && self.swarm.is_connected(p)).copied().collect();
        if missing.is_empty() {
            return;
        }
        let digest = self.core.digest();
        for p in missing {
            tracing::debug!(peer = %p, "gossip does not reach this peer: sending a sync");
            self.send_sync(p, digest.clone());
        }
    }

    /// Sends a sync. To a peer not yet admitted it carries our proof alone (an empty digest: every real digest
    /// names at least its sender), so that nothing of the mesh reaches a peer before it has proven the mesh key;
    /// the digest follows once it has. A digest goes in pages of [`PAGE_ENTRIES`] nodes, each for the range of
    /// keys it covers, so that no frame passes [`super::MAX_RPC_BYTES`] at any mesh size.
    fn send_sync(&mut self, p: PeerId, digest: Vec<(NodeKey, u64)>) {
        let proof = admission_proof(&self.secret, self.swarm.local_peer_id(), &p);
        if !self.admitted.contains(&p) {
            self.want_sync.insert(p);
            let id = self.swarm.behaviour_mut().rpc.send_request(&p, Request::Sync { proof, digest: vec![] });
            self.syncs.insert(id, (p, None));
            return;
        }
        let starts: Vec<NodeKey> = digest.chunks(PAGE_ENTRIES).skip(1).map(|c| c[0].0).collect();
        let mut start = KeyRange::ALL.start;
        for (i, page) in digest.chunks(PAGE_ENTRIES).enumerate() {
            let range = KeyRange { start, end: starts.get(i).copied() };
            self.send_page(p, range, page.to_vec());
            start = range.end.unwrap_or(start);
        }
    }

    fn send_page(&mut self, p: PeerId, range: KeyRange, digest: Vec<(NodeKey, u64)>) {
        let proof = admission_proof(&self.secret, self.swarm.local_peer_id(), &p);
        let id = self.swarm.behaviour_mut().rpc.send_request(&p, Request::SyncPage { proof, range, digest });
        self.syncs.insert(id, (p, Some(range)));
    }

    /// One anti-entropy round: a summary of our table to a random admitted peer, whose answer names the ranges to
    /// sync (see [`ANTI_ENTROPY`]).
    fn send_summary(&mut self) {
        let peers: Vec<PeerId> = self.admitted.iter().filter(|p| self.swarm.is_connected(p)).copied().collect();
        if peers.is_empty() {
            return;
        }
        let p = peers[(random_u64() % peers.len() as u64) as usize];
        let bits = self.core.summary_bits();
        let hashes = self.core.summary(bits);
        let proof = admission_proof(&self.secret, self.swarm.local_peer_id(), &p);
        let id = self.swarm.behaviour_mut().rpc.send_request(&p, Request::Summary { proof, bits, hashes });
        self.summaries.insert(id, (p, bits));
    }

    /// Asks `p` for the rest of `range` now, or once its budget allows.
    fn continue_sync(&mut self, p: PeerId, range: KeyRange) {
        let now = Instant::now();
        let budget = self.budgets.entry(p).or_insert_with(|| Budget::new(now));
        let wait = match budget.bucket(false, now) {
            Some(_) => None,
            None => Some(budget.relayed.wait()),
        };
        match wait {
            None => {
                let digest = self.core.digest_range(&range);
                self.send_page(p, range, digest);
            }
            Some(w)
                if self.deferred.len() < MAX_DEFERRED && !self.deferred.iter().any(|d| d.1 == p && d.2 == range) =>
            {
                self.deferred.push((now + w, p, range));
            }
            Some(_) => {}
        }
    }

    /// Asks for the sync pages whose wait is over, of peers still connected.
    fn resume_deferred(&mut self) {
        let now = Instant::now();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred).into_iter().partition(|d| d.0 <= now);
        self.deferred = wait;
        for (_, p, range) in due {
            if self.admitted.contains(&p) && self.swarm.is_connected(&p) {
                self.continue_sync(p, range);
            }
        }
    }

    /// Hands `from`'s adverts to the core while its budget lasts. Returns the key of the first advert left out.
    fn take_adverts(&mut self, from: PeerId, adverts: Vec<Signed>, now: Millis) -> Option<NodeKey> {
        let node = node_key(&from)?;
        let t = Instant::now();
        let budget = self.budgets.entry(from).or_insert_with(|| Budget::new(t));
        for a in adverts {
            let Some(bucket) = budget.bucket(a.node() == node, t) else { return Some(a.node()) };
            let len = a.wire_len();
            if self.core.handle_gossip(a, node, now) != Outcome::Stale {
                bucket.charge(len);
            }
        }
        None
    }

    /// `peer` proved the mesh key: from now on it is served, and gets the sync it is owed.
    fn admit(&mut self, peer: PeerId) {
        self.admitted.insert(peer);
        if self.want_sync.remove(&peer) {
            let digest = self.core.digest();
            self.send_sync(peer, digest);
        }
    }

    /// Disconnects peers connected for [`ADMIT_WITHIN`] without proving the mesh key.
    fn expel_unadmitted(&mut self) {
        let late: Vec<PeerId> = self
            .connected_at
            .iter()
            .filter(|(p, t)| !self.admitted.contains(p) && t.elapsed() >= ADMIT_WITHIN)
            .map(|(p, _)| *p)
            .collect();
        for p in late {
            tracing::info!(peer = %p, "disconnecting a peer that did not prove the mesh key within {ADMIT_WITHIN:?}");
            self.connected_at.remove(&p);
            let _ = self.swarm.disconnect_peer_id(p);
        }
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

    /// Dials `p` at its TCP addresses, keeping its QUIC addresses for when that fails (or at its QUIC addresses
    /// alone when it has no other). Left to the swarm, a QUIC dial queued behind a TCP one timed out unanswered as
    /// soon as the TCP dial gave up, so a LAN that drops TCP was never reached over QUIC.
    fn dial_peer(&mut self, p: PeerId, addrs: Vec<Multiaddr>) -> Result<(), libp2p::swarm::DialError> {
        let (tcp, quic) = split_quic(addrs);
        let tcp_first = !tcp.is_empty();
        let first = if tcp.is_empty() {
            quic
        } else {
            if !quic.is_empty()
                && (self.quic_fallback.len() < MAX_PENDING_FALLBACKS || self.quic_fallback.contains_key(&p))
            {
                self.quic_fallback.insert(p, quic);
            }
            tcp
        };
        let opts = DialOpts::peer_id(p).addresses(first);
        // TCP from a port of its own: with the listening port reused, two nodes that dial each other at once (as
        // mDNS makes them) open one TCP connection by simultaneous open, both ends start the handshake as its
        // initiator, it fails, and the peers meet over QUIC instead.
        let opts = if tcp_first { opts.allocate_new_port() } else { opts };
        let r = self.swarm.dial(opts.build());
        if matches!(&r, Err(e) if !matches!(e, libp2p::swarm::DialError::DialPeerConditionFalse(_))) {
            self.quic_fallback.remove(&p);
        }
        r
    }

    /// Dials known nodes whose connections all went down, with backoff, while their advert is still in the
    /// table: a partition that heals reconnects without waiting for mDNS or a bootstrap retry.
    fn redial_lost(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self.redial.iter().filter(|(_, (at, _))| *at <= now).map(|(p, _)| *p).collect();
        for p in due {
            let mut addrs: Vec<Multiaddr> = node_key(&p)
                .and_then(|k| self.core.entry(&k))
                .map(|e| {
                    e.advert
                        .advert()
                        .addrs
                        .iter()
                        .filter_map(|a| a.parse::<Multiaddr>().ok())
                        .filter(is_dialable)
                        .collect()
                })
                .unwrap_or_default();
            for a in self.lan.addrs(&p) {
                if !addrs.contains(a) {
                    addrs.push(a.clone());
                }
            }
            match addrs {
                addrs if !addrs.is_empty() && !self.swarm.is_connected(&p) && !self.is_refused(&p) => {
                    let dialed = self.dial_peer(p, addrs);
                    let entry = self.redial.get_mut(&p).expect("due entry");
                    // A dial still in progress (a slow handshake) is not a failure: wait as long again for it.
                    if !matches!(dialed, Err(libp2p::swarm::DialError::DialPeerConditionFalse(_))) {
                        tracing::debug!(%p, "redialing a lost or unreached peer");
                        entry.1 = (entry.1 * 2).min(Duration::from_secs(60));
                    }
                    entry.0 = now + entry.1;
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
                    self.sync_unsubscribed();
                }
                Action::Event(core::Event::Updated { node, addrs }) => {
                    self.version += 1;
                    let Some(p) = peer_id(&node) else { continue };
                    // The budget counts the peers learned by gossip that are connected now: a count of every one
                    // ever dialed would stop all dialing after the first 64.
                    let gossip_dials =
                        self.via.iter().filter(|(q, v)| **v == Via::Gossip && self.swarm.is_connected(q)).count();
                    if !self.swarm.is_connected(&p) && !self.is_refused(&p) && gossip_dials < MAX_GOSSIP_DIALS {
                        let addrs: Vec<Multiaddr> =
                            addrs.iter().filter_map(|a| a.parse().ok()).filter(is_dialable).collect();
                        if !addrs.is_empty() {
                            self.via.entry(p).or_insert(Via::Gossip);
                            let _ = self.dial_peer(p, addrs);
                        }
                    }
                }
                Action::Event(core::Event::Expired { node }) => {
                    self.version += 1;
                    tracing::info!(%node, "node expired after the grace period");
                    if let Some(p) = peer_id(&node) {
                        self.via.remove(&p);
                        self.redial.remove(&p);
                    }
                }
            }
        }
    }

    /// Disconnects a peer that keeps flooding past its budget, and refuses it for [`BAN_FOR`].
    fn ban(&mut self, peer: PeerId) {
        tracing::warn!(%peer, "banning a peer for {BAN_FOR:?}: it keeps sending adverts far past its budget");
        if self.banned.len() >= MAX_BANNED {
            if let Some(oldest) = self.banned.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
                self.banned.remove(&oldest);
            }
        }
        let until = Instant::now() + BAN_FOR;
        self.banned.insert(peer, until);
        // Its address too (but never loopback: the nodes of one host would shut each other out).
        let ips: Vec<_> = self.conns.get(&peer).into_iter().flatten().filter_map(|c| ip_of(&c.2)).collect();
        for ip in ips {
            self.swarm.behaviour_mut().gate.ban(ip, until);
        }
        self.budgets.remove(&peer);
        self.admitted.remove(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn is_refused(&self, peer: &PeerId) -> bool {
        self.denied.contains(peer) || self.banned.contains_key(peer)
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
                if self.is_refused(&peer) {
                    tracing::debug!(%peer, "closing a connection from a banned or denied peer");
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
                self.quic_fallback.remove(&peer);
                let remote = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                self.conns.entry(peer).or_default().push((connection_id, endpoint.is_dialer(), remote));
                self.version += 1;
                self.connected_at.entry(peer).or_insert_with(Instant::now);
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
                self.version += 1;
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
                    self.connected_at.remove(&peer);
                    self.want_sync.remove(&peer);
                    if !self.is_refused(&peer) {
                        self.redial.insert(peer, (Instant::now() + Duration::from_secs(1), Duration::from_secs(1)));
                    }
                    for i in 0..self.bootstrap.len() {
                        if self.bootstrap[i].peer == Some(peer) && !self.is_refused(&peer) {
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
                    if let Some(quic) = self.quic_fallback.remove(&p) {
                        if !self.swarm.is_connected(&p) && !self.is_refused(&p) {
                            tracing::debug!(%p, "TCP did not get through ({error}): dialing QUIC");
                            if self.swarm.dial(DialOpts::peer_id(p).addresses(quic).build()).is_ok() {
                                return;
                            }
                        }
                    }
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
                    if !is_routable(&a) {
                        tracing::trace!(%p, %a, "mDNS announced an address not dialed (link-local, loopback or overlay)");
                    } else if !self.is_refused(&p) {
                        by_peer.entry(p).or_default().push(a);
                    }
                }
                // A LAN can announce any number of peers: dial a bounded number per announcement, and keep the
                // addresses of a bounded number for redials.
                for (p, addrs) in by_peer.into_iter().take(MAX_MDNS_DIALS) {
                    let kept = self.lan.remember(p, &addrs);
                    if !self.swarm.is_connected(&p) {
                        tracing::debug!(%p, ?addrs, "discovered by mDNS");
                        self.via.insert(p, Via::Mdns);
                        if kept {
                            let retry = Duration::from_secs(1);
                            self.redial.entry(p).or_insert((Instant::now() + retry, retry));
                        }
                        let _ = self.dial_peer(p, addrs);
                    }
                }
            }
            BehaviourEvent::Mdns4(mdns::Event::Expired(list)) | BehaviourEvent::Mdns6(mdns::Event::Expired(list)) => {
                for (p, a) in list {
                    self.lan.expire(&p, &a);
                }
            }
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) }) => {
                tracing::debug!(%peer, "ping failed, closing the connection: {e}");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Gossip(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let verdict = self.judge_gossip(propagation_source, message.source, &message.data, now);
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
                // A lost summary waits for the next round (a node of an earlier version cannot read one).
                self.summaries.remove(&request_id);
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

    /// Decides what becomes of an advert gossiped by `from`: accepted (and forwarded) if new, ignored if old, past
    /// `from`'s budget or without room, rejected (which lowers `from`'s gossip score) if it is not a valid advert or
    /// was not published by its own node (`author`): nodes gossip only their own adverts, so one publishing others'
    /// is minting keys to flood. A peer whose score falls below the graylist threshold is banned.
    fn judge_gossip(
        &mut self,
        from: PeerId,
        author: Option<PeerId>,
        data: &[u8],
        now: Millis,
    ) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore};
        let Some(source) = node_key(&from).filter(|_| self.admitted.contains(&from)) else { return Ignore };
        let signed = match Signed::decode(data) {
            Ok(s) if author.is_some() && author == peer_id(&s.node()) => s,
            Ok(s) => {
                // No honest node publishes another's advert: this is a peer minting keys to flood. Cut it at once,
                // before gossipsub's graylist hides its next messages from us.
                tracing::debug!(node = %s.node(), ?author, "advert gossiped by another node than its own, from {from}");
                self.ban(from);
                return gossipsub::MessageAcceptance::Reject;
            }
            Err(e) => {
                tracing::debug!("bad advert from {from}: {e}");
                return self.reject(from);
            }
        };
        let t = Instant::now();
        let budget = self.budgets.entry(from).or_insert_with(|| Budget::new(t));
        let Some(bucket) = budget.bucket(signed.node() == source, t) else {
            budget.overdraft += 1.0;
            if budget.overdraft > MAX_OVERDRAFT {
                self.ban(from);
            }
            return Ignore;
        };
        let len = signed.wire_len();
        match self.core.handle_gossip(signed, source, now) {
            Outcome::New => {
                bucket.charge(len);
                Accept
            }
            Outcome::Stale => Ignore,
            Outcome::Full => {
                bucket.charge(len);
                Ignore
            }
            Outcome::Refused => {
                bucket.charge(len);
                self.reject(from)
            }
        }
    }

    /// Rejects a gossip message of `from` (which lowers its gossip score), and bans `from` at its
    /// [`MAX_REJECTS`]th such message (counted here: once gossipsub graylists a peer we no longer see its messages).
    fn reject(&mut self, from: PeerId) -> gossipsub::MessageAcceptance {
        let t = Instant::now();
        let budget = self.budgets.entry(from).or_insert_with(|| Budget::new(t));
        budget.rejects += 1;
        if budget.rejects >= MAX_REJECTS {
            self.ban(from);
        }
        gossipsub::MessageAcceptance::Reject
    }

    /// Checks the admission proof of a peer's answer; denies the peer when it is wrong.
    fn check_proof(&mut self, peer: PeerId, proof: &[u8; 32]) -> bool {
        if proof_matches(proof, &admission_proof(&self.secret, &peer, self.swarm.local_peer_id())) {
            self.admit(peer);
            return true;
        }
        self.deny(peer, "its sync answer does not prove our mesh key");
        false
    }

    /// Checks the admission proof of a peer's request: hands the channel back to answer it, or answers that the
    /// peer is not a member and denies it.
    fn check_request_proof(
        &mut self,
        peer: PeerId,
        proof: &[u8; 32],
        channel: ResponseChannel<Response>,
    ) -> Option<ResponseChannel<Response>> {
        if proof_matches(proof, &admission_proof(&self.secret, &peer, self.swarm.local_peer_id())) {
            self.admit(peer);
            return Some(channel);
        }
        let why = "not a member of this mesh (mesh key differs)".to_string();
        let _ = self.swarm.behaviour_mut().rpc.send_response(channel, Response::Denied(why));
        self.deny(peer, "its mesh key differs from ours");
        None
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>, now: Millis) {
        let Some(node) = node_key(&peer) else { return };
        match request {
            Request::Sync { proof, digest } => {
                let Some(channel) = self.check_request_proof(peer, &proof, channel) else { return };
                // An empty digest is a proof alone (see `send_sync`): answered with our proof alone. A whole digest
                // (a node of an earlier version) gets the first page.
                let adverts = if digest.is_empty() {
                    vec![]
                } else {
                    self.core.handle_sync_range(node, &KeyRange::ALL, &digest, PAGE_BYTES, now).0
                };
                let proof = admission_proof(&self.secret, self.swarm.local_peer_id(), &peer);
                let _ = self.swarm.behaviour_mut().rpc.send_response(channel, Response::Sync { proof, adverts });
            }
            Request::SyncPage { proof, range, digest } => {
                let Some(channel) = self.check_request_proof(peer, &proof, channel) else { return };
                let (adverts, next) = self.core.handle_sync_range(node, &range, &digest, PAGE_BYTES, now);
                let proof = admission_proof(&self.secret, self.swarm.local_peer_id(), &peer);
                let _ =
                    self.swarm.behaviour_mut().rpc.send_response(channel, Response::SyncPage { proof, adverts, next });
            }
            Request::Summary { proof, bits, hashes } => {
                let Some(channel) = self.check_request_proof(peer, &proof, channel) else { return };
                let t = Instant::now();
                let budget = self.budgets.entry(peer).or_insert_with(|| Budget::new(t));
                let response = if bits > MAX_SUMMARY_BITS || hashes.len() != 1 << bits {
                    Response::Denied(format!("a summary of {} hashes for {bits} bits", hashes.len()))
                } else if budget.summary_at.is_some_and(|at| t.duration_since(at) < SUMMARY_GAP) {
                    Response::Denied(format!("summaries more often than every {SUMMARY_GAP:?}"))
                } else {
                    budget.summary_at = Some(t);
                    let ours = self.core.summary(bits);
                    let differ = (0..ours.len()).filter(|&i| ours[i] != hashes[i]).map(|i| i as u16).collect();
                    Response::Summary {
                        proof: admission_proof(&self.secret, self.swarm.local_peer_id(), &peer),
                        differ,
                    }
                };
                let _ = self.swarm.behaviour_mut().rpc.send_response(channel, response);
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
        if let Some((_, bits)) = self.summaries.remove(&id) {
            return self.on_summary(peer, bits, response);
        }
        match response {
            Response::Sync { proof, adverts } => {
                self.syncs.remove(&id);
                if self.check_proof(peer, &proof) {
                    self.take_adverts(peer, adverts, now);
                }
            }
            Response::SyncPage { proof, adverts, next } => {
                let range = self.syncs.remove(&id).and_then(|s| s.1);
                if !self.check_proof(peer, &proof) {
                    return;
                }
                // A page must stay in the range asked for, and go on past its start: anything else is a peer
                // trying to keep us paging forever.
                let Some(range) = range else { return };
                let next = next.filter(|k| range.contains(k) && *k > range.start);
                let adverts: Vec<Signed> = adverts.into_iter().filter(|a| range.contains(&a.node())).collect();
                let left = self.take_adverts(peer, adverts, now);
                if let Some(start) = left.or(next) {
                    self.continue_sync(peer, KeyRange { start, end: range.end });
                }
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
            Response::Summary { .. } => {}
        }
    }

    /// The answer to our summary: sync a few of the ranges that differ, chosen at random (the rest next round).
    fn on_summary(&mut self, peer: PeerId, bits: u8, response: Response) {
        let differ = match response {
            Response::Summary { proof, differ } => {
                if !self.check_proof(peer, &proof) {
                    return;
                }
                differ
            }
            Response::Denied(why) => {
                tracing::debug!(%peer, "summary not answered: {why}");
                return;
            }
            _ => {
                tracing::debug!(%peer, "a summary answered with something else");
                return;
            }
        };
        let n = 1usize << bits;
        let mut differ: Vec<usize> = differ.into_iter().map(usize::from).filter(|&i| i < n).collect();
        differ.sort_unstable();
        differ.dedup();
        if differ.is_empty() {
            return;
        }
        tracing::debug!(%peer, ranges = differ.len(), "anti-entropy: our tables differ");
        let from = (random_u64() % differ.len() as u64) as usize;
        differ.rotate_left(from);
        for i in differ.into_iter().take(MAX_SUMMARY_RANGES) {
            self.continue_sync(peer, KeyRange::bucket(bits, i));
        }
    }
}

/// A random number (for choices that only need to differ between nodes and rounds).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failing system RNG leaves zeros: the first peer and no jitter, still correct.
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// `d` give or take a fifth, at random, so that nodes started together do not act in step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * (random_u64() >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack (issue 10, finding 8): `denied` grew by one entry per key a stranger minted.
    #[test]
    fn the_denied_set_is_bounded_and_forgets_the_oldest() {
        let mut d = Denied::default();
        let first = PeerId::random();
        d.insert(first);
        for _ in 0..MAX_DENIED {
            d.insert(PeerId::random());
        }
        assert_eq!((d.set.len(), d.order.len()), (MAX_DENIED, MAX_DENIED));
        assert!(!d.contains(&first));
        let last = *d.order.back().unwrap();
        d.insert(last);
        assert_eq!(d.order.len(), MAX_DENIED, "a repeat does not take a second place");
    }

    /// Attack: a LAN stranger answers mDNS for any number of made-up peers, each with any number of addresses.
    /// What is kept for redials stays bounded; a peer already kept still gets its new addresses (within the bound),
    /// and an expired announcement frees its place.
    #[test]
    fn what_a_lan_announces_is_kept_within_bounds() {
        let addr =
            |i: usize| -> Multiaddr { format!("/ip6/fd00:77::{:x}/tcp/{}", i % 0xffff, 1000 + i).parse().unwrap() };
        let mut lan = Lan::default();
        let honest = PeerId::random();
        assert!(lan.remember(honest, &[addr(1)]));
        let many: Vec<Multiaddr> = (0..100).map(addr).collect();
        let kept = (0..1000).filter(|_| lan.remember(PeerId::random(), &many)).count();
        assert_eq!(kept, MAX_LAN_PEERS - 1, "the stranger fills what is left, no more");
        assert_eq!(lan.0.len(), MAX_LAN_PEERS);
        assert!(lan.0.values().all(|a| a.len() <= MAX_LAN_ADDRS));
        assert!(lan.remember(honest, &[addr(2), addr(1)]), "a kept peer stays kept");
        assert_eq!(lan.addrs(&honest), [addr(1), addr(2)]);
        for a in [addr(1), addr(2)] {
            lan.expire(&honest, &a);
        }
        assert!(lan.addrs(&honest).is_empty());
        assert!(lan.remember(PeerId::random(), &[addr(3)]), "the expired peer's place is free again");
    }
}
