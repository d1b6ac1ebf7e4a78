//! The simulator's promises: same seed, same bytes; convergence under 20 % loss; healing after a partition; a
//! crashed node's advert kept for the grace period and then expired, as the core specifies.

use std::path::Path;

use metac_sim::model::{Crash, LossModel, Partition, MS, SEC};
use metac_sim::report::{self, Summary};
use metac_sim::sim::{self, Mode, Params};

fn run(p: &Params) -> Summary {
    p.check().unwrap();
    report::summarize(&sim::run(p, |_| {}))
}

fn hash_dir(dir: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let mut h = blake3::Hasher::new();
    for p in names {
        h.update(p.file_name().unwrap().as_encoded_bytes());
        h.update(&std::fs::read(&p).unwrap());
    }
    h.finalize().to_hex().to_string()
}

fn write_run(p: &Params, dir: &Path) -> String {
    let o = sim::run(p, |_| {});
    report::write(dir, &report::rows(&o), &report::summarize(&o)).unwrap();
    hash_dir(dir)
}

#[test]
fn same_seed_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Params {
        nodes: 800,
        seed: 7,
        loss: 0.1,
        loss_model: LossModel::Drop,
        latency: "uniform:5ms..50ms".parse().unwrap(),
        partition: Some("at=2s,heal=30s".parse().unwrap()),
        churn: 0.02,
        duration: Some(60 * SEC),
        mode: Mode::Steady,
        ..Params::default()
    };
    let a = write_run(&p, &tmp.path().join("a"));
    let b = write_run(&p, &tmp.path().join("b"));
    assert_eq!(a, b, "two runs with the same seed wrote different files");
    for f in ["delivery.csv", "summary.json", "delivery.png", "delivery.svg"] {
        assert!(tmp.path().join("a").join(f).is_file(), "{f} is written");
    }
    let c = write_run(&Params { seed: 8, ..p.clone() }, &tmp.path().join("c"));
    assert_ne!(a, c, "another seed gives another run");
    // Full mode (from empty tables) is deterministic too.
    let full = Params { nodes: 60, mode: Mode::Full, publish_at: 5 * SEC, ..Params::default() };
    assert_eq!(write_run(&full, &tmp.path().join("f1")), write_run(&full, &tmp.path().join("f2")));
}

#[test]
fn converges_under_20_percent_loss() {
    for model in [LossModel::Drop, LossModel::Retransmit] {
        let p = Params { nodes: 2000, loss: 0.2, loss_model: model, mode: Mode::Steady, ..Params::default() };
        let s = run(&p);
        eprintln!("{model:?}: {}", report::human(&s));
        assert_eq!(s.advert.reached, s.advert.nodes, "{model:?}: every node gets the advert");
        let t100 = s.advert.t100_ms.expect("converged");
        assert!(t100 < 10_000.0, "{model:?}: 100 % within 10 s, took {t100} ms");
    }
    // From empty tables as well.
    let p = Params {
        nodes: 120,
        loss: 0.2,
        loss_model: LossModel::Drop,
        mode: Mode::Full,
        publish_at: 10 * SEC,
        ..Params::default()
    };
    let s = run(&p);
    assert_eq!(s.advert.reached, s.advert.nodes, "{}", report::human(&s));
}

#[test]
fn partition_heals_without_reporting_healthy_nodes_gone() {
    for mode in [Mode::Steady, Mode::Full] {
        let nodes = if mode == Mode::Steady { 1500 } else { 100 };
        let p = Params {
            nodes,
            mode,
            partition: Some(Partition { at: 12 * SEC, heal: Some(50 * SEC), split: 0.5 }),
            publish_at: 10 * SEC,
            ..Params::default()
        };
        let s = run(&p);
        eprintln!("{}", report::human(&s));
        let heal = s.heal.expect("a heal figure");
        assert_eq!(heal.reached, heal.nodes, "{mode:?}: both sides' adverts reach every node after the heal");
        assert!(heal.t100_ms.unwrap() < 70_000.0, "{mode:?}: healed within 70 s: {heal:?}");
        assert_eq!(s.healthy_reported_gone, 0, "{mode:?}: no healthy node expired");
    }
}

#[test]
fn crashed_node_is_unreachable_then_expires_after_grace() {
    let grace = 30 * SEC;
    let refresh = 10 * SEC;
    let p = Params {
        nodes: 60,
        mode: Mode::Full,
        grace,
        refresh,
        publish_at: 5 * SEC,
        crash: Some(Crash { count: 1, at: 15 * SEC }),
        ..Params::default()
    };
    let s = run(&p);
    eprintln!("{}", report::human(&s));
    let c = &s.crashes[0];
    assert_eq!(c.holders, 59, "everyone held its advert");
    let unreachable = c.unreachable_all_ms.expect("peers notice");
    let ping = (metac_mesh::net::PING_EVERY + metac_mesh::net::PING_TIMEOUT).as_micros() as u64;
    assert!(unreachable <= (ping / MS) as f64, "ping timeout notices within {} ms: {unreachable}", ping / MS);
    let expired = c.expired_all_ms.expect("expired everywhere");
    // Kept at least the grace period after the last news of it (its last refresh, at most `refresh` before the
    // crash), and gone within a tick of the grace period after the last peer lost its connection.
    assert!(expired >= ((grace - refresh) / MS) as f64, "expired too early: {expired} ms");
    assert!(expired <= ((grace + ping + 2 * SEC) / MS) as f64, "expired too late: {expired} ms");
    assert_eq!(s.healthy_reported_gone, 0, "live nodes refresh and never expire");
}

#[test]
fn bad_params_are_refused_with_a_reason() {
    let e = Params { nodes: 1, ..Params::default() }.check().unwrap_err();
    assert!(e.contains("--nodes"), "{e}");
    let e = Params { loss: 1.5, ..Params::default() }.check().unwrap_err();
    assert!(e.contains("--loss"), "{e}");
    let e = Params { nodes: 6_000, mode: Mode::Full, ..Params::default() }.check().unwrap_err();
    assert!(e.contains("steady"), "{e}");
}
