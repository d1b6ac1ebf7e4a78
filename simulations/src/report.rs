//! The one result format of simulated and real (netns) runs: per-node rows written as `delivery.csv`, a
//! [`Summary`] written as `summary.json` and printed for people. Nothing in the files depends on the wall clock,
//! so the same seed gives byte-identical files.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::model::{fmt_micros, Micros, MS};
use crate::sim::{Outcome, Traffic};

/// One node's line in `delivery.csv`.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Node number (from 0 in the simulator, host number from 1 in netns).
    pub node: usize,
    /// Up at the end of the run.
    pub alive: bool,
    /// When it first held the new advert, after its publication (or after its restart, if later).
    pub delivered: Option<Micros>,
    /// When it held the adverts published on both sides of the partition, after the heal.
    pub heal: Option<Micros>,
    /// Its traffic (zero where not measured).
    pub traffic: Traffic,
}

/// How fast something reached the nodes it should reach.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Convergence {
    /// Nodes it should reach.
    pub nodes: usize,
    /// Nodes it reached.
    pub reached: usize,
    /// Milliseconds until half of them had it.
    pub t50_ms: Option<f64>,
    /// Milliseconds until 99 %.
    pub t99_ms: Option<f64>,
    /// Milliseconds until all; `None` if some never did.
    pub t100_ms: Option<f64>,
}

impl Convergence {
    /// From per-node times (relative), `None` for nodes that never got there.
    pub fn from_times(times: &[Option<Micros>]) -> Convergence {
        let mut got: Vec<Micros> = times.iter().flatten().copied().collect();
        got.sort_unstable();
        let n = times.len();
        let q = |p: f64| {
            let idx = ((p * n as f64).ceil() as usize).max(1) - 1;
            got.get(idx).map(|&us| ms(us))
        };
        Convergence { nodes: n, reached: got.len(), t50_ms: q(0.5), t99_ms: q(0.99), t100_ms: q(1.0) }
    }

    fn human(&self) -> String {
        let f = |v: Option<f64>| v.map_or("never".to_string(), |x| fmt_micros((x * MS as f64) as Micros));
        format!(
            "50 % {}, 99 % {}, 100 % {} ({} of {} nodes)",
            f(self.t50_ms),
            f(self.t99_ms),
            f(self.t100_ms),
            self.reached,
            self.nodes
        )
    }
}

/// Mean traffic per node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrafficSummary {
    /// Messages sent per node, mean.
    pub msgs_per_node: f64,
    /// Bytes sent per node, mean.
    pub bytes_sent_per_node: f64,
    /// Bytes received per node, mean.
    pub bytes_recv_per_node: f64,
    /// The most bytes one node sent.
    pub max_bytes_sent: u64,
}

/// A crashed or killed node: how long until its peers saw it gone and until its advert expired.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CrashSummary {
    /// The node.
    pub node: usize,
    /// Live peers connected to it.
    pub peers: usize,
    /// Milliseconds after the crash until all of them saw it unreachable.
    pub unreachable_all_ms: Option<f64>,
    /// Live nodes that held its advert.
    pub holders: usize,
    /// Milliseconds after the crash until all of them expired it (grace period).
    pub expired_all_ms: Option<f64>,
}

/// The summary of one run, simulated or real.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// `sim` or `netns`.
    pub source: String,
    /// What ran: `steady`/`full` for the simulator, the scenario name for netns.
    pub scenario: String,
    /// Number of nodes.
    pub nodes: usize,
    /// The settings, as given.
    pub settings: Vec<(String, String)>,
    /// The new advert, from its publication.
    pub advert: Convergence,
    /// Adverts published on both sides of a partition, from the heal.
    pub heal: Option<Convergence>,
    /// Expired (gone) reports about nodes that were up.
    pub healthy_reported_gone: u64,
    /// Crashed or killed nodes.
    pub crashes: Vec<CrashSummary>,
    /// Traffic, where measured.
    pub traffic: Option<TrafficSummary>,
    /// Extra figures (mean degree, events, churn...).
    pub figures: Vec<(String, f64)>,
}

fn ms(us: Micros) -> f64 {
    us as f64 / MS as f64
}

/// Per-node rows of a simulation.
pub fn rows(o: &Outcome) -> Vec<Row> {
    let main = &o.tracks[0];
    (0..o.alive.len())
        .map(|i| Row {
            node: i,
            alive: o.alive[i],
            delivered: main.delivered[i].map(|t| t.saturating_sub(main.at.max(main.since[i]))),
            heal: heal_time(o, i),
            traffic: o.traffic[i],
        })
        .collect()
}

fn heal_time(o: &Outcome, i: usize) -> Option<Micros> {
    let heal = o.healed_at?;
    let (a, b) = (o.tracks.get(1)?, o.tracks.get(2)?);
    Some(a.delivered[i]?.max(b.delivered[i]?).saturating_sub(heal.max(a.since[i])))
}

