//! `metac overlay`: the fd6f overlay network's state, and configurations for stock WireGuard peers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use metac_api::types::{GuestRemoved, OverlayPolicy, OverlayRuleReq, WgConfigReq};
use metac_api::Client;
use serde_json::Value;

use super::{human_bytes, print, s, segment, table};

/// `metac overlay` subcommands.
#[derive(Subcommand)]
pub enum Cmd {
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
    /// Let other nodes reach a port of this node over the overlay (in a public mesh only ICMPv6 echo and replies to
    /// this node's own connections come in by default)
    Allow {
        /// PORT[/tcp|udp], e.g. 22 or 53/udp (tcp when not said)
        port: String,
        /// Only from this node (node key, peer id or overlay address)
        #[arg(long, value_name = "NODE")]
        from: Option<String>,
    },
    /// Take back an `allow`, or keep a port closed (in a private mesh, where members reach every port)
    Deny {
        /// PORT[/tcp|udp]
        port: String,
        /// Only for this node
        #[arg(long, value_name = "NODE")]
        from: Option<String>,
    },
}

/// Runs a `metac overlay` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Status => {
            let v: Value = c.get("/v1/overlay").await?;
            print(json, &v, status_text);
        }
        Cmd::Allow { port, from } => rule(c, json, "/v1/overlay/allow", port, from).await?,
        Cmd::Deny { port, from } => rule(c, json, "/v1/overlay/deny", port, from).await?,
        Cmd::WgConfig { name, endpoint, public_key, output } => {
            let v: Value = c.post("/v1/overlay/wg-config", &WgConfigReq { name, endpoint, public_key }).await?;
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
            } else if json {
                print(true, &v, |_| String::new());
            } else {
                print!("{}", s(&v["config"]));
            }
        }
        Cmd::RemoveGuest { name } => {
            let v: GuestRemoved = c.delete(&format!("/v1/overlay/guests/{}", segment(&name))).await?;
            print(json, &v, |v| format!("removed guest {}", v.removed));
        }
    }
    Ok(())
}

/// The overlay's state, then a table of its peers.
async fn rule(c: &Client, json: bool, path: &str, rule: String, from: Option<String>) -> Result<()> {
    let v: OverlayPolicy = c.post(path, &OverlayRuleReq { rule, from }).await?;
    print(json, &v, policy_text);
    Ok(())
}

fn policy_text(p: &OverlayPolicy) -> String {
    let rules = if p.rules.is_empty() { "none".to_string() } else { p.rules.join(", ") };
    format!(
        "policy    {}
rules     {rules}",
        p.default
    )
}

fn status_text(v: &Value) -> String {
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
    let head = match serde_json::from_value::<OverlayPolicy>(v["policy"].clone()) {
        Ok(p) => format!("{head}{}\n", policy_text(&p)),
        Err(_) => head,
    };
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
}
