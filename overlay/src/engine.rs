//! The engine: the TUN device, the UDP socket, the peer table and three threads (TUN to network, network to
//! TUN, timers). Relayed datagrams come in through [`Overlay::relay_input`] and leave through the [`Relay`] the
//! node provides; the engine never touches the mesh itself.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use metac_mesh::identity::NodeKey;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::device;
use crate::packet;
use crate::table::{Path, Peer, PeerInfo, PeerState, Route, Step, Table};

/// The default MTU of the TUN: a 1500-byte underlay minus IPv6 (40), UDP (8) and WireGuard (32) headers.
pub const DEFAULT_MTU: u16 = 1420;

/// WireGuard's data packet overhead (type, index, counter, tag).
const WG_OVERHEAD: usize = 32;

/// Datagrams per `recvmmsg` (each may hold up to 64 GRO segments).
const RX_BATCH: usize = 16;

/// Largest UDP payload read at once (a GRO train).
const RX_BUF: usize = 65535;

/// Most payload bytes in one GSO send: a UDP datagram's length field (and IPv6's payload length) is 16 bits.
const MAX_GSO_BYTES: usize = 65535 - 8;

/// How often the timer thread runs while tunnels exist (boringtun asks for at least every 250 ms).
const TICK: Duration = Duration::from_millis(100);

/// How often it runs while there are none (only the rate limiter's reset and path probes are due).
const IDLE_TICK: Duration = Duration::from_secs(1);

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

/// Where a datagram came from.
#[derive(Clone, Copy)]
enum Src {
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

