//! The swarm: transports (QUIC, and TCP with noise + yamux), the behaviours every node runs (identify, ping, mDNS on
//! IPv4 and IPv6, gossipsub for adverts, the mesh RPC, raw streams), and the listeners on the node's port.

use std::io;
use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, mdns, noise, ping, tcp, yamux, Multiaddr, Swarm, Transport};

use super::rpc::{Codec, RPC_PROTOCOL};
use super::{Config, Error};

/// Gossip topic of adverts.
const ADVERT_TOPIC: &str = "metac/adverts/1";

/// Every protocol a node runs, over one swarm.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) mdns4: Toggle<mdns::tokio::Behaviour>,
    pub(super) mdns6: Toggle<mdns::tokio::Behaviour>,
    pub(super) gossip: gossipsub::Behaviour,
    pub(super) rpc: request_response::Behaviour<Codec>,
    pub(super) streams: libp2p_stream::Behaviour,
    pub(super) gate: super::gate::Gate,
}

/// Longest a TCP connection may take from the dial (or accept) to a multiplexed, authenticated connection.
const TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the swarm for `config`, listens on its port and subscribes to the advert topic.
pub(super) fn build(config: &Config) -> Result<(Swarm<Behaviour>, gossipsub::IdentTopic), Error> {
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(config.identity.secret())
        .map_err(|e| Error::Transport(e.to_string()))?;
    let mdns_on = config.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        // TCP with a bound on each dial and each inbound handshake: dials are sequential (below), and a TCP dial
        // into a firewall that drops SYNs would otherwise hold up the QUIC fallback for the two minutes of the
        // kernel's SYN retries.
        .with_other_transport(|key| {
            type BoxError = Box<dyn std::error::Error + Send + Sync>;
            Ok::<_, BoxError>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .timeout(TCP_HANDSHAKE_TIMEOUT),
            )
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_dns()
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mdns_cfg = |v6| mdns::Config { enable_ipv6: v6, ..Default::default() };
            let mdns4 = mdns_on.then(|| mdns::tokio::Behaviour::new(mdns_cfg(false), peer)).transpose()?;
            let mdns6 = mdns_on.then(|| mdns::tokio::Behaviour::new(mdns_cfg(true), peer)).transpose()?;
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(crate::advert::MAX_ADVERT_BYTES + 1024)
                .message_id_fn(|m| gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
                .build()
                .map_err(|e| io::Error::other(e.to_string()))?;
            let gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)
                .map_err(io::Error::other)?;
            Ok(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new("/metac/id/1".into(), key.public())
                        .with_agent_version(format!("metac/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(super::PING_EVERY).with_timeout(super::PING_TIMEOUT),
                ),
                mdns4: mdns4.into(),
                mdns6: mdns6.into(),
                gossip,
                rpc: request_response::Behaviour::with_codec(
                    Codec,
                    [(RPC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
                ),
                streams: libp2p_stream::Behaviour::new(),
                gate: Default::default(),
            })
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        // One address at a time. The driver dials a peer's TCP addresses first and its QUIC ones only when those
        // fail (`Driver::dial_peer`): dialed all at once, QUIC won the race to about half the peers, and each QUIC
        // connection costs an idle node keep-alives every 5 s and a receive path of its own.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(24 * 3600))
                .with_dial_concurrency_factor(std::num::NonZeroU8::MIN)
        })
        .build();

    let port = config.port;
    let tcp6: Multiaddr = format!("/ip6/::/tcp/{port}").parse().expect("valid");
    swarm.listen_on(tcp6).map_err(|e| Error::Listen { port, reason: e.to_string() })?;
    // The other listeners are best effort: a host may lack IPv4, or UDP may be filtered.
    for a in [
        format!("/ip6/::/udp/{port}/quic-v1"),
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ] {
        if let Err(e) = swarm.listen_on(a.parse().expect("valid")) {
            tracing::warn!("cannot listen on {a}: {e}");
        }
    }
    let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
    let gossip = &mut swarm.behaviour_mut().gossip;
    gossip.subscribe(&topic).map_err(|e| Error::Transport(e.to_string()))?;
    score_peers(gossip, &topic).map_err(Error::Transport)?;
    Ok((swarm, topic))
}

/// Scores gossip peers on what they send us that we reject (undecodable, badly signed or out-of-range adverts, or
/// another node's): three such messages graylist a peer (gossipsub ignores it) until the penalty decays, and the
/// driver bans it besides. Nothing else counts: delivery-rate scores would punish honest peers of an idle mesh, and colocation scores the nodes of
/// one host (tests, containers).
fn score_peers(gossip: &mut gossipsub::Behaviour, topic: &gossipsub::IdentTopic) -> Result<(), String> {
    let params =
        gossipsub::PeerScoreParams { ip_colocation_factor_weight: 0.0, slow_peer_weight: 0.0, ..Default::default() };
    gossip.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // Squared count times weight: the third rejected message passes the graylist threshold (-80).
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    gossip.set_topic_params(topic.clone(), topic_params)?;
    Ok(())
}
