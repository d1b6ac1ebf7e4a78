//! `metac node`: runs the daemon in this process until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Options of `metac node`.
#[derive(clap::Args)]
pub struct Args {
    /// State directory [default: /var/lib/metac as root, $XDG_DATA_HOME/metac otherwise]
    #[arg(long)]
    state: Option<PathBuf>,
    /// Mesh port, TCP and UDP (0 picks one)
    #[arg(long, default_value_t = 4747)]
    port: u16,
    /// Bootstrap peer: a multiaddr or HOST[:PORT] (repeatable)
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// Do not discover peers on the LAN by mDNS
    #[arg(long)]
    no_mdns: bool,
    /// Join only nodes holding the same key file (a private mesh)
    #[arg(long, value_name = "FILE")]
    mesh_key: Option<PathBuf>,
    /// Do not run the overlay network (no TUN device, no WireGuard tunnels)
    #[arg(long)]
    no_overlay: bool,
    /// Name of the overlay's TUN device
    #[arg(long, value_name = "NAME", default_value = "metac0")]
    tun: String,
    /// UDP port of the overlay's WireGuard tunnels (0 picks one)
    #[arg(long, value_name = "PORT", default_value_t = 51820)]
    overlay_port: u16,
    /// Members of this group (a name or a gid) may use the node's API; root and the node's user always may
    /// [default: metac, if that group exists; a node that is not root has none]
    #[arg(long, value_name = "GROUP")]
    api_group: Option<String>,
    /// The most the content cache of read-only fs binds holds, e.g. 2G or 512M (least recently used files go
    /// first)
    #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = metac_fs::cache::parse_size)]
    cache_size: u64,
    /// TCP port of the direct transport, which carries binds' data on connections of their own (AES-256-GCM,
    /// keyed over the mesh) [default: the mesh port + 1; a port in use picks a free one]
    #[arg(long, value_name = "PORT", conflicts_with = "no_direct")]
    direct_port: Option<u16>,
    /// Carry binds' data over mesh streams only (for a firewall that lets only the mesh port through)
    #[arg(long)]
    no_direct: bool,
    /// Log level or tracing filter (error, warn, info, debug, trace, or e.g. "metac_mesh=debug")
    #[arg(long, default_value = "info", env = "METAC_LOG")]
    log_level: String,
}

/// Runs a node serving its API on `socket`.
pub async fn run(a: Args, socket: PathBuf) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log_level)
        .with_context(|| format!("--log-level {:?} is not a level or filter", a.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let config = metac_node::Config {
        port: a.port,
        peers: a.peers,
        mdns: !a.no_mdns,
        mesh_key: a.mesh_key,
        overlay: metac_node::overlay::OverlayConfig { enabled: !a.no_overlay, tun: a.tun, port: a.overlay_port },
        api_group: a.api_group,
        cache_size: Some(a.cache_size),
        direct_port: match (a.no_direct, a.direct_port) {
            (true, _) => None,
            (false, Some(p)) => Some(p),
            (false, None) => Some(if a.port == 0 { 0 } else { a.port.wrapping_add(1) }),
        },
        ..metac_node::Config::new(a.state.unwrap_or_else(metac_node::config::default_state_dir), socket)
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        c.cancel();
    });
    metac_node::run(config, cancel, |_| {}).await.map_err(|e| anyhow::anyhow!(e))
}
