//! `metac`: the node daemon (`metac node`) and the CLI that talks to it over its Unix socket.
//!
//! Each command group lives in its own module under [`cmd`] with its clap enum and its `run`; adding a kind's
//! commands is one variant of [`Command`] and one arm of [`run`].

mod cmd;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use metac_api::Client;

#[derive(Parser)]
#[command(
    name = "metac",
    version,
    about = "Share a computer's resources with other computers, securely and directly, peer to peer"
)]
struct Cli {
    /// The node's API socket [default: /run/metac/metac.sock as root, $XDG_RUNTIME_DIR/metac.sock otherwise]
    #[arg(long, global = true, env = "METAC_SOCKET")]
    socket: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon
    Node(cmd::node::Args),
    #[command(flatten)]
    Status(cmd::status::Cmd),
    #[command(flatten)]
    Binds(cmd::binds::Cmd),
    /// Capability refs: list, show, delegate, revoke
    #[command(subcommand)]
    Ref(cmd::refs::Cmd),
    /// Files and block devices
    #[command(subcommand)]
    File(cmd::file::Cmd),
    /// Directory trees, mounted with FUSE
    #[command(subcommand)]
    Fs(cmd::fs::Cmd),
    /// Ethernet segments: export one (a new TAP or an existing bridge), join one, list and leave them
    #[command(subcommand)]
    Net(cmd::net::Cmd),
    /// Let other nodes run processes on this one (`metac run --on`)
    #[command(subcommand)]
    Compute(cmd::compute::Cmd),
    /// Virtual machines whose disks are remote files (qemu): start, ls, stop, console
    #[command(subcommand)]
    Vm(cmd::vm::Cmd),
    /// The fd6f overlay network: status, and configurations for stock WireGuard peers
    #[command(subcommand)]
    Overlay(cmd::overlay::Cmd),
    #[command(flatten)]
    Containers(cmd::containers::Cmd),
}

fn main() {
    // `metac shim DIR`: a container's supervisor, started by the node. It forks, so it must run before any
    // thread exists: no runtime, no argument parser.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "shim") {
        let Some(dir) = args.next() else {
            eprintln!("metac shim: the node starts this with a container's directory");
            std::process::exit(2);
        };
        std::process::exit(metac_compute::shim::main(std::path::Path::new(&dir)));
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Node(_)) {
        // A client whose output goes to a closed pipe (`metac ... | head`) ends quietly, as other CLI tools do.
        // SAFETY: setting a signal's disposition to its default at start, before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if matches!(cli.command, Command::Node(_)) {
        // A node runs a dozen threads (runtime workers, blocking pool, overlay queues); glibc would give each that
        // allocates an arena of its own, whose touched pages stay resident. Two arenas serve them as well and keep
        // an idle node's memory small.
        // SAFETY: mallopt only sets allocator parameters; called at start, before any thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(None) => {}
        Ok(Some(code)) => {
            // The container's exit code is this command's (`metac run`, `metac wait`); the runtime may still hold
            // tasks reading stdin, which would keep a clean shutdown waiting.
            rt.shutdown_background();
            std::process::exit(code);
        }
        Err(e) => {
            eprintln!("metac: error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> Result<Option<i32>> {
    let socket = cli.socket.unwrap_or_else(metac_node::config::default_socket);
    let c = Client::new(&socket);
    let done = match cli.command {
        Command::Node(a) => cmd::node::run(a, socket).await,
        Command::Status(cmd) => cmd::status::run(&c, cli.json, cmd).await,
        Command::Binds(cmd) => cmd::binds::run(&c, cli.json, cmd).await,
        Command::Ref(cmd) => cmd::refs::run(&c, cli.json, cmd).await,
        Command::File(cmd) => cmd::file::run(&c, cli.json, cmd).await,
        Command::Fs(cmd) => cmd::fs::run(&c, cli.json, cmd).await,
        Command::Net(cmd) => cmd::net::run(&c, cli.json, cmd).await,
        Command::Vm(cmd) => cmd::vm::run(&c, cli.json, cmd).await,
        Command::Compute(cmd) => cmd::compute::run(&c, cli.json, cmd).await,
        Command::Overlay(cmd) => cmd::overlay::run(&c, cli.json, cmd).await,
        Command::Containers(cmd) => return cmd::containers::run(&c, cli.json, cmd).await,
    };
    done.map(|()| None)
}
