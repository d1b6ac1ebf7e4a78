//! A small netns scenario in CI: five real `metac node`s split in two, an export on each side, heal; every node
//! lists both exports soon after and no healthy node is reported gone. Needs root and a built `metac`
//! (`cargo build --bin metac`); like every lab test it never skips.

use std::time::Duration;

use metac_sim::netns::{self, Options, Scenario};

#[test]
fn five_nodes_partition_heal_and_kill() {
    metac_tests::require_root();
    let o = Options {
        nodes: 5,
        scenario: Scenario::PartitionHeal,
        loss: 0.0,
        latency: None,
        metac: None,
        hold: Duration::from_secs(12),
    };
    let (rows, s) = netns::run(&o).unwrap();
    eprintln!("{}", metac_sim::report::human(&s));
    assert_eq!(rows.len(), 5);
    assert_eq!(s.advert.reached, 4, "the new advert reaches the 4 other nodes");
    assert!(s.advert.t100_ms.unwrap() < 2_000.0, "new advert everywhere within 2 s: {:?}", s.advert);
    let heal = s.heal.as_ref().expect("heal figures");
    assert_eq!(heal.reached, 5, "both sides' exports reach all 5 nodes after the heal: {heal:?}");
    assert_eq!(s.healthy_reported_gone, 0, "no healthy node is dropped from any view");

    let (_, s) = netns::run(&Options { scenario: Scenario::Kill, ..o }).unwrap();
    eprintln!("{}", metac_sim::report::human(&s));
    let c = &s.crashes[0];
    assert!(c.unreachable_all_ms.is_some(), "every node notices the killed node: {c:?}");
    assert_eq!(s.healthy_reported_gone, 0);
}
