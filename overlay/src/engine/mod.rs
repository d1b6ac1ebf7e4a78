//! The engine: the TUN device, the UDP socket, the peer table and three threads (TUN to network, network to
//! TUN, timers). Relayed datagrams come in through [`Overlay::relay_input`] and leave through the [`Relay`] the
//! node provides; the engine never touches the mesh itself.
//!
//! This file holds what the threads share ([`Inner`]), the handle the node holds ([`Overlay`]: start, peers,
//! relay input, stop) and the constants more than one thread uses. Each thread's work has its own file:
//! [`tx`] (TUN to network: batching, encryption, GSO sends, narrow endpoints), [`rx`] (network to TUN),
//! [`datagram`] (one WireGuard datagram, from UDP or the relay), [`timers`], [`status`] (what
//! `metac overlay status` shows) and [`bufs`] (the buffers each data thread allocates once). How a run of
//! encrypted datagrams is cut into GSO sends is decided apart, by the pure [`crate::gso`].

mod bufs;
mod datagram;
mod rx;
mod status;
mod timers;
mod tx;

use std::io;
use std::net::{Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn};
use boringtun::x25519::{PublicKey, StaticSecret};
use metac_mesh::identity::NodeKey;
use quinn_udp::UdpSocketState;
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::device;
use crate::packet;
use crate::table::{Peer, PeerInfo, Table};

use datagram::Src;
pub use status::{OverlayStatus, PeerStatus};

/// The default MTU of the TUN: a 1500-byte underlay minus IPv6 (40), UDP (8) and WireGuard (32) headers.
pub const DEFAULT_MTU: u16 = 1420;

/// WireGuard's data packet overhead (type, index, counter, tag).
const WG_OVERHEAD: usize = 32;

/// Largest UDP payload read at once (a GRO train).
const RX_BUF: usize = 65535;

/// Packets to overlay addresses no peer owns yet, kept until the peer set is refreshed (the node learns of a peer
/// a moment after its first packet), and how long they stay useful.
const PENDING: usize = 16;
const PENDING_TTL: Duration = Duration::from_secs(3);

/// Handshakes per second accepted before cookies are required (boringtun's rate limiter).
const HANDSHAKE_RATE: u64 = 100;

/// How the overlay starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// TUN device name.
    pub tun: String,
    /// UDP port of the tunnels; 0 picks one.
    pub port: u16,
    /// MTU of the TUN.
    pub mtu: u16,
    /// This node's X25519 secret (derived from its ed25519 key).
    pub secret: [u8; 32],
    /// This node's overlay address.
    pub addr: Ipv6Addr,
}

/// Why the overlay did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TUN device cannot be made (no privilege, no /dev/net/tun, name taken).
    #[error("{0}")]
    Tun(String),
    /// The UDP port cannot be bound.
    #[error("cannot bind UDP port {port} for the overlay tunnels: {source} (choose another with --overlay-port)")]
    Udp {
        /// The port asked for.
        port: u16,
        /// Why.
        source: io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Sends WireGuard datagrams to a node over the mesh (the relay path). It must not block: drop the datagram when
/// its queue is full, as a congested link would.
pub trait Relay: Send + Sync + 'static {
    /// Queue one datagram for `node`.
    fn send(&self, node: &NodeKey, datagram: &[u8]);

    /// The peer set may be stale (a packet found no peer, or a guest changed): refresh it soon.
    fn wake(&self) {}
}

/// Scratch buffers for [`Overlay::relay_input`]; one per relay reader, allocated once.
pub struct RelayScratch {
    buf: Vec<Vec<u8>>,
    gro: GROTable,
}

impl Default for RelayScratch {
    fn default() -> Self {
        RelayScratch { buf: vec![Vec::with_capacity(VIRTIO_NET_HDR_LEN + RX_BUF)], gro: GROTable::default() }
    }
}

#[derive(Default)]
struct Counters {
    unknown_dst: AtomicU64,
    rejected: AtomicU64,
    spoofed: AtomicU64,
}

