//! The sans-IO mesh core: membership, the advert table and anti-entropy decisions. It takes events and the time
//! as arguments and queues actions for its driver; it owns no sockets, no timers and no tasks. The libp2p driver
//! feeds it in a real node, and the simulator runs thousands of it in one process.
//!
//! Protocol, in short: every node signs one advert about itself (last seq wins). When a connection comes up both
//! ends send a digest (node -> seq) and answer the other's digest with every advert the other lacks or has older,
//! so one round trip converges two tables. Changes spread by gossip in between. A node we are connected to is
//! reachable; when the last connection drops it is unreachable at once, and its advert is forgotten only after
//! `grace` without news of it, so a short partition never wipes the view. Gossip can lose a message (a queue full,
//! a connection closed under it): every few seconds a node compares a [`Core::summary`] of its table with a random
//! peer's and syncs the key ranges that differ. A forgotten advert is remembered as a tombstone for another
//! `grace`, so that such a sync cannot bring a dead node back; only a newer advert, which only a live node signs,
//! can.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::advert::{self, Advert, ResourceInfo, Signed};
use crate::identity::{Identity, NodeKey};
use crate::token::TokenId;

/// Milliseconds on the driver's clock (monotonic in a node, virtual in the simulator).
pub type Millis = u64;

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long an advert of a node we are not connected to survives without news.
    pub grace: Millis,
    /// How often a node re-signs its advert (with a new seq) so that others keep hearing of it.
    pub refresh: Millis,
    /// Most nodes the table holds, ours included.
    pub max_nodes: usize,
    /// Most bytes of signed adverts the table holds (as [`Signed::wire_len`] counts them).
    pub max_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { grace: 10 * 60_000, refresh: 3 * 60_000, max_nodes: MAX_NODES, max_bytes: MAX_TABLE_BYTES }
    }
}

/// Default bound of the table in nodes: past the simulator's 100k-node meshes.
pub const MAX_NODES: usize = 131_072;
/// Default bound of the table in bytes of adverts. An honest advert takes a few hundred bytes; a stranger minting
/// keys and signing 64 KiB adverts fills this long before [`MAX_NODES`].
pub const MAX_TABLE_BYTES: usize = 32 * 1024 * 1024;
/// Most buckets of a [`Core::summary`] (`2^MAX_SUMMARY_BITS`): 2 KiB of hashes, each bucket a 1/256 of the key
/// space (about 400 nodes of a 100k-node mesh, a 16 KiB digest page to sync when it differs).
pub const MAX_SUMMARY_BITS: u8 = 8;
/// Forgotten nodes remembered at most (see [`Core::handle_tick`]); past it the oldest tombstones go first.
pub const MAX_TOMBSTONES: usize = 16 * 1024;

/// What became of an advert handed to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New or newer: kept (and worth forwarding).
    New,
    /// As old as or older than the one we hold, or one of ours: nothing to do.
    Stale,
    /// Bad signature or a seq past [`MAX_SEQ`]: its sender misbehaves.
    Refused,
    /// The table is full and its source holds at least its share of it.
    Full,
}

/// A range of node keys, `start` included, `end` excluded (`None`: to the end of the key space). Syncs go in pages
/// of such ranges so that no message needs more than [`crate::net::MAX_RPC_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    /// First key in the range.
    pub start: NodeKey,
    /// First key past the range, if any.
    pub end: Option<NodeKey>,
}

impl KeyRange {
    /// Every key.
    pub const ALL: KeyRange = KeyRange { start: NodeKey([0; 32]), end: None };

    /// True if `k` lies in the range.
    pub fn contains(&self, k: &NodeKey) -> bool {
        *k >= self.start && self.end.is_none_or(|e| *k < e)
    }

    /// Bucket `i` of the `2^bits` equal ranges a [`Core::summary`] divides the key space into, by the keys' first
    /// `bits` bits (`bits` at most [`MAX_SUMMARY_BITS`], `i` below `2^bits`).
    pub fn bucket(bits: u8, i: usize) -> KeyRange {
        let width = 256usize >> bits.min(MAX_SUMMARY_BITS);
        let key = |b: usize| {
            let mut k = [0u8; 32];
            k[0] = b as u8;
            NodeKey(k)
        };
        let end = (i + 1) * width;
        KeyRange { start: key(i * width), end: (end < 256).then(|| key(end)) }
    }
}

/// How we first learned of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Found on the LAN by mDNS.
    Mdns,
    /// A `--peer` address or a remembered peer.
    Bootstrap,
    /// Known only from gossip or sync.
    Gossip,
    /// It connected to us.
    Inbound,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a sync request with this digest to a peer.
    SendSync { to: NodeKey, digest: Vec<(NodeKey, u64)> },
    /// Gossip this advert to the mesh.
    Publish(Signed),
    /// Something changed that the driver may act on.
    Event(Event),
}

/// Changes the core reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node's advert is new or newer; its addresses may be worth dialing.
    Updated { node: NodeKey, addrs: Vec<String> },
    /// A node's advert was forgotten after the grace period.
    Expired { node: NodeKey },
}

