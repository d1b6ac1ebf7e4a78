//! Memory, cpu and pids limits for a container, and the figures the node reports about it, on whichever cgroup
//! layout the host mounts.
//!
//! Linux hosts come in three layouts; [`Hierarchy::detect`] reads `/proc/self/mountinfo` to tell which:
//!
//! - **v1**: one `cgroup` filesystem per controller, or per few co-mounted ones (`cpu,cpuacct`), each under
//!   `/sys/fs/cgroup/<controllers>`. A container's group is one directory in each hierarchy we use (memory, cpu,
//!   cpuacct, pids, freezer) and the files have v1 names (`memory.limit_in_bytes`, `cpu.cfs_quota_us`).
//! - **v2**: a single `cgroup2` filesystem, usually at `/sys/fs/cgroup`. A group is one directory. A parent must
//!   switch controllers on for its children in `cgroup.subtree_control`, and a group with children may hold no
//!   processes of its own (the no-internal-process rule).
//! - **hybrid**: v1 hierarchies as above, plus a `cgroup2` mount (systemd's `/sys/fs/cgroup/unified`) that usually
//!   has no controllers but tracks processes. Limits live in v1; the group is created in the v2 mount too, as
//!   systemd does, so tools that read v2 see the container and `cgroup.kill` can end it.
//!
//! Container groups live at `<mount>/metac/<name>` in every hierarchy that matters. `metac/` is shared by all
//! containers, never holds processes and is never removed; on v2 it hands the memory, cpu and pids controllers down
//! to its children. Each controller is looked up on its own: a v1 hierarchy that has it wins, otherwise the v2 group
//! if the controller is enabled there. That one rule covers all three layouts, including hybrid hosts that moved a
//! single controller to v2.
//!
//! Everything is plain file IO on cgroupfs except `mkdir` and `rmdir`, whose cgroupfs behaviour a directory in a
//! test cannot imitate (a new group comes with its interface files; a group with live processes is busy). Those two
//! calls sit behind a small seam that the tests replace with a fake kernel; the node always uses the real calls.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// The directory under each hierarchy's root that holds every container group.
const PARENT: &str = "metac";
/// The smallest memory limit accepted (4 MiB): below it a container cannot even exec its first process.
pub const MIN_MEMORY: u64 = 4 << 20;
/// The largest memory limit accepted; anything near v1's "unlimited" value would read back as no limit at all.
const MAX_MEMORY: u64 = 1 << 62;
/// What v1 reports for "no limit" (`PAGE_COUNTER_MAX` pages); figures at or above it mean unlimited.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;
/// The cfs period, in microseconds, that cpu quotas are expressed against: the kernel's default 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// Fewest cpus accepted: the kernel refuses a quota under 1 ms per period.
const MIN_CPUS: f64 = 0.01;
/// Most cpus accepted; no machine has as many, and it keeps the quota arithmetic far from overflow.
const MAX_CPUS: f64 = 1_000_000.0;
/// Largest pids limit: the kernel's `PID_MAX_LIMIT`, above which `pids.max` refuses the value.
const MAX_PIDS: u64 = 4_194_304;
/// Longest group name; container ids are far shorter.
const MAX_NAME: usize = 128;
/// Pause between looks at a group that is still freezing or still has exiting processes.
const STEP: Duration = Duration::from_millis(10);
/// How many steps freeze and thaw wait for the kernel to report the new state (2 s in all).
const FREEZE_STEPS: u32 = 200;
/// How many times rmdir is tried while killed processes finish exiting (0.5 s in all).
const RMDIR_TRIES: u32 = 50;
/// Most of `/proc/self/mountinfo` read; hosts with thousands of mounts stay far below it.
const MAX_MOUNTINFO: u64 = 16 << 20;
/// Most mountinfo lines looked at.
const MAX_LINES: usize = 100_000;
/// Longest mountinfo line parsed; two PATH_MAX paths, escaped, fit with room to spare.
const MAX_LINE: usize = 64 << 10;

/// What went wrong, naming the file, value or controller involved so that an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cgroup file, or mountinfo, could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A cgroup interface file refused a value.
    #[error("cannot write {value:?} to {}: {source}", .path.display())]
    Write { path: PathBuf, value: String, source: io::Error },
    /// mkdir of a group, or of the shared `metac/` parent, failed.
    #[error("cannot create cgroup {}: {source}", .path.display())]
    Create { path: PathBuf, source: io::Error },
    /// rmdir failed, or the group was still busy after the retries.
    #[error("cannot remove cgroup {}: {source}", .path.display())]
    Remove { path: PathBuf, source: io::Error },
    /// The kernel said EACCES or EPERM: the node lacks the rights that cgroups need.
    #[error(
        "cannot {action} {}: {source}; cgroup limits need a node running as root (or a delegated cgroup v2 subtree)",
        .path.display()
    )]
    Permission { action: &'static str, path: PathBuf, source: io::Error },
    /// A group by this name exists already: a leftover from an earlier run, or two containers with one name.
    #[error("cgroup {} already exists; open() and remove() the leftover first", .path.display())]
    Exists { path: PathBuf },
    /// A cgroup file held something other than what the kernel documents.
    #[error("cannot parse {}: {reason}", .path.display())]
    Parse { path: PathBuf, reason: String },
    /// mountinfo lists no cgroup or cgroup2 filesystem mounted with root "/".
    #[error(
        "no cgroup v1 or v2 hierarchy with root \"/\" is mounted (per mountinfo); mount cgroupfs on /sys/fs/cgroup"
    )]
    NotMounted,
    /// A limit was asked of a controller that this host does not offer.
    #[error("the {controller} controller is not available on this host (not mounted, or not enabled for metac/), so a {controller} limit cannot be set")]
    Missing { controller: &'static str },
    /// The group name is not a single, plain directory name.
    #[error("invalid cgroup name {name:?}: {reason}")]
    Name { name: String, reason: &'static str },
    /// A [`Limits`] value is outside what the kernel, or a working container, accepts.
    #[error("invalid limit: {0}")]
    Limit(String),
    /// freeze or thaw did not take effect in time (a failed freeze is undone).
    #[error("{} did not report {state} within {ms} ms", .path.display())]
    Timeout { path: PathBuf, state: &'static str, ms: u128 },
    /// kill_all was given a number that is not a signal.
    #[error("{signal} is not a signal number")]
    Signal { signal: i32 },
    /// kill(2) failed for a process of the group, for a reason other than it having exited already.
    #[error("cannot send signal {signal} to pid {pid}: {source}")]
    Kill { pid: u32, signal: i32, source: Errno },
}

/// Which cgroup layout a host mounts; the node reports it so that operators know which files to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One hierarchy per controller (or per few co-mounted ones).
    V1,
    /// The single unified hierarchy.
    V2,
    /// v1 controllers plus a v2 mount that tracks processes.
    Hybrid,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::V1 => "v1",
            Layout::V2 => "v2",
            Layout::Hybrid => "hybrid",
        })
    }
}

/// The limits of one container; `None` leaves a limit as it is (unlimited for a new group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory, in bytes, swap not allowed: past it the kernel OOM-kills rather than swapping.
    pub memory: Option<u64>,
    /// CPU time as a number of cpus (1.5 = one and a half cpus' worth every 100 ms).
    pub cpus: Option<f64>,
    /// Most processes and threads at once, so that a fork bomb stays inside the container.
    pub pids: Option<u64>,
}

impl Limits {
    /// Refuses values the kernel would reject, or that would leave a container unable to run, naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(bytes) = self.memory {
            if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
                return Err(Error::Limit(format!(
                    "memory must be between {MIN_MEMORY} bytes (4 MiB) and {MAX_MEMORY} bytes, got {bytes}"
                )));
            }
        }
        if let Some(cpus) = self.cpus {
            // NaN is in no range, so it is refused too.
            if !(MIN_CPUS..=MAX_CPUS).contains(&cpus) {
                return Err(Error::Limit(format!("cpus must be between {MIN_CPUS} and {MAX_CPUS}, got {cpus}")));
            }
        }
        if let Some(pids) = self.pids {
            if !(1..=MAX_PIDS).contains(&pids) {
                return Err(Error::Limit(format!("pids must be between 1 and {MAX_PIDS}, got {pids}")));
            }
        }
        Ok(())
    }
}

/// What a container's group uses now, read from the kernel for `metac ps` and the node's reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Memory charged to the group, in bytes (0 where no memory controller is available).
    pub memory: u64,
    /// The memory limit in force, in bytes; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// CPU time used by all processes of the group since it was made, in nanoseconds.
    pub cpu_ns: u64,
    /// Processes (tasks, on the pids controller) in the group.
    pub pids: u64,
    /// The pids limit in force; `None` when unlimited.
    pub pids_limit: Option<u64>,
    /// How many times the kernel's OOM killer killed a process of the group (0 where the kernel does not say).
    pub oom_kills: u64,
}

