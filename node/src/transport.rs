//! The transports of this build. [`MeshTransport`]: libp2p streams over the mesh's connections (noise-authenticated
//! to the node keys). [`DirectTransport`]: for each stream, a TCP connection of its own between the two nodes,
//! sealed with AES-256-GCM records ([`metac_resource::sealed`]) under keys agreed over a mesh stream, so that it is
//! authenticated to the same node keys; it falls back to a mesh stream where a direct connection cannot be made (a
//! firewall, an older node). Why: the libp2p connection tops out near 3 Gbit/s on this hardware (ChaCha20 of noise,
//! 16 KiB yamux frames, one connection task), which capped fs and block binds; see docs/decisions.md.
//!
//! The handshake, per stream:
//! 1. the binder opens a mesh stream for [`CONTROL_PROTOCOL`] and sends an [`Offer`]: the protocol it wants and a
//!    random 32-byte secret;
//! 2. the exporter answers [`Answer::Ready`]: its direct port, its own secret and a random 16-byte ticket, and keeps
//!    (ticket -> peer, protocol, keys) for [`TICKET_TTL`];
//! 3. the binder connects to that port at the address its mesh connection to the exporter comes from, sends the
//!    ticket in clear and then a sealed [`HI`] record; the exporter finds the ticket, opens the record with the
//!    ticket's keys (a stranger who saw the ticket cannot: the secrets crossed the noise channel only), and only
//!    then uses the ticket up and answers a sealed [`OK`]. The stream is the kind's from there.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use metac_mesh::net::{self, Handle};
use metac_mesh::NodeKey;
use metac_resource::sealed::{Keys, Sealed};
use metac_resource::{frame, BoxFuture, BoxStream, Error, Incoming, Transport};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

/// How long an inbound stream may wait for its sender's admission (the sync that admits a peer runs as its
/// connection comes up, so a stream opened at once can arrive first).
pub(crate) const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// The mesh protocol on which direct connections are agreed.
pub const CONTROL_PROTOCOL: &str = "/metac/direct/1";
/// How long a ticket waits for its connection.
const TICKET_TTL: Duration = Duration::from_secs(10);
/// Tickets outstanding at once (all peers), and per peer.
const MAX_TICKETS: usize = 1024;
const MAX_TICKETS_PER_PEER: usize = 64;
/// Direct connections still in their handshake at once: more are closed at once.
const MAX_HANDSHAKES: usize = 64;
/// How long each step of the handshake may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the binder waits for the TCP connection: a firewall that drops the port costs a first bind this much
/// before it goes over the mesh.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a direct connection to a peer failed, its streams go over the mesh for this long before trying again.
const FALLBACK_FOR: Duration = Duration::from_secs(30);
/// The largest offer or answer.
const MAX_CONTROL_BYTES: usize = 512;
/// The first sealed record each way.
const HI: &[u8] = b"metac direct/1 hi";
const OK: &[u8] = b"metac direct/1 ok";
/// Inbound direct streams per protocol waiting for the node to take them.
const ACCEPT_QUEUE: usize = 64;

/// Resource streams as raw libp2p streams.
#[derive(Clone)]
pub struct MeshTransport(pub Handle);

impl Transport for MeshTransport {
    fn name(&self) -> &'static str {
        "mesh"
    }

    fn summary(&self) -> String {
        "mesh streams only (--no-direct)".into()
    }

    fn open(&self, node: NodeKey, protocol: &'static str) -> BoxFuture<'_, Result<BoxStream, Error>> {
        Box::pin(async move {
            match self.0.open_stream(node, protocol).await {
                Ok(s) => Ok(Box::new(s.compat()) as BoxStream),
                Err(e @ net::Error::UnknownNode(_)) => Err(Error::UnknownNode(e.to_string())),
                Err(e) => Err(Error::Unreachable(e.to_string())),
            }
        })
    }

    fn accept(&self, protocol: &'static str) -> Result<Incoming, Error> {
        let incoming = self.0.accept(protocol).map_err(|e| Error::Unreachable(e.to_string()))?;
        let mesh = self.0.clone();
        // Only admitted peers' streams get through: in a private mesh, a peer that has not proven the mesh key is
        // served nothing, whatever protocol it opens. Checks run concurrently, a few at a time.
        let admitted = incoming
            .map(move |(peer, stream)| {
                let mesh = mesh.clone();
                async move {
                    if mesh.wait_admitted(peer, ADMISSION_WAIT).await {
                        Some((peer, Box::new(stream.compat()) as BoxStream))
                    } else {
                        tracing::info!(%peer, "stream from a peer that is not admitted to the mesh dropped");
                        None
                    }
                }
            })
            .buffer_unordered(16)
            .filter_map(std::future::ready);
        Ok(Box::pin(admitted))
    }
}

