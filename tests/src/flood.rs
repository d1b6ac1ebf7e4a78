//! The advert flood (issue 10, finding 2) between real hosts: two honest `metac node`s and one hostile peer
//! (`metac-flood`, built from the mesh's own types) pushing adverts of fresh keys at one of them as fast as it can.
//! While it runs, the honest nodes keep exchanging adverts (one exports a file every few seconds; the time until
//! the other lists it is measured) and their resident memory and CPU are sampled. Used by the flood test (which
//! asserts bounds) and by `metac-bench flood` (which prints the figures).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procstat::{proc_stat, ticks_to_ms};
use crate::{wait_until, Error, Host, Lab, Result};

/// What a flood run does.
#[derive(Debug, Clone)]
pub struct FloodOptions {
    /// Fresh keys the flooder mints.
    pub keys: u32,
    /// Bytes of each flooded advert.
    pub advert_bytes: usize,
    /// Seconds the flood lasts.
    pub secs: u64,
    /// The `metac-flood` binary.
    pub flooder: PathBuf,
}

/// What one honest node cost.
#[derive(Debug, Clone, Default)]
pub struct NodeCost {
    /// Resident MiB before the flood.
    pub rss_before_mib: f64,
    /// Highest resident MiB sampled during the flood and just after.
    pub rss_peak_mib: f64,
    /// CPU ms per second before the flood (idle).
    pub cpu_idle_ms_per_s: f64,
    /// CPU ms per second during the flood.
    pub cpu_flood_ms_per_s: f64,
    /// Other nodes it knows after the flood.
    pub known_nodes: u64,
}

/// The figures of a flood run.
#[derive(Debug, Clone)]
pub struct FloodFigures {
    /// The flooded node (0) and its honest peer (1).
    pub nodes: [NodeCost; 2],
    /// Seconds from an export on node 1 to node 0 listing it, each time during the flood.
    pub propagation_secs: Vec<f64>,
    /// The flooder's own report (JSON line), or its log tail if it printed none.
    pub flooder_report: String,
}

/// The `metac-flood` binary beside the `metac` one (both are built by `cargo build --workspace --bins`).
pub fn flooder_bin() -> Result<PathBuf> {
    let metac = crate::metac_bin()?;
    let p = metac.with_file_name("metac-flood");
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::NoMetacBin { path: p })
    }
}

fn status(h: &Host, bin: &Path) -> Result<serde_json::Value> {
    let o = h.metac_with(bin, &["--json", "status"], crate::RUN_TIMEOUT)?;
    serde_json::from_slice(&o.stdout).map_err(|e| Error::InvalidArg(format!("bad status JSON: {e}")))
}

/// Runs the flood scenario in a fresh three-host lab; on failure, the lab's logs go to stderr first.
pub fn run(o: &FloodOptions) -> Result<FloodFigures> {
    let lab = Lab::new(3)?;
    let r = scenario(&lab, o);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &Lab, o: &FloodOptions) -> Result<FloodFigures> {
    let bin = crate::metac_bin()?;
    let honest = [
        lab.host(1).start_node_with(&bin, &["--log-level", "info"])?,
        lab.host(2).start_node_with(&bin, &["--log-level", "info"])?,
    ];
    let (h0, h1) = (lab.host(1), lab.host(2));
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        Ok(status(h0, &bin)?["peers"].as_u64() >= Some(1) && status(h1, &bin)?["peers"].as_u64() >= Some(1))
    })?;
    let target = status(h0, &bin)?["listen"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with(&format!("/ip6/{}/tcp/", h0.addr())))
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidArg("node 0 lists no TCP address on its lab address".into()))?;

    let mut costs = [NodeCost::default(), NodeCost::default()];
    let pids = [honest[0].pid(), honest[1].pid()];
    // Idle first, to compare.
    let t0 = [proc_stat(pids[0])?, proc_stat(pids[1])?];
    let idle = Duration::from_secs(5);
    std::thread::sleep(idle);
    for i in 0..2 {
        let (rss, ticks) = proc_stat(pids[i])?;
        costs[i].rss_before_mib = rss as f64 / 1024.0;
        costs[i].cpu_idle_ms_per_s = ticks_to_ms(ticks - t0[i].1) / idle.as_secs_f64();
    }

    let args = [
        target.clone(),
        "--keys".into(),
        o.keys.to_string(),
        "--bytes".into(),
        o.advert_bytes.to_string(),
        "--secs".into(),
        o.secs.to_string(),
    ];
    let flooder = lab.host(3).spawn(&o.flooder, &args)?;
    let start = Instant::now();
    let before = [proc_stat(pids[0])?.1, proc_stat(pids[1])?.1];
    let mut propagation = vec![];
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(o.secs) {
        for i in 0..2 {
            let rss = proc_stat(pids[i])?.0 as f64 / 1024.0;
            costs[i].rss_peak_mib = costs[i].rss_peak_mib.max(rss);
        }
        // Node 1 exports a new file; node 0 must list it despite the flood.
        let file = h1.dir().join(format!("during-flood-{round}"));
        std::fs::write(&file, format!("round {round}")).map_err(|e| Error::io("write a file to export", e))?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h1.metac_with(&bin, &["file", "export", &file.to_string_lossy()], crate::RUN_TIMEOUT)?;
        let exported = Instant::now();
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            let o = h0.metac_with(&bin, &["--json", "resources", "--kind", "file"], crate::RUN_TIMEOUT)?;
            Ok(String::from_utf8_lossy(&o.stdout).contains(&name))
        })
        .map_err(|e| Error::NotReady {
            what: format!("node 0 did not list node 1's export {name} ({e}), {:?} into the flood", start.elapsed()),
            log_tail: String::new(),
        })?;
        propagation.push(exported.elapsed().as_secs_f64());
        round += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    let flood_secs = start.elapsed().as_secs_f64();
    for i in 0..2 {
        let (rss, ticks) = proc_stat(pids[i])?;
        costs[i].rss_peak_mib = costs[i].rss_peak_mib.max(rss as f64 / 1024.0);
        costs[i].cpu_flood_ms_per_s = ticks_to_ms(ticks - before[i]) / flood_secs;
    }
    flooder.wait_timeout(Duration::from_secs(15));
    let log = flooder.log_path().map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
    let flooder_report =
        log.lines().rev().find(|l| l.starts_with('{')).map(str::to_string).unwrap_or_else(|| log.clone());
    for (i, h) in [h0, h1].into_iter().enumerate() {
        costs[i].known_nodes = status(h, &bin)?["known_nodes"].as_u64().unwrap_or(0);
    }
    Ok(FloodFigures { nodes: costs, propagation_secs: propagation, flooder_report })
}
