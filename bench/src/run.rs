//! Container start: the whole-process time of `metac run --rootfs BUSYBOX true` against `runc run` of the same
//! busybox rootfs (../shared/lab/anchor-run.sh's bundle), interleaved in one run inside one netns host with its
//! node already running; also `metac run true` on the host's root. Then the footprint: the node's resident memory
//! with nothing running, with 50 detached sleepers, and after they are removed.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use metac_tests::{output, Lab};

/// Options of `metac-bench run`.
#[derive(clap::Args)]
pub struct Args {
    /// Runs of each (the median is printed; one warm-up run of each is not counted)
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Detached sleepers for the footprint figure
    #[arg(long, default_value_t = 50)]
    sleepers: usize,
}

fn sh(cmd: &str) -> Result<String> {
    let o = std::process::Command::new("sh").args(["-c", cmd]).output()?;
    if !o.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A busybox bundle for runc (rootfs + `runc spec` with `true` as its process, no terminal).
pub(crate) fn bundle(dir: &Path) -> Result<()> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox (scripts/install-deps.sh)")?;
    for a in sh("/bin/busybox --list")?.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    sh(&format!("cd {} && runc spec", dir.display())).context("runc (../shared/lab/install-peers.sh)")?;
    let spec = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec)?)?;
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&spec, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: Args) -> Result<()> {
    let lab = Lab::new(1)?;
    let h = lab.host(1);
    let node = h.start_node_sharing_mounts(&["--no-overlay", "--no-mdns"])?;
    let bin = metac_tests::metac_bin()?;
    let b = h.dir().join("bundle");
    bundle(&b)?;
    let state = h.dir().join("runc-state");
    let sock = h.socket();
    let rootfs = b.join("rootfs");
    // One shell in the host times every start the same way, alternating the three.
    let script = format!(
        r#"set -e
ns() {{ date +%s%N; }}
for i in $(seq 0 {reps}); do
  t0=$(ns); {bin} --socket {sock} run --rm --rootfs {rootfs} true; t1=$(ns)
  runc --root {state} run --bundle {b} bench-$$-$i >/dev/null; t2=$(ns)
  {bin} --socket {sock} run --rm true; t3=$(ns)
  [ $i -gt 0 ] && echo $(( (t1-t0)/1000 )) $(( (t2-t1)/1000 )) $(( (t3-t2)/1000 ))
done
"#,
        reps = a.reps,
        bin = bin.display(),
        sock = sock.display(),
        rootfs = rootfs.display(),
        state = state.display(),
        b = b.display(),
    );
    // In the machine's mount namespace, as the node: `ip netns exec` would hide the cgroup mounts runc needs.
    let o = output(&mut h.cmd_sharing_mounts("sh", ["-c", &script]), Duration::from_secs(1800))?;
    if !o.status.success() {
        bail!("the timing script failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let mut cols = [vec![], vec![], vec![]];
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        for (c, v) in cols.iter_mut().zip(l.split_whitespace()) {
            c.push(v.parse::<f64>()? / 1000.0);
        }
    }
    let [m_rootfs, runc, m_host] = cols.map(median);
    println!("metac_run_rootfs_true_ms: {m_rootfs:.1} ms (median of {})", a.reps);
    println!("runc_run_true_ms: {runc:.1} ms");
    println!("metac_run_host_root_true_ms: {m_host:.1} ms");
    println!("ratio_metac_rootfs_over_runc: {:.2} (goal <= 0.6)", m_rootfs / runc);

    // Footprint: the node with nothing running, with the sleepers, and after.
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(node.pid())?;
    let mut ids = vec![];
    for _ in 0..a.sleepers {
        let o = h.metac(&["run", "-d", "sleep", "3600"])?;
        ids.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    std::thread::sleep(Duration::from_secs(2));
    let busy = rss_kib(node.pid())?;
    let cpu0 = sh(&format!("cut -d' ' -f14,15 /proc/{}/stat", node.pid()))?;
    std::thread::sleep(Duration::from_secs(10));
    let cpu1 = sh(&format!("cut -d' ' -f14,15 /proc/{}/stat", node.pid()))?;
    let ticks = |s: &str| s.split(' ').filter_map(|v| v.parse::<u64>().ok()).sum::<u64>();
    for id in &ids {
        h.metac(&["rm", "-f", id])?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(node.pid())?;
    println!("node_rss_idle_kib: {idle} KiB");
    println!("node_rss_with_{}_sleepers_kib: {busy} KiB", a.sleepers);
    println!(
        "node_rss_per_running_container_kib: {:.0} KiB (goal <= 1024)",
        busy.saturating_sub(idle) as f64 / a.sleepers as f64
    );
    println!("node_cpu_ticks_in_10s_with_sleepers: {} (no polling: about 0)", ticks(&cpu1) - ticks(&cpu0));
    println!("node_rss_after_removing_them_kib: {after} KiB");
    Ok(())
}
