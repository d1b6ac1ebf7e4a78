//! Who asks: the local user behind a request to the node's API, and how the node acts as that user where an action
//! touches the local system.
//!
//! The node learns its caller from the kernel (`SO_PEERCRED` and `SO_PEERGROUPS` on the API connection) and hands
//! a [`Caller`] to its handlers and to kinds. A node running as root could open any file, so what touches the local
//! system is done *as the caller* ([`Caller::act`]): an export opens its file, a bind creates its socket, on a
//! short-lived thread of its own that takes the caller's filesystem identity (supplementary groups, fsgid, fsuid)
//! with raw syscalls. Those change the calling thread alone; glibc's `setgroups` wrapper would change every thread
//! of the node, so it is not used. The kernel then checks permissions as it would for the caller, and what the
//! thread opened or created (a descriptor, a socket the caller owns) is handed back. The thread ends with the work,
//! so nothing else ever runs with the changed identity.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A local user, as the kernel names it: the effective ids of the process on the other end of the API socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// Root, with no supplementary groups: the owner of what the node does by itself, and of records made before
    /// the node knew its callers.
    pub const fn root() -> Caller {
        Caller { uid: 0, gid: 0, groups: Vec::new() }
    }

    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether `gid` is the caller's group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether acting as this caller takes a change of identity: not for root, nor for the node's own user (a node
    /// that is not root acts for root as itself, with less power than root has). Fails for anyone else when the
    /// node is not root, since it could not take their identity.
    pub fn switches(&self) -> io::Result<bool> {
        let me = euid();
        if self.uid == 0 || self.uid == me {
            return Ok(false);
        }
        if me != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("this node runs as uid {me} and cannot act as uid {} (run a shared node as root)", self.uid),
            ));
        }
        Ok(true)
    }

    /// Runs `f` with the caller's filesystem identity, so that the kernel checks every path `f` touches as it would
    /// for the caller, and what `f` creates is the caller's. See the module docs; the calling thread waits.
    pub fn act<T: Send, E: From<io::Error> + Send>(&self, f: impl FnOnce() -> Result<T, E> + Send) -> Result<T, E> {
        if !self.switches()? {
            return f();
        }
        std::thread::scope(|s| {
            let t = std::thread::Builder::new().name("metac-as-user".into()).spawn_scoped(s, || {
                self.become_on_this_thread()?;
                f()
            })?;
            t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Takes the caller's groups, fsgid and fsuid on the calling thread only. The fsuid goes last: leaving fsuid 0
    /// drops the thread's filesystem capabilities (CAP_DAC_OVERRIDE and the like), which is the point.
    fn become_on_this_thread(&self) -> io::Result<()> {
        let failed =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("cannot act as uid {}: {what}: {e}", self.uid));
        // SAFETY: the raw setgroups syscall reads `groups.len()` gid_t values from a live slice and changes the
        // credentials of the calling thread only.
        if unsafe { libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) } != 0 {
            return Err(failed("setgroups", io::Error::last_os_error()));
        }
        // SAFETY: setfsgid takes a plain id and changes the calling thread's filesystem gid only. It returns the
        // previous value whatever happens, so success is checked by asking for the current one.
        unsafe { libc::syscall(libc::SYS_setfsgid, self.gid) };
        if fsgid() != self.gid {
            return Err(failed("setfsgid", io::Error::from(io::ErrorKind::PermissionDenied)));
        }
        // SAFETY: as for setfsgid, for the filesystem uid.
        unsafe { libc::syscall(libc::SYS_setfsuid, self.uid) };
        if fsuid() != self.uid {
            return Err(failed("setfsuid", io::Error::from(io::ErrorKind::PermissionDenied)));
        }
        Ok(())
    }

    /// Where the caller's local sockets go by default: `run_dir` itself when the node acts as the caller without a
    /// change of identity, else `run_dir/uid-<uid>`, which the node makes for the caller (mode 0700, owned by the
    /// caller) in its own run directory, so that what the caller creates there is created with its own rights.
    pub fn run_dir(&self, run_dir: &Path) -> io::Result<PathBuf> {
        if !self.switches()? {
            return Ok(run_dir.to_path_buf());
        }
        let dir = run_dir.join(format!("uid-{}", self.uid));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => std::os::unix::fs::chown(&dir, Some(self.uid), Some(self.gid))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // Only the node can make entries in its run directory; still, use what is there only if it is what the
        // node made.
        let m = std::fs::symlink_metadata(&dir)?;
        if !m.is_dir() || m.uid() != self.uid || m.mode() & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{} is not a private directory of uid {}; remove it and try again",
                dir.display(),
                self.uid
            )));
        }
        Ok(dir)
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {}", self.uid)
    }
}

