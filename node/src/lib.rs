//! metac-node: the daemon. It wires the identity, the store, the mesh driver, the resource registry and the local
//! API together, and owns the lifecycle of exports, tokens and live binds.
//!
//! Module map: [`config`] (paths and flags), [`access`] (who may use the API, and what each caller may do),
//! [`store`] (redb), [`kinds`] (the resource kinds of this build, one
//! line each), [`node`] (the wiring), [`exports`] (exports and their open exporters), [`host`] (what kinds ask of the node: exports for a run, saved refs, peers), [`serve`] (inbound binds:
//! token checks, cuts on revocation and expiry), [`binds`] (this node's binds as sessions), [`refs`] (tokens,
//! delegation, revocation), [`transport`] (where resource streams travel), [`overlay`] (the fd6f network's
//! wiring), [`api`] (HTTP + JSON on a Unix socket), [`rpc`] (node-to-node requests), [`trim`] (memory an idle
//! node gives back), [`error`].

pub mod access;
pub mod api;
pub mod binds;
pub mod config;
pub mod error;
pub mod exports;
pub mod host;
pub mod kinds;
pub mod node;
pub mod overlay;
pub mod policy;
pub mod refs;
pub mod rpc;
pub mod serve;
pub mod store;
pub mod transport;
pub mod trim;

pub use config::Config;
pub use node::Node;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Identity(#[from] metac_mesh::identity::Error),
    #[error("{0}")]
    Store(#[from] store::Error),
    #[error("{0}")]
    Mesh(#[from] metac_mesh::net::Error),
    #[error("{0}")]
    Api(String),
    #[error("cannot read the mesh key {path}: {reason}")]
    MeshKey { path: String, reason: String },
    #[error("state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
}

/// Runs a node until `cancel` fires (SIGTERM or SIGINT in the binary). `ready` is called once the API answers.
pub async fn run(config: Config, cancel: CancellationToken, ready: impl FnOnce(&Node)) -> Result<(), Error> {
    raise_fd_limit();
    trim::large_buffers_from_mmap();
    let group = access::resolve(config.api_group.as_deref())?;
    let node = Node::start(&config, cancel.clone()).await?;
    let listener = api::bind(&config.socket, group.as_ref())?;
    tracing::info!(
        key = %node.me(),
        overlay = %node.me().overlay_addr(),
        socket = %config.socket.display(),
        api_group = group.as_ref().map(|g| g.name.as_str()).unwrap_or("(none: root only)"),
        "metac node ready"
    );
    ready(&node);
    let access = access::Access::new(group);
    let api = tokio::spawn(api::serve(listener, Arc::clone(&node), access, cancel.clone()));
    let trim = tokio::spawn(trim::run(cancel.clone()));
    cancel.cancelled().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    let _ = api.await;
    let _ = trim.await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Raises the limit of open files: every bind, peer connection and local endpoint holds descriptors (an fs bind one
/// per inode its binder holds, so a `find` over a tree of 100k files holds 100k), and the default soft limit (1024)
/// is far below what the per-peer limits allow in all. Root raises the hard limit too, up to the kernel's
/// `fs.nr_open` (and 2^20); anyone else raises the soft limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is, and has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
    let ceiling = nr_open.unwrap_or(lim.rlim_max).min(1 << 20);
    if lim.rlim_max < ceiling {
        let new = libc::rlimit { rlim_cur: ceiling, rlim_max: ceiling };
        // SAFETY: setrlimit reads one rlimit struct; raising the hard limit takes CAP_SYS_RESOURCE, and without it
        // the call fails (EPERM) with no effect.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            tracing::debug!(from = lim.rlim_cur, to = ceiling, "raised the open-files limit (hard and soft)");
            return;
        }
    }
    let want = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur < want {
        let new = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads one rlimit struct; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            tracing::debug!(from = lim.rlim_cur, to = want, "raised the open-files limit");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The soft limit goes up to the hard one, and with CAP_SYS_RESOURCE (root on a normal host) both go up to the
    /// kernel's ceiling, whatever hard limit the node was started with. Sandboxes without that capability (this
    /// lab's) keep their hard limit: there only the first half is tested.
    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one_and_with_cap_sys_resource_to_the_kernels_ceiling() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        const CAP_SYS_RESOURCE: u32 = 24;
        let can_raise_hard = u64::from_str_radix(eff, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0;
        let limit = || {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
            lim
        };
        let before = limit();
        super::raise_fd_limit();
        let after = limit();
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap().trim().parse().unwrap();
        let ceiling = nr_open.min(1 << 20);
        if can_raise_hard {
            assert_eq!((after.rlim_cur, after.rlim_max), (ceiling, ceiling.max(before.rlim_max)));
        } else {
            eprintln!("no CAP_SYS_RESOURCE: the hard limit stays {}", before.rlim_max);
            assert_eq!((after.rlim_cur, after.rlim_max), (before.rlim_max.min(1 << 20), before.rlim_max));
        }
    }
}
