//! One WireGuard datagram in, from UDP or the relay path: check it (rate limiter, key, receiver index, which node
//! relayed it), decrypt it, answer handshakes and send what waited for one. Both the receiving thread and the relay
//! readers come through here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use metac_mesh::identity::NodeKey;

use super::{Inner, PENDING};
use crate::table::Table;

/// Where a datagram came from.
#[derive(Clone, Copy)]
pub(super) enum Src {
    Udp(SocketAddr),
    Relay(NodeKey),
}

impl Src {
    /// The UDP source, if it came over UDP.
    fn udp(self) -> Option<SocketAddr> {
        match self {
            Src::Udp(a) => Some(a),
            Src::Relay(_) => None,
        }
    }
}

impl Inner {
    /// Handles one WireGuard datagram. Returns the length of an inner packet written at the start of `out`, to be
    /// written to the TUN; handshake answers and queued packets are sent from here.
    pub(super) fn handle_datagram(&self, table: &Table, src: Src, datagram: &[u8], out: &mut [u8]) -> Option<usize> {
        let reject = || {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            None
        };
        let Ok(parsed) = Tunn::parse_incoming_packet(datagram) else { return reject() };
        let (peer, is_init, is_cookie) = match &parsed {
            Packet::HandshakeInit(p) => {
                let mut cookie = [0u8; 64];
                match self.rate_limiter.verify_packet(src.udp().map(|a| a.ip()), datagram, &mut cookie) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(c)) => {
                        if let Src::Udp(a) = src {
                            let _ = self.udp_send(a, c, None);
                        }
                        return None;
                    }
                    Err(_) => return reject(),
                }
                let Ok(half) = parse_handshake_anon(&self.secret, &self.public, p) else { return reject() };
                match table.by_public(&half.peer_static_public) {
                    Some(peer) => (peer, true, false),
                    None => {
                        tracing::debug!(key = %crate::wgconf::key_to_string(&half.peer_static_public),
                            "handshake from an unknown key");
                        let mut pending = self.pending_handshakes.lock().unwrap_or_else(|e| e.into_inner());
                        if pending.len() == PENDING {
                            pending.pop_front();
                        }
                        pending.push_back((Instant::now(), src, datagram.to_vec()));
                        drop(pending);
                        self.want_refresh(); // perhaps a node whose advert is on its way
                        return reject();
                    }
                }
            }
            Packet::HandshakeResponse(p) => (table.by_receiver_index(p.receiver_idx)?, false, false),
            Packet::PacketCookieReply(p) => (table.by_receiver_index(p.receiver_idx)?, false, true),
            Packet::PacketData(p) => match table.by_receiver_index(p.receiver_idx) {
                Some(peer) => (peer, false, false),
                None => return reject(),
            },
        };
        if let Src::Relay(node) = src {
            if peer.node != Some(node) {
                return reject(); // a node may only relay its own packets
            }
        }
        let now = Instant::now();
        let mut st = peer.state();
        let mut tunn = st.tunn.take().unwrap_or_else(|| self.new_tunn(peer));
        let from = src.udp();
        let mut result = None;
        match tunn.decapsulate(from.map(|a| a.ip()), datagram, out) {
            TunnResult::WriteToNetwork(reply) => {
                if !is_cookie {
                    st.answered(reply, from, is_init, now);
                }
                match src {
                    Src::Udp(a) => {
                        let _ = self.udp_send(a, reply, None);
                    }
                    Src::Relay(n) => self.relay.send(&n, reply),
                }
                // Packets queued while the handshake ran go out now.
                let route = st.route();
                while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], out) {
                    let l = p.len();
                    self.transmit(peer, route, p, &[l]);
                }
            }
            TunnResult::WriteToTunnelV6(p, addr) => {
                st.authenticated(from, false, now);
                if addr != peer.addr {
                    crate::table::Counters::add(&peer.counters.spoofed, 1);
                    self.counters.spoofed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %peer.name, claimed = %addr, "dropped a packet with a forged source address");
                } else {
                    crate::table::Counters::add(&peer.counters.rx_bytes, p.len() as u64);
                    result = Some(p.len());
                }
            }
            TunnResult::WriteToTunnelV4(..) => {
                st.authenticated(from, false, now);
                self.counters.rejected.fetch_add(1, Ordering::Relaxed); // the overlay is IPv6 only
            }
            TunnResult::Done => {
                if !is_cookie {
                    st.authenticated(from, false, now); // a keepalive
                }
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %peer.name, ?e, "decapsulate");
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        st.tunn = Some(tunn);
        result
    }
}
