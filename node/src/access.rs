//! Who may use the local API, and what each caller may do.
//!
//! Every API connection is checked against the kernel's word on who is at the other end (`SO_PEERCRED` for the
//! uid and gid, `SO_PEERGROUPS` for the supplementary groups): root, the node's own user, and members of the API
//! group (`metac` by default, `--api-group NAME|GID`) may use the node; anyone else gets 403 for every request,
//! whatever the socket's mode let through. The socket's mode says the same ([`crate::api::bind`]): `0660
//! root:<group>` when the group exists, `0600` otherwise.
//!
//! The [`Caller`] goes with every request into the handlers and the kinds, which act as the caller where an action
//! touches the local system ([`Caller::act`]). What is recorded for a caller (exports, the refs issued or delegated
//! for it, binds) is theirs: only they or an administrator (root, or the node's own user) may remove or revoke it,
//! and a ref is shown to its owner alone. Node-wide settings (the overlay's policy and guests) are the
//! administrator's.

use std::os::fd::AsRawFd;

use metac_resource::Caller;

use crate::error::ApiError;

/// The API group used when none is named.
pub const DEFAULT_GROUP: &str = "metac";

/// The group whose members may use the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiGroup {
    /// Its gid.
    pub gid: u32,
    /// Its name, or the gid in digits when it has none.
    pub name: String,
}

/// Resolves the API group at start: `asked` is `--api-group` (a name or a gid), `None` for the default, `metac`,
/// which may be missing (then only root may use the node). A node that is not root has no API group: it could not
/// act as other users, so only root and its own user may use it.
pub fn resolve(asked: Option<&str>) -> Result<Option<ApiGroup>, crate::Error> {
    if !is_root() {
        if let Some(g) = asked {
            tracing::warn!("--api-group {g} is ignored: a node that is not root cannot act as other users");
        }
        return Ok(None);
    }
    let name = asked.unwrap_or(DEFAULT_GROUP);
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(ApiGroup { gid, name: metac_api::group::display(gid) }));
    }
    let gid =
        metac_api::group::gid_of(name).map_err(|e| crate::Error::Api(format!("cannot look up group {name}: {e}")))?;
    match (gid, asked) {
        (Some(gid), _) => Ok(Some(ApiGroup { gid, name: name.to_string() })),
        (None, None) => {
            tracing::info!("there is no group {DEFAULT_GROUP}: only root may use this node (`groupadd {DEFAULT_GROUP}` and restart it to let that group's members in)");
            Ok(None)
        }
        (None, Some(_)) => Err(crate::Error::Api(format!(
            "--api-group {name}: there is no such group (create it with `groupadd {name}`, or give a gid)"
        ))),
    }
}

/// Who may use the API of this node.
#[derive(Debug, Clone)]
pub struct Access {
    /// The node's own user.
    pub node_uid: u32,
    /// The API group, if there is one.
    pub group: Option<ApiGroup>,
}

impl Access {
    /// The rules for a node running as the current user with `group`.
    pub fn new(group: Option<ApiGroup>) -> Access {
        Access { node_uid: euid(), group }
    }

    /// Whether `c` may use the API, or why not (the body of the 403 every request of the connection gets).
    pub fn admits(&self, c: &Caller) -> Result<(), String> {
        if c.uid == 0 || c.uid == self.node_uid {
            return Ok(());
        }
        match &self.group {
            Some(g) if c.in_group(g.gid) => Ok(()),
            Some(g) => Err(format!(
                "uid {} is not root or in group {}: only root and members of that group may use this node (an \
                 administrator adds a user with `usermod -aG {} USER`; the user then logs in again)",
                c.uid, g.name, g.name
            )),
            None => Err(format!(
                "uid {} is not root or in group {DEFAULT_GROUP}: this node has no API group, so only root may use \
                 it (an administrator creates one with `groupadd {DEFAULT_GROUP}` and restarts the node)",
                c.uid
            )),
        }
    }
}

/// The caller at the other end of a Unix socket, as the kernel recorded it when it connected, and its pid.
pub fn peer(s: &impl AsRawFd) -> std::io::Result<(Caller, i32)> {
    let fd = s.as_raw_fd();
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is a ucred of that size, and sets `len`.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the buffer of `groups`, which holds that many, and
        // sets `len` to the bytes written (or, with ERANGE, to the bytes it needs).
        let r = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len)
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(needed);
            break;
        }
        let e = std::io::Error::last_os_error();
        // The kernel caps supplementary groups at 65536.
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() || needed > 65536 {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
    Ok((Caller { uid: cred.uid, gid: cred.gid, groups }, cred.pid))
}

/// Whether `c` administers the node: root, or the user the node runs as.
pub fn is_admin(c: &Caller) -> bool {
    c.uid == 0 || c.uid == euid()
}

/// Refuses anyone but an administrator a node-wide setting (`what`).
pub fn admin_only(c: &Caller, what: &str) -> Result<(), ApiError> {
    if is_admin(c) {
        return Ok(());
    }
    Err(ApiError::refused(format!(
        "{what} is a setting of the whole node: only root may change it, and {c} is not root"
    )))
}

/// Refuses anyone but `owner` or an administrator to change or remove `what`, a thing `owner` made.
pub fn owner_only(c: &Caller, owner: u32, what: &str) -> Result<(), ApiError> {
    if c.uid == owner || is_admin(c) {
        return Ok(());
    }
    Err(ApiError::refused(format!(
        "{what} belongs to uid {owner}: only that user or root may change it, and {c} is neither"
    )))
}

/// Whether `c` may see a ref (a capability) that `owner` holds.
pub fn may_see(c: &Caller, owner: u32) -> bool {
    c.uid == owner || is_admin(c)
}

fn is_root() -> bool {
    euid() == 0
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller { uid, gid, groups: groups.to_vec() }
    }

    #[test]
    fn root_the_nodes_user_and_members_of_the_group_are_admitted() {
        let a = Access { node_uid: 0, group: Some(ApiGroup { gid: 4242, name: "metac".into() }) };
        a.admits(&user(0, 0, &[])).unwrap();
        a.admits(&user(1000, 1000, &[27, 4242])).unwrap();
        a.admits(&user(1000, 4242, &[])).unwrap();
        let e = a.admits(&user(1001, 1001, &[27])).unwrap_err();
        assert!(e.contains("uid 1001 is not root or in group metac"), "{e}");
        assert!(e.contains("usermod -aG metac USER"), "{e}");
        let alone = Access { node_uid: 1000, group: None };
        alone.admits(&user(1000, 1000, &[])).unwrap();
        alone.admits(&user(0, 0, &[])).unwrap();
        let e = alone.admits(&user(1001, 4242, &[4242])).unwrap_err();
        assert!(e.contains("is not root or in group metac") && e.contains("no API group"), "{e}");
    }

    /// The kernel's record of a connection's peer: this process's own ids and groups.
    #[test]
    fn the_peer_of_a_connection_is_who_the_kernel_says() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, pid) = peer(&a).unwrap();
        // SAFETY: these getters have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((c.uid, c.gid, pid as u32), (uid, gid, std::process::id()));
        // SAFETY: with a size of 0, getgroups only counts.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut mine = vec![0; n as usize];
        // SAFETY: `mine` holds `n` gids.
        unsafe { libc::getgroups(n, mine.as_mut_ptr()) };
        let (mut got, mut want) = (c.groups.clone(), mine);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
