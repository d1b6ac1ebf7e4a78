//! What a container's first process does to itself between clone(2) and exec: make its mounts private, assemble
//! its root in a scratch directory (the host's root read-only, or a rootfs), mount the caller's mounts, its own
//! /proc, /dev, /tmp and /run, pivot_root into it, take its hostname, drop capabilities, change user, forbid new
//! privileges, install the seccomp filter and exec the command. Every call goes through [`Syscall`], so the order
//! is unit-tested with a recording fake; the real run is in the crate's integration tests.
//!
//! The order matters, and is the one runc follows:
//! - the root is made read-only *before* the writable mounts go on top of it (a recursive read-only would take
//!   them too);
//! - mountpoints are created before the root turns read-only (on a rootfs) or must exist already (on the host's
//!   root, which is the host's own: nothing is ever created in it);
//! - the bounding set is dropped while the process still holds CAP_SETPCAP, the user changes, then the remaining
//!   capabilities are set; seccomp goes last so that nothing before it needs a syscall it forbids.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::security::{Caps, Filter};
use crate::spec::User;
use crate::sys::Syscall;

/// A container's mount, resolved to what is on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Bind this host path.
    Bind(PathBuf),
    /// A fresh tmpfs.
    Tmpfs,
}

/// One mount to make, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Inside the container.
    pub target: PathBuf,
    /// What goes there.
    pub source: Source,
    /// Read-only.
    pub read_only: bool,
}

/// The container's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The host's root, read-only.
    Host,
    /// A directory of this host.
    Dir {
        /// The directory.
        path: PathBuf,
        /// Read-only.
        read_only: bool,
    },
}

/// Everything the first process needs, prepared before clone (so that the child only makes calls).
#[derive(Debug)]
pub struct Plan {
    /// An empty directory, reachable by the container's user, where the root is assembled.
    pub scratch: PathBuf,
    /// The root.
    pub root: Root,
    /// The mounts, in order.
    pub mounts: Vec<MountPlan>,
    /// Its hostname.
    pub hostname: String,
    /// The working directory inside.
    pub cwd: PathBuf,
    /// The user inside; `None` for root.
    pub user: Option<User>,
    /// Whether the process is in a user namespace of its own with a single id mapped (setgroups is denied there).
    pub rootless: bool,
    /// Whether the network namespace is its own (sysfs can be mounted).
    pub own_network: bool,
    /// The capabilities it keeps.
    pub caps: Caps,
    /// The seccomp filter.
    pub filter: Filter,
    /// The command and arguments.
    pub args: Vec<CString>,
    /// The environment.
    pub env: Vec<CString>,
}

/// A step of the setup that failed, and why: what the child reports to the shim, which reports it to the caller.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {err}")]
pub struct Error {
    /// The step.
    pub what: String,
    /// The system's reason.
    pub err: io::Error,
}

fn at(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |err| Error { what, err }
}

