//! `metac vm`: virtual machines whose disks are remote files. The node binds each drive's `file` ref as a local
//! NBD endpoint (the file kind's bind, through [`Binder::bind`](metac_resource::Binder::bind)) and runs
//! `qemu-system-x86_64` with qemu's own NBD client on the bind's socket, so the guest's reads and writes go to the
//! exporter with no copy of the image here.
//!
//! - [`VmManager`] (this file) owns the node's VMs: it checks a start request for its caller, binds the drives,
//!   starts qemu, keeps its console, stops it (ACPI power button over QMP, then `quit`, then SIGKILL) and, when it
//!   ends, unbinds the drives and keeps its record (state, exit, console) until the name is reused.
//! - `drives`: each drive's ref bound as a local NBD socket, waited for, and unbound on failure.
//! - `qemu`: the user's words (`--drive`, `--memory`, names) parsed, and qemu's command line built (pure).
//! - `process`: starting qemu so that it dies with the node (`PR_SET_PDEATHSIG`), signals and exit via a pidfd.
//! - `console`: the serial console's ring of recent output and its attached consoles.
//! - `qmp`: the few QMP commands the node sends.
//! - `api`: the routes (`/v1/vm...`), merged into the file kind's, and their request types.
//!
//! A VM belongs to the local user who started it: only they and root see it, stop it or attach to its console.
//! The files it boots from (`--kernel`, `--initrd`, `--cdrom`) are opened as that user and handed to qemu as
//! descriptors; qemu itself runs as the node's user, in a seccomp sandbox (`-sandbox on`).

pub mod api;
pub mod console;
mod drives;
pub mod initramfs;
mod process;
pub mod qemu;
pub mod qmp;
pub mod run;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metac_resource::{Caller, Ctx, Error, Kind, Rights};
use tokio::sync::watch;

use self::api::{DriveInfo, StartReq, VmExit, VmInfo};
use self::console::Console;
use self::drives::{unbind_all, Checked};
use self::qemu::{Accel, Machine};