struct Inner {
    /// The TUN queue the TUN thread reads.
    tun: SyncDevice,
    /// The TUN queue of the receiving thread: it writes what it decrypts here (but pure TCP ACKs), so the kernel
    /// puts those flows' answers here too, and the same thread sends them (see `rx_loop`).
    tun_rx: SyncDevice,
    tun_name: String,
    udp: UdpSocket,
    udp_state: UdpSocketState,
    port: u16,
    mtu: usize,
    secret: StaticSecret,
    public: PublicKey,
    addr: Ipv6Addr,
    table: RwLock<Arc<Table>>,
    next_index: Mutex<u32>,
    rate_limiter: Arc<RateLimiter>,
    relay: Box<dyn Relay>,
    stop: AtomicBool,
    stop_fd: device::StopFd,
    failed: Mutex<Option<String>>,
    refresh: AtomicBool,
    pending: Mutex<std::collections::VecDeque<(Instant, Vec<u8>)>>,
    pending_handshakes: Mutex<std::collections::VecDeque<(Instant, Src, Vec<u8>)>>,
    counters: Counters,
    offload: bool,
}

/// The running overlay. Dropping it stops the threads and removes the TUN device.
pub struct Overlay {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Overlay {
    /// Creates the TUN device and the UDP socket and starts the threads.
    pub fn start(config: Config, relay: Box<dyn Relay>) -> Result<Overlay, StartError> {
        let (tun, tun_rx) = device::open_tun(&config.tun, config.addr, config.mtu).map_err(StartError::Tun)?;
        let udp = device::bind_udp(config.port).map_err(|source| StartError::Udp { port: config.port, source })?;
        let port = udp.local_addr().map_err(|e| StartError::Other(e.to_string()))?.port();
        let udp_state = UdpSocketState::new((&udp).into()).map_err(|e| StartError::Other(e.to_string()))?;
        device::allow_fragments(udp.as_raw_fd()).map_err(|e| StartError::Other(format!("UDP socket options: {e}")))?;
        device::drop_receive_extras(udp.as_raw_fd());
        let secret = StaticSecret::from(config.secret);
        let public = PublicKey::from(&secret);
        let offload = tun.tcp_gso();
        // The threads wait in poll (beside the stop signal) and then read until nothing is left.
        for fd in [tun.as_raw_fd(), tun_rx.as_raw_fd()] {
            device::set_nonblocking(fd).map_err(|e| StartError::Other(format!("TUN O_NONBLOCK: {e}")))?;
        }
        let inner = Arc::new(Inner {
            tun_name: tun.name().unwrap_or(config.tun),
            tun,
            tun_rx,
            udp,
            udp_state,
            port,
            mtu: config.mtu as usize,
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE)),
            secret,
            public,
            addr: config.addr,
            table: RwLock::new(Arc::new(Table::default())),
            next_index: Mutex::new(0),
            relay,
            stop: AtomicBool::new(false),
            failed: Mutex::new(None),
            stop_fd: device::StopFd::new().map_err(|e| StartError::Other(format!("eventfd: {e}")))?,
            refresh: AtomicBool::new(false),
            pending: Mutex::new(std::collections::VecDeque::with_capacity(PENDING)),
            pending_handshakes: Mutex::new(std::collections::VecDeque::with_capacity(PENDING)),
            counters: Counters::default(),
            offload,
        });
        let mut threads = vec![];
        for (name, f) in [
            ("metac-ovl-tx", Inner::tx_loop as fn(&Inner)),
            ("metac-ovl-rx", Inner::rx_loop),
            ("metac-ovl-timer", Inner::timer_loop),
        ] {
            let i = Arc::clone(&inner);
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&i))
                .map_err(|e| StartError::Other(format!("cannot start thread {name}: {e}")))?;
            threads.push(t);
        }
        tracing::info!(
            tun = %inner.tun_name, addr = %inner.addr, port, offload,
            gso = inner.udp_state.max_gso_segments(), gro = inner.udp_state.gro_segments(),
            "overlay up"
        );
        Ok(Overlay { inner, threads: Mutex::new(threads) })
    }

    /// The UDP port the tunnels listen on.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The TUN device's name.
    pub fn tun_name(&self) -> &str {
        &self.inner.tun_name
    }

    /// This node's X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.inner.public.to_bytes()
    }

    /// The MTU of the TUN.
    pub fn mtu(&self) -> u16 {
        self.inner.mtu as u16
    }

    /// Replaces the peer set (state of peers that stay is kept).
    pub fn set_peers(&self, infos: Vec<PeerInfo>) {
        let mut next = self.inner.next_index.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = self.inner.table.write().unwrap_or_else(|e| e.into_inner());
        let new = Arc::new(table.update(infos, &mut next, Instant::now()));
        *table = Arc::clone(&new);
        drop(table);
        drop(next);
        // Packets that found no peer a moment ago may have one now.
        let pending: Vec<(Instant, Vec<u8>)> =
            self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        let mut out = vec![];
        let mut lens = vec![];
        // Handshakes from keys unknown a moment ago: answer them now rather than after the initiator's retry.
        let handshakes: Vec<(Instant, Src, Vec<u8>)> =
            self.inner.pending_handshakes.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for (at, src, d) in handshakes {
            let known = match Tunn::parse_incoming_packet(&d) {
                Ok(Packet::HandshakeInit(p)) => parse_handshake_anon(&self.inner.secret, &self.inner.public, &p)
                    .is_ok_and(|h| new.by_public(&h.peer_static_public).is_some()),
                _ => false,
            };
            if known && at.elapsed() < PENDING_TTL {
                out.resize(self.inner.mtu + 256, 0);
                self.inner.handle_datagram(&new, src, &d, &mut out);
            }
        }
        for (at, p) in pending {
            let peer = packet::dst(&p).and_then(|d| new.by_addr(&d));
            if let (Some(peer), true) = (peer, at.elapsed() < PENDING_TTL) {
                out.resize(p.len() + WG_OVERHEAD + 148, 0);
                self.inner.send_run(peer, std::slice::from_ref(&p), &[p.len()], &mut out, &mut lens);
            }
        }
    }

    /// Asks the node to refresh the peer set at once (a guest was added).
    pub fn request_refresh(&self) {
        self.inner.want_refresh();
    }

    /// True (once) if a packet went to an overlay address no peer owns since the last call: the node should
    /// refresh the peer set now rather than at its next tick.
    pub fn wants_refresh(&self) -> bool {
        self.inner.refresh.swap(false, Ordering::Relaxed)
    }

    /// A datagram that arrived over the relay path from `node`.
    pub fn relay_input(&self, node: NodeKey, datagram: &[u8], scratch: &mut RelayScratch) {
        let inner = &self.inner;
        let table = inner.table();
        let buf = &mut scratch.buf[0];
        buf.clear();
        buf.resize(VIRTIO_NET_HDR_LEN + datagram.len().max(inner.mtu + WG_OVERHEAD + 64), 0);
        if let Some(n) = inner.handle_datagram(&table, Src::Relay(node), datagram, &mut buf[VIRTIO_NET_HDR_LEN..]) {
            buf.truncate(VIRTIO_NET_HDR_LEN + n);
            if let Err(e) = inner.tun.send_multiple(&mut scratch.gro, &mut scratch.buf[..1], VIRTIO_NET_HDR_LEN) {
                tracing::debug!(error = %e, "TUN write of a relayed packet");
            }
        }
    }

    /// Why the data path stopped, if it did.
    pub fn failed(&self) -> Option<String> {
        self.inner.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the threads and removes the TUN device.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.stop_fd.signal();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The data path cannot go on: say so in the status, and stop every thread.
    fn fail(&self, why: String) {
        tracing::error!("overlay stopped: {why}");
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.stop.store(true, Ordering::Relaxed);
        self.stop_fd.signal();
    }

    fn want_refresh(&self) {
        if !self.refresh.swap(true, Ordering::Relaxed) {
            self.relay.wake();
        }
    }

    fn new_tunn(&self, peer: &Peer) -> Box<Tunn> {
        Box::new(Tunn::new(
            self.secret.clone(),
            PublicKey::from(peer.public),
            None,
            None,
            peer.index,
            Some(Arc::clone(&self.rate_limiter)),
        ))
    }
}
