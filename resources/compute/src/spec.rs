//! What a container is made of, as the library API and the CLI describe it: a [`Process`] (args, env, working
//! directory, user, terminal) and its environment (a root, [`Mount`]s of local paths, tmpfs or fs refs, limits,
//! network, capabilities, restart policy). The original metac's launcher took the same two halves
//! (`ProcessConfig` and `LaunchConfig`).
//!
//! Everything here is checked before anything runs ([`Spec::check`]), and the command-line forms (`--mount
//! /data=local:/srv/data:ro`, `--memory 512M`, `--restart on-failure:3`) are parsed here, so that the CLI and the
//! node refuse the same things with the same words.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cgroup::Limits;

/// Most arguments, environment entries or mounts a container may have: a bound on what a request can make the
/// node hold.
pub const MAX_ITEMS: usize = 4096;
/// Longest argument, environment entry or path, in bytes.
pub const MAX_LEN: usize = 128 * 1024;

/// A spec the node refuses, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

/// The process a container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// The command and its arguments; the command is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, on top of a default `PATH`, `HOME`, `HOSTNAME` and, with a terminal, `TERM`.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory inside the container (absolute). With the host's root, it is also mounted writable.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The user and group to run as inside the container; root (0:0) by default.
    #[serde(default)]
    pub user: Option<User>,
    /// A pseudo-terminal for stdin, stdout and stderr (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for an attached client (`-i`); without it stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's size at the start (rows, columns).
    #[serde(default)]
    pub size: Option<(u16, u16)>,
}

/// A user inside the container, as numbers (`-u UID[:GID]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id; the user id when not given.
    pub gid: u32,
}

impl FromStr for User {
    type Err = Error;

    fn from_str(s: &str) -> Result<User, Error> {
        let num = |v: &str, what: &str| {
            v.parse::<u32>()
                .map_err(|_| Error(format!("bad user {s:?}: the {what} must be a number (UID[:GID]), not {v:?}")))
        };
        match s.split_once(':') {
            Some((u, g)) => Ok(User { uid: num(u, "user id")?, gid: num(g, "group id")? }),
            None => {
                let uid = num(s, "user id")?;
                Ok(User { uid, gid: uid })
            }
        }
    }
}

/// Where a mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A path on this host (`local:/srv/data`), bound as the caller sees it.
    Local(PathBuf),
    /// An empty tmpfs (`tmpfs:`), gone with the container.
    Tmpfs,
    /// An fs ref (`ref://[fd6f:...]/TOKEN`), bound through the fs kind for the container's life.
    Ref(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local(p) => write!(f, "local:{}", p.display()),
            Source::Tmpfs => f.write_str("tmpfs:"),
            Source::Ref(r) => f.write_str(r),
        }
    }
}

/// One mount of a container (`--mount PATH=URI[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Where it appears inside the container (absolute; `/` replaces the root).
    pub target: PathBuf,
    /// What appears there.
    pub source: Source,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl FromStr for Mount {
    type Err = Error;

    fn from_str(s: &str) -> Result<Mount, Error> {
        let Some((target, uri)) = s.split_once('=') else {
            return bad(format!("bad mount {s:?}: use PATH=URI[:ro], e.g. /data=local:/srv/data:ro"));
        };
        let (uri, read_only) = match uri.strip_suffix(":ro") {
            Some(u) => (u, true),
            None => (uri.strip_suffix(":rw").unwrap_or(uri), false),
        };
        let source = if let Some(p) = uri.strip_prefix("local:") {
            Source::Local(PathBuf::from(p))
        } else if uri == "tmpfs:" || uri == "tmpfs" {
            Source::Tmpfs
        } else if uri.starts_with("ref://") {
            Source::Ref(uri.to_string())
        } else {
            return bad(format!(
                "bad mount {s:?}: the source {uri:?} is not local:/PATH, tmpfs: or an fs ref (ref://[...]/TOKEN)"
            ));
        };
        let m = Mount { target: PathBuf::from(target), source, read_only };
        m.check()?;
        Ok(m)
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}{}", self.target.display(), self.source, if self.read_only { ":ro" } else { "" })
    }
}

