//! The exporter's switch: every port (the exporter's own interface, each bind) sends its frames here, and the switch
//! learns which port each source address lives behind, sends a frame for a known address to that port only, and
//! floods broadcast, multicast and unknown destinations to every port but the one it came from (no hairpin).
//!
//! Each bind's port has a bounded queue; a frame for a port whose queue is full is dropped and counted (drop-tail), so a
//! slow binder costs only its own frames. The address table is bounded too (entries per port and in all), so a port
//! that sends from a million made-up addresses cannot grow it: when full, new addresses are not learned (frames for
//! them flood) until old ones age out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::frame::{self, Reject};

/// How long an address stays learned without a frame from it (a bridge's default).
pub const AGEING: Duration = Duration::from_secs(300);
/// Addresses learned behind one port at most.
pub const MAX_PER_PORT: usize = 1024;
/// Addresses learned in all at most.
pub const MAX_MACS: usize = 8192;
/// Frames queued for one port at most.
pub const QUEUE: usize = 1024;

/// A port's number, unique for the switch's life.
pub type PortId = u64;

/// The address table: MAC -> (port, last seen). Time is passed in, so tests move it.
#[derive(Debug, Default)]
pub struct Table {
    macs: HashMap<[u8; 6], (PortId, Instant)>,
    per_port: HashMap<PortId, usize>,
}

impl Table {
    /// Learns that `mac` sends from `port` at `now`. Group addresses are never learned.
    pub fn learn(&mut self, mac: [u8; 6], port: PortId, now: Instant) {
        if frame::is_group(mac) {
            return;
        }
        match self.macs.get_mut(&mac) {
            Some((p, seen)) if *p == port => *seen = now,
            Some((p, seen)) => {
                // The station moved (or someone claims its address): the newest frame wins, as on a real switch.
                let old = *p;
                *p = port;
                *seen = now;
                self.count(old, -1);
                self.count(port, 1);
            }
            None => {
                // Full: the address is not learned (frames for it flood) until entries age out. Evicting instead
                // would let a port that sends from made-up addresses push everyone else's out, at a table scan
                // per frame.
                if self.per_port.get(&port).copied().unwrap_or(0) >= MAX_PER_PORT || self.macs.len() >= MAX_MACS {
                    return;
                }
                self.macs.insert(mac, (port, now));
                self.count(port, 1);
            }
        }
    }

    /// The port `mac` was last seen behind, unless that is longer ago than [`AGEING`].
    pub fn lookup(&self, mac: [u8; 6], now: Instant) -> Option<PortId> {
        let (p, seen) = self.macs.get(&mac)?;
        (now.saturating_duration_since(*seen) < AGEING).then_some(*p)
    }

    /// Forgets every address behind `port` (it went away).
    pub fn forget_port(&mut self, port: PortId) {
        self.macs.retain(|_, (p, _)| *p != port);
        self.per_port.remove(&port);
    }

    /// Drops entries older than [`AGEING`].
    pub fn age(&mut self, now: Instant) {
        let stale: Vec<[u8; 6]> = self
            .macs
            .iter()
            .filter(|(_, (_, seen))| now.saturating_duration_since(*seen) >= AGEING)
            .map(|(m, _)| *m)
            .collect();
        for m in stale {
            if let Some((p, _)) = self.macs.remove(&m) {
                self.count(p, -1);
            }
        }
    }

    /// Addresses learned behind `port`.
    pub fn learned(&self, port: PortId) -> usize {
        self.per_port.get(&port).copied().unwrap_or(0)
    }

    /// Every entry: (mac, port, age).
    pub fn entries(&self, now: Instant) -> Vec<([u8; 6], PortId, Duration)> {
        let mut v: Vec<_> = self.macs.iter().map(|(m, (p, s))| (*m, *p, now.saturating_duration_since(*s))).collect();
        v.sort();
        v
    }

    fn count(&mut self, port: PortId, d: isize) {
        let n = self.per_port.entry(port).or_insert(0);
        *n = n.saturating_add_signed(d);
    }
}