/// The binder's request for a direct connection.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    /// The protocol the stream is for.
    protocol: String,
    /// The binder's share of the keys.
    secret: [u8; 32],
}

/// The exporter's answer to an [`Offer`].
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// Connect to `port` and present `ticket`.
    Ready { port: u16, secret: [u8; 32], ticket: [u8; 16] },
    /// Use the mesh stream instead, and why.
    No { reason: String },
}

/// A ticket waiting for its connection.
struct Ticket {
    peer: NodeKey,
    protocol: &'static str,
    /// The exporter's side of the keys.
    keys: Keys,
    made: Instant,
}

/// What the direct transport's tasks share.
struct Shared {
    mesh: MeshTransport,
    /// The port direct connections come to.
    port: u16,
    tickets: Mutex<HashMap<[u8; 16], Ticket>>,
    /// Where inbound direct streams of each protocol go, once [`Transport::accept`] asked for it.
    routes: Mutex<HashMap<&'static str, futures::channel::mpsc::Sender<(NodeKey, BoxStream)>>>,
    /// Peers a direct connection failed to, and when.
    failed: Mutex<HashMap<NodeKey, Instant>>,
    /// Streams opened direct, opened over the mesh instead, and accepted direct.
    opened: AtomicU64,
    fell_back: AtomicU64,
    accepted: AtomicU64,
    handshakes: Arc<tokio::sync::Semaphore>,
}

/// Resource streams over TCP connections of their own, sealed with keys agreed over the mesh (see the module docs),
/// or over the mesh where that cannot be done.
#[derive(Clone)]
pub struct DirectTransport(Arc<Shared>);

impl DirectTransport {
    /// Listens for direct connections on `port` (all addresses; 0 or a port in use picks a free one) and answers
    /// offers on the mesh until `cancel` fires.
    pub async fn start(
        mesh: Handle,
        port: u16,
        cancel: CancellationToken,
    ) -> Result<(DirectTransport, Vec<tokio::task::JoinHandle<()>>), crate::Error> {
        let listener = listen(port).await?;
        let port = listener.local_addr().map_err(|e| crate::Error::Api(format!("direct transport: {e}")))?.port();
        tracing::info!(port, "direct transport listening");
        let mesh = MeshTransport(mesh);
        let offers = mesh
            .accept(CONTROL_PROTOCOL)
            .map_err(|e| crate::Error::Api(format!("direct transport: cannot accept offers: {e}")))?;
        let t = DirectTransport(Arc::new(Shared {
            mesh,
            port,
            tickets: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
        }));
        let answering = tokio::spawn(t.clone().answer_offers(offers, cancel.clone()));
        let accepting = tokio::spawn(t.clone().accept_connections(listener, cancel));
        Ok((t, vec![answering, accepting]))
    }

