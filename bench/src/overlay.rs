//! Overlay figures: iperf3 TCP throughput and ping RTT between the same two netns hosts, in the same run, over
//! (a) the raw veth and bridge, (b) a wireguard-go tunnel (the userspace WireGuard a userspace overlay competes
//! with, set up as ../shared/lab/anchor-overlay.sh does), and (c) the metac overlay; then the ratios.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use metac_tests::{wait_until, Host, Lab, Node, Proc};

/// How much of iperf3 and ping a path comparison takes (`overlay`, `net`).
#[derive(clap::Args)]
pub struct Runs {
    /// iperf3 runs per path (the median is printed)
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seconds per iperf3 run
    #[arg(long, default_value_t = 4)]
    pub secs: u64,
    /// Pings per RTT figure (10 ms apart; taken in rounds of 50 that alternate between the paths)
    #[arg(long, default_value_t = 300)]
    pub pings: u32,
}

/// What [`measure`] found per path: median TCP Gbit/s, mean RTT ms, median RTT ms.
pub struct Figures {
    pub tcp: Vec<f64>,
    pub rtt: Vec<f64>,
    pub rtt_median: Vec<f64>,
}

/// iperf3 TCP and ping from `from` to every path's address, interleaved (so that a noisy neighbour hurts every
/// path alike); prints each path's figures.
pub fn measure(paths: &[(&str, &Host, String)], runs: &Runs) -> Result<Figures> {
    let mut tcp = vec![vec![]; paths.len()];
    for rep in 0..runs.reps {
        for (i, (name, from, addr)) in paths.iter().enumerate() {
            let g = tcp_gbit(from, addr, runs.secs)?;
            eprintln!("run {}: {name} {g:.2} Gbit/s", rep + 1);
            tcp[i].push(g);
        }
    }
    // Pings interleaved too, in rounds of at most 50 per path.
    let mut samples = vec![vec![]; paths.len()];
    let rounds = runs.pings.div_ceil(50);
    for r in 0..rounds {
        for (i, (_, from, addr)) in paths.iter().enumerate() {
            samples[i].extend(rtts_ms(from, addr, runs.pings / rounds + u32::from(r < runs.pings % rounds))?);
        }
    }
    let rtt: Vec<f64> = samples.iter().map(|v| v.iter().sum::<f64>() / v.len() as f64).collect();
    let rtt_median: Vec<f64> = samples.into_iter().map(median).collect();
    let tcp: Vec<f64> = tcp.into_iter().map(median).collect();
    for (i, (name, _, _)) in paths.iter().enumerate() {
        println!("{name}_tcp_gbit: {:.2} Gbit/s", tcp[i]);
    }
    for (i, (name, _, _)) in paths.iter().enumerate() {
        println!("{name}_rtt_ms: {:.3} ms (median {:.3})", rtt[i], rtt_median[i]);
    }
    Ok(Figures { tcp, rtt, rtt_median })
}