/// `inside` (absolute) under `root`.
pub fn under(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The directories a container on the host's root gets fresh (tmpfs), with their modes.
const FRESH: [(&str, &str); 2] = [("tmp", "mode=1777"), ("run", "mode=755")];

/// Whether `target` lies in a tmpfs of the container's own (a fresh /tmp or /run, or one of the first `before`
/// mounts), where a mountpoint may be made without touching the host.
fn fresh(plan: &Plan, target: &Path, before: usize) -> bool {
    let ours = |d: &Path| target.starts_with(d) && target != d;
    FRESH.iter().any(|(d, _)| {
        let d = Path::new("/").join(d);
        ours(&d) && !plan.mounts.iter().any(|m| m.target == d)
    }) || plan.mounts[..before].iter().any(|m| m.source == Source::Tmpfs && ours(&m.target))
}

/// Sets the container up and execs its command; returns only with what failed.
pub fn run(sys: &dyn Syscall, plan: &Plan) -> Error {
    match setup(sys, plan) {
        Err(e) => e,
        Ok(()) => {
            let err = sys.exec(&plan.args, &plan.env);
            let cmd = plan.args[0].to_string_lossy().into_owned();
            let why = match err.raw_os_error() {
                Some(libc::ENOENT) => format!("{cmd}: command not found in the container"),
                Some(libc::EACCES) => format!("{cmd}: permission denied (not executable for the container's user)"),
                _ => format!("exec {cmd}"),
            };
            Error { what: why, err }
        }
    }
}

/// Everything before exec: [`root`], then [`process`].
pub fn setup(sys: &dyn Syscall, plan: &Plan) -> Result<(), Error> {
    root(sys, plan)?;
    process(sys, plan)
}

/// The container's file system: its root assembled, its mounts made, pivot_root into it, in the working directory.
pub fn root(sys: &dyn Syscall, plan: &Plan) -> Result<(), Error> {
    let none = None::<&Path>;
    let new = &plan.scratch;
    // Nothing this process mounts reaches the host, and nothing the host mounts later reaches it.
    sys.mount(none, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
        .map_err(at("make the mounts private"))?;
    let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
    match &plan.root {
        Root::Host => {
            sys.mount(Some(Path::new("/")), new, None, rbind, None).map_err(at("bind the host's root"))?;
            sys.read_only_tree(new).map_err(at("make the host's root read-only"))?;
            for (d, mode) in FRESH {
                if plan.mounts.iter().any(|m| m.target == Path::new("/").join(d)) {
                    continue;
                }
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                sys.mount(Some(Path::new("tmpfs")), &new.join(d), Some("tmpfs"), flags, Some(mode))
                    .map_err(at(format!("mount /{d}")))?;
            }
        }
        Root::Dir { path, read_only } => {
            sys.mount(Some(path), new, None, rbind, None).map_err(at(format!("bind the root {}", path.display())))?;
            for m in &plan.mounts {
                mountpoint(sys, new, m)?;
            }
            for d in ["proc", "dev", "sys", "tmp"] {
                let p = new.join(d);
                if sys.kind_of(&p).is_none() && !*read_only {
                    sys.mkdir_all(&p).map_err(at(format!("make /{d} in the root")))?;
                }
            }
            if *read_only {
                sys.read_only_tree(new).map_err(at("make the root read-only"))?;
            }
        }
    }
    // A writable working directory on the host's root: the host directory itself (made in /tmp's fresh tmpfs
    // when it is under /tmp).
    if plan.root == Root::Host && plan.cwd != Path::new("/") && !plan.mounts.iter().any(|m| m.target == plan.cwd) {
        let t = under(new, &plan.cwd);
        if sys.kind_of(&plan.cwd) == Some(true) && (sys.kind_of(&t) == Some(true) || fresh(plan, &plan.cwd, 0)) {
            if sys.kind_of(&t).is_none() {
                sys.mkdir_all(&t).map_err(at(format!("make the working directory {}", plan.cwd.display())))?;
            }
            sys.mount(Some(&plan.cwd), &t, None, rbind, None)
                .map_err(at(format!("bind the working directory {}", plan.cwd.display())))?;
        }
    }
    for (i, m) in plan.mounts.iter().enumerate() {
        let t = under(new, &m.target);
        if plan.root == Root::Host && sys.kind_of(&t).is_none() {
            if !fresh(plan, &m.target, i) {
                return Err(Error {
                    what: format!(
                        "mount at {}: the host's root has no such path, and nothing is created in it \
                         (use --rootfs, or mount at a path that exists)",
                        m.target.display()
                    ),
                    err: io::Error::from_raw_os_error(libc::ENOENT),
                });
            }
            mountpoint(sys, new, m)?;
        }
        // A mount under a tmpfs of the container's own made before it (a remote run's /tmp over the caller's
        // root, its working directory in /tmp): its mountpoint is made there, touching nothing else.
        let in_own_tmpfs = plan.mounts[..i]
            .iter()
            .any(|p| p.source == Source::Tmpfs && m.target.starts_with(&p.target) && m.target != p.target);
        if plan.root != Root::Host && in_own_tmpfs && sys.kind_of(&t).is_none() {
            mountpoint(sys, new, m)?;
        }
        match &m.source {
            Source::Bind(src) => {
                sys.mount(Some(src), &t, None, rbind, None).map_err(at(format!(
                    "bind {} at {}",
                    src.display(),
                    m.target.display()
                )))?;
            }
            Source::Tmpfs => {
                sys.mount(
                    Some(Path::new("tmpfs")),
                    &t,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=1777"),
                )
                .map_err(at(format!("mount a tmpfs at {}", m.target.display())))?;
            }
        }
        if m.read_only {
            sys.read_only_tree(&t).map_err(at(format!("make {} read-only", m.target.display())))?;
        }
    }
    specials(sys, plan)?;
    sys.sethostname(&plan.hostname).map_err(at("set the hostname"))?;
    sys.chdir(new).map_err(at("enter the new root"))?;
    sys.pivot_root_here().map_err(at("pivot_root"))?;
    // The old root is stacked on the new one: detach it, and the host is out of reach.
    sys.umount(Path::new("."), MntFlags::MNT_DETACH).map_err(at("detach the host's root"))?;
    sys.chdir(Path::new("/")).map_err(at("enter /"))?;
    sys.chdir(&plan.cwd).map_err(at(format!("enter the working directory {}", plan.cwd.display())))?;
    Ok(())
}

/// The process's rights: capabilities, user, no_new_privs and seccomp, in that order.
pub fn process(sys: &dyn Syscall, plan: &Plan) -> Result<(), Error> {
    sys.drop_bounding(plan.caps).map_err(at("drop capabilities from the bounding set"))?;
    if let Some(u) = plan.user {
        sys.set_ids(u.uid, u.gid, !plan.rootless).map_err(at(format!("become user {}:{}", u.uid, u.gid)))?;
    }
    sys.set_caps(plan.caps).map_err(at("set capabilities"))?;
    sys.no_new_privs().map_err(at("set no_new_privs"))?;
    sys.seccomp(&plan.filter).map_err(at("install the seccomp filter"))?;
    Ok(())
}

/// Creates a mount's target in a rootfs: a directory, or an empty file when a file is bound.
fn mountpoint(sys: &dyn Syscall, new: &Path, m: &MountPlan) -> Result<(), Error> {
    let t = under(new, &m.target);
    if sys.kind_of(&t).is_some() {
        return Ok(());
    }
    let file = matches!(&m.source, Source::Bind(s) if sys.kind_of(s) == Some(false));
    let made = if file {
        t.parent().map_or(Ok(()), |p| sys.mkdir_all(p)).and_then(|()| sys.touch(&t))
    } else {
        sys.mkdir_all(&t)
    };
    made.map_err(at(format!("make the mountpoint {} in the root", m.target.display())))
}

/// /proc of the container's own pid namespace, a /dev with the usual devices and a pty namespace of its own,
/// and /sys.
fn specials(sys: &dyn Syscall, plan: &Plan) -> Result<(), Error> {
    let new = &plan.scratch;
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let src = |s: &'static str| Some(Path::new(s));
    sys.mount(src("proc"), &new.join("proc"), Some("proc"), quiet, None).map_err(at("mount /proc"))?;
    let dev = new.join("dev");
    sys.mount(src("tmpfs"), &dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME, Some("mode=755"))
        .map_err(at("mount /dev"))?;
    for d in DEVICES {
        let t = dev.join(d);
        sys.touch(&t).map_err(at(format!("make /dev/{d}")))?;
        let host = Path::new("/dev").join(d);
        sys.mount(Some(&host), &t, None, MsFlags::MS_BIND, None).map_err(at(format!("bind /dev/{d}")))?;
    }
    for d in ["pts", "shm", "mqueue"] {
        sys.mkdir_all(&dev.join(d)).map_err(at(format!("make /dev/{d}")))?;
    }
    sys.mount(
        src("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(at("mount /dev/pts"))?;
    sys.mount(src("shm"), &dev.join("shm"), Some("tmpfs"), quiet, Some("mode=1777,size=65536k"))
        .map_err(at("mount /dev/shm"))?;
    sys.mount(src("mqueue"), &dev.join("mqueue"), Some("mqueue"), quiet, None).map_err(at("mount /dev/mqueue"))?;
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        sys.symlink(Path::new(target), &dev.join(link)).map_err(at(format!("link /dev/{link}")))?;
    }
    let sys_dir = new.join("sys");
    if plan.root == Root::Host || sys.kind_of(&sys_dir) == Some(true) {
        let ro = quiet | MsFlags::MS_RDONLY;
        // A sysfs of its own (its network devices, not the host's) needs the network namespace to be its own;
        // otherwise the host's, read-only (on the host's root it is there already).
        let own = plan.own_network && sys.mount(src("sysfs"), &sys_dir, Some("sysfs"), ro, None).is_ok();
        if !own && plan.root != Root::Host {
            sys.mount(src("/sys"), &sys_dir, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
                .and_then(|()| sys.read_only_tree(&sys_dir))
                .map_err(at("bind /sys"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Recorder};

    fn plan(root: Root, mounts: Vec<MountPlan>) -> Plan {
        Plan {
            scratch: "/run/c/1.root".into(),
            root,
            mounts,
            hostname: "box".into(),
            cwd: "/home/u/work".into(),
            user: Some(User { uid: 1000, gid: 100 }),
            rootless: false,
            own_network: true,
            caps: Caps::docker_default(),
            filter: Filter::docker_default(Caps::docker_default()),
            args: vec![CString::new("sh").unwrap()],
            env: vec![],
        }
    }

    fn index(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
        calls.iter().position(f).expect("call was made")
    }

    #[test]
    fn the_host_root_goes_read_only_before_the_writable_mounts_and_nothing_is_created_in_it() {
        let sys = Recorder {
            existing: vec!["/run/c/1.root/data/".into(), "/run/c/1.root/home/u/work/".into(), "/home/u/work/".into()],
            ..Default::default()
        };
        let m = MountPlan { target: "/data".into(), source: Source::Bind("/srv/data".into()), read_only: true };
        let e = run(&sys, &plan(Root::Host, vec![m]));
        assert!(e.what.contains("sh: command not found"), "{e}");
        let calls = sys.calls();
        let ro = index(&calls, |c| *c == Call::ReadOnly("/run/c/1.root".into()));
        let cwd = index(&calls, |c| matches!(c, Call::Mount(Some(s), _, _, _, _) if s == Path::new("/home/u/work")));
        let data = index(&calls, |c| matches!(c, Call::Mount(Some(s), _, _, _, _) if s == Path::new("/srv/data")));
        let data_ro = index(&calls, |c| *c == Call::ReadOnly("/run/c/1.root/data".into()));
        let pivot = index(&calls, |c| *c == Call::PivotRoot);
        assert!(ro < cwd && cwd < data && data < data_ro && data_ro < pivot, "{calls:#?}");
        assert!(!calls.iter().any(|c| matches!(c, Call::Mkdir(p) if !p.starts_with("/run/c/1.root/dev"))));
        let tmp = index(
            &calls,
            |c| matches!(c, Call::Mount(_, t, Some(f), _, _) if t == Path::new("/run/c/1.root/tmp") && f == "tmpfs"),
        );
        assert!(ro < tmp && tmp < pivot);
        // Its own network, so its own sysfs (the host's would list the host's devices).
        let sysfs = index(
            &calls,
            |c| matches!(c, Call::Mount(_, t, Some(f), _, _) if t == Path::new("/run/c/1.root/sys") && f == "sysfs"),
        );
        assert!(ro < sysfs && sysfs < pivot);
        // The user's process: bounding set, ids, caps, no_new_privs, seccomp, exec, in that order.
        let tail: Vec<_> = calls[pivot..].to_vec();
        assert_eq!(
            tail,
            vec![
                Call::PivotRoot,
                Call::Umount(".".into()),
                Call::Chdir("/".into()),
                Call::Chdir("/home/u/work".into()),
                Call::DropBounding(Caps::docker_default()),
                Call::SetIds(1000, 100, true),
                Call::SetCaps(Caps::docker_default()),
                Call::NoNewPrivs,
                Call::Seccomp,
                Call::Exec(vec!["sh".into()]),
            ]
        );
    }

    #[test]
    fn a_mount_at_a_path_the_host_lacks_is_refused_saying_so() {
        let sys = Recorder::default();
        let m = MountPlan { target: "/nope".into(), source: Source::Tmpfs, read_only: false };
        let e = setup(&sys, &plan(Root::Host, vec![m])).unwrap_err();
        assert!(e.to_string().contains("mount at /nope: the host's root has no such path"), "{e}");
        assert!(!sys.calls().contains(&Call::PivotRoot));
    }

    #[test]
    fn a_rootfs_gets_its_mountpoints_before_it_turns_read_only() {
        let sys = Recorder {
            existing: vec!["/srv/f.txt".into(), "/run/c/1.root/proc/".into(), "/run/c/1.root/sys/".into()],
            ..Default::default()
        };
        let mounts = vec![
            MountPlan { target: "/etc/f.txt".into(), source: Source::Bind("/srv/f.txt".into()), read_only: true },
            MountPlan { target: "/scratch".into(), source: Source::Tmpfs, read_only: false },
        ];
        let mut p = plan(Root::Dir { path: "/srv/busybox".into(), read_only: true }, mounts);
        p.user = None;
        setup(&sys, &p).unwrap();
        let calls = sys.calls();
        let touch = index(&calls, |c| *c == Call::Touch("/run/c/1.root/etc/f.txt".into()));
        let mkdir = index(&calls, |c| *c == Call::Mkdir("/run/c/1.root/scratch".into()));
        let ro = index(&calls, |c| *c == Call::ReadOnly("/run/c/1.root".into()));
        assert!(touch < ro && mkdir < ro, "{calls:#?}");
        // A read-only rootfs gets no new directories (dev and tmp are missing: nothing is made there).
        assert!(!calls.contains(&Call::Mkdir("/run/c/1.root/tmp".into())));
        // Its own sysfs, read-only, since the network is its own; no host /tmp or /run on a rootfs.
        assert!(calls.iter().any(|c| matches!(c, Call::Mount(_, t, Some(f), fl, _)
            if t == Path::new("/run/c/1.root/sys") && f == "sysfs" && fl.contains(MsFlags::MS_RDONLY))));
        assert!(!calls.iter().any(|c| matches!(c, Call::Mount(_, t, _, _, _) if t == Path::new("/run/c/1.root/run"))));
        assert!(!calls.iter().any(|c| matches!(c, Call::SetIds(..))));
    }

    #[test]
    fn mountpoints_are_made_only_in_the_containers_own_tmpfs_on_the_host_root() {
        let sys = Recorder { existing: vec!["/tmp/work/".into()], ..Default::default() };
        let mut p = plan(
            Root::Host,
            vec![
                MountPlan { target: "/tmp/in".into(), source: Source::Tmpfs, read_only: false },
                MountPlan {
                    target: "/tmp/in/deeper".into(),
                    source: Source::Bind("/tmp/work".into()),
                    read_only: true,
                },
            ],
        );
        p.cwd = "/tmp/work".into();
        setup(&sys, &p).unwrap();
        let calls = sys.calls();
        let tmp = index(
            &calls,
            |c| matches!(c, Call::Mount(_, t, Some(f), _, _) if t == Path::new("/run/c/1.root/tmp") && f == "tmpfs"),
        );
        let mk = index(&calls, |c| *c == Call::Mkdir("/run/c/1.root/tmp/work".into()));
        let cwd = index(
            &calls,
            |c| matches!(c, Call::Mount(Some(s), t, _, _, _) if s == Path::new("/tmp/work") && t == Path::new("/run/c/1.root/tmp/work")),
        );
        let deeper = index(&calls, |c| *c == Call::Mkdir("/run/c/1.root/tmp/in/deeper".into()));
        assert!(tmp < mk && mk < cwd && cwd < deeper, "{calls:#?}");
    }

    #[test]
    fn a_failing_step_names_itself_and_stops_the_setup() {
        let sys = Recorder { fail_mount: Some("/run/c/1.root/proc".into()), ..Default::default() };
        let e = setup(&sys, &plan(Root::Host, vec![])).unwrap_err();
        assert_eq!(e.what, "mount /proc");
        assert_eq!(e.err.raw_os_error(), Some(libc::EPERM));
        assert!(!sys.calls().contains(&Call::PivotRoot));
    }

    #[test]
    fn rootless_processes_do_not_call_setgroups() {
        let sys = Recorder::default();
        let mut p = plan(Root::Host, vec![]);
        p.rootless = true;
        p.user = Some(User { uid: 0, gid: 0 });
        setup(&sys, &p).unwrap();
        assert!(sys.calls().contains(&Call::SetIds(0, 0, false)));
    }
}
