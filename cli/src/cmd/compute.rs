//! `metac compute`: let other nodes run processes here (`metac run --on THIS-NODE`).

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use metac_api::types::{DelegateReq, DelegateResp, ExportReq, ExportResp};
use metac_api::Client;

use super::print;

/// `metac compute` subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Let other nodes run processes on this one, as your user: prints a compute ref to hand to them (they keep it
    /// with `metac ref save NAME REF`, then `metac run --on NAME ...`)
    Export {
        /// Only this node may use the ref (node key, peer id or overlay address)
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// The ref stops working after this long (e.g. 8h, 7d)
        #[arg(long, value_name = "DURATION")]
        expires: Option<humantime::Duration>,
        /// Name shown in the mesh [default: this host's name]
        #[arg(long)]
        name: Option<String>,
        /// Every member of this private mesh may run here, with no ref to hand over (the ref goes in this node's
        /// advert; needs `metac node --mesh-key`)
        #[arg(long, conflicts_with_all = ["to", "expires"])]
        mesh: bool,
    },
}

/// Runs a `metac compute` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Export { to, expires, name, mesh } => {
            let body = ExportReq {
                kind: "compute".into(),
                source: "compute".into(),
                name,
                read_only: false,
                options: serde_json::json!({ "mesh": mesh }),
            };
            let e: ExportResp = c.post("/v1/exports", &body).await?;
            if to.is_none() && expires.is_none() {
                print(json, &e, |e| e.reference.clone());
                return Ok(());
            }
            let narrowed = DelegateReq {
                reference: e.reference,
                read_only: false,
                rights: None,
                expires_in: expires.map(|d| Duration::from(d).as_secs().max(1)),
                to,
                seal: false,
                path: None,
            };
            let v: DelegateResp = c.post("/v1/refs/delegate", &narrowed).await?;
            print(json, &v, |v| v.reference.clone());
        }
    }
    Ok(())
}
