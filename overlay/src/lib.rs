//! metac-overlay: the fd6f IPv6 network between all nodes (DESIGN section 5).
//!
//! Every node owns a TUN device (`metac0`) carrying its overlay address with a route for the whole
//! `fd6f:e1da:f01c::/48`. A packet read from the TUN is sent to the peer that owns its destination address through
//! a WireGuard tunnel (boringtun's `Tunn`), keyed from the two nodes' identities: a node's X25519 key is derived
//! from its ed25519 node key, so no key exchange is needed beyond the mesh. Tunnels are made on demand and dropped
//! when idle. UDP carries the encrypted packets; when no UDP path works between two nodes, the same encrypted
//! datagrams travel over a mesh stream instead (the relay path), so the overlay keeps working, slower.
//!
//! Speed comes from moving 64 KiB at a time: the TUN runs with `IFF_VNET_HDR` and TSO/USO offloads, so one read
//! returns a whole TCP super-segment, which is split into MTU-sized packets, encrypted into one buffer and sent
//! with one UDP GSO `sendmsg`; the receiver reads many datagrams per syscall (`recvmmsg` + UDP GRO), decrypts them
//! and coalesces TCP segments again before writing to the TUN. One thread reads the TUN, one reads UDP, one runs
//! the timers; every buffer is allocated once, when the threads start.
//!
//! Module map: [`table`] (the sans-IO peer table and path choices), `gso` (how encrypted datagrams are grouped into GSO
//! sends), [`packet`] (IPv6 header fields), [`relay`] (the stream fallback's framing), [`advert`] (what a node adverts
//! of its tunnel endpoint), [`wgconf`] (keys and wg-quick configurations for stock WireGuard peers), and the engine
//! that runs it all ([`Overlay`]; `engine/` has a file per thread: `tx`, `rx`, `timers`, with `datagram`, `status` and
//! `bufs` beside them).

#![warn(missing_docs)]

pub mod advert;
mod device;
mod engine;
mod gso;
pub mod packet;
pub mod relay;
pub mod table;
pub mod wgconf;

pub use engine::{Config, Overlay, OverlayStatus, PeerStatus, Relay, RelayScratch, StartError, DEFAULT_MTU};
pub use table::{Path, PeerInfo};

/// The default name of the TUN device.
pub const DEFAULT_TUN: &str = "metac0";

/// The default UDP port of the tunnels (WireGuard's).
pub const DEFAULT_PORT: u16 = 51820;

/// Length of the overlay prefix, `fd6f:e1da:f01c::/48`.
pub const PREFIX_LEN: u8 = 48;
