//! The pubsub layer as libp2p gossipsub (v1.1, default config) runs it for the advert topic: a publisher sends to
//! every connected peer (`flood_publish`); every other node forwards a message it sees for the first time to its
//! mesh peers, except the one it came from, and drops duplicates by message id. The mesh keeps D=6 peers
//! (GRAFT below D_lo=4, PRUNE above D_hi=12) at each one-second heartbeat, and each heartbeat offers the ids of
//! messages from the last 3 heartbeats to D_lazy=6 random non-mesh peers (IHAVE), which ask for what they lack
//! (IWANT) from the last 5 heartbeats. Message ids are per advert (node, seq), as the node's blake3 of the bytes.

use metac_mesh::advert::Signed;
use rand::Rng;

use super::{Msg, Sim};
use crate::model::{Micros, SEC};

/// Gossipsub mesh degree target.
const D: usize = 6;
/// Below this many mesh peers a heartbeat grafts more.
const D_LO: usize = 4;
/// Above this many it prunes back to D.
const D_HI: usize = 12;
/// Peers that get IHAVE gossip at each heartbeat.
const D_LAZY: usize = 6;
/// IHAVE covers messages from this long ago (3 heartbeats).
const GOSSIP_WINDOW: Micros = 3 * SEC;
/// IWANT is served for messages from this long ago (5 heartbeats).
const MCACHE_WINDOW: Micros = 5 * SEC;
/// Duplicate cache lifetime.
const SEEN_TTL: Micros = 60 * SEC;
/// Gossipsub framing of a published message: RPC and message protobuf, source peer id (38 B), seqno, topic, and
/// the 64-byte message signature (`MessageAuthenticity::Signed`; ed25519 peer ids carry the key).
pub(super) const GOSSIP_OVERHEAD: u64 = 140;
/// A control message (IHAVE, IWANT, GRAFT, PRUNE) without its ids; each id adds 34 bytes.
pub(super) const CONTROL_BYTES: u64 = 24;

