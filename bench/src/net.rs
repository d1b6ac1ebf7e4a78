//! Ethernet segment figures: iperf3 TCP throughput and ping RTT between the same two netns hosts, in the same run,
//! over (a) the raw veth and bridge, (b) a wireguard-go tunnel (as ../shared/lab/anchor-overlay.sh sets it up), and
//! (c) a metac net segment (host 1 exports newlocal:seg0, host 2 binds it); then the ratios the net issue asks for.

use std::time::Duration;

use anyhow::{Context, Result};
use metac_tests::{wait_until, Lab};

use crate::overlay::{iperf_server, measure, wireguard_go, Figures, Runs};

/// Options of `metac-bench net`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    runs: Runs,
}

pub fn run(a: Args) -> Result<()> {
    let lab = Lab::new(2)?;
    let (h1, h2) = (lab.host(1), lab.host(2));
    let nodes = lab.start_nodes(&[])?;
    let metac = |h: &metac_tests::Host, args: &[&str]| -> Result<String> {
        let o = h.metac(args)?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let r = metac(h1, &["net", "export", "newlocal:seg0"])?;
    metac(h2, &["net", "bind", "newlocal:seg0", &r])?;
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let o = h2.metac(&["--json", "net", "ls"])?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        Ok(v["binds"][0]["state"] == "up")
    })
    .context("the net bind did not come up")?;
    for (h, i) in [(h1, 1), (h2, 2)] {
        h.run("ip", ["addr", "add", &format!("fd00:99::{i}/64"), "dev", "seg0", "nodad"])?;
    }
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || h1.ping("fd00:99::2".parse().unwrap()))
        .context("the segment did not carry a ping")?;
    let _wg = wireguard_go(&lab)?;
    let _server = iperf_server(h2)?;

    let paths = [
        ("raw", h1, h2.addr().to_string()),
        ("wggo", h1, "fd00:88::2".to_string()),
        ("metac", h1, "fd00:99::2".to_string()),
    ];
    let Figures { tcp, rtt, rtt_median } = measure(&paths, &a.runs)?;
    let (wg_added, metac_added) = (rtt[1] - rtt[0], rtt[2] - rtt[0]);
    println!("metac_vs_wggo_tcp: {:.2}x (goal >= 2)", tcp[2] / tcp[1]);
    println!("wggo_added_rtt_ms: {wg_added:.3} ms");
    println!("metac_added_rtt_ms: {metac_added:.3} ms");
    println!("metac_vs_wggo_added_rtt: {:.2}x (goal <= 1)", metac_added / wg_added.max(1e-6));
    let (wg_med, metac_med) = (rtt_median[1] - rtt_median[0], rtt_median[2] - rtt_median[0]);
    println!("median: wggo added {wg_med:.3} ms, metac added {metac_med:.3} ms, {:.2}x", metac_med / wg_med.max(1e-6));
    let v: serde_json::Value = serde_json::from_str(&metac(h1, &["--json", "net", "ls"])?)?;
    for p in v["segments"][0]["ports"].as_array().into_iter().flatten() {
        println!(
            "port {}: dropped {} (queue full), oversize {}, malformed {}",
            p["name"], p["dropped"], p["oversize"], p["malformed"]
        );
    }
    drop(nodes);
    Ok(())
}
