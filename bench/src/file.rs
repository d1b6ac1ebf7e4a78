//! File figures: `metac file cat` of one file across two netns hosts, end to end through the CLI, the local API,
//! the mesh transport and the NBD client; with `--baseline BIN`, another build of metac does the same in a second
//! lab in the same run, interleaved, and the ratio is printed (a refactor must not cost speed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metac_tests::{wait_until, Host, Lab, Node};

/// Options of `metac-bench file`.
#[derive(clap::Args)]
pub struct Args {
    /// File size in MiB
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Transfers per build (the median is printed)
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Another `metac` binary to run in the same run (for example the previous release)
    #[arg(long, value_name = "BIN")]
    baseline: Option<PathBuf>,
}

/// Two hosts running one build, the second reading what the first exports.
struct Pair {
    name: &'static str,
    bin: PathBuf,
    lab: Lab,
    _nodes: Vec<Node>,
    reference: String,
}

fn pair(name: &'static str, bin: &Path, file: &Path) -> Result<Pair> {
    let lab = Lab::new(2)?;
    let nodes = lab.start_nodes_with(bin, &[])?;
    wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        Ok(nodes.iter().all(|n| n.status().is_ok_and(|s| s["peers"].as_u64() >= Some(1))))
    })
    .context("the two nodes did not find each other")?;
    let out = lab.host(1).metac_with(bin, &["file", "export", file.to_str().unwrap()], Duration::from_secs(30))?;
    let reference = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Pair { name, bin: bin.to_path_buf(), lab, _nodes: nodes, reference })
}

/// Seconds for one `metac file cat REF -o /dev/null` on host 2.
fn cat(p: &Pair) -> Result<f64> {
    let h: &Host = p.lab.host(2);
    let t = Instant::now();
    h.metac_with(&p.bin, &["file", "cat", &p.reference, "-o", "/dev/null"], Duration::from_secs(600))
        .with_context(|| format!("{}: metac file cat", p.name))?;
    Ok(t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 || a.mib == 0 {
        bail!("--reps and --mib must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bench.img");
    metac_tests::write_pseudo_random(&file, a.mib << 20)?;
    let bin = metac_tests::metac_bin()?;
    let mut pairs = vec![pair("metac", &bin, &file)?];
    if let Some(b) = &a.baseline {
        pairs.push(pair("baseline", b, &file)?);
    }
    // A first read fills the page cache on both sides alike.
    for p in &pairs {
        cat(p)?;
    }
    let mut secs = vec![vec![]; pairs.len()];
    for rep in 0..a.reps {
        for (i, p) in pairs.iter().enumerate() {
            let s = cat(p)?;
            eprintln!("run {}: {} {:.0} MiB/s", rep + 1, p.name, a.mib as f64 / s);
            secs[i].push(s);
        }
    }
    let rates: Vec<f64> = secs.into_iter().map(|s| a.mib as f64 / median(s)).collect();
    for (p, r) in pairs.iter().zip(&rates) {
        println!("{}_file_cat_mib_s: {r:.0} MiB/s ({} MiB, median of {})", p.name, a.mib, a.reps);
    }
    if rates.len() == 2 {
        println!("metac_vs_baseline_file_cat: {:.2}x", rates[0] / rates[1]);
    }
    Ok(())
}