/// The controllers this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Cpu,
    Cpuacct,
    Pids,
    Freezer,
}

impl Controller {
    /// Those that v2 has as controllers of the same name, in the order they are enabled.
    const V2: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }

    /// The controller a v1 mount option names, if it is one of ours.
    fn v1(option: &str) -> Option<Controller> {
        [Controller::Memory, Controller::Cpu, Controller::Cpuacct, Controller::Pids, Controller::Freezer]
            .into_iter()
            .find(|c| c.name() == option)
    }

    /// The controller a v2 `cgroup.controllers` entry names, if it is one of ours.
    fn v2(entry: &str) -> Option<Controller> {
        Controller::V2.into_iter().find(|c| c.name() == entry)
    }
}

/// Which file names a group directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A directory of one hierarchy (a mount's root, or a group) and the controllers of ours it carries.
#[derive(Debug, Clone, PartialEq)]
struct Dir {
    path: PathBuf,
    controllers: Vec<Controller>,
}

/// The two calls whose cgroupfs behaviour a plain directory cannot imitate: mkdir fills a new group with interface
/// files, and rmdir removes a group holding only those but refuses (EBUSY) while processes remain.
#[derive(Clone, Copy)]
struct Fs {
    mkdir: fn(&Path) -> io::Result<()>,
    rmdir: fn(&Path) -> io::Result<()>,
}

impl Fs {
    const REAL: Fs = Fs { mkdir: |path: &Path| fs::create_dir(path), rmdir: |path: &Path| fs::remove_dir(path) };
}

impl fmt::Debug for Fs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fs")
    }
}

/// What cgroup filesystems are mounted where on this host, and so where container groups go.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// v1 mounts that carry at least one of our controllers, each controller in one mount only.
    v1: Vec<Dir>,
    /// The cgroup2 mount, if any.
    v2: Option<PathBuf>,
    fs: Fs,
}

/// Mountinfo text with every mount point moved under `prefix` (field 5 of each line).
fn rebase(mountinfo: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(mountinfo.len() + mountinfo.lines().count() * prefix.len());
    for line in mountinfo.lines() {
        for (i, field) in line.split(' ').enumerate() {
            if i > 0 {
                out.push(' ');
            }
            if i == 4 {
                out.push_str(prefix);
            }
            out.push_str(field);
        }
        out.push('\n');
    }
    out
}

impl Hierarchy {
    /// Finds this host's cgroup mounts in `/proc/self/mountinfo`, or, when this mount namespace hides them, in
    /// init's, through `/proc/1/root`.
    pub fn detect() -> Result<Hierarchy, Error> {
        let path = Path::new("/proc/self/mountinfo");
        let mut bytes = Vec::new();
        fs::File::open(path)
            .and_then(|file| file.take(MAX_MOUNTINFO).read_to_end(&mut bytes))
            .map_err(|source| Error::Read { path: path.into(), source })?;
        let hierarchy = match Hierarchy::from_mountinfo(&String::from_utf8_lossy(&bytes)) {
            // A mount namespace that replaced /sys (`ip netns exec` does) hides the cgroup mounts: a root node
            // reaches the host's through init's root (/proc/1/root), as long as it shares init's pid namespace.
            Err(Error::NotMounted) => Hierarchy::through_init().ok_or(Error::NotMounted)?,
            other => other?,
        };
        debug!(layout = %hierarchy.layout(), ?hierarchy, "cgroup hierarchy detected");
        Ok(hierarchy)
    }

    /// The cgroup mounts of init's mount namespace, reached through `/proc/1/root`.
    fn through_init() -> Option<Hierarchy> {
        // Reaching it takes the right to trace init, which a confined root may lack.
        fs::read_dir("/proc/1/root/").ok()?;
        let mut bytes = Vec::new();
        fs::File::open("/proc/1/mountinfo").and_then(|f| f.take(MAX_MOUNTINFO).read_to_end(&mut bytes)).ok()?;
        let text = rebase(&String::from_utf8_lossy(&bytes), "/proc/1/root");
        let h = Hierarchy::from_mountinfo(&text).ok()?;
        debug!("cgroup mounts reached through /proc/1/root");
        Some(h)
    }

