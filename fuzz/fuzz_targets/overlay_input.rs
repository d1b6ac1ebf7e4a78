//! Fuzzes what the overlay reads from the network and from adverts: relay frames off a mesh stream, the tunnel
//! string of an advert, the IPv6 and TCP header fields read from packets, and WireGuard datagrams fed to a tunnel
//! (boringtun's parser and state machine). Each must give a value or an error, never panic.

#![no_main]

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use libfuzzer_sys::fuzz_target;
use metac_overlay::advert::TunnelAdvert;
use metac_overlay::{packet, relay};

fuzz_target!(|data: &[u8]| {
    // Relay frames: every whole frame splits off exactly, the rest is kept.
    let mut rest = data;
    while let Ok(Some((d, r))) = relay::decode(rest) {
        assert!(!d.is_empty() && d.len() <= relay::MAX_DATAGRAM);
        rest = r;
    }
    // Tunnel adverts: whatever parses prints back to something that parses to the same value.
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = s.parse::<TunnelAdvert>() {
            assert_eq!(t.to_string().parse::<TunnelAdvert>(), Ok(t));
        }
    }
    let _ = (packet::src(data), packet::dst(data), packet::is_pure_tcp_ack(data));
    // A datagram from the network into a tunnel.
    let mut tunn = Tunn::new(StaticSecret::from([1u8; 32]), PublicKey::from([9u8; 32]), None, None, 1, None);
    let mut out = vec![0u8; data.len() + 256];
    if let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, data, &mut out) {
        assert!(!p.is_empty());
    }
});