/// One node in the table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its newest advert.
    pub advert: Signed,
    /// When we last heard of it (advert, sync or a live connection).
    pub last_heard: Millis,
    /// The peer that brought it: the node itself when it came from the node directly (or the node is connected);
    /// only entries other peers brought can be evicted for room.
    pub source: NodeKey,
}

/// One peer we have or had a connection with.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Open connections right now.
    pub connections: u32,
    /// How we learned of it.
    pub via: Via,
    /// When a connection was last up.
    pub last_seen: Millis,
}

/// Counters for reports and the simulator.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Adverts accepted as new or newer.
    pub accepted: u64,
    /// Adverts ignored as old or duplicate.
    pub stale: u64,
    /// Adverts refused (bad signature or bounds).
    pub refused: u64,
    /// New nodes turned away because the table was full.
    pub full: u64,
    /// Entries dropped to make room for another source's.
    pub evicted: u64,
}

/// The highest advert seq accepted or signed. Seqs start at the wall clock in milliseconds (about 2^41) and grow by
/// one per change, so no honest node comes near; one that claims more is refused, and nothing can push a node's
/// own seq to the end of the range, where the next one would wrap and the whole mesh would ignore it.
pub const MAX_SEQ: u64 = 1 << 62;

/// The mesh core of one node.
pub struct Core {
    id: Identity,
    me: NodeKey,
    config: Config,
    table: HashMap<NodeKey, Entry>,
    /// Bytes of the adverts in `table`.
    bytes: usize,
    /// Entries each peer brought of nodes other than itself: the candidates for eviction, by source.
    relayed: HashMap<NodeKey, HashSet<NodeKey>>,
    peers: HashMap<NodeKey, Peer>,
    actions: VecDeque<Action>,
    own_signed_at: Millis,
    stats: Stats,
    /// Nodes forgotten after `grace`: the seq they had and when, kept for another `grace` (see the module doc).
    tombstones: HashMap<NodeKey, (u64, Millis)>,
    /// Tombstones in the order they were laid, to prune and bound them (a key may be listed after it was lifted).
    tombstone_order: VecDeque<(NodeKey, Millis)>,
}

impl Core {
    /// A core whose own advert starts at `seq` (the driver persists the last seq so restarts keep increasing it).
    pub fn new(id: Identity, config: Config, seq: u64, now: Millis) -> Core {
        let me = id.public();
        let advert = Advert { node: me, seq, addrs: vec![], tunnel: None, resources: vec![], revoked: vec![] };
        let signed = advert.sign(&id);
        let bytes = signed.wire_len();
        let mut table = HashMap::new();
        table.insert(me, Entry { advert: signed, last_heard: now, source: me });
        Core {
            id,
            me,
            config,
            table,
            bytes,
            relayed: HashMap::new(),
            peers: HashMap::new(),
            actions: VecDeque::new(),
            own_signed_at: now,
            stats: Stats::default(),
            tombstones: HashMap::new(),
            tombstone_order: VecDeque::new(),
        }
    }

    /// This node's key.
    pub fn me(&self) -> NodeKey {
        self.me
    }

    /// This node's current advert.
    pub fn own(&self) -> &Advert {
        self.table[&self.me].advert.advert()
    }

    /// Replaces what this node adverts, signs it with the next seq and publishes it.
    pub fn set_local(
        &mut self,
        addrs: Vec<String>,
        tunnel: Option<String>,
        resources: Vec<ResourceInfo>,
        revoked: Vec<TokenId>,
        now: Millis,
    ) {
        let seq = next_seq(self.own().seq);
        let advert = Advert { node: self.me, seq, addrs, tunnel, resources, revoked };
        self.install_own(advert, now);
    }

    fn install_own(&mut self, advert: Advert, now: Millis) {
        let signed = advert.sign(&self.id);
        // Our own advert always has its place: it is bounded by the advert's own limits, never evicted.
        self.put(self.me, Entry { advert: signed.clone(), last_heard: now, source: self.me });
        self.own_signed_at = now;
        self.actions.push_back(Action::Publish(signed));
    }

    /// A connection to `peer` came up.
    pub fn handle_connected(&mut self, peer: NodeKey, via: Via, now: Millis) {
        let p = self.peers.entry(peer).or_insert(Peer { connections: 0, via, last_seen: now });
        p.connections += 1;
        p.last_seen = now;
        let first = p.connections == 1;
        // A node that connects is alive, whatever we forgot of it.
        self.tombstones.remove(&peer);
        self.make_direct(peer);
        if let Some(e) = self.table.get_mut(&peer) {
            e.last_heard = now;
        }
        if first {
            self.actions.push_back(Action::SendSync { to: peer, digest: self.digest() });
        }
    }

