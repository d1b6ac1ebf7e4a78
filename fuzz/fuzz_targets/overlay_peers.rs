//! Fuzzes the overlay's input with a populated peer table: WireGuard datagrams over UDP and relay frames from any
//! source, handshake-like packets (any type, a peer's receiver index, a valid mac1 if asked: anyone who knows our
//! public key can compute it) alone or in floods, with honest peers whose tunnels really handshake with ours, peer
//! set updates (epochs, endpoints, relay reachability, a node learned late), timers and narrow endpoints.
//!
//! The engine's datagram path (`engine/datagram.rs`) needs a TUN device and a UDP socket, which a fuzz target must
//! not open, so this target drives the same decisions through the public, pure parts the engine is built on: the
//! peer table (`metac_overlay::table`: lookups by key, address and receiver index, path and endpoint choice),
//! boringtun's tunnels keyed and indexed from that table, its rate limiter, relay framing and `packet`. The steps of
//! `handle_datagram`, `set_peers`, `send_run` and the timer loop are followed here one for one; keep them in step.
//!
//! Checks: nothing panics; a packet reaches the TUN only if the peer whose tunnel decrypted it sent it, from its
//! own overlay address, and no more often than it sent it (no forgery, spoofing or replay); a peer's endpoint is
//! only ever one of its adverted candidates or an address a genuine datagram of that peer came from (nothing
//! unauthenticated moves it); the relay path is taken only by mesh nodes; a peer keeps its state across updates
//! unless it restarted, and the table's three indexes agree.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use blake2::digest::{FixedOutput, KeyInit, Update};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use libfuzzer_sys::fuzz_target;
use metac_mesh::{Identity, NodeKey};
use metac_overlay::table::{Path, Peer, PeerInfo, Route, Step, Table, MAX_CANDIDATES};
use metac_overlay::{packet, relay};

/// The engine's figures.
const HANDSHAKE_RATE: u64 = 100;
const PENDING: usize = 16;
const MTU: usize = 1420;
const WG_OVERHEAD: usize = 32;
/// Most operations per input.
const MAX_OPS: usize = 48;

/// UDP addresses in play: the peers' adverted endpoints first, then others (an attacker's among them).
const ADDRS: [&str; 9] = [
    "[fd00::2]:51820",
    "[fd00::3]:51820",
    "[fd00::33]:51820",
    "[fd00::5]:51820",
    "[fd00::7]:51820",
    "10.0.0.9:51820",
    "[fd00::66]:4000",
    "[fd00::67]:4000",
    "192.0.2.1:9",
];

/// Reads the input a few bytes at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.0 = rest;
        b
    }

    fn u32(&mut self) -> u32 {
        (0..4).fold(0u32, |v, _| v << 8 | u32::from(self.u8()))
    }

    fn index(&mut self, len: usize) -> Option<usize> {
        (len > 0).then(|| usize::from(self.u8()) % len)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.u8()) % (max + 1);
        (0..n).map(|_| self.u8()).collect()
    }

    fn addr(&mut self) -> SocketAddr {
        ADDRS[usize::from(self.u8()) % ADDRS.len()].parse().expect("address")
    }
}

/// A node or guest that may be our peer: its keys, overlay address, what the mesh adverts of it.
struct Who {
    node: Option<NodeKey>,
    secret: StaticSecret,
    public: [u8; 32],
    addr: Ipv6Addr,
    endpoints: Vec<SocketAddr>,
    relay: bool,
}