impl Mount {
    fn check(&self) -> Result<(), Error> {
        absolute_clean(&self.target, "mount target")?;
        if let Source::Local(p) = &self.source {
            absolute_clean(p, "local mount source")?;
        }
        if self.source == Source::Tmpfs && self.target == Path::new("/") {
            return bad("a tmpfs cannot be the root (/): use --rootfs DIR or --mount /=local:DIR");
        }
        Ok(())
    }
}

/// A path the container names must be absolute, without `..`, and bounded.
fn absolute_clean(p: &Path, what: &str) -> Result<(), Error> {
    if !p.is_absolute() {
        return bad(format!("the {what} {} is not an absolute path", p.display()));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return bad(format!("the {what} {} has a `..` in it", p.display()));
    }
    if p.as_os_str().len() > 4096 {
        return bad(format!("the {what} is longer than 4096 bytes"));
    }
    Ok(())
}

/// The container's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A network namespace of its own with only `lo` (the default).
    #[default]
    None,
    /// The host's network.
    Host,
}

impl FromStr for Network {
    type Err = Error;

    fn from_str(s: &str) -> Result<Network, Error> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            _ => bad(format!("bad network {s:?}: use none or host")),
        }
    }
}

/// What happens when the container's process ends (`--restart`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Never restarted.
    #[default]
    No,
    /// Restarted when it exits with a code other than 0, at most `max` times when given.
    OnFailure { max: Option<u32> },
    /// Always restarted, until stopped.
    Always,
}

impl FromStr for Restart {
    type Err = Error;

    fn from_str(s: &str) -> Result<Restart, Error> {
        match s {
            "no" => Ok(Restart::No),
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure { max: None }),
            _ => match s.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => Ok(Restart::OnFailure { max: Some(n) }),
                _ => bad(format!("bad restart policy {s:?}: use no, on-failure, on-failure:N or always")),
            },
        }
    }
}

impl Restart {
    /// Whether a process that ended with `status` (the shell's number) after `restarts` restarts starts again.
    pub fn again(self, status: i32, restarts: u32) -> bool {
        match self {
            Restart::No => false,
            Restart::Always => true,
            Restart::OnFailure { max } => status != 0 && max.is_none_or(|m| restarts < m),
        }
    }
}

/// A container: its process and its environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Its name (`--name`), unique on the node; one is made up when not given.
    #[serde(default)]
    pub name: Option<String>,
    /// What runs.
    pub process: Process,
    /// The root: a directory on this host (`--rootfs`). Without one (and without a mount at `/`) the container
    /// sees the host's root read-only.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Mounts, in order.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Its hostname; the container's name by default.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Memory, cpu and pids limits.
    #[serde(default)]
    pub limits: Limits,
    /// Its network.
    #[serde(default)]
    pub network: Network,
    /// A read-only root (with `--rootfs`; the host's root is always read-only).
    #[serde(default)]
    pub read_only: bool,
    /// Capabilities added to the default set (`--cap-add`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities taken from the default set (`--cap-drop`).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// The restart policy.
    #[serde(default)]
    pub restart: Restart,
    /// Removed (state, logs, cgroup) when it ends (`--rm`).
    #[serde(default)]
    pub remove: bool,
}