/// A handler learns its caller by taking a `Caller` argument: the node puts one in every request's extensions,
/// from the connection's credentials. A request without one is refused rather than served as anybody.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = crate::Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Caller, crate::Error> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| crate::Error::Refused {
            by: "this node".into(),
            reason: "the request carries no caller credentials".into(),
        })
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The calling thread's filesystem gid: setfsgid with an invalid id changes nothing and returns the current one.
fn fsgid() -> u32 {
    // SAFETY: an invalid id (-1) makes setfsgid change nothing; it returns the current filesystem gid.
    unsafe { libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 }
}

/// The calling thread's filesystem uid, as [`fsgid`].
fn fsuid() -> u32 {
    // SAFETY: an invalid id (-1) makes setfsuid change nothing; it returns the current filesystem uid.
    unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const NOBODY: u32 = 65534;

    fn nobody(groups: Vec<u32>) -> Caller {
        Caller { uid: NOBODY, gid: NOBODY, groups }
    }

    fn require_root() {
        assert_eq!(euid(), 0, "this test takes other users' identities and needs root; run it as root");
    }

    /// The kernel checks an open done with [`Caller::act`] as the caller's: what the caller may not read is
    /// refused, what one of its groups may read is opened, and nothing of the change leaks to the node's threads.
    /// Needs root; under CI it runs and fails loudly without it.
    #[test]
    fn acting_as_a_user_opens_only_what_it_may_and_changes_no_other_thread() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root's").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shared = dir.path().join("shared");
        std::fs::write(&shared, b"the group's").unwrap();
        std::os::unix::fs::chown(&shared, Some(0), Some(4242)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();

        let e = nobody(vec![]).act(|| std::fs::read(&secret)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(nobody(vec![]).act(|| std::fs::read(&shared)).is_err(), "not in the group");
        assert_eq!(nobody(vec![4242]).act(|| std::fs::read(&shared)).unwrap(), b"the group's");
        // Root and the node's own user act as the node, on its own thread.
        assert_eq!(Caller::root().act(|| std::fs::read(&secret)).unwrap(), b"root's");
        // This thread (and so every other) kept the node's identity and groups.
        assert_eq!((fsuid(), fsgid()), (0, 0));
        assert!(std::fs::read(&secret).is_ok());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert!(!groups.contains("4242") && !groups.contains("65534"), "{groups}");
    }

    /// What a caller creates through [`Caller::act`] is its own, and only where it may write; its default run
    /// directory is made for it in the node's. Needs root; under CI it runs and fails loudly without it.
    #[test]
    fn what_a_user_creates_is_its_own_and_only_where_it_may_write() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let u = nobody(vec![]);
        let e = u.act(|| std::os::unix::net::UnixListener::bind(dir.path().join("x.sock"))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "root's directory: {e}");
        let own = u.run_dir(dir.path()).unwrap();
        assert_eq!(own, dir.path().join("uid-65534"));
        assert_eq!(u.run_dir(dir.path()).unwrap(), own, "made once, then found");
        let sock = own.join("x.sock");
        let _l = u.act(|| std::os::unix::net::UnixListener::bind(&sock)).unwrap();
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "the socket is the caller's");
        assert_eq!(Caller::root().run_dir(dir.path()).unwrap(), dir.path(), "root's sockets go in the run dir");
    }

    #[test]
    fn group_membership_counts_the_primary_group_too() {
        let c = Caller { uid: 1000, gid: 100, groups: vec![27, 4242] };
        assert!(c.in_group(100) && c.in_group(4242) && !c.in_group(0));
        assert!(!c.is_root() && Caller::root().is_root());
        assert_eq!(c.to_string(), "uid 1000");
    }
}
