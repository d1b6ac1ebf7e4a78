//! What `metac overlay status` shows: a snapshot of the counters and of every peer's state, read without stopping
//! the data threads.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;

use super::Overlay;

/// What `metac overlay status` shows of one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Node key (hex) or `guest:NAME`.
    pub name: String,
    /// Overlay address.
    pub addr: Ipv6Addr,
    /// Current UDP endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The route to the endpoint is narrower than a full-size datagram: datagrams go out fragmented.
    pub narrow: bool,
    /// `udp` or `relay`.
    pub path: &'static str,
    /// Whether a tunnel exists now (they are made on demand and dropped when idle).
    pub tunnel: bool,
    /// Seconds since the last completed handshake, if a session is up.
    pub last_handshake_secs: Option<f64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Packets from it with a forged source address, dropped.
    pub spoofed: u64,
}

/// What `metac overlay status` shows.
#[derive(Debug, Clone)]
pub struct OverlayStatus {
    /// Why the data path stopped, if it did (the TUN device was removed under the node).
    pub failed: Option<String>,
    /// TUN device name.
    pub tun: String,
    /// This node's overlay address.
    pub addr: Ipv6Addr,
    /// UDP port of the tunnels.
    pub port: u16,
    /// MTU of the TUN.
    pub mtu: u16,
    /// Whether the TUN runs with TSO/GSO offloads.
    pub offload: bool,
    /// UDP GSO segments per send (1 = none).
    pub gso_segments: usize,
    /// UDP GRO segments per receive (1 = none).
    pub gro_segments: usize,
    /// Packets read from the TUN for an address no peer owns.
    pub unknown_dst: u64,
    /// Datagrams that were not valid WireGuard, came from unknown keys, or failed authentication.
    pub rejected: u64,
    /// Packets from peers with a forged source address.
    pub spoofed: u64,
    /// Per peer.
    pub peers: Vec<PeerStatus>,
}

impl Overlay {
    /// The state of the overlay and of every peer.
    pub fn status(&self) -> OverlayStatus {
        let inner = &self.inner;
        let table = inner.table();
        let peers = table
            .peers()
            .iter()
            .map(|p| {
                let st = p.state();
                PeerStatus {
                    name: p.name.clone(),
                    addr: p.addr,
                    endpoint: st.endpoint,
                    narrow: st.route().narrow,
                    path: st.path.as_str(),
                    tunnel: st.tunn.is_some(),
                    last_handshake_secs: st
                        .tunn
                        .as_ref()
                        .and_then(|t| t.time_since_last_handshake())
                        .map(|d| d.as_secs_f64()),
                    rx_bytes: p.counters.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.counters.tx_bytes.load(Ordering::Relaxed),
                    spoofed: p.counters.spoofed.load(Ordering::Relaxed),
                }
            })
            .collect();
        OverlayStatus {
            failed: inner.failed.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            tun: inner.tun_name.clone(),
            addr: inner.addr,
            port: inner.port,
            mtu: inner.mtu as u16,
            offload: inner.offload,
            gso_segments: inner.udp_state.max_gso_segments(),
            gro_segments: inner.udp_state.gro_segments(),
            unknown_dst: inner.counters.unknown_dst.load(Ordering::Relaxed),
            rejected: inner.counters.rejected.load(Ordering::Relaxed),
            spoofed: inner.counters.spoofed.load(Ordering::Relaxed),
            peers,
        }
    }
}
