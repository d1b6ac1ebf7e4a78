//! Attack tests of the driver with a hostile peer built from the mesh's own swarm: a stranger that connects to a
//! node of a private mesh and never proves the mesh key.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;

use super::rpc::Request;
use super::swarm::{self, BehaviourEvent};
use super::{spawn, Config};
use crate::identity::Identity;

fn config(seed: u8, mesh_key: &[u8]) -> Config {
    Config {
        identity: Identity::from_secret([seed; 32]),
        port: 0,
        bootstrap: vec![],
        remembered: vec![],
        mdns: false,
        mesh_key: Some(mesh_key.to_vec()),
        core: Default::default(),
        tunnel: None,
    }
}

/// Attack (issue 10, finding 3): a stranger that never answered the admission proof stayed connected (idle timeout
/// 24 h) and received the node's digest, every member's key. Now it gets a sync carrying the proof alone and is
/// disconnected within [`super::driver::ADMIT_WITHIN`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stranger_learns_nothing_and_is_disconnected() {
    let cancel = tokio_util::sync::CancellationToken::new();
    let (victim, _events, _task) = spawn(config(1, b"the members' secret key"), cancel.clone()).await.unwrap();
    let mut addr = None;
    for _ in 0..200 {
        let snap = victim.snapshot().await.unwrap();
        addr = snap.listen.iter().find(|a| a.starts_with("/ip4/127.0.0.1/tcp/")).cloned();
        if addr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr: libp2p::Multiaddr = addr.expect("the victim listens on loopback").parse().unwrap();

    // The stranger speaks every protocol of the mesh but knows another key, and never answers a sync.
    let (mut stranger, _) = swarm::build(&config(2, b"not the members' key")).unwrap();
    stranger.dial(addr).unwrap();
    let start = Instant::now();
    let mut connected = None;
    let mut digests = vec![];
    let closed = loop {
        let ev = tokio::time::timeout(Duration::from_secs(15), stranger.select_next_some()).await;
        match ev.expect("the victim acts within 15 s") {
            SwarmEvent::ConnectionEstablished { .. } => connected = Some(Instant::now()),
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
                message: request_response::Message::Request { request: Request::Sync { digest, .. }, .. },
                ..
            })) => digests.push(digest),
            SwarmEvent::ConnectionClosed { num_established: 0, .. } => break Instant::now(),
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the stranger was not disconnected");
    };
    let connected = connected.expect("the stranger connected");
    let held = closed - connected;
    assert!(held >= Duration::from_secs(4) && held < Duration::from_secs(9), "disconnected after {held:?}");
    assert!(!digests.is_empty(), "the victim sent its admission proof");
    assert!(digests.iter().all(|d| d.is_empty()), "no digest (members' keys) reached the stranger: {digests:?}");
    cancel.cancel();
}
