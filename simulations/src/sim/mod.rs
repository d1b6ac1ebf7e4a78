//! The discrete-event simulator: N instances of the real [`metac_mesh::core::Core`] on a virtual clock, with the
//! network layer the node's libp2p driver provides modelled around them: a connection graph with per-link latency,
//! loss and partitions, a gossipsub-like pubsub (see [`gossip`]), sync on connect, redials with backoff, crashes,
//! graceful leaves and restarts.
//!
//! Determinism: one seeded ChaCha RNG drives every random choice, events are ordered by (time, sequence number),
//! and nothing iterates a hash map where order matters. The same [`Params`] give the same [`Outcome`].
//!
//! Two modes (DESIGN section 9): `full` starts every node with only its own advert and runs the whole anti-entropy
//! from empty tables, which costs O(N^2) memory and signature checks; `steady` starts from a converged mesh whose
//! content (every node's first advert, the "base") is shared by all nodes instead of copied into each table, and
//! simulates what changes: new adverts spreading, syncs after reconnects, restarts. The cores' tables then hold only
//! what changed during the run, and traffic counts the shared part by its size.

mod conn;
mod gossip;
mod scenario;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use metac_mesh::advert::Signed;
use metac_mesh::core::{self, Action, Core};
use metac_mesh::{Identity, NodeKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{Crash, Latency, LossModel, Micros, Partition, MS, SEC};

/// Largest number of nodes a run accepts.
pub const MAX_NODES: usize = 1_000_000;
/// Most nodes `--mode full` accepts: about 19 GiB of tables.
pub const FULL_MAX: usize = 5_000;
/// At or below this many nodes, `--mode auto` runs `full`; above it, `steady`.
pub const FULL_AUTO_MAX: usize = 500;

/// How the run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `full` up to 500 nodes, `steady` above.
    #[default]
    Auto,
    /// Every node starts with only its own advert: full anti-entropy from empty tables (O(N^2) memory).
    Full,
    /// The mesh starts converged, its content shared between nodes; the run simulates what changes.
    Steady,
}

/// Everything a run depends on. The same params give byte-identical outputs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Probability that one transmission is lost, 0..1.
    pub loss: f64,
    /// What a loss does.
    pub loss_model: LossModel,
    /// One-way latency of each connection, sampled when it is made.
    pub latency: Latency,
    /// Churn: the fraction of the nodes that go down per minute (half crash, half leave gracefully); each comes
    /// back after 10-60 s with a fresh core, as a restarted process.
    pub churn: f64,
    /// A partition that forms and heals.
    pub partition: Option<Partition>,
    /// Nodes that crash for good.
    pub crash: Option<Crash>,
    /// Peers each node dials at start (its bootstrap peers); connections are undirected, so the mean degree is
    /// about twice this.
    pub degree: usize,
    /// Full or steady start.
    pub mode: Mode,
    /// When the tracked new advert is published.
    pub publish_at: Micros,
    /// End of the run; `None` ends it once everything measured has converged (or at a limit).
    pub duration: Option<Micros>,
    /// The core's grace period before a silent node's advert is forgotten.
    pub grace: Micros,
    /// The core's refresh interval (re-signing its own advert).
    pub refresh: Micros,
}

impl Default for Params {
    fn default() -> Self {
        let core = core::Config::default();
        Params {
            nodes: 1000,
            seed: 1,
            loss: 0.0,
            loss_model: LossModel::default(),
            latency: Latency::default(),
            churn: 0.0,
            partition: None,
            crash: None,
            degree: 8,
            mode: Mode::Auto,
            publish_at: SEC,
            duration: None,
            grace: core.grace * MS,
            refresh: core.refresh * MS,
        }
    }
}

impl Params {
    /// The mode after resolving `auto`.
    pub fn resolved_mode(&self) -> Mode {
        match self.mode {
            Mode::Auto if self.nodes <= FULL_AUTO_MAX => Mode::Full,
            Mode::Auto => Mode::Steady,
            m => m,
        }
    }

