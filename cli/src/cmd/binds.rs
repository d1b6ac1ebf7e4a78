//! This node's binds, of every kind: `metac binds`, `metac unbind`. Top-level commands (their enum is flattened
//! into the root); each kind's `bind`, `ls` and `unbind` call the helpers here with its own options.

use anyhow::Result;
use clap::Subcommand;
use metac_api::types::{BindReq, BindView, Unbound};
use metac_api::Client;

use super::{human_bytes, print, segment, table};

/// The bind commands every kind shares.
#[derive(Subcommand)]
pub enum Cmd {
    /// List this node's binds of remote (and local) resources, of every kind: target, state, bytes
    Binds {
        /// Only this kind (file, fs, net, usb, desktop, compute)
        #[arg(long)]
        kind: Option<String>,
    },
    /// Cut a bind (by id, unique id prefix, or target such as a socket path); it is not re-established
    Unbind {
        /// The bind's id, a unique prefix of it, or its target
        bind: String,
    },
}

/// Runs one of them against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Binds { kind } => list(c, json, kind.as_deref()).await,
        Cmd::Unbind { bind } => unbind(c, json, &bind).await,
    }
}

/// Binds `reference` with a kind's `options`; prints the bind once it is up or has a reason not to be.
pub async fn bind(
    c: &Client,
    json: bool,
    reference: String,
    options: serde_json::Value,
    persistent: bool,
) -> Result<()> {
    let v: BindView = c.post("/v1/binds", &BindReq { reference, options, persistent }).await?;
    print(json, &v, |v| {
        let state = match &v.reason {
            Some(r) => format!("{}: {r}", v.state),
            None => v.state.clone(),
        };
        format!("bound {} at {} (bind {}, {state})", v.kind, v.target, v.id)
    });
    Ok(())
}

/// Lists binds, of `kind` or all.
pub async fn list(c: &Client, json: bool, kind: Option<&str>) -> Result<()> {
    let path = match kind {
        Some(k) => format!("/v1/binds?kind={}", segment(k)),
        None => "/v1/binds".into(),
    };
    let v: Vec<BindView> = c.get(&path).await?;
    print(json, &v, |v| {
        table(
            &["ID", "KIND", "TARGET", "EXPORTER", "OWNER", "STATE", "BYTES", "PERSISTENT"],
            v.iter().map(|b| {
                let state = match &b.reason {
                    Some(r) => format!("{}: {r}", b.state),
                    None => b.state.clone(),
                };
                vec![
                    b.id.clone(),
                    b.kind.clone(),
                    b.target.clone(),
                    b.exporter.clone(),
                    b.owner.to_string(),
                    state,
                    human_bytes(b.bytes),
                    if b.persistent { "yes".into() } else { "no".into() },
                ]
            }),
        )
    });
    Ok(())
}

/// Cuts a bind given by id, id prefix or target.
pub async fn unbind(c: &Client, json: bool, q: &str) -> Result<()> {
    let v: Unbound = c.delete(&format!("/v1/binds/{}", segment(q))).await?;
    print(json, &v, |v| format!("unbound {}", v.id));
    Ok(())
}
