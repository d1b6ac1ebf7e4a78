//! Connections as the libp2p driver keeps them: dial and handshake, one connection per peer, sync on connect (the
//! core asks for it), failure detection (a graceful close is seen after one latency, a crash or a partition after
//! a ping timeout), redials with backoff while the peer is still known, and the node lifecycle (crash, leave,
//! restart with a fresh core). Also the transmission of one message: latency, loss and partitions.

use metac_mesh::core::{Core, Via};
use rand::Rng;

use super::{Conn, Ev, Mode, Msg, Sim};
use crate::model::{LossModel, Micros, MS, SEC};

/// Bytes of an anti-entropy digest entry for content shared in steady mode (32-byte key + a one-byte seq).
const BASE_DIGEST_ENTRY: u64 = 33;
/// RPC framing of a sync request or response: length prefix, enum tag, 32-byte admission proof, length varint.
const SYNC_OVERHEAD: u64 = 4 + 1 + 32 + 3;
/// Most retransmissions of one message before the stream gives up (retransmit loss model).
const MAX_RETRANSMITS: u32 = 8;
/// Longest redial backoff (the driver doubles from 1 s up to this).
const MAX_REDIAL: Micros = 60 * SEC;

fn varint_len(v: u64) -> u64 {
    (64 - v.max(1).leading_zeros() as u64).div_ceil(7)
}

