//! The node at a glance: `metac status`, `peers`, `resources`, `exports`, `unexport`. Top-level commands, so
//! their enum is flattened into the root.

use anyhow::Result;
use clap::Subcommand;
use metac_api::types::{ExportView, PeerView, Removed, ResourceView, StatusView};
use metac_api::Client;

use super::{ago, print, segment, short, table};

/// The node's own commands.
#[derive(Subcommand)]
pub enum Cmd {
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
}

/// Runs one of them against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Status => {
            let v: StatusView = c.get("/v1/status").await?;
            print(json, &v, |v| {
                format!(
                    "node      {}\npeer id   {}\noverlay   {} ({})\nlisten    {}\ndata      {}\npeers     {} connected, {} known\nexports   {}\nstate     {}",
                    v.key,
                    v.peer_id,
                    v.overlay,
                    v.overlay_status,
                    v.listen.join(" "),
                    v.transport,
                    v.peers,
                    v.known_nodes,
                    v.exports,
                    v.state,
                )
            });
        }
        Cmd::Peers => {
            let v: Vec<PeerView> = c.get("/v1/peers").await?;
            print(json, &v, |v| {
                table(
                    &["NODE", "OVERLAY", "STATE", "VIA", "LAST SEEN", "RESOURCES", "ADDRS"],
                    v.iter().map(|n| {
                        vec![
                            short(&n.key),
                            n.overlay.clone(),
                            if n.reachable { "reachable".into() } else { "unreachable".into() },
                            n.via.clone(),
                            ago(n.last_seen_ms),
                            n.resources.to_string(),
                            n.addrs.join(","),
                        ]
                    }),
                )
            });
        }
        Cmd::Resources { kind } => {
            let path = match kind {
                Some(k) => format!("/v1/resources?kind={}", segment(&k)),
                None => "/v1/resources".into(),
            };
            let v: Vec<ResourceView> = c.get(&path).await?;
            print(json, &v, |v| {
                table(
                    &["NODE", "KIND", "NAME", "ID"],
                    v.iter().map(|r| {
                        let node = if r.local { "(this node)".into() } else { short(&r.node) };
                        vec![node, r.kind.clone(), r.name.clone(), r.id.clone()]
                    }),
                )
            });
        }
        Cmd::Exports => {
            let v: Vec<ExportView> = c.get("/v1/exports").await?;
            print(json, &v, |v| {
                table(
                    &["ID", "KIND", "NAME", "SOURCE", "OWNER", "REFS", "BINDS"],
                    v.iter().map(|e| {
                        vec![
                            e.id.clone(),
                            e.kind.clone(),
                            e.name.clone(),
                            e.source.clone(),
                            e.owner.to_string(),
                            e.tokens.to_string(),
                            e.binds.to_string(),
                        ]
                    }),
                )
            });
        }
        Cmd::Unexport { id } => {
            let v: Removed = c.delete(&format!("/v1/exports/{}", segment(&id))).await?;
            print(json, &v, |v| format!("removed {} ({}); its refs are revoked", v.removed, v.name));
        }
    }
    Ok(())
}
