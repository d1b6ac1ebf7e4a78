//! The VM routes, merged into the file kind's, and the request and answer types the CLI shares.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/vm` [`StartReq`] | bind the drives, start qemu; answers the VM's [`VmInfo`] once qemu is up |
//! | `GET /v1/vm?all=true` | the caller's VMs (root: all), running ones unless `all` |
//! | `GET /v1/vm/{name}` | one VM |
//! | `POST /v1/vm/{name}/stop` [`StopReq`] | power button, then quit, then kill; answers once it ended |
//! | `POST /v1/vm/{name}/wait` | answers once the VM ended |
//! | `POST /v1/vm/{name}/console` | upgrade to the serial console: raw bytes both ways, the recent output first |
//!
//! The console is the same mechanism as a container's attach (an HTTP upgrade on the node's socket), carrying
//! the serial line's bytes as they are: a serial port has no window size, signals or separate streams to frame.
//! The connection ends when the VM does; the client then asks `wait` how it ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use metac_api::server::Json;
use metac_resource::{Caller, Error};
use serde::{Deserialize, Serialize};

use super::qemu::{Accel, DriveSpec, Format};
use super::VmManager;

/// `POST /v1/vm`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartReq {
    /// Its name [default: the first free `vmN`].
    #[serde(default)]
    pub name: Option<String>,
    /// Its disks, `/dev/vda` first.
    #[serde(default)]
    pub drives: Vec<DriveSpec>,
    /// Guest memory in MiB [default: 1024].
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Virtual CPUs [default: 2].
    #[serde(default)]
    pub cpus: Option<u32>,
    /// A kernel to boot, an absolute path the caller may read.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Its initrd.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Its command line [default: `console=ttyS0`].
    #[serde(default)]
    pub append: Option<String>,
    /// A CD-ROM image.
    #[serde(default)]
    pub cdrom: Option<PathBuf>,
    /// KVM or TCG [default: KVM when this node can use it].
    #[serde(default)]
    pub accel: Option<Accel>,
    /// Directories shared with the guest over virtio-9p (root only).
    #[serde(default)]
    pub shares: Vec<super::qemu::Share>,
}

/// `POST /v1/vm/{name}/stop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopReq {
    /// Kill at once instead of asking the guest to power off.
    #[serde(default)]
    pub force: bool,
    /// Seconds the guest gets to power off before qemu quits [default: 30].
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// A VM, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Its name.
    pub name: String,
    /// `running`, `stopping`, `exited` or `failed`.
    pub state: String,
    /// The uid of the user who started it.
    pub owner: u32,
    /// qemu's pid.
    pub pid: u32,
    /// KVM or TCG.
    pub accel: Accel,
    /// Why TCG, when it is.
    #[serde(default)]
    pub accel_reason: Option<String>,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Its drives.
    pub drives: Vec<DriveInfo>,
    /// When it started, Unix seconds.
    pub started: u64,
    /// Seconds it has run (until it ended).
    pub uptime: u64,
    /// How it ended, once it has.
    pub exit: Option<VmExit>,
}

/// One drive of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveInfo {
    /// The guest's device (`vda`, `vdb`, ...).
    pub device: String,
    /// The first 12 hex digits of the file resource's id.
    pub resource: String,
    /// The first 16 hex digits of its exporter's key.
    pub exporter: String,
    /// The id of the bind behind it (`metac binds`), unbound when the VM ends.
    pub bind: String,
    /// The image's format.
    pub format: Format,
    /// Read-only for the guest.
    pub readonly: bool,
}

/// How a VM's qemu ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExit {
    /// qemu's exit code (0 when the guest powered off).
    pub code: Option<i32>,
    /// The signal that ended qemu.
    pub signal: Option<i32>,
    /// `vm stop` ended it.
    pub stopped: bool,
    /// Why qemu failed, with the end of what it printed; `None` when it did not.
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AllQuery {
    #[serde(default)]
    all: bool,
}

/// The routes, on the node's VMs.
pub fn routes(m: Arc<VmManager>) -> Router {
    Router::new()
        .route("/v1/vm", post(start).get(list))
        .route("/v1/vm/{name}", get(inspect))
        .route("/v1/vm/{name}/stop", post(stop))
        .route("/v1/vm/{name}/wait", post(wait))
        .route("/v1/vm/{name}/console", post(console))
        .with_state(m)
}

type M = State<Arc<VmManager>>;

/// Runs `f` to its end even if the client goes away meanwhile: a start half done would leave a qemu nobody
/// lists, a stop half done a VM with its power button pressed and nothing after.
async fn to_the_end<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<Json<T>, Error> {
    match tokio::spawn(f).await {
        Ok(r) => r.map(Json),
        Err(e) => Err(Error::Io(std::io::Error::other(format!("the request's task failed: {e}")))),
    }
}

async fn start(State(m): M, caller: Caller, Json(req): Json<StartReq>) -> Result<Json<VmInfo>, Error> {
    to_the_end(async move { m.start(req, caller).await }).await
}

async fn list(State(m): M, caller: Caller, Query(q): Query<AllQuery>) -> Json<Vec<VmInfo>> {
    Json(m.list(&caller, q.all))
}

async fn inspect(State(m): M, caller: Caller, Path(name): Path<String>) -> Result<Json<VmInfo>, Error> {
    m.get(&name, &caller).map(Json)
}

async fn stop(
    State(m): M,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<StopReq>,
) -> Result<Json<VmInfo>, Error> {
    let timeout = req.timeout.map_or(super::DEFAULT_STOP_TIMEOUT, |s| Duration::from_secs(s.min(3600)));
    to_the_end(async move { m.stop(&name, &caller, req.force, timeout).await }).await
}

async fn wait(State(m): M, caller: Caller, Path(name): Path<String>) -> Result<Json<VmInfo>, Error> {
    m.wait(&name, &caller).await.map(Json)
}

/// Checks the VM, then serves its console on the upgraded connection.
async fn console(State(m): M, caller: Caller, Path(name): Path<String>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The body (`{}`) carries nothing; read it so the connection is clean for the upgrade.
    let _ = axum::body::to_bytes(body, metac_api::MAX_REQUEST).await;
    let attached = match m.console(&name, &caller) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let mut req = Request::from_parts(parts, ());
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => attached.serve(TokioIo::new(up)).await,
            Err(e) => tracing::debug!("console of vm {name}: the upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, metac_api::client::UPGRADE_PROTOCOL)
        .body(Body::empty())
        .expect("response")
}