    /// The port direct connections come to.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    async fn answer_offers(self, mut offers: Incoming, cancel: CancellationToken) {
        loop {
            let (peer, mut stream) = tokio::select! {
                () = cancel.cancelled() => return,
                next = offers.next() => match next {
                    Some(x) => x,
                    None => return,
                },
            };
            let t = self.clone();
            tokio::spawn(async move {
                let offer = tokio::time::timeout(STEP_TIMEOUT, frame::read::<_, Offer>(&mut stream, MAX_CONTROL_BYTES));
                let answer = match offer.await {
                    Ok(Ok(offer)) => t.ticket(peer, &offer),
                    Ok(Err(e)) => Answer::No { reason: format!("bad offer: {e}") },
                    Err(_) => return,
                };
                if let Answer::No { reason } = &answer {
                    tracing::debug!(%peer, "direct connection declined: {reason}");
                }
                let _ = tokio::time::timeout(STEP_TIMEOUT, frame::write(&mut stream, &answer)).await;
            });
        }
    }

    /// Makes a ticket for `peer`'s offer, or says why not.
    fn ticket(&self, peer: NodeKey, offer: &Offer) -> Answer {
        let Some(protocol) = self.0.routes.lock().expect("routes lock").keys().copied().find(|p| *p == offer.protocol)
        else {
            return Answer::No { reason: format!("protocol {} is not served here", offer.protocol) };
        };
        let (secret, ticket) = match (random::<32>(), random::<16>()) {
            (Ok(s), Ok(t)) => (s, t),
            _ => return Answer::No { reason: "no randomness".into() },
        };
        let mut tickets = self.0.tickets.lock().expect("tickets lock");
        tickets.retain(|_, t| t.made.elapsed() < TICKET_TTL);
        if tickets.len() >= MAX_TICKETS || tickets.values().filter(|t| t.peer == peer).count() >= MAX_TICKETS_PER_PEER {
            return Answer::No { reason: "too many direct connections being set up; try again".into() };
        }
        let (_, keys) = Keys::derive(&offer.secret, &secret, &ticket);
        tickets.insert(ticket, Ticket { peer, protocol, keys, made: Instant::now() });
        Answer::Ready { port: self.0.port, secret, ticket }
    }

    async fn accept_connections(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let (tcp, from) = tokio::select! {
                () = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little rather than spin.
                        tracing::warn!("direct transport: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&self.0.handshakes).try_acquire_owned() else {
                tracing::debug!(%from, "direct connection closed: too many handshakes under way");
                continue;
            };
            let t = self.clone();
            tokio::spawn(async move {
                let result = tokio::time::timeout(STEP_TIMEOUT, t.handshake(tcp)).await;
                drop(permit);
                let (peer, protocol, stream) = match result {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        tracing::debug!(%from, "direct connection refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%from, "direct connection refused: no handshake within {STEP_TIMEOUT:?}");
                        return;
                    }
                };
                let route = t.0.routes.lock().expect("routes lock").get(protocol).cloned();
                if let Some(mut route) = route {
                    t.0.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = route.send((peer, stream)).await;
                }
            });
        }
    }

    /// The exporter's side of a new connection: the ticket, the binder's sealed hello, our sealed answer.
    async fn handshake(&self, mut tcp: TcpStream) -> std::io::Result<(NodeKey, &'static str, BoxStream)> {
        let _ = tcp.set_nodelay(true);
        let mut ticket = [0u8; 16];
        tcp.read_exact(&mut ticket).await?;
        let (peer, protocol, keys) = {
            let tickets = self.0.tickets.lock().expect("tickets lock");
            let t = tickets
                .get(&ticket)
                .filter(|t| t.made.elapsed() < TICKET_TTL)
                .ok_or_else(|| std::io::Error::other("unknown or expired ticket"))?;
            (t.peer, t.protocol, Keys { send: t.keys.send, recv: t.keys.recv })
        };
        let mut sealed = Sealed::new(tcp, &keys);
        let mut hi = [0u8; HI.len()];
        sealed.read_exact(&mut hi).await?;
        if hi != HI {
            return Err(std::io::Error::other("wrong hello"));
        }
        // Used up only now: a stranger who saw the ticket and connected first could not open the hello, and the
        // ticket is still there for its binder.
        if self.0.tickets.lock().expect("tickets lock").remove(&ticket).is_none() {
            return Err(std::io::Error::other("ticket already used"));
        }
        sealed.write_all(OK).await?;
        Ok((peer, protocol, Box::new(sealed)))
    }

    /// The binder's side: a direct stream to `node` for `protocol`. `Ok(Err(..))`: the mesh stream to agree on it
    /// could not be opened (the node is unreachable, or too old to have a direct port).
    async fn connect(&self, node: NodeKey, protocol: &'static str) -> Result<Result<BoxStream, Error>, String> {
        let mut control = match self.0.mesh.open(node, CONTROL_PROTOCOL).await {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let secret = random::<32>().map_err(|e| e.to_string())?;
        let step = |what: &'static str| move |_| format!("no {what} within {STEP_TIMEOUT:?}");
        let offer = Offer { protocol: protocol.into(), secret };
        tokio::time::timeout(STEP_TIMEOUT, frame::write(&mut control, &offer))
            .await
            .map_err(step("offer sent"))?
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(STEP_TIMEOUT, frame::read::<_, Answer>(&mut control, MAX_CONTROL_BYTES))
            .await
            .map_err(step("answer"))?
            .map_err(|e| e.to_string())?;
        let (port, theirs, ticket) = match answer {
            Answer::Ready { port, secret, ticket } => (port, secret, ticket),
            Answer::No { reason } => return Err(format!("declined: {reason}")),
        };
        drop(control);
        let ip = self.0.mesh.0.remote_ip(node).await.ok_or("no mesh connection to learn its address from")?;
        let addr = SocketAddr::new(ip, port);
        let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection to {addr} within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (keys, _) = Keys::derive(&secret, &theirs, &ticket);
        let hello = async {
            tcp.write_all(&ticket).await?;
            let mut sealed = Sealed::new(tcp, &keys);
            sealed.write_all(HI).await?;
            let mut ok = [0u8; OK.len()];
            sealed.read_exact(&mut ok).await?;
            if ok != OK {
                return Err(std::io::Error::other("wrong answer"));
            }
            Ok(sealed)
        };
        let sealed = tokio::time::timeout(STEP_TIMEOUT, hello)
            .await
            .map_err(step("handshake"))?
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        Ok(Ok(Box::new(sealed)))
    }

    fn failed_lately(&self, node: &NodeKey) -> bool {
        let mut failed = self.0.failed.lock().expect("failed lock");
        failed.retain(|_, at| at.elapsed() < FALLBACK_FOR);
        failed.contains_key(node)
    }
}

