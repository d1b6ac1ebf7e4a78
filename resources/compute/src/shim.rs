//! The shim: one small process per container (`metac shim DIR`, started by the node), the parent of the
//! container's first process for its whole life. It holds the PTY master or the stdio pipes, writes every byte the
//! container prints to its log, serves attached clients on a Unix socket, restarts the process by its restart
//! policy, and writes what happened (pid, restarts, exit status) to `state.json` in the container's directory.
//!
//! The node is not the container's parent, so restarting or killing the node neither kills containers nor loses
//! their output (they re-adopt: the node reads `state.json` and watches the shim's pid). The shim is
//! single-threaded and event-driven (poll(2) over the output, the socket, its clients and a signalfd): it costs
//! no polling and a little over a megabyte, and none of it in the node.
//!
//! The socket speaks a JSON line first ([`Request`]), then, for an attach, [`stdio`](crate::stdio) frames both
//! ways. Only the node connects (the socket is root's, mode 0600); the CLI reaches it through the node.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

mod exec;

use crate::cgroup::{Cgroup, Hierarchy};
use crate::idmap::Maps;
use crate::launch::{self, MountPlan, Plan, Root};
use crate::logs::{Log, Stream};
use crate::security::{Caps, Filter};
use crate::spec::{Network, Process, Source, Spec, User};
use crate::stdio::{Exit, Frame};

/// The file descriptor on which the node hears whether the container started: one line, `ok SHIM PID` or
/// `error MESSAGE`.
pub const READY_FD: RawFd = 3;
/// Longest request line a client may send.
const MAX_REQUEST: usize = 64 * 1024;
/// Output a slow client may fall behind by before it is cut off (it can attach again; the log has it all).
const MAX_BEHIND: usize = 1 << 20;
/// Input waiting for the container to read it, beyond which clients are not read (backpressure).
const MAX_STDIN: usize = 1 << 20;
/// How long a container started for an attached `metac run` waits for its client before it starts anyway.
const ATTACH_WAIT: Duration = Duration::from_secs(10);
/// Log files: size of each and how many are kept.
pub const LOG_FILE: u64 = 8 << 20;
/// How many log files are kept.
pub const LOG_FILES: usize = 2;

/// What the node writes for the shim (`config.json` in the container's directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The container's id.
    pub id: String,
    /// Its name (the default hostname).
    pub name: String,
    /// Its spec, with refs already bound (as local mounts).
    pub spec: Spec,
    /// The user the container is for: a user namespace maps root inside to them when they are not root.
    pub owner: User,
    /// The cgroup the node made for it, if any.
    pub cgroup: Option<String>,
    /// The shim's socket.
    pub socket: PathBuf,
    /// An empty directory the container's user can reach, where its root is assembled.
    pub scratch: PathBuf,
    /// Hold the command until a client attaches (an attached `metac run`), at most [`ATTACH_WAIT`].
    pub wait_attach: bool,
}

impl Config {
    /// Whether the container gets a user namespace of its own (its owner is not root).
    pub fn rootless(&self) -> bool {
        self.owner.uid != 0
    }
}

/// Where a container is in its life, as the shim writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Set up, waiting for its client before it runs.
    #[default]
    Created,
    /// Running.
    Running,
    /// Ended, waiting to start again (restart policy).
    Restarting,
    /// Ended for good.
    Exited,
}

/// What the shim writes to `state.json`, atomically, at every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The shim's pid.
    pub shim: u32,
    /// The container's first process, as this host sees it.
    pub pid: Option<u32>,
    /// Where it is.
    pub phase: Phase,
    /// When the process last started (milliseconds since the epoch).
    pub started: Option<u64>,
    /// Times it was restarted.
    pub restarts: u32,
    /// How it last ended.
    pub exit: Option<Exit>,
    /// When it last ended (milliseconds since the epoch).
    pub finished: Option<u64>,
    /// Why it could not run, when it could not.
    pub error: Option<String>,
}

impl State {
    /// Reads `state.json` in `dir`.
    pub fn read(dir: &Path) -> io::Result<State> {
        let b = fs::read(dir.join("state.json"))?;
        serde_json::from_slice(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("state.json: {e}")))
    }

    fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join("state.json.tmp");
        fs::write(&tmp, serde_json::to_vec(self).expect("state serializes"))?;
        fs::rename(tmp, dir.join("state.json"))
    }
}

/// A request on the shim's socket: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Stream the container's output (and, with `stdin`, its input) as frames from now on.
    Attach {
        /// Whether this client sends input.
        stdin: bool,
    },
    /// Run another process in the container; frames follow, for that process alone.
    Exec {
        /// The process.
        process: Process,
    },
    /// Send a signal to the container's process; `stop` also cancels any restart.
    Kill {
        /// The signal number.
        signal: i32,
        /// Stop for good.
        stop: bool,
    },
}

