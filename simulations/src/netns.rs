//! Netns scenarios: real `metac node`s in network namespaces on one bridge ([`metac_tests::Lab`]), measured with
//! the simulator's summary format so the figures sit side by side. Every scenario first measures a new advert (an
//! export of a file through the API of one host, timed until every node lists it), then:
//!
//! - `partition-heal`: splits the hosts in two halves (nftables at the bridge), exports on each side while split,
//!   heals, and measures until every node lists both exports; a node that drops a healthy peer from its view
//!   (an expiry) counts as "healthy reported gone";
//! - `kill`: kill -9 one node, time until every other node reports it unreachable, then restart it and time until
//!   every node reaches it again;
//! - `churn`: several rounds of kill -9 (or SIGTERM) and restart of a random node, each followed by an export on
//!   the restarted node, timed until every node lists it.
//!
//! Nodes are driven and watched through their local API socket directly (metac-api's blocking client, no process
//! per call), every 5 ms from one thread per node, so sub-second figures are measurable. Times run from the
//! export request.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use metac_api::blocking;
use metac_api::types::{ExportReq, ExportResp};
use metac_tests::{Host, Lab};
use serde_json::Value;

use crate::model::Micros;
use crate::report::{Convergence, CrashSummary, Row, Summary};

/// How often each watcher asks its node.
const POLL: Duration = Duration::from_millis(5);
/// Longest wait for any one convergence.
const WAIT: Duration = Duration::from_secs(120);

/// What a netns run does to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Split the hosts in two halves, export on both sides, heal, time until all converge.
    PartitionHeal,
    /// Kill and restart random nodes a few times, timing each restarted node's new advert.
    Churn,
    /// kill -9 one node: time until all report it unreachable; restart: time until all reach it again.
    Kill,
}

/// Options of a netns run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of hosts and nodes.
    pub nodes: usize,
    /// What to do.
    pub scenario: Scenario,
    /// Packet loss for every host at the bridge, 0..1.
    pub loss: f64,
    /// Latency (netem), if asked for.
    pub latency: Option<String>,
    /// The `metac` binary; default `$METAC_BIN` or `metac` beside this executable.
    pub metac: Option<PathBuf>,
    /// How long the partition lasts (`partition-heal`).
    pub hold: Duration,
}

/// The `metac` binary to run.
fn metac_bin(o: &Options) -> Result<PathBuf> {
    if let Some(p) = &o.metac {
        return if p.is_file() { Ok(p.clone()) } else { bail!("--metac {}: no such file", p.display()) };
    }
    if let Ok(p) = metac_tests::metac_bin() {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let beside = exe.with_file_name("metac");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no metac binary: build it (`cargo build -p metac`), then pass --metac PATH or set METAC_BIN (looked at {})",
        beside.display()
    )
}

/// Longest wait for one API call: a node that does not answer within it is as good as down for a watcher.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of a node's local API over its Unix socket.
pub fn client(sock: &Path) -> Result<blocking::Client> {
    Ok(blocking::Client::new(sock)?.with_timeout(CALL_TIMEOUT))
}

/// GET `path` from a node's local API over its Unix socket.
pub fn api(sock: &Path, path: &str) -> Result<Value> {
    client(sock)?.get_value(path).with_context(|| format!("{path} on {}", sock.display()))
}

/// Waits on every host at once until `check(host, view)` holds for it, with `view` = GET `path`; returns each
/// host's time since `t0` (`None` for hosts that did not within [`WAIT`], and for hosts in `skip`).
fn watch(
    hosts: &[Host],
    skip: &[usize],
    path: &str,
    t0: Instant,
    check: impl Fn(&Host, &Value) -> bool + Sync,
) -> Vec<Option<Micros>> {
    thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                let check = &check;
                s.spawn(move || {
                    if skip.contains(&h.index()) {
                        return None;
                    }
                    let c = client(&h.socket()).ok()?;
                    while t0.elapsed() < WAIT {
                        if let Ok(v) = c.get_value(path) {
                            if check(h, &v) {
                                return Some(t0.elapsed().as_micros() as Micros);
                            }
                        }
                        thread::sleep(POLL);
                    }
                    None
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(None)).collect()
    })
}

fn key(h: &Host) -> Result<String> {
    let v = api(&h.socket(), "/v1/status")?;
    v["key"].as_str().map(str::to_string).ok_or_else(|| anyhow!("host {}: status has no key: {v}", h.index()))
}

fn lists(view: &Value, node: &str, name: &str) -> bool {
    view.as_array().is_some_and(|a| a.iter().any(|r| r["node"] == node && r["name"] == name))
}

