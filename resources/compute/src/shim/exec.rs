//! `metac exec`: another process in a running container. The shim forks a helper that enters the container's
//! namespaces (user first when rootless, then ipc, uts, net, pid, cgroup, mnt) and is already in its cgroup; the
//! helper forks the process itself with CLONE_PARENT, so that it is the shim's child (the shim reaps it and learns
//! its exit) and the first process of nothing. The process gets the container's capabilities, seccomp filter and
//! user, a terminal of its own in the container's devpts or pipes, and its client alone sees its output (exec
//! output is not the container's log, as with docker).

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{dup_to, open_terminal, pipe, read_fd, receive_fd, set_nonblocking, write_all_fd, Phase, Shim};
use crate::launch;
use crate::spec::Process;
use crate::stdio::{Exit, Frame};

/// How long the shim waits for an exec'd process to reach its exec (it is set up in milliseconds).
const SETUP_WAIT: Duration = Duration::from_secs(10);

/// One exec'd process and its client.
pub(super) struct Exec {
    /// Its pid on this host.
    pub pid: Pid,
    /// The client it belongs to.
    pub client: u64,
    /// The terminal's master, or its stdin pipe.
    pub input: Option<OwnedFd>,
    /// The terminal's master, or its stdout pipe.
    pub out: Option<OwnedFd>,
    /// Its stderr pipe.
    pub err: Option<OwnedFd>,
    pub tty: bool,
    pub stdin: VecDeque<u8>,
    pub close_stdin: bool,
}

/// Waits until `fd` is readable, at most `t`.
fn readable(fd: &OwnedFd, t: Duration) -> bool {
    let mut p = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: a valid one-element pollfd array.
    unsafe { libc::poll(p.as_mut_ptr(), 1, t.as_millis() as i32) > 0 }
}

impl Shim {
    /// Starts `p` in the running container for client `client`.
    pub(super) fn exec(&mut self, client: u64, p: &Process) -> Result<Exec, (i32, String)> {
        self.start_exec(client, p).map_err(|why| match why.strip_prefix('X') {
            Some(not_found) => (127, not_found.to_string()),
            None => (126, why.strip_prefix('E').unwrap_or(&why).to_string()),
        })
    }