    /// Checks ranges; the message says what to change.
    pub fn check(&self) -> Result<(), String> {
        if !(2..=MAX_NODES).contains(&self.nodes) {
            return Err(format!("--nodes must be 2..={MAX_NODES}, not {}", self.nodes));
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err(format!("--loss must be a probability in 0..1 (0.2 for 20 %), not {}", self.loss));
        }
        if !(0.0..=1.0).contains(&self.churn) {
            return Err(format!("--churn is a fraction of the nodes per minute in 0..=1, not {}", self.churn));
        }
        if self.degree == 0 || self.degree >= self.nodes {
            return Err(format!("--degree must be 1..{} for {} nodes, not {}", self.nodes, self.nodes, self.degree));
        }
        if let Some(c) = &self.crash {
            if c.count >= self.nodes {
                return Err(format!("--crash {}@..: cannot crash {} of {} nodes", c.count, c.count, self.nodes));
            }
        }
        if self.resolved_mode() == Mode::Full && self.nodes > FULL_MAX {
            return Err(format!(
                "--mode full keeps every advert at every node (O(N^2), ~0.8 KB per entry): {} nodes would need \
                 about {} GiB; use at most {FULL_MAX} nodes, or --mode steady",
                self.nodes,
                self.nodes * self.nodes * 800 / (1 << 30)
            ));
        }
        Ok(())
    }

    /// The last scheduled scenario event (publications, heal, crashes).
    fn scenario_end(&self) -> Micros {
        let mut t = self.publish_at;
        if let Some(p) = &self.partition {
            t = t.max(p.heal.unwrap_or(p.at));
        }
        if let Some(c) = &self.crash {
            t = t.max(c.at + self.grace);
        }
        t
    }

    /// When the run stops at the latest.
    pub fn end(&self) -> Micros {
        self.duration.unwrap_or(self.scenario_end() + 120 * SEC)
    }
}

/// Messages and bytes one node sent and received (application payload: adverts, digests, gossip framing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages sent.
    pub msgs_sent: u64,
    /// Messages received.
    pub msgs_recv: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_recv: u64,
}

/// A tracked advert: who published it, when, and when each node first held it (or a newer one).
#[derive(Debug, Clone)]
pub struct Track {
    /// What it is for: `new advert`, `partition side A`, `partition side B`.
    pub label: &'static str,
    /// Publishing node.
    pub origin: u32,
    /// Its seq.
    pub seq: u64,
    /// When it was published.
    pub at: Micros,
    /// Per node: when it first held it; `None` if it never did (or lost it in a restart and did not get it back).
    pub delivered: Vec<Option<Micros>>,
    /// Per node: when it (re)started, if that was after the publication: its delivery counts from then.
    pub since: Vec<Micros>,
}

/// What happened to the nodes crashed with `--crash`.
#[derive(Debug, Clone)]
pub struct CrashReport {
    /// The node.
    pub node: u32,
    /// When it crashed.
    pub at: Micros,
    /// Its live peers that had a connection to it.
    pub peers: usize,
    /// When the last of them saw the connection fail (ping timeout).
    pub detected_all: Option<Micros>,
    /// Live nodes holding its advert at the crash.
    pub holders: usize,
    /// When the last of them expired it (after the grace period).
    pub expired_all: Option<Micros>,
    /// How many live holders are still to expire it.
    pending_expiry: usize,
    pending_detect: usize,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The params it ran with.
    pub params: Params,
    /// The mode after resolving `auto`.
    pub mode: Mode,
    /// Whether each node is up at the end.
    pub alive: Vec<bool>,
    /// Traffic per node.
    pub traffic: Vec<Traffic>,
    /// The new advert, then (with a partition) one advert published on each side during it.
    pub tracks: Vec<Track>,
    /// The heal time, when a partition healed.
    pub healed_at: Option<Micros>,
    /// Crashes.
    pub crashes: Vec<CrashReport>,
    /// Expired events for nodes that were up at the time ("a healthy node reported gone").
    pub false_expiries: u64,
    /// All Expired events.
    pub expiries: u64,
    /// Down/up events from churn.
    pub churn_events: u64,
    /// Virtual time at the end.
    pub end: Micros,
    /// Events processed.
    pub events: u64,
    /// Mean connection degree and gossip mesh degree at the end.
    pub mean_degree: f64,
    /// Mean gossip mesh degree at the end.
    pub mean_mesh: f64,
    /// Distinct adverts gossiped (every publication, including refreshes and seq jumps).
    pub adverts: usize,
    /// Full mode: when every live node first held an advert of every live node (anti-entropy from empty tables).
    pub full_sync: Option<Micros>,
}

/// One connection end: the peer, the connection's id, and its one-way latency.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: u32,
    gen: u32,
    lat: u32,
}