/// A port's counters: what it sent into the switch (rx) and what the switch gave it (tx).
#[derive(Debug, Default)]
pub struct Counters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames for this port dropped because its queue was full.
    pub dropped: AtomicU64,
    /// Frames from this port larger than the MTU.
    pub oversize: AtomicU64,
    /// Frames from this port with headers that do not describe them.
    pub malformed: AtomicU64,
    /// Frames from a port that may not send (a read-only ref).
    pub refused: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn reject(&self, r: Reject) {
        match r {
            Reject::Oversize => Counters::add(&self.oversize, 1),
            Reject::Malformed => Counters::add(&self.malformed, 1),
        }
    }
}

/// A port as `metac net ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    pub name: String,
    pub can_send: bool,
    pub macs: usize,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub dropped: u64,
    pub oversize: u64,
    pub malformed: u64,
    pub refused: u64,
}

/// Hands a record to a port at once, without a queue; false if it could not take it.
pub type Deliver = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

enum Out {
    /// A bind: its own task takes records off this queue and writes them to its stream.
    Queue(mpsc::Sender<Bytes>),
    /// The exporter's own TAP: a write(2) that does not block, done by whoever forwards. One task hop less each
    /// way, which is most of what the exporter adds to a round trip.
    Direct(Deliver),
}

struct Port {
    name: String,
    can_send: bool,
    out: Out,
    counters: Arc<Counters>,
}

struct Inner {
    ports: HashMap<PortId, Port>,
    table: Table,
    next: PortId,
    last_aged: Instant,
}

/// The switch of one exported segment.
pub struct Switch {
    mtu: u16,
    inner: Mutex<Inner>,
}

/// A port's place on the switch: frames come in through [`PortHandle::forward`]; dropping it removes the port and
/// the addresses learned behind it.
pub struct PortHandle {
    switch: Arc<Switch>,
    id: PortId,
    can_send: bool,
    counters: Arc<Counters>,
}

