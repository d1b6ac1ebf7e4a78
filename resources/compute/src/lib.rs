//! metac-compute: the `compute` kind. Containers (`metac run`) built from Linux namespaces, cgroups (v1, v2 and
//! hybrid hierarchies), a PTY or pipes, bounded logs, and mounts of local paths or fs refs (DESIGN section 7).
//!
//! - [`spec`]: what a container is (the library API: a process and its environment), parsed and checked;
//! - [`launch`]: what its first process does between clone and exec, through the [`sys::Syscall`] seam;
//! - [`shim`]: the small process that is each container's parent, holds its terminal and writes its logs;
//! - [`manager`]: the node's side (create, list, signal, remove, re-adopt after a restart), and [`api`] its routes;
//! - [`idmap`]: the user namespace of a rootless container (its owner, and their subordinate ids);
//! - [`cgroup`]: memory, cpu and pids limits and figures on whichever hierarchy the host has;
//! - [`security`]: the default capability set and seccomp filter (docker's);
//! - [`logs`]: a container's output kept in bounded, rotated files;
//! - [`stdio`]: the framing of a container's input, output, window size and exit on an attached stream.

pub mod api;
pub mod cgroup;
pub mod idmap;
pub mod launch;
pub mod logs;
pub mod manager;
pub mod security;
pub mod shim;
pub mod spec;
pub mod stdio;
pub mod sys;

use std::sync::{Arc, Mutex};

use metac_resource::{BoxFuture, Caller, Ctx, Error, ExportSpec, Exporter, Kind, Prepared, Ref, ResourceKind, Session};
use serde::{Deserialize, Serialize};

pub use manager::Manager;
pub use spec::Spec;

/// The wire protocol of compute binds (remote launch).
pub const PROTOCOL: &str = "metac-run/0";

/// Options of compute exports and binds: none yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoOptions {}

/// The `compute` kind: this node's containers.
#[derive(Default)]
pub struct Compute {
    /// The running node's containers; a node started again in the same process gets a new one.
    manager: Mutex<Option<Arc<Manager>>>,
}

impl Compute {
    /// The node's containers (made on first use, with the node's context).
    pub fn manager(&self, ctx: &Ctx) -> Arc<Manager> {
        let mut m = self.manager.lock().expect("manager lock");
        Arc::clone(m.get_or_insert_with(|| Arc::new(Manager::new(ctx.clone()))))
    }
}

const NOT_YET: &str = "compute is not exported to other nodes in this build: remote launch (`metac run --on PEER`) \
                       will do that; run containers on this node with `metac run`";

impl ResourceKind for Compute {
    type ExportOptions = NoOptions;
    type BindOptions = NoOptions;

    fn kind(&self) -> Kind {
        Kind::Compute
    }

    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn prepare(&self, _: &str, _: Option<NoOptions>, _: &Caller) -> Result<Prepared<NoOptions>, Error> {
        Err(Error::BadOptions(NOT_YET.into()))
    }

    fn open<'a>(&'a self, _: ExportSpec<NoOptions>, _: &'a Ctx) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async { Err(Error::Unavailable(NOT_YET.into())) })
    }

    fn bind(&self, _: &Ref, _: NoOptions, _: &Caller, _: &Ctx) -> Result<Box<dyn Session>, Error> {
        Err(Error::BadOptions(NOT_YET.into()))
    }

    fn routes(&self, ctx: Ctx) -> axum::Router {
        api::routes(self.manager(&ctx))
    }

    fn recover(&self, ctx: &Ctx) {
        self.manager(ctx).recover();
    }

    fn stop(&self) {
        if let Some(m) = self.manager.lock().expect("manager lock").take() {
            m.let_go();
        }
    }
}
