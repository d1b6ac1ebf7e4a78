//! A real `metac node` process in a lab host, started as
//! `metac node --state <dir>/state --socket <dir>/metac.sock --port 0 --log-level LOG_LEVEL <extra...>` with stdout and
//! stderr appended to `<dir>/node.log`, and considered up once `metac --socket <sock> status --json` succeeds.
//! It keeps its state directory and socket across [`Node::restart`], so restarts exercise persistence.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{last_lines, text, Error, Result};
use crate::exec::{describe, output, Kind, Proc};
use crate::host::{log_to, Host};

/// How long [`Host::start_node`] waits for the node to answer `metac status`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Node::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The nodes' log filter unless the test gives one: debug, but for gossipsub's heartbeat (a line each second that
/// says nothing) and libp2p-core's dial errors (which print whole transport types), which would push all else out
/// of a log's tail.
pub const LOG_LEVEL: &str = "debug,libp2p_gossipsub=info,libp2p_core=info";

/// Lines of log shown in errors.
const TAIL_LINES: usize = 40;

/// A running (or stopped) `metac node` in a host. Dropping it stops the process (SIGTERM, SIGKILL after 3 s).
#[derive(Debug)]
pub struct Node {
    host: Host,
    bin: PathBuf,
    extra: Vec<String>,
    proc: Option<Proc>,
    pid: u32,
    /// Runs in the host's network namespace only, sharing the test's mount namespace (see
    /// [`Host::cmd_sharing_mounts`]).
    share_mounts: bool,
    /// A UTS namespace of its own with this hostname (so that nodes on one machine tell themselves apart).
    hostname: Option<String>,
}

impl Node {
    pub(crate) fn start_sharing_mounts(
        host: Host,
        bin: PathBuf,
        extra: Vec<String>,
        hostname: Option<String>,
    ) -> Result<Node> {
        let mut node = Node { host, bin, extra, proc: None, pid: 0, share_mounts: true, hostname };
        node.launch()?;
        Ok(node)
    }

    pub(crate) fn start(host: Host, bin: PathBuf, extra: Vec<String>) -> Result<Node> {
        let mut node = Node { host, bin, extra, proc: None, pid: 0, share_mounts: false, hostname: None };
        node.launch()?;
        Ok(node)
    }

    /// Spawns the process and waits until it answers; on failure the process is stopped again.
    fn launch(&mut self) -> Result<()> {
        if !self.bin.is_file() {
            return Err(Error::NoMetacBin { path: self.bin.clone() });
        }
        let sock = self.socket();
        // sockaddr_un holds 108 bytes including the NUL.
        if sock.as_os_str().len() > 107 {
            return Err(Error::InvalidArg(format!(
                "socket path {} is longer than 107 bytes: set TMPDIR to a shorter directory",
                sock.display()
            )));
        }
        let state = self.state_dir();
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&state)
            .map_err(|e| Error::io(format!("create {}", state.display()), e))?;

        let mut args: Vec<OsString> = vec!["node".into(), "--state".into(), state.into(), "--socket".into()];
        args.push(sock.into());
        if !self.extra.iter().any(|a| a == "--port" || a.starts_with("--port=")) {
            args.extend(["--port".into(), "0".into()]);
        }
        if !self.extra.iter().any(|a| a == "--log-level" || a.starts_with("--log-level=")) {
            args.extend(["--log-level".into(), LOG_LEVEL.into()]);
        }
        args.extend(self.extra.iter().map(OsString::from));

