//! A hostile peer for attack tests and benchmarks, built from the mesh's own swarm and messages: it joins a mesh
//! (proving the key, if it has it), then pushes adverts of freshly minted keys as fast as it can, by gossip and in
//! every sync page it is asked for (each page claiming more to come). Honest nodes must stay bounded in memory and
//! CPU and keep exchanging their own adverts while it runs (issue 10, finding 2). Nothing in a node calls this.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::rpc::{admission_proof, mesh_secret, Request, Response, PAGE_BYTES};
use super::swarm::{self, BehaviourEvent};
use super::{Config, Error};
use crate::advert::{Advert, ResourceInfo, Signed, MAX_STRING};
use crate::core::KeyRange;
use crate::identity::{Identity, NodeKey};
use crate::kind::Kind;
use crate::token::ResourceId;

/// What the flood does.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// The flooder's own identity.
    pub identity: Identity,
    /// Where to connect (a node's listen address).
    pub target: Multiaddr,
    /// The mesh key, if the flooder is a member of a private mesh.
    pub mesh_key: Option<Vec<u8>>,
    /// Fresh keys to mint; once each has an advert out, they are signed again with the next seq.
    pub keys: u32,
    /// About how large each advert is (up to the 64 KiB an advert may take).
    pub advert_bytes: usize,
    /// How long to flood.
    pub duration: Duration,
}

/// What the flood managed to send.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FloodReport {
    /// Adverts gossipsub took to send.
    pub published: u64,
    /// Adverts gossipsub refused (no peer subscribed yet, queues full).
    pub publish_errors: u64,
    /// Sync pages answered.
    pub pages: u64,
    /// Adverts in those pages.
    pub page_adverts: u64,
    /// Identities it connected (or tried to) under: it comes back under a fresh one each time it is cut off.
    pub sessions: u64,
    /// Seconds connected to the target, over all sessions.
    pub connected_secs: f64,
    /// Times the target cut the connection.
    pub disconnected: u64,
}

/// Mints adverts of fresh keys: key `i` is derived from a seed, so that runs repeat.
struct Mint {
    ids: Vec<Identity>,
    padding: Vec<ResourceInfo>,
    next: usize,
    round: u64,
}

impl Mint {
    fn new(keys: u32, advert_bytes: usize) -> Mint {
        let ids = (0..keys)
            .map(|i| {
                let mut secret = [0x5a; 32];
                secret[..4].copy_from_slice(&i.to_be_bytes());
                Identity::from_secret(secret)
            })
            .collect();
        let per = MAX_STRING + 64;
        let padding = (0..advert_bytes.div_ceil(per).max(1))
            .map(|i| ResourceInfo {
                id: ResourceId([i as u8; 16]),
                // A kind no node knows: listed as `kind-99`, out of the way of real ones.
                kind: Kind::Unknown(99),
                name: format!("flood-{i}"),
                description: "x".repeat(MAX_STRING.min(advert_bytes)),
                public_ref: None,
            })
            .collect();
        Mint { ids, padding, next: 0, round: 1 }
    }

    fn advert(&mut self) -> Signed {
        let id = &self.ids[self.next];
        let advert = Advert {
            node: id.public(),
            seq: self.round,
            addrs: vec![],
            tunnel: None,
            resources: self.padding.clone(),
            revoked: vec![],
        };
        self.next += 1;
        if self.next == self.ids.len() {
            self.next = 0;
            self.round += 1;
        }
        advert.sign(id)
    }
}

/// Floods the mesh through `config.target` for `config.duration` (or until cancelled). Cut off, it comes back at
/// once under a fresh identity, as a persistent attacker in a public mesh would.
pub async fn flood(config: FloodConfig, cancel: CancellationToken) -> Result<FloodReport, Error> {
    let mut mint = Mint::new(config.keys.max(1), config.advert_bytes);
    let mut report = FloodReport::default();
    let end = Instant::now() + config.duration;
    let mut identity = config.identity.clone();
    while Instant::now() < end && !cancel.is_cancelled() {
        session(&config, identity, &mut mint, &mut report, end, &cancel).await?;
        identity = Identity::generate().map_err(|e| Error::Transport(e.to_string()))?;
    }
    tracing::info!(?report, "flood over");
    Ok(report)
}

