//! Where a node keeps its state and socket, and the flags it runs with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metac_resource::{Clock, Plugin, SystemClock};

/// A node's configuration.
#[derive(Clone)]
pub struct Config {
    /// State directory (identity key, store).
    pub state: PathBuf,
    /// Local API socket.
    pub socket: PathBuf,
    /// Mesh port (TCP and UDP); 0 picks one.
    pub port: u16,
    /// Bootstrap peers (`--peer`).
    pub peers: Vec<String>,
    /// mDNS discovery on.
    pub mdns: bool,
    /// Private mesh key file.
    pub mesh_key: Option<PathBuf>,
    /// The overlay network.
    pub overlay: crate::overlay::OverlayConfig,
    /// The clock tokens expire by (tests move a manual one).
    pub clock: Arc<dyn Clock>,
    /// The kinds to serve [default: every kind of this build, [`crate::kinds::builtin`]].
    pub kinds: Option<Vec<Arc<dyn Plugin>>>,
    /// The group whose members may use the API, by name or gid (`--api-group`) [default: `metac`, if it exists];
    /// see [`crate::access`].
    pub api_group: Option<String>,
    /// The direct transport for resource streams (`--direct-port`, `--no-direct`): `None` sends every bind over
    /// mesh streams; `Some(port)` listens there (0, or a port in use, picks a free one) [default: the mesh port + 1].
    pub direct_port: Option<u16>,
    /// The most bytes the fs kind's content cache of read-only files holds (`--cache-size`) [default: 2 GiB].
    pub cache_size: Option<u64>,
}

impl Config {
    /// A configuration with the defaults for everything but the state directory and the socket.
    pub fn new(state: PathBuf, socket: PathBuf) -> Config {
        Config {
            state,
            socket,
            port: 4747,
            peers: vec![],
            mdns: true,
            mesh_key: None,
            overlay: Default::default(),
            clock: Arc::new(SystemClock),
            kinds: None,
            api_group: None,
            cache_size: None,
            direct_port: Some(4748),
        }
    }

    /// Where kinds put their local sockets (a `file bind`'s NBD endpoint): `metac-binds` beside the API socket,
    /// made by the node ([`run_dir`]); other local users' sockets go in directories of their own in it.
    pub fn run_dir(&self) -> PathBuf {
        self.socket.parent().unwrap_or(Path::new("/tmp")).join("metac-binds")
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("state", &self.state)
            .field("socket", &self.socket)
            .field("port", &self.port)
            .field("peers", &self.peers)
            .field("mdns", &self.mdns)
            .field("mesh_key", &self.mesh_key)
            .field("overlay", &self.overlay)
            .field("api_group", &self.api_group)
            .field("cache_size", &self.cache_size)
            .field("direct_port", &self.direct_port)
            .finish_non_exhaustive()
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `/var/lib/metac` as root, `$XDG_DATA_HOME/metac` (or `~/.local/share/metac`) otherwise.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/metac");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&d).join("metac");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".local/share/metac")
}

/// The API socket: `$METAC_SOCKET`, else `/run/metac/metac.sock` as root, `$XDG_RUNTIME_DIR/metac.sock` otherwise
/// (or `metac.sock` in the default state dir when there is no runtime dir).
pub fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("METAC_SOCKET").filter(|s| !s.is_empty()) {
        return PathBuf::from(s);
    }
    if is_root() {
        return PathBuf::from("/run/metac/metac.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => Path::new(&d).join("metac.sock"),
        None => default_state_dir().join("metac.sock"),
    }
}

/// Makes `dir` if it is missing, with mode 0700: the store holds tokens that grant access, so the node's
/// directories are its own (like ~/.ssh). An existing directory is never chmodded (`--state /home/alice` must not
/// lock Alice out of her home); the key and the store in it are 0600 whatever the directory's mode, and a
/// directory other users can list gets a warning saying what to do.
pub fn private_dir(dir: &Path) -> Result<(), crate::Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| crate::Error::StateDir { path: dir.display().to_string(), source };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(err(std::io::Error::other("it exists and is not a directory"))),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{} is open to other users (mode {mode:o}); the node's files in it are private, but `chmod 700` \
                     it or give the node a directory of its own",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
            // `recursive` applies the mode to the last component only after the umask: make sure.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// Makes the node's run directory (mode 0711: root's sockets in it are 0600, and the directories it makes for other
/// users are 0700 and theirs, so others may pass through it to their own, not list it). It is the node's own, named
/// by the node: one it finds owned by its user is given that mode too; one owned by anyone else is refused.
pub fn run_dir(dir: &Path) -> Result<(), crate::Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let err = |source| crate::Error::StateDir { path: dir.display().to_string(), source };
    passable_dirs(dir).map_err(err)?;
    let m = std::fs::symlink_metadata(dir).map_err(err)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me {
        return Err(err(std::io::Error::other(format!(
            "it is not a directory of the node's user (uid {me}); remove it, or give the node another --socket"
        ))));
    }
    if m.mode() & 0o777 != 0o711 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(err)?;
    }
    Ok(())
}

/// Makes `dir` and the missing directories above it (`/run/metac` for a system node), each mode 0711 whatever the
/// umask: other users may pass through them, to the API socket and to their own run directory, whose own modes
/// guard them, but not list them. Directories that exist are left as they are.
pub fn passable_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        passable_dirs(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Attack (issue 10, finding 8): `--state DIR` chmodded whatever directory it was given.
    #[test]
    fn state_dirs_are_made_private_and_existing_ones_are_never_chmodded() {
        let t = tempfile::tempdir().unwrap();
        let made = t.path().join("a/b/state");
        private_dir(&made).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o700);
        private_dir(&made).unwrap();
        let shared = t.path().join("home");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&shared).unwrap();
        assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777, 0o755, "left as it was");
        let file = t.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(private_dir(&file).unwrap_err().to_string().contains("not a directory"));
    }

    #[test]
    fn the_run_dir_lets_users_through_to_their_own_and_not_list_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = t.path().join("run/metac/metac-binds");
        run_dir(&dir).unwrap();
        for d in [t.path().join("run"), t.path().join("run/metac"), dir.clone()] {
            assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o711, "{}", d.display());
        }
        assert_eq!(std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777, 0o700, "left as it was");
        // One an earlier version made private is the node's own: it gets the mode too.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        run_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o711);
        let file = t.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(run_dir(&file).unwrap_err().to_string().contains("not a directory of the node's user"));
    }
}
