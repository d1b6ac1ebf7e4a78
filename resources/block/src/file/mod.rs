//! The `file` kind: a regular file or a block device, exported over NBD. This module is everything the kind adds
//! to the node, and the worked example of docs/adding-a-kind.md:
//!
//! - [`File`] implements [`ResourceKind`]: typed export options ([`FileExport`]) and bind options ([`FileBind`]);
//! - `exporter`: the per-export object, which opens the file once and serves every bind from it over NBD;
//! - `endpoint` and `session`: the binding side, a local NBD endpoint on a Unix socket (`metac file bind`) and the
//!   one-shot transfers behind `metac file cat`, `get` and `put`;
//! - `api`: the kind's routes (`POST /v1/file/cat`, `get`, `put`) and the request types its CLI sends;
//! - `copy`: the client side of `get` and `put` (resume, progress), which the CLI runs against the node's API.
//!
//! The node may run as root; the kind acts as the user who asks ([`Caller::act`]): an export's path is resolved
//! and its file opened as the user who exports it (so a file that user may not read, or may not write for a
//! read-write export, is refused), and a bind's socket is created as the user who binds (so it is theirs, where
//! they may write).

pub mod api;
pub mod copy;
mod endpoint;
mod exporter;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metac_resource::{
    BoxFuture, Caller, Ctx, Error, ExportSpec, Exporter, Kind, Prepared, Ref, ResourceKind, Rights, Session,
};
use serde::{Deserialize, Serialize};

pub use endpoint::{Endpoint, Listen};
pub use session::{CatSession, PutSession};

/// The wire protocol of file binds.
pub const PROTOCOL: &str = "nbd";

/// What a file export records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileExport {
    /// The absolute path of the file or block device, with symlinks resolved at export.
    pub path: PathBuf,
    /// A block device may be exported (asked for with `--block`).
    #[serde(default)]
    pub block: bool,
    /// The file exported, checked at every later open (set by the node at export).
    #[serde(default)]
    pub id: Option<crate::FileId>,
}

/// What a file bind asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBind {
    /// Where the local NBD endpoint listens (a Unix socket), created as the user who binds [default:
    /// `file-<resource id>.sock` in that user's run directory, [`Ctx::run_dir_of`]].
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Listen on this loopback TCP address instead of a Unix socket (port 0: any free port).
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Refuse writes here, and advertise the export as read-only, even if the ref grants write.
    #[serde(default)]
    pub read_only: bool,
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

    fn prepare(
        &self,
        source: &str,
        options: Option<FileExport>,
        caller: &Caller,
    ) -> Result<Prepared<FileExport>, Error> {
        let asked = options.unwrap_or_else(|| FileExport { path: PathBuf::from(source), block: false, id: None });
        if !asked.path.is_absolute() {
            return Err(Error::BadOptions(format!("{}: the path must be absolute", asked.path.display())));
        }
        // The name shown is the one the user gave; what is recorded is the file it names now, symlinks resolved,
        // and that file's identity, so that a later swap of the path is noticed. Both as the caller: the path
        // resolves, and the file opens, only as far as the caller's own rights go.
        let name = asked.path.file_name().map(|f| f.to_string_lossy().into_owned());
        let cannot = |e: crate::Error| {
            not_allowed(&e, caller, "read")
                .unwrap_or_else(|| Error::BadOptions(format!("cannot export {}: {e}", asked.path.display())))
        };
        let (path, id) = caller.act(|| {
            let path = std::fs::canonicalize(&asked.path)
                .map_err(|source| cannot(crate::Error::Open { path: asked.path.clone(), source }))?;
            let export = crate::Export::open_exact(&path, true, asked.block, None).map_err(cannot)?;
            Ok::<_, Error>((path, export.id()?))
        })?;
        let name = name.unwrap_or_else(|| path.display().to_string());
        Ok(Prepared {
            source: path.display().to_string(),
            name,
            options: FileExport { path, block: asked.block, id: Some(id) },
        })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<FileExport>,
        _ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async move { Ok(Arc::new(exporter::FileExporter::open(&spec)?) as Arc<dyn Exporter>) })
    }

    fn bind(&self, reference: &Ref, options: FileBind, caller: &Caller, ctx: &Ctx) -> Result<Box<dyn Session>, Error> {
        let listen = match (options.socket, options.listen) {
            (Some(_), Some(_)) => {
                return Err(Error::BadOptions("give a Unix socket or a TCP address to listen on, not both".into()))
            }
            (None, Some(addr)) => Listen::tcp(addr)?,
            (Some(p), None) if p.is_absolute() => Listen::Unix(p),
            (Some(p), None) => {
                return Err(Error::BadOptions(format!("{}: the socket path must be absolute", p.display())))
            }
            (None, None) => Listen::Unix(default_socket(&ctx.run_dir_of(caller)?, reference)),
        };
        let read_only = options.read_only || !reference.token.effective().rights.contains(Rights::WRITE);
        let mut endpoint = Endpoint::new(listen, caller.clone(), read_only);
        endpoint.listen()?;
        Ok(Box::new(endpoint))
    }

    fn routes(&self, ctx: Ctx) -> axum::Router {
        api::routes(ctx)
    }
}