/// Our keys and the candidate peers, made once: seed 1 is us; 2..=7 nodes with one endpoint and the relay, two
/// endpoints and no relay, the relay only, one endpoint and the relay, a guest (no node, no endpoint), and a node
/// the table learns of late.
struct Keys {
    secret: StaticSecret,
    public: PublicKey,
    addr: Ipv6Addr,
    who: Vec<Who>,
    /// A node that is no peer of ours.
    stranger: NodeKey,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let addrs: Vec<SocketAddr> = ADDRS.iter().map(|a| a.parse().expect("address")).collect();
        let who = (2u8..=7)
            .map(|seed| {
                let id = Identity::from_secret([seed; 32]);
                let secret = StaticSecret::from(id.x25519_secret());
                let public = PublicKey::from(&secret).to_bytes();
                let guest = seed == 6;
                let endpoints = match seed {
                    2 => vec![addrs[0]],
                    3 => vec![addrs[1], addrs[2]],
                    5 => vec![addrs[3]],
                    7 => vec![addrs[4]],
                    _ => vec![],
                };
                Who {
                    node: (!guest).then(|| id.public()),
                    addr: if guest {
                        Ipv6Addr::new(0xfd6f, 0xe1da, 0xf01c, 0xff, 0, 0, 0, 6)
                    } else {
                        id.overlay_addr()
                    },
                    secret,
                    public,
                    endpoints,
                    relay: matches!(seed, 2 | 4 | 5 | 7),
                }
            })
            .collect();
        let us = Identity::from_secret([1; 32]);
        let secret = StaticSecret::from(us.x25519_secret());
        let stranger = Identity::from_secret([9; 32]).public();
        Keys { public: PublicKey::from(&secret), secret, addr: us.overlay_addr(), who, stranger }
    })
}

/// Where a datagram came from, as the engine sees it.
#[derive(Clone, Copy)]
enum Src {
    Udp(SocketAddr),
    Relay(NodeKey),
}

/// A datagram on its way to us; `from` is the candidate peer whose tunnel made it.
#[derive(Clone)]
struct Dgram {
    from: usize,
    bytes: Vec<u8>,
}

/// One of the candidate peers' side of the tunnels: its own WireGuard tunnel to us (made when first used: making
/// one costs a Diffie-Hellman) and what it sent and received.
#[derive(Default)]
struct Remote {
    tunn: Option<Box<Tunn>>,
    /// Inner packets it handed its tunnel, not yet seen at our TUN.
    sent: HashMap<Vec<u8>, u32>,
    /// Inner packets we handed our tunnel for it, not yet seen at its end.
    from_us: HashMap<Vec<u8>, u32>,
}

