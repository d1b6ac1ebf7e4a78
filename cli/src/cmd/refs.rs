//! `metac ref`: capability refs, listed, decoded, narrowed and revoked.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use metac_api::types::{
    DelegateReq, DelegateResp, RefReq, RefView, Removed, RevokeResp, SaveReq, SavedView, TokenView,
};
use metac_api::Client;

use super::{print, rfc3339, short, table};

/// `metac ref` subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// List the refs this node issued or delegated (--saved: the refs you saved by name)
    Ls {
        /// The refs you saved with `metac ref save`
        #[arg(long)]
        saved: bool,
    },
    /// Keep a ref under a name, e.g. a compute ref for `metac run --on NAME`
    Save { name: String, reference: String },
    /// Forget a saved ref
    Forget { name: String },
    /// Decode a ref: issuer, resource, rights, expiry, audience
    Show { reference: String },
    /// Make a narrower ref from one you hold
    Delegate {
        reference: String,
        /// Keep only the read right (drops write and admin)
        #[arg(long)]
        read_only: bool,
        /// Keep only these rights, e.g. read,admin
        #[arg(long, value_name = "RIGHTS")]
        rights: Option<String>,
        /// Expire after this long (e.g. 30s, 10m, 1h, 7d)
        #[arg(long, value_name = "DURATION")]
        expires: Option<humantime::Duration>,
        /// Only this node may use it (node key, peer id or overlay address)
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Forbid any further delegation
        #[arg(long)]
        seal: bool,
        /// Only this sub-tree of an fs export (e.g. sub/dir; relative to the export's root)
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
    },
    /// Revoke a ref (and everything delegated from it); live binds are cut
    Revoke { reference: String },
}

/// Runs a `metac ref` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Ls { saved: true } => {
            let v: Vec<SavedView> = c.get("/v1/refs/saved").await?;
            print(json, &v, |v| {
                table(
                    &["NAME", "KIND", "RIGHTS", "NODE", "EXPIRES", "STATE", "REF"],
                    v.iter().map(|s| {
                        vec![
                            s.name.clone(),
                            s.kind.clone(),
                            s.rights.clone(),
                            short(&s.issuer),
                            s.expires.map(rfc3339).unwrap_or("never".into()),
                            s.state.clone(),
                            s.reference.clone(),
                        ]
                    }),
                )
            });
        }
        Cmd::Save { name, reference } => {
            let v: Removed = c.post("/v1/refs/saved", &SaveReq { name, reference }).await?;
            print(json, &v, |v| format!("saved as {}", v.name));
        }
        Cmd::Forget { name } => {
            let v: Removed = c.delete(&format!("/v1/refs/saved/{}", super::segment(&name))).await?;
            print(json, &v, |v| format!("forgot {}", v.name));
        }
        Cmd::Ls { saved: false } => {
            let v: Vec<TokenView> = c.get("/v1/refs").await?;
            print(json, &v, |v| {
                table(
                    &["ID", "PARENT", "KIND", "RIGHTS", "EXPIRES", "AUDIENCE", "STATE", "OWNER", "REF"],
                    v.iter().map(|t| {
                        vec![
                            t.id.clone(),
                            t.parent.clone().unwrap_or("-".into()),
                            t.kind.clone(),
                            t.rights.clone(),
                            t.expires.map(rfc3339).unwrap_or("never".into()),
                            t.audience.as_deref().map(short).unwrap_or("anyone".into()),
                            if t.revoked { "revoked".into() } else { "valid".into() },
                            t.owner.to_string(),
                            // Another local user's ref is not shown: it is a capability.
                            if t.reference.is_empty() { "(not yours)".into() } else { t.reference.clone() },
                        ]
                    }),
                )
            });
        }
        Cmd::Show { reference } => {
            // Decoding needs no node: anyone can read a ref, only its exporter can verify it. A running node adds
            // what it knows of the ref's revocation.
            let r = metac_node::node::parse_ref(&reference).map_err(|e| anyhow::anyhow!(e.message))?;
            let v = match c.post::<_, RefView>("/v1/refs/show", &RefReq { reference }).await {
                Ok(v) => v,
                Err(_) => metac_node::api::ref_view(&r, "unknown: no local node to ask"),
            };
            print(json, &v, |v| {
                format!(
                    "issuer    {}\noverlay   {}\nresource  {} ({})\nrights    {}\nexpires   {}\naudience  {}\npath      {}\ntoken id  {}\nchain     {}\nsealed    {}\nstate     {}",
                    v.issuer,
                    v.overlay,
                    v.resource,
                    v.kind,
                    v.rights,
                    v.expires.map(rfc3339).unwrap_or("never".into()),
                    v.audience.as_deref().unwrap_or("anyone"),
                    v.path.as_deref().unwrap_or("/"),
                    v.id,
                    v.chain.join(" -> "),
                    v.sealed,
                    v.state,
                )
            });
        }
        Cmd::Delegate { reference, read_only, rights, expires, to, seal, path } => {
            let body = DelegateReq {
                reference,
                read_only,
                rights,
                expires_in: expires.map(|d| Duration::from(d).as_secs().max(1)),
                to,
                seal,
                path,
            };
            let v: DelegateResp = c.post("/v1/refs/delegate", &body).await?;
            print(json, &v, |v| v.reference.clone());
        }
        Cmd::Revoke { reference } => {
            let v: RevokeResp = c.post("/v1/refs/revoke", &RefReq { reference }).await?;
            print(json, &v, |v| v.message.clone());
        }
    }
    Ok(())
}
