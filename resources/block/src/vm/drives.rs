//! A VM's drives: each drive's `file` ref bound here as a local NBD socket, made as the user who starts the VM,
//! through the node's [`Binder`](metac_resource::Binder) (so the bind is listed, and cut by revocation and node
//! stop, as any other), and waited for until its exporter answers. The binds of a start that fails are unbound
//! ([`Binds`]); those of a VM are unbound by its supervisor when qemu ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metac_resource::{Caller, Ctx, Error, Ref, State};

use super::api::DriveInfo;
use super::qemu::{Drive, Format};

/// How long a drive's bind may take to reach its exporter before the start fails.
const BIND_WAIT: Duration = Duration::from_secs(30);
/// The longest Unix socket path (`sockaddr_un` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Drive binds made for a start that has not handed them to its VM: unbound if the start fails.
pub(super) struct Binds {
    ctx: Ctx,
    ids: Vec<String>,
}

impl Binds {
    /// The bind ids, now the caller's to unbind.
    pub(super) fn take(mut self) -> Vec<String> {
        std::mem::take(&mut self.ids)
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        if !ids.is_empty() {
            let binder = Arc::clone(&self.ctx.binder);
            tokio::spawn(async move { unbind_all(&*binder, &ids).await });
        }
    }
}

/// Unbinds `ids`, each as the node (a kind cutting what it bound); failures are only logged.
pub(super) async fn unbind_all(binder: &dyn metac_resource::Binder, ids: &[String]) {
    for id in ids {
        if let Err(e) = binder.unbind(id).await {
            tracing::debug!("unbinding VM drive {id}: {e}");
        }
    }
}

/// A drive once checked: read-only also when its ref may not write.
pub(super) struct Checked {
    pub(super) format: Format,
    pub(super) readonly: bool,
}

/// Binds every drive's ref as a local NBD socket made as `caller`, and waits until each reaches its exporter.
pub(super) async fn bind(
    ctx: &Ctx,
    name: &str,
    specs: &[(Ref, Checked)],
    caller: &Caller,
) -> Result<(Binds, Vec<Drive>, Vec<DriveInfo>), Error> {
    let mut binds = Binds { ctx: ctx.clone(), ids: Vec::new() };
    let (mut drives, mut infos, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    let dir = if specs.is_empty() { PathBuf::new() } else { ctx.run_dir_of(caller)? };
    for (i, (r, d)) in specs.iter().enumerate() {
        let socket = dir.join(format!("vm-{}-{i}.sock", name));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::BadOptions(format!(
                "{}: longer than {MAX_SOCKET_PATH} bytes, too long for a Unix socket (a shorter --name helps)",
                socket.display()
            )));
        }
        let options = serde_json::json!({ "socket": socket });
        let started = ctx
            .binder
            .bind(r.clone(), options, false, caller.clone())
            .await
            .map_err(|e| with_context(e, &format!("drive {} ({})", i + 1, short_id(r))))?;
        binds.ids.push(started.id.clone());
        statuses.push(started.status);
        infos.push(DriveInfo {
            device: format!("vd{}", (b'a' + i as u8) as char),
            resource: short_id(r),
            exporter: r.token.issuer().to_hex()[..16].to_string(),
            bind: started.id,
            format: d.format,
            readonly: d.readonly,
        });
        drives.push(Drive { socket, format: d.format, readonly: d.readonly });
    }
    let deadline = Instant::now() + BIND_WAIT;
    for (i, status) in statuses.iter().enumerate() {
        let what = format!("drive {} ({})", i + 1, infos[i].resource);
        loop {
            match status.state() {
                State::Up => break,
                State::Refused { reason } => {
                    return Err(Error::Refused { by: "the exporting node".into(), reason: format!("{what}: {reason}") })
                }
                s if s.is_final() => return Err(Error::Unavailable(format!("{what}: the bind ended: {s}"))),
                s if Instant::now() >= deadline => {
                    return Err(Error::Unreachable(format!(
                        "{what}: its exporter was not reached within {BIND_WAIT:?} ({s})"
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    Ok((binds, drives, infos))
}

/// The first 12 hex digits of a ref's resource id, as `metac` lists resources.
pub(super) fn short_id(r: &metac_resource::Ref) -> String {
    r.token.resource().to_string().chars().take(12).collect()
}

/// `e` with `what` in front of its message, same variant.
fn with_context(e: Error, what: &str) -> Error {
    match e {
        Error::Refused { by, reason } => Error::Refused { by, reason: format!("{what}: {reason}") },
        Error::BadOptions(m) => Error::BadOptions(format!("{what}: {m}")),
        Error::NotFound(m) => Error::NotFound(format!("{what}: {m}")),
        Error::Unavailable(m) => Error::Unavailable(format!("{what}: {m}")),
        Error::Unreachable(m) => Error::Unreachable(format!("{what}: {m}")),
        Error::UnknownNode(m) => Error::UnknownNode(format!("{what}: {m}")),
        e => Error::Protocol(format!("{what}: {e}")),
    }
}