impl Sim<'_> {
    /// True while any connection between `a` and `b` is up at `a`'s end.
    pub(super) fn connected(&self, a: u32, b: u32) -> bool {
        self.nodes[a as usize].conns.iter().any(|c| c.peer == b)
    }

    /// True while the partition separates `a` and `b`.
    pub(super) fn blocked(&self, a: u32, b: u32) -> bool {
        self.partitioned && self.nodes[a as usize].side != self.nodes[b as usize].side
    }

    /// Adds a connection at both ends and tells both cores.
    pub(super) fn link(&mut self, a: u32, b: u32, lat: u32) {
        self.next_gen += 1;
        let gen = self.next_gen;
        self.nodes[a as usize].conns.push(Conn { peer: b, gen, lat });
        self.nodes[b as usize].conns.push(Conn { peer: a, gen, lat });
        let now = self.now_ms();
        let (ka, kb) = (self.keys[a as usize], self.keys[b as usize]);
        if let Some(c) = self.nodes[a as usize].core.as_mut() {
            c.handle_connected(kb, Via::Bootstrap, now);
        }
        if let Some(c) = self.nodes[b as usize].core.as_mut() {
            c.handle_connected(ka, Via::Inbound, now);
        }
    }

    /// Starts a dial from `a` to `b`; false if it cannot succeed now (peer down or unreachable).
    fn dial(&mut self, a: u32, b: u32) -> bool {
        if !self.nodes[a as usize].alive() || !self.nodes[b as usize].alive() || self.blocked(a, b) {
            return false;
        }
        let lat = self.p.latency.sample(&mut self.rng) as u32;
        // TCP, noise XX and yamux take about two round trips.
        let t = self.now + 4 * lat as Micros;
        let (ea, eb) = (self.nodes[a as usize].epoch, self.nodes[b as usize].epoch);
        self.push(t, Ev::Established { a, b, ea, eb, lat });
        true
    }

    pub(super) fn established(&mut self, a: u32, b: u32, ea: u32, eb: u32, lat: u32) {
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        if na.epoch != ea || nb.epoch != eb || !na.alive() || !nb.alive() || self.blocked(a, b) {
            return;
        }
        // One connection per peer: a second one (both ends dialed at once) is closed at once.
        if self.connected(a, b) {
            return;
        }
        self.link(a, b, lat);
        self.drain(a);
        self.drain(b);
    }

    /// The driver's redial of a lost peer (and the bootstrap dials at start): tries now, then again after
    /// `backoff` (doubling) until connected, while the peer is still known.
    pub(super) fn redial(&mut self, i: u32, peer: u32, epoch: u32, backoff: Micros) {
        let n = &self.nodes[i as usize];
        if n.epoch != epoch || !n.alive() || self.connected(i, peer) {
            return;
        }
        let key = self.keys[peer as usize];
        let in_table = n.core.as_ref().is_some_and(|c| c.entry(&key).is_some());
        let known = in_table || n.has_base || n.bootstrap.contains(&peer);
        if !known {
            return;
        }
        self.dial(i, peer);
        let next = (backoff * 2).min(MAX_REDIAL);
        self.push(self.now + backoff, Ev::Redial { node: i, peer, epoch, backoff: next });
    }

    /// Closes connection `gen` between `a` and `b` at both ends (both see it fail).
    pub(super) fn close(&mut self, a: u32, b: u32, gen: u32) {
        self.lose_end(a, b, gen);
        self.lose_end(b, a, gen);
    }

    /// Node `i` sees its connection `gen` to `peer` go down.
    fn lose_end(&mut self, i: u32, peer: u32, gen: u32) {
        let now = self.now_ms();
        let n = &mut self.nodes[i as usize];
        let Some(pos) = n.conns.iter().position(|c| c.gen == gen) else { return };
        n.conns.swap_remove(pos);
        let still = n.conns.iter().any(|c| c.peer == peer);
        if !still {
            n.mesh.retain(|&m| m != peer);
        }
        let key = self.keys[peer as usize];
        let Some(core) = n.core.as_mut() else { return };
        core.handle_disconnected(key, now);
        let epoch = n.epoch;
        if !still {
            self.push(self.now + SEC, Ev::Redial { node: i, peer, epoch, backoff: 2 * SEC });
        }
        self.drain(i);
    }

    /// Node `i` notices that `peer` went away (its end of connection `gen`).
    pub(super) fn detect_down(&mut self, i: u32, peer: u32, gen: u32) {
        let had = self.nodes[i as usize].conns.iter().any(|c| c.gen == gen);
        if !had {
            return;
        }
        self.lose_end(i, peer, gen);
        let now = self.now;
        for c in self.crashes.iter_mut().filter(|c| c.node == peer && c.pending_detect > 0) {
            c.pending_detect -= 1;
            if c.pending_detect == 0 {
                c.detected_all = Some(now);
            }
        }
    }

    /// How long after a peer went silent its connection fails, as the driver's pings see it: the timeout after the
    /// next ping, which is due anywhere within an interval.
    pub(super) fn ping_fail_after(&mut self) -> Micros {
        let every = metac_mesh::net::PING_EVERY.as_micros() as Micros;
        let timeout = metac_mesh::net::PING_TIMEOUT.as_micros() as Micros;
        timeout + self.rng.gen_range(0..every)
    }

    /// Takes node `i` down: a graceful leave closes its connections (peers see it after one latency); a crash
    /// leaves them to fail by ping timeout (see [`Sim::ping_fail_after`]). Its state is gone either way.
    pub(super) fn down(&mut self, i: u32, graceful: bool) {
        let n = &mut self.nodes[i as usize];
        n.core = None;
        n.epoch += 1;
        n.mesh.clear();
        n.seen.clear();
        n.seen_expiry.clear();
        n.mcache.clear();
        let conns = std::mem::take(&mut n.conns);
        for c in conns {
            let t = if graceful { self.now + c.lat as Micros } else { self.now + self.ping_fail_after() };
            self.push(t, Ev::DetectDown { node: c.peer, peer: i, gen: c.gen });
        }
        for t in &mut self.tracks {
            t.delivered[i as usize] = None;
        }
    }

    /// Node `i` starts again with a fresh core (its seq from its clock, as the real driver does) and dials its
    /// bootstrap peers.
    pub(super) fn restart(&mut self, i: u32) {
        if self.nodes[i as usize].alive() {
            return;
        }
        let secret = self.secret(i);
        let config = metac_mesh::core::Config {
            grace: self.p.grace / MS,
            refresh: self.p.refresh / MS,
            ..metac_mesh::core::Config::default()
        };
        let seq = self.base_seq + 1 + self.now_ms();
        let core = Core::new(metac_mesh::Identity::from_secret(secret), config, seq, self.now_ms());
        let n = &mut self.nodes[i as usize];
        n.core = Some(core);
        n.epoch += 1;
        n.has_base = false;
        n.announced = false;
        let epoch = n.epoch;
        for t in &mut self.tracks {
            t.since[i as usize] = self.now;
        }
        for peer in n.bootstrap.clone() {
            self.push(self.now, Ev::Redial { node: i, peer, epoch, backoff: SEC });
        }
        let t = self.now + self.rng.gen_range(0..SEC);
        self.push(t, Ev::Heartbeat { node: i, epoch });
    }

    /// Wire size of a message.
    fn size(&self, from: u32, msg: &Msg) -> u64 {
        match msg {
            Msg::Gossip(id) => self.arena[*id as usize].1 as u64,
            Msg::IHave(ids) | Msg::IWant(ids) => super::gossip::CONTROL_BYTES + 34 * ids.len() as u64,
            Msg::SyncReq(digest) => {
                let own: u64 = digest.iter().map(|(_, s)| 32 + varint_len(*s)).sum();
                let shared = if self.mode == Mode::Steady && self.nodes[from as usize].has_base {
                    (self.p.nodes as u64).saturating_sub(digest.len() as u64) * BASE_DIGEST_ENTRY
                } else {
                    0
                };
                SYNC_OVERHEAD + own + shared
            }
            Msg::SyncResp(adverts, base) => {
                let own: u64 = adverts.iter().map(|a| a.wire_len() as u64).sum();
                SYNC_OVERHEAD + own + if *base { self.base_bytes } else { 0 }
            }
        }
    }

    /// Sends `msg` from `from` to `to` over their connection, if there is one: counts it, then delivers it after
    /// the link's latency, unless loss, a crash or the partition gets in the way.
    pub(super) fn send(&mut self, from: u32, to: u32, msg: Msg) {
        let Some(c) = self.nodes[from as usize].conns.iter().rev().find(|c| c.peer == to).copied() else { return };
        let bytes = self.size(from, &msg);
        let t = &mut self.nodes[from as usize].traffic;
        t.msgs_sent += 1;
        t.bytes_sent += bytes;
        if !self.nodes[to as usize].alive() {
            return;
        }
        let lat = c.lat as Micros;
        let mut delay = lat;
        if self.blocked(from, to) {
            // The stream retransmits with backoff; if the connection survives the partition, the message arrives
            // within about as long after the heal as it waited before it.
            let Some(heal) = self.p.partition.as_ref().and_then(|p| p.heal) else { return };
            let waited = heal.saturating_sub(self.now);
            delay = waited + self.rng.gen_range(0..=waited) + lat;
        } else if self.p.loss > 0.0 {
            match self.p.loss_model {
                LossModel::Drop => {
                    if self.rng.gen::<f64>() < self.p.loss {
                        return;
                    }
                }
                LossModel::Retransmit => {
                    let mut rto = (4 * lat).max(200 * MS);
                    let mut tries = 0;
                    while self.rng.gen::<f64>() < self.p.loss {
                        tries += 1;
                        if tries > MAX_RETRANSMITS {
                            return;
                        }
                        delay += rto;
                        rto *= 2;
                    }
                }
            }
        }
        self.push(self.now + delay, Ev::Deliver { to, from, gen: c.gen, bytes: bytes as u32, msg });
    }

    /// A message arrives, if its connection is still up at the receiver.
    pub(super) fn deliver(&mut self, to: u32, from: u32, gen: u32, bytes: u32, msg: Msg) {
        let n = &mut self.nodes[to as usize];
        if !n.alive() || !n.conns.iter().any(|c| c.gen == gen) {
            return;
        }
        n.traffic.msgs_recv += 1;
        n.traffic.bytes_recv += bytes as u64;
        let now = self.now_ms();
        match msg {
            Msg::Gossip(id) => self.on_gossip(to, from, id),
            Msg::IHave(ids) => self.on_ihave(to, from, ids),
            Msg::IWant(ids) => self.on_iwant(to, from, ids),
            Msg::SyncReq(digest) => {
                let key = self.keys[from as usize];
                let core = self.nodes[to as usize].core.as_mut().expect("alive");
                let mut adverts = core.handle_sync_request(key, &digest, now);
                self.drain(to);
                let mut base = false;
                if self.mode == Mode::Steady {
                    // The requester already holds the shared content, or gets it with this answer.
                    let base_seq = self.base_seq;
                    adverts.retain(|a| a.seq() != base_seq);
                    base = self.nodes[to as usize].has_base && !self.nodes[from as usize].has_base;
                }
                self.send(to, from, Msg::SyncResp(adverts, base));
            }
            Msg::SyncResp(adverts, base) => {
                if base {
                    self.nodes[to as usize].has_base = true;
                }
                let source = self.keys[from as usize];
                let core = self.nodes[to as usize].core.as_mut().expect("alive");
                core.handle_adverts(adverts, source, now);
                self.drain(to);
            }
        }
    }

    /// The identity secret of node `i` (the same in every life).
    pub(super) fn secret(&self, i: u32) -> [u8; 32] {
        self.secrets[i as usize]
    }
}