        let log = self.log_path();
        let mut cmd = if let (true, Some(name)) = (self.share_mounts, &self.hostname) {
            let mut a: Vec<OsString> =
                ["--uts", "--", "sh", "-c", "hostname \"$0\" && exec \"$@\""].into_iter().map(OsString::from).collect();
            a.push(name.into());
            a.push(self.bin.clone().into());
            a.extend(args);
            self.host.cmd_sharing_mounts("unshare", &a)
        } else if self.share_mounts {
            self.host.cmd_sharing_mounts(&self.bin, &args)
        } else {
            self.host.cmd(&self.bin, &args)
        };
        // Plain text logs (tracing colours them otherwise), and backtraces when the node panics.
        cmd.stdin(Stdio::null()).env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
        self.mark_log(&format!("starting `{}`", describe(&cmd)))?;
        log_to(&mut cmd, &log)?;
        let proc = Proc::spawn(&mut cmd, Kind::Node, &self.host.registry, Some(log))?;
        self.pid = proc.pid();
        self.host.wait_entered_with(&proc, !self.share_mounts)?;
        self.wait_ready(&proc)?;
        self.proc = Some(proc);
        Ok(())
    }

    fn wait_ready(&self, proc: &Proc) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = proc.try_status() {
                return Err(self.not_ready(format!("exited with {status} before it answered `metac status`")));
            }
            let last = match output(&mut self.status_cmd(), Duration::from_secs(5)) {
                Ok(o) if o.status.success() => return Ok(()),
                Ok(o) => format!("{}; {}", o.status, text(&o.stderr).trim()),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= READY_TIMEOUT {
                let what = format!("did not answer `metac status` within {READY_TIMEOUT:?} (last try: {last})");
                return Err(self.not_ready(what));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn not_ready(&self, what: String) -> Error {
        let what = format!("metac node in host {} (pid {}) {what}", self.host.index, self.pid);
        Error::NotReady { what, log_tail: self.log_tail(TAIL_LINES) }
    }

    fn status_cmd(&self) -> std::process::Command {
        let mut c = self.host.cmd(&self.bin, ["--socket"]);
        c.arg(self.socket()).args(["status", "--json"]);
        c
    }

    /// Appends a harness marker line to the node log, so restarts are visible in it.
    fn mark_log(&self, what: &str) -> Result<()> {
        let log = self.log_path();
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
        writeln!(f, "==== metac-tests {secs:.3}: {what} ====")
            .map_err(|e| Error::io(format!("write {}", log.display()), e))
    }

    /// The pid of the current process, or of the last one once it has stopped.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The host this node runs in.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| p.is_running())
    }

    /// Kills the process with SIGKILL (a crash: no graceful shutdown) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
        let _ = self.mark_log("killed with SIGKILL");
    }

    /// Sends SIGTERM and waits up to [`STOP_TIMEOUT`] for a graceful exit; returns its exit status. A node that
    /// does not exit in time is SIGKILLed and reported as an error with its log tail.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(p) = self.proc.take() else {
            return Err(Error::InvalidArg(format!("metac node in host {} is not running", self.host.index)));
        };
        match p.stop(STOP_TIMEOUT) {
            Some(status) => {
                let _ = self.mark_log(&format!("stopped: {status}"));
                Ok(status)
            }
            None => Err(self.not_ready(format!("did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed"))),
        }
    }

    /// Stops the node if it runs ([`Node::stop`]) and starts it again with the same arguments, state and socket.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.is_some() {
            self.stop()?;
        }
        self.launch()
    }

    /// `metac status --json` of this node, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let o = self.host.metac_with(&self.bin, &["status", "--json"], crate::host::RUN_TIMEOUT)?;
        serde_json::from_slice(&o.stdout).map_err(|e| Error::NotReady {
            what: format!("`metac status --json` in host {} printed no JSON: {e}", self.host.index),
            log_tail: text(&o.stdout),
        })
    }

    /// The whole log (all starts of this node), lossy UTF-8; empty if there is none yet.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path()).map(|b| text(&b)).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        last_lines(log.trim_end(), n).to_owned()
    }

    /// The log file, `<host dir>/node.log`.
    pub fn log_path(&self) -> PathBuf {
        self.host.dir.join("node.log")
    }

    /// The local API socket.
    pub fn socket(&self) -> PathBuf {
        self.host.socket()
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.host.state_dir()
    }
}
