//! The peer table: who owns which overlay address, which X25519 key and which session index, where its packets
//! go (UDP endpoint or the relay path), and the decisions that move a peer between paths. The engine holds one
//! immutable [`Table`] behind an `Arc` and swaps in a new one when the mesh changes; per-peer mutable state sits
//! behind a mutex in each [`Peer`], so the data threads take one lock per batch, never a table-wide one.
//!
//! Path choice, in short: a peer starts on UDP at its first endpoint candidate. A handshake unanswered for
//! [`HANDSHAKE_WAIT`] moves it to the next candidate, and after the last one to the relay path (if the mesh has a
//! connection to it). On the relay path a UDP handshake is tried every [`PROBE_EVERY`]; any packet that
//! authenticates over UDP moves the peer back to UDP at the address it came from (WireGuard's roaming).
//!
//! An endpoint whose route cannot carry a full-size datagram (the kernel refuses the send: the address sits behind
//! a link with a smaller MTU, such as another VPN's tunnel) is marked *narrow*: the peer moves to the next
//! candidate that is not, and is not roamed back to it. If every candidate is narrow, it stays, and its datagrams
//! go out one by one for the kernel to fragment.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use metac_mesh::identity::NodeKey;

/// How long a handshake on one path or endpoint may stay unanswered before the next is tried.
pub const HANDSHAKE_WAIT: Duration = Duration::from_millis(2000);

/// How often a peer on the relay path is offered a UDP handshake again.
pub const PROBE_EVERY: Duration = Duration::from_secs(20);

/// A tunnel without traffic for this long is dropped (a new one is made on the next packet).
pub const IDLE: Duration = Duration::from_secs(180);

/// Most endpoint candidates kept per peer.
pub const MAX_CANDIDATES: usize = 4;

/// The first byte of a WireGuard cookie reply (message type 3).
const COOKIE_REPLY: u8 = 3;

/// Which way a peer's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// WireGuard over UDP, directly.
    Udp,
    /// The same WireGuard datagrams over a mesh stream.
    Relay,
}

impl Path {
    /// `udp` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Udp => "udp",
            Path::Relay => "relay",
        }
    }
}

/// What the node tells the overlay about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// A name for status: the node key in hex, or `guest:NAME` for a stock WireGuard peer.
    pub name: String,
    /// The mesh node, if it is one (guests are not): the relay path needs it.
    pub node: Option<NodeKey>,
    /// Its X25519 public key.
    pub public: [u8; 32],
    /// Its overlay address: the only source address accepted from it.
    pub addr: Ipv6Addr,
    /// UDP endpoints to try, best first.
    pub endpoints: Vec<SocketAddr>,
    /// Changes when the peer restarts (0 if unknown).
    pub epoch: u64,
    /// True while the mesh has a connection to it, so the relay path can carry its packets.
    pub relay: bool,
}

/// Where a peer's datagrams go, as read under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// UDP or the relay.
    pub path: Path,
    /// The UDP endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The endpoint is narrow: one datagram per send, for the kernel to fragment.
    pub narrow: bool,
}

/// Byte and packet counters of one peer.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of inner packets received from it.
    pub rx_bytes: AtomicU64,
    /// Bytes of inner packets sent to it.
    pub tx_bytes: AtomicU64,
    /// Packets from it whose inner source address was not its own, dropped.
    pub spoofed: AtomicU64,
    /// Packets to it dropped for want of a path.
    pub no_path: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The mutable state of one peer.
pub struct PeerState {
    /// The WireGuard tunnel, made on demand.
    pub tunn: Option<Box<Tunn>>,
    /// The current path.
    pub path: Path,
    /// The current UDP endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Endpoint candidates from the mesh.
    pub candidates: Vec<SocketAddr>,
    /// The peer's epoch as last adverted.
    pub epoch: u64,
    /// Whether the relay path is possible.
    pub relay_ok: bool,
    /// Since when a handshake on the current path and endpoint is unanswered.
    pub waiting_since: Option<Instant>,
    /// When UDP was last probed from the relay path.
    pub last_probe: Option<Instant>,
    /// When a packet last went to or came from the peer.
    pub last_active: Instant,
    /// The endpoint was learned from an authenticated packet (it outranks the candidates).
    pub roamed: bool,
    /// Endpoints whose route is narrower than a full-size datagram (at most `MAX_CANDIDATES + 1`).
    pub narrow: Vec<SocketAddr>,
}

