//! The harness against the real `metac` binary (build it first: `cargo build --bin metac`): nodes come up in every
//! host, find each other by mDNS over the lab bridge, and keep their identity across a restart and a crash.

use std::time::Duration;

use metac_tests::{require_root, wait_until, Lab};

#[test]
fn real_nodes_discover_each_other_and_survive_restarts() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let mut nodes = lab.start_nodes(&[]).unwrap();
    let key = nodes[1].status().unwrap()["key"].clone();
    assert!(key.is_string(), "status has the node key: {key}");

    let took = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        Ok(nodes[0].status()?["peers"].as_u64().unwrap_or(0) >= 2)
    })
    .unwrap();
    eprintln!("host 1 connected to both others {took:?} after start (mDNS)");

    nodes[1].restart().unwrap();
    assert_eq!(nodes[1].status().unwrap()["key"], key, "same state dir, same identity");
    nodes[1].kill9();
    nodes[1].restart().unwrap();
    assert_eq!(nodes[1].status().unwrap()["key"], key, "identity survives a crash");

    let status = nodes[0].stop().unwrap();
    assert!(status.success(), "graceful shutdown on SIGTERM: {status}\n{}", nodes[0].log_tail(20));
    assert!(lab.host(1).metac(&["status"]).is_err(), "no node answers on host 1's socket any more");
}