impl Switch {
    pub fn new(mtu: u16) -> Arc<Switch> {
        Arc::new(Switch {
            mtu,
            inner: Mutex::new(Inner {
                ports: HashMap::new(),
                table: Table::default(),
                next: 1,
                last_aged: Instant::now(),
            }),
        })
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Adds a port named `name`; frames for it arrive on the returned receiver (at most [`QUEUE`] waiting).
    pub fn add_port(self: &Arc<Self>, name: String, can_send: bool) -> (PortHandle, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (self.insert(name, can_send, Out::Queue(tx)), rx)
    }

    /// Adds a port whose frames are handed to `deliver` as they are switched (under the switch's lock: it must not
    /// block). What it refuses is counted as dropped.
    pub fn add_direct_port(self: &Arc<Self>, name: String, deliver: Deliver) -> PortHandle {
        self.insert(name, true, Out::Direct(deliver))
    }

    fn insert(self: &Arc<Self>, name: String, can_send: bool, out: Out) -> PortHandle {
        let counters = Arc::new(Counters::default());
        let mut g = self.inner.lock().expect("switch lock");
        let id = g.next;
        g.next += 1;
        g.ports.insert(id, Port { name, can_send, out, counters: Arc::clone(&counters) });
        PortHandle { switch: Arc::clone(self), id, can_send, counters }
    }

    /// The ports, for listings.
    pub fn ports(&self) -> Vec<PortView> {
        let g = self.inner.lock().expect("switch lock");
        let mut v: Vec<(PortId, PortView)> = g
            .ports
            .iter()
            .map(|(id, p)| {
                let c = &p.counters;
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let view = PortView {
                    name: p.name.clone(),
                    can_send: p.can_send,
                    macs: g.table.learned(*id),
                    rx_frames: l(&c.rx_frames),
                    rx_bytes: l(&c.rx_bytes),
                    tx_frames: l(&c.tx_frames),
                    tx_bytes: l(&c.tx_bytes),
                    dropped: l(&c.dropped),
                    oversize: l(&c.oversize),
                    malformed: l(&c.malformed),
                    refused: l(&c.refused),
                };
                (*id, view)
            })
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Learned addresses: (mac, port name, seconds since last seen).
    pub fn macs(&self) -> Vec<(String, String, u64)> {
        let g = self.inner.lock().expect("switch lock");
        g.table
            .entries(Instant::now())
            .into_iter()
            .map(|(m, p, age)| {
                let port = g.ports.get(&p).map(|p| p.name.clone()).unwrap_or_default();
                (frame::mac_string(m), port, age.as_secs())
            })
            .collect()
    }

    fn forward(&self, from: PortId, record: Bytes, now: Instant) {
        let dst = frame::dst(&record);
        let mut g = self.inner.lock().expect("switch lock");
        if now.saturating_duration_since(g.last_aged) > Duration::from_secs(10) {
            g.table.age(now);
            g.last_aged = now;
        }
        g.table.learn(frame::src(&record), from, now);
        let to = if frame::is_group(dst) { None } else { g.table.lookup(dst, now) };
        let send = |p: &Port| {
            let taken = match &p.out {
                Out::Queue(q) => q.try_send(record.clone()).is_ok(),
                Out::Direct(deliver) => deliver(&record),
            };
            if taken {
                Counters::add(&p.counters.tx_frames, 1);
                Counters::add(&p.counters.tx_bytes, (record.len() - frame::VNET_HDR) as u64);
            } else {
                Counters::add(&p.counters.dropped, 1);
            }
        };
        match to {
            // A station on the port the frame came from: the segment behind that port has it already.
            Some(p) if p == from => {}
            Some(p) => {
                if let Some(port) = g.ports.get(&p) {
                    send(port);
                }
            }
            None => g.ports.iter().filter(|(id, _)| **id != from).for_each(|(_, p)| send(p)),
        }
    }
}

impl PortHandle {
    /// Switches one record this port sent. A record that fails [`frame::check`], or comes from a port that may
    /// not send, is counted and dropped.
    pub fn forward(&self, record: Bytes) {
        let c = &self.counters;
        Counters::add(&c.rx_frames, 1);
        Counters::add(&c.rx_bytes, record.len().saturating_sub(frame::VNET_HDR) as u64);
        if !self.can_send {
            Counters::add(&c.refused, 1);
            return;
        }
        if let Err(r) = frame::check(&record, self.switch.mtu) {
            c.reject(r);
            return;
        }
        self.switch.forward(self.id, record, Instant::now());
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

impl Drop for PortHandle {
    fn drop(&mut self) {
        let mut g = self.switch.inner.lock().expect("switch lock");
        g.ports.remove(&self.id);
        g.table.forget_port(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::VnetHdr;

    fn rec(dst: [u8; 6], src: [u8; 6]) -> Bytes {
        let mut r = VnetHdr::PLAIN.bytes().to_vec();
        r.extend_from_slice(&dst);
        r.extend_from_slice(&src);
        r.extend_from_slice(&[0x08, 0x00]);
        r.resize(r.len() + 46, 0);
        Bytes::from(r)
    }

    const BCAST: [u8; 6] = [0xff; 6];
    fn mac(n: u8) -> [u8; 6] {
        [2, 0, 0, 0, 0, n]
    }

    fn drain(rx: &mut mpsc::Receiver<Bytes>) -> Vec<Bytes> {
        let mut v = Vec::new();
        while let Ok(r) = rx.try_recv() {
            v.push(r);
        }
        v
    }

    #[test]
    fn three_ports_learn_flood_and_never_hairpin() {
        let sw = Switch::new(1500);
        let (a, mut ra) = sw.add_port("a".into(), true);
        let (b, mut rb) = sw.add_port("b".into(), true);
        let (c, mut rc) = sw.add_port("c".into(), true);

        // A broadcast from a reaches b and c, not a.
        a.forward(rec(BCAST, mac(1)));
        assert_eq!((drain(&mut ra).len(), drain(&mut rb).len(), drain(&mut rc).len()), (0, 1, 1));
        // b answers a by unicast: a learned, only a gets it.
        b.forward(rec(mac(1), mac(2)));
        assert_eq!((drain(&mut ra).len(), drain(&mut rb).len(), drain(&mut rc).len()), (1, 0, 0));
        // A frame for an address nobody has sent from yet floods.
        c.forward(rec(mac(9), mac(3)));
        assert_eq!((drain(&mut ra).len(), drain(&mut rb).len(), drain(&mut rc).len()), (1, 1, 0));
        // A frame for a station behind the port it came from goes nowhere.
        a.forward(rec(mac(1), mac(4)));
        assert_eq!((drain(&mut ra).len(), drain(&mut rb).len(), drain(&mut rc).len()), (0, 0, 0));
        // Multicast floods even to ports behind which that address was (wrongly) sent from.
        let mcast = [0x33, 0x33, 0, 0, 0, 1];
        c.forward(rec(mcast, mac(3)));
        assert_eq!((drain(&mut ra).len(), drain(&mut rb).len(), drain(&mut rc).len()), (1, 1, 0));

        // A port that leaves takes its addresses with it: frames for them flood again.
        let views = sw.ports();
        assert_eq!(views.iter().map(|p| p.macs).collect::<Vec<_>>(), vec![2, 1, 1]);
        drop(b);
        c.forward(rec(mac(2), mac(3)));
        assert_eq!((drain(&mut ra).len(), drain(&mut rc).len()), (1, 0));
        assert_eq!(sw.ports().len(), 2);
    }

    #[test]
    fn a_direct_port_gets_frames_at_once_and_what_it_refuses_is_dropped() {
        let sw = Switch::new(1500);
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = Arc::clone(&refuse);
        let _local = sw.add_direct_port(
            "local".into(),
            Box::new(move |rec| {
                if r.load(Ordering::Relaxed) {
                    return false;
                }
                g.lock().unwrap().push(rec.to_vec());
                true
            }),
        );
        let (a, _ra) = sw.add_port("a".into(), true);
        a.forward(rec(BCAST, mac(1)));
        assert_eq!(got.lock().unwrap().len(), 1);
        refuse.store(true, Ordering::Relaxed);
        a.forward(rec(BCAST, mac(1)));
        let v = sw.ports();
        assert_eq!((v[0].tx_frames, v[0].dropped), (1, 1));
    }

    #[test]
    fn a_read_only_port_receives_but_its_frames_are_dropped() {
        let sw = Switch::new(1500);
        let (a, mut ra) = sw.add_port("a".into(), true);
        let (m, mut rm) = sw.add_port("monitor".into(), false);
        a.forward(rec(BCAST, mac(1)));
        assert_eq!(drain(&mut rm).len(), 1, "the monitor port sees the segment");
        m.forward(rec(BCAST, mac(7)));
        m.forward(rec(mac(1), mac(7)));
        assert_eq!(drain(&mut ra).len(), 0);
        assert_eq!(sw.ports()[1].refused, 2);
        assert_eq!(sw.ports()[1].macs, 0, "nothing is learned from a port that may not send");
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_oversize_frames_are_refused() {
        let sw = Switch::new(1500);
        let (a, _ra) = sw.add_port("a".into(), true);
        let (_b, mut rb) = sw.add_port("slow".into(), true);
        for _ in 0..QUEUE + 10 {
            a.forward(rec(BCAST, mac(1)));
        }
        assert_eq!(drain(&mut rb).len(), QUEUE);
        let v = sw.ports();
        assert_eq!((v[1].tx_frames, v[1].dropped), (QUEUE as u64, 10));
        let mut big = rec(BCAST, mac(1)).to_vec();
        big.resize(frame::VNET_HDR + frame::ETH_HDR + 1501, 0);
        a.forward(Bytes::from(big));
        a.forward(Bytes::from_static(&[0u8; 12]));
        let v = sw.ports();
        assert_eq!((v[0].oversize, v[0].malformed), (1, 1));
        assert!(drain(&mut rb).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_ages() {
        let mut t = Table::default();
        let now = Instant::now();
        for i in 0..(MAX_PER_PORT as u32 + 50) {
            let b = i.to_be_bytes();
            t.learn([2, 1, b[0], b[1], b[2], b[3]], 1, now + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(t.learned(1), MAX_PER_PORT, "one port cannot learn more than its share");
        assert_eq!(t.lookup([2, 1, 0, 0, 0, 0], now), Some(1), "what it learned first stays");
        assert_eq!(t.lookup([2, 1, 0, 0, 4, 1], now), None, "past its share, nothing more is learned");
        for i in 0..(MAX_MACS as u32) {
            let b = i.to_be_bytes();
            t.learn([2, 2, b[0], b[1], b[2], b[3]], 2 + u64::from(i) % 16, now);
        }
        assert_eq!(t.macs.len(), MAX_MACS, "the whole table is bounded too");
        t.age(now + AGEING + Duration::from_secs(600));
        assert!(t.macs.is_empty() && t.per_port.values().all(|n| *n == 0), "everything aged out");
        t.learn(mac(1), 99, now);
        assert_eq!(t.lookup(mac(1), now + AGEING - Duration::from_secs(1)), Some(99));
        assert_eq!(t.lookup(mac(1), now + AGEING), None, "aged out");
    }
}