/// One peer.
pub struct Peer {
    /// Name for status.
    pub name: String,
    /// Mesh node key, if any.
    pub node: Option<NodeKey>,
    /// X25519 public key.
    pub public: [u8; 32],
    /// Overlay address.
    pub addr: Ipv6Addr,
    /// Our 24-bit session index for it (boringtun puts it in the top bits of its receiver indexes).
    pub index: u32,
    /// Counters.
    pub counters: Counters,
    state: Mutex<PeerState>,
    /// An endpoint a send found narrow, for the timer to act on (a sender may hold the state lock, so it cannot
    /// take it to change the endpoint itself).
    narrow_hint: Mutex<Option<SocketAddr>>,
}

impl Peer {
    /// Locks its state (a poisoned lock is taken over: the state stays consistent field by field).
    pub fn state(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A send to `ep` was refused as too large for its route.
    pub fn hint_narrow(&self, ep: SocketAddr) {
        *self.narrow_hint.lock().unwrap_or_else(|e| e.into_inner()) = Some(ep);
    }

    /// The endpoint last found narrow, once.
    pub fn take_narrow_hint(&self) -> Option<SocketAddr> {
        self.narrow_hint.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The peer table.
#[derive(Default)]
pub struct Table {
    peers: Vec<Arc<Peer>>,
    by_addr: HashMap<Ipv6Addr, usize>,
    by_public: HashMap<[u8; 32], usize>,
    by_index: HashMap<u32, usize>,
}

impl Table {
    /// The peer owning overlay address `addr`.
    pub fn by_addr(&self, addr: &Ipv6Addr) -> Option<&Arc<Peer>> {
        self.by_addr.get(addr).map(|&i| &self.peers[i])
    }

    /// The peer with X25519 public key `public`.
    pub fn by_public(&self, public: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_public.get(public).map(|&i| &self.peers[i])
    }

    /// The peer a receiver index of ours belongs to.
    pub fn by_receiver_index(&self, receiver_idx: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver_idx >> 8)).map(|&i| &self.peers[i])
    }

    /// Every peer.
    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }

    /// A new table for `infos`, keeping the state of peers already in `self` (same key and address). A peer whose
    /// epoch changed lost its sessions with us: its tunnel is reset and it starts over on UDP. `next_index` hands
    /// out session indexes to new peers. Duplicate addresses or keys keep the first.
    pub fn update(&self, infos: Vec<PeerInfo>, next_index: &mut u32, now: Instant) -> Table {
        let mut t = Table::default();
        for info in infos {
            if t.by_addr.contains_key(&info.addr) || t.by_public.contains_key(&info.public) {
                continue;
            }
            let mut candidates = info.endpoints;
            candidates.truncate(MAX_CANDIDATES);
            let peer = match self.by_public(&info.public).filter(|p| p.addr == info.addr) {
                Some(p) => {
                    let mut st = p.state();
                    if info.epoch != st.epoch && info.epoch != 0 {
                        if st.epoch != 0 {
                            // It restarted: sessions with the old process are dead.
                            st.tunn = None;
                            st.path = Path::Udp;
                            st.roamed = false;
                            st.waiting_since = None;
                            st.narrow.clear();
                        }
                        st.epoch = info.epoch;
                    }
                    let changed = st.candidates != candidates;
                    st.candidates = candidates;
                    let on_narrow = st.endpoint.is_some_and(|e| st.is_narrow(e));
                    if (changed && (!st.roamed || on_narrow)) || st.endpoint.is_none() {
                        let best = st.best_candidate();
                        // Off a narrow endpoint only for a wider one.
                        if !on_narrow || best.is_some_and(|b| !st.is_narrow(b)) {
                            st.endpoint = best;
                            st.roamed = false;
                        }
                    }
                    st.relay_ok = info.relay && p.node.is_some();
                    drop(st);
                    Arc::clone(p)
                }
                None => {
                    let index = take_index(next_index, &self.by_index, &t.by_index);
                    Arc::new(Peer {
                        name: info.name,
                        node: info.node,
                        public: info.public,
                        addr: info.addr,
                        index,
                        counters: Counters::default(),
                        state: Mutex::new(PeerState {
                            tunn: None,
                            path: Path::Udp,
                            endpoint: candidates.first().copied(),
                            candidates,
                            epoch: info.epoch,
                            relay_ok: info.relay && info.node.is_some(),
                            waiting_since: None,
                            last_probe: None,
                            last_active: now,
                            roamed: false,
                            narrow: vec![],
                        }),
                        narrow_hint: Mutex::new(None),
                    })
                }
            };
            let i = t.peers.len();
            t.by_addr.insert(peer.addr, i);
            t.by_public.insert(peer.public, i);
            t.by_index.insert(peer.index, i);
            t.peers.push(peer);
        }
        t
    }
}

