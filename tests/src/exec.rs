//! Running processes with bounds: foreground commands with a time limit ([`output`], [`checked`]) and background
//! processes ([`Proc`]) that are stopped (SIGTERM, then SIGKILL) when dropped. A lab keeps a [`Registry`] of the
//! background processes started in its hosts so it can stop the ones still alive when it is torn down, whatever
//! order the test drops things in.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use crate::error::{text, Error, Result};

/// How long a background process gets between SIGTERM and SIGKILL when it is dropped.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// `cmd` as a shell-like line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion within `timeout` and returns its output whatever its exit status. Kills it (and its
/// process group) on timeout. Stdin is null; stdout and stderr are captured.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    run(cmd, None, timeout)
}

/// Like [`output`], but a non-zero exit is an [`Error::Failed`] carrying the output.
pub fn checked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let o = run(cmd, None, timeout)?;
    check(cmd, o)
}

/// [`checked`] that also feeds `input` to the command's stdin (for `ip -batch -` and `nft -f -`).
pub(crate) fn checked_stdin(cmd: &mut Command, input: &str, timeout: Duration) -> Result<Output> {
    let o = run(cmd, Some(input), timeout)?;
    check(cmd, o)
}

fn check(cmd: &Command, o: Output) -> Result<Output> {
    if o.status.success() {
        Ok(o)
    } else {
        Err(Error::Failed { cmd: describe(cmd), output: o })
    }
}

fn run(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("spawn `{line}`"), e))?;
    let out = Collector::start(child.stdout.take());
    let err = Collector::start(child.stderr.take());
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_owned();
        // A writer thread, so a child that stops reading cannot block us past the deadline.
        thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let Some(status) = wait_deadline(&mut child, Instant::now() + timeout) else {
        kill_tree(&mut child);
        return Err(Error::Timeout { cmd: line, after: timeout, stdout: out.take(), stderr: err.take() });
    };
    // A grandchild that inherited the pipes can keep them open after the child exits: give the readers a short,
    // bounded moment and return what they have.
    let grace = Instant::now() + Duration::from_secs(1);
    while !(out.done() && err.done()) && Instant::now() < grace {
        thread::sleep(Duration::from_millis(5));
    }
    Ok(Output { status, stdout: out.take().into_bytes(), stderr: err.take().into_bytes() })
}

/// Polls `child` until it exits or `deadline` passes; `None` on timeout.
fn wait_deadline(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let mut nap = Duration::from_millis(1);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// SIGKILLs a still-running child and its process group, then reaps it. The child is unreaped while we signal, so
/// its pid (and so its group id) cannot have been reused.
fn kill_tree(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Reads a pipe on a thread into a shared buffer, so partial output is available even if the pipe never closes.
struct Collector {
    buf: Arc<Mutex<(Vec<u8>, bool)>>,
}

impl Collector {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Collector {
        let buf = Arc::new(Mutex::new((Vec::new(), pipe.is_none())));
        if let Some(mut pipe) = pipe {
            let shared = Arc::clone(&buf);
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => lock(&shared).0.extend_from_slice(&chunk[..n]),
                    }
                }
                lock(&shared).1 = true;
            });
        }
        Collector { buf }
    }

    fn done(&self) -> bool {
        lock(&self.buf).1
    }

    fn take(&self) -> String {
        text(&std::mem::take(&mut lock(&self.buf).0))
    }
}

/// Locks a mutex, ignoring poisoning: a panicking test must still be able to clean up.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a background process is, which decides the teardown order (nodes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `metac node`.
    Node,
    /// Anything else.
    Other,
}

/// One background process, shared between its owner ([`Proc`]) and the lab's [`Registry`].
#[derive(Debug)]
pub(crate) struct Slot {
    child: Mutex<Option<Child>>,
    kind: Kind,
}

/// The background processes of one lab, held weakly: a process dropped by its owner leaves the list.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    slots: Mutex<Vec<Weak<Slot>>>,
}

impl Registry {
    fn add(&self, slot: &Arc<Slot>) {
        let mut slots = lock(&self.slots);
        slots.retain(|w| w.strong_count() > 0);
        slots.push(Arc::downgrade(slot));
    }

    /// Stops every live process: all nodes at once (SIGTERM, `grace`, SIGKILL), then all others the same way.
    pub(crate) fn stop_all(&self, grace: Duration) {
        let live: Vec<Arc<Slot>> = lock(&self.slots).drain(..).filter_map(|w| w.upgrade()).collect();
        for kind in [Kind::Node, Kind::Other] {
            let group: Vec<&Arc<Slot>> = live.iter().filter(|s| s.kind == kind).collect();
            stop_slots(&group, grace);
        }
    }
}