/// A simulated node: its core and what its driver (libp2p) would hold.
struct Node {
    core: Option<Core>,
    /// Bumped at every crash and restart, so events for an earlier life are ignored.
    epoch: u32,
    conns: Vec<Conn>,
    /// Gossip mesh peers (a subset of the connected peers).
    mesh: Vec<u32>,
    /// Gossip message ids seen, and when each is forgotten (gossipsub's duplicate cache).
    seen: std::collections::HashSet<u32>,
    seen_expiry: std::collections::VecDeque<(Micros, u32)>,
    /// Recent messages offered by IHAVE and served by IWANT (gossipsub's message cache), with arrival times.
    mcache: Vec<(u32, Micros)>,
    /// Peers dialed at start: `--peer` addresses, redialed while disconnected.
    bootstrap: Vec<u32>,
    /// Holds the shared steady-state content (steady mode; a restarted node gets it with its first sync).
    has_base: bool,
    /// Has published its first advert of this life.
    announced: bool,
    /// Partition group.
    side: bool,
    traffic: Traffic,
}

impl Node {
    fn alive(&self) -> bool {
        self.core.is_some()
    }
}

/// A message on a connection.
#[derive(Debug)]
enum Msg {
    /// A gossiped advert (an index into the advert arena).
    Gossip(u32),
    /// Gossipsub IHAVE: message ids the sender has.
    IHave(Vec<u32>),
    /// Gossipsub IWANT: message ids the sender wants.
    IWant(Vec<u32>),
    /// Anti-entropy request with the sender's digest.
    SyncReq(Vec<(NodeKey, u64)>),
    /// Anti-entropy answer; the flag says it also carries the shared steady-state content.
    SyncResp(Vec<Signed>, bool),
}

#[derive(Debug)]
enum Ev {
    Heartbeat { node: u32, epoch: u32 },
    Deliver { to: u32, from: u32, gen: u32, bytes: u32, msg: Msg },
    Established { a: u32, b: u32, ea: u32, eb: u32, lat: u32 },
    Redial { node: u32, peer: u32, epoch: u32, backoff: Micros },
    PingFail { a: u32, b: u32, gen: u32 },
    DetectDown { node: u32, peer: u32, gen: u32 },
    Publish { track: usize },
    PartitionStart,
    Heal,
    Churn,
    Restart { node: u32 },
    Crash,
    Check,
}

struct Item {
    at: Micros,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest (time, seq) must compare greatest.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulator state.
pub struct Sim<'p> {
    p: &'p Params,
    mode: Mode,
    rng: ChaCha8Rng,
    now: Micros,
    next_seq: u64,
    heap: BinaryHeap<Item>,
    keys: Vec<NodeKey>,
    secrets: Vec<[u8; 32]>,
    index: HashMap<NodeKey, u32>,
    nodes: Vec<Node>,
    /// Every advert gossiped, by message id, with its wire size and publisher.
    arena: Vec<(Signed, u32, u32)>,
    arena_ids: HashMap<(NodeKey, u64), u32>,
    /// Seq of each node's advert in the shared steady-state content.
    base_seq: u64,
    /// Wire bytes of the whole shared content (what a fresh node downloads in steady mode).
    base_bytes: u64,
    next_gen: u32,
    partitioned: bool,
    tracks: Vec<Track>,
    crashes: Vec<CrashReport>,
    false_expiries: u64,
    expiries: u64,
    churn_events: u64,
    events: u64,
    stop: bool,
    healed_at: Option<Micros>,
    full_sync: Option<Micros>,
}

/// Runs a simulation. `progress` is called now and then with the virtual time.
pub fn run(p: &Params, mut progress: impl FnMut(Micros)) -> Outcome {
    let mut sim = Sim::new(p);
    sim.start();
    let end = p.end();
    while let Some(item) = sim.heap.pop() {
        if item.at > end || sim.stop {
            break;
        }
        sim.now = item.at;
        sim.events += 1;
        if sim.events.is_multiple_of(65_536) {
            progress(sim.now);
        }
        sim.handle(item.ev);
    }
    progress(sim.now);
    sim.finish()
}

