//! `metac-sim`: runs the mesh core in the deterministic simulator (`run`, `run --sweep`) or real nodes in network
//! namespaces (`netns`), and writes `delivery.csv`, `summary.json` and plots. See the README's "Simulations".

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use metac_sim::model::{parse_duration, Crash, Latency, LossModel, Micros, Partition, MS};
use metac_sim::netns::{self, Scenario};
use metac_sim::plot::{self, ScalePoint};
use metac_sim::report;
use metac_sim::sim::{self, Mode, Params};

#[derive(Parser)]
#[command(
    name = "metac-sim",
    version,
    about = "Simulations of the metac mesh: the real mesh core at scale, and real nodes in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs N instances of the mesh core in the deterministic simulator (same seed, same files).
    Run(RunArgs),
    /// Runs real `metac node`s in network namespaces on a bridge and measures the same figures (needs root).
    Netns(NetnsArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a transmission is lost, e.g. 0.2 for 20 %.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// What a loss does: `retransmit` (reliable streams, as libp2p runs: costs a retransmission timeout) or `drop`
    /// (the message is gone; only gossip repair and anti-entropy recover it).
    #[arg(long, value_enum, default_value_t = LossModel::Retransmit)]
    loss_model: LossModel,
    /// One-way latency of each connection: const:20ms, uniform:5ms..50ms, normal:20ms,5ms or lognormal:20ms,0.5.
    #[arg(long, default_value = "const:20ms", value_parser = |s: &str| s.parse::<Latency>())]
    latency: Latency,
    /// Churn: fraction of the nodes that go down per minute (half crash, half leave); each restarts 10-60 s later.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// A partition: at=10s,heal=40s,split=0.5 (heal optional; split = fraction of nodes on side A).
    #[arg(long, value_parser = |s: &str| s.parse::<Partition>())]
    partition: Option<Partition>,
    /// Crash COUNT random nodes for good at TIME, e.g. 1@10s; reports when peers notice and when adverts expire.
    #[arg(long, value_parser = |s: &str| s.parse::<Crash>())]
    crash: Option<Crash>,
    /// Peers each node dials at start (mean connection degree is about twice this).
    #[arg(long, default_value_t = 8)]
    degree: usize,
    /// `full`: anti-entropy from empty tables (O(N^2) memory); `steady`: a converged mesh with shared content;
    /// `auto`: full up to 500 nodes.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// When the new advert is published (default 1s in steady mode, 10s in full mode, after the start-up sync).
    #[arg(long, value_parser = parse_duration)]
    publish_at: Option<Micros>,
    /// Virtual run time; by default the run ends once everything measured has converged.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Micros>,
    /// The core's grace period before a silent node is forgotten.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    grace: Micros,
    /// The core's advert refresh interval.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    refresh: Micros,
    /// Output directory.
    #[arg(long, default_value = "sim-out")]
    out: PathBuf,
    /// Runs each size in the list (default 1000,10000,100000) into OUT/N<size>/ and plots OUT/scaling.png.
    #[arg(long, num_args = 0..=1, default_missing_value = "1000,10000,100000", value_name = "SIZES")]
    sweep: Option<String>,
}

#[derive(clap::Args)]
struct NetnsArgs {
    /// Number of real nodes (network namespaces).
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// What to do to them.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Packet loss at the bridge for every host, e.g. 0.05 (nftables).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Link latency: needs the netem qdisc, which this kernel may lack (then the run stops and says so).
    #[arg(long)]
    latency: Option<String>,
    /// How long the partition lasts in `partition-heal` (longer than ~25 s lets ping timeouts close connections).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Micros,
    /// The `metac` binary (default: $METAC_BIN, or `metac` next to this binary).
    #[arg(long)]
    metac: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "netns-out")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Netns(a) => {
            let started = Instant::now();
            let opts = netns::Options {
                nodes: a.nodes,
                scenario: a.scenario,
                loss: a.loss,
                latency: a.latency,
                metac: a.metac,
                hold: std::time::Duration::from_micros(a.hold),
            };
            let (rows, summary) = netns::run(&opts)?;
            report::write(&a.out, &rows, &summary)?;
            print!("{}", report::human(&summary));
            eprintln!("wall time {:.1}s; files in {}", started.elapsed().as_secs_f64(), a.out.display());
            Ok(())
        }
    }
}

fn params(a: &RunArgs, nodes: usize) -> Params {
    let mut p = Params {
        nodes,
        seed: a.seed,
        loss: a.loss,
        loss_model: a.loss_model,
        latency: a.latency.clone(),
        churn: a.churn,
        partition: a.partition.clone(),
        crash: a.crash.clone(),
        degree: a.degree,
        mode: a.mode,
        publish_at: 0,
        duration: a.duration,
        grace: a.grace,
        refresh: a.refresh,
    };
    p.publish_at = a.publish_at.unwrap_or(match p.resolved_mode() {
        Mode::Full => 10_000 * MS,
        _ => 1_000 * MS,
    });
    p
}

/// Runs one simulation into `out` and returns its summary.
fn run_one(p: &Params, out: &std::path::Path) -> Result<report::Summary> {
    if let Err(e) = p.check() {
        bail!("{e}");
    }
    let started = Instant::now();
    let bar = ProgressBar::new(p.end() / MS);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} virtual ms ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{} nodes", p.nodes));
    let outcome = sim::run(p, |t| bar.set_position(t / MS));
    bar.finish_and_clear();
    let rows = report::rows(&outcome);
    let summary = report::summarize(&outcome);
    report::write(out, &rows, &summary)?;
    print!("{}", report::human(&summary));
    eprintln!(
        "wall time {:.1}s for {} events; files in {}",
        started.elapsed().as_secs_f64(),
        outcome.events,
        out.display()
    );
    Ok(summary)
}

fn run(a: RunArgs) -> Result<()> {
    let Some(list) = &a.sweep else {
        run_one(&params(&a, a.nodes), &a.out)?;
        return Ok(());
    };
    let sizes: Vec<usize> = list
        .split(',')
        .map(|s| s.trim().parse::<usize>().with_context(|| format!("--sweep: `{s}` is not a number of nodes")))
        .collect::<Result<_>>()?;
    let mut points = vec![];
    for n in sizes {
        let s = run_one(&params(&a, n), &a.out.join(format!("N{n}")))?;
        let c = &s.advert;
        let t99 = c.t99_ms.unwrap_or(f64::NAN);
        points.push(ScalePoint {
            nodes: n,
            t50_ms: c.t50_ms.unwrap_or(f64::NAN),
            t99_ms: t99,
            t100_ms: c.t100_ms.unwrap_or(t99),
            bytes_per_node: s.traffic.as_ref().map_or(0.0, |t| t.bytes_sent_per_node),
        });
    }
    let mut csv = String::from("nodes,t50_ms,t99_ms,t100_ms,bytes_per_node\n");
    for p in &points {
        csv.push_str(&format!("{},{},{},{},{:.1}\n", p.nodes, p.t50_ms, p.t99_ms, p.t100_ms, p.bytes_per_node));
    }
    std::fs::write(a.out.join("scaling.csv"), csv).context("cannot write scaling.csv")?;
    let title = format!("metac-sim sweep: latency {}, loss {}, degree {}", a.latency, a.loss, a.degree);
    plot::scaling(&a.out, &points, &title)?;
    println!("sweep: {}", a.out.join("scaling.png").display());
    Ok(())
}