/// SIGTERM to each running slot, wait up to `grace` for all of them together, SIGKILL (with process group) the rest.
fn stop_slots(slots: &[&Arc<Slot>], grace: Duration) {
    for s in slots {
        if let Some(child) = lock(&s.child).as_mut() {
            if let (Ok(None), Some(pid)) = (child.try_wait(), Pid::from_raw(child.id() as i32)) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        let running = slots.iter().any(|s| lock(&s.child).as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))));
        if !running || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    for s in slots {
        if let Some(mut child) = lock(&s.child).take() {
            kill_tree(&mut child);
        }
    }
}

/// A background process started in a host. Dropping it stops it: SIGTERM, then SIGKILL to its process group after
/// [`TERM_GRACE`].
#[derive(Debug)]
pub struct Proc {
    slot: Arc<Slot>,
    pid: u32,
    log: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd` in its own process group and registers it with `registry`.
    pub(crate) fn spawn(cmd: &mut Command, kind: Kind, registry: &Registry, log: Option<PathBuf>) -> Result<Proc> {
        let child = cmd.process_group(0).spawn().map_err(|e| Error::io(format!("spawn `{}`", describe(cmd)), e))?;
        let pid = child.id();
        let slot = Arc::new(Slot { child: Mutex::new(Some(child)), kind });
        registry.add(&slot);
        Ok(Proc { slot, pid, log })
    }

    /// The process id (with `ip netns exec`, the program's own pid: ip execs it without forking).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The file its stdout and stderr go to, when it was started with [`crate::Host::spawn`].
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Whether it is still running (reaps it if it has exited).
    pub fn is_running(&self) -> bool {
        lock(&self.slot.child).as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.slot.child).as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for it to exit on its own; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline || lock(&self.slot.child).is_none() {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `SIGTERM` if it is running; does not wait.
    pub fn term(&self) {
        if self.is_running() {
            if let Some(pid) = Pid::from_raw(self.pid as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
    }

    /// SIGKILLs it and its process group and reaps it.
    pub fn kill(&self) {
        if let Some(child) = lock(&self.slot.child).as_mut() {
            kill_tree(child);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status when it exited within `grace`.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.term();
        let status = self.wait_timeout(grace);
        if status.is_none() {
            self.kill();
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_slots(&[&self.slot], TERM_GRACE);
    }
}

/// Builds `program args...`.
pub(crate) fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Fails with [`Error::MissingTool`] unless `tool` is an executable file in `PATH`.
pub(crate) fn require_tool(tool: &'static str, package: &'static str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .any(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0));
    if found {
        Ok(())
    } else {
        Err(Error::MissingTool { tool, package })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_captures_both_streams_and_status() {
        let o =
            output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10)).unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(text(&o.stdout), "out\n");
        assert_eq!(text(&o.stderr), "err\n");
    }

    #[test]
    fn timeout_kills_and_reports_partial_output() {
        let t = Instant::now();
        let e = output(Command::new("sh").args(["-c", "echo started; sleep 30"]), Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(5));
        match e {
            Err(Error::Timeout { stdout, .. }) => assert_eq!(stdout, "started\n"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn checked_failure_carries_output() {
        match checked(Command::new("sh").args(["-c", "echo nope >&2; exit 1"]), Duration::from_secs(10)) {
            Err(e @ Error::Failed { .. }) => assert!(e.to_string().contains("nope"), "{e}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn stdin_is_fed() {
        let o = checked_stdin(&mut Command::new("cat"), "hello", Duration::from_secs(10)).unwrap();
        assert_eq!(text(&o.stdout), "hello");
    }

    #[test]
    fn proc_drop_escalates_to_sigkill() {
        let reg = Registry::default();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30 & wait"]);
        let p = Proc::spawn(&mut cmd, Kind::Other, &reg, None).unwrap();
        thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        assert!(p.stop(Duration::from_millis(200)).is_none(), "TERM is ignored, so stop must escalate");
        assert!(!p.is_running());
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn registry_stops_live_processes() {
        let reg = Registry::default();
        let p = Proc::spawn(Command::new("sleep").arg("30"), Kind::Other, &reg, None).unwrap();
        let n = Proc::spawn(Command::new("sleep").arg("30"), Kind::Node, &reg, None).unwrap();
        reg.stop_all(Duration::from_secs(2));
        assert!(!p.is_running() && !n.is_running());
        assert!(p.try_status().is_none(), "reaped by the registry, so the owner sees no status");
    }
}