impl<'p> Sim<'p> {
    fn new(p: &'p Params) -> Sim<'p> {
        let mode = p.resolved_mode();
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let config = core::Config { grace: p.grace / MS, refresh: p.refresh / MS, ..core::Config::default() };
        let base_seq = 1;
        let mut keys = Vec::with_capacity(p.nodes);
        let mut secrets = Vec::with_capacity(p.nodes);
        let mut index = HashMap::with_capacity(p.nodes);
        let mut nodes = Vec::with_capacity(p.nodes);
        let mut base_bytes = 0u64;
        for i in 0..p.nodes {
            let mut secret = [0u8; 32];
            rng.fill(&mut secret[..]);
            let core = Core::new(Identity::from_secret(secret), config.clone(), base_seq, 0);
            let key = core.me();
            base_bytes += core.entry(&key).map_or(0, |e| e.advert.wire_len() as u64);
            keys.push(key);
            secrets.push(secret);
            index.insert(key, i as u32);
            nodes.push(Node {
                core: Some(core),
                epoch: 0,
                conns: vec![],
                mesh: vec![],
                seen: Default::default(),
                seen_expiry: Default::default(),
                mcache: vec![],
                bootstrap: vec![],
                has_base: mode == Mode::Steady,
                announced: mode == Mode::Steady,
                side: false,
                traffic: Traffic::default(),
            });
        }
        if let Some(part) = &p.partition {
            for n in &mut nodes {
                n.side = rng.gen::<f64>() < part.split;
            }
        }
        Sim {
            p,
            mode,
            rng,
            now: 0,
            next_seq: 0,
            heap: BinaryHeap::new(),
            keys,
            secrets,
            index,
            nodes,
            arena: vec![],
            arena_ids: HashMap::new(),
            base_seq,
            base_bytes,
            next_gen: 0,
            partitioned: false,
            tracks: vec![],
            crashes: vec![],
            false_expiries: 0,
            expiries: 0,
            churn_events: 0,
            events: 0,
            stop: false,
            healed_at: None,
            full_sync: None,
        }
    }

    fn push(&mut self, at: Micros, ev: Ev) {
        self.next_seq += 1;
        self.heap.push(Item { at, seq: self.next_seq, ev });
    }

    fn now_ms(&self) -> u64 {
        self.now / MS
    }

    /// Builds the connection graph and the gossip mesh, and schedules the scenario.
    fn start(&mut self) {
        let n = self.p.nodes as u32;
        for i in 0..n {
            let mut picks: Vec<u32> = Vec::with_capacity(self.p.degree);
            while picks.len() < self.p.degree {
                let j = self.rng.gen_range(0..n);
                if j != i && !picks.contains(&j) {
                    picks.push(j);
                }
            }
            self.nodes[i as usize].bootstrap = picks;
        }
        for i in 0..n {
            for k in 0..self.p.degree {
                let j = self.nodes[i as usize].bootstrap[k];
                match self.mode {
                    Mode::Steady => {
                        if !self.connected(i, j) {
                            let lat = self.p.latency.sample(&mut self.rng) as u32;
                            self.link(i, j, lat);
                        }
                    }
                    _ => {
                        // Nodes start within the first 500 ms and dial their bootstrap peers.
                        let t = self.rng.gen_range(0..500 * MS);
                        self.push(t, Ev::Redial { node: i, peer: j, epoch: 0, backoff: SEC });
                    }
                }
            }
        }
        if self.mode == Mode::Steady {
            // Converged long ago: the syncs those connections caused are history.
            for node in &mut self.nodes {
                if let Some(c) = node.core.as_mut() {
                    while c.poll_action().is_some() {}
                }
            }
            for i in 0..n {
                self.fill_mesh(i, false);
            }
        }
        for i in 0..n {
            let t = self.rng.gen_range(0..SEC);
            self.push(t, Ev::Heartbeat { node: i, epoch: 0 });
        }
        let mut tracks = vec![("new advert", self.p.publish_at)];
        if let Some(part) = self.p.partition.clone() {
            self.push(part.at, Ev::PartitionStart);
            if let Some(heal) = part.heal {
                self.push(heal, Ev::Heal);
                let mid = part.at + (heal - part.at) / 2;
                tracks.push(("partition side A", mid));
                tracks.push(("partition side B", mid));
            }
        }
        for (k, (label, at)) in tracks.into_iter().enumerate() {
            let n = self.p.nodes;
            self.tracks.push(Track { label, origin: 0, seq: 0, at, delivered: vec![None; n], since: vec![0; n] });
            self.push(at, Ev::Publish { track: k });
        }
        if let Some(c) = &self.p.crash {
            self.push(c.at, Ev::Crash);
        }
        if self.p.churn > 0.0 {
            let t = self.churn_gap();
            self.push(t, Ev::Churn);
        }
        self.push(100 * MS, Ev::Check);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Heartbeat { node, epoch } => self.heartbeat(node, epoch),
            Ev::Deliver { to, from, gen, bytes, msg } => self.deliver(to, from, gen, bytes, msg),
            Ev::Established { a, b, ea, eb, lat } => self.established(a, b, ea, eb, lat),
            Ev::Redial { node, peer, epoch, backoff } => self.redial(node, peer, epoch, backoff),
            Ev::PingFail { a, b, gen } => {
                if self.blocked(a, b) {
                    self.close(a, b, gen);
                }
            }
            Ev::DetectDown { node, peer, gen } => self.detect_down(node, peer, gen),
            Ev::Publish { track } => self.publish(track),
            Ev::PartitionStart => self.partition_start(),
            Ev::Heal => {
                self.partitioned = false;
                self.healed_at = Some(self.now);
            }
            Ev::Churn => self.churn(),
            Ev::Restart { node } => self.restart(node),
            Ev::Crash => self.crash_scheduled(),
            Ev::Check => self.check(),
        }
    }