/// What is wrong with a VM request, in words that say how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A `--drive` that does not parse.
    #[error("bad --drive {spec:?}: {why}")]
    Drive {
        /// What the user wrote.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A VM name that is not allowed.
    #[error("bad VM name {name:?}: {why}")]
    Name {
        /// The name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A memory size that does not parse or is out of range.
    #[error("bad --memory {value:?}: {why}")]
    Memory {
        /// What the user wrote.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A shared directory that is not allowed.
    #[error("bad share {tag:?}: {why}")]
    Share {
        /// Its tag.
        tag: String,
        /// What is wrong.
        why: String,
    },
    /// A CPU count out of range.
    #[error("bad --cpus {cpus}: a VM has 1 to {} CPUs", qemu::MAX_CPUS)]
    Cpus {
        /// The count.
        cpus: u32,
    },
    /// qemu is not installed.
    #[error("{} is not installed on this node (not in PATH {}): install it with `apt-get install {}` (Debian); \
             metac installs nothing by itself", qemu::QEMU, path.display(), qemu::QEMU_PACKAGE)]
    NoQemu {
        /// The PATH searched.
        path: PathBuf,
    },
}

impl From<VmError> for Error {
    fn from(e: VmError) -> Error {
        match e {
            VmError::NoQemu { .. } => Error::Unavailable(e.to_string()),
            e => Error::BadOptions(e.to_string()),
        }
    }
}

/// Default guest memory, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Default virtual CPUs.
pub const DEFAULT_CPUS: u32 = 2;
/// Default time `vm stop` gives the guest to power off before qemu is told to quit.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most VMs running on a node at once.
pub const MAX_RUNNING: usize = 64;
/// Most ended VMs whose record (exit, console) is kept; the oldest goes first.
const MAX_ENDED: usize = 32;
/// How long qemu may take to answer on QMP after it started.
const QMP_WAIT: Duration = Duration::from_secs(30);
/// How long qemu gets to end after `quit`, and after SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// The last bytes of qemu's stderr kept for an error message.
const STDERR_TAIL: usize = 4096;

/// How a VM ended, with when.
#[derive(Debug, Clone)]
struct End {
    exit: VmExit,
    at: Instant,
}

/// One VM, running or ended.
struct Vm {
    name: String,
    owner: Caller,
    pid: u32,
    accel: Accel,
    accel_reason: Option<String>,
    cpus: u32,
    memory_mib: u64,
    drives: Vec<DriveInfo>,
    started: SystemTime,
    started_at: Instant,
    /// Order of starts, to evict the oldest ended record first.
    seq: u64,
    qmp: PathBuf,
    console: Arc<Console>,
    signaller: process::Signaller,
    /// `vm stop` asked for its end: a kill is then no failure (shared with the task that waits for qemu).
    stopping: Arc<AtomicBool>,
    end: watch::Receiver<Option<End>>,
}

impl Vm {
    fn ended(&self) -> Option<End> {
        self.end.borrow().clone()
    }

    fn info(&self) -> VmInfo {
        let end = self.ended();
        let state = match &end {
            None if self.stopping.load(Ordering::Relaxed) => "stopping",
            None => "running",
            Some(e) if e.exit.error.is_some() => "failed",
            Some(_) => "exited",
        };
        let until = end.as_ref().map_or_else(Instant::now, |e| e.at);
        VmInfo {
            name: self.name.clone(),
            state: state.into(),
            owner: self.owner.uid,
            pid: self.pid,
            accel: self.accel,
            accel_reason: self.accel_reason.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            drives: self.drives.clone(),
            started: self.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            uptime: until.saturating_duration_since(self.started_at).as_secs(),
            exit: end.map(|e| e.exit),
        }
    }

    /// Waits until the VM has ended (its binds cut), at most `t`; whether it did.
    async fn wait_end(&self, t: Duration) -> bool {
        let mut end = self.end.clone();
        tokio::time::timeout(t, end.wait_for(|e| e.is_some())).await.is_ok_and(|r| r.is_ok())
    }
}

#[derive(Default)]
struct Table {
    vms: HashMap<String, Arc<Vm>>,
    /// Names being started (binding drives, waiting for qemu): taken, not yet listed.
    starting: HashSet<String>,
    seq: u64,
}

/// The node's VMs.
pub struct VmManager {
    ctx: Ctx,
    table: Mutex<Table>,
}

/// A name held while its VM starts; let go when the start ends, whatever happened.
struct Reservation<'a> {
    m: &'a VmManager,
    name: String,
    /// The VM's place in the order of starts.
    seq: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.m.lock().starting.remove(&self.name);
    }
}

/// What a start request becomes once checked: everything qemu needs but the drives' sockets.
struct Plan {
    name: String,
    qemu: PathBuf,
    accel: Accel,
    /// Why not KVM, when TCG.
    accel_reason: Option<String>,
    drives: Vec<(metac_resource::Ref, Checked)>,
    fds: Vec<OwnedFd>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cdrom: Option<PathBuf>,
}

