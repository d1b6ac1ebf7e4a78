//! One lab host: a network namespace with `eth0` on the lab bridge, a ULA address and a directory for its state,
//! sockets and logs. Commands run in it through `ip netns exec`, which execs the program (same pid) after entering
//! the namespace and a private mount namespace; that is why a FUSE mount made by such a process is reached with
//! [`Host::nsenter_cmd`].

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::net::Ipv6Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::exec::{checked, command, output, require_tool, Kind, Proc, Registry};
use crate::node::Node;

/// Time limit of [`Host::run`] and [`Host::metac`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a spawned process may take to enter the host's namespaces.
const ENTER_TIMEOUT: Duration = Duration::from_secs(5);

/// A host of a [`crate::Lab`]. Cheap to clone; a clone refers to the same namespace.
#[derive(Debug, Clone)]
pub struct Host {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) addr: Ipv6Addr,
    pub(crate) mac: [u8; 6],
    pub(crate) dir: PathBuf,
    pub(crate) registry: Arc<Registry>,
    pub(crate) spawned: Arc<AtomicUsize>,
}

impl Host {
    /// The host's number in its lab, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The network namespace name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address of `eth0`, `fd00:77:<lab>::<index>`.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The MAC address of `eth0`, `02:77:..`.
    pub fn mac(&self) -> String {
        self.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
    }

