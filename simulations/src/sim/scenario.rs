//! The scenario around the nodes: publishing the tracked adverts, the partition, churn, scheduled crashes, and the
//! check that ends a run once everything measured has converged.

use metac_mesh::advert::ResourceInfo;
use metac_mesh::{Kind, ResourceId};
use rand::Rng;

use super::{CrashReport, Ev, Mode, Sim};
use crate::model::{Micros, MS, SEC};

impl Sim<'_> {
    /// Publishes tracked advert `k` from a live node (on the right side of the partition for the heal adverts).
    pub(super) fn publish(&mut self, k: usize) {
        let want_side = match self.tracks[k].label {
            "partition side A" => Some(true),
            "partition side B" => Some(false),
            _ => None,
        };
        let n = self.p.nodes as u32;
        let mut origin = None;
        for _ in 0..100_000 {
            let i = self.rng.gen_range(0..n);
            let node = &self.nodes[i as usize];
            if node.alive() && want_side.is_none_or(|s| node.side == s) {
                origin = Some(i);
                break;
            }
        }
        let Some(i) = origin else { return };
        let now_ms = self.now_ms();
        let core = self.nodes[i as usize].core.as_mut().expect("alive");
        let own = core.own().clone();
        let mut resources = own.resources;
        resources.push(ResourceInfo {
            id: ResourceId([k as u8 + 1; 16]),
            kind: Kind::File,
            name: format!("sim-{}", k + 1),
            description: self.tracks[k].label.into(),
            public_ref: None,
        });
        core.set_local(own.addrs, own.tunnel, resources, own.revoked, now_ms);
        let seq = core.own().seq;
        let t = &mut self.tracks[k];
        t.origin = i;
        t.seq = seq;
        t.at = self.now;
        t.delivered[i as usize] = Some(self.now);
        self.drain(i);
    }

    pub(super) fn partition_start(&mut self) {
        self.partitioned = true;
        // A connection across the split dies when a ping fails (see `ping_fail_after`), unless it heals first.
        for a in 0..self.nodes.len() as u32 {
            for c in self.nodes[a as usize].conns.clone() {
                if c.peer > a && self.blocked(a, c.peer) {
                    let t = self.now + self.ping_fail_after();
                    self.push(t, Ev::PingFail { a, b: c.peer, gen: c.gen });
                }
            }
        }
    }

    pub(super) fn churn_gap(&mut self) -> Micros {
        let per_sec = self.p.churn * self.p.nodes as f64 / 60.0;
        let u: f64 = 1.0 - self.rng.gen::<f64>();
        ((-u.ln() / per_sec) * SEC as f64).round().max(1.0) as Micros
    }

    pub(super) fn churn(&mut self) {
        let n = self.p.nodes as u32;
        for _ in 0..64 {
            let i = self.rng.gen_range(0..n);
            if self.nodes[i as usize].alive() {
                let graceful = self.rng.gen::<bool>();
                self.down(i, graceful);
                let back = self.now + self.rng.gen_range(10 * SEC..60 * SEC);
                self.push(back, Ev::Restart { node: i });
                self.churn_events += 1;
                break;
            }
        }
        let t = self.now + self.churn_gap();
        self.push(t, Ev::Churn);
    }

    pub(super) fn crash_scheduled(&mut self) {
        let Some(c) = self.p.crash.clone() else { return };
        let n = self.p.nodes as u32;
        let protected: Vec<u32> = self.tracks.iter().filter(|t| t.seq > 0).map(|t| t.origin).collect();
        let mut done = 0;
        for _ in 0..c.count.saturating_mul(1000) {
            if done == c.count {
                break;
            }
            let i = self.rng.gen_range(0..n);
            if !self.nodes[i as usize].alive() || protected.contains(&i) {
                continue;
            }
            let key = self.keys[i as usize];
            let holders = (0..n)
                .filter(|&j| j != i)
                .filter(|&j| self.nodes[j as usize].core.as_ref().is_some_and(|c| c.entry(&key).is_some()))
                .count();
            let mut peers: Vec<u32> = self.nodes[i as usize].conns.iter().map(|c| c.peer).collect();
            peers.sort_unstable();
            peers.dedup();
            let peers = peers.iter().filter(|&&j| self.nodes[j as usize].alive()).count();
            self.crashes.push(CrashReport {
                node: i,
                at: self.now,
                peers,
                detected_all: (peers == 0).then_some(self.now),
                holders,
                expired_all: (holders == 0).then_some(self.now),
                pending_expiry: holders,
                pending_detect: peers,
            });
            self.down(i, false);
            done += 1;
        }
    }

    /// Stops early once everything measured has converged and nothing more is scheduled.
    pub(super) fn check(&mut self) {
        if self.mode == Mode::Full && self.full_sync.is_none() {
            let live = self.nodes.iter().filter(|n| n.alive()).count();
            if self.nodes.iter().filter_map(|n| n.core.as_ref()).all(|c| c.entries().count() >= live) {
                self.full_sync = Some(self.now);
            }
        }
        if self.p.duration.is_none() && self.p.churn == 0.0 && self.now >= self.p.scenario_end() + 5 * SEC {
            let tracks_done = self
                .tracks
                .iter()
                .all(|t| t.seq > 0 && self.nodes.iter().zip(&t.delivered).all(|(n, d)| !n.alive() || d.is_some()));
            let crashes_done = self.crashes.iter().all(|c| c.expired_all.is_some() && c.detected_all.is_some());
            let synced = self.mode != Mode::Full || self.full_sync.is_some();
            if tracks_done && crashes_done && synced {
                self.stop = true;
                return;
            }
        }
        self.push(self.now + 100 * MS, Ev::Check);
    }
}
