//! Keys and configurations for stock WireGuard peers ("guests"): `metac overlay wg-config NAME` gives a
//! wireguard-go or kernel WireGuard peer a key pair, an overlay address and a wg-quick file with which it reaches
//! the node that printed it. A guest's address is derived from its public key the way a node's is from its node
//! key, under another hash context, so it is stable and cannot be chosen to collide with a node's.

use std::net::{Ipv6Addr, SocketAddr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use x25519_dalek::{PublicKey, StaticSecret};

/// The overlay address of a guest with X25519 public key `public`.
pub fn guest_addr(public: &[u8; 32]) -> Ipv6Addr {
    metac_mesh::identity::overlay_addr_in("metac overlay guest address v1", public)
}

/// A new X25519 key pair: (secret, public).
pub fn generate() -> Result<([u8; 32], [u8; 32]), metac_mesh::identity::Error> {
    let secret = metac_mesh::identity::random_bytes::<32>()?;
    let public = PublicKey::from(&StaticSecret::from(secret)).to_bytes();
    Ok((secret, public))
}

/// A key in WireGuard's text form (base64).
pub fn key_to_string(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// Parses a key in WireGuard's text form.
pub fn key_from_str(s: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD.decode(s.trim()).map_err(|e| format!("{s:?} is not a base64 WireGuard key: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("a WireGuard key is 32 bytes, {s:?} holds {}", b.len()))
}

/// What a guest's wg-quick file says.
pub struct GuestConfig<'a> {
    /// The guest's name on the node.
    pub name: &'a str,
    /// The guest's private key, or `None` when it keeps its own (the file then says where to put it).
    pub private: Option<&'a [u8; 32]>,
    /// The guest's public key.
    pub public: &'a [u8; 32],
    /// The node's key (hex), for the comment.
    pub node: &'a str,
    /// The node's X25519 public key.
    pub node_public: &'a [u8; 32],
    /// The node's overlay address.
    pub node_addr: Ipv6Addr,
    /// Where the guest sends its packets.
    pub endpoint: SocketAddr,
    /// MTU of the guest's interface.
    pub mtu: u16,
}

impl GuestConfig<'_> {
    /// The wg-quick file.
    pub fn render(&self) -> String {
        let private = match self.private {
            Some(k) => key_to_string(k),
            None => "<the private key of public key ".to_string() + &key_to_string(self.public) + ">",
        };
        format!(
            "# metac overlay: guest {name:?} of node {node}\n\
             # Bring it up with `wg-quick up ./FILE.conf` (wireguard-go is used where the kernel has no WireGuard).\n\
             [Interface]\n\
             PrivateKey = {private}\n\
             Address = {addr}/128\n\
             MTU = {mtu}\n\
             \n\
             [Peer]\n\
             # metac node {node}\n\
             PublicKey = {node_public}\n\
             Endpoint = {endpoint}\n\
             AllowedIPs = {node_addr}/128\n\
             PersistentKeepalive = 25\n",
            name = self.name,
            node = self.node,
            addr = guest_addr(self.public),
            mtu = self.mtu,
            node_public = key_to_string(self.node_public),
            endpoint = self.endpoint,
            node_addr = self.node_addr,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_addresses_are_in_the_prefix_and_differ_from_node_addresses() {
        let k = [9u8; 32];
        let a = guest_addr(&k);
        assert!(metac_mesh::identity::is_overlay_addr(&a));
        assert_ne!(a, metac_mesh::identity::overlay_addr(&k));
        assert_eq!(a, guest_addr(&k));
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let (s, p) = generate().unwrap();
        assert_ne!(s, p);
        assert_eq!(key_from_str(&key_to_string(&p)), Ok(p));
        assert!(key_from_str("nope!").unwrap_err().contains("not a base64"));
        assert!(key_from_str("AAAA").unwrap_err().contains("32 bytes"));
    }

    #[test]
    fn config_names_both_ends() {
        let (s, p) = generate().unwrap();
        let node_public = [1u8; 32];
        let c = GuestConfig {
            name: "laptop",
            private: Some(&s),
            public: &p,
            node: "ab",
            node_public: &node_public,
            node_addr: "fd6f:e1da:f01c::1".parse().unwrap(),
            endpoint: "[fd00:77::1]:51820".parse().unwrap(),
            mtu: 1420,
        }
        .render();
        assert!(c.contains(&format!("PrivateKey = {}", key_to_string(&s))));
        assert!(c.contains(&format!("Address = {}/128", guest_addr(&p))));
        assert!(c.contains("Endpoint = [fd00:77::1]:51820"));
        assert!(c.contains("AllowedIPs = fd6f:e1da:f01c::1/128"));
    }
}
