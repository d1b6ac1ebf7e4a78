//! The resource registry: one [`Handler`] per kind. Exports of a kind are checked and served by its handler; a kind
//! without a handler in this build is refused with a message that says so. New kinds (fs, net, usb, desktop,
//! compute) plug in here.

use std::path::Path;
use std::sync::Arc;

use metac_resource::{Bind, BoxFuture, BoxStream, ExportSpec, Handler, Kind, Rights};
use tokio_util::sync::CancellationToken;

/// Handlers by kind.
pub struct Registry {
    handlers: Vec<Arc<dyn Handler>>,
}

impl Registry {
    /// The registry with every kind this build serves.
    pub fn with_builtin() -> Registry {
        Registry { handlers: vec![Arc::new(FileHandler)] }
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: Kind) -> Result<Arc<dyn Handler>, String> {
        self.handlers
            .iter()
            .find(|h| h.kind() == kind)
            .cloned()
            .ok_or_else(|| format!("resource kind {kind} is not served by this build of metac"))
    }
}

/// Files and block devices over NBD.
pub struct FileHandler;

impl Handler for FileHandler {
    fn kind(&self) -> Kind {
        Kind::File
    }

    fn protocol(&self) -> &'static str {
        "nbd"
    }

    fn check(&self, spec: &ExportSpec) -> Result<(), String> {
        let p = Path::new(&spec.source);
        if !p.is_absolute() {
            return Err(format!("{}: the path must be absolute", spec.source));
        }
        metac_block::Export::open(p, true).map(|_| ()).map_err(|e| e.to_string())
    }

    fn serve(
        &self,
        spec: ExportSpec,
        bind: Bind,
        stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            if !bind.rights.contains(Rights::READ) {
                return Err("the ref does not grant read access".into());
            }
            let read_only = !bind.rights.contains(Rights::WRITE);
            let export = metac_block::Export::open(Path::new(&spec.source), read_only).map_err(|e| e.to_string())?;
            metac_block::serve(stream, &export, cancel).await.map(|_| ()).map_err(|e| e.to_string())
        })
    }
}
