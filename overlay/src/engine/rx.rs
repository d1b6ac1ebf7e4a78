//! Network to TUN: read many datagrams per call (`recvmmsg`, GRO), decrypt them, coalesce TCP segments again and
//! write them to the TUN, through this thread's own queue or, for pure ACKs, the TUN thread's.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::bufs::{ErrorLog, RxBufs, TxBufs, RX_BATCH};
use super::datagram::Src;
use super::{Inner, RX_BUF, WG_OVERHEAD};
use crate::packet;

impl Inner {
    /// Network -> TUN, and the answers: read many datagrams per call, decrypt, coalesce, write; and send on what
    /// the kernel puts on this thread's TUN queue.
    ///
    /// What this thread decrypts is written through its own TUN queue, except pure TCP ACKs, which go through the
    /// TUN thread's. The kernel steers a flow's packets to the queue that last wrote one of that flow, so the
    /// answers to what arrives here (a ping's reply, a response to a request, the ACKs of a stream this host
    /// receives) come back to this thread, which sends them at once: no other thread is woken on the way, which
    /// saves a wake-up per round trip. A host sending a bulk stream receives only its ACKs; they go through the TUN
    /// thread's queue, so that thread keeps sending the stream while this one receives.
    pub(super) fn rx_loop(&self) {
        let mut rx = RxBufs::new();
        let mut seg_mem = TxBufs::memory(self.mtu);
        let mut tx = TxBufs::new(&mut seg_mem, self.mtu);
        let mut errors = ErrorLog::new("TUN read");
        let fds = [self.udp.as_raw_fd(), self.tun_rx.as_raw_fd()];
        while !self.stopped() {
            let ready = self.stop_fd.wait(fds, -1);
            // A packet or two just written through our queue is often a request the kernel answered inside the
            // write (a ping, a TCP ACK): look for the answer at once rather than after another poll.
            let wrote = if ready & 1 != 0 { self.rx_batch(&mut rx) } else { 0 };
            if (ready & 2 != 0 || (1..=2).contains(&wrote)) && !self.send_from(&self.tun_rx, &mut tx, &mut errors) {
                return;
            }
        }
    }

    /// Reads one batch of datagrams from the UDP socket, without blocking, and writes what they carry to the TUN.
    /// Returns how many packets went through this thread's own queue.
    fn rx_batch(&self, b: &mut RxBufs) -> usize {
        let n = {
            let mut it = b.mem.chunks_mut(RX_BUF);
            let mut iovs: [IoSliceMut; RX_BATCH] = std::array::from_fn(|_| IoSliceMut::new(it.next().unwrap()));
            match self.udp_state.recv((&self.udp).into(), &mut iovs, &mut b.meta) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return 0,
                Err(e) => {
                    b.udp_errors.log(&e);
                    return 0;
                }
            }
        };
        let table = self.table();
        let room = self.mtu.max(1500) + WG_OVERHEAD + 148;
        let (mut own, mut acks, mut written) = (0, 0, 0);
        for (m, buf) in b.meta[..n].iter().zip(b.mem.chunks(RX_BUF)) {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let from = unmap(m.addr);
            for dgram in buf[..m.len].chunks(stride.max(1)) {
                let tb = &mut b.own[own];
                tb.clear();
                if tb.capacity() < VIRTIO_NET_HDR_LEN + RX_BUF {
                    tb.reserve_exact(VIRTIO_NET_HDR_LEN + RX_BUF); // once per buffer: room to coalesce into
                }
                tb.resize(VIRTIO_NET_HDR_LEN + dgram.len().max(room), 0);
                let Some(len) = self.handle_datagram(&table, Src::Udp(from), dgram, &mut tb[VIRTIO_NET_HDR_LEN..])
                else {
                    continue;
                };
                tb.truncate(VIRTIO_NET_HDR_LEN + len);
                if packet::is_pure_tcp_ack(&tb[VIRTIO_NET_HDR_LEN..]) {
                    std::mem::swap(&mut b.own[own], &mut b.acks[acks]);
                    acks += 1;
                    if acks == b.acks.len() {
                        self.write_tun(&self.tun, &mut b.gro, &mut b.acks[..acks], &mut b.tun_errors);
                        acks = 0;
                    }
                } else {
                    own += 1;
                    written += 1;
                    if own == b.own.len() {
                        self.write_tun(&self.tun_rx, &mut b.gro, &mut b.own[..own], &mut b.tun_errors);
                        own = 0;
                    }
                }
            }
        }
        if own > 0 {
            self.write_tun(&self.tun_rx, &mut b.gro, &mut b.own[..own], &mut b.tun_errors);
        }
        if acks > 0 {
            self.write_tun(&self.tun, &mut b.gro, &mut b.acks[..acks], &mut b.tun_errors);
        }
        written
    }

    fn write_tun(&self, queue: &SyncDevice, gro: &mut GROTable, bufs: &mut [Vec<u8>], errors: &mut ErrorLog) {
        if let Err(e) = queue.send_multiple(gro, bufs, VIRTIO_NET_HDR_LEN) {
            errors.log(&e);
        }
    }
}

/// An IPv4-mapped IPv6 address back to IPv4.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