impl Sim<'_> {
    /// The message id of an advert, adding it to the arena the first time.
    fn intern(&mut self, signed: Signed, origin: u32) -> u32 {
        let key = (signed.node(), signed.seq());
        if let Some(&id) = self.arena_ids.get(&key) {
            return id;
        }
        let id = self.arena.len() as u32;
        let bytes = signed.wire_len() as u64 + GOSSIP_OVERHEAD;
        self.arena.push((signed, bytes as u32, origin));
        self.arena_ids.insert(key, id);
        id
    }

    /// Marks a message seen at node `i`; false if it was already.
    fn see(&mut self, i: u32, id: u32) -> bool {
        let now = self.now;
        let n = &mut self.nodes[i as usize];
        if !n.seen.insert(id) {
            return false;
        }
        n.seen_expiry.push_back((now + SEEN_TTL, id));
        n.mcache.push((id, now));
        true
    }

    /// The core of node `i` published an advert: flood it to every connected peer.
    pub(super) fn publish_signed(&mut self, i: u32, signed: Signed) {
        let id = self.intern(signed, i);
        self.see(i, id);
        for peer in self.peers_of(i) {
            self.send(i, peer, Msg::Gossip(id));
        }
    }

    /// Distinct connected peers of `i`, in connection order.
    fn peers_of(&self, i: u32) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::with_capacity(self.nodes[i as usize].conns.len());
        for c in &self.nodes[i as usize].conns {
            if !out.contains(&c.peer) {
                out.push(c.peer);
            }
        }
        out
    }

    /// A gossiped advert arrives: new ones go to the core and on to the mesh.
    pub(super) fn on_gossip(&mut self, to: u32, from: u32, id: u32) {
        if !self.see(to, id) {
            return;
        }
        let (signed, _, origin) = self.arena[id as usize].clone();
        let now = self.now_ms();
        let source = self.keys[from as usize];
        if let Some(core) = self.nodes[to as usize].core.as_mut() {
            core.handle_gossip(signed, source, now);
        }
        self.drain(to);
        for peer in self.nodes[to as usize].mesh.clone() {
            if peer != from && peer != origin {
                self.send(to, peer, Msg::Gossip(id));
            }
        }
    }

    pub(super) fn on_ihave(&mut self, to: u32, from: u32, ids: Vec<u32>) {
        let n = &self.nodes[to as usize];
        let want: Vec<u32> = ids.into_iter().filter(|id| !n.seen.contains(id)).collect();
        if !want.is_empty() {
            self.send(to, from, Msg::IWant(want));
        }
    }

    pub(super) fn on_iwant(&mut self, to: u32, from: u32, ids: Vec<u32>) {
        let now = self.now;
        let have: Vec<u32> = ids
            .into_iter()
            .filter(|id| self.nodes[to as usize].mcache.iter().any(|(m, t)| m == id && now - t < MCACHE_WINDOW))
            .collect();
        for id in have {
            self.send(to, from, Msg::Gossip(id));
        }
    }

    /// Heartbeat mesh upkeep at node `i`: graft up to D when below D_lo, prune to D when above D_hi. GRAFT and
    /// PRUNE take effect at both ends at once (their latency does not matter at this scale); they are counted.
    pub(super) fn fill_mesh(&mut self, i: u32, count: bool) {
        let len = self.nodes[i as usize].mesh.len();
        if len < D_LO {
            let mut cands: Vec<u32> = self
                .peers_of(i)
                .into_iter()
                .filter(|p| !self.nodes[i as usize].mesh.contains(p) && self.nodes[*p as usize].alive())
                .collect();
            let want = (D - len).min(cands.len());
            for k in 0..want {
                let j = self.rng.gen_range(k..cands.len());
                cands.swap(k, j);
                let p = cands[k];
                self.nodes[i as usize].mesh.push(p);
                if !self.nodes[p as usize].mesh.contains(&i) {
                    self.nodes[p as usize].mesh.push(i);
                }
                if count {
                    self.control(i, p);
                }
            }
        } else if len > D_HI {
            let mut mesh = std::mem::take(&mut self.nodes[i as usize].mesh);
            for k in 0..D {
                let j = self.rng.gen_range(k..mesh.len());
                mesh.swap(k, j);
            }
            for p in mesh.split_off(D) {
                self.nodes[p as usize].mesh.retain(|&m| m != i);
                if count {
                    self.control(i, p);
                }
            }
            self.nodes[i as usize].mesh = mesh;
        }
    }

    /// Counts one control message from `a` to `b`.
    fn control(&mut self, a: u32, b: u32) {
        self.nodes[a as usize].traffic.msgs_sent += 1;
        self.nodes[a as usize].traffic.bytes_sent += CONTROL_BYTES;
        self.nodes[b as usize].traffic.msgs_recv += 1;
        self.nodes[b as usize].traffic.bytes_recv += CONTROL_BYTES;
    }

    /// Heartbeat gossip at node `i`: IHAVE of recent message ids to D_lazy random non-mesh peers; old cache
    /// entries go.
    pub(super) fn ihave(&mut self, i: u32) {
        let now = self.now;
        let n = &mut self.nodes[i as usize];
        n.mcache.retain(|(_, t)| now - t < MCACHE_WINDOW);
        while n.seen_expiry.front().is_some_and(|(t, _)| *t <= now) {
            let (_, id) = n.seen_expiry.pop_front().expect("front");
            n.seen.remove(&id);
        }
        let recent: Vec<u32> = n.mcache.iter().filter(|(_, t)| now - t < GOSSIP_WINDOW).map(|(m, _)| *m).collect();
        if recent.is_empty() {
            return;
        }
        let mut cands: Vec<u32> =
            self.peers_of(i).into_iter().filter(|p| !self.nodes[i as usize].mesh.contains(p)).collect();
        let k = D_LAZY.min(cands.len());
        for x in 0..k {
            let j = self.rng.gen_range(x..cands.len());
            cands.swap(x, j);
            self.send(i, cands[x], Msg::IHave(recent.clone()));
        }
    }
}