/// Takes one `p` off a multiset; false if none was there.
fn take(set: &mut HashMap<Vec<u8>, u32>, p: &[u8]) -> bool {
    match set.get_mut(p) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

fn put(set: &mut HashMap<Vec<u8>, u32>, p: &[u8]) {
    *set.entry(p.to_vec()).or_default() += 1;
}

/// Whether `b` is still the message `a`: a handshake message's mac2 (its last 16 bytes) is checked only under load
/// and covered by nothing else, so a copy that differs there alone is still the peer's.
fn same_message(a: &[u8], b: &[u8]) -> bool {
    let mac2 = match a.first() {
        Some(1) if a.len() == 148 => 132,
        Some(2) if a.len() == 92 => 76,
        _ => a.len(),
    };
    a.len() == b.len() && a[..mac2] == b[..mac2]
}

/// An IPv6 UDP packet from `src` to `dst`.
fn inner(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// WireGuard's mac1 of a handshake message to us: keyed by a hash of our public key alone.
fn mac1(msg: &[u8]) -> [u8; 16] {
    let mut key = blake2::Blake2s256::default();
    Update::update(&mut key, b"mac1----");
    Update::update(&mut key, keys().public.as_bytes());
    let key = key.finalize_fixed();
    let mut mac = blake2::Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(&key).expect("a 32-byte key");
    Update::update(&mut mac, msg);
    mac.finalize_fixed().into()
}

struct World {
    /// The peer table's clock (boringtun keeps its own).
    now: Instant,
    limiter: Arc<RateLimiter>,
    table: Arc<Table>,
    next_index: u32,
    pending_handshakes: Vec<(Src, Vec<u8>)>,
    remotes: Vec<Remote>,
    to_us: Vec<Dgram>,
    to_them: Vec<(usize, Vec<u8>)>,
    /// Every endpoint ever adverted for a key, and every address a genuine datagram of that key came from.
    candidates: HashMap<[u8; 32], HashSet<SocketAddr>>,
    genuine_from: HashSet<([u8; 32], SocketAddr)>,
}

impl World {
    fn new() -> World {
        let k = keys();
        let remotes = k.who.iter().map(|_| Remote::default()).collect();
        let mut world = World {
            now: Instant::now(),
            limiter: Arc::new(RateLimiter::new(&k.public, HANDSHAKE_RATE)),
            table: Arc::new(Table::default()),
            next_index: 0,
            pending_handshakes: vec![],
            remotes,
            to_us: vec![],
            to_them: vec![],
            candidates: HashMap::new(),
            genuine_from: HashSet::new(),
        };
        let infos = (0..5).map(|i| info(i, 1, k.who[i].relay, k.who[i].endpoints.clone())).collect();
        world.set_peers(infos);
        world
    }

    /// Candidate `r`'s tunnel to us.
    fn their_tunn(&mut self, r: usize) -> &mut Tunn {
        let w = &keys().who[r];
        self.remotes[r].tunn.get_or_insert_with(|| {
            Box::new(Tunn::new(w.secret.clone(), keys().public, None, None, 0x100 + r as u32, None))
        })
    }

    fn remote_of(&self, public: &[u8; 32]) -> Option<usize> {
        keys().who.iter().position(|w| w.public == *public)
    }

    fn peer(&self, input: &mut Input) -> Option<Arc<Peer>> {
        let peers = self.table.peers();
        input.index(peers.len()).map(|i| Arc::clone(&peers[i]))
    }

    fn src(&self, input: &mut Input) -> Src {
        match input.u8() % 4 {
            0 => Src::Relay(match input.index(keys().who.len()).and_then(|i| keys().who[i].node) {
                Some(n) => n,
                None => keys().stranger,
            }),
            _ => Src::Udp(input.addr()),
        }
    }

    fn new_tunn(&self, peer: &Peer) -> Box<Tunn> {
        let k = keys();
        let limiter = Some(Arc::clone(&self.limiter));
        Box::new(Tunn::new(k.secret.clone(), PublicKey::from(peer.public), None, None, peer.index, limiter))
    }

    /// `engine/datagram.rs`'s `handle_datagram`: what reaches the TUN, with the peer it came through.
    fn handle(&mut self, src: Src, datagram: &[u8]) -> Option<(Arc<Peer>, Vec<u8>)> {
        let k = keys();
        let table = Arc::clone(&self.table);
        let parsed = Tunn::parse_incoming_packet(datagram).ok()?;
        let udp = match src {
            Src::Udp(a) => Some(a),
            Src::Relay(_) => None,
        };
        let (peer, is_init, is_cookie) = match &parsed {
            Packet::HandshakeInit(p) => {
                let mut cookie = [0u8; 64];
                match self.limiter.verify_packet(udp.map(|a| a.ip()), datagram, &mut cookie) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(_)) => return None, // the cookie goes back to the sender
                    Err(_) => return None,
                }
                let half = parse_handshake_anon(&k.secret, &k.public, p).ok()?;
                match table.by_public(&half.peer_static_public) {
                    Some(peer) => (peer, true, false),
                    None => {
                        if self.pending_handshakes.len() == PENDING {
                            self.pending_handshakes.remove(0);
                        }
                        self.pending_handshakes.push((src, datagram.to_vec()));
                        return None;
                    }
                }
            }
            Packet::HandshakeResponse(p) => (table.by_receiver_index(p.receiver_idx)?, false, false),
            Packet::PacketCookieReply(p) => (table.by_receiver_index(p.receiver_idx)?, false, true),
            Packet::PacketData(p) => (table.by_receiver_index(p.receiver_idx)?, false, false),
        };
        if let Src::Relay(node) = src {
            if peer.node != Some(node) {
                return None;
            }
        }
        let remote = self.remote_of(&peer.public);
        let mut st = peer.state();
        let mut tunn = st.tunn.take().unwrap_or_else(|| self.new_tunn(peer));
        let mut out = vec![0u8; datagram.len().max(MTU + WG_OVERHEAD + 64)];
        let mut result = None;
        match tunn.decapsulate(udp.map(|a| a.ip()), datagram, &mut out) {
            TunnResult::WriteToNetwork(reply) => {
                if !is_cookie {
                    st.answered(reply, udp, is_init, self.now);
                }
                if let Some(r) = remote {
                    self.to_them.push((r, reply.to_vec()));
                }
                let route = st.route();
                while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], &mut out) {
                    let p = p.to_vec();
                    self.transmit(peer, route, p);
                }
            }
            TunnResult::WriteToTunnelV6(p, addr) => {
                st.authenticated(udp, false, self.now);
                if addr == peer.addr {
                    result = Some((Arc::clone(peer), p.to_vec()));
                }
            }
            TunnResult::WriteToTunnelV4(..) => st.authenticated(udp, false, self.now),
            TunnResult::Done => {
                if !is_cookie {
                    st.authenticated(udp, false, self.now);
                }
            }
            TunnResult::Err(_) => {}
        }
        st.tunn = Some(tunn);
        result
    }

    /// Feeds a datagram to `handle` and checks what reaches the TUN.
    fn deliver(&mut self, src: Src, datagram: &[u8], genuine: Option<usize>) {
        if let (Some(r), Src::Udp(a)) = (genuine, src) {
            self.genuine_from.insert((keys().who[r].public, a));
        }
        let Some((peer, p)) = self.handle(src, datagram) else { return };
        let r = self.remote_of(&peer.public).expect("every peer is one of the candidates");
        assert_eq!(packet::src(&p), Some(peer.addr), "a packet with another source reached the TUN");
        assert!(
            take(&mut self.remotes[r].sent, &p),
            "a packet {} did not send (or sent fewer times) reached the TUN",
            peer.name
        );
        if let Src::Relay(node) = src {
            assert_eq!(peer.node, Some(node), "a node relayed another's packet to the TUN");
        }
    }

    /// `engine/tx.rs`'s `transmit`: to the peer's end if there is a path.
    fn transmit(&mut self, peer: &Peer, route: Route, datagram: Vec<u8>) {
        let has_path =
            matches!((route.path, route.endpoint, peer.node), (Path::Udp, Some(_), _) | (Path::Relay, _, Some(_)));
        if let (true, Some(r)) = (has_path, self.remote_of(&peer.public)) {
            self.to_them.push((r, datagram));
        }
    }

    /// `engine/tx.rs`'s `send_run` for one packet from us to `peer`.
    fn send(&mut self, peer: &Peer, payload: &[u8]) {
        let p = inner(keys().addr, peer.addr, payload);
        let r = self.remote_of(&peer.public);
        let mut st = peer.state();
        let mut tunn = st.tunn.take().unwrap_or_else(|| self.new_tunn(peer));
        let mut out = vec![0u8; p.len() + WG_OVERHEAD + 148];
        let (mut handshake, mut datagram, mut taken) = (false, None, true);
        match tunn.encapsulate(&p, &mut out) {
            TunnResult::WriteToNetwork(d) => {
                handshake = d[0] == 1;
                datagram = Some(d.to_vec());
            }
            TunnResult::Err(_) => taken = false,
            _ => {} // queued until the handshake completes
        }
        if let (Some(r), true) = (r, taken) {
            put(&mut self.remotes[r].from_us, &p);
        }
        st.tunn = Some(tunn);
        st.last_active = self.now;
        if handshake {
            st.handshake_sent(self.now);
        }
        let route = st.route();
        drop(st);
        if let Some(d) = datagram {
            self.transmit(peer, route, d);
        }
    }

    /// A datagram we sent reaches the peer's end; its answers come back our way.
    fn arrive(&mut self, r: usize, datagram: &[u8]) {
        let mut out = vec![0u8; datagram.len().max(MTU + WG_OVERHEAD + 64)];
        let mut replies = vec![];
        let tunn = self.their_tunn(r);
        match tunn.decapsulate(None, datagram, &mut out) {
            TunnResult::WriteToNetwork(reply) => {
                replies.push(reply.to_vec());
                while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], &mut out) {
                    replies.push(p.to_vec());
                }
            }
            TunnResult::WriteToTunnelV6(p, _) => {
                let p = p.to_vec();
                assert!(take(&mut self.remotes[r].from_us, &p), "the peer's tunnel gave out a packet we did not send");
            }
            _ => {}
        }
        self.to_us.extend(replies.into_iter().map(|bytes| Dgram { from: r, bytes }));
    }

    /// The peer's end sends an inner packet (from its own address or a forged one) to us.
    fn remote_sends(&mut self, r: usize, input: &mut Input) {
        let k = keys();
        let src = match input.u8() % 4 {
            0 => k.who[input.index(k.who.len()).unwrap_or(0)].addr,
            1 => k.addr,
            _ => k.who[r].addr,
        };
        let p = inner(src, k.addr, &input.bytes(48));
        let mut out = vec![0u8; p.len() + WG_OVERHEAD + 148];
        let (sent, datagram) = match self.their_tunn(r).encapsulate(&p, &mut out) {
            TunnResult::WriteToNetwork(d) => (true, Some(d.to_vec())),
            TunnResult::Err(_) => (false, None),
            _ => (true, None), // queued until its handshake completes
        };
        if sent {
            put(&mut self.remotes[r].sent, &p);
        }
        if let Some(bytes) = datagram {
            self.to_us.push(Dgram { from: r, bytes });
        }
    }

    /// `Overlay::set_peers`: a new table, then the handshakes from keys it did not know replayed.
    fn set_peers(&mut self, infos: Vec<PeerInfo>) {
        let old = Arc::clone(&self.table);
        let epochs: HashMap<[u8; 32], u64> = old.peers().iter().map(|p| (p.public, p.state().epoch)).collect();
        for i in &infos {
            self.candidates.entry(i.public).or_default().extend(i.endpoints.iter().take(MAX_CANDIDATES));
        }
        let new = Arc::new(old.update(infos.clone(), &mut self.next_index, self.now));
        check_table(&old, &new, &infos, &epochs);
        self.table = new;
        for (src, d) in std::mem::take(&mut self.pending_handshakes) {
            let k = keys();
            let known = match Tunn::parse_incoming_packet(&d) {
                Ok(Packet::HandshakeInit(p)) => parse_handshake_anon(&k.secret, &k.public, &p)
                    .is_ok_and(|h| self.table.by_public(&h.peer_static_public).is_some()),
                _ => false,
            };
            if known {
                self.deliver(src, &d, None);
            }
        }
    }

    /// `engine/tx.rs`'s `leave_narrow`.
    fn leave_narrow(&mut self, peer: &Peer, ep: SocketAddr) {
        let mut st = peer.state();
        if let Some(next) = st.too_narrow(ep, self.now) {
            assert!(!st.is_narrow(next) && st.candidates.contains(&next), "moved to a narrow or unknown endpoint");
            let mut buf = [0u8; 256];
            let Some(tunn) = st.tunn.as_mut() else { return };
            if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                let p = p.to_vec();
                st.handshake_sent(self.now);
                drop(st);
                self.transmit(peer, Route { path: Path::Udp, endpoint: Some(next), narrow: false }, p);
            }
        }
    }

    /// `engine/timers.rs`'s loop body, once, for every peer.
    fn timers(&mut self) {
        let table = Arc::clone(&self.table);
        let mut buf = vec![0u8; MTU.max(1500) + 256];
        for peer in table.peers() {
            if let Some(ep) = peer.take_narrow_hint() {
                self.leave_narrow(peer, ep);
            }
            let mut st = peer.state();
            let Some(mut tunn) = st.tunn.take() else { continue };
            let mut keep = true;
            let mut out = vec![];
            match tunn.update_timers(&mut buf) {
                TunnResult::WriteToNetwork(p) => {
                    if p[0] == 1 {
                        st.handshake_sent(self.now);
                    }
                    out.push((st.route(), p.to_vec()));
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => keep = false,
                _ => {}
            }
            match st.step(self.now) {
                Step::None => {}
                Step::Handshake => {
                    if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                        out.push((st.route(), p.to_vec()));
                    }
                }
                Step::Probe(ep) => {
                    assert!(st.path == Path::Relay && st.candidates.first() == Some(&ep), "a probe off the relay");
                    if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                        out.push((Route { path: Path::Udp, endpoint: Some(ep), narrow: false }, p.to_vec()));
                    }
                }
            }
            if st.is_idle(self.now) {
                keep = false;
            }
            if keep {
                st.tunn = Some(tunn);
            } else {
                st.waiting_since = None;
            }
            drop(st);
            for (route, p) in out {
                self.transmit(peer, route, p);
            }
        }
    }

    /// A handshake-like packet: any type at its length, a peer's receiver index, a few bytes from the input, and a
    /// valid mac1 if asked.
    fn forge(&self, input: &mut Input) -> Vec<u8> {
        let kind = 1 + input.u8() % 4;
        let len = match kind {
            1 => 148,
            2 => 92,
            3 => 64,
            _ => 32 + usize::from(input.u8() % 64),
        };
        let mut p = vec![0u8; len];
        p[0] = kind;
        let receiver = match self.peer(input) {
            Some(peer) if input.u8() % 4 != 3 => peer.index << 8 | u32::from(input.u8()),
            _ => input.u32(),
        };
        let (idx_at, rest_at) = match kind {
            1 => (4, 8),
            2 => (8, 12),
            _ => (4, 8),
        };
        p[idx_at..idx_at + 4].copy_from_slice(&receiver.to_le_bytes());
        for (b, v) in p[rest_at..].iter_mut().zip(input.bytes(32)) {
            *b = v;
        }
        if kind <= 2 && input.u8() & 1 == 1 {
            let at = len - 32;
            let m = mac1(&p[..at]);
            p[at..at + 16].copy_from_slice(&m);
        }
        p
    }

    /// A new peer set from the input: which candidates, their epochs, endpoints and relay reachability.
    fn update(&mut self, input: &mut Input) {
        let k = keys();
        let mut infos = vec![];
        for (i, w) in k.who.iter().enumerate() {
            let b = input.u8();
            // The last candidate is left out unless asked for, the others are in unless left out.
            if (b & 1 == 1) == (i == 5) {
                let mut endpoints: Vec<SocketAddr> = w.endpoints.iter().copied().filter(|_| b & 2 == 0).collect();
                if b & 4 != 0 {
                    endpoints.push(input.addr());
                }
                infos.push(info(i, u64::from(b >> 3 & 3), b & 0x20 == 0 && w.relay, endpoints));
            }
        }
        if input.u8() & 1 == 1 {
            infos.reverse();
        }
        self.set_peers(infos);
    }

    fn check_peers(&self) {
        for peer in self.table.peers() {
            let st = peer.state();
            assert!(st.candidates.len() <= MAX_CANDIDATES && st.narrow.len() <= MAX_CANDIDATES + 1);
            assert!(st.path != Path::Relay || peer.node.is_some(), "{} is not a node but on the relay", peer.name);
            if let Some(e) = st.endpoint {
                let adverted = self.candidates.get(&peer.public).is_some_and(|c| c.contains(&e));
                assert!(
                    adverted || self.genuine_from.contains(&(peer.public, e)),
                    "{}'s endpoint moved to {e}, which it never adverted nor sent a genuine datagram from",
                    peer.name
                );
            }
        }
    }

    /// One event.
    fn step(&mut self, input: &mut Input) {
        let who = keys().who.len();
        match input.u8() % 16 {
            0 => {
                let r = input.index(who).unwrap_or(0);
                self.remote_sends(r, input);
            }
            // A datagram a peer sent, from any source, taken off the wire or replayed.
            op @ (1 | 2) => {
                let Some(i) = input.index(self.to_us.len()) else { return };
                let d = if op == 1 { self.to_us.remove(i) } else { self.to_us[i].clone() };
                let src = self.src(input);
                self.deliver(src, &d.bytes, Some(d.from));
            }
            // A damaged copy of one: a byte flipped, cut short, or another peer's receiver index.
            3 => {
                let Some(i) = input.index(self.to_us.len()) else { return };
                let (from, mut d) = (self.to_us[i].from, self.to_us[i].bytes.clone());
                let at = usize::from(input.u8()) % d.len().max(1);
                match input.u8() % 3 {
                    0 => d.truncate(at),
                    1 if d.len() >= 8 => {
                        let idx = self.peer(input).map_or(0, |p| p.index << 8);
                        d[4..8].copy_from_slice(&idx.to_le_bytes());
                    }
                    _ => {
                        if let Some(b) = d.get_mut(at) {
                            *b ^= input.u8().max(1);
                        }
                    }
                }
                let src = self.src(input);
                let genuine = same_message(&self.to_us[i].bytes, &d).then_some(from);
                self.deliver(src, &d, genuine);
            }
            4 => {
                let d = input.bytes(160);
                let src = self.src(input);
                self.deliver(src, &d, None);
            }
            // Handshake-like packets, one or a flood from one source.
            5 => {
                let p = self.forge(input);
                let n = if input.u8() % 4 == 3 { 1 + usize::from(input.u8()) } else { 1 };
                let src = self.src(input);
                for _ in 0..n {
                    self.deliver(src, &p, None);
                }
            }
            // A relay stream: frames of datagrams on the wire, then any bytes; read as the relay reader does.
            6 => {
                let mut stream = vec![];
                for _ in 0..input.u8() % 3 {
                    if let Some(i) = input.index(self.to_us.len()) {
                        let _ = relay::encode(&self.to_us[i].bytes, &mut stream);
                    }
                }
                stream.extend(input.bytes(64));
                let node = match self.src(input) {
                    Src::Relay(n) => n,
                    Src::Udp(_) => keys().who[0].node.expect("a node"),
                };
                let mut rest = &stream[..];
                while let Ok(Some((d, r))) = relay::decode(rest) {
                    assert!(!d.is_empty() && d.len() <= relay::MAX_DATAGRAM);
                    let genuine = self.to_us.iter().find(|g| g.bytes == d).map(|g| g.from);
                    self.deliver(Src::Relay(node), d, genuine);
                    rest = r;
                }
            }
            7 => {
                let Some(i) = input.index(self.to_them.len()) else { return };
                let (r, d) = self.to_them.remove(i);
                self.arrive(r, &d);
            }
            8 => {
                if let Some(peer) = self.peer(input) {
                    let payload = input.bytes(48);
                    self.send(&peer, &payload);
                }
            }
            9 => {
                self.now += Duration::from_millis(u64::from(input.u8()) * 250);
                self.timers();
            }
            10 => self.update(input),
            11 => {
                if let Some(peer) = self.peer(input) {
                    let ep = input.addr();
                    // Found by a send (the timer acts on it) or acted on at once.
                    if input.u8() & 1 == 0 {
                        peer.hint_narrow(ep);
                    } else {
                        self.leave_narrow(&peer, ep);
                    }
                }
            }
            12 => self.limiter.reset_count(),
            13 => {
                let r = input.index(who).unwrap_or(0);
                let mut buf = [0u8; 256];
                if let TunnResult::WriteToNetwork(p) = self.their_tunn(r).format_handshake_initiation(&mut buf, true) {
                    let bytes = p.to_vec();
                    self.to_us.push(Dgram { from: r, bytes });
                }
            }
            14 => {
                let r = input.index(who).unwrap_or(0);
                let mut buf = [0u8; 256];
                if let TunnResult::WriteToNetwork(p) = self.their_tunn(r).update_timers(&mut buf) {
                    let bytes = p.to_vec();
                    self.to_us.push(Dgram { from: r, bytes });
                }
            }
            // Lost on the way.
            _ => {
                if input.u8() & 1 == 0 {
                    if let Some(i) = input.index(self.to_us.len()) {
                        self.to_us.remove(i);
                    }
                } else if let Some(i) = input.index(self.to_them.len()) {
                    self.to_them.remove(i);
                }
            }
        }
    }
}

