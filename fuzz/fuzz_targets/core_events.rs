//! Drives the sans-IO mesh core (`metac_mesh::core::Core`) with arbitrary sequences of what peers can make it see:
//! connections coming and going, sync requests with any digest (unsigned: any node, any seq, our own included),
//! adverts signed by a few keys (ours among them) with any seq, gossip, ticks and local changes. Nothing may panic
//! (debug assertions are on: seq arithmetic overflow panics), and the node's own advert must stay usable: its seq
//! never goes down, never passes `MAX_SEQ`, and always stands in its own table and digest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metac_mesh::advert::Advert;
use metac_mesh::core::{Config, Core, KeyRange, Via, MAX_SEQ};
use metac_mesh::Identity;

/// Reads the input a few bytes at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |v, _| v << 8 | u64::from(self.u8()))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let ids: Vec<Identity> = (1..=4u8).map(|i| Identity::from_secret([i; 32])).collect();
    let me = ids[0].clone();
    let mut core = Core::new(me.clone(), Config { grace: 5_000, refresh: 2_000, max_nodes: 4, max_bytes: 2_000 }, 1_000, 0);
    let mut now = 0u64;
    let mut last_seq = core.own().seq;
    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        now += u64::from(input.u8()) * 50;
        let who = &ids[usize::from(input.u8()) % ids.len()];
        match input.u8() % 7 {
            0 => core.handle_connected(who.public(), Via::Mdns, now),
            1 => core.handle_disconnected(who.public(), now),
            2 => {
                let n = usize::from(input.u8() % 4);
                let digest: Vec<_> =
                    (0..n).map(|_| (ids[usize::from(input.u8()) % ids.len()].public(), input.u64())).collect();
                let start = ids[usize::from(input.u8()) % ids.len()].public();
                let range = KeyRange { start, end: None };
                let budget = usize::from(input.u8()) * 8;
                let (page, next) = core.handle_sync_range(who.public(), &range, &digest, budget, now);
                assert!(page.iter().all(|a| range.contains(&a.node())), "a page stays in its range");
                assert!(next.is_none_or(|k| range.contains(&k)));
            }
            3 | 4 => {
                // An advert signed by `who` (possibly us) with any seq, as gossip or in a sync answer.
                let advert = Advert { node: who.public(), seq: input.u64(), ..core.own().clone() }.sign(who);
                let from = ids[usize::from(input.u8()) % ids.len()].public();
                if input.u8() % 2 == 0 {
                    core.handle_gossip(advert, from, now);
                } else {
                    core.handle_adverts(vec![advert], from, now);
                }
            }
            5 => core.handle_tick(now),
            _ => core.set_local(vec![], None, vec![], vec![], now),
        }
        while core.poll_action().is_some() {}
        let seq = core.own().seq;
        assert!(seq >= last_seq, "our seq went down: {last_seq} -> {seq}");
        assert!(seq <= MAX_SEQ, "our seq passed the end: {seq}");
        last_seq = seq;
        assert!(core.entry(&me.public()).is_some(), "our own advert left our table");
        // The bounds hold, our own advert (always kept, bounded by itself) aside.
        let (nodes, bytes) = core.size();
        let own = core.entry(&me.public()).map_or(0, |e| e.advert.wire_len());
        assert!(nodes <= 4 && bytes <= 2_000 + own, "table past its bounds: {nodes} nodes, {bytes} bytes");
        assert!(core.digest().iter().any(|(k, s)| *k == me.public() && *s == seq));
    }
});
