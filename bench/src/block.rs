//! Block figures (issue 13): one file on host 1 of a two-host netns lab, served three ways over the same link, and
//! read by the same clients on host 2 in the same run, interleaved:
//!
//! - **metac**: `metac file export FILE` on host 1, `metac file bind REF -U SOCK` on host 2; clients use the Unix
//!   socket, the bind carries the requests across the mesh to the exporter.
//! - **nbdkit**: `nbdkit -r file FILE` on host 1, over TCP on the lab's link (as ../shared/lab/anchor-block.sh).
//! - **qemu-nbd**: `qemu-nbd -r -t -e 8 FILE` on host 1, over TCP on the same link.
//! - **metac_mesh**: metac again, between hosts 3 and 4 whose nodes run with `--no-direct`: the bind's data on the
//!   libp2p mesh stream instead of a direct connection, so that the transport's share shows in the same run.
//!
//! Figures: the time of `nbdcopy URI null:` of the whole file (pseudo-random, warm in the exporter's page cache),
//! and 4 KiB random-read IOPS from fio's nbd engine (libnbd, `iodepth` requests in flight); each is the median of
//! several reps, and the ratios metac/nbdkit and metac/qemu-nbd are printed as throughput ratios (above 1: metac
//! is faster). Last, the wall time of `metac run --vm true` where this build has `run --vm`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metac_tests::{output, wait_until, Host, Lab, Node};

/// Options of `metac-bench block`.
#[derive(clap::Args)]
pub struct Args {
    /// Size of the file, MiB
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// nbdcopy reads and fio runs per server (the median is printed)
    #[arg(long, env = "REPS", default_value_t = 3)]
    reps: usize,
    /// Seconds per fio run
    #[arg(long, default_value_t = 5)]
    fio_secs: u64,
    /// Requests fio keeps in flight
    #[arg(long, default_value_t = 16)]
    iodepth: u32,
    /// Runs of `metac run --vm true` (the median is printed; one warm-up run is not counted)
    #[arg(long, default_value_t = 10)]
    vm_runs: usize,
    /// After the figures, record both nodes with `perf record` during metac nbdcopies and write the profiles
    /// (perf data and a flat `perf report`) to this directory
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
}

/// Longest one nbdcopy or fio run may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// TCP ports of the peer servers on host 1.
const NBDKIT_PORT: u16 = 10809;
const QEMU_NBD_PORT: u16 = 10810;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// A server of the file as host 2 reaches it.
struct Server {
    name: &'static str,
    uri: String,
    /// The processes that serve it (for metac: the exporting node, then the binding one).
    pids: Vec<u32>,
}

/// Checks that the clients and peer servers are installed, fio with its nbd engine among them.
fn require_tools() -> Result<()> {
    for (tool, package) in [
        ("nbdcopy", "libnbd-bin"),
        ("nbdkit", "nbdkit"),
        ("qemu-nbd", "qemu-utils"),
        ("fio", "fio"),
        ("ss", "iproute2"),
    ] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?;
        if !found.status.success() {
            bail!("{tool} is missing: apt-get install {package} (scripts/bench.sh installs it)");
        }
    }
    let o = std::process::Command::new("fio").arg("--enghelp=nbd").output()?;
    if !o.status.success() || !String::from_utf8_lossy(&o.stdout).contains("uri") {
        bail!("this fio has no nbd engine (Debian's fio has it): {}", text(&o.stderr));
    }
    Ok(())
}

/// Starts `program args` on `h` and waits until it listens on TCP `port` there.
fn serve(h: &Host, port: u16, program: &str, args: &[&str]) -> Result<metac_tests::Proc> {
    let p = h.spawn(program, args)?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(!h.run("ss", ["-ltnH", &format!("sport = :{port}")])?.stdout.is_empty())
    })
    .with_context(|| format!("{program} does not listen on port {port} in host {} (see its log)", h.index()))?;
    Ok(p)
}

/// Exports `file` on `h1`, binds it on `h2` at a socket in h2's directory and waits until the bind is up; returns
/// the bind's NBD URI.
fn metac_bind(h1: &Host, h2: &Host, file: &Path) -> Result<String> {
    let o = h1.metac(&["file", "export", file.to_str().unwrap(), "--read-only"]).context("metac file export")?;
    let reference = text(&o.stdout);
    let sock = h2.dir().join("bench.sock");
    let sock_s = sock.to_str().unwrap();
    h2.metac(&["file", "bind", &reference, "-U", sock_s]).context("metac file bind")?;
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let o = h2.metac(&["--json", "file", "ls"])?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        Ok(v.as_array().is_some_and(|b| b.iter().any(|b| b["target"] == sock_s && b["state"] == "up")))
    })
    .context("the metac file bind did not come up")?;
    Ok(format!("nbd+unix:///?socket={sock_s}"))
}

