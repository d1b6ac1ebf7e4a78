//! The buffers of the data threads, allocated once when a thread starts so that no packet allocates, and the
//! rate-limited error log they share.

use std::io;
use std::time::{Duration, Instant};

use quinn_udp::RecvMeta;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::{RX_BUF, WG_OVERHEAD};

/// Datagrams per `recvmmsg` (each may hold up to 64 GRO segments).
pub(super) const RX_BATCH: usize = 16;

/// The buffers of the TUN -> network path, allocated once per thread.
pub(super) struct TxBufs<'a> {
    pub(super) orig: Vec<u8>,
    pub(super) segs: Vec<&'a mut [u8]>,
    pub(super) sizes: Vec<usize>,
    pub(super) out: Vec<u8>,
    pub(super) lens: Vec<usize>,
}

impl<'a> TxBufs<'a> {
    fn seg_len(mtu: usize) -> usize {
        mtu.max(1500) + 128
    }

    /// The memory the pieces of a split packet go to: one allocation, large enough to be mapped on its own, so
    /// none of it is resident until used.
    pub(super) fn memory(mtu: usize) -> Vec<u8> {
        vec![0u8; IDEAL_BATCH_SIZE * Self::seg_len(mtu)]
    }

    pub(super) fn new(memory: &'a mut [u8], mtu: usize) -> TxBufs<'a> {
        let seg_len = Self::seg_len(mtu);
        TxBufs {
            orig: vec![0u8; VIRTIO_NET_HDR_LEN + 65535],
            segs: memory.chunks_mut(seg_len).collect(),
            sizes: vec![0usize; IDEAL_BATCH_SIZE],
            out: vec![0u8; IDEAL_BATCH_SIZE * (seg_len + WG_OVERHEAD)],
            lens: Vec::with_capacity(IDEAL_BATCH_SIZE),
        }
    }
}

/// The buffers of the network -> TUN path, allocated once per thread; the TUN buffers are reserved on first use,
/// so an idle overlay holds little memory and a busy one allocates nothing per packet.
pub(super) struct RxBufs {
    /// One mapping for the datagrams of a `recvmmsg` (resident only once used).
    pub(super) mem: Vec<u8>,
    pub(super) meta: [RecvMeta; RX_BATCH],
    /// Packets to write through the receiving thread's TUN queue.
    pub(super) own: Vec<Vec<u8>>,
    /// Pure TCP ACKs, written through the TUN thread's queue.
    pub(super) acks: Vec<Vec<u8>>,
    pub(super) gro: GROTable,
    pub(super) udp_errors: ErrorLog,
    pub(super) tun_errors: ErrorLog,
}

impl RxBufs {
    pub(super) fn new() -> RxBufs {
        RxBufs {
            mem: vec![0u8; RX_BATCH * RX_BUF],
            meta: [RecvMeta::default(); RX_BATCH],
            own: (0..IDEAL_BATCH_SIZE).map(|_| Vec::new()).collect(),
            acks: (0..IDEAL_BATCH_SIZE).map(|_| Vec::new()).collect(),
            gro: GROTable::default(),
            udp_errors: ErrorLog::new("UDP receive"),
            tun_errors: ErrorLog::new("TUN write"),
        }
    }
}

/// Logs an error of a data thread at most once a second, with the count of those not logged.
pub(super) struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    pub(super) fn new(what: &'static str) -> ErrorLog {
        ErrorLog { what, last: None, suppressed: 0 }
    }

    pub(super) fn log(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.suppressed += 1;
            std::thread::sleep(Duration::from_millis(1)); // a persistent error must not spin a core
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "overlay {}", self.what);
        self.last = Some(now);
        self.suppressed = 0;
    }
}
