//! `metac file`: the file kind's commands: export a file or block device, copy a remote one out or in (`cat`,
//! `get`, `put`: the copy logic is `metac_block::file::copy`), or bind it as a local NBD endpoint that NBD clients (nbdinfo, nbdcopy, qemu) use as they would nbdkit.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use metac_api::types::{ExportReq, ExportResp};
use metac_api::Client;
use metac_block::file::api::CatReq;
use metac_block::file::{copy, FileBind, FileExport};

use super::{binds, print};

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
        /// The path is a block device (a disk): refused without this, so that no disk is exported by mistake
        #[arg(long)]
        block: bool,
    },
    /// Write a remote file to stdout (or to --output)
    Cat {
        reference: String,
        /// Write here instead of stdout
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Copy a remote file into LOCALFILE, with a progress line; a partial LOCALFILE (from an interrupted get) is
    /// continued once its last MiB is found equal to the export's bytes there, a complete one is left as it is.
    /// LOCALFILE grows in place and reaches the export's size only with the last byte (then fsync)
    Get {
        reference: String,
        #[arg(value_name = "LOCALFILE")]
        path: PathBuf,
        /// Copy from the start even if LOCALFILE exists (it is truncated)
        #[arg(long)]
        force: bool,
    },
    /// Write LOCALFILE into a remote file (the ref must grant write; LOCALFILE may be smaller than the export, not
    /// larger), with a progress line; flushed on the exporter before it says done
    Put {
        #[arg(value_name = "LOCALFILE")]
        path: PathBuf,
        reference: String,
        /// Read the export back first and write only from the first 4 MiB block that differs (to finish an
        /// interrupted put)
        #[arg(long)]
        resume: bool,
    },
    /// Bind a remote file as a local NBD endpoint on a Unix socket (nbd+unix:///?socket=PATH) or a loopback TCP
    /// port (nbd://[::1]:PORT); many clients may use it at once. After a network break or an exporter restart it
    /// reconnects by itself and sends unanswered requests again: clients see a pause, not an error
    Bind {
        reference: String,
        /// The endpoint's Unix socket, as nbdkit's -U; made as you, so where you may write [default:
        /// file-<resource id>.sock in metac-binds/ beside the node's API socket, in metac-binds/uid-<uid>/ for a
        /// user other than root]
        // Not named `socket`: clap would take it for the global --socket (same argument id).
        #[arg(short = 'U', long, value_name = "PATH", conflicts_with = "listen")]
        unix: Option<PathBuf>,
        /// Listen on this loopback TCP address instead, e.g. [::1]:10809 (port 0: any free port, shown in `file
        /// ls`). Every local user can connect to a TCP port: prefer the Unix socket where clients can use it
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Refuse writes at the endpoint and show clients a read-only export, even if the ref grants write
        #[arg(long)]
        read_only: bool,
        /// Bind it again after the node restarts
        #[arg(long)]
        persistent: bool,
    },
    /// List this node's file binds
    Ls,
    /// Cut a file bind (by id, id prefix or socket path)
    Unbind {
        /// The bind's id, a unique prefix of it, or its socket path
        bind: String,
    },
}

/// Runs a `metac file` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Export { path, name, read_only, block } => {
            let path = std::path::absolute(&path).with_context(|| format!("{}", path.display()))?;
            let source = path
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8, which the API cannot carry", path.display()))?
                .to_string();
            let options = serde_json::to_value(FileExport { path: path.clone(), block, id: None })?;
            let body = ExportReq { kind: "file".into(), source, name, read_only, options };
            let v: ExportResp = c.post("/v1/exports", &body).await?;
            print(json, &v, |v| v.reference.clone());
        }
        Cmd::Cat { reference, output } => {
            let body = CatReq { reference };
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
        Cmd::Get { reference, path, force } => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let r = copy::get(c, &reference, &path, force, tty).await?;
            print(json, &r, |r| match r {
                r if r.complete => format!("{} is complete ({} bytes): nothing to copy", path.display(), r.size),
                r if r.resumed_from > 0 => format!(
                    "{}: {} bytes copied after the {} already there; {} bytes in all",
                    path.display(),
                    r.copied,
                    r.resumed_from,
                    r.size
                ),
                r => format!("{}: {} bytes copied", path.display(), r.copied),
            });
        }
        Cmd::Put { path, reference, resume } => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let r = copy::put(c, &path, &reference, resume, tty).await?;
            print(json, &r, |r| match r {
                r if r.written == 0 && r.size > 0 => {
                    format!("the export already holds {}: nothing written", path.display())
                }
                r if r.skipped > 0 => format!(
                    "{}: {} bytes were already in place, {} written and flushed",
                    path.display(),
                    r.skipped,
                    r.written
                ),
                r => format!("{}: {} bytes written and flushed", path.display(), r.written),
            });
        }
        Cmd::Bind { reference, unix, listen, read_only, persistent } => {
            let socket = unix.map(|p| std::path::absolute(&p)).transpose()?;
            let options = serde_json::to_value(FileBind { socket, listen, read_only })?;
            binds::bind(c, json, reference, options, persistent).await?;
        }
        Cmd::Ls => binds::list(c, json, Some("file")).await?,
        Cmd::Unbind { bind } => {
            // A socket path is matched as given, made absolute like the one the bind was made with.
            let q = match std::path::Path::new(&bind) {
                p if bind.contains('/') => std::path::absolute(p)?.display().to_string(),
                _ => bind,
            };
            binds::unbind(c, json, &q).await?;
        }
    }
    Ok(())
}