    /// [`Shim::exec`]; a failure's reason starts with `X` when exec itself failed (127), `E` otherwise (126).
    fn start_exec(&mut self, client: u64, p: &Process) -> Result<Exec, String> {
        let target = match (&self.child, self.state.phase) {
            (Some(c), Phase::Running) => c.pid,
            _ => return Err("the container is not running".into()),
        };
        let rootless = self.cfg.rootless();
        let mut kinds = vec!["ipc", "uts", "net", "pid", "cgroup", "mnt"];
        if rootless {
            kinds.insert(0, "user");
        }
        let mut ns = Vec::new();
        for k in &kinds {
            let path = format!("/proc/{target}/ns/{k}");
            ns.push(fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?);
        }
        let mut plan = self.plan().map_err(|e| e.to_string())?;
        let cstr = |v: &str| std::ffi::CString::new(v).map_err(|_| format!("{v:?} has a NUL byte"));
        plan.args = p.args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
        for e in &p.env {
            let key = e.split('=').next().unwrap_or_default();
            plan.env.retain(|old| old.to_bytes().split(|&b| b == b'=').next() != Some(key.as_bytes()));
            plan.env.push(cstr(e)?);
        }
        if let Some(cwd) = &p.cwd {
            plan.cwd = cwd.clone();
        }
        if p.user.is_some() {
            plan.user = super::rootless_user(&self.cfg, p.user)?;
        }
        let io = |e: io::Error| e.to_string();
        let (console_ours, console_theirs) = if p.tty {
            let (a, b) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| format!("socketpair: {e}"))?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let (in_r, in_w) =
            if !p.tty && p.stdin { pipe().map(|(r, w)| (Some(r), Some(w))).map_err(io)? } else { (None, None) };
        let (out_r, out_w) = if p.tty { (None, None) } else { pipe().map(|(r, w)| (Some(r), Some(w))).map_err(io)? };
        let (err_r, err_w) = if p.tty { (None, None) } else { pipe().map(|(r, w)| (Some(r), Some(w))).map_err(io)? };
        let (go_r, go_w) = pipe().map_err(io)?;
        let (pid_r, pid_w) = pipe().map_err(io)?;
        let (rep_r, rep_w) = pipe().map_err(io)?;
        // SAFETY: fork semantics (no new stack) in a single-threaded process; the child never returns.
        let helper =
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
        if helper < 0 {
            return Err(format!("fork: {}", io::Error::last_os_error()));
        }
        if helper == 0 {
            drop((go_w, pid_r, rep_r, console_ours, in_w, out_r, err_r));
            let stdio = Stdio { console: console_theirs, size: p.size, stdin: in_r, stdout: out_w, stderr: err_w };
            helper_main(go_r, pid_w, rep_w, ns, rootless, stdio, &plan);
        }
        drop((go_r, pid_w, rep_w, console_theirs, in_r, out_w, err_w, ns));
        let helper = Pid::from_raw(helper as i32);
        let fail = |why: String| {
            let _ = nix::sys::signal::kill(helper, Signal::SIGKILL);
            why
        };
        if let Some(cg) = &self.cgroup {
            cg.add(helper.as_raw() as u32).map_err(|e| fail(format!("join the cgroup: {e}")))?;
        }
        write_all_fd(go_w.as_fd(), b"1").map_err(|e| fail(e.to_string()))?;
        // The helper sends the process's pid on this host, or nothing if it failed (its reason is in the report).
        let mut pid = [0u8; 4];
        let got = readable(&pid_r, SETUP_WAIT) && matches!(read_fd(pid_r.as_fd(), &mut pid), Ok(4));
        let mut why = Vec::new();
        let report_done = |why: &mut Vec<u8>| {
            while readable(&rep_r, SETUP_WAIT) {
                let mut b = [0u8; 1024];
                match read_fd(rep_r.as_fd(), &mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) if why.len() < 4096 => why.extend_from_slice(&b[..n]),
                    Ok(_) => {}
                }
            }
        };
        if !got {
            report_done(&mut why);
            let why = String::from_utf8_lossy(&why).trim().to_string();
            return Err(fail(if why.is_empty() { "the exec helper died".into() } else { why }));
        }
        let pid = Pid::from_raw(i32::from_ne_bytes(pid));
        let (mut input, mut out) = (in_w, out_r);
        if let Some(console) = console_ours {
            if !readable(&console, SETUP_WAIT) {
                report_done(&mut why);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let why = String::from_utf8_lossy(&why).trim().to_string();
                return Err(if why.is_empty() { "the process opened no terminal".into() } else { why });
            }
            let master = receive_fd(console.as_fd()).map_err(|e| format!("receive the terminal: {e}"))?;
            input = Some(master.try_clone().map_err(io)?);
            out = Some(master);
        }
        // The report pipe closes at exec, or carries why exec failed.
        report_done(&mut why);
        if !why.is_empty() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            return Err(String::from_utf8_lossy(&why).trim().to_string());
        }
        for fd in [&input, &out, &err_r].into_iter().flatten() {
            set_nonblocking(fd.as_fd()).map_err(io)?;
        }
        Ok(Exec { pid, client, input, out, err: err_r, tty: p.tty, stdin: VecDeque::new(), close_stdin: false })
    }

    /// Output of exec `i` is ready: to its client.
    pub(super) fn exec_output(&mut self, i: usize, stderr: bool) {
        let e = &mut self.execs[i];
        let slot = if stderr { &mut e.err } else { &mut e.out };
        let Some(fd) = slot.as_ref() else { return };
        let mut buf = vec![0u8; 64 * 1024];
        let frame = match read_fd(fd.as_fd(), &mut buf) {
            Ok(0) | Err(_) => {
                *slot = None;
                return;
            }
            Ok(n) if stderr => Frame::Stderr(buf[..n].to_vec()),
            Ok(n) => Frame::Stdout(buf[..n].to_vec()),
        };
        let client = e.client;
        self.send_to(client, &frame);
    }

    /// Input for exec `i` can be written.
    pub(super) fn exec_input(&mut self, i: usize) {
        let e = &mut self.execs[i];
        super::feed(&mut e.input, &mut e.stdin, &mut e.close_stdin, e.tty);
    }

    /// A frame from the client of an exec.
    pub(super) fn exec_frame(&mut self, client: u64, f: Frame, stdin: bool) {
        let Some(e) = self.execs.iter_mut().find(|e| e.client == client) else { return };
        match f {
            Frame::Stdin(d) if stdin => e.stdin.extend(d),
            Frame::CloseStdin if stdin => e.close_stdin = true,
            Frame::Resize { rows, cols } if e.tty => {
                if let Some(fd) = e.input.as_ref() {
                    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, valid for the call.
                    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            Frame::Signal(n) => {
                if let Ok(s) = Signal::try_from(n) {
                    let _ = nix::sys::signal::kill(e.pid, s);
                }
            }
            _ => {}
        }
    }

    /// An exec'd process ended: its last output and its exit go to its client.
    pub(super) fn exec_exited(&mut self, pid: Pid, exit: Exit) -> bool {
        let Some(i) = self.execs.iter().position(|e| e.pid == pid) else { return false };
        // What it wrote last is in its pipes or terminal: read it (bounded), then its exit.
        for _ in 0..64 {
            let e = &self.execs[i];
            if (e.out.is_none() && e.err.is_none()) || !readable_any(e) {
                break;
            }
            self.exec_output(i, false);
            self.exec_output(i, true);
        }
        let e = self.execs.remove(i);
        self.send_to(e.client, &Frame::Exit(exit));
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == e.client) {
            c.closing = true;
        }
        true
    }
}