impl Spec {
    /// Checks everything that can be checked without touching the system, with a message that names the culprit.
    pub fn check(&self) -> Result<(), Error> {
        self.process.check()?;
        if self.mounts.len() > MAX_ITEMS {
            return bad(format!("more than {MAX_ITEMS} mounts"));
        }
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        if let Some(h) = &self.hostname {
            if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
                return bad(format!("bad hostname {h:?}: up to 64 letters, digits, '-' and '.'"));
            }
        }
        if let Some(r) = &self.rootfs {
            absolute_clean(r, "rootfs")?;
            if self.mounts.iter().any(|m| m.target == Path::new("/")) {
                return bad("both --rootfs and a mount at / name the root: give one");
            }
        }
        for m in &self.mounts {
            m.check()?;
        }
        let l = &self.limits;
        if let Some(m) = l.memory {
            if m < 4 << 20 {
                return bad(format!("a memory limit of {m} bytes is too small: at least 4M"));
            }
        }
        if let Some(c) = l.cpus {
            if !(c.is_finite() && c > 0.0 && c <= 1024.0) {
                return bad(format!("bad cpus {c}: a number of cpus above 0, such as 0.5 or 2"));
            }
        }
        if l.pids == Some(0) {
            return bad("a pids limit of 0 leaves no room for the command itself");
        }
        Ok(())
    }

    /// The root the container gets: `--rootfs`, a mount at `/`, or none (the host's root, read-only).
    pub fn root(&self) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.target == Path::new("/"))
    }
}

impl Process {
    /// Checks what can be checked without running it, with a message that names the culprit.
    pub fn check(&self) -> Result<(), Error> {
        let p = self;
        if p.args.is_empty() || p.args[0].is_empty() {
            return bad("no command to run");
        }
        if p.args.len() > MAX_ITEMS || p.env.len() > MAX_ITEMS {
            return bad(format!("more than {MAX_ITEMS} arguments or environment entries"));
        }
        for a in p.args.iter().chain(&p.env) {
            if a.len() > MAX_LEN {
                return bad(format!("an argument or environment entry is longer than {MAX_LEN} bytes"));
            }
            if a.contains('\0') {
                return bad(format!("{a:?} has a NUL byte in it"));
            }
        }
        for e in &p.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return bad(format!("bad environment entry {e:?}: use KEY=VALUE")),
            }
        }
        if let Some(cwd) = &p.cwd {
            absolute_clean(cwd, "working directory")?;
        }
        if p.tty && p.size.is_some_and(|(r, c)| r == 0 || c == 0) {
            return bad("a terminal size needs rows and columns above 0");
        }
        Ok(())
    }
}

/// A container name: 1-64 letters, digits, `_`, `.` and `-`, starting with a letter or digit (docker's rule), so
/// that it is never mistaken for a path or an option.
pub fn check_name(name: &str) -> Result<(), Error> {
    metac_resource::text::check_name("container name", name).map_err(Error)
}

/// Parses a size: bytes, or a number with a unit `k`, `m`, `g` or `t` (powers of 1024, any case, an optional `b`
/// or `ib`), as `--memory 512M` and `--memory 1.5g`.
pub fn parse_bytes(s: &str) -> Result<u64, Error> {
    metac_resource::text::parse_size(s).map_err(Error)
}

/// Parses a number of cpus (`--cpus 1.5`).
pub fn parse_cpus(s: &str) -> Result<f64, Error> {
    match s.parse::<f64>() {
        Ok(c) if c.is_finite() && c > 0.0 => Ok(c),
        _ => bad(format!("bad cpus {s:?}: a number above 0, such as 0.5 or 2")),
    }
}

