//! The `file` kind: a regular file or a block device, exported over NBD. This module is everything the kind adds
//! to the node, and the worked example of docs/adding-a-kind.md:
//!
//! - [`File`] implements [`ResourceKind`]: typed export options ([`FileExport`]) and bind options ([`FileBind`]);
//! - `exporter`: the per-export object, which opens the file once and serves every bind from it over NBD;
//! - `session`: the binding side, a local NBD endpoint on a Unix socket (`metac file bind`) and the one-shot read
//!   behind `metac file cat`;
//! - `api`: the kind's routes (`POST /v1/file/cat`) and the request types its CLI sends.

pub mod api;
mod exporter;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metac_resource::{BoxFuture, Ctx, Error, ExportSpec, Exporter, Kind, Prepared, Ref, ResourceKind, Session};
use serde::{Deserialize, Serialize};

pub use session::{CatSession, Endpoint};

/// The wire protocol of file binds.
pub const PROTOCOL: &str = "nbd";

/// What a file export records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileExport {
    /// The absolute path of the file or block device.
    pub path: PathBuf,
}

/// What a file bind asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBind {
    /// Where the local NBD endpoint listens (a Unix socket) [default: `file-<resource id>.sock` in the node's run
    /// directory].
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// The `file` kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct File;

impl ResourceKind for File {
    type ExportOptions = FileExport;
    type BindOptions = FileBind;

    fn kind(&self) -> Kind {
        Kind::File
    }

    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn prepare(&self, source: &str, options: Option<FileExport>) -> Result<Prepared<FileExport>, Error> {
        let options = options.unwrap_or_else(|| FileExport { path: PathBuf::from(source) });
        let p = &options.path;
        if !p.is_absolute() {
            return Err(Error::BadOptions(format!("{}: the path must be absolute", p.display())));
        }
        // Opened now only to check it; the export opens it for good in `open`.
        crate::Export::open(p, true).map_err(|e| Error::BadOptions(format!("cannot export {}: {e}", p.display())))?;
        let name = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
        Ok(Prepared { source: p.display().to_string(), name, options })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<FileExport>,
        _ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async move { Ok(Arc::new(exporter::FileExporter::open(&spec)?) as Arc<dyn Exporter>) })
    }

    fn bind(&self, reference: &Ref, options: FileBind, ctx: &Ctx) -> Result<Box<dyn Session>, Error> {
        let socket = match options.socket {
            Some(p) if p.is_absolute() => p,
            Some(p) => return Err(Error::BadOptions(format!("{}: the socket path must be absolute", p.display()))),
            None => default_socket(&ctx.run_dir, reference),
        };
        Ok(Box::new(Endpoint::new(socket)))
    }

    fn routes(&self, ctx: Ctx) -> axum::Router {
        api::routes(ctx)
    }
}

/// Where a bind's endpoint listens when no socket is named: one per resource, in the node's run directory.
fn default_socket(run_dir: &Path, r: &Ref) -> PathBuf {
    let id = r.token.resource().to_string();
    run_dir.join(format!("file-{}.sock", &id[..12]))
}