/// The summary of a simulation.
pub fn summarize(o: &Outcome) -> Summary {
    let p = &o.params;
    let rows = rows(o);
    let main = &o.tracks[0];
    let counted: Vec<&Row> = rows.iter().filter(|r| r.alive && r.node != main.origin as usize).collect();
    let advert = Convergence::from_times(&counted.iter().map(|r| r.delivered).collect::<Vec<_>>());
    let heal = o.healed_at.map(|_| {
        let live: Vec<Option<Micros>> = rows.iter().filter(|r| r.alive).map(|r| r.heal).collect();
        Convergence::from_times(&live)
    });
    let n = rows.len().max(1) as f64;
    let traffic = TrafficSummary {
        msgs_per_node: rows.iter().map(|r| r.traffic.msgs_sent).sum::<u64>() as f64 / n,
        bytes_sent_per_node: rows.iter().map(|r| r.traffic.bytes_sent).sum::<u64>() as f64 / n,
        bytes_recv_per_node: rows.iter().map(|r| r.traffic.bytes_recv).sum::<u64>() as f64 / n,
        max_bytes_sent: rows.iter().map(|r| r.traffic.bytes_sent).max().unwrap_or(0),
    };
    let crashes = o
        .crashes
        .iter()
        .map(|c| CrashSummary {
            node: c.node as usize,
            peers: c.peers,
            unreachable_all_ms: c.detected_all.map(|t| ms(t - c.at)),
            holders: c.holders,
            expired_all_ms: c.expired_all.map(|t| ms(t - c.at)),
        })
        .collect();
    let mut settings = vec![
        ("seed".to_string(), p.seed.to_string()),
        ("latency".to_string(), p.latency.to_string()),
        ("loss".to_string(), format!("{} ({:?})", p.loss, p.loss_model).to_lowercase()),
        ("churn_per_min".to_string(), p.churn.to_string()),
        ("degree".to_string(), p.degree.to_string()),
        ("publish_at".to_string(), fmt_micros(p.publish_at)),
        ("grace".to_string(), fmt_micros(p.grace)),
    ];
    if let Some(part) = &p.partition {
        let heal = part.heal.map_or("never".into(), fmt_micros);
        settings.push(("partition".into(), format!("at {} heal {} split {}", fmt_micros(part.at), heal, part.split)));
    }
    if let Some(c) = &p.crash {
        settings.push(("crash".into(), format!("{} at {}", c.count, fmt_micros(c.at))));
    }
    let mut figures = vec![
        ("mean_degree".into(), round3(o.mean_degree)),
        ("mean_mesh_degree".into(), round3(o.mean_mesh)),
        ("adverts_published".into(), o.adverts as f64),
        ("expiries".into(), o.expiries as f64),
        ("churn_events".into(), o.churn_events as f64),
        ("events".into(), o.events as f64),
        ("end_ms".into(), ms(o.end)),
    ];
    if let Some(t) = o.full_sync {
        figures.insert(0, ("full_sync_from_empty_ms".into(), ms(t)));
    }
    Summary {
        source: "sim".into(),
        scenario: format!("{:?}", o.mode).to_lowercase(),
        nodes: o.alive.len(),
        settings,
        advert,
        heal,
        healthy_reported_gone: o.false_expiries,
        crashes,
        traffic: Some(traffic),
        figures,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn opt_ms(t: Option<Micros>) -> String {
    t.map_or(String::new(), |us| format!("{:.3}", ms(us)))
}

/// `delivery.csv`: one line per node.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from("node,alive,delivered_ms,heal_ms,msgs_sent,msgs_recv,bytes_sent,bytes_recv\n");
    for r in rows {
        let t = &r.traffic;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{}",
            r.node,
            r.alive as u8,
            opt_ms(r.delivered),
            opt_ms(r.heal),
            t.msgs_sent,
            t.msgs_recv,
            t.bytes_sent,
            t.bytes_recv
        );
    }
    s
}

/// Writes `delivery.csv`, `summary.json` and the delivery plots into `dir`.
pub fn write(dir: &Path, rows: &[Row], summary: &Summary) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let put = |name: &str, body: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))
    };
    put("delivery.csv", csv(rows).as_bytes())?;
    let mut json = serde_json::to_string_pretty(summary).expect("summaries always encode");
    json.push('\n');
    put("summary.json", json.as_bytes())?;
    crate::plot::delivery(dir, rows, summary)
}

/// The summary for people.
pub fn human(s: &Summary) -> String {
    let mut out = String::new();
    let settings: Vec<String> = s.settings.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "{} {} with {} nodes: {}", s.source, s.scenario, s.nodes, settings.join(", "));
    let _ = writeln!(out, "  new advert:      {}", s.advert.human());
    if let Some(h) = &s.heal {
        let _ = writeln!(out, "  after the heal:  {}", h.human());
    }
    if let Some(t) = &s.traffic {
        let _ = writeln!(
            out,
            "  traffic/node:    {:.1} msgs sent, {} sent, {} received (most by one node: {})",
            t.msgs_per_node,
            bytes(t.bytes_sent_per_node),
            bytes(t.bytes_recv_per_node),
            bytes(t.max_bytes_sent as f64)
        );
    }
    for c in &s.crashes {
        let f = |v: Option<f64>| v.map_or("not yet".into(), |x| fmt_micros((x * MS as f64) as Micros));
        let _ = writeln!(
            out,
            "  crashed node {}: unreachable at all {} peers after {}; expired at all {} holders after {}",
            c.node,
            c.peers,
            f(c.unreachable_all_ms),
            c.holders,
            f(c.expired_all_ms)
        );
    }
    let _ = writeln!(out, "  healthy nodes reported gone: {}", s.healthy_reported_gone);
    let figs: Vec<String> = s.figures.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "  {}", figs.join(", "));
    out
}

/// Bytes for people.
pub fn bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_count_nodes_that_never_got_it() {
        let c = Convergence::from_times(&[Some(1000), Some(3000), Some(2000), None]);
        assert_eq!(c.reached, 3);
        assert_eq!(c.t50_ms, Some(2.0));
        assert_eq!(c.t99_ms, None);
        assert_eq!(c.t100_ms, None);
        let c = Convergence::from_times(&[Some(1000), Some(3000)]);
        assert_eq!((c.t50_ms, c.t100_ms), (Some(1.0), Some(3.0)));
    }
}
