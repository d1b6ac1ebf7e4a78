//! Addresses: how node keys map to libp2p peer ids and back, how `--peer` values become multiaddrs, and which
//! addresses are worth advertising or dialing first.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::identity::NodeKey;

/// The libp2p peer id of a node key, if the key is a valid ed25519 point.
pub fn peer_id(key: &NodeKey) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// The node key inside a libp2p peer id (ed25519 ids inline the key).
pub fn node_key(peer: &PeerId) -> Option<NodeKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(NodeKey(pk.try_into_ed25519().ok()?.to_bytes()))
}

/// Parses a `--peer` value: a multiaddr, or `HOST[:PORT]` (IPv6 in brackets when a port is given), port 4747 by default.
pub fn parse_peer_addr(s: &str) -> Result<Multiaddr, String> {
    if s.starts_with('/') {
        return s.parse().map_err(|e| format!("{s:?} is not a valid multiaddr: {e}"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(|| format!("{s:?}: missing ']' after the IPv6 address"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            None if tail.is_empty() => 4747,
            None => return Err(format!("{s:?}: expected ':PORT' after ']'")),
        };
        (h.to_string(), port)
    } else if s.matches(':').count() > 1 {
        (s.to_string(), 4747) // a bare IPv6 address
    } else if let Some((h, p)) = s.split_once(':') {
        (h.to_string(), p.parse::<u16>().map_err(|_| format!("{s:?}: bad port {p:?}"))?)
    } else {
        (s.to_string(), 4747)
    };
    let proto = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => Protocol::Ip4(a),
        Ok(std::net::IpAddr::V6(a)) => Protocol::Ip6(a),
        Err(_) if !host.is_empty() => Protocol::Dns(host.into()),
        Err(_) => return Err(format!("{s:?}: empty host")),
    };
    Ok(Multiaddr::empty().with(proto).with(Protocol::Tcp(port)))
}

/// The IP address a multiaddr starts with, if it does.
pub fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    match addr.iter().next() {
        Some(Protocol::Ip6(a)) => Some(a.into()),
        Some(Protocol::Ip4(a)) => Some(a.into()),
        _ => None,
    }
}

/// True for an address taken from another node's advert that this node may dial: an IP address (never `/dns`,
/// which would make this node resolve and probe names a stranger chose), not unspecified, multicast or an overlay
/// address, then TCP or QUIC and at most a `/p2p` suffix. Loopback stays allowed: nodes on one machine advert it
/// when they have nothing else.
pub(super) fn is_dialable(addr: &Multiaddr) -> bool {
    let mut it = addr.iter();
    let ip_ok = match it.next() {
        Some(Protocol::Ip4(a)) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        Some(Protocol::Ip6(a)) => !(a.is_unspecified() || a.is_multicast() || crate::identity::is_overlay_addr(&a)),
        _ => false,
    };
    let transport_ok = match (it.next(), it.next()) {
        (Some(Protocol::Tcp(p)), None | Some(Protocol::P2p(_))) => p != 0,
        (Some(Protocol::Udp(p)), Some(Protocol::QuicV1)) => p != 0,
        _ => false,
    };
    ip_ok && transport_ok && it.all(|p| matches!(p, Protocol::P2p(_)))
}

/// True for addresses worth telling others about: not loopback, link-local or unspecified, and not an overlay
/// address (the mesh must never run over the overlay it carries).
pub(super) fn is_routable(addr: &Multiaddr) -> bool {
    ip_of(addr).is_none_or(|ip| is_routable_ip(&ip))
}

/// [`is_routable`] for a bare IP address (also the overlay's rule for tunnel endpoints).
pub fn is_routable_ip(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_unspecified()
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || crate::identity::is_overlay_addr(a))
        }
        std::net::IpAddr::V4(a) => !(a.is_loopback() || a.is_unspecified() || a.is_link_local()),
    }
}