impl Transport for DirectTransport {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn open(&self, node: NodeKey, protocol: &'static str) -> BoxFuture<'_, Result<BoxStream, Error>> {
        Box::pin(async move {
            if !self.failed_lately(&node) {
                match self.connect(node, protocol).await {
                    Ok(Ok(s)) => {
                        self.0.opened.fetch_add(1, Ordering::Relaxed);
                        return Ok(s);
                    }
                    // No mesh stream either: unreachable (an exporter restarting, say), which is not a reason to
                    // leave the direct path once it is back; or an older node, which only the mesh stream tells.
                    Ok(Err(e)) => {
                        // Not connected: unreachable, and a second dial would only double the wait.
                        if !self.0.mesh.0.is_connected(node).await {
                            return Err(e);
                        }
                        tracing::info!(%node, "no direct transport there, using mesh streams for {FALLBACK_FOR:?}");
                    }
                    Err(e) => {
                        tracing::info!(%node, "no direct connection, using mesh streams for {FALLBACK_FOR:?}: {e}");
                    }
                }
                self.0.failed.lock().expect("failed lock").insert(node, Instant::now());
            }
            let s = self.0.mesh.open(node, protocol).await?;
            self.0.fell_back.fetch_add(1, Ordering::Relaxed);
            Ok(s)
        })
    }

    fn summary(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "direct on tcp port {}: {} streams opened direct, {} over the mesh (no direct connection), {} accepted direct",
            self.0.port,
            n(&self.0.opened),
            n(&self.0.fell_back),
            n(&self.0.accepted)
        )
    }

    fn accept(&self, protocol: &'static str) -> Result<Incoming, Error> {
        let mesh = self.0.mesh.accept(protocol)?;
        let (tx, rx) = futures::channel::mpsc::channel(ACCEPT_QUEUE);
        self.0.routes.lock().expect("routes lock").insert(protocol, tx);
        Ok(Box::pin(futures::stream::select(mesh, rx)))
    }
}