fn info(i: usize, epoch: u64, relay: bool, endpoints: Vec<SocketAddr>) -> PeerInfo {
    let w = &keys().who[i];
    PeerInfo {
        name: format!("peer{i}"),
        node: w.node,
        public: w.public,
        addr: w.addr,
        endpoints,
        epoch: if w.node.is_some() { epoch } else { 0 },
        relay: relay && w.node.is_some(),
    }
}

/// The three indexes agree, session indexes are distinct 24-bit numbers, peers that stay keep their state unless
/// they restarted.
fn check_table(old: &Table, new: &Table, infos: &[PeerInfo], epochs: &HashMap<[u8; 32], u64>) {
    let mut indexes = HashSet::new();
    for p in new.peers() {
        assert!(new.by_addr(&p.addr).is_some_and(|q| Arc::ptr_eq(p, q)));
        assert!(new.by_public(&p.public).is_some_and(|q| Arc::ptr_eq(p, q)));
        assert!(new.by_receiver_index(p.index << 8 | 0xab).is_some_and(|q| Arc::ptr_eq(p, q)));
        assert!(p.index != 0 && p.index <= 0xff_ffff && indexes.insert(p.index), "session index {}", p.index);
        let info = infos.iter().find(|i| i.public == p.public).expect("a peer not in the update");
        let st = p.state();
        assert_eq!(st.relay_ok, info.relay && p.node.is_some());
        if let Some(before) = old.by_public(&p.public).filter(|q| q.addr == p.addr) {
            assert!(Arc::ptr_eq(before, p), "{} lost its state in an update", p.name);
            let was = epochs[&p.public];
            if info.epoch != 0 && was != 0 && info.epoch != was {
                assert!(st.tunn.is_none() && st.path == Path::Udp && !st.roamed && st.narrow.is_empty());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut world = World::new();
    for _ in 0..MAX_OPS {
        if input.0.is_empty() {
            break;
        }
        world.step(&mut input);
        world.check_peers();
    }
});