/// Splits dial addresses into TCP (and other stream) addresses and QUIC ones. TCP is dialed first: on Linux,
/// TCP + noise + yamux is the faster and lighter of the two here (DESIGN section 6), and one connection per peer
/// is all we keep; QUIC is the fallback where TCP does not get through.
pub(super) fn split_quic(addrs: Vec<Multiaddr>) -> (Vec<Multiaddr>, Vec<Multiaddr>) {
    addrs.into_iter().partition(|a| !a.iter().any(|p| matches!(p, Protocol::QuicV1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn peer_id_round_trip() {
        let id = Identity::from_secret([5; 32]);
        let p = peer_id(&id.public()).unwrap();
        assert_eq!(node_key(&p), Some(id.public()));
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(id.secret()).unwrap();
        assert_eq!(kp.public().to_peer_id(), p);
    }

    #[test]
    fn peer_addr_forms() {
        assert_eq!(parse_peer_addr("[fd00:77::2]:4000").unwrap().to_string(), "/ip6/fd00:77::2/tcp/4000");
        assert_eq!(parse_peer_addr("fd00:77::2").unwrap().to_string(), "/ip6/fd00:77::2/tcp/4747");
        assert_eq!(parse_peer_addr("127.0.0.1:9").unwrap().to_string(), "/ip4/127.0.0.1/tcp/9");
        assert_eq!(parse_peer_addr("node1").unwrap().to_string(), "/dns/node1/tcp/4747");
        assert_eq!(parse_peer_addr("/ip6/::1/udp/5/quic-v1").unwrap().to_string(), "/ip6/::1/udp/5/quic-v1");
        assert!(parse_peer_addr("[fd00::1").unwrap_err().contains("missing ']'"));
        assert!(parse_peer_addr("host:notaport").unwrap_err().contains("bad port"));
        assert!(parse_peer_addr("/nonsense").is_err());
    }

    #[test]
    fn quic_addresses_are_split_from_tcp() {
        let a: Vec<Multiaddr> = ["/ip6/fd00::1/udp/1/quic-v1", "/ip6/fd00::1/tcp/1", "/dns/n/tcp/2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let (tcp, quic) = split_quic(a);
        assert_eq!(tcp.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["/ip6/fd00::1/tcp/1", "/dns/n/tcp/2"]);
        assert_eq!(quic.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["/ip6/fd00::1/udp/1/quic-v1"]);
    }

    /// Attack (issue 10, finding 8): adverts could make every node resolve and dial `/dns/` names, or any
    /// address a stranger chose.
    #[test]
    fn only_plain_ip_addresses_from_adverts_are_dialed() {
        for (a, ok) in [
            ("/ip6/fd00:77::1/tcp/4747", true),
            ("/ip4/192.0.2.1/udp/4747/quic-v1", true),
            ("/ip4/127.0.0.1/tcp/4747/p2p/12D3KooWDAvUXQUWgYV3QZZZPML2cigTtyXUQY5s52hBUH6fRARV", true),
            ("/dns/attacker.example/tcp/4747", false),
            ("/dns4/x/tcp/1", false),
            ("/ip4/0.0.0.0/tcp/4747", false),
            ("/ip4/224.0.0.1/tcp/4747", false),
            ("/ip6/ff02::1/tcp/4747", false),
            ("/ip6/fd6f:e1da:f01c::1/tcp/4747", false),
            ("/ip4/192.0.2.1/tcp/0", false),
            ("/ip4/192.0.2.1/udp/4747", false),
            ("/ip4/192.0.2.1/tcp/4747/ws", false),
            ("/ip4/192.0.2.1", false),
        ] {
            assert_eq!(is_dialable(&a.parse().unwrap()), ok, "{a}");
        }
    }

    #[test]
    fn routable_filter() {
        for (a, ok) in [
            ("/ip6/::1/tcp/1", false),
            ("/ip6/fe80::1/tcp/1", false),
            ("/ip6/fd00:77::1/tcp/1", true),
            ("/ip4/127.0.0.1/tcp/1", false),
            ("/ip4/0.0.0.0/tcp/1", false),
            ("/ip6/fd6f:e1da:f01c::1/tcp/1", false),
        ] {
            assert_eq!(is_routable(&a.parse().unwrap()), ok, "{a}");
        }
    }
}