    /// Starts, on a thread of its own, a write that moves this process into the cgroup it is already in: the
    /// kernel's first `cgroup.procs` write after a quiet spell waits a whole RCU grace period (about 10 ms here, on
    /// the global threadgroup lock), and the writes soon after it do not. Called when a container is asked for, it
    /// lets that wait pass while the request is recorded and the shim starts, instead of when the container joins
    /// its group. A no-op for the system; failures are ignored.
    pub fn prime(&self) {
        let (mount, want_v2) = match (&self.v2, self.v1.first()) {
            (Some(v2), _) => (v2.clone(), true),
            (None, Some(d)) => (d.path.clone(), false),
            (None, None) => return,
        };
        let first_v1 = self.v1.first().map(|d| d.controllers.clone());
        let _ = std::thread::Builder::new().name("metac-cgroup-prime".into()).spawn(move || {
            let Ok(own) = fs::read_to_string("/proc/self/cgroup") else { return };
            // "0::/path" is the v2 hierarchy; "N:controllers:/path" a v1 one.
            let path = own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                let ours = if want_v2 {
                    ctrl.is_empty()
                } else {
                    first_v1.as_ref().is_some_and(|c| ctrl.split(',').any(|n| c.iter().any(|k| k.name() == n)))
                };
                ours.then(|| path.trim_start_matches('/').to_string())
            });
            if let Some(p) = path {
                let _ = fs::write(mount.join(p).join("cgroup.procs"), "0");
            }
        });
    }

    /// Finds the cgroup mounts in the text of a mountinfo file. Malformed lines are skipped, as are cgroup mounts
    /// whose root is not "/": those are binds of someone else's group, and `metac/` must not go inside it.
    pub fn from_mountinfo(mountinfo: &str) -> Result<Hierarchy, Error> {
        let mut v1: Vec<Dir> = Vec::new();
        let mut v2 = None;
        for line in mountinfo.lines().take(MAX_LINES) {
            match parse_mount(line) {
                Some(Mount::V2(path)) => {
                    v2.get_or_insert(path);
                }
                Some(Mount::V1(mut dir)) => {
                    // A hierarchy mounted twice shows up twice; the first mount serves as well as any.
                    dir.controllers.retain(|c| !v1.iter().any(|seen| seen.controllers.contains(c)));
                    if !dir.controllers.is_empty() {
                        v1.push(dir);
                    }
                }
                None => {}
            }
        }
        if v1.is_empty() && v2.is_none() {
            return Err(Error::NotMounted);
        }
        Ok(Hierarchy { v1, v2, fs: Fs::REAL })
    }

    /// Which of the three layouts this is.
    pub fn layout(&self) -> Layout {
        match (self.v1.is_empty(), self.v2.is_some()) {
            (false, true) => Layout::Hybrid,
            (false, false) => Layout::V1,
            (true, _) => Layout::V2,
        }
    }

    /// Makes the group `metac/<name>` in every hierarchy and sets `limits`. A limit for a controller the host lacks
    /// is refused before anything is made; if a later step fails, what this call made is removed again.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, Error> {
        check_name(name)?;
        limits.validate()?;
        let v2_offers = match &self.v2 {
            Some(root) => read_list(&root.join("cgroup.controllers"))?,
            None => Vec::new(),
        };
        for (asked, controller) in asked(limits) {
            if asked && !self.in_v1(controller) && !v2_offers.iter().any(|c| c == controller.name()) {
                return Err(Error::Missing { controller: controller.name() });
            }
        }
        let mut made = Vec::new();
        let created = self.make(name, &mut made).and_then(|group| group.update(limits).map(|()| group));
        match &created {
            Ok(_) => debug!(name, ?limits, "cgroup created"),
            Err(error) => {
                for dir in made.iter().rev() {
                    if let Err(undo) = (self.fs.rmdir)(dir) {
                        warn!(dir = %dir.display(), %undo, %error, "cannot remove a half-made cgroup");
                    }
                }
            }
        }
        created
    }

    /// The group `metac/<name>` if it exists in any hierarchy, so that a restarted node can adopt its containers.
    pub fn open(&self, name: &str) -> Result<Option<Cgroup>, Error> {
        check_name(name)?;
        self.group(name, true)
    }

    /// The names of all groups under `metac/`, in any hierarchy, sorted; a restarted node uses it to find leftovers.
    pub fn names(&self) -> Result<Vec<String>, Error> {
        let mut names = BTreeSet::new();
        for root in self.roots() {
            let parent = root.join(PARENT);
            let entries = match fs::read_dir(&parent) {
                Ok(entries) => entries,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(Error::Read { path: parent, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| Error::Read { path: parent.clone(), source })?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                    if check_name(name).is_ok() {
                        names.insert(name.to_owned());
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The roots of every hierarchy: v1 mounts, then the v2 mount.
    fn roots(&self) -> impl Iterator<Item = &Path> {
        self.v1.iter().map(|dir| dir.path.as_path()).chain(self.v2.as_deref())
    }

    fn in_v1(&self, controller: Controller) -> bool {
        self.v1.iter().any(|dir| dir.controllers.contains(&controller))
    }

    /// mkdirs the shared parents, hands v2 controllers down to `metac/`'s children, then mkdirs the group, noting
    /// each group directory made so that a failure can undo them.
    fn make(&self, name: &str, made: &mut Vec<PathBuf>) -> Result<Cgroup, Error> {
        if let Some(root) = &self.v2 {
            self.delegate(root)?;
        }
        for root in self.roots() {
            self.mkdir(&root.join(PARENT), false)?;
        }
        if let Some(root) = &self.v2 {
            self.delegate(&root.join(PARENT))?;
        }
        for root in self.roots() {
            let dir = root.join(PARENT).join(name);
            self.mkdir(&dir, true)?;
            made.push(dir);
        }
        Ok(self.group(name, false)?.expect("a group was just made in every hierarchy"))
    }

    /// Switches on, for the children of the v2 group `dir`, those of memory, cpu and pids that `dir` has and no v1
    /// hierarchy holds. Ones already on are not written again.
    fn delegate(&self, dir: &Path) -> Result<(), Error> {
        let offered = read_list(&dir.join("cgroup.controllers"))?;
        let file = dir.join("cgroup.subtree_control");
        let on = read_list(&file)?;
        let add: Vec<String> = Controller::V2
            .into_iter()
            .filter(|c| !self.in_v1(*c))
            .map(Controller::name)
            .filter(|c| offered.iter().any(|o| o == c) && !on.iter().any(|o| o == c))
            .map(|c| format!("+{c}"))
            .collect();
        if add.is_empty() {
            return Ok(());
        }
        write(&file, add.join(" "))
    }

    fn mkdir(&self, path: &Path, exclusive: bool) -> Result<(), Error> {
        match (self.fs.mkdir)(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                if exclusive {
                    Err(Error::Exists { path: path.into() })
                } else {
                    Ok(())
                }
            }
            Err(source) => Err(failed("create", path, source, |path, source| Error::Create { path, source })),
        }
    }

    /// The group `name` in every hierarchy, or (`existing`) in those where its directory exists.
    fn group(&self, name: &str, existing: bool) -> Result<Option<Cgroup>, Error> {
        let v1: Vec<Dir> = self
            .v1
            .iter()
            .map(|mount| Dir { path: mount.path.join(PARENT).join(name), controllers: mount.controllers.clone() })
            .filter(|dir| !existing || dir.path.is_dir())
            .collect();
        let v2 = match &self.v2 {
            Some(root) if !existing || root.join(PARENT).join(name).is_dir() => {
                let path = root.join(PARENT).join(name);
                let controllers = read_list(&path.join("cgroup.controllers"))?;
                Some(Dir { controllers: controllers.iter().filter_map(|c| Controller::v2(c)).collect(), path })
            }
            _ => None,
        };
        if v1.is_empty() && v2.is_none() {
            return Ok(None);
        }
        Ok(Some(Cgroup { name: name.to_owned(), v1, v2, fs: self.fs }))
    }
}

/// One container's group: a directory in each hierarchy, and the controllers each one carries.
#[derive(Debug, Clone)]
pub struct Cgroup {
    name: String,
    v1: Vec<Dir>,
    v2: Option<Dir>,
    fs: Fs,
}

impl Cgroup {
    /// The name given at create or open (the last part of every directory of the group).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves process `pid` (and its threads) into the group, in every hierarchy.
    pub fn add(&self, pid: u32) -> Result<(), Error> {
        self.procs_files().iter().try_for_each(|file| write(file, pid))
    }

    /// The `cgroup.procs` file of each hierarchy's group. A forked child joins before it execs by writing "0" to each.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|dir| dir.join("cgroup.procs")).collect()
    }

    /// Changes the limits that are `Some`, leaving the rest alone. A limit for a controller the group lacks is
    /// refused before anything is written.
    pub fn update(&self, limits: &Limits) -> Result<(), Error> {
        limits.validate()?;
        for (asked, controller) in asked(limits) {
            if asked {
                self.need(controller)?;
            }
        }
        if let Some(bytes) = limits.memory {
            match self.need(Controller::Memory)? {
                (Version::V1, dir) => set_v1_memory(dir, bytes)?,
                (Version::V2, dir) => {
                    write(&dir.join("memory.max"), bytes)?;
                    // No swap, so that at the limit the container is OOM-killed rather than slowed to a crawl.
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, 0)?;
                    }
                }
            }
        }
        if let Some(cpus) = limits.cpus {
            let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
            match self.need(Controller::Cpu)? {
                (Version::V1, dir) => {
                    write(&dir.join("cpu.cfs_period_us"), CPU_PERIOD_US)?;
                    write(&dir.join("cpu.cfs_quota_us"), quota)?;
                }
                (Version::V2, dir) => write(&dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?,
            }
        }
        if let Some(pids) = limits.pids {
            write(&self.need(Controller::Pids)?.1.join("pids.max"), pids)?;
        }
        Ok(())
    }

    /// Reads what the group uses now and the limits in force.
    pub fn stats(&self) -> Result<Stats, Error> {
        let mut stats = Stats::default();
        if let Some((version, dir)) = self.dir(Controller::Memory) {
            let (usage, limit, events) = match version {
                Version::V1 => ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.oom_control"),
                Version::V2 => ("memory.current", "memory.max", "memory.events"),
            };
            stats.memory = read_u64(&dir.join(usage))?;
            stats.memory_limit = read_limit(&dir.join(limit))?;
            // Kernels before 4.13 do not count OOM kills.
            let events = dir.join(events);
            stats.oom_kills = if events.exists() { read_key(&events, "oom_kill")?.unwrap_or(0) } else { 0 };
        }
        stats.cpu_ns = match self.dir(Controller::Cpuacct) {
            Some((Version::V1, dir)) => read_u64(&dir.join("cpuacct.usage"))?,
            Some((Version::V2, dir)) => {
                let file = dir.join("cpu.stat");
                let usec = read_key(&file, "usage_usec")?
                    .ok_or_else(|| Error::Parse { path: file, reason: "no usage_usec line".into() })?;
                usec.saturating_mul(1000)
            }
            None => 0,
        };
        match self.dir(Controller::Pids) {
            Some((_, dir)) => {
                stats.pids = read_u64(&dir.join("pids.current"))?;
                stats.pids_limit = read_limit(&dir.join("pids.max"))?;
            }
            None => stats.pids = self.pids()?.len() as u64,
        }
        Ok(stats)
    }

    /// Pauses every process of the group, waiting (at most 2 s) until the kernel reports them all frozen.
    pub fn freeze(&self) -> Result<(), Error> {
        self.set_frozen(true)
    }

    /// Resumes a frozen group, waiting (at most 2 s) until the kernel reports it thawed.
    pub fn thaw(&self) -> Result<(), Error> {
        self.set_frozen(false)
    }

    /// Whether the group is frozen now (a v1 group still FREEZING is not), for reporting a container as paused.
    pub fn frozen(&self) -> Result<bool, Error> {
        let (version, dir) = self.freezer()?;
        Ok(freezer_state(version, dir)? == Some(true))
    }

    /// The processes in the group, from every hierarchy, sorted. Processes in a pid namespace the node cannot see
    /// into (listed as 0) are left out: they cannot be named, and `kill(0)` would signal the node's own group.
    pub fn pids(&self) -> Result<Vec<u32>, Error> {
        let mut pids = BTreeSet::new();
        for file in self.procs_files() {
            for line in read(&file)?.lines().map(str::trim).filter(|line| !line.is_empty()) {
                let pid: u32 = line
                    .parse()
                    .map_err(|_| Error::Parse { path: file.clone(), reason: format!("{line:?} is not a pid") })?;
                if pid != 0 {
                    pids.insert(pid);
                }
            }
        }
        Ok(pids.into_iter().collect())
    }

    /// Sends `signal` to every process of the group. SIGKILL goes through v2's `cgroup.kill` where the kernel has
    /// it (one step, nothing escapes by forking); elsewhere the group is frozen for SIGKILL, each process signalled,
    /// then thawed, as runc does, so that no process forks a new one the loop would miss.
    pub fn kill_all(&self, signal: i32) -> Result<(), Error> {
        let signal = Signal::try_from(signal).map_err(|_| Error::Signal { signal })?;
        if signal == Signal::SIGKILL {
            if let Some(v2) = &self.v2 {
                let file = v2.path.join("cgroup.kill");
                if file.exists() {
                    return write(&file, 1);
                }
            }
        }
        let frozen = signal == Signal::SIGKILL && self.freezer().is_ok() && self.freeze().is_ok();
        let sent = self.signal_each(signal);
        let thawed = if frozen { self.thaw() } else { Ok(()) };
        sent.and(thawed)
    }

    /// Removes the group from every hierarchy. Killed processes take a moment to leave, so a busy group is retried
    /// for up to 0.5 s; a group already gone is fine. Every hierarchy is tried even if one fails.
    pub fn remove(&self) -> Result<(), Error> {
        let mut first = None;
        for dir in self.dirs() {
            if let Err(error) = rmdir_patiently(self.fs.rmdir, dir) {
                first.get_or_insert(error);
            }
        }
        match first {
            Some(error) => Err(error),
            None => {
                debug!(name = self.name, "cgroup removed");
                Ok(())
            }
        }
    }

    fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1.iter().chain(&self.v2).map(|dir| dir.path.as_path())
    }

    /// Where `controller`'s files are for this group: a v1 hierarchy that has it, else the v2 group if it is enabled
    /// there. cpu usage and freezing are core v2 features, present without any controller.
    fn dir(&self, controller: Controller) -> Option<(Version, &Path)> {
        if let Some(dir) = self.v1.iter().find(|dir| dir.controllers.contains(&controller)) {
            return Some((Version::V1, &dir.path));
        }
        let v2 = self.v2.as_ref()?;
        let core = matches!(controller, Controller::Cpuacct | Controller::Freezer);
        (core || v2.controllers.contains(&controller)).then_some((Version::V2, v2.path.as_path()))
    }

    fn need(&self, controller: Controller) -> Result<(Version, &Path), Error> {
        self.dir(controller).ok_or(Error::Missing { controller: controller.name() })
    }

    /// The freezer's place; v2 has `cgroup.freeze` since Linux 5.2.
    fn freezer(&self) -> Result<(Version, &Path), Error> {
        match self.need(Controller::Freezer)? {
            (Version::V2, dir) if !dir.join("cgroup.freeze").exists() => {
                Err(Error::Missing { controller: Controller::Freezer.name() })
            }
            found => Ok(found),
        }
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), Error> {
        let (version, dir) = self.freezer()?;
        let (file, want, undo) = match version {
            Version::V1 => ("freezer.state", if frozen { "FROZEN" } else { "THAWED" }, "THAWED"),
            Version::V2 => ("cgroup.freeze", if frozen { "1" } else { "0" }, "0"),
        };
        let file = dir.join(file);
        for _ in 0..FREEZE_STEPS {
            // v1 can stall in FREEZING while a task is busy in the kernel; writing again retries (runc does too).
            write(&file, want)?;
            if freezer_state(version, dir)? == Some(frozen) {
                return Ok(());
            }
            sleep(STEP);
        }
        if frozen {
            if let Err(error) = write(&file, undo) {
                warn!(%error, "cannot thaw a cgroup that failed to freeze");
            }
        }
        let state = if frozen { "frozen" } else { "thawed" };
        Err(Error::Timeout { path: file, state, ms: (STEP * FREEZE_STEPS).as_millis() })
    }

    fn signal_each(&self, signal: Signal) -> Result<(), Error> {
        for pid in self.pids()? {
            let Ok(raw) = i32::try_from(pid) else { continue };
            match kill(Pid::from_raw(raw), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => return Err(Error::Kill { pid, signal: signal as i32, source }),
            }
        }
        Ok(())
    }
}