    /// A connection to `peer` went down.
    pub fn handle_disconnected(&mut self, peer: NodeKey, now: Millis) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.connections = p.connections.saturating_sub(1);
            p.last_seen = now;
        }
        if let Some(e) = self.table.get_mut(&peer) {
            e.last_heard = now;
        }
    }

    /// The digest this node sends: every node it knows and the seq it has.
    pub fn digest(&self) -> Vec<(NodeKey, u64)> {
        self.digest_range(&KeyRange::ALL)
    }

    /// The part of the digest in `range`, sorted by key.
    pub fn digest_range(&self, range: &KeyRange) -> Vec<(NodeKey, u64)> {
        let mut d: Vec<_> =
            self.table.iter().filter(|(k, _)| range.contains(k)).map(|(k, e)| (*k, e.advert.seq())).collect();
        d.sort_unstable();
        d
    }

    /// A summary of the table for anti-entropy: for each of the `2^bits` key ranges of [`KeyRange::bucket`], a hash
    /// of the (key, seq) pairs in it (a sum of per-entry hashes, so no sorting). Tables that agree on a range have
    /// the same hash for it; only the ranges whose hashes differ need a sync page.
    pub fn summary(&self, bits: u8) -> Vec<u64> {
        let bits = bits.min(MAX_SUMMARY_BITS);
        let mut out = vec![0u64; 1 << bits];
        for (k, e) in &self.table {
            let i = usize::from(k.0[0]) >> (8 - bits);
            let mut h = blake3::Hasher::new();
            h.update(&k.0);
            h.update(&e.advert.seq().to_le_bytes());
            let b = h.finalize();
            let word = u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"));
            out[i] = out[i].wrapping_add(word);
        }
        out
    }

    /// The bits of summary worth sending for this table: one bucket per 64 nodes or so, at most
    /// [`MAX_SUMMARY_BITS`].
    pub fn summary_bits(&self) -> u8 {
        let mut bits = 0;
        while bits < MAX_SUMMARY_BITS && (self.table.len() >> bits) > 64 {
            bits += 1;
        }
        bits
    }

    /// Answers a peer's digest with every advert it lacks or has older.
    pub fn handle_sync_request(&mut self, from: NodeKey, digest: &[(NodeKey, u64)], now: Millis) -> Vec<Signed> {
        self.handle_sync_range(from, &KeyRange::ALL, digest, usize::MAX, now).0
    }

    /// Answers a peer's digest of the nodes in `range` with the adverts in that range it lacks or has older, in key
    /// order, up to `budget` bytes (at least one). The key to continue from is returned when the page is full.
    pub fn handle_sync_range(
        &mut self,
        from: NodeKey,
        range: &KeyRange,
        digest: &[(NodeKey, u64)],
        budget: usize,
        now: Millis,
    ) -> (Vec<Signed>, Option<NodeKey>) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_seen = now;
        }
        let theirs: HashMap<NodeKey, u64> = digest.iter().filter(|(k, _)| range.contains(k)).copied().collect();
        let mut owed: Vec<(&NodeKey, &Entry)> = self
            .table
            .iter()
            .filter(|(k, e)| range.contains(k) && theirs.get(k).is_none_or(|&seq| seq < e.advert.seq()))
            .collect();
        owed.sort_unstable_by_key(|(k, _)| **k);
        let (mut out, mut used, mut next) = (vec![], 0usize, None);
        for (k, e) in owed {
            let len = e.advert.wire_len();
            if !out.is_empty() && used.saturating_add(len) > budget {
                next = Some(*k);
                break;
            }
            used += len;
            out.push(e.advert.clone());
        }
        // Their own advert is newer than the one we hold: a change gossip did not bring us (the driver sends a sync
        // to a connected peer that gossip cannot reach when it publishes). Pull it.
        if let (Some(&seq), Some(e)) = (theirs.get(&from), self.table.get(&from)) {
            if seq > e.advert.seq() {
                self.actions.push_back(Action::SendSync { to: from, digest: self.digest() });
            }
        }
        // A digest is unsigned: what it claims of our own seq moves nothing. If they really hold a newer advert of
        // ours (we lost state), their answer to our digest carries it, signed, and `accept` jumps past that.
        (out, next)
    }

    /// Adverts arrived from `from` (a sync response or gossip). Returns how many were new.
    pub fn handle_adverts(&mut self, adverts: Vec<Signed>, from: NodeKey, now: Millis) -> usize {
        adverts.into_iter().filter(|a| self.accept(a.clone(), from, now) == Outcome::New).count()
    }

    /// One advert arrived by gossip from `from` (the peer that passed it on, not always its signer).
    pub fn handle_gossip(&mut self, advert: Signed, from: NodeKey, now: Millis) -> Outcome {
        self.accept(advert, from, now)
    }

    fn accept(&mut self, advert: Signed, from: NodeKey, now: Millis) -> Outcome {
        let node = advert.node();
        if node == self.me {
            // Someone has an advert of ours newer than ours: we restarted without our seq. Jump past it; only an
            // advert we signed can move our seq, and never to the end of the range.
            if advert.seq() >= self.own().seq && advert.seq() < MAX_SEQ && advert.verify().is_ok() {
                let mut a = self.own().clone();
                a.seq = next_seq(advert.seq());
                self.install_own(a, now);
            }
            return Outcome::Stale;
        }
        if advert.seq() > MAX_SEQ {
            self.stats.refused += 1;
            return Outcome::Refused;
        }
        if self.tombstones.get(&node).is_some_and(|t| advert.seq() <= t.0) {
            // Forgotten as dead: only a newer advert brings it back.
            self.stats.stale += 1;
            return Outcome::Stale;
        }
        let known = self.table.get_mut(&node);
        let held = known.as_ref().map_or(0, |e| e.advert.wire_len());
        if let Some(e) = known {
            if advert.seq() <= e.advert.seq() {
                if advert.seq() == e.advert.seq() {
                    e.last_heard = now;
                }
                self.stats.stale += 1;
                return Outcome::Stale;
            }
        }
        if advert.verify().is_err() {
            self.stats.refused += 1;
            return Outcome::Refused;
        }
        // A node connected to us is its own source, whoever passed its advert on.
        let direct = from == node || self.is_reachable(&node);
        let source = match self.table.get(&node) {
            Some(e) if !direct => e.source,
            _ if direct => node,
            _ => from,
        };
        let new = usize::from(held == 0);
        if !self.make_room(new, advert.wire_len().saturating_sub(held), source, node) {
            self.stats.full += 1;
            return Outcome::Full;
        }
        self.stats.accepted += 1;
        self.tombstones.remove(&node);
        let addrs = advert.advert().addrs.clone();
        self.put(node, Entry { advert, last_heard: now, source });
        self.actions.push_back(Action::Event(Event::Updated { node, addrs }));
        Outcome::New
    }

    /// Makes room for `nodes` more entries and `bytes` more bytes brought by `source` (for `node`), evicting
    /// entries of the source holding the most relayed entries when that is more than `source` holds. False if there
    /// is no room to be had fairly: a peer cannot push out what others brought by bringing more itself.
    fn make_room(&mut self, nodes: usize, bytes: usize, source: NodeKey, node: NodeKey) -> bool {
        let own = |s: &Self| if source == node { 0 } else { s.relayed.get(&source).map_or(0, HashSet::len) };
        while self.table.len() + nodes > self.config.max_nodes || self.bytes + bytes > self.config.max_bytes {
            let mine = own(self);
            let victim = self
                .relayed
                .iter()
                .filter(|(s, set)| set.len() > mine + 1 || (**s != source && set.len() > mine))
                .max_by_key(|(_, set)| set.len())
                .and_then(|(_, set)| set.iter().find(|k| **k != node).copied());
            let Some(victim) = victim else { return false };
            self.remove(&victim);
            self.stats.evicted += 1;
            self.actions.push_back(Action::Event(Event::Expired { node: victim }));
        }
        true
    }

    /// Inserts or replaces an entry, keeping the byte count and the by-source index.
    fn put(&mut self, node: NodeKey, entry: Entry) {
        let (source, len) = (entry.source, entry.advert.wire_len());
        if let Some(old) = self.remove(&node) {
            debug_assert!(old.advert.seq() < entry.advert.seq() || node == self.me);
        }
        if source != node {
            self.relayed.entry(source).or_default().insert(node);
        }
        self.bytes += len;
        self.table.insert(node, entry);
    }

    /// Removes an entry, keeping the byte count and the by-source index.
    fn remove(&mut self, node: &NodeKey) -> Option<Entry> {
        let e = self.table.remove(node)?;
        self.bytes -= e.advert.wire_len();
        self.unrelay(&e.source, node);
        Some(e)
    }

    fn unrelay(&mut self, source: &NodeKey, node: &NodeKey) {
        if let Some(set) = self.relayed.get_mut(source) {
            set.remove(node);
            if set.is_empty() {
                self.relayed.remove(source);
            }
        }
    }

    /// The node is connected: its entry is its own from now on, never evicted for room.
    fn make_direct(&mut self, node: NodeKey) {
        let Some(e) = self.table.get_mut(&node) else { return };
        let old = std::mem::replace(&mut e.source, node);
        if old != node {
            self.unrelay(&old, &node);
        }
    }

    /// Time passes: refreshes our own advert and forgets nodes unheard of for the grace period.
    pub fn handle_tick(&mut self, now: Millis) {
        if now.saturating_sub(self.own_signed_at) >= self.config.refresh {
            let mut a = self.own().clone();
            a.seq = next_seq(a.seq);
            self.install_own(a, now);
        }
        let grace = self.config.grace;
        let expired: Vec<NodeKey> = self
            .table
            .iter()
            .filter(|(k, e)| **k != self.me && !self.is_reachable(k) && now.saturating_sub(e.last_heard) >= grace)
            .map(|(k, _)| *k)
            .collect();
        for node in expired {
            if let Some(e) = self.remove(&node) {
                self.lay_tombstone(node, e.advert.seq(), now);
            }
            self.peers.remove(&node);
            self.actions.push_back(Action::Event(Event::Expired { node }));
        }
        while let Some(&(node, at)) = self.tombstone_order.front() {
            if now.saturating_sub(at) < grace && self.tombstone_order.len() <= MAX_TOMBSTONES {
                break;
            }
            self.tombstone_order.pop_front();
            if self.tombstones.get(&node).is_some_and(|t| t.1 == at) {
                self.tombstones.remove(&node);
            }
        }
    }

    fn lay_tombstone(&mut self, node: NodeKey, seq: u64, now: Millis) {
        self.tombstones.insert(node, (seq, now));
        self.tombstone_order.push_back((node, now));
        if self.tombstone_order.len() > MAX_TOMBSTONES {
            if let Some((old, at)) = self.tombstone_order.pop_front() {
                if self.tombstones.get(&old).is_some_and(|t| t.1 == at) {
                    self.tombstones.remove(&old);
                }
            }
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Every known node's entry, ours included.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeKey, &Entry)> {
        self.table.iter()
    }

    /// One node's entry.
    pub fn entry(&self, node: &NodeKey) -> Option<&Entry> {
        self.table.get(node)
    }

    /// Peers with connection state.
    pub fn peers(&self) -> impl Iterator<Item = (&NodeKey, &Peer)> {
        self.peers.iter()
    }

    /// One peer's connection state.
    pub fn peer(&self, node: &NodeKey) -> Option<&Peer> {
        self.peers.get(node)
    }

    /// True while at least one connection to `node` is up.
    pub fn is_reachable(&self, node: &NodeKey) -> bool {
        self.peers.get(node).is_some_and(|p| p.connections > 0)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Nodes in the table (ours included) and the bytes of their adverts.
    pub fn size(&self) -> (usize, usize) {
        (self.table.len(), self.bytes)
    }
}

/// Re-exported for drivers that decode adverts.
pub use advert::Error as AdvertError;

/// The seq after `seq`, never past [`MAX_SEQ`].
fn next_seq(seq: u64) -> u64 {
    seq.saturating_add(1).min(MAX_SEQ)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use crate::token::ResourceId;

    fn node(seed: u8) -> Core {
        Core::new(Identity::from_secret([seed; 32]), Config { grace: 1000, refresh: 500, ..Config::default() }, 0, 0)
    }

    fn drain(c: &mut Core) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    fn res(name: &str) -> ResourceInfo {
        ResourceInfo {
            id: ResourceId([7; 16]),
            kind: Kind::File,
            name: name.into(),
            description: String::new(),
            public_ref: None,
        }
    }

    /// Runs one sync exchange between a and b as a driver would on connect.
    fn connect(a: &mut Core, b: &mut Core, now: Millis) {
        a.handle_connected(b.me(), Via::Mdns, now);
        b.handle_connected(a.me(), Via::Inbound, now);
        let (da, db) = (a.digest(), b.digest());
        let to_a = b.handle_sync_request(a.me(), &da, now);
        let to_b = a.handle_sync_request(b.me(), &db, now);
        a.handle_adverts(to_a, b.me(), now);
        b.handle_adverts(to_b, a.me(), now);
    }

    #[test]
    fn connect_sends_one_sync_and_exchange_converges() {
        let (mut a, mut b, mut c) = (node(1), node(2), node(3));
        a.set_local(vec![], None, vec![res("a")], vec![], 1);
        c.set_local(vec![], None, vec![res("c")], vec![], 1);
        connect(&mut b, &mut c, 2);
        connect(&mut a, &mut b, 3);
        // b learned c's advert before, and hands it to a in the same round trip.
        assert!(a.entry(&c.me()).is_some(), "a learns c through b");
        assert!(b.entry(&a.me()).is_some());
        assert_eq!(a.entry(&c.me()).unwrap().advert.advert().resources[0].name, "c");
        let syncs = drain(&mut a).into_iter().filter(|x| matches!(x, Action::SendSync { .. })).count();
        assert_eq!(syncs, 1);
    }

    #[test]
    fn a_sync_showing_a_newer_advert_of_the_requester_is_answered_with_a_pull() {
        let (mut a, mut b) = (node(1), node(2));
        connect(&mut a, &mut b, 1);
        drain(&mut a);
        drain(&mut b);
        // b changes, and gossip does not reach a; b sends its digest instead.
        b.set_local(vec!["/ip6/fd00::2/tcp/1".into()], None, vec![], vec![], 2);
        let to_b = a.handle_sync_request(b.me(), &b.digest(), 3);
        assert!(to_b.is_empty(), "b lacks nothing");
        let pulls: Vec<Action> = drain(&mut a).into_iter().filter(|x| matches!(x, Action::SendSync { .. })).collect();
        assert_eq!(pulls, vec![Action::SendSync { to: b.me(), digest: a.digest() }]);
        // The pull brings the new advert.
        let to_a = b.handle_sync_request(a.me(), &a.digest(), 4);
        assert_eq!(a.handle_adverts(to_a, b.me(), 4), 1);
        assert_eq!(a.entry(&b.me()).unwrap().advert.advert().addrs, vec!["/ip6/fd00::2/tcp/1".to_string()]);
        // Nothing newer: no pull.
        a.handle_sync_request(b.me(), &b.digest(), 5);
        assert!(!drain(&mut a).iter().any(|x| matches!(x, Action::SendSync { .. })));
    }

    #[test]
    fn newer_seq_wins_and_older_is_ignored() {
        let (mut a, mut b) = (node(1), node(2));
        b.set_local(vec![], None, vec![res("v1")], vec![], 1);
        let v1 = b.entry(&b.me()).unwrap().advert.clone();
        b.set_local(vec![], None, vec![res("v2")], vec![], 2);
        let v2 = b.entry(&b.me()).unwrap().advert.clone();
        assert_eq!(a.handle_gossip(v2, b.me(), 3), Outcome::New);
        assert_eq!(a.handle_gossip(v1, b.me(), 4), Outcome::Stale);
        assert_eq!(a.entry(&b.me()).unwrap().advert.advert().resources[0].name, "v2");
        assert_eq!(a.stats().stale, 1);
    }

    #[test]
    fn forged_gossip_is_refused() {
        let (mut a, b) = (node(1), node(2));
        let evil = Identity::from_secret([66; 32]);
        let honest = Advert { node: evil.public(), ..b.own().clone() }.sign(&evil);
        assert_eq!(a.handle_gossip(honest, b.me(), 1), Outcome::New, "a correctly signed advert of evil is fine");
        // Claims to be b's, signed by evil.
        let forged = Advert { node: b.me(), seq: 99, ..b.own().clone() }.sign(&evil);
        assert_eq!(a.handle_gossip(forged, b.me(), 2), Outcome::Refused);
        assert_eq!(a.stats().refused, 1);
        assert!(a.entry(&b.me()).is_none());
    }

    #[test]
    fn disconnected_node_expires_after_grace_connected_never() {
        let (mut a, mut b, mut c) = (node(1), node(2), node(3));
        connect(&mut a, &mut b, 0);
        connect(&mut a, &mut c, 0);
        a.handle_disconnected(b.me(), 100);
        assert!(!a.is_reachable(&b.me()));
        assert!(a.is_reachable(&c.me()));
        a.handle_tick(900);
        assert!(a.entry(&b.me()).is_some(), "still within grace");
        a.handle_tick(1100);
        assert!(a.entry(&b.me()).is_none(), "expired after grace");
        assert!(a.entry(&c.me()).is_some(), "connected node never expires");
        assert!(drain(&mut a).contains(&Action::Event(Event::Expired { node: b.me() })));
    }

    #[test]
    fn fresh_gossip_keeps_a_remote_node_alive() {
        let (mut a, mut b) = (node(1), node(2));
        a.handle_gossip(b.entry(&b.me()).unwrap().advert.clone(), b.me(), 0);
        for t in (0..5000).step_by(400) {
            b.handle_tick(t);
            for act in drain(&mut b) {
                if let Action::Publish(s) = act {
                    a.handle_gossip(s, b.me(), t);
                }
            }
            a.handle_tick(t);
        }
        assert!(a.entry(&b.me()).is_some());
    }

    #[test]
    fn reconnecting_to_an_up_to_date_peer_does_not_resign() {
        let (mut a, mut b) = (node(1), node(2));
        connect(&mut a, &mut b, 1);
        let seq = b.own().seq;
        a.handle_disconnected(b.me(), 2);
        b.handle_disconnected(a.me(), 2);
        drain(&mut b);
        connect(&mut a, &mut b, 3);
        assert_eq!(b.own().seq, seq, "a holds b's current advert: nothing to jump past");
        assert!(!drain(&mut b).iter().any(|x| matches!(x, Action::Publish(_))), "no re-gossip on reconnect");
    }

    #[test]
    fn restarted_node_without_seq_jumps_past_its_old_advert() {
        let mut a = node(1);
        let mut b = node(2);
        for t in 1..=5 {
            b.set_local(vec![], None, vec![], vec![], t);
        }
        connect(&mut a, &mut b, 6);
        assert_eq!(a.entry(&b.me()).unwrap().advert.seq(), 5);
        // b restarts with seq 0 and reconnects: a's digest says 5, so b moves to 6 and a takes it.
        let mut b2 = node(2);
        a.handle_disconnected(b.me(), 7);
        connect(&mut a, &mut b2, 8);
        assert!(b2.own().seq > 5);
        for act in drain(&mut b2) {
            if let Action::Publish(s) = act {
                a.handle_gossip(s, b2.me(), 9);
            }
        }
        assert_eq!(a.entry(&b2.me()).unwrap().advert.seq(), b2.own().seq);
    }

    /// Attack (issue 10, finding 1): an unsigned digest claiming a seq of ours near the end of the range moved our
    /// seq there, so that the next advert wrapped and the whole mesh ignored us for good.
    #[test]
    fn a_digest_cannot_move_our_seq_and_a_seq_near_the_end_is_refused() {
        let (mut victim, mut peer) = (node(1), node(2));
        connect(&mut victim, &mut peer, 1);
        let before = victim.own().seq;
        victim.handle_sync_request(peer.me(), &[(victim.me(), u64::MAX - 1)], 2);
        assert_eq!(victim.own().seq, before, "an unsigned claim moves nothing");
        victim.set_local(vec![], None, vec![res("x")], vec![], 3);
        let published = drain(&mut victim).into_iter().find_map(|a| match a {
            Action::Publish(s) => Some(s),
            _ => None,
        });
        let published = published.expect("a change is published");
        assert_eq!(published.seq(), before + 1);
        assert_eq!(
            peer.handle_gossip(published, victim.me(), 4),
            Outcome::New,
            "the mesh still takes the victim's adverts"
        );
        // A hostile node signs its own advert at the end of the range: refused, not kept as the last word.
        let evil = Identity::from_secret([66; 32]);
        let huge = Advert { node: evil.public(), seq: u64::MAX, ..peer.own().clone() }.sign(&evil);
        assert_eq!(peer.handle_gossip(huge, evil.public(), 5), Outcome::Refused);
        assert!(peer.entry(&evil.public()).is_none());
        // Our own seq never passes the end either.
        assert_eq!(next_seq(u64::MAX), MAX_SEQ);
    }

    fn stranger_id(i: u32) -> Identity {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&i.to_be_bytes());
        secret[31] = 0xee;
        Identity::from_secret(secret)
    }

    fn stranger(i: u32, pad: usize) -> Signed {
        let id = stranger_id(i);
        let mut r = res("x");
        r.description = "x".repeat(pad);
        Advert { node: id.public(), seq: 1, addrs: vec![], tunnel: None, resources: vec![r], revoked: vec![] }.sign(&id)
    }

    /// Attack (issue 10, finding 2): a peer minting keys filled the table without bound. Now the table holds at most
    /// `max_nodes` and `max_bytes`, and a flooding peer takes room only from itself once it holds more than others:
    /// what honest peers brought, and every connected node, stays.
    #[test]
    fn a_flood_of_fresh_keys_fills_at_most_the_table_and_evicts_only_the_flooders_share() {
        let mut me = Core::new(
            Identity::from_secret([1; 32]),
            Config { grace: 1000, refresh: 500, max_nodes: 64, max_bytes: 256 * 1024 },
            0,
            0,
        );
        let (mut honest, mut evil) = (node(2), node(3));
        connect(&mut me, &mut honest, 1);
        connect(&mut me, &mut evil, 1);
        // The honest peer relays ten nodes' adverts.
        for i in 0..10 {
            assert_eq!(me.handle_gossip(stranger(i, 10), honest.me(), 2), Outcome::New);
        }
        // The flooder pushes ten thousand fresh keys.
        let mut full = 0;
        for i in 1000..11_000 {
            if me.handle_gossip(stranger(i, 10), evil.me(), 3) == Outcome::Full {
                full += 1;
            }
        }
        let (nodes, bytes) = me.size();
        assert!(nodes <= 64 && bytes <= 256 * 1024, "bounded: {nodes} nodes, {bytes} bytes");
        assert!(full > 9_000, "most of the flood is turned away ({full})");
        for i in 0..10 {
            assert!(me.entry(&stranger(i, 10).node()).is_some(), "what the honest peer brought stays");
        }
        assert!(me.entry(&honest.me()).is_some() && me.entry(&evil.me()).is_some(), "connected peers stay");
        // A node the honest peer relays later still gets in, at the flooder's expense.
        assert_eq!(me.handle_gossip(stranger(50, 10), honest.me(), 4), Outcome::New);
        assert!(me.stats().evicted >= 1);
        // Large adverts hit the byte bound first.
        let before = me.size().1;
        for i in 20_000..20_100 {
            me.handle_gossip(stranger(i, 900), evil.me(), 5);
        }
        assert!(me.size().1 <= 256 * 1024 && me.size().1 >= before.min(200 * 1024));
        // A flooder growing adverts it already placed cannot pass the byte bound either.
        let grown: Vec<Signed> = (1000..1040)
            .map(|i| Advert { seq: 2, ..stranger(i, 1000).advert().clone() }.sign(&stranger_id(i)))
            .collect();
        me.handle_adverts(grown, evil.me(), 6);
        assert!(me.size().1 <= 256 * 1024);
    }

    /// Syncs go in pages: every page fits its budget (one advert at least), pages continue where the last stopped,
    /// and together they bring everything the digest lacks.
    #[test]
    fn a_sync_in_pages_brings_everything_within_each_budget() {
        let (mut a, mut b) = (node(1), node(2));
        for i in 0..300 {
            a.handle_gossip(stranger(i, 100), stranger(i, 100).node(), 1);
        }
        let mut range = KeyRange::ALL;
        let mut pages = 0;
        loop {
            let digest = b.digest_range(&range);
            let (adverts, next) = a.handle_sync_range(b.me(), &range, &digest, 4096, 2);
            let bytes: usize = adverts.iter().map(Signed::wire_len).sum();
            assert!(bytes <= 4096 && !adverts.is_empty());
            assert!(adverts.iter().all(|s| range.contains(&s.node())));
            b.handle_adverts(adverts, a.me(), 2);
            pages += 1;
            match next {
                Some(k) => range.start = k,
                None => break,
            }
            assert!(pages < 100);
        }
        assert!(pages > 5, "{pages} pages");
        assert_eq!(b.size().0, 302, "all 300 strangers, a and b");
        // A page of a narrower range only covers its range.
        let mid = b.digest()[150].0;
        let half = KeyRange { start: NodeKey([0; 32]), end: Some(mid) };
        let (lower, next) = a.handle_sync_range(b.me(), &half, &[], usize::MAX, 3);
        assert!(next.is_none() && lower.iter().all(|s| s.node() < mid));
    }

    /// The buckets of every summary size tile the key space, in order.
    #[test]
    fn summary_buckets_tile_the_key_space() {
        for bits in 0..=MAX_SUMMARY_BITS {
            let n = 1usize << bits;
            assert_eq!(KeyRange::bucket(bits, 0).start, NodeKey([0; 32]));
            for i in 0..n - 1 {
                assert_eq!(KeyRange::bucket(bits, i).end, Some(KeyRange::bucket(bits, i + 1).start), "bits {bits}");
            }
            assert_eq!(KeyRange::bucket(bits, n - 1).end, None);
        }
        let mut k = [0u8; 32];
        k[0] = 0x81;
        assert!(KeyRange::bucket(1, 1).contains(&NodeKey(k)) && !KeyRange::bucket(1, 0).contains(&NodeKey(k)));
    }

    /// Gossip lost a message: the summaries of two tables differ in exactly the bucket of the advert one lacks (or
    /// holds older), and a sync of that bucket alone brings it.
    #[test]
    fn summaries_agree_on_equal_tables_and_point_at_the_range_that_differs() {
        let (mut a, mut b) = (node(1), node(2));
        for i in 0..200 {
            a.handle_gossip(stranger(i, 10), stranger(i, 10).node(), 1);
            b.handle_gossip(stranger(i, 10), stranger(i, 10).node(), 1);
        }
        connect(&mut a, &mut b, 2);
        let bits = a.summary_bits();
        assert_eq!((bits, b.summary_bits()), (2, 2), "202 nodes: 4 buckets");
        assert_eq!(a.summary(bits), b.summary(bits));
        // b changes; the gossip of it is lost.
        b.set_local(vec![], None, vec![res("new")], vec![], 3);
        let (sa, sb) = (a.summary(bits), b.summary(bits));
        let differ: Vec<usize> = (0..sa.len()).filter(|&i| sa[i] != sb[i]).collect();
        assert_eq!(differ.len(), 1);
        let range = KeyRange::bucket(bits, differ[0]);
        assert!(range.contains(&b.me()));
        let (adverts, next) = b.handle_sync_range(a.me(), &range, &a.digest_range(&range), usize::MAX, 4);
        assert_eq!((adverts.len(), next), (1, None), "only b's new advert");
        a.handle_adverts(adverts, b.me(), 4);
        assert_eq!(a.summary(bits), b.summary(bits));
        assert_eq!(a.entry(&b.me()).unwrap().advert.advert().resources[0].name, "new");
    }

    /// A node forgotten after the grace period is not brought back by a peer that still holds its advert (periodic
    /// summaries would otherwise pass a dead node to and fro for ever); a newer advert, which only the live node
    /// signs, is taken, and so is the node when it connects.
    #[test]
    fn a_forgotten_node_comes_back_only_with_a_newer_advert() {
        let (mut a, mut b, mut x) = (node(1), node(2), node(3));
        connect(&mut a, &mut x, 0);
        connect(&mut b, &mut x, 0);
        a.handle_disconnected(x.me(), 10);
        a.handle_tick(1100);
        assert!(a.entry(&x.me()).is_none(), "forgotten after grace");
        // b has not forgotten it yet and answers a's digest with it.
        let old = b.handle_sync_request(a.me(), &a.digest(), 1200);
        assert!(old.iter().any(|s| s.node() == x.me()));
        assert_eq!(a.handle_adverts(old, b.me(), 1200), 1, "b's own advert only");
        assert!(a.entry(&x.me()).is_none(), "not brought back by its old advert");
        // x is alive and re-signs: the newer advert is taken.
        x.set_local(vec![], None, vec![res("back")], vec![], 1300);
        let newer = x.entry(&x.me()).unwrap().advert.clone();
        assert_eq!(a.handle_gossip(newer, b.me(), 1300), Outcome::New);
        // Forgotten again, then connected: a connected node is alive, its advert is taken whatever the tombstone.
        a.handle_tick(2500);
        assert!(a.entry(&x.me()).is_none());
        connect(&mut a, &mut x, 2600);
        assert!(a.entry(&x.me()).is_some());
        // Tombstones go after another grace period.
        a.handle_disconnected(x.me(), 2700);
        a.handle_tick(3800);
        assert_eq!(a.tombstones.len(), 1);
        a.handle_tick(4900);
        assert!(a.tombstones.is_empty() && a.tombstone_order.is_empty());
    }
}
