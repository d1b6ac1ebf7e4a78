//! `metac-flood`: a hostile mesh peer, for attack tests and benchmarks only. It connects to one node, proves the
//! mesh key if given one, then pushes adverts of freshly minted keys as fast as it can, by gossip and in every sync
//! page it is asked for (see `metac_mesh::net::flood`). It prints what it sent as one JSON line. Run it only
//! against nodes of a lab you built (`metac-bench flood` and the flood test do).

use std::time::Duration;

use clap::Parser;
use metac_mesh::net::flood::{flood, FloodConfig};
use metac_mesh::Identity;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "metac-flood",
    about = "a hostile mesh peer flooding adverts of fresh keys (for tests and benchmarks)"
)]
struct Args {
    /// The node to flood, as a libp2p address (e.g. /ip6/fd00:77::1/tcp/4747)
    target: String,
    /// Fresh keys to mint (their adverts are signed again with a new seq once all are out)
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// About how many bytes each advert takes (at most 64 KiB)
    #[arg(long, default_value_t = 8192)]
    bytes: usize,
    /// Seconds to flood
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// The mesh key file, to flood a private mesh as a member
    #[arg(long)]
    mesh_key: Option<std::path::PathBuf>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("metac-flood: error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    let target = a.target.parse().map_err(|e| format!("{} is not a libp2p address: {e}", a.target))?;
    let mesh_key = match &a.mesh_key {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
        None => None,
    };
    let config = FloodConfig {
        identity: Identity::generate().map_err(|e| e.to_string())?,
        target,
        mesh_key,
        keys: a.keys,
        advert_bytes: a.bytes.min(metac_mesh::advert::MAX_ADVERT_BYTES),
        duration: Duration::from_secs(a.secs),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let report = rt.block_on(flood(config, CancellationToken::new())).map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    Ok(())
}
