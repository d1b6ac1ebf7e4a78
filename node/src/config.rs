//! Where a node keeps its state and socket, and the flags it runs with.

use std::path::{Path, PathBuf};

/// A node's configuration.
#[derive(Debug, Clone)]
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