/// The answer to a [`Request::Kill`]: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `metac shim DIR`: runs the container described in `DIR/config.json`. Returns the shim's exit code.
pub fn main(dir: &Path) -> i32 {
    // SAFETY: the node passes the ready pipe as fd 3 and nothing else in this process owns it.
    let ready = unsafe { OwnedFd::from_raw_fd(READY_FD) };
    let mut ready = fs::File::from(ready);
    let cfg = match fs::read(dir.join("config.json"))
        .map_err(|e| format!("read {}/config.json: {e}", dir.display()))
        .and_then(|b| serde_json::from_slice::<Config>(&b).map_err(|e| format!("bad config.json: {e}")))
    {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(ready, "error {e}");
            return 1;
        }
    };
    // Leave the node's process: the node reaps this parent at once, and the shim is nobody's child but init's
    // (or a subreaper's), in a session of its own, so the node's end is not its end.
    // SAFETY: the shim is single-threaded here (no runtime started), so the child may go on running Rust code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            let _ = writeln!(ready, "error fork the shim: {e}");
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    // No supplementary groups of root's: a rootless container's process could not drop them (its user namespace
    // denies setgroups) and would keep root's group rights on host files.
    if let Err(e) = nix::unistd::setgroups(&[]) {
        let _ = writeln!(ready, "error drop the shim's supplementary groups: {e}");
        return 1;
    }
    match Shim::new(dir, cfg).and_then(|s| s.run(ready)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("metac shim {}: {e}", dir.display());
            1
        }
    }
}

/// The container's process as the shim holds it.
struct Child {
    pid: Pid,
    /// The PTY master, or the write end of stdin's pipe.
    input: Option<OwnedFd>,
    /// The PTY master, or stdout's pipe.
    out: Option<OwnedFd>,
    /// stderr's pipe (none with a PTY).
    err: Option<OwnedFd>,
    /// The control pipe to the child, until it is released.
    go: Option<OwnedFd>,
    /// The child's report pipe, read until it closes at exec.
    report: Option<OwnedFd>,
    /// Bytes the child reported before exec (an error).
    reported: Vec<u8>,
    tty: bool,
    /// Where the child sends its terminal's master, until it has.
    console: Option<OwnedFd>,
}

struct Client {
    id: u64,
    /// Attached to an exec'd process rather than the container's.
    exec: bool,
    sock: UnixStream,
    inbuf: Vec<u8>,
    out: VecDeque<u8>,
    attached: bool,
    stdin: bool,
    /// Write what is queued, then close.
    closing: bool,
    /// It sent all it will send; an attached client still gets the output until the end.
    eof: bool,
    dead: bool,
}

struct Shim {
    dir: PathBuf,
    cfg: Config,
    log: Log,
    listener: UnixListener,
    signals: SignalFd,
    cgroup: Option<Cgroup>,
    state: State,
    child: Option<Child>,
    clients: Vec<Client>,
    stdin: VecDeque<u8>,
    close_stdin: bool,
    stopping: bool,
    release_at: Option<Instant>,
    restart_at: Option<Instant>,
    filter: Filter,
    caps: Caps,
    execs: Vec<exec::Exec>,
    next_client: u64,
}

