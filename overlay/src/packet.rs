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

/// True for a TCP segment that only acknowledges: no payload, and no SYN, FIN or RST. A host that receives mostly
/// these is the sending end of a bulk flow. Extension headers are not followed (such a packet is not a pure ACK).
pub fn is_pure_tcp_ack(packet: &[u8]) -> bool {
    const TCP: u8 = 6;
    const SYN_FIN_RST: u8 = 0x07;
    const ACK: u8 = 0x10;
    if packet.len() < IPV6_HEADER + 20 || packet[0] >> 4 != 6 || packet[6] != TCP {
        return false;
    }
    let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let tcp = &packet[IPV6_HEADER..];
    let header = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    header >= 20 && payload == header && flags & ACK != 0 && flags & SYN_FIN_RST == 0
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

    fn tcp(flags: u8, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 20 + payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        p[6] = 6;
        p[40 + 12] = 5 << 4;
        p[40 + 13] = flags;
        p
    }

    #[test]
    fn tells_pure_acks() {
        assert!(is_pure_tcp_ack(&tcp(0x10, 0)));
        assert!(is_pure_tcp_ack(&tcp(0x18, 0))); // PSH without data still carries nothing
        assert!(!is_pure_tcp_ack(&tcp(0x18, 100)));
        assert!(!is_pure_tcp_ack(&tcp(0x12, 0))); // SYN+ACK
        assert!(!is_pure_tcp_ack(&tcp(0x11, 0))); // FIN+ACK
        assert!(!is_pure_tcp_ack(&tcp(0x02, 0)));
        let mut udp = tcp(0x10, 0);
        udp[6] = 17;
        assert!(!is_pure_tcp_ack(&udp));
        assert!(!is_pure_tcp_ack(&tcp(0x10, 0)[..59]));
        let mut bad = tcp(0x10, 0);
        bad[40 + 12] = 2 << 4; // a data offset below the minimum
        assert!(!is_pure_tcp_ack(&bad));
    }
}