/// Parses a signal: a name with or without `SIG` (any case) or a number, as `kill -s` takes it.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return match nix::sys::signal::Signal::try_from(n) {
            Ok(_) => Ok(n),
            Err(_) => bad(format!("no signal number {n}")),
        };
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| Error(format!("unknown signal {s:?}: use a name such as TERM, KILL, HUP, INT, USR1, or a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str]) -> Spec {
        Spec {
            process: Process { args: args.iter().map(|a| a.to_string()).collect(), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn mounts_parse_with_their_source_and_mode() {
        let m: Mount = "/data=local:/srv/data:ro".parse().unwrap();
        assert_eq!(m, Mount { target: "/data".into(), source: Source::Local("/srv/data".into()), read_only: true });
        assert_eq!(m.to_string(), "/data=local:/srv/data:ro");
        let m: Mount = "/tmp=tmpfs:".parse().unwrap();
        assert_eq!(m.source, Source::Tmpfs);
        assert!(!m.read_only);
        // A ref has colons of its own (the address); only a final :ro or :rw is the mode.
        let m: Mount = "/w=ref://[fd6f:e1da:f01c::1]/abc:ro".parse().unwrap();
        assert_eq!(m.source, Source::Ref("ref://[fd6f:e1da:f01c::1]/abc".into()));
        assert!(m.read_only);
        let m: Mount = "/w=ref://[fd6f:e1da:f01c::1]/abc".parse().unwrap();
        assert!(!m.read_only);
    }

    #[test]
    fn bad_mounts_are_refused_naming_what_is_wrong() {
        for (s, says) in [
            ("/data", "use PATH=URI"),
            ("data=local:/x", "not an absolute path"),
            ("/a/../etc=local:/x", "`..`"),
            ("/data=local:x", "not an absolute path"),
            ("/data=http://x", "is not local:/PATH"),
            ("/=tmpfs:", "cannot be the root"),
        ] {
            let e = s.parse::<Mount>().unwrap_err().to_string();
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn sizes_and_cpus_parse_as_docker_takes_them() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("2kb").unwrap(), 2048);
        assert!(parse_bytes("lots").unwrap_err().to_string().contains("bad size \"lots\""));
        assert!(parse_bytes("-1m").is_err());
        assert_eq!(parse_cpus("1.5").unwrap(), 1.5);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("NaN").is_err());
    }

    #[test]
    fn restart_policies_parse_and_decide() {
        assert_eq!("no".parse::<Restart>().unwrap(), Restart::No);
        assert_eq!("on-failure:3".parse::<Restart>().unwrap(), Restart::OnFailure { max: Some(3) });
        assert!("sometimes".parse::<Restart>().unwrap_err().to_string().contains("on-failure:N"));
        let r = Restart::OnFailure { max: Some(2) };
        assert!(r.again(1, 0) && r.again(1, 1) && !r.again(1, 2) && !r.again(0, 0));
        assert!(Restart::Always.again(0, 100));
        assert!(!Restart::No.again(1, 0));
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("NOPE").unwrap_err().to_string().contains("unknown signal"));
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn users_parse_as_numbers() {
        assert_eq!("1000".parse::<User>().unwrap(), User { uid: 1000, gid: 1000 });
        assert_eq!("1000:100".parse::<User>().unwrap(), User { uid: 1000, gid: 100 });
        assert!("bob".parse::<User>().unwrap_err().to_string().contains("must be a number"));
    }

    #[test]
    fn specs_are_checked_before_anything_runs() {
        assert!(spec(&["true"]).check().is_ok());
        assert_eq!(spec(&[]).check().unwrap_err().to_string(), "no command to run");
        let mut s = spec(&["true"]);
        s.process.env = vec!["NOEQUALS".into()];
        assert!(s.check().unwrap_err().to_string().contains("KEY=VALUE"));
        let mut s = spec(&["true"]);
        s.name = Some("../x".into());
        assert!(s.check().unwrap_err().to_string().contains("bad container name"));
        let mut s = spec(&["true"]);
        s.hostname = Some("a b".into());
        assert!(s.check().is_err());
        let mut s = spec(&["true"]);
        s.limits.memory = Some(1000);
        assert!(s.check().unwrap_err().to_string().contains("too small"));
        let mut s = spec(&["true"]);
        s.limits.pids = Some(0);
        assert!(s.check().is_err());
        let mut s = spec(&["true"]);
        s.rootfs = Some("/srv/root".into());
        s.mounts = vec!["/=local:/srv/other".parse().unwrap()];
        assert!(s.check().unwrap_err().to_string().contains("give one"));
        let mut s = spec(&["a\0b"]);
        assert!(s.check().unwrap_err().to_string().contains("NUL"));
        s.process.args = vec!["x".repeat(MAX_LEN + 1)];
        assert!(s.check().is_err());
    }
}
