//! `metac`: the node daemon (`metac node`) and the CLI that talks to it over its Unix socket.

mod client;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use client::Client;

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
    Node(NodeArgs),
    /// Show this node: key, overlay address, listen addresses, peers, exports
    Status,
    /// List the nodes this node knows
    Peers,
    /// List every resource adverted in the mesh
    Resources {
        /// Only this kind (file, fs, net, usb, desktop, compute)
        #[arg(long)]
        kind: Option<String>,
    },
    /// List this node's exports
    Exports,
    /// Stop exporting a resource (by id, id prefix or name); its refs are revoked and live binds cut
    Unexport { id: String },
    /// Capability refs: list, show, delegate, revoke
    #[command(subcommand)]
    Ref(RefCmd),
    /// Files and block devices
    #[command(subcommand)]
    File(FileCmd),
    /// The fd6f overlay network: status, and configurations for stock WireGuard peers
    #[command(subcommand)]
    Overlay(OverlayCmd),
}

#[derive(Subcommand)]
enum OverlayCmd {
    /// Show the overlay: device, port, and per peer its address, endpoint, path (udp/relay), last handshake, traffic
    Status,
    /// Admit a stock WireGuard peer (wireguard-go, wg-quick) named NAME and print its wg-quick configuration, with
    /// which it reaches this node's overlay address
    WgConfig {
        /// Name of the guest (1-32 letters, digits, '-', '_'); running it again for a name replaces its key
        name: String,
        /// Address (IP or IP:PORT) at which the guest reaches this node [default: its first routable listen address]
        #[arg(long)]
        endpoint: Option<String>,
        /// The guest's own WireGuard public key (base64), so that its private key never leaves it
        #[arg(long)]
        public_key: Option<String>,
        /// Write the configuration here (mode 0600) instead of stdout
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Remove a guest added with wg-config
    RemoveGuest { name: String },
}

#[derive(Args)]
struct NodeArgs {
    /// State directory [default: /var/lib/metac as root, $XDG_DATA_HOME/metac otherwise]
    #[arg(long)]
    state: Option<PathBuf>,
    /// Mesh port, TCP and UDP (0 picks one)
    #[arg(long, default_value_t = 4747)]
    port: u16,
    /// Bootstrap peer: a multiaddr or HOST[:PORT] (repeatable)
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// Do not discover peers on the LAN by mDNS
    #[arg(long)]
    no_mdns: bool,
    /// Join only nodes holding the same key file (a private mesh)
    #[arg(long, value_name = "FILE")]
    mesh_key: Option<PathBuf>,
    /// Do not run the overlay network (no TUN device, no WireGuard tunnels)
    #[arg(long)]
    no_overlay: bool,
    /// Name of the overlay's TUN device
    #[arg(long, value_name = "NAME", default_value = "metac0")]
    tun: String,
    /// UDP port of the overlay's WireGuard tunnels (0 picks one)
    #[arg(long, value_name = "PORT", default_value_t = 51820)]
    overlay_port: u16,
    /// Log level or tracing filter (error, warn, info, debug, trace, or e.g. "metac_mesh=debug")
    #[arg(long, default_value = "info", env = "METAC_LOG")]
    log_level: String,
}

#[derive(Subcommand)]
enum RefCmd {
    /// List the refs this node issued or delegated
    Ls,
    /// Decode a ref: issuer, resource, rights, expiry, audience
    Show { reference: String },
    /// Make a narrower ref from one you hold
    Delegate {
        reference: String,
        /// Drop the write right
        #[arg(long)]
        read_only: bool,
        /// Expire after this long (e.g. 30s, 10m, 1h, 7d)
        #[arg(long, value_name = "DURATION")]
        expires: Option<humantime::Duration>,
        /// Only this node may use it (node key, peer id or overlay address)
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Forbid any further delegation
        #[arg(long)]
        seal: bool,
    },
    /// Revoke a ref (and everything delegated from it); live binds are cut
    Revoke { reference: String },
}

#[derive(Subcommand)]
enum FileCmd {
    /// Export a file or block device; prints a ref
    Export {
        path: PathBuf,
        /// Name shown in the mesh [default: the file name]
        #[arg(long)]
        name: Option<String>,
        /// Grant only read access
        #[arg(long)]
        read_only: bool,
    },
    /// Write a remote file to stdout (or to --output)
    Cat {
        reference: String,
        /// Write here instead of stdout
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Node(_)) {
        // A client whose output goes to a closed pipe (`metac ... | head`) ends quietly, as other CLI tools do.
        // SAFETY: setting a signal's disposition to its default at start, before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("metac: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket.clone().unwrap_or_else(metac_node::config::default_socket);
    let c = Client::new(&socket);
    let json_out = cli.json;
    match cli.command {
        Command::Node(a) => return run_node(a, socket).await,
        Command::Status => {
            let v = c.call(Method::GET, "/v1/status", None).await?;
            print(json_out, &v, |v| {
                format!(
                    "node      {}\npeer id   {}\noverlay   {} ({})\nlisten    {}\npeers     {} connected, {} known\nexports   {}\nstate     {}",
                    s(&v["key"]),
                    s(&v["peer_id"]),
                    s(&v["overlay"]),
                    s(&v["overlay_status"]),
                    v["listen"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(" ")).unwrap_or_default(),
                    v["peers"],
                    v["known_nodes"],
                    v["exports"],
                    s(&v["state"]),
                )
            });
        }
        Command::Peers => {
            let v = c.call(Method::GET, "/v1/peers", None).await?;
            print(json_out, &v, |v| {
                table(
                    &["NODE", "OVERLAY", "STATE", "VIA", "LAST SEEN", "RESOURCES", "ADDRS"],
                    v.as_array().into_iter().flatten().map(|n| {
                        vec![
                            s(&n["key"])[..16].to_string(),
                            s(&n["overlay"]),
                            if n["reachable"].as_bool() == Some(true) {
                                "reachable".into()
                            } else {
                                "unreachable".into()
                            },
                            s(&n["via"]),
                            ago(n["last_seen_ms"].as_u64().unwrap_or(0)),
                            n["resources"].to_string(),
                            n["addrs"]
                                .as_array()
                                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                        ]
                    }),
                )
            });
        }
        Command::Resources { kind } => {
            let path = match kind {
                Some(k) => format!("/v1/resources?kind={k}"),
                None => "/v1/resources".into(),
            };
            let v = c.call(Method::GET, &path, None).await?;
            print(json_out, &v, |v| {
                table(
                    &["NODE", "KIND", "NAME", "ID"],
                    v.as_array().into_iter().flatten().map(|r| {
                        let node = if r["local"].as_bool() == Some(true) {
                            "(this node)".into()
                        } else {
                            s(&r["node"])[..16].to_string()
                        };
                        vec![node, s(&r["kind"]), s(&r["name"]), s(&r["id"])]
                    }),
                )
            });
        }
        Command::Exports => {
            let v = c.call(Method::GET, "/v1/exports", None).await?;
            print(json_out, &v, |v| {
                table(
                    &["ID", "KIND", "NAME", "SOURCE", "REFS", "BINDS"],
                    v.as_array().into_iter().flatten().map(|e| {
                        vec![
                            s(&e["id"]),
                            s(&e["kind"]),
                            s(&e["name"]),
                            s(&e["source"]),
                            e["tokens"].to_string(),
                            e["binds"].to_string(),
                        ]
                    }),
                )
            });
        }
        Command::Unexport { id } => {
            let v = c.call(Method::DELETE, &format!("/v1/exports/{id}"), None).await?;
            print(json_out, &v, |v| format!("removed {} ({}); its refs are revoked", s(&v["removed"]), s(&v["name"])));
        }
        Command::Ref(cmd) => ref_cmd(&c, json_out, cmd).await?,
        Command::Overlay(cmd) => overlay_cmd(&c, json_out, cmd).await?,
        Command::File(FileCmd::Export { path, name, read_only }) => {
            let path = std::path::absolute(&path).with_context(|| format!("{}", path.display()))?;
            let body = json!({ "kind": "file", "source": path, "name": name, "read_only": read_only });
            let v = c.call(Method::POST, "/v1/exports", Some(body)).await?;
            print(json_out, &v, |v| s(&v["ref"]));
        }
        Command::File(FileCmd::Cat { reference, output }) => {
            let body = json!({ "ref": reference });
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let n = match output {
                Some(p) => {
                    let mut f =
                        tokio::fs::File::create(&p).await.with_context(|| format!("cannot create {}", p.display()))?;
                    c.stream_to("/v1/file/cat", body, &mut f, tty).await?
                }
                None => c.stream_to("/v1/file/cat", body, &mut tokio::io::stdout(), tty).await?,
            };
            tracing::debug!("copied {n} bytes");
        }
    }
    Ok(())
}

async fn ref_cmd(c: &Client, json_out: bool, cmd: RefCmd) -> Result<()> {
    match cmd {
        RefCmd::Ls => {
            let v = c.call(Method::GET, "/v1/refs", None).await?;
            print(json_out, &v, |v| {
                table(
                    &["ID", "PARENT", "KIND", "RIGHTS", "EXPIRES", "AUDIENCE", "STATE", "REF"],
                    v.as_array().into_iter().flatten().map(|t| {
                        vec![
                            s(&t["id"]),
                            t["parent"].as_str().unwrap_or("-").to_string(),
                            s(&t["kind"]),
                            s(&t["rights"]),
                            t["expires"].as_u64().map(rfc3339).unwrap_or("never".into()),
                            t["audience"].as_str().map(|a| a[..16].to_string()).unwrap_or("anyone".into()),
                            if t["revoked"].as_bool() == Some(true) { "revoked".into() } else { "valid".into() },
                            s(&t["ref"]),
                        ]
                    }),
                )
            });
        }
        RefCmd::Show { reference } => {
            // Decoding needs no node: anyone can read a ref, only its exporter can verify it. A running node adds
            // what it knows of the ref's revocation.
            let r = metac_node::node::parse_ref(&reference).map_err(|e| anyhow::anyhow!(e.message))?;
            let v = match c.call(Method::POST, "/v1/refs/show", Some(json!({ "ref": reference }))).await {
                Ok(v) => v,
                Err(_) => {
                    let mut v = json!(metac_node::node::describe(&r));
                    v["state"] = json!("unknown: no local node to ask");
                    v
                }
            };
            print(json_out, &v, |v| {
                format!(
                    "issuer    {}\noverlay   {}\nresource  {} ({})\nrights    {}\nexpires   {}\naudience  {}\npath      {}\ntoken id  {}\nchain     {}\nsealed    {}\nstate     {}",
                    s(&v["issuer"]),
                    s(&v["overlay"]),
                    s(&v["resource"]),
                    s(&v["kind"]),
                    s(&v["rights"]),
                    v["expires"].as_u64().map(rfc3339).unwrap_or("never".into()),
                    v["audience"].as_str().unwrap_or("anyone"),
                    v["path"].as_str().unwrap_or("/"),
                    s(&v["id"]),
                    v["chain"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(" -> ")).unwrap_or_default(),
                    v["sealed"],
                    s(&v["state"]),
                )
            });
        }
        RefCmd::Delegate { reference, read_only, expires, to, seal } => {
            let body = json!({
                "ref": reference, "read_only": read_only, "to": to, "seal": seal,
                "expires_in": expires.map(|d| Duration::from(d).as_secs().max(1)),
            });
            let v = c.call(Method::POST, "/v1/refs/delegate", Some(body)).await?;
            print(json_out, &v, |v| s(&v["ref"]));
        }
        RefCmd::Revoke { reference } => {
            let v = c.call(Method::POST, "/v1/refs/revoke", Some(json!({ "ref": reference }))).await?;
            print(json_out, &v, |v| s(&v["message"]));
        }
    }
    Ok(())
}

async fn overlay_cmd(c: &Client, json_out: bool, cmd: OverlayCmd) -> Result<()> {
    match cmd {
        OverlayCmd::Status => {
            let v = c.call(Method::GET, "/v1/overlay", None).await?;
            print(json_out, &v, |v| {
                if v["tun"].is_null() {
                    return format!("overlay   {}", s(&v["state"]));
                }
                let head = format!(
                    "overlay   {}\naddress   {}\nmtu       {} (offload {}, UDP GSO x{}, GRO x{})\ndropped   {} to unknown addresses, {} rejected, {} forged sources\n",
                    s(&v["state"]),
                    s(&v["addr"]),
                    s(&v["mtu"]),
                    if v["offload"] == true { "on" } else { "off" },
                    s(&v["gso_segments"]),
                    s(&v["gro_segments"]),
                    s(&v["unknown_dst"]),
                    s(&v["rejected"]),
                    s(&v["spoofed"]),
                );
                let peers = v["peers"].as_array().cloned().unwrap_or_default();
                let rows = peers.iter().map(|p| {
                    let name = s(&p["name"]);
                    vec![
                        if name.starts_with("guest:") { name } else { name.chars().take(16).collect() },
                        s(&p["addr"]),
                        if p["narrow"] == true { s(&p["endpoint"]) + " (narrow)" } else { s(&p["endpoint"]) },
                        s(&p["path"]),
                        match p["last_handshake_secs"].as_f64() {
                            Some(t) => format!("{t:.0}s ago"),
                            None if p["tunnel"] == true => "pending".into(),
                            None => "-".into(),
                        },
                        human_bytes(p["rx_bytes"].as_u64().unwrap_or(0)),
                        human_bytes(p["tx_bytes"].as_u64().unwrap_or(0)),
                    ]
                });
                head + &table(&["PEER", "ADDRESS", "ENDPOINT", "PATH", "HANDSHAKE", "RX", "TX"], rows)
            });
        }
        OverlayCmd::WgConfig { name, endpoint, public_key, output } => {
            let body = json!({ "name": name, "endpoint": endpoint, "public_key": public_key });
            let v = c.call(Method::POST, "/v1/overlay/wg-config", Some(body)).await?;
            if let Some(path) = output {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                f.write_all(s(&v["config"]).as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {} (guest {} at {})", path.display(), s(&v["name"]), s(&v["addr"]));
            } else if json_out {
                print(true, &v, |_| String::new());
            } else {
                print!("{}", s(&v["config"]));
            }
        }
        OverlayCmd::RemoveGuest { name } => {
            let v = c.call(Method::DELETE, &format!("/v1/overlay/guests/{name}"), None).await?;
            print(json_out, &v, |v| format!("removed guest {}", s(&v["removed"])));
        }
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

async fn run_node(a: NodeArgs, socket: PathBuf) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log_level)
        .with_context(|| format!("--log-level {:?} is not a level or filter", a.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let config = metac_node::Config {
        port: a.port,
        peers: a.peers,
        mdns: !a.no_mdns,
        mesh_key: a.mesh_key,
        overlay: metac_node::overlay::OverlayConfig { enabled: !a.no_overlay, tun: a.tun, port: a.overlay_port },
        ..metac_node::Config::new(a.state.unwrap_or_else(metac_node::config::default_state_dir), socket)
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        c.cancel();
    });
    metac_node::run(config, cancel, |_| {}).await.map_err(|e| anyhow::anyhow!(e))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn rfc3339(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        "now".into()
    } else {
        format!("{}s ago", ms / 1000)
    }
}

fn print(json_out: bool, v: &Value, text: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).expect("json"));
    } else {
        println!("{}", text(v));
    }
}

fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    if rows.is_empty() {
        return "(none)".into();
    }
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}
