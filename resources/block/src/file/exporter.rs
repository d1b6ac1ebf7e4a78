//! The exporting side of the `file` kind: the file is opened once, when exported or when the node starts, as the
//! user who exported it and with write access only if the export grants it; every bind is served over NBD from that one open file (a read-only
//! ref gets a read-only view of it). A path swapped after the export changes nothing while the node runs, and is
//! refused when the node opens it again (never through a symlink, only the very file exported, a block device only
//! when the export named one).

use std::sync::Arc;

use metac_resource::{Bind, BoxFuture, BoxStream, Error, ExportSpec, Exporter, Rights};
use tokio_util::sync::CancellationToken;

use super::FileExport;

/// An open file export.
pub(super) struct FileExporter {
    export: crate::Export,
}

impl FileExporter {
    /// Opens the file named by `spec` as its owner, writable if the export grants write. A file the owner may not
    /// open so is refused (a read-write export of a file the owner may only read among them).
    pub(super) fn open(spec: &ExportSpec<FileExport>) -> Result<FileExporter, Error> {
        let read_only = !spec.rights.contains(Rights::WRITE);
        let o = &spec.options;
        let access = if read_only { "read" } else { "write" };
        let export = spec.owner.act(|| {
            crate::Export::open_exact(&o.path, read_only, o.block, o.id).map_err(|e| {
                super::not_allowed(&e, &spec.owner, access)
                    .unwrap_or_else(|| Error::Unavailable(format!("export {} cannot be opened: {e}", spec.name)))
            })
        })?;
        Ok(FileExporter { export })
    }
}

impl Exporter for FileExporter {
    fn serve(
        self: Arc<Self>,
        bind: Bind,
        stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            if !bind.rights.contains(Rights::READ) {
                return Err(Error::Refused { by: "this node".into(), reason: "the ref does not grant read".into() });
            }
            let export = self.export.read_only_if(!bind.rights.contains(Rights::WRITE));
            match crate::serve(stream, &export, cancel).await {
                Ok(_) | Err(crate::Error::Cancelled) => Ok(()),
                Err(e) => Err(Error::Protocol(e.to_string())),
            }
        })
    }
}
