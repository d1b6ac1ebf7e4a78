//! TUN to network: read a packet (or a 64 KiB super-packet the kernel split), find the peer of each run of
//! packets to one destination, encrypt the run into one buffer and send it in as few GSO sends as
//! [`crate::gso`] plans; and what to do when an endpoint turns out narrower than a full-size datagram.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use quinn_udp::Transmit;
use tun_rs::SyncDevice;

use super::bufs::{ErrorLog, TxBufs};
use super::{Inner, PENDING, WG_OVERHEAD};
use crate::device;
use crate::gso;
use crate::packet;
use crate::table::{Path, Peer, PeerState, Route};

impl Inner {
    /// TUN -> network: read a (possibly 64 KiB) packet, split it, encrypt the pieces into one buffer, send them
    /// with one GSO call per run of equal sizes.
    pub(super) fn tx_loop(&self) {
        let mut seg_mem = TxBufs::memory(self.mtu);
        let mut bufs = TxBufs::new(&mut seg_mem, self.mtu);
        let fd = self.tun.as_raw_fd();
        let mut errors = ErrorLog::new("TUN read");
        while !self.stopped() {
            if !self.stop_fd.wait_readable(Some(fd), None) {
                continue;
            }
            if !self.send_from(&self.tun, &mut bufs, &mut errors) {
                return;
            }
        }
    }

    /// Reads what waits on a TUN queue and sends it on; false once the device is gone (the overlay failed).
    pub(super) fn send_from(&self, queue: &SyncDevice, bufs: &mut TxBufs<'_>, errors: &mut ErrorLog) -> bool {
        match self.tx_batch(queue, bufs) {
            Ok(()) => true,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => true,
            Err(e) if is_fatal(&e) => {
                self.fail(format!("reading TUN device {}: {e} (was it removed?)", self.tun_name));
                false
            }
            Err(e) => {
                errors.log(&e);
                true
            }
        }
    }

    /// Reads one packet (or GSO super-packet) from a TUN queue, without blocking, and sends it on.
    fn tx_batch(&self, queue: &SyncDevice, b: &mut TxBufs<'_>) -> io::Result<()> {
        let n = queue.recv_multiple(&mut b.orig, &mut b.segs, &mut b.sizes, 0)?;
        let table = self.table();
        let (segs, sizes) = (&b.segs, &b.sizes);
        let mut i = 0;
        while i < n {
            let Some(dst) = packet::dst(&segs[i][..sizes[i]]) else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            while j < n && packet::dst(&segs[j][..sizes[j]]) == Some(dst) {
                j += 1;
            }
            match table.by_addr(&dst) {
                Some(peer) => self.send_run(peer, &segs[i..j], &sizes[i..j], &mut b.out, &mut b.lens),
                // Multicast and link-local traffic (neighbour discovery, mDNS) has nowhere to go.
                None if !metac_mesh::identity::is_overlay_addr(&dst) => {}
                None => {
                    self.counters.unknown_dst.fetch_add((j - i) as u64, Ordering::Relaxed);
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    for k in i..j {
                        if pending.len() == PENDING {
                            pending.pop_front();
                        }
                        pending.push_back((Instant::now(), segs[k][..sizes[k]].to_vec()));
                    }
                    drop(pending);
                    self.want_refresh();
                }
            }
            i = j;
        }
        Ok(())
    }

    pub(super) fn send_run<B: AsRef<[u8]>>(
        &self,
        peer: &Peer,
        segs: &[B],
        sizes: &[usize],
        out: &mut [u8],
        lens: &mut Vec<usize>,
    ) {
        let now = Instant::now();
        let mut st = peer.state();
        let mut tunn = st.tunn.take().unwrap_or_else(|| self.new_tunn(peer));
        lens.clear();
        let (mut off, mut bytes, mut handshake) = (0, 0, false);
        for (s, &n) in segs.iter().zip(sizes) {
            let room = (off + n + WG_OVERHEAD + 148).min(out.len());
            match tunn.encapsulate(&s.as_ref()[..n], &mut out[off..room]) {
                TunnResult::WriteToNetwork(p) => {
                    handshake |= p[0] == 1;
                    lens.push(p.len());
                    off += p.len();
                    bytes += n as u64;
                }
                TunnResult::Err(e) => tracing::trace!(?e, "encapsulate"),
                _ => bytes += n as u64, // queued until the handshake completes
            }
        }
        st.tunn = Some(tunn);
        st.last_active = now;
        if handshake {
            st.handshake_sent(now);
        }
        let route = st.route();
        drop(st);
        crate::table::Counters::add(&peer.counters.tx_bytes, bytes);
        if self.transmit(peer, route, &out[..off], lens) {
            if let Some(ep) = peer.take_narrow_hint() {
                self.leave_narrow(peer, &mut peer.state(), ep, now);
            }
        }
    }

