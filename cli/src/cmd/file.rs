//! `metac file`: the file kind's commands: export a file or block device, and copy a remote one out.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use metac_api::types::{ExportReq, ExportResp, RefReq};
use metac_api::Client;

use super::print;

/// `metac file` subcommands.
#[derive(Subcommand)]
pub enum Cmd {
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

/// Runs a `metac file` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Export { path, name, read_only } => {
            let path = std::path::absolute(&path).with_context(|| format!("{}", path.display()))?;
            let source = path
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8, which the API cannot carry", path.display()))?
                .to_string();
            let body = ExportReq { kind: "file".into(), source, name, read_only, options: serde_json::Value::Null };
            let v: ExportResp = c.post("/v1/exports", &body).await?;
            print(json, &v, |v| v.reference.clone());
        }
        Cmd::Cat { reference, output } => {
            let body = RefReq { reference };
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let n = match output {
                Some(p) => {
                    let mut f =
                        tokio::fs::File::create(&p).await.with_context(|| format!("cannot create {}", p.display()))?;
                    c.copy_to("/v1/file/cat", &body, &mut f, tty).await?
                }
                None => c.copy_to("/v1/file/cat", &body, &mut tokio::io::stdout(), tty).await?,
            };
            tracing::debug!("copied {n} bytes");
        }
    }
    Ok(())
}