/// One connection's worth of flooding, until it is cut or the time is up.
async fn session(
    config: &FloodConfig,
    identity: Identity,
    mint: &mut Mint,
    report: &mut FloodReport,
    end: Instant,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let net = Config {
        identity,
        port: 0,
        bootstrap: vec![],
        remembered: vec![],
        mdns: false,
        mesh_key: config.mesh_key.clone(),
        core: Default::default(),
        tunnel: None,
    };
    let (mut swarm, topic) = swarm::build(&net)?;
    let secret = mesh_secret(config.mesh_key.as_deref());
    let me = *swarm.local_peer_id();
    swarm.dial(config.target.clone()).map_err(|e| Error::Transport(e.to_string()))?;
    let mut target: Option<(PeerId, Instant)> = None;
    let dial_by = Instant::now() + Duration::from_secs(5);
    report.sessions += 1;
    loop {
        let now = Instant::now();
        if now >= end || cancel.is_cancelled() || (target.is_none() && now >= dial_by) {
            break;
        }
        // Publish a batch, then take what the network has for us, without waiting when there is nothing.
        if target.is_some() {
            for _ in 0..32 {
                match swarm.behaviour_mut().gossip.publish(topic.clone(), mint.advert().encode()) {
                    Ok(_) => report.published += 1,
                    Err(_) => report.publish_errors += 1,
                }
            }
        }
        let wait = if target.is_some() { Duration::ZERO } else { Duration::from_millis(100) };
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = swarm.select_next_some() => Some(ev),
            _ = tokio::time::sleep(wait) => None,
        };
        let Some(ev) = ev else { continue };
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if target.is_none() => {
                target = Some((peer_id, Instant::now()));
                let proof = admission_proof(&secret, &me, &peer_id);
                swarm.behaviour_mut().rpc.send_request(&peer_id, Request::Sync { proof, digest: vec![] });
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                if target.is_some_and(|t| t.0 == peer_id) =>
            {
                report.disconnected += 1;
                break;
            }
            SwarmEvent::OutgoingConnectionError { .. } if target.is_none() => break,
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
                peer,
                message: Message::Request { request, channel, .. },
                ..
            })) => {
                let proof = admission_proof(&secret, &me, &peer);
                let response = match request {
                    Request::Sync { .. } => Response::Sync { proof, adverts: vec![] },
                    Request::SyncPage { range, .. } => {
                        let (adverts, next) = page(mint, &range);
                        report.pages += 1;
                        report.page_adverts += adverts.len() as u64;
                        Response::SyncPage { proof, adverts, next }
                    }
                    Request::App(_) => Response::Denied("no".into()),
                    // Everything differs, it claims: the victim asks for pages it fills with fresh keys.
                    Request::Summary { bits, .. } => {
                        Response::Summary { proof, differ: (0..1u16 << bits.min(8)).collect() }
                    }
                };
                let _ = swarm.behaviour_mut().rpc.send_response(channel, response);
            }
            _ => {}
        }
    }
    report.connected_secs += target.map_or(0.0, |t| t.1.elapsed().as_secs_f64());
    Ok(())
}

/// A full page of fresh adverts in `range`, claiming more to come: the keys are minted until enough fall in it.
fn page(mint: &mut Mint, range: &KeyRange) -> (Vec<Signed>, Option<NodeKey>) {
    let mut out = vec![];
    let mut bytes = 0;
    for _ in 0..10_000 {
        let a = mint.advert();
        if !range.contains(&a.node()) {
            continue;
        }
        bytes += a.wire_len();
        out.push(a);
        if bytes >= PAGE_BYTES {
            break;
        }
    }
    out.sort_unstable_by_key(Signed::node);
    out.dedup_by_key(|a| a.node());
    let next = out.last().map(|a| {
        let mut k = a.node().0;
        k[31] = k[31].wrapping_add(1);
        NodeKey(k)
    });
    (out, next.filter(|k| range.contains(k)))
}