impl VmManager {
    /// The VMs of the node that lends `ctx`.
    pub fn new(ctx: Ctx) -> Arc<VmManager> {
        Arc::new(VmManager { ctx, table: Mutex::new(Table::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a VM for `caller`: binds its drives, starts qemu and returns once qemu answers on QMP.
    pub async fn start(&self, req: StartReq, caller: Caller) -> Result<VmInfo, Error> {
        let plan = self.plan(&req, &caller)?;
        let memory_mib = req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        let cpus = req.cpus.unwrap_or(DEFAULT_CPUS);
        let reservation = self.reserve(&plan.name)?;
        let (binds, drives, infos) = drives::bind(&self.ctx, &plan.name, &plan.drives, &caller).await?;

        let dir = self.qmp_dir()?;
        let qmp = dir.join(format!("{}.qmp", plan.name));
        let _ = std::fs::remove_file(&qmp);
        let machine = Machine {
            name: plan.name.clone(),
            memory_mib,
            cpus,
            accel: plan.accel,
            drives,
            kernel: plan.kernel.clone(),
            initrd: plan.initrd.clone(),
            append: req.append.clone(),
            cdrom: plan.cdrom.clone(),
            shares: req.shares.clone(),
            qmp: qmp.clone(),
        };
        let p = process::spawn(plan.qemu.clone(), machine.args(), plan.fds, qemu::FIRST_FD)
            .await
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("cannot start {}: {e}", qemu::QEMU))))?;
        let started = SystemTime::now();
        let started_at = Instant::now();
        let pid = p.pid;
        tracing::info!("vm {}: qemu {pid} started ({}), for {caller}", plan.name, plan.accel.name());

        let running = supervise(p, Arc::clone(&self.ctx.binder), binds, plan.name.clone(), qmp.clone())?;
        let vm = Arc::new(Vm {
            name: plan.name.clone(),
            owner: caller,
            pid,
            accel: plan.accel,
            accel_reason: plan.accel_reason.clone(),
            cpus,
            memory_mib,
            drives: infos,
            started,
            started_at,
            seq: reservation.seq,
            qmp,
            console: running.console,
            signaller: running.signaller,
            stopping: running.stopping,
            end: running.end,
        });
        self.wait_ready(&vm).await?;
        self.insert(Arc::clone(&vm));
        Ok(vm.info())
    }

    /// Checks a start request for `caller` before anything is made.
    fn plan(&self, req: &StartReq, caller: &Caller) -> Result<Plan, Error> {
        let name = match &req.name {
            Some(n) => {
                qemu::check_name(n)?;
                n.clone()
            }
            None => self.free_name(),
        };
        if let Some(m) = req.memory_mib {
            qemu::parse_memory(&format!("{m}M"))?;
        }
        if let Some(c) = req.cpus {
            qemu::check_cpus(c)?;
        }
        if !req.shares.is_empty() && !caller.is_root() {
            // qemu's 9p server runs as the node's user: it would read and write what the caller may not.
            return Err(Error::Refused {
                by: "this node".into(),
                reason: "only root may share directories with a VM (metac run --vm): qemu serves them as the node's \
                         user"
                    .into(),
            });
        }
        for sh in &req.shares {
            sh.check().map_err(|e| Error::BadOptions(e.to_string()))?;
            if !sh.path.is_dir() {
                return Err(Error::BadOptions(format!("{} is not a directory to share", sh.path.display())));
            }
        }
        if req.drives.is_empty() && req.kernel.is_none() && req.cdrom.is_none() {
            return Err(Error::BadOptions("a VM needs something to boot: --drive, --kernel or --cdrom".into()));
        }
        if req.drives.len() > qemu::MAX_DRIVES {
            return Err(Error::BadOptions(format!("a VM has at most {} drives", qemu::MAX_DRIVES)));
        }
        if req.kernel.is_none() && (req.initrd.is_some() || req.append.is_some()) {
            return Err(Error::BadOptions("--initrd and --append go with --kernel".into()));
        }
        let mut drives = Vec::new();
        for (i, d) in req.drives.iter().enumerate() {
            let r = crate::file::api::parse_ref(&d.reference, Kind::File)
                .map_err(|e| Error::BadOptions(format!("drive {} ({}): {e}", i + 1, short_text(&d.reference))))?;
            let writable = r.token.effective().rights.contains(Rights::WRITE);
            drives.push((r, Checked { format: d.format, readonly: d.readonly || !writable }));
        }
        let qemu = qemu::find(std::env::var_os("PATH").as_deref())?;
        let (accel, accel_reason) = match req.accel {
            None => detect_accel(),
            Some(Accel::Tcg) => (Accel::Tcg, Some("asked for with --accel tcg".to_string())),
            Some(Accel::Kvm) => match kvm() {
                Ok(()) => (Accel::Kvm, None),
                Err(why) => return Err(Error::BadOptions(format!("--accel kvm: {why}"))),
            },
        };
        // The files are opened as the caller: a VM boots only what its user may read.
        let mut fds = Vec::new();
        let mut fd_path = |path: &Option<PathBuf>, what: &str| -> Result<Option<PathBuf>, Error> {
            let Some(path) = path else { return Ok(None) };
            fds.push(open_as(caller, path, what)?);
            Ok(Some(PathBuf::from(format!("/dev/fd/{}", qemu::FIRST_FD + fds.len() as i32 - 1))))
        };
        let kernel = fd_path(&req.kernel, "kernel")?;
        let initrd = fd_path(&req.initrd, "initrd")?;
        let cdrom = fd_path(&req.cdrom, "cdrom")?;
        Ok(Plan { name, qemu, accel, accel_reason, drives, fds, kernel, initrd, cdrom })
    }

    /// Takes `name` for a start, if no running or starting VM has it.
    fn reserve(&self, name: &str) -> Result<Reservation<'_>, Error> {
        let mut t = self.lock();
        let running = t.vms.values().filter(|v| v.ended().is_none()).count();
        if t.vms.get(name).is_some_and(|v| v.ended().is_none()) || t.starting.contains(name) {
            return Err(Error::BadOptions(format!(
                "a VM named {name} is running already on this node: give another --name"
            )));
        }
        if running + t.starting.len() >= MAX_RUNNING {
            return Err(Error::Unavailable(format!("this node runs {MAX_RUNNING} VMs already")));
        }
        t.starting.insert(name.to_string());
        t.seq += 1;
        Ok(Reservation { m: self, name: name.to_string(), seq: t.seq })
    }

