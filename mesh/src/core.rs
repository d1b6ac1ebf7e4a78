//! The sans-IO mesh core: membership, the advert table and anti-entropy decisions. It takes events and the time
//! as arguments and queues actions for its driver; it owns no sockets, no timers and no tasks. The libp2p driver
//! feeds it in a real node, and the simulator runs thousands of it in one process.
//!
//! Protocol, in short: every node signs one advert about itself (last seq wins). When a connection comes up both
//! ends send a digest (node -> seq) and answer the other's digest with every advert the other lacks or has older,
//! so one round trip converges two tables. Changes spread by gossip in between. A node we are connected to is
//! reachable; when the last connection drops it is unreachable at once, and its advert is forgotten only after
//! `grace` without news of it, so a short partition never wipes the view.

use std::collections::{HashMap, VecDeque};

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
}

impl Default for Config {
    fn default() -> Self {
        Config { grace: 10 * 60_000, refresh: 3 * 60_000 }
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
    peers: HashMap<NodeKey, Peer>,
    actions: VecDeque<Action>,
    own_signed_at: Millis,
    stats: Stats,
}

impl Core {
    /// A core whose own advert starts at `seq` (the driver persists the last seq so restarts keep increasing it).
    pub fn new(id: Identity, config: Config, seq: u64, now: Millis) -> Core {
        let me = id.public();
        let advert = Advert { node: me, seq, addrs: vec![], tunnel: None, resources: vec![], revoked: vec![] };
        let signed = advert.sign(&id);
        let mut table = HashMap::new();
        table.insert(me, Entry { advert: signed, last_heard: now });
        Core {
            id,
            me,
            config,
            table,
            peers: HashMap::new(),
            actions: VecDeque::new(),
            own_signed_at: now,
            stats: Stats::default(),
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
        self.table.insert(self.me, Entry { advert: signed.clone(), last_heard: now });
        self.own_signed_at = now;
        self.actions.push_back(Action::Publish(signed));
    }

    /// A connection to `peer` came up.
    pub fn handle_connected(&mut self, peer: NodeKey, via: Via, now: Millis) {
        let p = self.peers.entry(peer).or_insert(Peer { connections: 0, via, last_seen: now });
        p.connections += 1;
        p.last_seen = now;
        if let Some(e) = self.table.get_mut(&peer) {
            e.last_heard = now;
        }
        if p.connections == 1 {
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
        let mut d: Vec<_> = self.table.iter().map(|(k, e)| (*k, e.advert.seq())).collect();
        d.sort_unstable();
        d
    }

    /// Answers a peer's digest with every advert it lacks or has older.
    pub fn handle_sync_request(&mut self, from: NodeKey, digest: &[(NodeKey, u64)], now: Millis) -> Vec<Signed> {
        if let Some(p) = self.peers.get_mut(&from) {
            p.last_seen = now;
        }
        let theirs: HashMap<NodeKey, u64> = digest.iter().copied().collect();
        let mut out: Vec<Signed> = self
            .table
            .iter()
            .filter(|(k, e)| theirs.get(k).is_none_or(|&seq| seq < e.advert.seq()))
            .map(|(_, e)| e.advert.clone())
            .collect();
        out.sort_unstable_by_key(|s| s.node());
        // Their own advert is newer than the one we hold: a change gossip did not bring us (the driver sends a sync
        // to a connected peer that gossip cannot reach when it publishes). Pull it.
        if let (Some(&seq), Some(e)) = (theirs.get(&from), self.table.get(&from)) {
            if seq > e.advert.seq() {
                self.actions.push_back(Action::SendSync { to: from, digest: self.digest() });
            }
        }
        // A digest is unsigned: what it claims of our own seq moves nothing. If they really hold a newer advert of
        // ours (we lost state), their answer to our digest carries it, signed, and `accept` jumps past that.
        out
    }

    /// Adverts arrived (a sync response or gossip). Returns how many were new.
    pub fn handle_adverts(&mut self, adverts: Vec<Signed>, now: Millis) -> usize {
        adverts.into_iter().filter(|a| self.accept(a.clone(), now)).count()
    }

    /// One advert arrived by gossip. Returns true if it was new.
    pub fn handle_gossip(&mut self, advert: Signed, now: Millis) -> bool {
        self.accept(advert, now)
    }

    fn accept(&mut self, advert: Signed, now: Millis) -> bool {
        let node = advert.node();
        if node == self.me {
            // Someone has an advert of ours newer than ours: we restarted without our seq. Jump past it; only an
            // advert we signed can move our seq, and never to the end of the range.
            if advert.seq() >= self.own().seq && advert.seq() < MAX_SEQ && advert.verify().is_ok() {
                let mut a = self.own().clone();
                a.seq = next_seq(advert.seq());
                self.install_own(a, now);
            }
            return false;
        }
        if advert.seq() > MAX_SEQ {
            self.stats.refused += 1;
            return false;
        }
        if let Some(e) = self.table.get_mut(&node) {
            if advert.seq() <= e.advert.seq() {
                if advert.seq() == e.advert.seq() {
                    e.last_heard = now;
                }
                self.stats.stale += 1;
                return false;
            }
        }
        if advert.verify().is_err() {
            self.stats.refused += 1;
            return false;
        }
        self.stats.accepted += 1;
        let addrs = advert.advert().addrs.clone();
        self.table.insert(node, Entry { advert, last_heard: now });
        self.actions.push_back(Action::Event(Event::Updated { node, addrs }));
        true
    }

    /// Time passes: refreshes our own advert and forgets nodes unheard of for the grace period.
    pub fn handle_tick(&mut self, now: Millis) {
        if now.saturating_sub(self.own_signed_at) >= self.config.refresh {
            let mut a = self.own().clone();
            a.seq = next_seq(a.seq);
            self.install_own(a, now);
        }
        let grace = self.config.grace;
        let me = self.me;
        let peers = &self.peers;
        let mut expired = vec![];
        self.table.retain(|k, e| {
            let connected = peers.get(k).is_some_and(|p| p.connections > 0);
            let keep = *k == me || connected || now.saturating_sub(e.last_heard) < grace;
            if !keep {
                expired.push(*k);
            }
            keep
        });
        for node in expired {
            self.peers.remove(&node);
            self.actions.push_back(Action::Event(Event::Expired { node }));
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
        Core::new(Identity::from_secret([seed; 32]), Config { grace: 1000, refresh: 500 }, 0, 0)
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
        a.handle_adverts(to_a, now);
        b.handle_adverts(to_b, now);
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
        assert_eq!(a.handle_adverts(to_a, 4), 1);
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
        assert!(a.handle_gossip(v2, 3));
        assert!(!a.handle_gossip(v1, 4));
        assert_eq!(a.entry(&b.me()).unwrap().advert.advert().resources[0].name, "v2");
        assert_eq!(a.stats().stale, 1);
    }

    #[test]
    fn forged_gossip_is_refused() {
        let (mut a, b) = (node(1), node(2));
        let evil = Identity::from_secret([66; 32]);
        let honest = Advert { node: evil.public(), ..b.own().clone() }.sign(&evil);
        assert!(a.handle_gossip(honest, 1), "a correctly signed advert of evil is fine");
        // Claims to be b's, signed by evil.
        let forged = Advert { node: b.me(), seq: 99, ..b.own().clone() }.sign(&evil);
        assert!(!a.handle_gossip(forged, 2));
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
        a.handle_gossip(b.entry(&b.me()).unwrap().advert.clone(), 0);
        for t in (0..5000).step_by(400) {
            b.handle_tick(t);
            for act in drain(&mut b) {
                if let Action::Publish(s) = act {
                    a.handle_gossip(s, t);
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
                a.handle_gossip(s, 9);
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
        assert!(peer.handle_gossip(published, 4), "the mesh still takes the victim's adverts");
        // A hostile node signs its own advert at the end of the range: refused, not kept as the last word.
        let evil = Identity::from_secret([66; 32]);
        let huge = Advert { node: evil.public(), seq: u64::MAX, ..peer.own().clone() }.sign(&evil);
        assert!(!peer.handle_gossip(huge, 5));
        assert!(peer.entry(&evil.public()).is_none());
        // Our own seq never passes the end either.
        assert_eq!(next_seq(u64::MAX), MAX_SEQ);
    }
}
