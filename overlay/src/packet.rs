//! The few IPv6 header fields the overlay reads. Every accessor checks the length first: a short or non-IPv6
//! packet yields `None`, never a panic.

use std::net::Ipv6Addr;

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER: usize = 40;

fn addr_at(packet: &[u8], off: usize) -> Option<Ipv6Addr> {
    if packet.len() < IPV6_HEADER || packet[0] >> 4 != 6 {
        return None;
    }
    let b: [u8; 16] = packet[off..off + 16].try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// The source address of an IPv6 packet.
pub fn src(packet: &[u8]) -> Option<Ipv6Addr> {
    addr_at(packet, 8)
}

/// The destination address of an IPv6 packet.
pub fn dst(packet: &[u8]) -> Option<Ipv6Addr> {
    addr_at(packet, 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_and_refuses_short_or_v4() {
        let mut p = [0u8; 40];
        p[0] = 0x60;
        p[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p[24..40].copy_from_slice(&"fd6f::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(src(&p), Some(Ipv6Addr::LOCALHOST));
        assert_eq!(dst(&p), Some("fd6f::1".parse().unwrap()));
        assert_eq!(dst(&p[..39]), None);
        p[0] = 0x45;
        assert_eq!(src(&p), None);
        assert_eq!(dst(&[]), None);
    }
}