    /// The first `vmN` no VM has.
    fn free_name(&self) -> String {
        let t = self.lock();
        (1..).map(|n| format!("vm{n}")).find(|n| !t.vms.contains_key(n) && !t.starting.contains(n)).expect("a name")
    }

    fn qmp_dir(&self) -> Result<PathBuf, Error> {
        let dir = self.ctx.run_dir.join("vm");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("cannot make {}: {e}", dir.display()))))?;
        Ok(dir)
    }

    /// Waits until qemu answers on QMP, or fails with what qemu said when it ended first.
    async fn wait_ready(&self, vm: &Vm) -> Result<(), Error> {
        let ready = async {
            loop {
                if let Ok(mut q) = qmp::Qmp::connect(&vm.qmp).await {
                    if q.execute("query-status").await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let mut end = vm.end.clone();
        let ended = async move {
            let _ = end.wait_for(|e| e.is_some()).await;
        };
        tokio::select! {
            () = ready => Ok(()),
            () = ended => {
                let exit = vm.ended().map(|e| e.exit);
                let why = exit.and_then(|x| x.error).unwrap_or_else(|| "it ended at once".into());
                Err(Error::BadOptions(format!("{} did not start: {why}", qemu::QEMU)))
            }
            () = tokio::time::sleep(QMP_WAIT) => {
                let _ = vm.signaller.signal(libc::SIGKILL);
                vm.wait_end(QUIT_WAIT).await;
                Err(Error::Unavailable(format!("{} did not answer on QMP within {QMP_WAIT:?}; killed it", qemu::QEMU)))
            }
        }
    }

    /// Lists a started VM, evicting the oldest ended records beyond [`MAX_ENDED`].
    fn insert(&self, vm: Arc<Vm>) {
        let mut t = self.lock();
        t.vms.insert(vm.name.clone(), vm);
        let mut ended: Vec<(u64, String)> =
            t.vms.values().filter(|v| v.ended().is_some()).map(|v| (v.seq, v.name.clone())).collect();
        ended.sort();
        for (_, name) in ended.iter().take(ended.len().saturating_sub(MAX_ENDED)) {
            t.vms.remove(name);
        }
    }

    /// The VM `name`, if `caller` may see it (its owner, or root).
    fn find(&self, name: &str, caller: &Caller) -> Result<Arc<Vm>, Error> {
        let t = self.lock();
        match t.vms.get(name) {
            Some(v) if caller.is_root() || v.owner.uid == caller.uid => Ok(Arc::clone(v)),
            _ => Err(Error::NotFound(format!("no VM named {name} (metac vm ls lists yours)"))),
        }
    }

    /// The VMs `caller` may see: running ones, and ended ones too with `all`; oldest first.
    pub fn list(&self, caller: &Caller, all: bool) -> Vec<VmInfo> {
        let t = self.lock();
        let mut v: Vec<&Arc<Vm>> = t
            .vms
            .values()
            .filter(|v| caller.is_root() || v.owner.uid == caller.uid)
            .filter(|v| all || v.ended().is_none())
            .collect();
        v.sort_by_key(|v| v.seq);
        v.iter().map(|v| v.info()).collect()
    }

    /// One VM.
    pub fn get(&self, name: &str, caller: &Caller) -> Result<VmInfo, Error> {
        self.find(name, caller).map(|v| v.info())
    }

    /// Stops a VM: the ACPI power button, then `quit` after `timeout`, then SIGKILL; `force` kills at once.
    /// Returns once it has ended and its drives are unbound.
    pub async fn stop(&self, name: &str, caller: &Caller, force: bool, timeout: Duration) -> Result<VmInfo, Error> {
        let vm = self.find(name, caller)?;
        if vm.ended().is_some() {
            return Ok(vm.info());
        }
        vm.stopping.store(true, Ordering::Relaxed);
        if !force {
            if let Err(e) = qmp_command(&vm.qmp, "system_powerdown").await {
                tracing::debug!("vm {name}: {e}");
            }
            if vm.wait_end(timeout).await {
                return Ok(vm.info());
            }
            tracing::info!("vm {name}: the guest did not power off within {timeout:?}; quitting qemu");
            if let Err(e) = qmp_command(&vm.qmp, "quit").await {
                tracing::debug!("vm {name}: {e}");
            }
            if vm.wait_end(QUIT_WAIT).await {
                return Ok(vm.info());
            }
        }
        let _ = vm.signaller.signal(libc::SIGKILL);
        if vm.wait_end(QUIT_WAIT).await {
            Ok(vm.info())
        } else {
            Err(Error::Unavailable(format!("vm {name}: qemu (pid {}) did not end after SIGKILL", vm.pid)))
        }
    }

    /// Waits until a VM ends.
    pub async fn wait(&self, name: &str, caller: &Caller) -> Result<VmInfo, Error> {
        let vm = self.find(name, caller)?;
        let mut end = vm.end.clone();
        let _ = end.wait_for(|e| e.is_some()).await;
        Ok(vm.info())
    }

    /// Attaches to a VM's serial console.
    pub fn console(&self, name: &str, caller: &Caller) -> Result<console::Attached, Error> {
        self.find(name, caller).map(|v| v.console.attach())
    }
}

/// VMs end with the node: when its routes go (the node stops), their qemu is killed, as the kernel does when the
/// node process dies ([`process`]).
impl Drop for VmManager {
    fn drop(&mut self) {
        for vm in self.lock().vms.values().filter(|v| v.ended().is_none()) {
            let _ = vm.signaller.signal(libc::SIGKILL);
        }
    }
}

/// What the node holds of a running qemu.
struct Running {
    console: Arc<Console>,
    signaller: process::Signaller,
    stopping: Arc<AtomicBool>,
    end: watch::Receiver<Option<End>>,
}

/// Takes over a started qemu and its drives' binds: its console and stderr are read, and when it ends, however it
/// ends, the binds are unbound, its QMP socket removed and its end announced. On an error qemu is killed (and the
/// binds unbound as they drop).
fn supervise(
    mut p: process::Process,
    binder: Arc<dyn metac_resource::Binder>,
    binds: drives::Binds,
    name: String,
    qmp: PathBuf,
) -> Result<Running, Error> {
    let (pipes, signaller) = match take_pipes(&mut p.child).and_then(|pipes| Ok((pipes, p.signaller()?))) {
        Ok(v) => v,
        Err(e) => {
            let _ = p.child.kill();
            let _ = p.child.wait();
            return Err(e);
        }
    };
    let (console, input) = Console::new();
    let console = Arc::new(console);
    let (end_tx, end) = watch::channel(None);
    let stopping = Arc::new(AtomicBool::new(false));
    tokio::spawn(Console::feed(input, pipes.stdin));
    let pump = tokio::spawn({
        let console = Arc::clone(&console);
        async move { console.pump(pipes.stdout).await }
    });
    let stderr = tokio::spawn(tail(pipes.stderr));
    let bind_ids = binds.take();
    let stopped = Arc::clone(&stopping);
    tokio::spawn(async move {
        let pid = p.pid;
        let status = p.wait().await;
        // qemu's pipes close with it; a helper that kept them open gets a bounded moment.
        let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
        let stderr = tokio::time::timeout(Duration::from_secs(2), stderr).await.ok().and_then(|r| r.ok());
        let exit = exit(status, stopped.load(Ordering::Relaxed), stderr.unwrap_or_default());
        tracing::info!("vm {name}: qemu {pid} ended: {exit:?}");
        unbind_all(&*binder, &bind_ids).await;
        let _ = std::fs::remove_file(&qmp);
        let _ = end_tx.send(Some(End { exit, at: Instant::now() }));
    });
    Ok(Running { console, signaller, stopping, end })
}

struct Pipes {
    stdin: tokio::net::unix::pipe::Sender,
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
}

fn take_pipes(child: &mut std::process::Child) -> Result<Pipes, Error> {
    use tokio::net::unix::pipe::{Receiver, Sender};
    let (Some(i), Some(o), Some(e)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
        return Err(Error::Io(std::io::Error::other("qemu started without its stdio pipes")));
    };
    Ok(Pipes {
        stdin: Sender::from_owned_fd(OwnedFd::from(i))?,
        stdout: Receiver::from_owned_fd(OwnedFd::from(o))?,
        stderr: Receiver::from_owned_fd(OwnedFd::from(e))?,
    })
}

/// The last [`STDERR_TAIL`] bytes of qemu's stderr, once it closes.
async fn tail(mut r: tokio::net::unix::pipe::Receiver) -> String {
    use tokio::io::AsyncReadExt;
    let mut ring = console::Ring::new(STDERR_TAIL);
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        ring.push(&buf[..n]);
    }
    String::from_utf8_lossy(&ring.contents()).trim().to_string()
}

/// How qemu ended, in the API's words: a failure unless it exited with 0 or was stopped on request.
fn exit(status: std::io::Result<std::process::ExitStatus>, stopped: bool, stderr: String) -> VmExit {
    let (code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let error = match (&status, code) {
        (Err(e), _) => Some(format!("cannot wait for qemu: {e}")),
        (Ok(_), Some(0)) => None,
        _ if stopped => None,
        (Ok(s), _) => {
            let said = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
            Some(format!("{} {s}{said}", qemu::QEMU))
        }
    };
    VmExit { code, signal, stopped, error }
}

async fn qmp_command(socket: &Path, command: &str) -> Result<(), qmp::Error> {
    qmp::Qmp::connect(socket).await?.execute(command).await.map(drop)
}

/// KVM when this node can run a stock guest kernel with it, TCG otherwise, with the reason.
fn detect_accel() -> (Accel, Option<String>) {
    match kvm() {
        Ok(()) => (Accel::Kvm, None),
        Err(why) => (Accel::Tcg, Some(why)),
    }
}

/// Whether KVM can run a stock guest kernel here, and if not, why. A /dev/kvm backed only by PVM (`kvm_pvm`,
/// KVM without hardware virtualisation, found in some cloud VMs) boots PVM-enabled guest kernels alone: a distribution
/// kernel hangs in its first instructions, so such a /dev/kvm counts as none.
fn kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm cannot be opened: {e}"))?;
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd") {
        return Err("/dev/kvm is PVM (kvm_pvm), which boots only PVM-enabled guest kernels".into());
    }
    Ok(())
}

/// Opens a file named in a start request as `caller`.
fn open_as(caller: &Caller, path: &Path, what: &str) -> Result<OwnedFd, Error> {
    if !path.is_absolute() {
        return Err(Error::BadOptions(format!("--{what} {}: the path must be absolute", path.display())));
    }
    let f = caller.act(|| std::fs::File::open(path)).map_err(|e| {
        Error::BadOptions(format!("cannot open --{what} {}: {e} (the node opens it as you, {caller})", path.display()))
    })?;
    let m = f.metadata()?;
    if !(m.is_file() || std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type())) {
        return Err(Error::BadOptions(format!("--{what} {}: not a regular file", path.display())));
    }
    Ok(f.into())
}

/// The start of something a user typed, for a message.
fn short_text(s: &str) -> String {
    let t: String = s.chars().take(24).collect();
    if t.len() < s.len() {
        format!("{t}...")
    } else {
        t
    }
}