    /// One second of a node's driver: the core's tick, gossip mesh upkeep and IHAVE gossip.
    fn heartbeat(&mut self, i: u32, epoch: u32) {
        let now_ms = self.now_ms();
        let n = &mut self.nodes[i as usize];
        if n.epoch != epoch {
            return;
        }
        let Some(core) = n.core.as_mut() else { return };
        if !n.announced {
            // The driver publishes the node's advert once it knows its listen addresses.
            n.announced = true;
            let own = core.own().clone();
            core.set_local(vec![format!("/sim/{i}")], None, own.resources, own.revoked, now_ms);
        }
        core.handle_tick(now_ms);
        self.drain(i);
        self.fill_mesh(i, true);
        self.ihave(i);
        self.push(self.now + SEC, Ev::Heartbeat { node: i, epoch });
    }

    /// Carries out what node `i`'s core asked for.
    fn drain(&mut self, i: u32) {
        loop {
            let Some(action) = self.nodes[i as usize].core.as_mut().and_then(|c| c.poll_action()) else { return };
            match action {
                Action::SendSync { to, mut digest } => {
                    if let Some(&j) = self.index.get(&to) {
                        // The shared content is part of the digest a node with it would send; of it, only the
                        // receiver's own entry changes the receiver's answer (it re-signs past a seq a peer
                        // holds), so that one is added for real.
                        if self.mode == Mode::Steady && self.nodes[i as usize].has_base {
                            if let Err(pos) = digest.binary_search_by(|(k, _)| k.cmp(&to)) {
                                digest.insert(pos, (to, self.base_seq));
                            }
                        }
                        self.send(i, j, Msg::SyncReq(digest));
                    }
                }
                Action::Publish(signed) => self.publish_signed(i, signed),
                Action::Event(core::Event::Updated { node, .. }) => self.updated(i, node),
                Action::Event(core::Event::Expired { node }) => self.expired(node),
            }
        }
    }

    /// Records first delivery of tracked adverts at node `i`.
    fn updated(&mut self, i: u32, node: NodeKey) {
        let Some(&origin) = self.index.get(&node) else { return };
        let seq = self.nodes[i as usize].core.as_ref().and_then(|c| c.entry(&node)).map(|e| e.advert.seq());
        for t in &mut self.tracks {
            if t.origin == origin && t.seq > 0 && seq >= Some(t.seq) && t.delivered[i as usize].is_none() {
                t.delivered[i as usize] = Some(self.now);
            }
        }
    }

    fn expired(&mut self, node: NodeKey) {
        self.expiries += 1;
        let Some(&k) = self.index.get(&node) else { return };
        if self.nodes[k as usize].alive() {
            self.false_expiries += 1;
        }
        let now = self.now;
        for c in self.crashes.iter_mut().filter(|c| c.node == k && c.pending_expiry > 0) {
            c.pending_expiry -= 1;
            if c.pending_expiry == 0 {
                c.expired_all = Some(now);
            }
        }
    }

    fn finish(self) -> Outcome {
        let conns: usize = self.nodes.iter().filter(|n| n.alive()).map(|n| n.conns.len()).sum();
        let mesh: usize = self.nodes.iter().filter(|n| n.alive()).map(|n| n.mesh.len()).sum();
        let live = self.nodes.iter().filter(|n| n.alive()).count().max(1) as f64;
        Outcome {
            params: self.p.clone(),
            mode: self.mode,
            alive: self.nodes.iter().map(|n| n.alive()).collect(),
            traffic: self.nodes.iter().map(|n| n.traffic).collect(),
            tracks: self.tracks,
            healed_at: self.healed_at,
            crashes: self.crashes,
            false_expiries: self.false_expiries,
            expiries: self.expiries,
            churn_events: self.churn_events,
            end: self.now,
            events: self.events,
            mean_degree: conns as f64 / live,
            mean_mesh: mesh as f64 / live,
            adverts: self.arena.len(),
            full_sync: self.full_sync,
        }
    }
}