    /// A send found `ep` narrower than a full-size datagram (see `table`): moves the peer to a wider endpoint and
    /// starts a handshake there, or says that its datagrams will go out fragmented.
    pub(super) fn leave_narrow(&self, peer: &Peer, st: &mut PeerState, ep: SocketAddr, now: Instant) {
        match st.too_narrow(ep, now) {
            Some(next) => {
                tracing::info!(peer = %peer.name, from = %ep, to = %next,
                    "the route to the peer's endpoint is narrower than the overlay's datagrams: moving");
                let mut buf = [0u8; 256];
                let Some(tunn) = st.tunn.as_mut() else { return };
                if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                    let l = p.len();
                    self.transmit(peer, Route { path: Path::Udp, endpoint: Some(next), narrow: false }, p, &[l]);
                    st.handshake_sent(now);
                }
            }
            None if st.endpoint == Some(ep) => tracing::info!(peer = %peer.name, %ep,
                "the route to the peer is narrower than the overlay's datagrams: they go out fragmented"),
            None => {}
        }
    }

    /// Sends encrypted datagrams laid end to end in `buf` (lengths in `lens`) on `path`.
    /// The caller may hold the peer's state lock: this must not take it. Returns true if the endpoint turned out
    /// narrow (a hint is left on the peer).
    pub(super) fn transmit(&self, peer: &Peer, route: Route, buf: &[u8], lens: &[usize]) -> bool {
        let mut narrow = false;
        match (route.path, route.endpoint, peer.node) {
            (Path::Udp, Some(ep), _) => {
                // To a narrow endpoint, one datagram per send, for the kernel to fragment.
                let max = if route.narrow { 1 } else { self.udp_state.max_gso_segments().max(1) };
                for train in gso::trains(lens, max, gso::MAX_BYTES) {
                    let seg = train.segment_size();
                    if let Err(e) = self.udp_send(ep, &buf[train.bytes.clone()], seg) {
                        if is_too_big(&e, seg.is_some()) {
                            peer.hint_narrow(ep);
                            narrow = true;
                            for d in buf[train.bytes].chunks(train.size) {
                                let _ = self.udp_send(ep, d, None);
                            }
                        }
                    }
                }
            }
            (Path::Relay, _, Some(node)) => {
                let mut start = 0;
                for &l in lens {
                    self.relay.send(&node, &buf[start..start + l]);
                    start += l;
                }
            }
            _ => crate::table::Counters::add(&peer.counters.no_path, lens.len() as u64),
        }
        narrow
    }

    /// Sends one datagram, or a GSO train of `segment_size` pieces; waits (a little) for room in the socket buffer.
    pub(super) fn udp_send(&self, ep: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
        let destination = match ep {
            SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
            v6 => v6,
        };
        let t = Transmit { destination, ecn: None, contents, segment_size, src_ip: None };
        let mut result = Ok(());
        for _ in 0..50 {
            result = self.udp_state.try_send((&self.udp).into(), &t);
            match &result {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    device::wait_writable(self.udp.as_raw_fd(), Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::debug!(error = %e, %ep, len = contents.len(), ?segment_size, "UDP send failed");
                    break;
                }
                Ok(()) => break,
            }
        }
        result
    }
}

/// Errors after which a descriptor is useless (the device or socket is gone).
fn is_fatal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADFD) | Some(libc::EBADF) | Some(libc::ENODEV) | Some(libc::EIO))
}

/// Whether a send failed because the datagram (or a GSO segment) is larger than the route to its destination.
fn is_too_big(e: &io::Error, gso: bool) -> bool {
    e.raw_os_error() == Some(libc::EMSGSIZE) || (gso && e.raw_os_error() == Some(libc::EINVAL))
}
