//! The advert flood (issue 10, finding 2): a hostile peer (`metac-flood`) pushes adverts of fresh keys at one of
//! two honest nodes as fast as it can; prints what the honest nodes cost before and during it, how fast their own
//! adverts still spread, and what the flooder managed.

use anyhow::{Context, Result};
use metac_tests::flood::{flooder_bin, run as run_flood, FloodOptions};

/// Options of `metac-bench flood`.
#[derive(clap::Args)]
pub struct Args {
    /// Fresh keys the flooder mints
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Bytes of each flooded advert (at most 64 KiB)
    #[arg(long, default_value_t = 8192)]
    bytes: usize,
    /// Seconds the flood lasts
    #[arg(long, default_value_t = 60)]
    secs: u64,
}

/// Runs the flood and prints the figures.
pub fn run(a: Args) -> Result<()> {
    let flooder = flooder_bin().context("metac-flood must be built beside metac")?;
    println!(
        "# advert flood: {} fresh keys, {} B adverts, {} s, flooder {}",
        a.keys,
        a.bytes,
        a.secs,
        flooder.display()
    );
    let f = run_flood(&FloodOptions { keys: a.keys, advert_bytes: a.bytes, secs: a.secs, flooder })?;
    for (n, name) in f.nodes.iter().zip(["flooded", "peer"]) {
        println!("{name}_rss_before: {:.1} MiB", n.rss_before_mib);
        println!("{name}_rss_peak: {:.1} MiB", n.rss_peak_mib);
        println!("{name}_cpu_idle: {:.1} ms/s", n.cpu_idle_ms_per_s);
        println!("{name}_cpu_flood: {:.1} ms/s", n.cpu_flood_ms_per_s);
        println!("{name}_known_nodes: {}", n.known_nodes);
    }
    let mut p = f.propagation_secs.clone();
    p.sort_by(f64::total_cmp);
    if let (Some(med), Some(max)) = (p.get(p.len() / 2), p.last()) {
        println!(
            "honest_advert_propagation: median {:.0} ms, max {:.0} ms over {} exports",
            med * 1e3,
            max * 1e3,
            p.len()
        );
    }
    println!("flooder: {}", f.flooder_report);
    Ok(())
}