/// Seconds of one `nbdcopy URI null:` on `h`.
fn nbdcopy(h: &Host, s: &Server) -> Result<f64> {
    let t = Instant::now();
    let o = output(&mut h.cmd("nbdcopy", [s.uri.as_str(), "null:"]), CLIENT_TIMEOUT)?;
    if !o.status.success() {
        bail!("{}: nbdcopy {} null: failed: {}", s.name, s.uri, text(&o.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// 4 KiB random-read IOPS of one fio run on `h` (fio's nbd engine: libnbd, `iodepth` requests in flight).
fn fio(h: &Host, s: &Server, secs: u64, iodepth: u32) -> Result<f64> {
    let uri = format!("--uri={}", s.uri);
    let args = [
        "--name=randread",
        "--ioengine=nbd",
        uri.as_str(),
        "--rw=randread",
        "--bs=4k",
        &format!("--iodepth={iodepth}"),
        &format!("--runtime={secs}"),
        "--time_based",
        "--norandommap",
        "--randrepeat=0",
        "--output-format=json",
    ];
    let o = output(&mut h.cmd("fio", args), CLIENT_TIMEOUT)?;
    if !o.status.success() {
        bail!("{}: fio failed: {}{}", s.name, text(&o.stdout), text(&o.stderr));
    }
    // The nbd engine prints "fio: connected to NBD server" before the JSON.
    let out = String::from_utf8_lossy(&o.stdout);
    let json = out.find('{').map(|i| &out[i..]).context("no JSON in fio's output")?;
    let v: serde_json::Value = serde_json::from_str(json).context("fio's JSON")?;
    let job = &v["jobs"][0];
    if job["error"].as_i64() != Some(0) {
        bail!("{}: fio reports error {}", s.name, job["error"]);
    }
    job["read"]["iops"].as_f64().context("no read IOPS in fio's output")
}

/// CPU seconds (user + system, all threads) process `pid` has used.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces: utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after the name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/PID/stat")?;
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(f.iter().sum::<u64>() as f64 / hz)
}

/// `perf record` of both nodes while metac nbdcopies run on host 2 (bounded: at most 10 copies, as long as perf's
/// `sleep`), then a flat report of each in `dir`.
fn profile(h2: &Host, metac: &Server, nodes: &[Node], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut perfs = vec![];
    for (n, who) in nodes.iter().zip(["exporter", "binder"]) {
        let data = dir.join(format!("{who}.data"));
        let p = std::process::Command::new("perf")
            .args(["record", "-q", "-F", "999", "-g", "-p", &n.pid().to_string(), "-o"])
            .arg(&data)
            .args(["--", "sleep", "4"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("perf (apt-get install linux-perf)")?;
        perfs.push((p, data, who));
    }
    for _ in 0..10 {
        nbdcopy(h2, metac)?;
        if perfs.iter_mut().all(|(p, _, _)| p.try_wait().ok().flatten().is_some()) {
            break;
        }
    }
    for (mut p, data, who) in perfs {
        p.wait()?;
        let o = std::process::Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none", "--percent-limit", "0.5", "-i"])
            .arg(&data)
            .output()?;
        let report = dir.join(format!("{who}.txt"));
        std::fs::write(&report, &o.stdout)?;
        eprintln!("profile of the {who}: {}", report.display());
    }
    Ok(())
}

/// `reps` rounds of one nbdcopy through each server; returns each server's median seconds, and the median CPU
/// seconds per copy of each of its processes.
fn copies(h2: &Host, servers: &[Server], a: &Args) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let mut copy = vec![vec![]; servers.len()];
    let mut cpu: Vec<Vec<Vec<f64>>> = servers.iter().map(|s| vec![vec![]; s.pids.len()]).collect();
    for rep in 0..a.reps {
        for (i, s) in servers.iter().enumerate() {
            let before = s.pids.iter().map(|&p| cpu_secs(p)).collect::<Result<Vec<_>>>()?;
            let secs = nbdcopy(h2, s)?;
            for (j, &p) in s.pids.iter().enumerate() {
                cpu[i][j].push(cpu_secs(p)? - before[j]);
            }
            eprintln!("run {}: nbdcopy {} {secs:.3} s, {:.0} MB/s", rep + 1, s.name, (a.mib << 20) as f64 / secs / 1e6);
            copy[i].push(secs);
        }
    }
    let cpu = cpu.into_iter().map(|c| c.into_iter().map(median).collect()).collect();
    Ok((copy.into_iter().map(median).collect(), cpu))
}

/// Which way a ratio reads: above 1 is metac's advantage.
fn ratio(metac: f64, peer: f64) -> f64 {
    metac / peer.max(1e-9)
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 || a.mib == 0 || a.fio_secs == 0 || a.iodepth == 0 {
        bail!("--reps, --mib, --fio-secs and --iodepth must be at least 1");
    }
    require_tools()?;
    // Hosts 3 and 4 run metac with `--no-direct`: the same bind over the libp2p mesh stream, the transport the
    // direct one replaced, measured beside it on the same kind of link.
    let lab = Lab::new(4)?;
    let (h1, h2) = (lab.host(1), lab.host(2));
    let file = h1.dir().join("disk.img");
    eprintln!("preparing: a {} MiB pseudo-random file on host 1", a.mib);
    metac_tests::write_pseudo_random(&file, a.mib << 20)?;
    let f = file.to_str().unwrap();

    let nodes = [h1.start_node(&[])?, h2.start_node(&[])?];
    let mesh_nodes = [lab.host(3).start_node(&["--no-direct"])?, lab.host(4).start_node(&["--no-direct"])?];
    wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        Ok(nodes.iter().chain(&mesh_nodes).all(|n| n.status().is_ok_and(|s| s["peers"].as_u64() >= Some(3))))
    })
    .context("the two nodes did not find each other")?;
    let addr = h1.addr().to_string();
    let (kp, qp) = (NBDKIT_PORT.to_string(), QEMU_NBD_PORT.to_string());
    let nbdkit = serve(h1, NBDKIT_PORT, "nbdkit", &["-f", "-r", "-i", &addr, "-p", &kp, "file", f])?;
    let qemu_nbd =
        serve(h1, QEMU_NBD_PORT, "qemu-nbd", &["-r", "-t", "-e", "8", "-f", "raw", "-b", &addr, "-p", &qp, f])?;
    let servers = [
        Server { name: "metac", uri: metac_bind(h1, h2, &file)?, pids: vec![nodes[0].pid(), nodes[1].pid()] },
        Server { name: "nbdkit", uri: format!("nbd://[{addr}]:{NBDKIT_PORT}"), pids: vec![nbdkit.pid()] },
        Server { name: "qemu_nbd", uri: format!("nbd://[{addr}]:{QEMU_NBD_PORT}"), pids: vec![qemu_nbd.pid()] },
        Server {
            name: "metac_mesh",
            uri: metac_bind(lab.host(3), lab.host(4), &file)?,
            pids: vec![mesh_nodes[0].pid(), mesh_nodes[1].pid()],
        },
    ];

    // A first read through each warms the exporter's page cache and every server alike; not counted.
    for s in &servers {
        nbdcopy(h2, s)?;
    }
    let (secs, cpu) = copies(h2, &servers, &a)?;
    let mut iops = vec![vec![]; servers.len()];
    for rep in 0..a.reps {
        for (i, s) in servers.iter().enumerate() {
            let v = fio(h2, s, a.fio_secs, a.iodepth)?;
            eprintln!("run {}: fio {} {v:.0} IOPS", rep + 1, s.name);
            iops[i].push(v);
        }
    }
    if let Some(dir) = &a.profile {
        profile(h2, &servers[0], &nodes, dir)?;
    }
    let bytes = (a.mib << 20) as f64;
    let mbs: Vec<f64> = secs.iter().map(|s| bytes / s / 1e6).collect();
    let iops: Vec<f64> = iops.into_iter().map(median).collect();
    let v = h2.metac(&["--json", "file", "ls"]).map(|o| text(&o.stdout)).unwrap_or_default();
    eprintln!("bind after the runs: {v}");
    drop(nodes);
    drop(mesh_nodes);
    drop(lab);

    let vm = run_vm_true(a.vm_runs)?;

    println!("file: {} MiB pseudo-random on host 1, read on host 2; median of {}", a.mib, a.reps);
    for (i, s) in servers.iter().enumerate() {
        println!("{}_nbdcopy_s: {:.3} s ({:.0} MB/s)", s.name, secs[i], mbs[i]);
    }
    for (i, s) in servers.iter().enumerate() {
        println!(
            "{}_randread_4k_iops: {:.0} (fio nbd engine, iodepth {}, {} s)",
            s.name, iops[i], a.iodepth, a.fio_secs
        );
    }
    println!(
        "metac_nbdcopy_node_cpu_s: exporter {:.2} s, binder {:.2} s per copy (of {:.2} s wall)",
        cpu[0][0], cpu[0][1], secs[0]
    );
    println!("nbdkit_nbdcopy_cpu_s: {:.2} s per copy; qemu_nbd_nbdcopy_cpu_s: {:.2} s", cpu[1][0], cpu[2][0]);
    println!("ratios are metac's throughput over the peer's: above 1, metac is faster");
    println!("ratio_nbdcopy_metac_over_nbdkit: {:.2} (goal >= 1)", ratio(mbs[0], mbs[1]));
    println!("ratio_nbdcopy_metac_over_qemu_nbd: {:.2}", ratio(mbs[0], mbs[2]));
    println!("ratio_randread_iops_metac_over_nbdkit: {:.2} (goal >= 0.8)", ratio(iops[0], iops[1]));
    println!("ratio_randread_iops_metac_over_qemu_nbd: {:.2}", ratio(iops[0], iops[2]));
    println!(
        "ratio_direct_over_mesh_transport: nbdcopy {:.2}, 4k IOPS {:.2} (metac's direct connections over its libp2p streams)",
        ratio(mbs[0], mbs[3]),
        ratio(iops[0], iops[3])
    );
    match vm {
        Some((ms, None)) => {
            println!("metac_run_vm_true_ms: {ms:.0} ms with KVM (median of {}; goal < 1500)", a.vm_runs)
        }
        Some((ms, Some(why))) => println!(
            "metac_run_vm_true_ms: {ms:.0} ms with TCG, not KVM (median of {}; the goal of < 1500 is for KVM): {why}",
            a.vm_runs
        ),
        None if a.vm_runs == 0 => println!("metac_run_vm_true_ms: not measured (--vm-runs 0)"),
        None => println!("metac_run_vm_true_ms: not available in this build (`metac run --help` has no --vm)"),
    }
    println!();
    println!("{:<10} {:>12} {:>10} {:>14}", "server", "nbdcopy s", "MB/s", "4k rand IOPS");
    for (i, s) in servers.iter().enumerate() {
        println!("{:<10} {:>12.3} {:>10.0} {:>14.0}", s.name, secs[i], mbs[i], iops[i]);
    }
    Ok(())
}

// ---- `metac run --vm true` (issue 13's third figure) ---------------------------------------------------------------
// Whole `metac run --vm true` processes on a one-host lab whose node shares the machine's mounts (as `bench run` runs
// containers), so that the node sees /dev/kvm and /boot. A build without `run --vm` says so and measures nothing.

/// Median wall milliseconds of `runs` whole `metac run --vm true`, and whether qemu emulated (TCG, with the
/// reason the run gave); `None` if this build has no `run --vm`.
fn run_vm_true(runs: usize) -> Result<Option<(f64, Option<String>)>> {
    let bin = metac_tests::metac_bin()?;
    let help = std::process::Command::new(&bin).args(["run", "--help"]).output().context("metac run --help")?;
    if !String::from_utf8_lossy(&help.stdout).contains("--vm") || runs == 0 {
        return Ok(None);
    }
    let lab = Lab::new(1)?;
    let h = lab.host(1);
    let _node = h.start_node_sharing_mounts(&["--no-overlay", "--no-mdns"])?;
    let sock = h.socket();
    let mut ms = vec![];
    let mut tcg = None;
    for i in 0..=runs {
        let t = Instant::now();
        let mut cmd =
            h.cmd_sharing_mounts(&bin, ["--socket", sock.to_str().unwrap(), "run", "--vm", "-w", "/", "true"]);
        let o = output(&mut cmd, Duration::from_secs(120))?;
        if !o.status.success() {
            bail!("metac run --vm true failed: {}", text(&o.stderr));
        }
        let said = text(&o.stderr);
        if let Some(at) = said.find("runs under TCG") {
            tcg = Some(said[at..].trim().to_string());
        }
        let elapsed = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("run --vm true {i}: {elapsed:.0} ms{}", if i == 0 { " (warm-up)" } else { "" });
        if i > 0 {
            ms.push(elapsed);
        }
    }
    Ok(Some((median(ms), tcg)))
}