/// Whether an exec's output has bytes waiting now.
fn readable_any(e: &Exec) -> bool {
    [&e.out, &e.err].into_iter().flatten().any(|fd| readable(fd, Duration::from_millis(20)))
}

struct Stdio {
    console: Option<OwnedFd>,
    size: Option<(u16, u16)>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// The helper: enters the container, forks the process as the shim's child, says its pid, ends.
fn helper_main(
    go: OwnedFd,
    pid_w: OwnedFd,
    report: OwnedFd,
    ns: Vec<fs::File>,
    rootless: bool,
    stdio: Stdio,
    plan: &launch::Plan,
) -> ! {
    let fail = |msg: String| -> ! {
        let _ = write_all_fd(report.as_fd(), format!("E{msg}").as_bytes());
        // SAFETY: _exit ends this forked process without running the shim's destructors.
        unsafe { libc::_exit(1) }
    };
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    // SAFETY: restoring SIGPIPE's default disposition has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut b = [0u8; 1];
    if !matches!(read_fd(go.as_fd(), &mut b), Ok(1)) {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    for f in &ns {
        if let Err(e) = nix::sched::setns(f.as_fd(), CloneFlags::empty()) {
            fail(format!("enter the container's namespaces: {e}"));
        }
        if rootless && std::ptr::eq(f, &ns[0]) {
            let (g, u) = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
            if let Err(e) = nix::unistd::setresgid(g, g, g).and_then(|()| nix::unistd::setresuid(u, u, u)) {
                fail(format!("become root in the container's user namespace: {e}"));
            }
        }
    }
    drop(ns);
    // SAFETY: fork semantics with CLONE_PARENT: the process becomes the shim's child; single-threaded here.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        fail(format!("fork in the container: {}", io::Error::last_os_error()));
    }
    if pid > 0 {
        let _ = write_all_fd(pid_w.as_fd(), &(pid as i32).to_ne_bytes());
        // SAFETY: as above.
        unsafe { libc::_exit(0) }
    }
    drop(pid_w);
    process_main(report, stdio, plan)
}

/// The exec'd process: its session and stdio, its directory, its rights, exec.
fn process_main(report: OwnedFd, stdio: Stdio, plan: &launch::Plan) -> ! {
    let fail = |msg: String| -> ! {
        let _ = write_all_fd(report.as_fd(), format!("E{msg}").as_bytes());
        // SAFETY: as above.
        unsafe { libc::_exit(126) }
    };
    let _ = nix::unistd::setsid();
    // setns into the mount namespace put this process at the container's root.
    let cwd: PathBuf = plan.cwd.clone();
    if let Err(e) = nix::unistd::chdir(&cwd) {
        fail(format!("enter the working directory {}: {e}", cwd.display()));
    }
    match &stdio.console {
        Some(console) => {
            if let Err(e) = open_terminal(console.as_fd(), stdio.size) {
                fail(format!("open a terminal in the container: {e}"));
            }
        }
        None => {
            let null = fs::File::open("/dev/null");
            let i = match (&stdio.stdin, &null) {
                (Some(i), _) => i.as_fd(),
                (None, Ok(n)) => n.as_fd(),
                (None, Err(e)) => fail(format!("open /dev/null: {e}")),
            };
            let r = dup_to(i, 0).and_then(|()| {
                let (Some(o), Some(e)) = (&stdio.stdout, &stdio.stderr) else { return Ok(()) };
                dup_to(o.as_fd(), 1).and_then(|()| dup_to(e.as_fd(), 2))
            });
            if let Err(e) = r {
                fail(format!("set up stdio: {e}"));
            }
        }
    }
    drop(stdio);
    if let Err(e) = launch::process(&crate::sys::Linux, plan) {
        fail(e.to_string());
    }
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this process's descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let e = crate::sys::Syscall::exec(&crate::sys::Linux, &plan.args, &plan.env);
    let cmd = plan.args[0].to_string_lossy();
    let msg = match e.raw_os_error() {
        Some(libc::ENOENT) => format!("{cmd}: command not found in the container"),
        _ => format!("exec {cmd}: {e}"),
    };
    let _ = write_all_fd(report.as_fd(), format!("X{msg}").as_bytes());
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}