/// Each limit field, whether it is asked for, and the controller that enforces it.
fn asked(limits: &Limits) -> [(bool, Controller); 3] {
    [
        (limits.memory.is_some(), Controller::Memory),
        (limits.cpus.is_some(), Controller::Cpu),
        (limits.pids.is_some(), Controller::Pids),
    ]
}

/// Sets v1's memory limit and, where swap is accounted, the memory+swap limit to the same value, so that the group
/// cannot swap. v1 insists on memsw >= memory at every moment: raising, memsw goes first; lowering, memory does.
fn set_v1_memory(dir: &Path, bytes: u64) -> Result<(), Error> {
    let memory = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if !memsw.exists() {
        // Booted without swap accounting: there is nothing to keep in step.
        return write(&memory, bytes);
    }
    if bytes > read_u64(&memory)? {
        write(&memsw, bytes)?;
        write(&memory, bytes)
    } else {
        write(&memory, bytes)?;
        write(&memsw, bytes)
    }
}

/// Some(true) frozen, Some(false) thawed, None on the way (v1's FREEZING).
fn freezer_state(version: Version, dir: &Path) -> Result<Option<bool>, Error> {
    match version {
        Version::V1 => Ok(match read(&dir.join("freezer.state"))?.trim() {
            "FROZEN" => Some(true),
            "THAWED" => Some(false),
            _ => None,
        }),
        Version::V2 => Ok(read_key(&dir.join("cgroup.events"), "frozen")?.map(|n| n == 1)),
    }
}

fn rmdir_patiently(rmdir: fn(&Path) -> io::Result<()>, dir: &Path) -> Result<(), Error> {
    let mut tries = 1;
    loop {
        match rmdir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) && tries < RMDIR_TRIES => {
                tries += 1;
                sleep(STEP);
            }
            Err(source) => return Err(failed("remove", dir, source, |path, source| Error::Remove { path, source })),
        }
    }
}

/// Refuses names that are not one plain directory name, so that no name can reach outside `metac/`.
fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than 128 bytes"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains("..") {
        "it contains '..'"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        "only letters, digits, '.', '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::Name { name: name.to_owned(), reason })
}

/// Turns EACCES and EPERM into [`Error::Permission`], which tells the operator what the node needs.
fn failed(action: &'static str, path: &Path, source: io::Error, other: fn(PathBuf, io::Error) -> Error) -> Error {
    if source.kind() == io::ErrorKind::PermissionDenied {
        Error::Permission { action, path: path.into(), source }
    } else {
        other(path.into(), source)
    }
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| failed("read", path, source, |path, source| Error::Read { path, source }))
}

/// Writes a value to an existing interface file, as `echo value > file` does; cgroupfs never creates files.
fn write(path: &Path, value: impl fmt::Display) -> Result<(), Error> {
    let value = value.to_string();
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                Error::Permission { action: "write to", path: path.into(), source }
            } else {
                Error::Write { path: path.into(), value, source }
            }
        })
}

fn read_u64(path: &Path) -> Result<u64, Error> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| Error::Parse { path: path.into(), reason: format!("{text:?} is not a number") })
}

/// A limit file: "max" (v2, and v1 pids) or v1's huge page-counter maximum mean none.
fn read_limit(path: &Path) -> Result<Option<u64>, Error> {
    if read(path)?.trim() == "max" {
        return Ok(None);
    }
    Ok(Some(read_u64(path)?).filter(|limit| *limit < V1_UNLIMITED))
}

/// The number after `key` in a flat-keyed file such as `memory.events` or `cpu.stat`.
fn read_key(path: &Path, key: &str) -> Result<Option<u64>, Error> {
    let text = read(path)?;
    let Some(value) = text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')) else {
        return Ok(None);
    };
    value.trim().parse().map(Some).map_err(|_| Error::Parse { path: path.into(), reason: format!("{key} {value:?}") })
}

/// A space-separated list such as `cgroup.controllers`.
fn read_list(path: &Path) -> Result<Vec<String>, Error> {
    Ok(read(path)?.split_whitespace().map(str::to_owned).collect())
}

/// A cgroup filesystem mount found in mountinfo.
enum Mount {
    V1(Dir),
    V2(PathBuf),
}

