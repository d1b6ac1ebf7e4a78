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
pub mod remote;
pub mod security;
pub mod shim;
pub mod spec;
pub mod stdio;
pub mod sys;

use std::sync::{Arc, Mutex};

use metac_resource::{BoxFuture, Caller, Ctx, Error, ExportSpec, Exporter, Kind, Prepared, Ref, ResourceKind, Session};
use serde::{Deserialize, Serialize};

pub use manager::Manager;
pub use remote::caller::Remote;
pub use spec::Spec;

/// The wire protocol of compute binds (remote launch, [`remote`]).
pub const PROTOCOL: &str = "metac-run/1";

/// Options of a compute export (`metac compute export`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeExport {
    /// Every member of this private mesh may run here: the ref goes in the node's advert (`--mesh`).
    #[serde(default)]
    pub mesh: bool,
}

/// Options of compute binds: there are none (a compute ref is used by `metac run --on`, not bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoOptions {}

/// The `compute` kind: this node's containers, and its runs on other nodes.
#[derive(Default)]
pub struct Compute {
    /// The running node's containers and remote runs; a node started again in the same process gets new ones.
    state: Mutex<Option<(Arc<Manager>, Arc<Remote>)>>,
}

impl Compute {
    /// The node's containers (made on first use, with the node's context).
    pub fn manager(&self, ctx: &Ctx) -> Arc<Manager> {
        self.state(ctx).0
    }

    fn state(&self, ctx: &Ctx) -> (Arc<Manager>, Arc<Remote>) {
        let mut m = self.state.lock().expect("compute lock");
        let (a, b) = m.get_or_insert_with(|| (Arc::new(Manager::new(ctx.clone())), Arc::new(Remote::new(ctx.clone()))));
        (Arc::clone(a), Arc::clone(b))
    }
}

const NO_BIND: &str = "a compute ref is not bound: run on its node with `metac run --on NAME ...` after \
                       `metac ref save NAME REF`";

impl ResourceKind for Compute {
    type ExportOptions = ComputeExport;
    type BindOptions = NoOptions;

    fn kind(&self) -> Kind {
        Kind::Compute
    }

    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn prepare(
        &self,
        _: &str,
        options: Option<ComputeExport>,
        caller: &Caller,
    ) -> Result<Prepared<ComputeExport>, Error> {
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "node".into());
        let name = if caller.is_root() { host } else { format!("{host}-{}", caller.uid) };
        Ok(Prepared { options: options.unwrap_or_default(), source: format!("containers as {caller}"), name })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<ComputeExport>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async move {
            let exporter = remote::serve::ComputeExporter {
                manager: self.manager(ctx),
                owner: spec.owner,
                mesh: spec.options.mesh,
            };
            Ok(Arc::new(exporter) as Arc<dyn Exporter>)
        })
    }

    fn bind(&self, _: &Ref, _: NoOptions, _: &Caller, _: &Ctx) -> Result<Box<dyn Session>, Error> {
        Err(Error::BadOptions(NO_BIND.into()))
    }

    fn routes(&self, ctx: Ctx) -> axum::Router {
        let (m, r) = self.state(&ctx);
        api::routes(m, r)
    }

    fn recover(&self, ctx: &Ctx) {
        self.manager(ctx).recover();
    }

    fn stop(&self) {
        if let Some((m, _)) = self.state.lock().expect("compute lock").take() {
            m.let_go();
        }
    }
}