    /// The host's own directory (state, sockets, logs); commands run with it as their working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The local API socket of this host's node.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("metac.sock")
    }

    /// The state directory of this host's node.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `program args...` to run inside this host (`ip netns exec NAME program args...`, cwd = [`Host::dir`]).
    pub fn cmd<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = command("ip", ["netns", "exec"]);
        c.arg(&self.name).arg(program).args(args).current_dir(&self.dir);
        c
    }

    /// `program args...` in this host's network namespace only (`nsenter --net=/run/netns/NAME`), sharing the
    /// caller's mount namespace: unlike `ip netns exec`, which gives the program a mount namespace of its own with
    /// a fresh /sys, it keeps the machine's /sys/fs/cgroup in view (the containers' node needs its cgroups).
    pub fn cmd_sharing_mounts<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = command("nsenter", [format!("--net=/run/netns/{}", self.name), "--".into()]);
        c.arg(program).args(args).current_dir(&self.dir);
        c
    }

    /// `nsenter -t PID -m -n program args...`: runs in the mount and network namespaces of process `pid` (which
    /// sees the FUSE mounts that process made).
    pub fn nsenter_cmd<I, S>(&self, pid: u32, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = command("nsenter", ["-t", &pid.to_string(), "-m", "-n", "--"]);
        c.arg(program).args(args).current_dir(&self.dir);
        c
    }

    /// Runs `program args...` in this host within [`RUN_TIMEOUT`]. A non-zero exit is an [`Error::Failed`] that
    /// carries the output; use [`crate::output`] with [`Host::cmd`] to get any exit status as `Ok`.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        checked(&mut self.cmd(program, args), RUN_TIMEOUT)
    }

    /// Whether one `ping -6 -c 1 -W 2` from this host to `addr` gets an answer.
    pub fn ping(&self, addr: Ipv6Addr) -> Result<bool> {
        require_tool("ping", "iputils-ping")?;
        let o =
            output(&mut self.cmd("ping", ["-6", "-n", "-q", "-c", "1", "-W", "2", &addr.to_string()]), RUN_TIMEOUT)?;
        Ok(o.status.success())
    }

    /// Starts `program args...` in the background in this host, stdout and stderr appended to
    /// `<dir>/<program>-<n>.log`. It is stopped when the [`Proc`] is dropped, or when the lab is.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let base = Path::new(program.as_ref()).file_name().unwrap_or(program.as_ref()).to_string_lossy().into_owned();
        let log = self.dir.join(format!("{base}-{}.log", self.spawned.fetch_add(1, Ordering::Relaxed)));
        let mut cmd = self.cmd(program, args);
        cmd.stdin(Stdio::null());
        log_to(&mut cmd, &log)?;
        let proc = Proc::spawn(&mut cmd, Kind::Other, &self.registry, Some(log))?;
        self.wait_entered(&proc)?;
        Ok(proc)
    }

    /// Starts a command built by the caller from [`Host::cmd`] or [`Host::nsenter_cmd`] (with its own stdio) in
    /// the background, stopped like [`Host::spawn`]'s.
    pub fn spawn_cmd(&self, mut cmd: Command) -> Result<Proc> {
        let proc = Proc::spawn(&mut cmd, Kind::Other, &self.registry, None)?;
        self.wait_entered(&proc)?;
        Ok(proc)
    }

    /// Waits (bounded) until a process just spawned through `ip netns exec` (or `nsenter`) is inside this host's
    /// network namespace and its own mount namespace, so its pid is at once usable with [`Host::nsenter_cmd`].
    /// Returns early if it has exited; the owner sees that through its [`Proc`].
    pub(crate) fn wait_entered(&self, proc: &Proc) -> Result<()> {
        self.wait_entered_with(proc, true)
    }

    /// [`Host::wait_entered`]; `own_mounts` says whether the process gets a mount namespace of its own (`ip netns
    /// exec`) or keeps the caller's ([`Host::cmd_sharing_mounts`]).
    pub(crate) fn wait_entered_with(&self, proc: &Proc, own_mounts: bool) -> Result<()> {
        let ns = Path::new("/run/netns").join(&self.name);
        let ino = std::fs::metadata(&ns).map_err(|e| Error::io(format!("stat {}", ns.display()), e))?.ino();
        let want_net = PathBuf::from(format!("net:[{ino}]"));
        let own_mnt = std::fs::read_link("/proc/self/ns/mnt").ok();
        let link = |what: &str| std::fs::read_link(format!("/proc/{}/ns/{what}", proc.pid())).ok();
        let deadline = Instant::now() + ENTER_TIMEOUT;
        loop {
            let mnt_ok = link("mnt").is_some_and(|m| (Some(&m) != own_mnt.as_ref()) == own_mounts);
            if link("net").as_ref() == Some(&want_net) && mnt_ok {
                return Ok(());
            }
            if proc.try_status().is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: format!("process {} did not enter host {} within {ENTER_TIMEOUT:?}", proc.pid(), self.index),
                    log_tail: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// `metac --socket <socket> args...` in this host within [`RUN_TIMEOUT`], with the binary from
    /// [`crate::metac_bin`]. A non-zero exit is an [`Error::Failed`] carrying the output.
    pub fn metac(&self, args: &[&str]) -> Result<Output> {
        self.metac_with(&crate::metac_bin()?, args, RUN_TIMEOUT)
    }

    /// What `metac args...` prints, trimmed; panics (naming the host and the command) when it fails. For tests.
    pub fn metac_ok(&self, args: &[&str]) -> String {
        match self.metac(args) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Err(e) => panic!("metac {args:?} on host {} failed: {e}", self.index),
        }
    }

    /// `metac --json args...`, parsed; panics when it fails or prints no JSON. For tests.
    pub fn metac_json(&self, args: &[&str]) -> serde_json::Value {
        let a: Vec<&str> = std::iter::once("--json").chain(args.iter().copied()).collect();
        let out = self.metac_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("metac {a:?} printed no JSON ({e}): {out}"))
    }

    /// [`Host::metac`] with a given binary and time limit.
    pub fn metac_with(&self, bin: &Path, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = self.cmd(bin, [OsStr::new("--socket"), self.socket().as_os_str()]);
        cmd.args(args);
        checked(&mut cmd, timeout)
    }

    /// The real `metac` CLI (from [`crate::metac_bin`]) run as another local user, with this host's socket:
    /// `setpriv SETPRIV... metac --socket <socket> args...`, where `setpriv` (util-linux) takes the user's real
    /// credentials, e.g. `["--reuid=65534", "--regid=65534", "--groups=4242"]`. Any exit status is `Ok`: tests of
    /// what a user may not do read the refusal.
    pub fn metac_as(&self, setpriv: &[&str], args: &[&str]) -> Result<Output> {
        require_tool("setpriv", "util-linux")?;
        let bin = crate::metac_bin()?;
        let mut cmd = self.cmd("setpriv", setpriv);
        cmd.arg(bin).arg("--socket").arg(self.socket()).args(args);
        output(&mut cmd, RUN_TIMEOUT)
    }

    /// Starts `metac node` in this host (see [`Node`]) with the binary from [`crate::metac_bin`] and waits until it
    /// answers `metac status`.
    pub fn start_node(&self, extra_args: &[&str]) -> Result<Node> {
        self.start_node_with(&crate::metac_bin()?, extra_args)
    }

    /// [`Host::start_node`] for a node that runs containers: in this host's network namespace but the machine's
    /// mount namespace ([`Host::cmd_sharing_mounts`]), where the cgroup hierarchies are.
    pub fn start_node_sharing_mounts(&self, extra_args: &[&str]) -> Result<Node> {
        Node::start_sharing_mounts(
            self.clone(),
            crate::metac_bin()?,
            extra_args.iter().map(|s| s.to_string()).collect(),
            None,
        )
    }

    /// [`Host::start_node_sharing_mounts`] in a UTS namespace of its own named `hostname` (a remote run's
    /// `hostname` then tells which node it ran on).
    pub fn start_node_sharing_mounts_named(&self, hostname: &str, extra_args: &[&str]) -> Result<Node> {
        Node::start_sharing_mounts(
            self.clone(),
            crate::metac_bin()?,
            extra_args.iter().map(|s| s.to_string()).collect(),
            Some(hostname.to_string()),
        )
    }

    /// [`Host::start_node`] with a given `metac` binary (for comparing builds, or a stand-in in harness tests).
    pub fn start_node_with(&self, bin: &Path, extra_args: &[&str]) -> Result<Node> {
        Node::start(self.clone(), bin.to_path_buf(), extra_args.iter().map(|s| s.to_string()).collect())
    }
}

/// Appends the command's stdout and stderr to `log`.
pub(crate) fn log_to(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
    let err = file.try_clone().map_err(|e| Error::io(format!("dup {}", log.display()), e))?;
    cmd.stdout(file).stderr(err);
    Ok(())
}