/// Options of `metac-bench overlay`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    runs: Runs,
    /// Print both nodes' `metac overlay status` after the runs
    #[arg(long)]
    verbose: bool,
    /// Another `metac` binary whose overlay runs in a second lab in the same run, interleaved (path `base`)
    #[arg(long, value_name = "BIN")]
    baseline: Option<std::path::PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_ok(h: &Host, program: &str, args: &[&str]) -> Result<String> {
    let o = h.run(program, args).with_context(|| format!("{program} {args:?} in host {}", h.index()))?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn tcp_gbit(from: &Host, to: &str, secs: u64) -> Result<f64> {
    let out = run_ok(from, "iperf3", &["-6", "-c", to, "-t", &secs.to_string(), "-J", "--connect-timeout", "5000"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("no throughput in iperf3 output")
}

/// Per-packet round-trip times in ms of `count` pings 10 ms apart.
fn rtts_ms(from: &Host, to: &str, count: u32) -> Result<Vec<f64>> {
    let out = run_ok(from, "ping", &["-6", "-n", "-c", &count.to_string(), "-i", "0.01", to])?;
    // 64 bytes from fd00:77::2: icmp_seq=1 ttl=64 time=0.052 ms
    let v: Vec<f64> =
        out.lines().filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    if v.len() < count as usize / 2 {
        bail!("only {} of {count} pings to {to} answered: {out}", v.len());
    }
    Ok(v)
}

fn wg(args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut c = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run wg (install wireguard-tools)")?;
    if let Some(i) = input {
        c.stdin.take().context("wg stdin")?.write_all(i.as_bytes())?;
    }
    let o = c.wait_with_output()?;
    if !o.status.success() {
        bail!("wg {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A wireguard-go tunnel between hosts 1 and 2 with inner addresses fd00:88::1 and fd00:88::2. Its processes stop
/// when the returned values are dropped.
pub(crate) fn wireguard_go(lab: &Lab) -> Result<Vec<Proc>> {
    let tag = std::process::id() % 10_000;
    let names = [format!("mbwa{tag}"), format!("mbwb{tag}")];
    let keys: Vec<(String, String)> = (0..2)
        .map(|_| {
            let k = wg(&["genkey"], None)?;
            let p = wg(&["pubkey"], Some(&k))?;
            Ok((k, p))
        })
        .collect::<Result<_>>()?;
    let mut procs = vec![];
    for (i, name) in names.iter().enumerate() {
        let h = lab.host(i + 1);
        let mut cmd = h.cmd("wireguard-go", ["-f", name.as_str()]);
        cmd.env("WG_PROCESS_FOREGROUND", "1").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        procs.push(h.spawn_cmd(cmd)?);
    }
    for name in &names {
        let sock = Path::new("/var/run/wireguard").join(format!("{name}.sock"));
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || Ok(sock.exists()))
            .with_context(|| format!("wireguard-go made no control socket {}", sock.display()))?;
    }
    for i in 0..2 {
        let (h, j) = (lab.host(i + 1), 1 - i);
        let key = h.dir().join("wg.key");
        std::fs::write(&key, &keys[i].0)?;
        let endpoint = format!("[{}]:51821", lab.host(j + 1).addr());
        let allowed = format!("fd00:88::{}/128", j + 1);
        let key = key.to_string_lossy().into_owned();
        run_ok(
            h,
            "wg",
            &[
                "set",
                &names[i],
                "private-key",
                &key,
                "listen-port",
                "51821",
                "peer",
                &keys[j].1,
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
        )?;
        run_ok(h, "ip", &["-6", "addr", "add", &format!("fd00:88::{}/64", i + 1), "dev", &names[i], "nodad"])?;
        run_ok(h, "ip", &["link", "set", &names[i], "up"])?;
    }
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || lab.host(1).ping("fd00:88::2".parse().unwrap()))
        .context("the wireguard-go tunnel did not come up")?;
    Ok(procs)
}

/// Two nodes of one build in a lab of their own, their overlay carrying a ping, and an iperf3 server on host 2.
fn overlay_pair(lab: &Lab, bin: &Path) -> Result<(Vec<Node>, String, Proc)> {
    let nodes = lab.start_nodes_with(bin, &[])?;
    let target: String = nodes[1].status()?["overlay"].as_str().context("overlay address")?.into();
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || lab.host(1).ping(target.parse().unwrap()))
        .context("the metac overlay did not carry a ping")?;
    let server = iperf_server(lab.host(2))?;
    // The lab's mesh is public: open iperf3's port on the overlay. Builds from before the inbound policy have no
    // such command and no policy, so their refusal is fine.
    let _ = lab.host(2).metac_with(bin, &["overlay", "allow", "5201/tcp"], Duration::from_secs(10));
    Ok((nodes, target, server))
}

pub(crate) fn iperf_server(h: &Host) -> Result<Proc> {
    let server = h.spawn("iperf3", ["-s"])?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(!h.run("ss", ["-ltnH", "sport = :5201"])?.stdout.is_empty())
    })?;
    Ok(server)
}

pub fn run(a: Args) -> Result<()> {
    let lab = Lab::new(2)?;
    let h1 = lab.host(1);
    // The nodes first: a mesh connection made over the wireguard-go tunnel's addresses would put the overlay's
    // endpoints inside that tunnel. Their iperf3 server serves the other paths too.
    let (nodes, target, _server) = overlay_pair(&lab, &metac_tests::metac_bin()?)?;
    let _wg = wireguard_go(&lab)?;
    let base_lab = match &a.baseline {
        Some(_) => Some(Lab::new(2)?),
        None => None,
    };
    let base = match (&base_lab, &a.baseline) {
        (Some(l), Some(bin)) => Some(overlay_pair(l, bin)?),
        _ => None,
    };

    let mut paths = vec![
        ("raw", h1, lab.host(2).addr().to_string()),
        ("wggo", h1, "fd00:88::2".to_string()),
        ("metac", h1, target.clone()),
    ];
    if let (Some(l), Some((_, t, _))) = (&base_lab, &base) {
        paths.push(("base", l.host(1), t.clone()));
    }
    let Figures { tcp, rtt, rtt_median } = measure(&paths, &a.runs)?;
    let s = nodes[0].host().metac(&["--json", "overlay", "status"])?;
    let v: serde_json::Value = serde_json::from_slice(&s.stdout)?;
    println!("overlay_offload: {} (UDP GSO x{}, GRO x{})", v["offload"], v["gso_segments"], v["gro_segments"]);
    if a.verbose {
        for n in &nodes {
            let s = n.host().metac(&["overlay", "status"])?;
            eprintln!("host {}:\n{}", n.host().index(), String::from_utf8_lossy(&s.stdout));
        }
    }
    let (wg_added, metac_added) = (rtt[1] - rtt[0], rtt[2] - rtt[0]);
    println!("metac_vs_wggo_tcp: {:.2}x (goal >= 2)", tcp[2] / tcp[1]);
    println!("metac_vs_raw_tcp: {:.2}x", tcp[2] / tcp[0]);
    println!("wggo_added_rtt_ms: {wg_added:.3} ms");
    println!("metac_added_rtt_ms: {metac_added:.3} ms");
    println!("metac_vs_wggo_added_rtt: {:.2}x (goal <= 0.5)", metac_added / wg_added.max(1e-6));
    let (wg_med, metac_med) = (rtt_median[1] - rtt_median[0], rtt_median[2] - rtt_median[0]);
    println!("median: wggo added {wg_med:.3} ms, metac added {metac_med:.3} ms, {:.2}x", metac_med / wg_med.max(1e-6));
    if paths.len() == 4 {
        println!("metac_vs_base_tcp: {:.2}x", tcp[2] / tcp[3]);
        println!("base_added_rtt_ms: {:.3} ms", rtt[3] - rtt[0]);
    }
    Ok(())
}