/// One mountinfo line: `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS`,
/// fields separated by single spaces, spaces and backslashes inside a field escaped as octal (`\040`).
fn parse_mount(line: &str) -> Option<Mount> {
    if line.len() > MAX_LINE {
        return None;
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = 6 + fields.get(6..)?.iter().position(|field| *field == "-")?;
    if fields[3] != "/" {
        return None;
    }
    let point = PathBuf::from(OsString::from_vec(unescape(fields[4])));
    if !point.is_absolute() {
        return None;
    }
    match *fields.get(dash + 1)? {
        "cgroup2" => Some(Mount::V2(point)),
        "cgroup" => {
            let controllers: Vec<Controller> = fields.get(dash + 3)?.split(',').filter_map(Controller::v1).collect();
            (!controllers.is_empty()).then_some(Mount::V1(Dir { path: point, controllers }))
        }
        _ => None,
    }
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash); anything else
/// is kept as it is.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'\\', a, b, c]) = bytes.get(i..i + 4) {
            if [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = u32::from(a - b'0') * 64 + u32::from(b - b'0') * 8 + u32::from(c - b'0');
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_rebased_under_a_prefix() {
        let line = "35 24 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory";
        let r = super::rebase(line, "/proc/1/root");
        assert_eq!(r, "35 24 0:30 / /proc/1/root/sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n");
        let h = super::Hierarchy::from_mountinfo(&r).unwrap();
        assert!(format!("{h:?}").contains("/proc/1/root/sys/fs/cgroup/memory"), "{h:?}");
    }

    use super::*;
    use std::fmt::Write as _;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    /// What v1 shows in a new group's limit files.
    const UNLIMITED: &str = "9223372036854771712";

    // A fake kernel: the two calls a plain directory cannot imitate.

    const FAKE: Fs = Fs { mkdir: fake_mkdir, rmdir: fake_rmdir };

    /// mkdir as cgroupfs does it: the group appears with its interface files; a v2 group gets those of the
    /// controllers its parent's `cgroup.subtree_control` enables, a v1 group those of its hierarchy.
    fn fake_mkdir(path: &Path) -> io::Result<()> {
        fs::create_dir(path)?;
        let subtree = path.parent().expect("a group has a parent").join("cgroup.subtree_control");
        if subtree.exists() {
            let on = fs::read_to_string(subtree)?;
            let on: Vec<&str> = on.split_whitespace().map(|c| c.trim_start_matches('+')).collect();
            put_v2(path, &on.join(" "), false);
            return Ok(());
        }
        // Only a v1 hierarchy's root has cgroup.sane_behavior, and the fake names each root after its controllers.
        let root = path
            .ancestors()
            .find(|dir| dir.join("cgroup.sane_behavior").exists())
            .ok_or_else(|| io::Error::other("not inside a fake hierarchy"))?;
        let controllers = root.file_name().and_then(|n| n.to_str()).expect("a fake root is named after controllers");
        put_v1(path, controllers, root.join("memory.memsw.limit_in_bytes").exists(), false);
        Ok(())
    }

    /// rmdir as cgroupfs does it: busy while the group has processes or children, else gone with its files.
    fn fake_rmdir(path: &Path) -> io::Result<()> {
        let mut files = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            files.push(entry.path());
        }
        if !fs::read_to_string(path.join("cgroup.procs"))?.trim().is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        files.iter().try_for_each(fs::remove_file)?;
        fs::remove_dir(path)
    }

    fn put(path: &Path, text: &str) {
        fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn get(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The interface files of a v1 group (or hierarchy root) carrying `controllers` ("cpu,cpuacct").
    fn put_v1(dir: &Path, controllers: &str, swap: bool, root: bool) {
        let mut files = vec![("cgroup.procs", ""), ("tasks", ""), ("notify_on_release", "0")];
        for controller in controllers.split(',') {
            match controller {
                "memory" => {
                    files.extend([("memory.limit_in_bytes", UNLIMITED), ("memory.usage_in_bytes", "0")]);
                    files.push(("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"));
                    if swap {
                        files.push(("memory.memsw.limit_in_bytes", UNLIMITED));
                    }
                }
                "cpu" => files.extend([("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1")]),
                "cpuacct" => files.push(("cpuacct.usage", "0")),
                "pids" if !root => files.extend([("pids.max", "max"), ("pids.current", "0")]),
                "freezer" if !root => files.push(("freezer.state", "THAWED")),
                _ => {}
            }
        }
        if root {
            files.push(("cgroup.sane_behavior", "0"));
        }
        files.into_iter().for_each(|(name, text)| put(&dir.join(name), text));
    }

    /// The interface files of a v2 group (or the root) whose parent enabled `controllers` ("memory cpu").
    fn put_v2(dir: &Path, controllers: &str, root: bool) {
        let mut files = vec![
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ];
        if !root {
            files.extend([("cgroup.events", "populated 0\nfrozen 0\n"), ("cgroup.freeze", "0"), ("cgroup.kill", "")]);
            for controller in controllers.split_whitespace() {
                match controller {
                    "memory" => files.extend([
                        ("memory.current", "0"),
                        ("memory.max", "max"),
                        ("memory.swap.max", "max"),
                        ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
                    ]),
                    "cpu" => files.push(("cpu.max", "max 100000")),
                    "pids" => files.extend([("pids.current", "0"), ("pids.max", "max")]),
                    _ => {}
                }
            }
        }
        files.into_iter().for_each(|(name, text)| put(&dir.join(name), text));
    }

    /// A fake cgroup tree in a temporary directory (under a name with a space, so mountinfo escaping is exercised
    /// end to end) and the mountinfo text that describes it.
    struct Fake {
        _tmp: tempfile::TempDir,
        base: PathBuf,
        mountinfo: String,
    }

    impl Fake {
        fn new() -> Fake {
            let tmp = tempfile::tempdir().unwrap();
            let base = tmp.path().join("cgroup roots");
            fs::create_dir(&base).unwrap();
            let mountinfo = "22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n".to_owned();
            Fake { _tmp: tmp, base, mountinfo }
        }

        /// A v1 hierarchy of `controllers` ("cpu,cpuacct"), with memsw files if `swap`.
        fn v1(mut self, controllers: &str, swap: bool) -> Fake {
            let root = self.path(controllers);
            fs::create_dir(&root).unwrap();
            put_v1(&root, controllers, swap, true);
            self.mount(&root, "cgroup", &format!("rw,{controllers}"));
            self
        }

        /// A cgroup2 mount at `name` whose root offers `controllers`.
        fn v2(mut self, name: &str, controllers: &str) -> Fake {
            let root = self.path(name);
            fs::create_dir(&root).unwrap();
            put_v2(&root, controllers, true);
            self.mount(&root, "cgroup2", "rw,nsdelegate");
            self
        }

        fn mount(&mut self, point: &Path, fstype: &str, options: &str) {
            let id = 40 + self.mountinfo.lines().count();
            let point = escape(&point.to_string_lossy());
            let line = format!("{id} 31 0:{id} / {point} rw,nosuid,relatime shared:{id} - {fstype} {fstype} {options}");
            writeln!(self.mountinfo, "{line}").unwrap();
        }

        fn hierarchy(&self) -> Hierarchy {
            Hierarchy { fs: FAKE, ..Hierarchy::from_mountinfo(&self.mountinfo).unwrap() }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.base.join(relative)
        }
    }

    /// The kernel's mountinfo escaping.
    fn escape(path: &str) -> String {
        path.replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012")
    }

    fn all(memory: u64, cpus: f64, pids: u64) -> Limits {
        Limits { memory: Some(memory), cpus: Some(cpus), pids: Some(pids) }
    }

    #[test]
    fn v2_create_delegates_controllers_and_writes_limits() {
        let fake = Fake::new().v2("unified", "cpuset cpu io memory hugetlb pids rdma misc");
        let hierarchy = fake.hierarchy();
        assert_eq!(hierarchy.layout(), Layout::V2);
        let group = hierarchy.create("web", &all(64 * MIB, 1.5, 20)).unwrap();

        let root = fake.path("unified");
        assert_eq!(get(&root.join("cgroup.subtree_control")), "+memory +cpu +pids");
        assert_eq!(get(&root.join("metac/cgroup.subtree_control")), "+memory +cpu +pids");
        let dir = root.join("metac/web");
        assert_eq!(get(&dir.join("cgroup.controllers")), "memory cpu pids");
        assert_eq!(get(&dir.join("memory.max")), "67108864");
        assert_eq!(get(&dir.join("memory.swap.max")), "0");
        assert_eq!(get(&dir.join("cpu.max")), "150000 100000");
        assert_eq!(get(&dir.join("pids.max")), "20");
        assert_eq!(group.name(), "web");
        assert_eq!(group.procs_files(), vec![dir.join("cgroup.procs")]);

        group.add(4242).unwrap();
        assert_eq!(get(&dir.join("cgroup.procs")), "4242");
        assert_eq!(get(&root.join("metac/cgroup.procs")), "", "metac/ itself never holds processes");

        group.update(&Limits { cpus: Some(0.25), ..Limits::default() }).unwrap();
        assert_eq!(get(&dir.join("cpu.max")), "25000 100000");
        assert_eq!(get(&dir.join("memory.max")), "67108864", "fields that are None stay as they were");
        assert_eq!(get(&dir.join("pids.max")), "20");
    }

    #[test]
    fn v2_skips_a_missing_controller_unless_a_limit_needs_it() {
        let fake = Fake::new().v2("v2", "cpu memory");
        let hierarchy = fake.hierarchy();
        let error = hierarchy.create("a", &Limits { pids: Some(5), ..Limits::default() }).unwrap_err();
        assert!(matches!(error, Error::Missing { controller: "pids" }), "{error}");
        assert!(error.to_string().contains("pids controller"), "{error}");
        assert!(!fake.path("v2/metac").exists(), "nothing is made when a limit cannot be honoured");

        let group = hierarchy.create("a", &Limits { memory: Some(8 * MIB), ..Limits::default() }).unwrap();
        assert_eq!(get(&fake.path("v2/cgroup.subtree_control")), "+memory +cpu");
        assert_eq!(get(&fake.path("v2/metac/a/memory.max")), "8388608");
        let error = group.update(&Limits { memory: Some(16 * MIB), pids: Some(5), ..Limits::default() }).unwrap_err();
        assert!(matches!(error, Error::Missing { controller: "pids" }), "{error}");
        assert_eq!(get(&fake.path("v2/metac/a/memory.max")), "8388608", "a refused update writes nothing");
    }

    #[test]
    fn v2_leaves_controllers_that_are_already_enabled_alone() {
        let fake = Fake::new().v2("v2", "cpu memory pids");
        put(&fake.path("v2/cgroup.subtree_control"), "cpu memory pids");
        fake.hierarchy().create("a", &Limits::default()).unwrap();
        assert_eq!(get(&fake.path("v2/cgroup.subtree_control")), "cpu memory pids");
        assert_eq!(get(&fake.path("v2/metac/cgroup.subtree_control")), "+memory +cpu +pids");
    }

    #[test]
    fn v2_stats_and_pids_read_the_kernel_figures() {
        let fake = Fake::new().v2("v2", "cpu memory pids");
        let group = fake.hierarchy().create("a", &Limits::default()).unwrap();
        let dir = fake.path("v2/metac/a");
        put(&dir.join("memory.current"), "1234\n");
        put(&dir.join("memory.max"), "67108864\n");
        put(&dir.join("memory.events"), "low 0\nhigh 0\nmax 5\noom 1\noom_kill 3\n");
        put(&dir.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n");
        put(&dir.join("pids.current"), "2\n");
        let expected = Stats {
            memory: 1234,
            memory_limit: Some(64 * MIB),
            cpu_ns: 2_500_000,
            pids: 2,
            pids_limit: None,
            oom_kills: 3,
        };
        assert_eq!(group.stats().unwrap(), expected);

        put(&dir.join("cgroup.procs"), "17\n0\n\n5\n");
        assert_eq!(group.pids().unwrap(), vec![5, 17], "sorted, without the unnameable pid 0");
        put(&dir.join("cgroup.procs"), "17\nx\n");
        let error = group.pids().unwrap_err().to_string();
        assert!(error.contains("cgroup.procs") && error.contains("\"x\""), "{error}");
    }

    #[test]
    fn v2_freeze_thaw_and_kill_use_the_core_files() {
        let fake = Fake::new().v2("v2", "memory");
        let group = fake.hierarchy().create("a", &Limits::default()).unwrap();
        let dir = fake.path("v2/metac/a");
        put(&dir.join("cgroup.events"), "populated 1\nfrozen 1\n");
        group.freeze().unwrap();
        assert_eq!(get(&dir.join("cgroup.freeze")), "1");
        assert!(group.frozen().unwrap());
        put(&dir.join("cgroup.events"), "populated 1\nfrozen 0\n");
        group.thaw().unwrap();
        assert_eq!(get(&dir.join("cgroup.freeze")), "0");
        assert!(!group.frozen().unwrap());

        group.kill_all(libc::SIGKILL).unwrap();
        assert_eq!(get(&dir.join("cgroup.kill")), "1");
        assert!(matches!(group.kill_all(999), Err(Error::Signal { signal: 999 })));
    }

    #[test]
    fn v2_freeze_gives_up_in_bounded_time_and_thaws() {
        let fake = Fake::new().v2("v2", "memory");
        let group = fake.hierarchy().create("a", &Limits::default()).unwrap();
        let started = Instant::now();
        let error = group.freeze().unwrap_err();
        assert!(matches!(error, Error::Timeout { state: "frozen", .. }), "{error}");
        assert!(error.to_string().contains("cgroup.freeze"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(get(&fake.path("v2/metac/a/cgroup.freeze")), "0", "a failed freeze is undone");
    }

    #[test]
    fn v1_create_writes_cfs_quota_memory_memsw_and_pids() {
        let fake = Fake::new().v1("cpu,cpuacct", false).v1("memory", true).v1("pids", false).v1("freezer", false);
        let hierarchy = fake.hierarchy();
        assert_eq!(hierarchy.layout(), Layout::V1);
        let group = hierarchy.create("db", &all(64 * MIB, 1.5, 20)).unwrap();
        assert_eq!(get(&fake.path("cpu,cpuacct/metac/db/cpu.cfs_period_us")), "100000");
        assert_eq!(get(&fake.path("cpu,cpuacct/metac/db/cpu.cfs_quota_us")), "150000");
        assert_eq!(get(&fake.path("memory/metac/db/memory.limit_in_bytes")), "67108864");
        assert_eq!(get(&fake.path("memory/metac/db/memory.memsw.limit_in_bytes")), "67108864");
        assert_eq!(get(&fake.path("pids/metac/db/pids.max")), "20");
        assert_eq!(group.procs_files().len(), 4);

        group.freeze().unwrap();
        assert_eq!(get(&fake.path("freezer/metac/db/freezer.state")), "FROZEN");
        assert!(group.frozen().unwrap());
        group.thaw().unwrap();
        assert_eq!(get(&fake.path("freezer/metac/db/freezer.state")), "THAWED");
    }

    #[test]
    fn v1_memsw_leads_memory_up_and_follows_it_down() {
        let fake = Fake::new().v1("memory", true);
        let group = fake.hierarchy().create("db", &Limits { memory: Some(64 * MIB), ..Limits::default() }).unwrap();
        // Make the memsw file refuse writes (a directory), then see which write happened before the refusal.
        let dir = fake.path("memory/metac/db");
        fs::remove_file(dir.join("memory.memsw.limit_in_bytes")).unwrap();
        fs::create_dir(dir.join("memory.memsw.limit_in_bytes")).unwrap();

        let error = group.update(&Limits { memory: Some(128 * MIB), ..Limits::default() }).unwrap_err();
        assert!(error.to_string().contains("memory.memsw.limit_in_bytes"), "{error}");
        assert_eq!(get(&dir.join("memory.limit_in_bytes")), "67108864", "raising: memsw first");

        let error = group.update(&Limits { memory: Some(32 * MIB), ..Limits::default() }).unwrap_err();
        assert!(error.to_string().contains("memory.memsw.limit_in_bytes"), "{error}");
        assert_eq!(get(&dir.join("memory.limit_in_bytes")), "33554432", "lowering: memory first");
    }

    #[test]
    fn v1_without_swap_accounting_sets_only_the_memory_limit() {
        let fake = Fake::new().v1("memory", false);
        fake.hierarchy().create("db", &Limits { memory: Some(64 * MIB), ..Limits::default() }).unwrap();
        assert_eq!(get(&fake.path("memory/metac/db/memory.limit_in_bytes")), "67108864");
        assert!(!fake.path("memory/metac/db/memory.memsw.limit_in_bytes").exists());
    }

    #[test]
    fn v1_stats_read_the_kernel_figures() {
        let fake = Fake::new().v1("cpu,cpuacct", false).v1("memory", true).v1("pids", false);
        let group = fake.hierarchy().create("db", &Limits::default()).unwrap();
        put(&fake.path("memory/metac/db/memory.usage_in_bytes"), "5000\n");
        put(&fake.path("cpu,cpuacct/metac/db/cpuacct.usage"), "123456789\n");
        put(&fake.path("pids/metac/db/pids.current"), "3\n");
        let mut expected = Stats { memory: 5000, cpu_ns: 123_456_789, pids: 3, ..Stats::default() };
        assert_eq!(group.stats().unwrap(), expected, "v1's huge limit and pids' max mean no limit");

        put(&fake.path("memory/metac/db/memory.limit_in_bytes"), "1048576000\n");
        put(&fake.path("memory/metac/db/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        put(&fake.path("pids/metac/db/pids.max"), "20\n");
        expected = Stats { memory_limit: Some(1_048_576_000), pids_limit: Some(20), oom_kills: 2, ..expected };
        assert_eq!(group.stats().unwrap(), expected);

        fs::remove_file(fake.path("memory/metac/db/memory.oom_control")).unwrap();
        assert_eq!(group.stats().unwrap().oom_kills, 0, "kernels before 4.13 do not count OOM kills");
    }

    #[test]
    fn v1_kill_all_freezes_signals_each_process_and_thaws() {
        let fake = Fake::new().v1("memory", false).v1("freezer", false);
        let group = fake.hierarchy().create("db", &Limits::default()).unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        put(&fake.path("memory/metac/db/cgroup.procs"), &format!("{}\n", child.id()));
        let sent = group.kill_all(libc::SIGKILL);
        let _ = child.kill();
        let status = child.wait().unwrap();
        sent.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        assert_eq!(get(&fake.path("freezer/metac/db/freezer.state")), "THAWED");
    }

    #[test]
    fn hybrid_limits_go_to_v1_and_the_group_is_tracked_in_unified() {
        let fake = Fake::new()
            .v1("cpu,cpuacct", false)
            .v1("memory", true)
            .v1("pids", false)
            .v1("freezer", false)
            .v2("unified", "");
        let hierarchy = fake.hierarchy();
        assert_eq!(hierarchy.layout(), Layout::Hybrid);
        let group = hierarchy.create("h", &all(64 * MIB, 0.5, 20)).unwrap();
        assert_eq!(get(&fake.path("cpu,cpuacct/metac/h/cpu.cfs_quota_us")), "50000");
        assert_eq!(get(&fake.path("memory/metac/h/memory.limit_in_bytes")), "67108864");
        assert_eq!(get(&fake.path("pids/metac/h/pids.max")), "20");
        assert_eq!(get(&fake.path("unified/cgroup.subtree_control")), "", "nothing to enable in an empty unified");

        let files = group.procs_files();
        assert_eq!(files.len(), 5);
        assert!(files.contains(&fake.path("unified/metac/h/cgroup.procs")));
        group.add(77).unwrap();
        for file in &files {
            assert_eq!(get(file), "77", "{}", file.display());
        }
        group.kill_all(libc::SIGKILL).unwrap();
        assert_eq!(get(&fake.path("unified/metac/h/cgroup.kill")), "1");

        files.iter().for_each(|file| put(file, ""));
        group.remove().unwrap();
        for file in &files {
            let dir = file.parent().unwrap();
            assert!(!dir.exists(), "{} removed", dir.display());
            assert!(dir.parent().unwrap().exists(), "metac/ stays for other containers");
        }
        group.remove().expect("removing a group that is gone is fine");
    }

    #[test]
    fn remove_waits_for_lingering_processes_then_gives_up() {
        let fake = Fake::new().v2("v2", "memory");
        let group = fake.hierarchy().create("a", &Limits::default()).unwrap();
        let procs = fake.path("v2/metac/a/cgroup.procs");
        put(&procs, "99\n");
        let started = Instant::now();
        let error = group.remove().unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(&error, Error::Remove { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
            "{error}"
        );
        assert!(error.to_string().contains("metac/a"), "{error}");
        assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(5), "{waited:?}");

        // A process that leaves while remove is retrying.
        let leaver = std::thread::spawn(move || {
            sleep(Duration::from_millis(100));
            put(&procs, "");
        });
        group.remove().unwrap();
        leaver.join().unwrap();
        assert!(!fake.path("v2/metac/a").exists());
    }

    #[test]
    fn create_refuses_an_existing_group_and_undoes_what_it_made() {
        let fake = Fake::new().v1("memory", false).v1("pids", false);
        let hierarchy = fake.hierarchy();
        hierarchy.create("a", &Limits::default()).unwrap();
        let error = hierarchy.create("a", &Limits::default()).unwrap_err();
        assert!(matches!(error, Error::Exists { .. }), "{error}");
        assert!(fake.path("memory/metac/a").exists() && fake.path("pids/metac/a").exists(), "the first is intact");

        // A leftover in the second hierarchy only: the group made in the first must be removed again.
        fake_mkdir(&fake.path("pids/metac/b")).unwrap();
        let error = hierarchy.create("b", &Limits::default()).unwrap_err();
        assert!(error.to_string().contains("pids/metac/b"), "{error}");
        assert!(!fake.path("memory/metac/b").exists());
        assert!(fake.path("pids/metac/b").exists(), "the leftover is not ours to remove");
    }

    #[test]
    fn a_node_without_rights_is_told_it_needs_root() {
        let fake = Fake::new().v2("v2", "memory");
        let denied = Fs { mkdir: |_: &Path| Err(io::Error::from_raw_os_error(libc::EACCES)), ..FAKE };
        let hierarchy = Hierarchy { fs: denied, ..fake.hierarchy() };
        let error = hierarchy.create("a", &Limits::default()).unwrap_err();
        assert!(matches!(error, Error::Permission { action: "create", .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("running as root") && message.contains("v2/metac"), "{message}");
    }

    #[test]
    fn open_and_names_find_existing_groups() {
        let fake = Fake::new().v1("memory", false).v2("unified", "");
        let hierarchy = fake.hierarchy();
        assert!(hierarchy.open("a").unwrap().is_none());
        assert!(hierarchy.names().unwrap().is_empty(), "no metac/ yet");
        let made = hierarchy.create("a", &Limits::default()).unwrap();
        hierarchy.create("b", &Limits::default()).unwrap();
        fake_mkdir(&fake.path("unified/metac/c")).unwrap();
        put(&fake.path("memory/metac/not-a-group"), "");
        fs::create_dir(fake.path("memory/metac/.hidden")).unwrap();
        assert_eq!(hierarchy.names().unwrap(), ["a", "b", "c"]);

        let opened = hierarchy.open("a").unwrap().expect("a exists");
        assert_eq!(opened.procs_files(), made.procs_files());
        let partial = hierarchy.open("c").unwrap().expect("c exists in unified");
        assert_eq!(partial.procs_files(), vec![fake.path("unified/metac/c/cgroup.procs")]);
        assert!(matches!(hierarchy.open("../a"), Err(Error::Name { .. })));
    }

    #[test]
    fn bad_names_and_limits_are_refused_with_the_reason() {
        for name in ["web-1", "a.b_c", "x"] {
            check_name(name).unwrap();
        }
        let long = "a".repeat(129);
        for (name, reason) in [
            ("", "empty"),
            ("a/b", "'/'"),
            ("..", "'..'"),
            ("a..b", "'..'"),
            (".x", "starts with '.'"),
            ("a b", "only letters"),
            (long.as_str(), "longer"),
        ] {
            let error = check_name(name).unwrap_err().to_string();
            assert!(error.contains(reason), "{name:?}: {error}");
        }

        Limits::default().validate().unwrap();
        all(MIN_MEMORY, 0.01, 1).validate().unwrap();
        for (limits, field) in [
            (Limits { memory: Some(MIN_MEMORY - 1), ..Limits::default() }, "memory"),
            (Limits { cpus: Some(0.0), ..Limits::default() }, "cpus"),
            (Limits { cpus: Some(-1.0), ..Limits::default() }, "cpus"),
            (Limits { cpus: Some(f64::NAN), ..Limits::default() }, "cpus"),
            (Limits { cpus: Some(f64::INFINITY), ..Limits::default() }, "cpus"),
            (Limits { cpus: Some(0.001), ..Limits::default() }, "cpus"),
            (Limits { pids: Some(0), ..Limits::default() }, "pids"),
            (Limits { pids: Some(MAX_PIDS + 1), ..Limits::default() }, "pids"),
        ] {
            let error = limits.validate().unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid limit: {field}")), "{limits:?}: {error}");
        }

        let fake = Fake::new().v2("v2", "memory");
        let error = fake.hierarchy().create("a", &Limits { cpus: Some(0.0), ..Limits::default() }).unwrap_err();
        assert!(matches!(error, Error::Limit(_)), "{error}");
        assert!(!fake.path("v2/metac").exists(), "nothing is made for a bad limit");
    }

    // mountinfo fixtures.

    /// This development host's cgroup lines (kernel 6.18, hybrid; cpu and cpuacct mounted apart).
    const HOST: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A pure v2 host (Ubuntu 22.04 style), behind a container's bind of a sub-group that must be ignored.
    const PURE_V2: &str = "\
1234 30 0:26 /system.slice/docker-ab12.scope /var/lib/docker/overlay2/x/merged/sys/fs/cgroup ro,nosuid master:9 - cgroup2 cgroup2 rw,nsdelegate
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// A pure v1 host (CentOS 7 style): co-mounted cpu,cpuacct, a sub-group bind, a second mount of memory and
    /// lines too short or broken to use.
    const PURE_V1: &str = "\
18 61 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
40 29 0:25 /docker/0123abcd /var/lib/docker/overlay2/x/merged/sys/fs/cgroup/memory ro master:12 - cgroup cgroup rw,memory
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpuacct,cpu
29 24 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
30 24 0:26 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,pids
31 24 0:27 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,freezer
32 24 0:28 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpuset
33 24 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,net_prio,net_cls
41 24 0:25 / /mnt/memory-again rw,relatime - cgroup cgroup rw,memory

garbage
1 2 3 4 5 6 - cgroup
42 24 0:30 / /sys/fs/cgroup/hugetlb rw - cgroup
43 24 0:31 / relative/path rw - cgroup2 cgroup2 rw
";

    fn dir(path: &str, controllers: &[Controller]) -> Dir {
        Dir { path: path.into(), controllers: controllers.to_vec() }
    }

    #[test]
    fn mountinfo_of_this_host_is_hybrid() {
        use Controller::*;
        let hierarchy = Hierarchy::from_mountinfo(HOST).unwrap();
        assert_eq!(hierarchy.layout(), Layout::Hybrid);
        assert_eq!(hierarchy.layout().to_string(), "hybrid");
        let expected = [
            dir("/sys/fs/cgroup/cpu", &[Cpu]),
            dir("/sys/fs/cgroup/cpuacct", &[Cpuacct]),
            dir("/sys/fs/cgroup/memory", &[Memory]),
            dir("/sys/fs/cgroup/freezer", &[Freezer]),
            dir("/sys/fs/cgroup/pids", &[Pids]),
        ];
        assert_eq!(hierarchy.v1, expected);
        assert_eq!(hierarchy.v2, Some("/sys/fs/cgroup/unified".into()));
    }

    #[test]
    fn mountinfo_of_a_pure_v2_host() {
        let hierarchy = Hierarchy::from_mountinfo(PURE_V2).unwrap();
        assert_eq!(hierarchy.layout(), Layout::V2);
        assert_eq!(hierarchy.layout().to_string(), "v2");
        assert!(hierarchy.v1.is_empty());
        assert_eq!(hierarchy.v2, Some("/sys/fs/cgroup".into()), "not the container's bind of a sub-group");
    }

    #[test]
    fn mountinfo_of_a_pure_v1_host_with_co_mounts_binds_and_junk() {
        use Controller::*;
        let hierarchy = Hierarchy::from_mountinfo(PURE_V1).unwrap();
        assert_eq!(hierarchy.layout(), Layout::V1);
        assert_eq!(hierarchy.layout().to_string(), "v1");
        let expected = [
            dir("/sys/fs/cgroup/cpu,cpuacct", &[Cpuacct, Cpu]),
            dir("/sys/fs/cgroup/memory", &[Memory]),
            dir("/sys/fs/cgroup/pids", &[Pids]),
            dir("/sys/fs/cgroup/freezer", &[Freezer]),
        ];
        assert_eq!(hierarchy.v1, expected);
        assert_eq!(hierarchy.v2, None);
    }

    #[test]
    fn mountinfo_escapes_and_absent_cgroups() {
        let hierarchy =
            Hierarchy::from_mountinfo("7 1 0:5 / /srv/cgroup\\040roots\\134x rw - cgroup2 cgroup2 rw").unwrap();
        assert_eq!(hierarchy.v2, Some("/srv/cgroup roots\\x".into()));
        for text in ["", "22 28 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw", "x\n\n"] {
            assert!(matches!(Hierarchy::from_mountinfo(text), Err(Error::NotMounted)), "{text:?}");
        }
        let error = Error::NotMounted.to_string();
        assert!(error.contains("mount cgroupfs"), "{error}");
    }

    proptest! {
        #[test]
        fn mountinfo_parsing_never_panics(text in "\\PC{0,400}") {
            let _ = Hierarchy::from_mountinfo(&text);
        }

        #[test]
        fn mountinfo_lines_of_any_shape_never_panic(
            fields in prop::collection::vec("-|/|cgroup|cgroup2|rw,memory|[ -~]{0,10}|\\\\[0-9]{0,3}", 0..14)
        ) {
            let _ = Hierarchy::from_mountinfo(&fields.join(" "));
        }

        #[test]
        fn escaped_mount_points_read_back_as_they_were(path in "/[^\\x00]{0,40}") {
            let line = format!("9 1 0:9 / {} rw shared:1 - cgroup2 cgroup2 rw", escape(&path));
            let hierarchy = Hierarchy::from_mountinfo(&line).unwrap();
            prop_assert_eq!(hierarchy.v2, Some(PathBuf::from(&path)));
        }
    }

    // Tests on this host's real cgroups: they need root, and fail (never skip) without it.

    /// Kills, thaws and removes a real group, and reaps its process, even when an assertion failed half-way.
    struct Guard {
        group: Cgroup,
        child: Option<Child>,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.group.thaw();
            let _ = self.group.kill_all(libc::SIGKILL);
            if let Some(child) = &mut self.child {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Err(error) = self.group.remove() {
                eprintln!("cleanup of cgroup {} failed: {error}", self.group.name());
            }
        }
    }

    fn real(name: &str, limits: &Limits) -> (Hierarchy, Guard) {
        let hierarchy = Hierarchy::detect().expect("this test needs the host's cgroups mounted");
        eprintln!("host cgroups: {} {hierarchy:?}", hierarchy.layout());
        let name = format!("test-{}-{name}", std::process::id());
        let group = hierarchy.create(&name, limits).expect("creating a real cgroup (this test must run as root)");
        (hierarchy, Guard { group, child: None })
    }

    /// The kernel's own view, /proc/<pid>/cgroup, puts `pid` in metac/<name> in every hierarchy we use.
    fn assert_kernel_places(pid: u32, hierarchy: &Hierarchy, name: &str) {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("/{PARENT}/{name}");
        let mut placed = 0;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let ours = if id == "0" {
                hierarchy.v2.is_some()
            } else {
                controllers.split(',').filter_map(Controller::v1).any(|c| hierarchy.in_v1(c))
            };
            if ours {
                assert_eq!(path, want, "{line}");
                placed += 1;
            }
        }
        assert_eq!(placed, hierarchy.roots().count(), "{text}");
    }

    #[test]
    fn real_host_cgroups_limit_freeze_kill_and_remove_a_sleep() {
        let limits = all(64 * MIB, 0.5, 20);
        let (hierarchy, mut guard) = real("life", &limits);
        let group = guard.group.clone();
        assert_eq!(group.procs_files().len(), hierarchy.roots().count(), "a group in every hierarchy");
        match group.dir(Controller::Cpu).expect("cpu controller") {
            (Version::V1, dir) => assert_eq!(get(&dir.join("cpu.cfs_quota_us")).trim(), "50000"),
            (Version::V2, dir) => assert_eq!(get(&dir.join("cpu.max")).trim(), "50000 100000"),
        }

        let child = guard.child.insert(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = child.id();
        group.add(pid).unwrap();
        assert!(group.pids().unwrap().contains(&pid));
        assert_kernel_places(pid, &hierarchy, group.name());
        let stats = group.stats().unwrap();
        assert!(stats.pids >= 1, "{stats:?}");
        assert_eq!(stats.memory_limit, Some(64 * MIB), "{stats:?}");
        assert_eq!(stats.pids_limit, Some(20), "{stats:?}");
        assert!(stats.memory < 64 * MIB, "{stats:?}");

        // Raise, then lower: on v1 with swap accounting the kernel itself refuses the memsw order if it is wrong.
        for mib in [128, 32] {
            group.update(&Limits { memory: Some(mib * MIB), ..Limits::default() }).unwrap();
            assert_eq!(group.stats().unwrap().memory_limit, Some(mib * MIB));
            if let Some((Version::V1, dir)) = group.dir(Controller::Memory) {
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    assert_eq!(get(&memsw).trim(), (mib * MIB).to_string());
                }
            }
        }

        group.freeze().unwrap();
        assert!(group.frozen().unwrap());
        group.thaw().unwrap();
        assert!(!group.frozen().unwrap());

        group.kill_all(libc::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        assert!(group.pids().unwrap().is_empty());
        group.remove().unwrap();
        for file in group.procs_files() {
            assert!(!file.parent().unwrap().exists(), "{} removed", file.display());
        }
        assert!(hierarchy.open(group.name()).unwrap().is_none());
    }

    #[test]
    fn real_host_cgroups_memory_limit_oom_kills_instead_of_swapping() {
        let (_, mut guard) = real("oom", &Limits { memory: Some(32 * MIB), ..Limits::default() });
        let group = guard.group.clone();
        // The shell waits for "go" so that it, and so tail, is inside the group before tail starts to hoard.
        let script = "read go && head -c 268435456 /dev/zero | tail -c 268435456 >/dev/null";
        let child = guard.child.insert(
            Command::new("sh").args(["-c", script]).stdin(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap(),
        );
        group.add(child.id()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "tail holding 256 MiB cannot live under a 32 MiB limit: {status}");
        let stats = group.stats().unwrap();
        assert!(stats.oom_kills >= 1, "{stats:?}");
        group.remove().unwrap();
    }
}