/// A listener on every address for `port`, or on a free port if it is taken.
async fn listen(port: u16) -> Result<TcpListener, crate::Error> {
    let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let v4 = |port| SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
    let err = |e: std::io::Error| crate::Error::Api(format!("direct transport: cannot listen: {e}"));
    let attempt = |port| async move {
        // [::] takes IPv4 as well where the host has IPv6; a host without IPv6 gets 0.0.0.0.
        match TcpListener::bind(any(port)).await {
            Ok(l) => Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
            Err(_) => TcpListener::bind(v4(port)).await,
        }
    };
    match attempt(port).await {
        Ok(l) => Ok(l),
        Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!("direct transport: port {port} is in use, listening on another");
            attempt(0).await.map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

fn random<const N: usize>() -> Result<[u8; N], metac_mesh::identity::Error> {
    metac_mesh::identity::random_bytes::<N>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use metac_mesh::Identity;

    const PROTO: &str = "/metac/test/1";

    async fn transport(cancel: &CancellationToken) -> DirectTransport {
        let config = net::Config {
            identity: Identity::from_secret([7; 32]),
            port: 0,
            bootstrap: vec![],
            remembered: vec![],
            mdns: false,
            mesh_key: None,
            core: Default::default(),
            tunnel: None,
        };
        let (mesh, _events, _task) = net::spawn(config, cancel.clone()).await.unwrap();
        let (t, _tasks) = DirectTransport::start(mesh, 0, cancel.clone()).await.unwrap();
        t
    }

    async fn dial(t: &DirectTransport) -> TcpStream {
        TcpStream::connect(("::1", t.port())).await.unwrap()
    }

    /// Whether the exporter closed `tcp` (EOF or reset) within a few seconds.
    async fn closed(tcp: &mut TcpStream) -> bool {
        let mut b = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(7), tcp.read(&mut b)).await, Ok(Ok(0) | Err(_)))
    }

    /// A stranger on the network sees the direct port and nothing else: an unknown ticket, a ticket seen on the
    /// wire but presented without the keys (which crossed the noise channel only), and a replayed ticket are all
    /// closed without a stream reaching the node; the ticket's own binder still gets through after the stranger
    /// tried it, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strangers_with_unknown_stolen_or_replayed_tickets_get_nothing() {
        let cancel = CancellationToken::new();
        let t = transport(&cancel).await;
        let mut incoming = t.accept(PROTO).unwrap();
        let binder = Identity::from_secret([8; 32]).public();
        let secret = [5u8; 32];
        let Answer::Ready { port, secret: theirs, ticket } =
            t.ticket(binder, &Offer { protocol: PROTO.into(), secret })
        else {
            panic!("no ticket")
        };
        assert_eq!(port, t.port());
        let unserved = t.ticket(binder, &Offer { protocol: "/metac/other/1".into(), secret });
        assert!(matches!(unserved, Answer::No { reason } if reason.contains("not served")));

        // Garbage, and an unknown ticket.
        let mut tcp = dial(&t).await;
        tcp.write_all(&[0xAA; 40]).await.unwrap();
        assert!(closed(&mut tcp).await, "an unknown ticket is closed");
        // The real ticket, sealed with keys the stranger guessed.
        let (wrong, _) = Keys::derive(&[6; 32], &theirs, &ticket);
        let mut tcp = dial(&t).await;
        tcp.write_all(&ticket).await.unwrap();
        let mut s = Sealed::new(tcp, &wrong);
        s.write_all(HI).await.unwrap();
        let mut b = [0u8; 1];
        assert!(tokio::time::timeout(Duration::from_secs(7), s.read(&mut b)).await.unwrap().is_err());
        // The binder, with the keys.
        let (keys, _) = Keys::derive(&secret, &theirs, &ticket);
        let mut tcp = dial(&t).await;
        tcp.write_all(&ticket).await.unwrap();
        let mut s = Sealed::new(tcp, &keys);
        s.write_all(HI).await.unwrap();
        let mut ok = [0u8; OK.len()];
        s.read_exact(&mut ok).await.unwrap();
        assert_eq!(ok, OK);
        let (peer, mut inbound) = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await.unwrap().unwrap();
        assert_eq!(peer, binder, "the stream is the ticket's peer's");
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        inbound.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // The same ticket again, even with the keys: used up.
        let mut tcp = dial(&t).await;
        tcp.write_all(&ticket).await.unwrap();
        let mut s = Sealed::new(tcp, &keys);
        s.write_all(HI).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(7), s.read(&mut b)).await.unwrap().is_err());
        assert_eq!(t.0.accepted.load(Ordering::Relaxed), 1);
        cancel.cancel();
    }

    /// Connections that never finish their handshake hold at most [`MAX_HANDSHAKES`] slots, each for at most
    /// [`STEP_TIMEOUT`]; more are closed at once, and the port serves again once they are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_connections_cannot_hold_the_port() {
        let cancel = CancellationToken::new();
        let t = transport(&cancel).await;
        let _incoming = t.accept(PROTO).unwrap();
        let mut silent = Vec::new();
        for _ in 0..MAX_HANDSHAKES {
            silent.push(dial(&t).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = dial(&t).await;
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "one over the bound is closed at once: {r:?}");
        assert!(closed(&mut silent[0]).await, "a silent connection is closed after the step timeout");
        let mut again = dial(&t).await;
        again.write_all(&[0; 16]).await.unwrap();
        assert!(closed(&mut again).await);
        for _ in 0..100 {
            if t.0.handshakes.available_permits() == MAX_HANDSHAKES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(t.0.handshakes.available_permits(), MAX_HANDSHAKES, "every slot is back");
        cancel.cancel();
    }

    /// Offers and tickets are bounded per peer, and expire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tickets_are_bounded_per_peer() {
        let cancel = CancellationToken::new();
        let t = transport(&cancel).await;
        let _incoming = t.accept(PROTO).unwrap();
        let peer = Identity::from_secret([8; 32]).public();
        let offer = Offer { protocol: PROTO.into(), secret: [1; 32] };
        for _ in 0..MAX_TICKETS_PER_PEER {
            assert!(matches!(t.ticket(peer, &offer), Answer::Ready { .. }));
        }
        assert!(matches!(t.ticket(peer, &offer), Answer::No { reason } if reason.contains("too many")));
        let other = Identity::from_secret([9; 32]).public();
        assert!(matches!(t.ticket(other, &offer), Answer::Ready { .. }), "another peer is not held up");
        cancel.cancel();
    }
}
