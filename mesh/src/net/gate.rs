//! The gate: a behaviour that refuses inbound connections from banned IP addresses, and past a per-address rate,
//! before their handshake. A flooder cut off comes back at once under a fresh key (a fresh key would get a fresh
//! budget); at the gate that costs it a TCP accept on our side, not a noise handshake. Loopback is never gated:
//! it is the nodes of this host.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::addr::ip_of;

/// Inbound connections one IP address may open at once, and per second after that.
const CONN_BURST: f64 = 32.0;
const CONN_RATE: f64 = 2.0;
/// IP addresses tracked, at most: past it, new addresses are refused until idle ones are pruned (each tick).
const MAX_IPS: usize = 4096;

/// What an IP address may still do: its inbound connection tokens, and the end of its ban.
struct IpState {
    tokens: f64,
    at: Instant,
    banned_until: Option<Instant>,
}

impl IpState {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * CONN_RATE).min(CONN_BURST);
        self.at = now;
        if self.banned_until.is_some_and(|t| t <= now) {
            self.banned_until = None;
        }
    }

    fn is_idle(&self) -> bool {
        self.tokens >= CONN_BURST && self.banned_until.is_none()
    }
}

/// Why the gate refused a connection.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0} is banned")]
    Banned(IpAddr),
    #[error("{0} opens connections faster than {CONN_RATE} a second")]
    TooFast(IpAddr),
    #[error("too many addresses are being tracked")]
    Full,
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Gate {
    ips: HashMap<IpAddr, IpState>,
}

impl Gate {
    fn state(&mut self, ip: IpAddr, now: Instant) -> Option<&mut IpState> {
        if !self.ips.contains_key(&ip) && self.ips.len() >= MAX_IPS {
            return None;
        }
        let s = self.ips.entry(ip).or_insert(IpState { tokens: CONN_BURST, at: now, banned_until: None });
        s.refill(now);
        Some(s)
    }

    /// Refuses new connections from `ip` until `until` (never loopback).
    pub(super) fn ban(&mut self, ip: IpAddr, until: Instant) {
        if ip.is_loopback() {
            return;
        }
        if let Some(s) = self.state(ip, Instant::now()) {
            s.banned_until = Some(until);
        }
    }

    /// Forgets addresses with nothing against them.
    pub(super) fn prune(&mut self, now: Instant) {
        self.ips.retain(|_, s| {
            s.refill(now);
            !s.is_idle()
        });
    }

    fn admit(&mut self, remote: &Multiaddr, now: Instant) -> Result<(), Refused> {
        let Some(ip) = ip_of(remote).filter(|ip| !ip.is_loopback()) else { return Ok(()) };
        let s = self.state(ip, now).ok_or(Refused::Full)?;
        if s.banned_until.is_some() {
            return Err(Refused::Banned(ip));
        }
        if s.tokens < 1.0 {
            return Err(Refused::TooFast(ip));
        }
        s.tokens -= 1.0;
        Ok(())
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(remote, Instant::now()).map_err(|e| {
            tracing::debug!("refusing an inbound connection: {e}");
            ConnectionDenied::new(e)
        })
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip6/{ip}/tcp/4000").parse().unwrap()
    }

    /// Attack (issue 10, finding 2): a banned flooder reconnecting under fresh keys was refused only after each
    /// connection's handshake, and a fresh key bought a fresh budget.
    #[test]
    fn banned_and_too_fast_addresses_are_refused_before_the_handshake_loopback_never() {
        let mut g = Gate::default();
        let t0 = Instant::now();
        let (a, b) = (addr("fd00::1"), addr("fd00::2"));
        for _ in 0..CONN_BURST as usize {
            assert!(g.admit(&a, t0).is_ok());
        }
        assert!(matches!(g.admit(&a, t0), Err(Refused::TooFast(_))));
        assert!(g.admit(&a, t0 + std::time::Duration::from_secs(1)).is_ok(), "the rate refills");
        g.ban("fd00::2".parse().unwrap(), t0 + std::time::Duration::from_secs(600));
        assert!(matches!(g.admit(&b, t0), Err(Refused::Banned(_))));
        g.ban("::1".parse().unwrap(), t0 + std::time::Duration::from_secs(600));
        for _ in 0..100 {
            assert!(g.admit(&addr("::1"), t0).is_ok(), "loopback is the nodes of this host");
        }
        g.prune(t0 + std::time::Duration::from_secs(601));
        assert!(g.ips.is_empty(), "bans end and idle addresses are forgotten");
        assert!(g.admit(&b, t0 + std::time::Duration::from_secs(601)).is_ok());
    }
}
