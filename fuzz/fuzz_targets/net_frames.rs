//! Fuzzes what a binder's stream brings an exporter in metac-net/1: any bytes, fed to `proto::decode` in pieces of
//! 1 to 17 bytes chosen by the data, give whole records or a bad length, never a panic; every record is bounded and
//! gets a verdict from `frame::check` at any MTU; a record that passes has its MACs where the switch reads them;
//! and a switch with three ports takes every such record without panicking.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use metac_net::frame::{self, MAX_RECORD, MIN_RECORD};
use metac_net::proto;
use metac_net::switch::Switch;

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |b| usize::from(b % 17) + 1);
    let mtu = data.get(1).map_or(1500, |b| 576 + u16::from(*b) * 33);
    let sw = Switch::new(mtu.min(frame::MAX_MTU));
    let (a, _ra) = sw.add_port("a".into(), true);
    let (_b, _rb) = sw.add_port("b".into(), true);
    let (m, _rm) = sw.add_port("monitor".into(), false);
    let mut buf = BytesMut::new();
    'feed: for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match proto::decode(&mut buf) {
                Ok(Some(rec)) => {
                    assert!(rec.len() >= MIN_RECORD && rec.len() <= MAX_RECORD);
                    if frame::check(&rec, mtu).is_ok() {
                        let _ = (frame::src(&rec), frame::dst(&rec));
                    }
                    a.forward(Bytes::clone(&rec));
                    m.forward(rec);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let ports = sw.ports();
    assert_eq!(ports[2].macs, 0, "nothing is learned from a port that may not send");
});