fn err(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Shim {
    fn new(dir: &Path, cfg: Config) -> io::Result<Shim> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().map_err(io::Error::from).map_err(err("block signals"))?;
        let signals = SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
        )
        .map_err(io::Error::from)
        .map_err(err("signalfd"))?;
        let log = Log::open(dir, LOG_FILE, LOG_FILES).map_err(err("open the log"))?;
        let _ = fs::remove_file(&cfg.socket);
        let listener = UnixListener::bind(&cfg.socket).map_err(err("listen on the shim's socket"))?;
        // Root's alone, whatever the umask: only the node speaks to a shim.
        fs::set_permissions(&cfg.socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(err("chmod the shim's socket"))?;
        listener.set_nonblocking(true)?;
        let cgroup = match &cfg.cgroup {
            Some(name) => Some(
                Hierarchy::detect()
                    .and_then(|h| h.open(name))
                    .map_err(|e| io::Error::other(format!("the container's cgroup: {e}")))?
                    .ok_or_else(|| io::Error::other(format!("the container's cgroup {name} is gone")))?,
            ),
            None => None,
        };
        let caps = Caps::docker_default()
            .with(&cfg.spec.cap_add, &cfg.spec.cap_drop)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let filter = Filter::docker_default(caps);
        let state = State { shim: std::process::id(), ..Default::default() };
        Ok(Shim {
            dir: dir.to_path_buf(),
            cfg,
            log,
            listener,
            signals,
            cgroup,
            state,
            child: None,
            clients: Vec::new(),
            stdin: VecDeque::new(),
            close_stdin: false,
            stopping: false,
            release_at: None,
            restart_at: None,
            filter,
            caps,
            execs: Vec::new(),
            next_client: 1,
        })
    }

    fn run(mut self, mut ready: fs::File) -> io::Result<()> {
        match self.start() {
            Ok(()) => {
                let pid = self.child.as_ref().map_or(0, |c| c.pid.as_raw());
                let _ = writeln!(ready, "ok {} {pid}", std::process::id());
            }
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                self.state.phase = Phase::Exited;
                self.state.error = Some(msg.clone());
                self.state.finished = Some(now_ms());
                let _ = self.state.write(&self.dir);
                let _ = self.log.finish();
                let _ = writeln!(ready, "error {msg}");
                self.finish();
                return Ok(());
            }
        }
        drop(ready);
        if !self.cfg.wait_attach {
            self.release()?;
        } else {
            self.release_at = Some(Instant::now() + ATTACH_WAIT);
        }
        while !(self.state.phase == Phase::Exited && self.clients.is_empty()) {
            self.turn()?;
        }
        self.finish();
        Ok(())
    }

    /// Lets go of what the container held: its socket, its scratch directory and its cgroup.
    fn finish(&mut self) {
        let _ = fs::remove_file(&self.cfg.socket);
        let _ = fs::remove_dir(&self.cfg.scratch);
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.remove() {
                eprintln!("remove the cgroup: {e}");
            }
        }
    }

    fn save(&mut self) {
        if let Err(e) = self.state.write(&self.dir) {
            eprintln!("write state.json: {e}");
        }
    }

    /// Clones the container's first process and takes it as far as just before exec.
    fn start(&mut self) -> io::Result<()> {
        let p = &self.cfg.spec.process;
        let mut console = None;
        let (input, out, errp, theirs) = if p.tty {
            // The terminal is opened by the container in its own devpts (so that `tty` names a device it has),
            // and its master handed back over this socket, as runc's console socket does.
            let (ours, theirs) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(io::Error::from)
            .map_err(err("socketpair"))?;
            console = Some(ours);
            (None, None, None, Stdio::Tty { console: theirs, size: p.size })
        } else {
            let (in_r, in_w) = if p.stdin {
                let (r, w) = pipe()?;
                (Some(r), Some(w))
            } else {
                (None, None)
            };
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            (in_w, Some(out_r), Some(err_r), Stdio::Pipes { stdin: in_r, stdout: out_w, stderr: err_w })
        };
        for fd in [&input, &out, &errp].into_iter().flatten() {
            set_nonblocking(fd.as_fd())?;
        }
        let (go_r, go_w) = pipe()?;
        let (rep_r, rep_w) = pipe()?;
        let plan = self.plan()?;
        let mut flags =
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
        if self.cfg.spec.network == Network::None {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        if self.cfg.rootless() {
            flags |= CloneFlags::CLONE_NEWUSER;
        }
        // SAFETY: clone(2) without a new stack behaves as fork(2): the child runs on a copy of this stack. The shim
        // is single-threaded, so the child may allocate and run Rust code; it never returns from `child_main`.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(err("clone the container's process")(io::Error::last_os_error()));
        }
        if pid == 0 {
            drop((go_w, rep_r, input, out, errp));
            child_main(go_r, rep_w, theirs, self.cgroup.is_some(), self.cfg.spec.network == Network::None, &plan);
        }
        drop((go_r, rep_w, theirs));
        let pid = Pid::from_raw(pid as i32);
        let mut child = Child {
            pid,
            input,
            out,
            err: errp,
            go: Some(go_w),
            report: Some(rep_r),
            reported: vec![],
            tty: p.tty,
            console,
        };
        let r = self.prepare(&mut child);
        self.child = Some(child);
        if let Err(e) = r {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            self.child = None;
            return Err(e);
        }
        self.state.pid = Some(pid.as_raw() as u32);
        self.state.phase = Phase::Created;
        self.state.started = Some(now_ms());
        self.state.exit = None;
        self.state.error = None;
        self.save();
        Ok(())
    }

    /// Maps the user namespace, puts the child in its cgroup, lets it set itself up and waits for its word.
    fn prepare(&mut self, child: &mut Child) -> io::Result<()> {
        let pid = child.pid.as_raw();
        if self.cfg.rootless() {
            let o = self.cfg.owner;
            let maps = Maps::of_host(o.uid, o.gid);
            // With subordinate ids the groups in the map are the owner's to use; with one id, setgroups is denied
            // as an unprivileged runtime must.
            let groups = if maps.has_sub() { "allow" } else { "deny" };
            fs::write(format!("/proc/{pid}/setgroups"), groups).map_err(err("write setgroups"))?;
            fs::write(format!("/proc/{pid}/uid_map"), Maps::text(&maps.uids)).map_err(err("write uid_map"))?;
            fs::write(format!("/proc/{pid}/gid_map"), Maps::text(&maps.gids)).map_err(err("write gid_map"))?;
        }
        if let Some(cg) = &self.cgroup {
            cg.add(pid as u32).map_err(|e| io::Error::other(format!("join the cgroup: {e}")))?;
        }
        let go = child.go.as_ref().expect("go pipe");
        write_all_fd(go.as_fd(), b"1")?;
        // The child answers `R` once it is set up, or `E` and why it could not.
        let rep = child.report.as_ref().expect("report pipe");
        let mut first = [0u8; 1];
        let n = read_fd(rep.as_fd(), &mut first)?;
        if n == 1 && first[0] == b'R' {
            if let Some(console) = child.console.take() {
                let master = receive_fd(console.as_fd()).map_err(err("receive the terminal from the container"))?;
                set_nonblocking(master.as_fd())?;
                child.input = Some(master.try_clone()?);
                child.out = Some(master);
            }
            return Ok(());
        }
        let mut why = Vec::new();
        let mut f = fs::File::from(child.report.take().expect("report pipe"));
        let _ = (&mut f).take(4096).read_to_end(&mut why);
        let why = String::from_utf8_lossy(&why).trim().to_string();
        Err(io::Error::other(if why.is_empty() { "the container's process died while setting up".into() } else { why }))
    }

    /// The setup plan, from the config.
    fn plan(&self) -> io::Result<Plan> {
        let s = &self.cfg.spec;
        let p = &s.process;
        let root = match (&s.rootfs, s.root()) {
            (Some(r), _) => Root::Dir { path: r.clone(), read_only: s.read_only },
            (None, Some(m)) => match &m.source {
                Source::Local(p) => Root::Dir { path: p.clone(), read_only: m.read_only || s.read_only },
                other => return Err(io::Error::other(format!("the root's source {other} was not bound"))),
            },
            (None, None) => Root::Host,
        };
        let mut mounts = Vec::new();
        for m in s.mounts.iter().filter(|m| m.target != Path::new("/")) {
            let source = match &m.source {
                Source::Local(p) => launch::Source::Bind(p.clone()),
                Source::Tmpfs => launch::Source::Tmpfs,
                Source::Ref(r) => return Err(io::Error::other(format!("the ref {r} was not bound"))),
            };
            mounts.push(MountPlan { target: m.target.clone(), source, read_only: m.read_only });
        }
        let cwd = p.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
        let hostname = s.hostname.clone().unwrap_or_else(|| self.cfg.name.clone());
        let cstr =
            |v: &str| CString::new(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"));
        let args = p.args.iter().map(|a| cstr(a)).collect::<io::Result<Vec<_>>>()?;
        let mut env: Vec<String> = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("HOSTNAME={hostname}"),
            "HOME=/root".into(),
        ];
        if p.tty {
            env.push("TERM=xterm".into());
        }
        for e in &p.env {
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|old| old.split('=').next() != Some(key));
            env.push(e.clone());
        }
        let env = env.iter().map(|e| cstr(e)).collect::<io::Result<Vec<_>>>()?;
        let user = rootless_user(&self.cfg, p.user).map_err(io::Error::other)?;
        Ok(Plan {
            scratch: self.cfg.scratch.clone(),
            root,
            mounts,
            hostname,
            cwd,
            user,
            rootless: self.cfg.rootless(),
            own_network: s.network == Network::None,
            caps: self.caps,
            filter: self.filter.clone(),
            args,
            env,
        })
    }

    /// Lets the child exec its command.
    fn release(&mut self) -> io::Result<()> {
        self.release_at = None;
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        if let Some(go) = child.go.take() {
            write_all_fd(go.as_fd(), b"2")?;
        }
        self.state.phase = Phase::Running;
        self.save();
        Ok(())
    }

    /// One turn of the event loop.
    fn turn(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let deadline = [self.release_at, self.restart_at].into_iter().flatten().min();
        if let Some(d) = deadline {
            if d <= now {
                if self.release_at.is_some_and(|t| t <= now) {
                    self.release()?;
                }
                if self.restart_at.is_some_and(|t| t <= now) {
                    self.restart_at = None;
                    self.state.restarts += 1;
                    match self.start().and_then(|()| self.release()) {
                        Ok(()) => {}
                        Err(e) => {
                            self.ended(Exit { code: Some(127), signal: None, oom_killed: false }, Some(e.to_string()))
                        }
                    }
                }
                return Ok(());
            }
        }
        let timeout = deadline.map_or(-1, |d| d.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1);
        // The descriptors, in a fixed order: signals, listener, child's report, input, out, err, then clients.
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(6 + self.clients.len());
        let pfd = |fd: RawFd, events: i16| libc::pollfd { fd, events, revents: 0 };
        fds.push(pfd(self.signals.as_raw_fd(), libc::POLLIN));
        fds.push(pfd(self.listener.as_raw_fd(), libc::POLLIN));
        let c = self.child.as_ref();
        let raw = |f: Option<&OwnedFd>| f.map_or(-1, |f| f.as_raw_fd());
        fds.push(pfd(raw(c.and_then(|c| c.report.as_ref())), libc::POLLIN));
        let want_in = !self.stdin.is_empty() || self.close_stdin;
        fds.push(pfd(if want_in { raw(c.and_then(|c| c.input.as_ref())) } else { -1 }, libc::POLLOUT));
        fds.push(pfd(raw(c.and_then(|c| c.out.as_ref())), libc::POLLIN));
        fds.push(pfd(raw(c.and_then(|c| c.err.as_ref())), libc::POLLIN));
        for e in &self.execs {
            let want_in = !e.stdin.is_empty() || e.close_stdin;
            fds.push(pfd(if want_in { raw(e.input.as_ref()) } else { -1 }, libc::POLLOUT));
            fds.push(pfd(raw(e.out.as_ref()), libc::POLLIN));
            fds.push(pfd(raw(e.err.as_ref()), libc::POLLIN));
        }
        let first_client = fds.len();
        let full = self.stdin.len() >= MAX_STDIN || self.execs.iter().any(|e| e.stdin.len() >= MAX_STDIN);
        for cl in &self.clients {
            let mut ev = 0;
            if !cl.closing && !cl.eof && !full {
                ev |= libc::POLLIN;
            }
            if !cl.out.is_empty() {
                ev |= libc::POLLOUT;
            }
            fds.push(pfd(cl.sock.as_raw_fd(), ev));
        }
        // SAFETY: `fds` is a valid array of pollfd of the length passed; poll writes only `revents`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        let ready = |i: usize| fds[i].revents != 0;
        if ready(2) {
            self.read_report();
        }
        if ready(4) {
            self.read_output(false);
        }
        if ready(5) {
            self.read_output(true);
        }
        if ready(3) {
            self.write_input();
        }
        for e in 0..self.execs.len() {
            let at = 6 + 3 * e;
            if fds[at + 1].revents != 0 {
                self.exec_output(e, false);
            }
            if fds[at + 2].revents != 0 {
                self.exec_output(e, true);
            }
            if fds[at].revents != 0 {
                self.exec_input(e);
            }
        }
        for (i, f) in fds.iter().enumerate().skip(first_client) {
            let c = i - first_client;
            if f.revents & (libc::POLLHUP | libc::POLLERR) != 0 && self.clients[c].eof {
                // Gone both ways: nothing more can reach it.
                self.clients[c].dead = true;
                continue;
            }
            if f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.read_client(c);
            }
            if f.revents & libc::POLLOUT != 0 {
                flush_client(&mut self.clients[c]);
            }
        }
        if ready(1) {
            self.accept();
        }
        if ready(0) {
            self.signal()?;
        }
        self.clients.retain(|c| !c.dead && (!c.closing || !c.out.is_empty()));
        Ok(())
    }

    fn read_report(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        let Some(rep) = child.report.as_ref() else { return };
        let mut buf = [0u8; 4096];
        match read_fd(rep.as_fd(), &mut buf) {
            Ok(0) | Err(_) => child.report = None,
            Ok(n) => {
                if child.reported.len() < 4096 {
                    child.reported.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    fn read_output(&mut self, stderr: bool) {
        let Some(child) = self.child.as_mut() else { return };
        let slot = if stderr { &mut child.err } else { &mut child.out };
        let Some(fd) = slot.as_ref() else { return };
        let mut buf = vec![0u8; 64 * 1024];
        match read_fd(fd.as_fd(), &mut buf) {
            // EIO: the PTY's last slave closed.
            Ok(0) | Err(_) => *slot = None,
            Ok(n) => {
                let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
                self.output(stream, &buf[..n]);
            }
        }
    }

    /// The container printed `data`: to the log and to every attached client.
    fn output(&mut self, stream: Stream, data: &[u8]) {
        if let Err(e) = self.log.append(stream, data) {
            eprintln!("write the log: {e}");
        }
        let frame = match stream {
            Stream::Stdout => Frame::Stdout(data.to_vec()),
            Stream::Stderr => Frame::Stderr(data.to_vec()),
        };
        self.broadcast(&frame);
    }

    fn broadcast(&mut self, frame: &Frame) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        for c in self.clients.iter_mut().filter(|c| c.attached && !c.exec && !c.closing) {
            if c.out.len() + bytes.len() > MAX_BEHIND {
                // Too far behind: cut off rather than hold the container up.
                c.dead = true;
                continue;
            }
            c.out.extend(&bytes);
            flush_client(c);
        }
    }

    /// A frame for one client (of an exec).
    fn send_to(&mut self, client: u64, frame: &Frame) {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == client && !c.dead) else { return };
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        if c.out.len() + bytes.len() > MAX_BEHIND {
            c.dead = true;
            return;
        }
        c.out.extend(&bytes);
        flush_client(c);
    }

    fn write_input(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        feed(&mut child.input, &mut self.stdin, &mut self.close_stdin, child.tty);
    }

    fn accept(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if sock.set_nonblocking(true).is_err() || self.clients.len() >= 64 {
                continue;
            }
            self.next_client += 1;
            self.clients.push(Client {
                id: self.next_client,
                exec: false,
                sock,
                inbuf: Vec::new(),
                out: VecDeque::new(),
                attached: false,
                stdin: false,
                closing: false,
                eof: false,
                dead: false,
            });
        }
    }

    fn read_client(&mut self, i: usize) {
        let mut buf = [0u8; 64 * 1024];
        let n = match self.clients[i].sock.read(&mut buf) {
            Ok(0) => {
                let c = &mut self.clients[i];
                c.eof = true;
                if !c.attached {
                    c.dead = true;
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.clients[i].dead = true;
                return;
            }
        };
        self.clients[i].inbuf.extend_from_slice(&buf[..n]);
        if !self.clients[i].attached {
            let c = &mut self.clients[i];
            let Some(end) = c.inbuf.iter().position(|&b| b == b'\n') else {
                if c.inbuf.len() > MAX_REQUEST {
                    c.dead = true;
                }
                return;
            };
            let line: Vec<u8> = c.inbuf.drain(..=end).collect();
            match serde_json::from_slice::<Request>(&line) {
                Ok(r) => self.request(i, r),
                Err(e) => reply(&mut self.clients[i], Some(format!("bad request: {e}"))),
            }
        }
        // Frames from an attached client.
        loop {
            let c = &mut self.clients[i];
            if !c.attached || c.inbuf.is_empty() {
                break;
            }
            match Frame::decode(&c.inbuf) {
                Ok(None) => break,
                Ok(Some((f, used))) => {
                    c.inbuf.drain(..used);
                    let (stdin, id, exec) = (c.stdin, c.id, c.exec);
                    if exec {
                        self.exec_frame(id, f, stdin);
                    } else {
                        self.frame(f, stdin);
                    }
                }
                Err(e) => {
                    let c = &mut self.clients[i];
                    let mut b = Vec::new();
                    Frame::Error(format!("bad frame: {e}")).encode(&mut b);
                    c.out.extend(b);
                    c.closing = true;
                    c.inbuf.clear();
                    break;
                }
            }
        }
    }

    fn request(&mut self, i: usize, r: Request) {
        match r {
            Request::Attach { stdin } => {
                let c = &mut self.clients[i];
                c.attached = true;
                c.stdin = stdin;
                if self.state.phase == Phase::Exited {
                    let exit = self.state.exit.unwrap_or(Exit { code: None, signal: None, oom_killed: false });
                    let mut b = Vec::new();
                    if let Some(e) = &self.state.error {
                        Frame::Error(e.clone()).encode(&mut b);
                    }
                    Frame::Exit(exit).encode(&mut b);
                    c.out.extend(b);
                    c.closing = true;
                } else if self.release_at.is_some() {
                    if let Err(e) = self.release() {
                        eprintln!("release the container: {e}");
                    }
                }
            }
            Request::Exec { process } => {
                let id = self.clients[i].id;
                match self.exec(id, &process) {
                    Ok(e) => {
                        let c = &mut self.clients[i];
                        c.attached = true;
                        c.exec = true;
                        c.stdin = process.stdin;
                        self.execs.push(e);
                    }
                    Err((code, why)) => {
                        let c = &mut self.clients[i];
                        c.attached = true;
                        c.exec = true;
                        let mut b = Vec::new();
                        Frame::Error(why).encode(&mut b);
                        Frame::Exit(Exit { code: Some(code), signal: None, oom_killed: false }).encode(&mut b);
                        c.out.extend(b);
                        c.closing = true;
                        flush_client(c);
                    }
                }
            }
            Request::Kill { signal, stop } => {
                if stop {
                    self.stopping = true;
                    if self.restart_at.take().is_some() {
                        self.state.phase = Phase::Exited;
                        self.save();
                    }
                }
                let res = match (&self.child, Signal::try_from(signal)) {
                    (_, Err(_)) => Some(format!("no such signal: {signal}")),
                    (Some(c), Ok(s)) => nix::sys::signal::kill(c.pid, s).err().map(|e| format!("kill: {e}")),
                    (None, Ok(_)) => (!stop).then(|| "the container is not running".to_string()),
                };
                reply(&mut self.clients[i], res);
            }
        }
    }

    fn frame(&mut self, f: Frame, stdin: bool) {
        match f {
            Frame::Stdin(d) if stdin => self.stdin.extend(d),
            Frame::CloseStdin if stdin => self.close_stdin = true,
            Frame::Resize { rows, cols } => {
                if let Some(fd) = self.child.as_ref().filter(|c| c.tty).and_then(|c| c.input.as_ref()) {
                    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
                    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            Frame::Signal(n) => {
                if let (Some(c), Ok(s)) = (&self.child, Signal::try_from(n)) {
                    let _ = nix::sys::signal::kill(c.pid, s);
                }
            }
            _ => {}
        }
    }

    fn signal(&mut self) -> io::Result<()> {
        while let Ok(Some(si)) = self.signals.read_signal() {
            match Signal::try_from(si.ssi_signo as i32) {
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                    // Someone stops the shim: pass it on to the container, which decides.
                    if let Some(c) = &self.child {
                        let _ = nix::sys::signal::kill(c.pid, Signal::SIGTERM);
                    }
                }
                _ => {}
            }
        }
        self.reap();
        Ok(())
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.exited(pid, None, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn exited(&mut self, pid: Pid, code: Option<i32>, signal: Option<i32>) {
        if self.exec_exited(pid, Exit { code, signal, oom_killed: false }) {
            return;
        }
        let Some(mut child) = self.child.take_if(|c| c.pid == pid) else { return };
        // The pid namespace is gone with its first process: drain what is left of the output.
        child.input = None;
        child.go = None;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let c = self.child.as_ref().expect("child");
            if c.out.is_none() && c.err.is_none() && c.report.is_none() {
                break;
            }
            let fds: Vec<RawFd> =
                [&c.out, &c.err, &c.report].iter().filter_map(|f| f.as_ref().map(|f| f.as_raw_fd())).collect();
            let mut p: Vec<libc::pollfd> =
                fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
            // SAFETY: `p` is a valid pollfd array of the length passed.
            if unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, 200) } <= 0 {
                break;
            }
            self.read_output(false);
            self.read_output(true);
            self.read_report();
        }
        let child = self.child.take().expect("child");
        let oom_killed = signal == Some(libc::SIGKILL)
            && self.cgroup.as_ref().and_then(|cg| cg.stats().ok()).is_some_and(|s| s.oom_kills > 0);
        let mut exit = Exit { code, signal, oom_killed };
        let mut error = None;
        if !child.reported.is_empty() {
            // The command could not be exec'd: the shell's 127.
            error = Some(String::from_utf8_lossy(&child.reported[1.min(child.reported.len())..]).trim().to_string());
            exit = Exit { code: Some(127), signal: None, oom_killed: false };
        }
        if let Some(e) = &error {
            let msg = format!("metac: {e}\r\n");
            self.broadcast(&Frame::Stderr(msg.into_bytes()));
        }
        self.ended(exit, error);
    }

    /// The process ended: start again by the policy, or end for good.
    fn ended(&mut self, exit: Exit, error: Option<String>) {
        self.state.exit = Some(exit);
        self.state.finished = Some(now_ms());
        self.state.error = error;
        self.state.pid = None;
        if !self.stopping && self.cfg.spec.restart.again(exit.status(), self.state.restarts) {
            let backoff = Duration::from_millis(100 << self.state.restarts.min(7));
            self.restart_at = Some(Instant::now() + backoff.min(Duration::from_secs(10)));
            self.state.phase = Phase::Restarting;
            self.save();
            return;
        }
        // Attached clients first (`metac run` waits for this frame), then the record of it.
        self.broadcast(&Frame::Exit(exit));
        self.state.phase = Phase::Exited;
        self.save();
        // Followers of the log (`logs -f`) end once they have read it all.
        if let Err(e) = self.log.finish() {
            eprintln!("mark the log finished: {e}");
        }
        for c in &mut self.clients {
            c.closing = true;
        }
        // Give clients a bounded time to take their last frames.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.clients.iter().any(|c| !c.dead && !c.out.is_empty()) && Instant::now() < deadline {
            for c in &mut self.clients {
                flush_client(c);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.clients.clear();
    }
}

/// The user a rootless container's process runs as: root inside (its owner) by default, another only if its
/// owner's subordinate ids map it; a container of root's runs as asked.
fn rootless_user(cfg: &Config, asked: Option<User>) -> Result<Option<User>, String> {
    if !cfg.rootless() {
        return Ok(asked);
    }
    match asked {
        None => Ok(Some(User { uid: 0, gid: 0 })),
        Some(u) if Maps::of_host(cfg.owner.uid, cfg.owner.gid).maps(u.uid, u.gid) => Ok(Some(u)),
        Some(u) => Err(format!(
            "user {}:{} is not mapped in this rootless container: root inside is its owner, and ids 1 and up only \
             with subordinate ids in /etc/subuid and /etc/subgid",
            u.uid, u.gid
        )),
    }
}

/// Writes what waits in `buf` to a process's input (non-blocking), and ends its input once `close` is asked and
/// `buf` is empty: a pipe is closed; a terminal, which has no end of input but its line discipline's, gets ^D.
fn feed(input: &mut Option<OwnedFd>, buf: &mut VecDeque<u8>, close: &mut bool, tty: bool) {
    let Some(fd) = input.as_ref() else {
        buf.clear();
        return;
    };
    if !buf.is_empty() {
        let (a, _) = buf.as_slices();
        match nix::unistd::write(fd.as_fd(), a) {
            Ok(n) => drop(buf.drain(..n)),
            Err(nix::Error::EAGAIN) => return,
            Err(_) => {
                *input = None;
                buf.clear();
                return;
            }
        }
    }
    if buf.is_empty() && *close {
        *close = false;
        if tty {
            let _ = nix::unistd::write(fd.as_fd(), &[4u8]);
        } else {
            *input = None;
        }
    }
}

fn reply(c: &mut Client, error: Option<String>) {
    let mut b = serde_json::to_vec(&Reply { error }).expect("reply serializes");
    b.push(b'\n');
    c.out.extend(b);
    c.closing = true;
    flush_client(c);
}

fn flush_client(c: &mut Client) {
    while !c.out.is_empty() {
        let (a, _) = c.out.as_slices();
        match c.sock.write(a) {
            Ok(0) => {
                c.dead = true;
                return;
            }
            Ok(n) => drop(c.out.drain(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                c.dead = true;
                return;
            }
        }
    }
}

/// The child's side of its stdio.
enum Stdio {
    /// A terminal the child opens itself once its /dev/pts is mounted, sending the master over `console`.
    Tty {
        console: OwnedFd,
        size: Option<(u16, u16)>,
    },
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

/// The container's first process, between clone and exec. Never returns.
fn child_main(go: OwnedFd, report: OwnedFd, stdio: Stdio, cgroup: bool, own_net: bool, plan: &Plan) -> ! {
    let rootless = plan.rootless;
    let fail = |report: &OwnedFd, msg: String| -> ! {
        let _ = write_all_fd(report.as_fd(), format!("E{msg}").as_bytes());
        // SAFETY: _exit ends the process without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(1) }
    };
    // Signals as a fresh process has them: nothing blocked, nothing ignored.
    let _ = SigSet::empty().thread_set_mask();
    // SAFETY: setting SIGPIPE back to its default disposition has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut b = [0u8; 1];
    if !matches!(read_fd(go.as_fd(), &mut b), Ok(1)) {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    if rootless {
        // Until now this process had the shim's (host root's) ids, which its user namespace does not map: take
        // root inside, which is the container's owner outside.
        let root = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
        if let Err(e) =
            nix::unistd::setresgid(root.0, root.0, root.0).and_then(|()| nix::unistd::setresuid(root.1, root.1, root.1))
        {
            fail(&report, format!("become root in the user namespace: {e}"));
        }
    }
    if cgroup {
        if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP) {
            fail(&report, format!("unshare the cgroup namespace: {e}"));
        }
    }
    if let Err(e) = nix::unistd::setsid() {
        fail(&report, format!("setsid: {e}"));
    }
    let r = match &stdio {
        Stdio::Tty { .. } => Ok(()),
        Stdio::Pipes { stdin, stdout, stderr } => {
            let null;
            let i = match stdin {
                Some(i) => i.as_fd(),
                None => match fs::File::open("/dev/null") {
                    Ok(f) => {
                        null = f;
                        null.as_fd()
                    }
                    Err(e) => fail(&report, format!("open /dev/null: {e}")),
                },
            };
            dup_to(i, 0).and_then(|()| dup_to(stdout.as_fd(), 1)).and_then(|()| dup_to(stderr.as_fd(), 2))
        }
    };
    if let Err(e) = r {
        fail(&report, format!("set up stdio: {e}"));
    }
    if own_net {
        if let Err(e) = lo_up() {
            fail(&report, format!("bring lo up: {e}"));
        }
    }
    if let Err(e) = launch::root(&crate::sys::Linux, plan) {
        fail(&report, e.to_string());
    }
    if let Stdio::Tty { console, size } = &stdio {
        if let Err(e) = open_terminal(console.as_fd(), *size) {
            fail(&report, format!("open the container's terminal: {e}"));
        }
    }
    drop(stdio);
    if let Err(e) = launch::process(&crate::sys::Linux, plan) {
        fail(&report, e.to_string());
    }
    if write_all_fd(report.as_fd(), b"R").is_err() || !matches!(read_fd(go.as_fd(), &mut b), Ok(1)) {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    drop(go);
    // Every descriptor but stdio and the report pipe (close-on-exec) closes at exec.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this process's descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let e = crate::sys::Syscall::exec(&crate::sys::Linux, &plan.args, &plan.env);
    let cmd = plan.args[0].to_string_lossy();
    let msg = match e.raw_os_error() {
        Some(libc::ENOENT) => format!("{cmd}: command not found in the container"),
        Some(libc::EACCES) => format!("{cmd}: permission denied"),
        _ => format!("exec {cmd}: {e}"),
    };
    let _ = write_all_fd(report.as_fd(), format!("E{msg}").as_bytes());
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}

/// Opens a terminal in the container's own devpts (its root is in place), makes it the controlling terminal and
/// stdin, stdout and stderr, and sends its master to the shim.
fn open_terminal(console: BorrowedFd<'_>, size: Option<(u16, u16)>) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&name)?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, valid for the call.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    // SAFETY: TIOCSCTTY on the slave of a new session; no pointers.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    (0..3).try_for_each(|fd| dup_to(slave.as_fd(), fd))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [io::IoSlice::new(b"m")];
    nix::sys::socket::sendmsg::<()>(console.as_raw_fd(), &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one descriptor sent with SCM_RIGHTS.
fn receive_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in this process for us; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other("no descriptor came"))
}

/// Brings the loopback interface of a new network namespace up, as docker does.
fn lo_up() -> io::Result<()> {
    // SAFETY: a plain socket(2) call; the descriptor is owned right after.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a new descriptor nobody else owns.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, c) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *c as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq, which lives across both calls.
    unsafe {
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map_err(io::Error::from).map(drop)
}

fn dup_to(fd: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 onto a standard descriptor number; the process owns both.
    if unsafe { libc::dup2(fd.as_raw_fd(), to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(nix::Error::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

fn write_all_fd(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(n) => buf = &buf[n..],
        }
    }
    Ok(())
}
