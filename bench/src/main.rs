//! `metac-bench`: benchmark commands. Each runs real `metac node`s in a netns lab and prints `name: value unit`
//! lines, so runs can be compared and pasted into notes. Needs root. Build with `--release` and point
//! `METAC_BIN` at a release `metac` (scripts/bench.sh does both).

mod block;
mod file;
mod flood;
mod fs;
mod net;
mod overlay;
mod remote;
mod run;
mod spine;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "metac-bench", about = "metac benchmarks (run as root; see scripts/bench.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The spine: start-to-ready, idle RSS and CPU, mDNS discovery, advert propagation, token verifies/s
    Spine(spine::Args),
    /// Block: nbdcopy of a 1 GiB file and 4 KiB random-read IOPS through a metac file bind, nbdkit and qemu-nbd
    /// across two hosts, with ratios; and `metac run --vm true` where the build has it
    Block(block::Args),
    /// Files: `metac file cat` across two hosts, MiB/s; with --baseline, another build in the same run
    File(file::Args),
    /// An advert flood: what two honest nodes cost while a hostile peer floods adverts of fresh keys at one
    Flood(flood::Args),
    /// Filesystems: metac's fs kind and sshfs between the same two hosts: read, untar, find + cat, git status
    Fs(fs::Args),
    /// Ethernet segments: iperf3 TCP and ping RTT over the raw veth, wireguard-go and a metac net segment, with ratios
    Net(net::Args),
    /// The overlay: iperf3 TCP and ping RTT over the raw veth, wireguard-go and the metac overlay, with ratios
    Overlay(overlay::Args),
    /// Containers: `metac run --rootfs BUSYBOX true` against `runc run` of the same rootfs, and the node's footprint
    Run(run::Args),
    /// Remote launch: `metac run --on b true` against local `metac run true` and `runc run`, and a 20-file C
    /// project built with `make` here and `--on b` (cold, then warm), with ratios
    Remote(remote::Args),
}

fn main() {
    let cli = Cli::parse();
    metac_tests::require_root();
    let r = match cli.command {
        Command::Spine(a) => spine::run(a),
        Command::Overlay(a) => overlay::run(a),
        Command::Block(a) => block::run(a),
        Command::File(a) => file::run(a),
        Command::Flood(a) => flood::run(a),
        Command::Fs(a) => fs::run(a),
        Command::Run(a) => run::run(a),
        Command::Remote(a) => remote::run(a),
        Command::Net(a) => net::run(a),
    };
    if let Err(e) = r {
        eprintln!("metac-bench: error: {e:#}");
        std::process::exit(1);
    }
}