fn take_index(next: &mut u32, old: &HashMap<u32, usize>, new: &HashMap<u32, usize>) -> u32 {
    loop {
        *next = (*next + 1) & 0x00ff_ffff;
        if *next != 0 && !old.contains_key(next) && !new.contains_key(next) {
            return *next;
        }
    }
}

/// What the timer asks the engine to do for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    None,
    /// Handshake again (forced) on the current path: the endpoint or path just changed.
    Handshake,
    /// Offer a handshake over UDP to this endpoint while staying on the relay path.
    Probe(SocketAddr),
}

impl PeerState {
    /// A handshake initiation went out on the current path.
    pub fn handshake_sent(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    /// A packet authenticated by the tunnel arrived, over UDP from `from` or over the relay.
    pub fn authenticated(&mut self, from: Option<SocketAddr>, handshake_init: bool, now: Instant) {
        self.last_active = now;
        match from {
            // Roaming to a narrow endpoint would undo the move away from it.
            Some(addr) if self.is_narrow(addr) && self.endpoint.is_some_and(|e| !self.is_narrow(e)) => {
                self.path = Path::Udp;
                self.waiting_since = None;
            }
            Some(addr) => {
                self.endpoint = Some(addr);
                self.roamed = true;
                self.path = Path::Udp;
                self.waiting_since = None;
            }
            None => {
                // The peer came over the relay to start a session: UDP failed on its side; answer that way.
                if handshake_init && self.relay_ok {
                    self.path = Path::Relay;
                }
                if self.path == Path::Relay {
                    self.waiting_since = None;
                }
            }
        }
    }

    /// The tunnel answered a datagram from the peer with `reply`: the datagram was the peer's, unless the answer is a
    /// cookie reply. boringtun's rate limiter writes one, under handshake load, for any handshake message whose mac1
    /// is valid, and anyone who knows our public key can compute that: such an answer proves nothing and moves
    /// nothing.
    pub fn answered(&mut self, reply: &[u8], from: Option<SocketAddr>, handshake_init: bool, now: Instant) {
        if reply.first() != Some(&COOKIE_REPLY) {
            self.authenticated(from, handshake_init, now);
        }
    }

    /// The timer's decision. A live session does not excuse an unanswered handshake: boringtun starts one when its
    /// packets go unanswered, and the endpoint may have died under the session (the peer moved to another address);
    /// only an authenticated packet clears the wait.
    pub fn step(&mut self, now: Instant) -> Step {
        let Some(since) = self.waiting_since else {
            return self.probe(now);
        };
        if now.duration_since(since) < HANDSHAKE_WAIT {
            return Step::None;
        }
        // Unanswered: try the next UDP candidate, then the relay.
        if self.path == Path::Udp {
            let next =
                self.endpoint.and_then(|e| self.candidates.iter().position(|c| *c == e)).map(|i| i + 1).unwrap_or(0);
            if !self.roamed && next < self.candidates.len() {
                self.endpoint = Some(self.candidates[next]);
                self.waiting_since = Some(now);
                return Step::Handshake;
            }
            if self.relay_ok {
                self.path = Path::Relay;
                self.roamed = false;
                self.endpoint = self.best_candidate();
                self.waiting_since = Some(now);
                self.last_probe = Some(now);
                return Step::Handshake;
            }
            // Nothing else to try: start over at the first candidate (boringtun keeps retrying). A peer with no
            // candidates (a guest) keeps the endpoint it roamed to.
            if let Some(b) = self.best_candidate() {
                self.roamed = false;
                self.endpoint = Some(b);
            }
            self.waiting_since = Some(now);
            return Step::None;
        }
        self.waiting_since = None;
        Step::None
    }

    /// The kernel refused a full-size datagram to `ep`: its route is narrower. Moves the peer to the first candidate
    /// that is not narrow and returns it (a handshake should go there at once); `None` if there is none, and the
    /// peer stays where it is.
    pub fn too_narrow(&mut self, ep: SocketAddr, now: Instant) -> Option<SocketAddr> {
        if !self.narrow.contains(&ep) {
            if self.narrow.len() > MAX_CANDIDATES {
                self.narrow.remove(0);
            }
            self.narrow.push(ep);
        }
        if self.endpoint != Some(ep) {
            return None; // moved already
        }
        let next = self.best_candidate().filter(|c| !self.is_narrow(*c))?;
        self.endpoint = Some(next);
        self.roamed = false;
        self.waiting_since = Some(now);
        Some(next)
    }

    /// Where datagrams go now.
    pub fn route(&self) -> Route {
        Route { path: self.path, endpoint: self.endpoint, narrow: self.endpoint.is_some_and(|e| self.is_narrow(e)) }
    }

    /// The first candidate not found narrow, else the first.
    fn best_candidate(&self) -> Option<SocketAddr> {
        self.candidates.iter().copied().find(|c| !self.is_narrow(*c)).or_else(|| self.candidates.first().copied())
    }

    /// Whether `ep` was found narrower than a full-size datagram.
    pub fn is_narrow(&self, ep: SocketAddr) -> bool {
        self.narrow.contains(&ep)
    }

    /// True once the tunnel has carried nothing for [`IDLE`]: it is dropped (and made again on the next packet).
    pub fn is_idle(&self, now: Instant) -> bool {
        now.duration_since(self.last_active) > IDLE
    }

    fn probe(&mut self, now: Instant) -> Step {
        if self.path != Path::Relay || self.last_probe.is_some_and(|t| now.duration_since(t) < PROBE_EVERY) {
            return Step::None;
        }
        self.last_probe = Some(now);
        match self.candidates.first() {
            Some(&e) => Step::Probe(e),
            None => Step::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(n: u8, endpoints: &[&str], epoch: u64, relay: bool) -> PeerInfo {
        PeerInfo {
            name: format!("n{n}"),
            node: Some(NodeKey([n; 32])),
            public: [n; 32],
            addr: Ipv6Addr::new(0xfd6f, 0xe1da, 0xf01c, 0, 0, 0, 0, n as u16),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            epoch,
            relay,
        }
    }

    #[test]
    fn lookups_and_indexes() {
        let now = Instant::now();
        let mut next = 0;
        let t =
            Table::default().update(vec![info(1, &["[fd00::1]:1"], 1, true), info(2, &[], 1, true)], &mut next, now);
        let p1 = t.by_addr(&info(1, &[], 0, false).addr).unwrap();
        assert_eq!(p1.name, "n1");
        assert_eq!(t.by_public(&[2; 32]).unwrap().name, "n2");
        assert_eq!(t.by_receiver_index(p1.index << 8 | 3).unwrap().name, "n1");
        assert_ne!(p1.index, t.by_public(&[2; 32]).unwrap().index);
        assert!(t.by_addr(&Ipv6Addr::LOCALHOST).is_none());
        // A duplicate address or key is ignored.
        let t2 = t.update(vec![info(1, &[], 1, true), info(1, &[], 1, true)], &mut next, now);
        assert_eq!(t2.peers().len(), 1);
        // State survives an update.
        assert!(Arc::ptr_eq(t2.by_public(&[1; 32]).unwrap(), t.by_public(&[1; 32]).unwrap()));
    }

    #[test]
    fn a_restart_resets_the_tunnel_and_the_roamed_endpoint() {
        let now = Instant::now();
        let mut next = 0;
        let t = Table::default().update(vec![info(1, &["[fd00::1]:1"], 1, true)], &mut next, now);
        let p = Arc::clone(t.by_public(&[1; 32]).unwrap());
        p.state().authenticated(Some("[fd00::9]:9".parse().unwrap()), false, now);
        // Same epoch: the roamed endpoint stays.
        let t = t.update(vec![info(1, &["[fd00::1]:1"], 1, true)], &mut next, now);
        assert_eq!(p.state().endpoint, Some("[fd00::9]:9".parse().unwrap()));
        // New epoch and port: back to the adverted endpoint.
        let _t = t.update(vec![info(1, &["[fd00::1]:2"], 2, true)], &mut next, now);
        let st = p.state();
        assert_eq!(st.endpoint, Some("[fd00::1]:2".parse().unwrap()));
        assert!(!st.roamed);
        assert_eq!(st.epoch, 2);
    }

    #[test]
    fn unanswered_handshakes_walk_the_candidates_then_the_relay_then_probe() {
        let t0 = Instant::now();
        let mut next = 0;
        let t = Table::default().update(vec![info(1, &["[fd00::1]:1", "[fd00::2]:1"], 1, true)], &mut next, t0);
        let p = t.by_public(&[1; 32]).unwrap();
        let mut st = p.state();
        assert_eq!(st.step(t0), Step::None);
        st.handshake_sent(t0);
        assert_eq!(st.step(t0 + HANDSHAKE_WAIT / 2), Step::None);
        let t1 = t0 + HANDSHAKE_WAIT;
        assert_eq!(st.step(t1), Step::Handshake);
        assert_eq!(st.endpoint, Some("[fd00::2]:1".parse().unwrap()));
        let t2 = t1 + HANDSHAKE_WAIT;
        assert_eq!(st.step(t2), Step::Handshake);
        assert_eq!(st.path, Path::Relay);
        // The relay answers.
        st.authenticated(None, false, t2);
        assert_eq!(st.step(t2 + Duration::from_secs(1)), Step::None);
        assert_eq!(st.step(t2 + PROBE_EVERY), Step::Probe("[fd00::1]:1".parse().unwrap()));
        assert_eq!(st.step(t2 + PROBE_EVERY + Duration::from_secs(1)), Step::None);
        // UDP works again.
        st.authenticated(Some("[fd00::1]:1".parse().unwrap()), false, t2 + PROBE_EVERY);
        assert_eq!(st.path, Path::Udp);
    }

    #[test]
    fn an_endpoint_that_dies_under_a_live_session_is_left() {
        let t0 = Instant::now();
        let mut next = 0;
        let t = Table::default().update(vec![info(1, &["[fd00::1]:1", "[fd00::2]:1"], 1, true)], &mut next, t0);
        let mut st = t.by_public(&[1; 32]).unwrap().state();
        st.authenticated(Some("[fd00::9]:1".parse().unwrap()), false, t0); // roamed, session up
                                                                           // A rekey handshake answered in time changes nothing.
        st.handshake_sent(t0);
        st.authenticated(Some("[fd00::9]:1".parse().unwrap()), false, t0 + HANDSHAKE_WAIT / 2);
        assert_eq!(st.step(t0 + HANDSHAKE_WAIT), Step::None);
        assert_eq!((st.path, st.endpoint), (Path::Udp, Some("[fd00::9]:1".parse().unwrap())));
        // Unanswered while the session still lives: off to the relay, which probes the candidates.
        let t1 = t0 + HANDSHAKE_WAIT;
        st.handshake_sent(t1);
        assert_eq!(st.step(t1 + HANDSHAKE_WAIT), Step::Handshake);
        assert_eq!(st.path, Path::Relay);
    }

    #[test]
    fn a_guest_keeps_its_roamed_endpoint_when_nothing_else_is_known() {
        let t0 = Instant::now();
        let mut next = 0;
        let t = Table::default().update(vec![info(1, &[], 0, false)], &mut next, t0);
        let mut st = t.by_public(&[1; 32]).unwrap().state();
        let ep: SocketAddr = "[fd00::7]:41641".parse().unwrap();
        st.authenticated(Some(ep), true, t0);
        st.handshake_sent(t0);
        assert_eq!(st.step(t0 + HANDSHAKE_WAIT), Step::None);
        assert_eq!(st.endpoint, Some(ep));
    }

    #[test]
    fn tunnels_go_idle_after_the_timeout_and_traffic_keeps_them() {
        let t0 = Instant::now();
        let mut next = 0;
        let t = Table::default().update(vec![info(1, &["[fd00::1]:1"], 1, true)], &mut next, t0);
        let mut st = t.by_public(&[1; 32]).unwrap().state();
        assert!(!st.is_idle(t0 + IDLE));
        st.authenticated(None, false, t0 + IDLE);
        assert!(!st.is_idle(t0 + IDLE + IDLE / 2), "a packet resets the idle clock");
        assert!(st.is_idle(t0 + IDLE * 2 + Duration::from_millis(1)));
    }

    #[test]
    fn a_narrow_endpoint_is_left_and_not_roamed_back_to() {
        let t0 = Instant::now();
        let mut next = 0;
        let (a, b, c) = ("[fd00:88::2]:1".parse().unwrap(), "[fd00:77::2]:1".parse().unwrap(), "[fd00:99::2]:1");
        let t = Table::default().update(vec![info(1, &["[fd00:88::2]:1", "[fd00:77::2]:1"], 1, true)], &mut next, t0);
        let mut st = t.by_public(&[1; 32]).unwrap().state();
        assert_eq!(st.endpoint, Some(a));
        assert_eq!(st.too_narrow(a, t0), Some(b));
        assert_eq!(st.endpoint, Some(b));
        assert!(st.waiting_since.is_some(), "the new endpoint is handshaken");
        // The peer still sends from the narrow address: we stay on the wide one.
        st.authenticated(Some(a), false, t0);
        assert_eq!(st.endpoint, Some(b));
        // Roaming elsewhere still works.
        st.authenticated(Some(c.parse().unwrap()), false, t0);
        assert_eq!(st.endpoint, Some(c.parse().unwrap()));
        // Every candidate narrow: stay put.
        assert_eq!(st.too_narrow(c.parse().unwrap(), t0), Some(b));
        assert_eq!(st.too_narrow(b, t0), None);
        assert_eq!(st.endpoint, Some(b));
        assert!(st.is_narrow(b) && st.is_narrow(a));
        // A late refusal for an endpoint already left changes nothing.
        assert_eq!(st.too_narrow(a, t0), None);
        assert_eq!(st.endpoint, Some(b));
        drop(st);
        // A new candidate that is not known narrow: the peer moves there.
        let t =
            t.update(vec![info(1, &["[fd00:88::2]:1", "[fd00:77::2]:1", "[fd00:66::2]:1"], 1, true)], &mut next, t0);
        let mut st = t.by_public(&[1; 32]).unwrap().state();
        assert_eq!(st.endpoint, Some("[fd00:66::2]:1".parse().unwrap()));
        // A roamed, wide endpoint stays when the candidates do not change.
        let roamed: SocketAddr = "[fd00:55::2]:1".parse().unwrap();
        st.authenticated(Some(roamed), false, t0);
        drop(st);
        let t =
            t.update(vec![info(1, &["[fd00:88::2]:1", "[fd00:77::2]:1", "[fd00:66::2]:1"], 1, true)], &mut next, t0);
        assert_eq!(t.by_public(&[1; 32]).unwrap().state().endpoint, Some(roamed));
        // A restart forgets what was narrow.
        let t = t.update(vec![info(1, &["[fd00:88::2]:1", "[fd00:77::2]:1"], 2, true)], &mut next, t0);
        assert!(t.by_public(&[1; 32]).unwrap().state().narrow.is_empty());
    }

    /// Attack: under handshake load (over 100 a second, which anyone can send), boringtun answers any handshake
    /// message with a valid mac1 with a cookie reply, and mac1 needs only our public key. The engine took that answer
    /// for proof that the peer had spoken, so a forged handshake response naming a peer's receiver index moved that
    /// peer's endpoint to the forger's address and took it off the relay path.
    #[test]
    fn a_forged_handshake_response_under_load_does_not_move_the_endpoint() {
        use blake2::digest::{FixedOutput, KeyInit, Update};
        use boringtun::noise::rate_limiter::RateLimiter;
        use boringtun::noise::TunnResult;
        use boringtun::x25519::{PublicKey, StaticSecret};

        let t0 = Instant::now();
        let ours = StaticSecret::from([7; 32]);
        let public = PublicKey::from(&ours);
        let mut next = 0;
        let t = Table::default().update(vec![info(1, &["[fd00::1]:1"], 1, true)], &mut next, t0);
        let peer = t.by_public(&[1; 32]).unwrap();
        // A handshake response of zeros but for its type, the peer's receiver index and a valid mac1.
        let mut forged = [0u8; 92];
        forged[0] = 2;
        forged[8..12].copy_from_slice(&(peer.index << 8).to_le_bytes());
        let mut key = blake2::Blake2s256::default();
        Update::update(&mut key, b"mac1----");
        Update::update(&mut key, public.as_bytes());
        let mut mac1 =
            blake2::Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(&key.finalize_fixed()).unwrap();
        Update::update(&mut mac1, &forged[..60]);
        forged[60..76].copy_from_slice(&mac1.finalize_fixed());
        // Under load (a limit of 0: every handshake message is over it).
        let limiter = Arc::new(RateLimiter::new(&public, 0));
        let mut tunn = Tunn::new(ours, PublicKey::from(peer.public), None, None, peer.index, Some(limiter));
        let forger: SocketAddr = "[fd00::66]:4000".parse().unwrap();
        let mut out = [0u8; 256];
        let TunnResult::WriteToNetwork(reply) = tunn.decapsulate(Some(forger.ip()), &forged, &mut out) else {
            panic!("boringtun answers a forged response under load with a cookie reply")
        };
        let mut st = peer.state();
        st.answered(reply, Some(forger), false, t0);
        assert_eq!((st.endpoint, st.roamed), (Some("[fd00::1]:1".parse().unwrap()), false));
        st.path = Path::Relay;
        st.answered(reply, Some(forger), true, t0);
        assert_eq!(st.path, Path::Relay);
        // A real answer (a handshake response, a keepalive) still roams.
        st.answered(&[2, 0, 0, 0], Some(forger), false, t0);
        assert_eq!((st.endpoint, st.path), (Some(forger), Path::Udp));
    }

    #[test]
    fn without_relay_a_peer_stays_on_udp() {
        let t0 = Instant::now();
        let mut next = 0;
        let t = Table::default().update(vec![info(1, &["[fd00::1]:1"], 1, false)], &mut next, t0);
        let mut st = t.by_public(&[1; 32]).unwrap().state();
        st.handshake_sent(t0);
        assert_eq!(st.step(t0 + HANDSHAKE_WAIT), Step::None);
        assert_eq!(st.path, Path::Udp);
        // A relay handshake from a peer is answered on the relay only if the relay is possible.
        st.authenticated(None, true, t0);
        assert_eq!(st.path, Path::Udp);
    }
}