/// Exports a small file named `name` on `h` through its API (no CLI process in the measured time).
fn export(h: &Host, name: &str) -> Result<()> {
    let path = h.dir().join(name);
    std::fs::write(&path, name.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    let body = ExportReq {
        kind: "file".into(),
        source: path.display().to_string(),
        name: Some(name.into()),
        read_only: false,
        options: Value::Null,
    };
    let _: ExportResp =
        client(&h.socket())?.post("/v1/exports", &body).with_context(|| format!("export on host {}", h.index()))?;
    Ok(())
}

/// Exports `name` on host `from` and times until every node lists it, from the export request.
fn spread(lab: &Lab, from: usize, name: &str) -> Result<Vec<Option<Micros>>> {
    let h = lab.host(from);
    let k = key(h)?;
    let t0 = Instant::now();
    export(h, name)?;
    Ok(watch(lab.hosts(), &[], "/v1/resources", t0, |_, v| lists(v, &k, name)))
}

/// Peers each host sees as reachable, and how many nodes it knows.
fn views(lab: &Lab) -> Vec<(usize, usize)> {
    lab.hosts()
        .iter()
        .map(|h| match api(&h.socket(), "/v1/peers") {
            Ok(Value::Array(a)) => (a.iter().filter(|p| p["reachable"] == true).count(), a.len()),
            _ => (0, 0),
        })
        .collect()
}

/// Waits until every node is connected to all others again (a restarted node rebuilds its view by sync), records
/// how long that took, and returns how many healthy nodes are missing from the views ("reported gone").
fn settle(lab: &Lab, figures: &mut Vec<(String, f64)>) -> u64 {
    let all = lab.len() - 1;
    let t0 = Instant::now();
    let reach = watch(lab.hosts(), &[], "/v1/status", t0, |_, v| v["peers"].as_u64() == Some(all as u64));
    let worst = reach.iter().map(|t| t.map(|x| x as f64 / 1000.0)).collect::<Option<Vec<_>>>();
    figures.push(("full_mesh_again_ms".into(), worst.map_or(f64::NAN, |v| v.into_iter().fold(0.0, f64::max))));
    views(lab).iter().map(|&(_, known)| all.saturating_sub(known) as u64).sum()
}

/// Runs a scenario and returns per-host rows and the summary.
pub fn run(o: &Options) -> Result<(Vec<Row>, Summary)> {
    metac_tests::require_root();
    if !(2..=metac_tests::MAX_HOSTS).contains(&o.nodes) {
        bail!("--nodes must be 2..={} for netns, not {}", metac_tests::MAX_HOSTS, o.nodes);
    }
    if !(0.0..1.0).contains(&o.loss) {
        bail!("--loss must be a probability in 0..1, not {}", o.loss);
    }
    let bin = metac_bin(o)?;
    let n = o.nodes;
    let lab = Lab::new(n).context("cannot build the netns lab")?;
    if let Some(lat) = &o.latency {
        for i in 1..=n {
            lab.netem(i, &format!("delay {lat}")).map_err(|e| match e {
                metac_tests::Error::Unsupported(_) => anyhow!(
                    "--latency {lat}: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so a netns run cannot \
                     add latency here; run without --latency (--loss works: it uses nftables at the bridge), or use \
                     `metac-sim run --latency` to simulate it"
                ),
                e => anyhow!("--latency {lat}: {e}"),
            })?;
        }
    }
    if o.loss > 0.0 {
        for i in 1..=n {
            lab.loss(i, o.loss * 100.0)?;
        }
    }
    let started = Instant::now();
    let mut nodes = lab.start_nodes_with(&bin, &[]).context("cannot start the nodes")?;
    let all = n - 1;
    let t0 = Instant::now();
    let mesh = watch(lab.hosts(), &[], "/v1/status", t0, |_, v| v["peers"].as_u64() == Some(all as u64));
    if mesh.iter().any(Option::is_none) {
        bail!("the {n} nodes did not all connect to each other within {WAIT:?}");
    }
    let full_mesh = mesh.iter().flatten().max().copied().unwrap_or(0);
    let mut figures = vec![
        ("start_to_full_mesh_ms".to_string(), started.elapsed().as_secs_f64() * 1000.0),
        ("full_mesh_after_all_answer_ms".to_string(), full_mesh as f64 / 1000.0),
    ];

    // A new advert, from the export request.
    let delivered = spread(&lab, 1, "new-advert")?;
    let mut rows: Vec<Row> =
        (0..n).map(|i| Row { node: i + 1, alive: true, delivered: delivered[i], ..Row::default() }).collect();
    let advert = Convergence::from_times(&delivered[1..]);
    let mut heal = None;
    let mut crashes = vec![];
    let gone: u64;
    let scenario = match o.scenario {
        Scenario::PartitionHeal => {
            let half = n / 2;
            let a: Vec<usize> = (1..=half).collect();
            let b: Vec<usize> = (half + 1..=n).collect();
            lab.partition(&a, &b)?;
            thread::sleep(o.hold / 2);
            let (ka, kb) = (key(lab.host(1))?, key(lab.host(n))?);
            export(lab.host(1), "side-a")?;
            export(lab.host(n), "side-b")?;
            thread::sleep(o.hold / 2);
            let during = views(&lab);
            let t0 = Instant::now();
            lab.heal()?;
            let times =
                watch(lab.hosts(), &[], "/v1/resources", t0, |_, v| lists(v, &ka, "side-a") && lists(v, &kb, "side-b"));
            let reach = watch(lab.hosts(), &[], "/v1/status", t0, |_, v| v["peers"].as_u64() == Some(all as u64));
            let after = views(&lab);
            gone = after.iter().map(|&(_, known)| all.saturating_sub(known) as u64).sum();
            let min_reach = during.iter().map(|d| d.0).min().unwrap_or(0);
            figures.push(("reachable_peers_min_during_partition".into(), min_reach as f64));
            figures.push(("partition_hold_ms".into(), o.hold.as_millis() as f64));
            let all_reach = reach.iter().map(|t| t.map(|x| x as f64 / 1000.0)).collect::<Option<Vec<_>>>();
            figures.push((
                "full_mesh_again_after_heal_ms".into(),
                all_reach.map_or(f64::NAN, |v| v.into_iter().fold(0.0, f64::max)),
            ));
            for (r, t) in rows.iter_mut().zip(&times) {
                r.heal = *t;
            }
            heal = Some(Convergence::from_times(&times));
            "partition-heal"
        }
        Scenario::Kill => {
            let victim = n;
            let vk = key(lab.host(victim))?;
            let t0 = Instant::now();
            nodes[victim - 1].kill9();
            let seen = watch(lab.hosts(), &[victim], "/v1/peers", t0, |_, v| {
                v.as_array().is_some_and(|a| a.iter().any(|p| p["key"] == vk.as_str() && p["reachable"] == false))
            });
            let others: Vec<Option<Micros>> =
                seen.iter().enumerate().filter(|(i, _)| *i + 1 != victim).map(|(_, t)| *t).collect();
            let detected = Convergence::from_times(&others);
            let t1 = Instant::now();
            nodes[victim - 1].restart().context("cannot restart the killed node")?;
            let back = watch(lab.hosts(), &[victim], "/v1/peers", t1, |_, v| {
                v.as_array().is_some_and(|a| a.iter().any(|p| p["key"] == vk.as_str() && p["reachable"] == true))
            });
            let back: Vec<Option<Micros>> =
                back.iter().enumerate().filter(|(i, _)| *i + 1 != victim).map(|(_, t)| *t).collect();
            let back = Convergence::from_times(&back);
            figures.push(("restarted_reachable_by_all_ms".into(), back.t100_ms.unwrap_or(f64::NAN)));
            crashes.push(CrashSummary {
                node: victim,
                peers: n - 1,
                unreachable_all_ms: detected.t100_ms,
                holders: n - 1,
                expired_all_ms: None,
            });
            gone = settle(&lab, &mut figures);
            "kill"
        }
        Scenario::Churn => {
            let rounds = 6;
            let mut worst: f64 = 0.0;
            let mut sum = 0.0;
            for r in 0..rounds {
                // Hosts 2.. take turns, alternating crash (kill -9) and graceful stop.
                let victim = 2 + (r * 7) % (n - 1);
                if r % 2 == 0 {
                    nodes[victim - 1].kill9();
                } else {
                    nodes[victim - 1].stop().context("graceful stop")?;
                }
                thread::sleep(Duration::from_secs(2));
                nodes[victim - 1].restart().context("cannot restart a churned node")?;
                let times = spread(&lab, victim, &format!("churn-{r}"))?;
                let c = Convergence::from_times(&times);
                let t = c.t100_ms.unwrap_or(f64::NAN);
                eprintln!("churn round {r}: host {victim} back, its new export at all nodes after {t:.1} ms");
                worst = worst.max(t);
                sum += t;
            }
            figures.push(("churn_rounds".into(), rounds as f64));
            figures.push(("churn_rejoin_advert_all_mean_ms".into(), sum / rounds as f64));
            figures.push(("churn_rejoin_advert_all_max_ms".into(), worst));
            gone = settle(&lab, &mut figures);
            "churn"
        }
    };
    let mut settings = vec![("loss".to_string(), o.loss.to_string())];
    settings.push(("latency".into(), o.latency.clone().unwrap_or_else(|| "none (no netem)".into())));
    settings.push(("metac".into(), bin.display().to_string()));
    if o.scenario == Scenario::PartitionHeal {
        settings.push(("partition".into(), format!("hosts 1..={} | rest, {:?}", n / 2, o.hold)));
    }
    drop(nodes);
    for f in &mut figures {
        f.1 = (f.1 * 1000.0).round() / 1000.0;
    }
    Ok((
        rows,
        Summary {
            source: "netns".into(),
            scenario: scenario.into(),
            nodes: n,
            settings,
            advert,
            heal,
            healthy_reported_gone: gone,
            crashes,
            traffic: None,
            figures,
        },
    ))
}