    /// TUN -> network: read a (possibly 64 KiB) packet, split it, encrypt the pieces into one buffer, send them
    /// with one GSO call per run of equal sizes.
    fn tx_loop(&self) {
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
    fn send_from(&self, queue: &SyncDevice, bufs: &mut TxBufs<'_>, errors: &mut ErrorLog) -> bool {
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

    fn send_run<B: AsRef<[u8]>>(
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
    fn leave_narrow(&self, peer: &Peer, st: &mut PeerState, ep: SocketAddr, now: Instant) {
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
    fn transmit(&self, peer: &Peer, route: Route, buf: &[u8], lens: &[usize]) -> bool {
        let mut narrow = false;
        match (route.path, route.endpoint, peer.node) {
            (Path::Udp, Some(ep), _) => {
                // To a narrow endpoint, one datagram per send, for the kernel to fragment.
                let max = if route.narrow { 1 } else { self.udp_state.max_gso_segments().max(1) };
                let (mut start, mut k) = (0, 0);
                while k < lens.len() {
                    let size = lens[k];
                    let (mut m, mut len) = (k + 1, size);
                    while m < lens.len() && m - k < max && lens[m] == size && len + size <= MAX_GSO_BYTES {
                        len += size;
                        m += 1;
                    }
                    if m < lens.len() && m - k < max && lens[m] < size && len + lens[m] <= MAX_GSO_BYTES {
                        len += lens[m]; // a shorter last segment may end a GSO train
                        m += 1;
                    }
                    let seg = (m - k > 1).then_some(size);
                    if let Err(e) = self.udp_send(ep, &buf[start..start + len], seg) {
                        if is_too_big(&e, seg.is_some()) {
                            peer.hint_narrow(ep);
                            narrow = true;
                            for d in buf[start..start + len].chunks(size) {
                                let _ = self.udp_send(ep, d, None);
                            }
                        }
                    }
                    start += len;
                    k = m;
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
    fn udp_send(&self, ep: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
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

    /// Network -> TUN, and the answers: read many datagrams per call, decrypt, coalesce, write; and send on what
    /// the kernel puts on this thread's TUN queue.
    ///
    /// What this thread decrypts is written through its own TUN queue, except pure TCP ACKs, which go through the
    /// TUN thread's. The kernel steers a flow's packets to the queue that last wrote one of that flow, so the
    /// answers to what arrives here (a ping's reply, a response to a request, the ACKs of a stream this host
    /// receives) come back to this thread, which sends them at once: no other thread is woken on the way, which
    /// saves a wake-up per round trip. A host sending a bulk stream receives only its ACKs; they go through the TUN
    /// thread's queue, so that thread keeps sending the stream while this one receives.
    fn rx_loop(&self) {
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

    /// Handles one WireGuard datagram. Returns the length of an inner packet written at the start of `out`, to be
    /// written to the TUN; handshake answers and queued packets are sent from here.
    fn handle_datagram(&self, table: &Table, src: Src, datagram: &[u8], out: &mut [u8]) -> Option<usize> {
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
                    st.authenticated(from, is_init, now);
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

    /// Timers: boringtun's (handshake retries, keepalives, session expiry), path choice, idle tunnels.
    fn timer_loop(&self) {
        let mut buf = vec![0u8; self.mtu.max(1500) + 256];
        let mut last_reset = Instant::now();
        let mut tick = TICK;
        while !self.stopped() {
            self.stop_fd.wait_readable(None, Some(tick));
            let now = Instant::now();
            if now.duration_since(last_reset) >= Duration::from_secs(1) {
                self.rate_limiter.reset_count();
                last_reset = now;
            }
            let table = self.table();
            let mut busy = false;
            for peer in table.peers() {
                let mut st = peer.state();
                busy |= st.path == Path::Relay;
                if let Some(ep) = peer.take_narrow_hint() {
                    self.leave_narrow(peer, &mut st, ep, now);
                }
                let Some(mut tunn) = st.tunn.take() else { continue };
                busy = true;
                let mut keep = true;
                match tunn.update_timers(&mut buf) {
                    TunnResult::WriteToNetwork(p) => {
                        if p[0] == 1 {
                            st.handshake_sent(now);
                        }
                        let l = p.len();
                        self.transmit(peer, st.route(), p, &[l]);
                    }
                    TunnResult::Err(WireGuardError::ConnectionExpired) => keep = false,
                    _ => {}
                }
                match st.step(now) {
                    Step::None => {}
                    Step::Handshake => {
                        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                            let l = p.len();
                            self.transmit(peer, st.route(), p, &[l]);
                        }
                    }
                    Step::Probe(ep) => {
                        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                            let l = p.len();
                            self.transmit(peer, Route { path: Path::Udp, endpoint: Some(ep), narrow: false }, p, &[l]);
                        }
                    }
                }
                if st.is_idle(now) {
                    keep = false;
                }
                if keep {
                    st.tunn = Some(tunn);
                } else {
                    st.waiting_since = None;
                }
            }
            // A new tunnel is made by a data thread; its first timers can wait up to IDLE_TICK, which only
            // delays a handshake retry (boringtun sends the first initiation itself).
            tick = if busy { TICK } else { IDLE_TICK };
        }
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

/// The buffers of the TUN -> network path, allocated once per thread.
struct TxBufs<'a> {
    orig: Vec<u8>,
    segs: Vec<&'a mut [u8]>,
    sizes: Vec<usize>,
    out: Vec<u8>,
    lens: Vec<usize>,
}

impl<'a> TxBufs<'a> {
    fn seg_len(mtu: usize) -> usize {
        mtu.max(1500) + 128
    }

    /// The memory the pieces of a split packet go to: one allocation, large enough to be mapped on its own, so
    /// none of it is resident until used.
    fn memory(mtu: usize) -> Vec<u8> {
        vec![0u8; IDEAL_BATCH_SIZE * Self::seg_len(mtu)]
    }

    fn new(memory: &'a mut [u8], mtu: usize) -> TxBufs<'a> {
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
struct RxBufs {
    /// One mapping for the datagrams of a `recvmmsg` (resident only once used).
    mem: Vec<u8>,
    meta: [RecvMeta; RX_BATCH],
    /// Packets to write through the receiving thread's TUN queue.
    own: Vec<Vec<u8>>,
    /// Pure TCP ACKs, written through the TUN thread's queue.
    acks: Vec<Vec<u8>>,
    gro: GROTable,
    udp_errors: ErrorLog,
    tun_errors: ErrorLog,
}

impl RxBufs {
    fn new() -> RxBufs {
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
struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn new(what: &'static str) -> ErrorLog {
        ErrorLog { what, last: None, suppressed: 0 }
    }

    fn log(&mut self, e: &io::Error) {
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
