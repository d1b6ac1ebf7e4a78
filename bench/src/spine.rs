//! Spine figures: how fast a node starts and finds its peers, what it costs at rest, how fast an advert spreads,
//! and how many capability tokens a core verifies per second.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metac_api::blocking;
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::token::{Caveat, ResourceId, SigCache, Token};
use metac_mesh::Identity;
use metac_tests::procstat::{cpu_ns, cpu_ns_by_thread, proc_stat, status_kib};
use metac_tests::{metac_bin, wait_until, Lab};

/// Options of `metac-bench spine`.
#[derive(clap::Args)]
pub struct Args {
    /// Nodes for the advert propagation run
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Seconds of idle to measure RSS and CPU over
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Repetitions of timed runs (the median is printed)
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// A client of a node's API socket, straight from this process (cheaper than running the CLI, so polls are tight).
fn api(sock: &Path) -> Result<blocking::Client> {
    Ok(blocking::Client::new(sock)?.with_timeout(Duration::from_secs(5)))
}

/// GET `path`, or `None` on any failure: a poll that fails is a poll that did not see the state yet.
fn api_get(c: &blocking::Client, path: &str) -> Option<serde_json::Value> {
    c.get_value(path).ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Resident MiB at the end and CPU ms per 10 s of a node left alone for `secs` (after 2 s to settle). CPU time is
/// the scheduler's count in nanoseconds (ticks of 10 ms would round a few milliseconds to 0 or 10).
fn idle(pid: u32, secs: u64) -> Result<(f64, f64)> {
    std::thread::sleep(Duration::from_secs(2));
    let t0 = cpu_ns(pid)?;
    let by_thread0 = cpu_ns_by_thread(pid)?;
    std::thread::sleep(Duration::from_secs(secs));
    let (rss, _) = proc_stat(pid)?;
    let cpu_ms = (cpu_ns(pid)? - t0) as f64 / 1e6;
    let threads: Vec<String> = cpu_ns_by_thread(pid)?
        .into_iter()
        .map(|(name, ns)| (name.clone(), ns.saturating_sub(by_thread0.get(&name).copied().unwrap_or(0))))
        .filter(|(_, ns)| *ns > 0)
        .map(|(name, ns)| format!("{name} {:.1} ms", ns as f64 / 1e6))
        .collect();
    println!("# cpu of pid {pid} by thread over {secs} s: {}", threads.join(", "));
    let (anon, file) = (status_kib(pid, "RssAnon")?, status_kib(pid, "RssFile")?);
    println!(
        "# rss of pid {pid}: {:.1} MiB anonymous (heap, stacks), {:.1} MiB mapped from the binary",
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    Ok((rss as f64 / 1024.0, cpu_ms * 10.0 / secs as f64))
}

/// Runs every spine measurement and prints the figures.
pub fn run(a: Args) -> Result<()> {
    let bin = metac_bin()?;
    println!("# metac spine benchmark, binary {}", bin.display());

    // Start to ready: from spawning the process to the API answering status.
    let lab = Lab::new(1)?;
    let h = lab.host(1);
    let mut ready = vec![];
    for i in 0..a.runs {
        let state = h.dir().join(format!("start-{i}"));
        let sock = h.dir().join(format!("start-{i}.sock"));
        let c = api(&sock)?;
        let t = Instant::now();
        let p = h.spawn(
            &bin,
            [
                "--socket",
                sock.to_str().unwrap(),
                "node",
                "--state",
                state.to_str().unwrap(),
                "--port",
                "0",
                "--log-level",
                "warn",
            ],
        )?;
        wait_until(Duration::from_secs(20), Duration::from_millis(1), || Ok(api_get(&c, "/v1/status").is_some()))
            .context("node did not get ready")?;
        ready.push(t.elapsed().as_secs_f64() * 1000.0);
        p.stop(Duration::from_secs(3));
    }
    println!("start_to_ready_ms: {:.1} (median of {}; first start, key generated)", median(ready), a.runs);
    drop(lab);

    // mDNS discovery between 3 hosts: from all APIs answering to every node connected to both others.
    let mut disc = vec![];
    let mut last_lab = None;
    for _ in 0..a.runs {
        let lab = Lab::new(3)?;
        let t = Instant::now();
        let nodes = lab.start_nodes(&["--log-level", "warn"])?;
        let started = t.elapsed();
        let clients = nodes.iter().map(|n| api(&n.socket())).collect::<Result<Vec<_>>>()?;
        let took = wait_until(Duration::from_secs(20), Duration::from_millis(2), || {
            Ok(clients.iter().all(|c| api_get(c, "/v1/status").is_some_and(|v| v["peers"].as_u64() >= Some(2))))
        })?;
        disc.push((started + took).as_secs_f64() * 1000.0);
        last_lab = Some((lab, nodes));
    }
    println!(
        "mdns_discovery_3_hosts_ms: {:.1} (median of {}, from spawning 3 nodes at once to each connected to both others; goal <= 250)",
        median(disc),
        a.runs
    );
    if let Some((lab, nodes)) = last_lab {
        let (rss, cpu) = idle(nodes[0].pid(), a.idle_secs)?;
        println!("idle_rss_mib_3_node_mesh: {rss:.1} (goal <= 20)");
        println!("idle_cpu_ms_per_10s_3_node_mesh: {cpu:.0} (measured over {} s; goal <= 15)", a.idle_secs);
        drop(nodes);
        drop(lab);
    }

    // Advert propagation: N nodes, one exports, time until every node lists the resource.
    let lab = Lab::new(a.nodes)?;
    let nodes = lab.start_nodes(&["--log-level", "warn"])?;
    let clients = nodes.iter().map(|n| api(&n.socket())).collect::<Result<Vec<_>>>()?;
    let n = a.nodes as u64;
    let mesh = wait_until(Duration::from_secs(60), Duration::from_millis(5), || {
        Ok(clients.iter().all(|c| api_get(c, "/v1/status").is_some_and(|v| v["peers"].as_u64() >= Some(n - 1))))
    })?;
    println!("full_mesh_{}_nodes_ms: {:.1}", a.nodes, mesh.as_secs_f64() * 1000.0);
    let mut prop = vec![];
    for i in 0..a.runs {
        let f = lab.host(1).dir().join(format!("advert-{i}.bin"));
        std::fs::write(&f, b"x")?;
        let name = format!("advert-{i}");
        let t = Instant::now();
        let out = lab.host(1).metac(&["file", "export", f.to_str().unwrap(), "--name", &name])?;
        if !out.status.success() {
            bail!("export failed");
        }
        let export_ms = t.elapsed();
        // One poller thread per node, each noting when its node first lists the resource.
        let seen: Vec<Duration> = std::thread::scope(|sc| {
            let hs: Vec<_> = clients
                .iter()
                .map(|c| {
                    let name = name.clone();
                    sc.spawn(move || {
                        wait_until(Duration::from_secs(30), Duration::from_millis(2), || {
                            Ok(api_get(c, "/v1/resources").is_some_and(|v| {
                                v.as_array().is_some_and(|l| l.iter().any(|r| r["name"] == name.as_str()))
                            }))
                        })
                        .map(|_| t.elapsed())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("poller").unwrap_or(Duration::MAX)).collect()
        });
        let last = seen.iter().max().copied().unwrap_or(Duration::MAX);
        if last == Duration::MAX {
            bail!("advert {name} did not reach every node within 30 s");
        }
        prop.push(last.saturating_sub(export_ms).as_secs_f64() * 1000.0);
    }
    println!("advert_to_all_{}_nodes_ms: {:.1} (median of {}, from the export's answer to the last node listing it; goal < 1000)", a.nodes, median(prop), a.runs);

    // Idle cost of one node in that mesh.
    let (rss, cpu) = idle(nodes[a.nodes / 2].pid(), a.idle_secs)?;
    println!("idle_rss_mib_{}_node_mesh: {rss:.1} (goal <= 20)", a.nodes);
    println!("idle_cpu_ms_per_10s_{}_node_mesh: {cpu:.0} (measured over {} s; goal <= 15)", a.nodes, a.idle_secs);
    drop(nodes);
    drop(lab);

    // Token verification, on one core: a fresh ref (one block) and a 3-block delegated chain with audience and
    // expiry, cold (every signature checked) and warm (the exporter's cache has seen the chain before). The anchor
    // is a bare ed25519 strict verification on the same core in the same run.
    let issuer = Identity::from_secret([1; 32]);
    let bearer = Identity::from_secret([2; 32]).public();
    let me = issuer.public();
    let root = Token::issue(&issuer, ResourceId([3; 16]), Kind::File, Kind::File.rights(), None, None)?;
    let chain = root
        .attenuate(&Caveat { rights: Some(Rights::READ), expires: Some(u64::MAX / 2), ..Default::default() })?
        .attenuate(&Caveat { audience: Some(bearer), expires: Some(u64::MAX / 4), ..Default::default() })?;
    let rate = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(1500) {
            for _ in 0..50 {
                f();
            }
            n += 50;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let msg = [7u8; 32];
    let sig = issuer.sign(&msg);
    let anchor = rate(&mut || assert!(me.verify(&msg, &sig)));
    println!("ed25519_verifies_per_sec_one_core: {anchor:.0} (anchor: one bare signature check)");
    let cache = SigCache::new(4096);
    for (name, t) in [("ref", &root), ("3_block_chain", &chain)] {
        let cold = rate(&mut || {
            t.verify(&me, 1, &bearer, |_| false).expect("valid");
        });
        let warm = rate(&mut || {
            t.verify_cached(&me, 1, &bearer, |_| false, &cache).expect("valid");
        });
        println!(
            "token_verifies_per_sec_{name}: cold {cold:.0} ({:.2}x a bare ed25519 check), warm {warm:.0} (goal >= 20000)",
            cold / anchor
        );
    }
    Ok(())
}
