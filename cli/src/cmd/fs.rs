//! `metac fs`: the fs kind's commands: export a directory tree, mount a remote one with FUSE, list and cut mounts.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use metac_api::types::{ExportReq, ExportResp};
use metac_api::Client;
use metac_fs::api::Stats;
use metac_fs::{FsBind, FsExport};

use super::{binds, print};

/// `metac fs` subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Export a directory tree (local:PATH); prints a ref
    Export {
        /// The directory, as local:PATH
        source: String,
        /// Name shown in the mesh [default: the directory's name]
        #[arg(long)]
        name: Option<String>,
        /// Grant only read access: every change fails with EROFS on the mounts
        #[arg(long)]
        read_only: bool,
    },
    /// Mount a remote directory tree at MOUNTPOINT (an existing directory) with FUSE
    Bind {
        mountpoint: PathBuf,
        reference: String,
        /// Mount read-only even if the ref grants write
        #[arg(long)]
        read_only: bool,
        /// Mount it again after the node restarts
        #[arg(long)]
        persistent: bool,
        /// Seconds an operation waits for an exporter that is away before it fails with EIO
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout: u64,
        /// Serve files from the node's content cache (a read-only mount only): a file read again, through this
        /// bind or a later one, is not fetched again
        #[arg(long)]
        cache: bool,
    },
    /// Unmount an fs bind (by mount point, bind id or id prefix)
    Unbind {
        /// The mount point, the bind's id or a unique prefix of it
        mountpoint: String,
    },
    /// List this node's fs binds: mount point, exporter, state, bytes
    Ls,
    /// Content served by this node's exports, and its content cache of read-only files
    Stats,
}

/// Runs a `metac fs` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Export { source, name, read_only } => {
            let Some(path) = source.strip_prefix("local:") else {
                bail!("name the directory to export as local:PATH (got {source:?})");
            };
            let path = std::path::absolute(path).with_context(|| path.to_string())?;
            let source = path
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8, which the API cannot carry", path.display()))?
                .to_string();
            let options = serde_json::to_value(FsExport { path: path.clone(), id: None })?;
            let body = ExportReq { kind: "fs".into(), source, name, read_only, options };
            let v: ExportResp = c.post("/v1/exports", &body).await?;
            print(json, &v, |v| v.reference.clone());
        }
        Cmd::Bind { mountpoint, reference, read_only, persistent, timeout, cache } => {
            let mountpoint = std::path::absolute(&mountpoint)?;
            let options = serde_json::to_value(FsBind { mountpoint, read_only, timeout: Some(timeout), cache })?;
            binds::bind(c, json, reference, options, persistent).await?;
        }
        Cmd::Unbind { mountpoint } => {
            // A mount point is matched as given, made absolute like the one the bind was made with.
            let q = match std::path::Path::new(&mountpoint) {
                p if mountpoint.contains('/') => std::path::absolute(p)?.display().to_string(),
                _ => mountpoint,
            };
            binds::unbind(c, json, &q).await?;
        }
        Cmd::Ls => binds::list(c, json, Some("fs")).await?,
        Cmd::Stats => {
            let s: Stats = c.get("/v1/fs/stats").await?;
            print(json, &s, |s| {
                let k = &s.cache;
                [
                    format!("served by exports  {} bytes of file content, {} files hashed", s.served_bytes, s.hashes),
                    format!("content cache      {} files, {} of {} bytes", k.entries, k.bytes, k.limit),
                    format!("cache opens        {} from the cache, {} fetched into it", k.hits, k.misses),
                ]
                .join("\n")
            });
        }
    }
    Ok(())
}