/// Where a bind's endpoint listens when no socket is named: one per resource, in the user's run directory.
fn default_socket(run_dir: &Path, r: &Ref) -> PathBuf {
    let id = r.token.resource().to_string();
    run_dir.join(format!("file-{}.sock", &id[..12]))
}

/// The refusal to give when `e` says the kernel did not let `owner` open the file for `access` (read, write): in
/// words that say who may not do what, and that the node asked as that user. `None` for any other failure.
fn not_allowed(e: &crate::Error, owner: &Caller, access: &str) -> Option<Error> {
    match e {
        crate::Error::Open { path, source } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            let hint = if access == "write" { "; export it with --read-only to share it for reading" } else { "" };
            Some(Error::Refused {
                by: "this node".into(),
                reason: format!(
                    "{owner} may not {access} {} ({source}): the node opens a file as the user who exports it{hint}",
                    path.display()
                ),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack (issue 10, finding 5): a block device was exported like any file. Now only when the export says so.
    /// Needs root (block devices are root's); under CI it runs and fails loudly without it.
    #[test]
    fn a_block_device_is_exported_only_when_named_as_one() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test opens a block device and needs root");
        let dev = std::fs::read_dir("/sys/block")
            .expect("/sys/block lists block devices")
            .filter_map(|e| e.ok())
            .map(|e| Path::new("/dev").join(e.file_name()))
            .find(|p| p.exists())
            .expect("a block device under /dev");
        let source = dev.to_str().unwrap();
        let e = ResourceKind::prepare(&File, source, None, &Caller::root()).unwrap_err();
        assert!(e.to_string().contains("is a block device: export a disk only on purpose"), "{e}");
        let asked = FileExport { path: dev.clone(), block: true, id: None };
        let p = ResourceKind::prepare(&File, source, Some(asked), &Caller::root()).unwrap();
        assert!(p.options.block && p.options.id.is_some());
    }

    /// A user exports a file only as far as the kernel lets that user open it: not one it may not read, and not
    /// read-write one it may only read. Needs root (it acts as another user); under CI it runs and fails loudly
    /// without it.
    #[test]
    fn a_file_is_exported_only_as_far_as_the_exporting_user_may_open_it() {
        use metac_resource::Rights;
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test acts as another user and needs root");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (secret, readable) = (dir.path().join("secret.img"), dir.path().join("readable.img"));
        for (p, mode) in [(&secret, 0o600), (&readable, 0o644)] {
            std::fs::write(p, b"data").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let nobody = Caller { uid: 65534, gid: 65534, groups: vec![] };
        let e = ResourceKind::prepare(&File, secret.to_str().unwrap(), None, &nobody).unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{e:?}");
        assert!(e.to_string().contains("uid 65534 may not read"), "{e}");
        let p = ResourceKind::prepare(&File, readable.to_str().unwrap(), None, &nobody).unwrap();
        let spec = |rights| ExportSpec {
            id: metac_resource::ResourceId([1; 16]),
            kind: Kind::File,
            name: "readable.img".into(),
            rights,
            owner: nobody.clone(),
            options: p.options.clone(),
        };
        let e = exporter::FileExporter::open(&spec(Rights::READ | Rights::WRITE)).err().unwrap();
        assert!(e.to_string().contains("uid 65534 may not write") && e.to_string().contains("--read-only"), "{e}");
        exporter::FileExporter::open(&spec(Rights::READ)).unwrap();
        // Root's export of the same file opens read-write.
        exporter::FileExporter::open(&ExportSpec { owner: Caller::root(), ..spec(Rights::READ | Rights::WRITE) })
            .unwrap();
    }

    #[test]
    fn an_export_records_the_file_behind_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.img");
        std::fs::write(&real, b"data").unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let p = ResourceKind::prepare(&File, link.to_str().unwrap(), None, &Caller::root()).unwrap();
        assert_eq!((p.name.as_str(), p.options.path.as_path()), ("link.img", real.canonicalize().unwrap().as_path()));
        assert!(p.options.id.is_some() && !p.options.block);
        let e = ResourceKind::prepare(&File, "relative.img", None, &Caller::root()).unwrap_err();
        assert!(e.to_string().contains("must be absolute"), "{e}");
    }
}
