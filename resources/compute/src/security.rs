//! What a container may do to the kernel: docker's default capability set and docker's default seccomp filter,
//! and the calls that apply them in the container's process just before it execs its command.
//!
//! The container process, single-threaded after fork and its mounts, applies them in this order:
//!
//! 1. [`drop_bounding`] while still root: every capability not kept leaves the bounding set, so nothing the
//!    container execs (setuid-root binaries, files with capabilities) can ever get it back;
//! 2. setgroups, setgid, setuid (the caller);
//! 3. [`set_caps`]: effective and permitted become the kept set (intersected with what the process still has),
//!    inheritable and ambient become empty;
//! 4. [`no_new_privs`]: execve can no longer raise privileges, which also lets an unprivileged process install
//!    a seccomp filter;
//! 5. [`Filter::install`]: the seccomp filter, built with [`Filter::docker_default`] before fork;
//! 6. execve.
//!
//! How this compares with docker (moby's `oci/caps`, moby/profiles' `seccomp/default_linux.go` of mid-2026, runc's
//! seccomp patching):
//!
//! - Capabilities: the same 14 defaults and the same `--cap-add`/`--cap-drop` names (any case, `CAP_` optional,
//!   `ALL`). One difference: a name given to both flags is dropped (docker keeps it unless `--cap-add ALL`), and
//!   `ALL` on both flags keeps nothing (docker keeps everything); see [`Caps::with`].
//! - Inheritable and ambient sets are empty, as in docker since CVE-2022-24769, so a non-root user keeps no
//!   capability across execve, exactly as in docker; raising them as ambient would hand `USER nobody` the
//!   default set (DAC_OVERRIDE, SETUID...) and make it root in all but name.
//! - no_new_privs is always set; docker sets it only with `--security-opt no-new-privileges`. Inside a metac
//!   container setuid binaries (sudo, su) and file capabilities do not raise privileges.
//! - Seccomp: the same allow lists, capability-conditional additions (and the rule for Linux 4.8, checked with
//!   uname), argument rules, ERRNO(EPERM) by default, clone3 answering ENOSYS without CAP_SYS_ADMIN. As runc does, syscall numbers above the highest one the
//!   profile names answer ENOSYS rather than EPERM, so libc falls back from syscalls newer than the profile.
//!   Differences: only the native ABI is allowed (docker also allows i386 and x32 on x86_64, arm on aarch64),
//!   and any other ABI kills the process, as libseccomp does for an architecture a filter lacks; argument rules
//!   compare the low 32 bits, as the kernel reads those arguments as 32-bit ints (libseccomp compares 64 bits,
//!   which lets `socket(0x1_0000_0028, ..)`, AF_VSOCK to the kernel, through docker's `> AF_VSOCK` rule);
//!   the groups for ppc64le, s390 and riscv64 are left out, as metac builds filters for x86_64 and aarch64 only.
//! - The filter is a binary search over runs of syscall numbers with one verdict: on x86_64 with docker's default
//!   set, 152 instructions and at most 9 comparisons per syscall (the ABI, the highest number, 7 halvings),
//!   where libseccomp by default compares the syscall with each allowed one in turn.

use std::collections::BTreeMap;
use std::io;
use std::mem::offset_of;

use serde::{Deserialize, Serialize};

/// A capability given to `--cap-add` or `--cap-drop` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The name is no capability at all.
    #[error("unknown capability {name:?} in {flag}: names look like \"NET_ADMIN\" or \"CAP_NET_ADMIN\", or ALL")]
    Unknown {
        /// The name as given.
        name: String,
        /// `--cap-add` or `--cap-drop`.
        flag: &'static str,
    },
    /// The capability is newer than the running kernel, which could neither grant nor drop it.
    #[error("capability {name:?} in {flag} is newer than this kernel, whose last capability is number {last}")]
    NewerThanKernel {
        /// The name as given.
        name: String,
        /// `--cap-add` or `--cap-drop`.
        flag: &'static str,
        /// The highest capability number the kernel knows.
        last: u32,
    },
}

/// Capability names by number (`capability.h`), without the `CAP_` prefix.
const NAMES: &str = "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE \
    NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE \
    SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL \
    SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE";

/// docker's default set, as moby's `oci/caps/defaults.go` lists it.
const DOCKER_DEFAULT: &str =
    "CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL \
     AUDIT_WRITE";

/// The number of a capability written as users write it: any case, with or without `CAP_`.
fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.split_whitespace().position(|n| n == bare).map(|n| n as u32)
}

/// A set of capabilities, bit `n` for capability number `n`; serialized as that number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps(u64);

impl Caps {
    /// No capability at all.
    pub const fn empty() -> Caps {
        Caps(0)
    }

    /// The set docker gives a container by default: enough for a root process to manage files, users and
    /// sockets inside the container, nothing that reaches the host (no SYS_ADMIN, NET_ADMIN, SYS_PTRACE...).
    pub fn docker_default() -> Caps {
        Caps(DOCKER_DEFAULT.split_whitespace().filter_map(number).fold(0, |bits, n| bits | 1 << n))
    }

    /// Every capability the running kernel knows, as `--cap-add ALL` and privileged containers get.
    ///
    /// The kernel is asked (PR_CAPBSET_READ fails past its last capability) rather than
    /// `/proc/sys/kernel/cap_last_cap` read, so this works where /proc is not mounted.
    pub fn all() -> Caps {
        let last = last_cap();
        Caps(if last >= 63 { u64::MAX } else { (1 << (last + 1)) - 1 })
    }

    /// This set changed by `--cap-add` and `--cap-drop` lists.
    ///
    /// The start is this set, or every capability if `add` holds `ALL`, or none if `drop` holds `ALL`
    /// (`drop` wins when both do). The named `add` capabilities join it, then the named `drop` ones leave it, so
    /// a name on both lists is dropped. docker agrees on the common forms (`--cap-drop ALL --cap-add X`,
    /// `--cap-add ALL --cap-drop X`) and differs on contradictions: it keeps a name on both lists unless `add`
    /// holds `ALL`, and keeps everything when both hold `ALL`; refusing the capability is the safer reading.
    pub fn with(self, add: &[String], drop: &[String]) -> Result<Caps, Error> {
        let last = last_cap();
        let (adds, add_all) = parse_list(add, "--cap-add", last)?;
        let (drops, drop_all) = parse_list(drop, "--cap-drop", last)?;
        let start = if drop_all {
            Caps::empty()
        } else if add_all {
            Caps::all()
        } else {
            self
        };
        Ok(Caps((start.0 | adds) & !drops))
    }

    /// The names, `CAP_CHOWN` style, in capability-number order, as `metac inspect` shows them. A capability
    /// newer than this code (from `all()` on a newer kernel) shows as its number: `CAP_41`.
    pub fn names(&self) -> Vec<String> {
        (0..64)
            .filter(|&n| self.contains(n))
            .map(|n| match NAMES.split_whitespace().nth(n as usize) {
                Some(name) => format!("CAP_{name}"),
                None => format!("CAP_{n}"),
            })
            .collect()
    }

    /// Whether capability number `cap` is in the set.
    pub fn contains(&self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// The set as a mask, bit `n` for capability `n`, as /proc/PID/status shows it (CapEff, CapBnd...).
    pub fn bits(&self) -> u64 {
        self.0
    }
}

/// The mask of the named capabilities in one flag's list, and whether the list holds `ALL`.
fn parse_list(names: &[String], flag: &'static str, last: u32) -> Result<(u64, bool), Error> {
    let mut bits = 0;
    let mut all = false;
    for name in names {
        if name.eq_ignore_ascii_case("ALL") {
            all = true;
            continue;
        }
        let cap = number(name).ok_or_else(|| Error::Unknown { name: name.clone(), flag })?;
        if cap > last {
            return Err(Error::NewerThanKernel { name: name.clone(), flag, last });
        }
        bits |= 1 << cap;
    }
    Ok((bits, all))
}

/// The highest capability number the running kernel knows.
fn last_cap() -> u32 {
    // SAFETY: PR_CAPBSET_READ only reads the calling thread's bounding set; it takes no pointer.
    let known = |cap: u32| unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) } >= 0;
    (1..64).take_while(|&cap| known(cap)).last().unwrap_or(0)
}

/// Removes from the bounding set every capability not in `keep`, so that no later execve can regain it.
///
/// Needs CAP_SETPCAP, so it runs before setuid. Capabilities the kernel does not know are skipped.
pub fn drop_bounding(keep: Caps) -> io::Result<()> {
    for cap in (0..64).filter(|&cap| !keep.contains(cap)) {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and changes only this thread's bounding set.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
            let err = io::Error::last_os_error();
            // EINVAL: past the kernel's last capability, so there is nothing left to drop.
            return if err.raw_os_error() == Some(libc::EINVAL) { Ok(()) } else { Err(err) };
        }
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, passed as two 32-bit halves.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit half of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets effective and permitted to `keep` ∩ the permitted set, and inheritable (hence ambient) to empty.
///
/// Runs after setuid. A root process keeps these capabilities across execve (bounded by [`drop_bounding`]); a
/// non-root one loses them there, as in docker: inheritable is empty since CVE-2022-24769 and docker raises no
/// ambient capability. Intersecting with the permitted set makes this a no-op, not an error, for a process that
/// setuid already stripped; a caller that wants a non-root process to hold them until execve, as runc does, sets
/// PR_SET_KEEPCAPS before setuid.
pub fn set_caps(keep: Caps) -> io::Result<()> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are the version-3 layouts capget writes to: one header, two data structs.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let permitted = u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32;
    let set = keep.0 & permitted;
    for (half, d) in data.iter_mut().enumerate() {
        let word = (set >> (32 * half)) as u32;
        *d = CapData { effective: word, permitted: word, inheritable: 0 };
    }
    // SAFETY: as for capget; capset only reads header and data.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets no_new_privs: execve will no longer grant setuid or file-capability privileges, and an unprivileged
/// process may install a seccomp filter. Inherited by every child and irreversible.
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only and sets a flag on this thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the filter answers for one syscall number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    /// Fail with this errno.
    Errno(u32),
    /// Allow when the low 32 bits of argument 0 are one of these, else EPERM.
    ArgIn(&'static [u32]),
    /// Allow unless the low 32 bits of argument 0 are one of these, else EPERM.
    ArgNotIn(&'static [u32]),
    /// Allow when argument 0 has none of these bits, else EPERM.
    ArgNoBits(u32),
}

/// The answer to anything the profile does not allow.
const DENY: Verdict = Verdict::Errno(libc::EPERM as u32);

/// When a rule of the profile applies.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// The container holds this capability.
    Cap(&'static str),
    /// The container lacks this capability.
    NoCap(&'static str),
    /// The filter is for this architecture.
    Arch(&'static str),
    /// The running kernel is at least this (major, minor).
    Kernel(u32, u32),
}

/// One group of docker's profile: these syscalls (whitespace-separated) get this verdict when this holds.
struct Rule {
    when: When,
    verdict: Verdict,
    names: &'static str,
}

/// CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP.
const NEW_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// docker's default profile (moby/profiles `seccomp/default_linux.go`), in its order. docker's three socket
/// rules (`< AF_ALG`, `== AF_ALG + 1`, `> AF_VSOCK`) and five personality rules are merged into one each.
const PROFILE: &[Rule] = &[
    Rule {
        when: When::Always,
        verdict: Verdict::Allow,
        names: "accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32 \
        clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 \
        clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 \
        epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old \
        eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate \
        fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync \
        fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync \
        ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat \
        getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups \
        getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid \
        getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt \
        get_thread_area gettid gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init \
        inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents \
        io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule \
        landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount \
        listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise \
        map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 \
        mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 \
        mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock \
        munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open \
        pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 \
        preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read \
        readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages \
        removexattr removexattrat rename renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq \
        rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait \
        rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam \
        sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval \
        sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler \
        sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 \
        sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 \
        setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid \
        setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 \
        setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask \
        sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount statx symlink symlinkat \
        sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun \
        timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime \
        timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask \
        uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid \
        waitpid write writev",
    },
    Rule { when: When::Kernel(4, 8), verdict: Verdict::Allow, names: "process_vm_readv process_vm_writev ptrace" },
    Rule {
        when: When::Always,
        verdict: Verdict::ArgNotIn(&[libc::AF_ALG as u32, libc::AF_VSOCK as u32]),
        names: "socket",
    },
    Rule {
        when: When::Always,
        verdict: Verdict::ArgIn(&[0, 0x8, 0x20000, 0x20008, 0xffff_ffff]),
        names: "personality",
    },
    Rule {
        when: When::Arch("aarch64"),
        verdict: Verdict::Allow,
        names: "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
    },
    Rule { when: When::Arch("x86_64"), verdict: Verdict::Allow, names: "arch_prctl modify_ldt" },
    Rule { when: When::Cap("DAC_READ_SEARCH"), verdict: Verdict::Allow, names: "open_by_handle_at" },
    Rule {
        when: When::Cap("SYS_ADMIN"),
        verdict: Verdict::Allow,
        names: "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie lsm_get_self_attr \
        lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount open_tree perf_event_open quotactl \
        quotactl_fd setdomainname sethostname setns syslog umount umount2 unshare",
    },
    Rule { when: When::NoCap("SYS_ADMIN"), verdict: Verdict::ArgNoBits(NEW_NAMESPACES), names: "clone" },
    Rule { when: When::NoCap("SYS_ADMIN"), verdict: Verdict::Errno(libc::ENOSYS as u32), names: "clone3" },
    Rule { when: When::Cap("SYS_BOOT"), verdict: Verdict::Allow, names: "reboot" },
    Rule { when: When::Cap("SYS_CHROOT"), verdict: Verdict::Allow, names: "chroot" },
    Rule { when: When::Cap("SYS_MODULE"), verdict: Verdict::Allow, names: "delete_module init_module finit_module" },
    Rule { when: When::Cap("SYS_PACCT"), verdict: Verdict::Allow, names: "acct" },
    Rule {
        when: When::Cap("SYS_PTRACE"),
        verdict: Verdict::Allow,
        names: "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    },
    Rule { when: When::Cap("SYS_RAWIO"), verdict: Verdict::Allow, names: "iopl ioperm" },
    Rule {
        when: When::Cap("SYS_TIME"),
        verdict: Verdict::Allow,
        names: "settimeofday stime clock_settime clock_settime64",
    },
    Rule { when: When::Cap("SYS_TTY_CONFIG"), verdict: Verdict::Allow, names: "vhangup" },
    Rule {
        when: When::Cap("SYS_NICE"),
        verdict: Verdict::Allow,
        names: "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    },
    Rule { when: When::Cap("SYSLOG"), verdict: Verdict::Allow, names: "syslog" },
    Rule { when: When::Cap("BPF"), verdict: Verdict::Allow, names: "bpf" },
    Rule { when: When::Cap("PERFMON"), verdict: Verdict::Allow, names: "perf_event_open" },
];

/// A CPU architecture's view of syscalls: its audit number and the numbers of the profile's syscalls.
struct Arch {
    name: &'static str,
    /// `AUDIT_ARCH_*`, what the kernel puts in `seccomp_data.arch` for a native syscall.
    audit: u32,
    /// x86_64: native-arch syscall numbers with bit 30 set are x32-ABI calls.
    x32: bool,
    /// libc's `SYS_*` numbers, names as libc spells them (`SYS_read`).
    libc: &'static [(&'static str, u32)],
    /// Syscalls libc 0.2.191 lacks, from the kernel's syscall tables.
    kernel: &'static [(&'static str, u32)],
}

impl Arch {
    /// The number of syscall `name` here, or None where this architecture has no such syscall.
    fn number(&self, name: &str) -> Option<u32> {
        let libc = self.libc.iter().find(|(sys, _)| sys.strip_prefix("SYS_") == Some(name));
        libc.or_else(|| self.kernel.iter().find(|(n, _)| *n == name)).map(|&(_, nr)| nr)
    }

    /// The highest number of any syscall the profile names: anything above is newer than the profile.
    fn top(&self) -> u32 {
        PROFILE.iter().flat_map(|rule| rule.names.split_whitespace()).filter_map(|n| self.number(n)).max().unwrap_or(0)
    }
}

/// `libc::SYS_*` constants as a table: `numbers! { SYS_read SYS_write }`.
macro_rules! numbers {
    ($($sys:ident)*) => { &[$((stringify!($sys), libc::$sys as u32)),*] };
}

#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
const NATIVE: Option<&Arch> = Some(&Arch {
    name: "x86_64",
    audit: 0xc000_003e, // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    x32: true,
    libc: numbers! {
        SYS_accept SYS_accept4 SYS_access SYS_acct SYS_adjtimex SYS_alarm SYS_arch_prctl SYS_bind SYS_bpf SYS_brk
        SYS_capget SYS_capset SYS_chdir SYS_chmod SYS_chown SYS_chroot SYS_clock_adjtime SYS_clock_getres
        SYS_clock_gettime SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3 SYS_close SYS_close_range
        SYS_connect SYS_copy_file_range SYS_creat SYS_delete_module SYS_dup SYS_dup2 SYS_dup3 SYS_epoll_create
        SYS_epoll_create1 SYS_epoll_ctl SYS_epoll_ctl_old SYS_epoll_pwait SYS_epoll_pwait2 SYS_epoll_wait
        SYS_epoll_wait_old SYS_eventfd SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group SYS_faccessat
        SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_init SYS_fanotify_mark SYS_fchdir SYS_fchmod
        SYS_fchmodat SYS_fchmodat2 SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_finit_module
        SYS_flistxattr SYS_flock SYS_fork SYS_fremovexattr SYS_fsconfig SYS_fsetxattr SYS_fsmount SYS_fsopen SYS_fspick
        SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv SYS_futimesat SYS_get_mempolicy
        SYS_get_robust_list SYS_get_thread_area SYS_getcpu SYS_getcwd SYS_getdents SYS_getdents64 SYS_getegid
        SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpgrp SYS_getpid
        SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrlimit SYS_getrusage SYS_getsid
        SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid SYS_getxattr SYS_init_module
        SYS_inotify_add_watch SYS_inotify_init SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy
        SYS_io_getevents SYS_io_setup SYS_io_submit SYS_ioctl SYS_ioperm SYS_iopl SYS_ioprio_get SYS_ioprio_set SYS_kcmp
        SYS_kill SYS_landlock_add_rule SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lchown SYS_lgetxattr
        SYS_link SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lookup_dcookie SYS_lremovexattr SYS_lseek
        SYS_lsetxattr SYS_lstat SYS_madvise SYS_mbind SYS_membarrier SYS_memfd_create SYS_memfd_secret SYS_mincore
        SYS_mkdir SYS_mkdirat SYS_mknod SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_modify_ldt SYS_mount
        SYS_mount_setattr SYS_move_mount SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive
        SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync
        SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat SYS_open
        SYS_open_by_handle_at SYS_open_tree SYS_openat SYS_openat2 SYS_pause SYS_perf_event_open SYS_personality
        SYS_pidfd_getfd SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe SYS_pipe2 SYS_pkey_alloc SYS_pkey_free
        SYS_pkey_mprotect SYS_poll SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64
        SYS_process_madvise SYS_process_mrelease SYS_process_vm_readv SYS_process_vm_writev SYS_pselect6 SYS_ptrace
        SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_quotactl SYS_quotactl_fd SYS_read SYS_readahead SYS_readlink
        SYS_readlinkat SYS_readv SYS_reboot SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr
        SYS_rename SYS_renameat SYS_renameat2 SYS_restart_syscall SYS_rmdir SYS_rseq SYS_rt_sigaction SYS_rt_sigpending
        SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend SYS_rt_sigtimedwait
        SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max SYS_sched_get_priority_min SYS_sched_getaffinity
        SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity
        SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_select SYS_semctl
        SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
        SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_thread_area SYS_set_tid_address SYS_setdomainname
        SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname SYS_setitimer SYS_setns SYS_setpgid
        SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid SYS_setrlimit SYS_setsid SYS_setsockopt
        SYS_settimeofday SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack
        SYS_signalfd SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice SYS_stat SYS_statfs SYS_statx SYS_symlink
        SYS_symlinkat SYS_sync SYS_sync_file_range SYS_syncfs SYS_sysinfo SYS_syslog SYS_tee SYS_tgkill SYS_time
        SYS_timer_create SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime SYS_timerfd_create
        SYS_timerfd_gettime SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_umask SYS_umount2 SYS_uname
        SYS_unlink SYS_unlinkat SYS_unshare SYS_utime SYS_utimensat SYS_utimes SYS_vfork SYS_vhangup SYS_vmsplice
        SYS_wait4 SYS_waitid SYS_write SYS_writev
    },
    kernel: &[
        ("io_pgetevents", 333),
        ("uretprobe", 335),
        ("cachestat", 451),
        ("map_shadow_stack", 453),
        ("futex_wake", 454),
        ("futex_wait", 455),
        ("futex_requeue", 456),
        ("statmount", 457),
        ("listmount", 458),
        ("lsm_get_self_attr", 459),
        ("lsm_set_self_attr", 460),
        ("lsm_list_modules", 461),
        ("setxattrat", 463),
        ("getxattrat", 464),
        ("listxattrat", 465),
        ("removexattrat", 466),
    ],
});

#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
const NATIVE: Option<&Arch> = Some(&Arch {
    name: "aarch64",
    audit: 0xc000_00b7, // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    x32: false,
    libc: numbers! {
        SYS_accept SYS_accept4 SYS_acct SYS_adjtimex SYS_bind SYS_bpf SYS_brk SYS_capget SYS_capset SYS_chdir SYS_chroot
        SYS_clock_adjtime SYS_clock_getres SYS_clock_gettime SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3
        SYS_close SYS_close_range SYS_connect SYS_copy_file_range SYS_delete_module SYS_dup SYS_dup3 SYS_epoll_create1
        SYS_epoll_ctl SYS_epoll_pwait SYS_epoll_pwait2 SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group
        SYS_faccessat SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_init SYS_fanotify_mark SYS_fchdir
        SYS_fchmod SYS_fchmodat SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_finit_module
        SYS_flistxattr SYS_flock SYS_fremovexattr SYS_fsconfig SYS_fsetxattr SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat
        SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv SYS_get_mempolicy SYS_get_robust_list SYS_getcpu
        SYS_getcwd SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer SYS_getpeername
        SYS_getpgid SYS_getpid SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrusage
        SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid SYS_getxattr SYS_init_module
        SYS_inotify_add_watch SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents
        SYS_io_setup SYS_io_submit SYS_ioctl SYS_ioprio_get SYS_ioprio_set SYS_kcmp SYS_kill SYS_landlock_add_rule
        SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lgetxattr SYS_linkat SYS_listen SYS_listxattr
        SYS_llistxattr SYS_lookup_dcookie SYS_lremovexattr SYS_lseek SYS_lsetxattr SYS_madvise SYS_mbind SYS_membarrier
        SYS_memfd_create SYS_memfd_secret SYS_mincore SYS_mkdirat SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap
        SYS_mount SYS_mount_setattr SYS_move_mount SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open
        SYS_mq_timedreceive SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv
        SYS_msgsnd SYS_msync SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat
        SYS_open_by_handle_at SYS_open_tree SYS_openat SYS_openat2 SYS_perf_event_open SYS_personality SYS_pidfd_getfd
        SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe2 SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_ppoll
        SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64 SYS_process_madvise SYS_process_mrelease
        SYS_process_vm_readv SYS_process_vm_writev SYS_pselect6 SYS_ptrace SYS_pwrite64 SYS_pwritev SYS_pwritev2
        SYS_quotactl SYS_quotactl_fd SYS_read SYS_readahead SYS_readlinkat SYS_readv SYS_reboot SYS_recvfrom
        SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_renameat2 SYS_restart_syscall SYS_rseq
        SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend
        SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max SYS_sched_get_priority_min
        SYS_sched_getaffinity SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler SYS_sched_rr_get_interval
        SYS_sched_setaffinity SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp
        SYS_semctl SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto
        SYS_set_mempolicy SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_tid_address SYS_setdomainname
        SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname SYS_setitimer SYS_setns SYS_setpgid
        SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid SYS_setsid SYS_setsockopt
        SYS_settimeofday SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack
        SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice SYS_statfs SYS_statx SYS_symlinkat SYS_sync SYS_syncfs
        SYS_sysinfo SYS_syslog SYS_tee SYS_tgkill SYS_timer_create SYS_timer_delete SYS_timer_getoverrun
        SYS_timer_gettime SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime SYS_timerfd_settime SYS_times
        SYS_tkill SYS_truncate SYS_umask SYS_umount2 SYS_uname SYS_unlinkat SYS_unshare SYS_utimensat SYS_vhangup
        SYS_vmsplice SYS_wait4 SYS_waitid SYS_write SYS_writev
    },
    kernel: &[
        ("renameat", 38),
        ("sync_file_range", 84),
        ("getrlimit", 163),
        ("setrlimit", 164),
        ("io_pgetevents", 292),
        ("cachestat", 451),
        ("fchmodat2", 452),
        ("map_shadow_stack", 453),
        ("futex_wake", 454),
        ("futex_wait", 455),
        ("futex_requeue", 456),
        ("statmount", 457),
        ("listmount", 458),
        ("lsm_get_self_attr", 459),
        ("lsm_set_self_attr", 460),
        ("lsm_list_modules", 461),
        ("setxattrat", 463),
        ("getxattrat", 464),
        ("listxattrat", 465),
        ("removexattrat", 466),
    ],
});

/// Other architectures get no filter: [`Filter::install`] refuses rather than run a container unfiltered.
#[cfg(not(any(
    all(target_arch = "x86_64", target_pointer_width = "64"),
    all(target_arch = "aarch64", target_endian = "little")
)))]
const NATIVE: Option<&Arch> = None;

/// The running kernel's (major, minor), or (0, 0) if uname fails, which leaves version-gated rules off.
fn kernel_version() -> (u32, u32) {
    // SAFETY: utsname is arrays of c_char, for which all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid utsname for uname to fill; it keeps no pointer to it.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (0, 0);
    }
    // c_char is i8 on x86_64 and u8 on aarch64; to_ne_bytes reads either as a byte.
    let release: String =
        uts.release.iter().map(|c| c.to_ne_bytes()[0]).take_while(|&b| b != 0).map(char::from).collect();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|part| part.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Each syscall number's verdict on `arch` for a container holding `caps`; numbers absent are denied.
fn resolve(arch: &Arch, caps: Caps, kernel: (u32, u32)) -> BTreeMap<u32, Verdict> {
    let holds = |cap: &str| number(cap).is_some_and(|n| caps.contains(n));
    let mut table = BTreeMap::new();
    for rule in PROFILE {
        let applies = match rule.when {
            When::Always => true,
            When::Cap(cap) => holds(cap),
            When::NoCap(cap) => !holds(cap),
            When::Arch(name) => name == arch.name,
            When::Kernel(major, minor) => kernel >= (major, minor),
        };
        if !applies {
            continue;
        }
        for nr in rule.names.split_whitespace().filter_map(|name| arch.number(name)) {
            let verdict = table.entry(nr).or_insert(rule.verdict);
            // A plain allow is wider than any conditional rule for the same syscall (ptrace: kernel 4.8 and
            // SYS_PTRACE; syslog: SYS_ADMIN and SYSLOG).
            if rule.verdict == Verdict::Allow {
                *verdict = Verdict::Allow;
            }
        }
    }
    table
}

/// One classic-BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const _: () = assert!(std::mem::size_of::<Insn>() == std::mem::size_of::<libc::sock_filter>());

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const NR: u32 = offset_of!(libc::seccomp_data, nr) as u32;
const ARCH: u32 = offset_of!(libc::seccomp_data, arch) as u32;
/// The low 32 bits of argument 0.
const ARG0_LOW: u32 = offset_of!(libc::seccomp_data, args) as u32 + if cfg!(target_endian = "big") { 4 } else { 0 };
/// Bit 30 of the syscall number marks the x32 ABI on x86_64 (`__X32_SYSCALL_BIT`).
const X32_BIT: u32 = 0x4000_0000;

const fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// Returns: fail the syscall with `errno`.
const fn ret_errno(errno: u32) -> Insn {
    stmt(RET, libc::SECCOMP_RET_ERRNO | errno)
}

const RET_ALLOW: Insn = stmt(RET, libc::SECCOMP_RET_ALLOW);
const RET_DENY: Insn = ret_errno(libc::EPERM as u32);
const RET_KILL: Insn = stmt(RET, libc::SECCOMP_RET_KILL_PROCESS);

/// The whole program: check the ABI, answer ENOSYS above `top`, then binary-search the verdicts of 0..=top.
fn compile(arch: &Arch, table: &BTreeMap<u32, Verdict>, top: u32) -> Vec<Insn> {
    let mut above: Vec<Insn> = Vec::new();
    if arch.x32 {
        // Numbers in [X32_BIT, 2 * X32_BIT) are x32 calls; larger ones (negative) are no syscall at all.
        above.extend([jump(JGE, 2 * X32_BIT, 2, 0), jump(JGE, X32_BIT, 0, 1), RET_KILL]);
    }
    above.push(ret_errno(libc::ENOSYS as u32));
    let mut program = vec![
        stmt(LD_ABS, ARCH),
        jump(JEQ, arch.audit, 1, 0),
        RET_KILL,
        stmt(LD_ABS, NR),
        jump(JGT, top, 0, above.len() as u8),
    ];
    program.extend(above);
    program.extend(search(&ranges(table, top)));
    program
}

/// 0..=top cut into runs of one verdict: (first number, verdict), in order.
fn ranges(table: &BTreeMap<u32, Verdict>, top: u32) -> Vec<(u32, Verdict)> {
    let mut runs: Vec<(u32, Verdict)> = Vec::new();
    for nr in 0..=top {
        let verdict = table.get(&nr).copied().unwrap_or(DENY);
        if runs.last().map(|&(_, last)| last) != Some(verdict) {
            runs.push((nr, verdict));
        }
    }
    runs
}

/// Code that finds the run holding the syscall number (in the accumulator) by halving, then applies its verdict.
fn search(runs: &[(u32, Verdict)]) -> Vec<Insn> {
    if let [(_, verdict)] = runs {
        return apply(*verdict);
    }
    let mid = runs.len() / 2;
    let (low, high) = (search(&runs[..mid]), search(&runs[mid..]));
    let mut code = Vec::with_capacity(low.len() + high.len() + 2);
    match u8::try_from(low.len()) {
        Ok(skip) => code.push(jump(JGE, runs[mid].0, skip, 0)),
        // Conditional jumps reach 255 instructions; a longer one goes through an unconditional jump.
        Err(_) => code.extend([jump(JGE, runs[mid].0, 0, 1), stmt(JA, low.len() as u32)]),
    }
    code.extend(low);
    code.extend(high);
    code
}

/// Code that answers a syscall with `verdict`.
fn apply(verdict: Verdict) -> Vec<Insn> {
    match verdict {
        Verdict::Allow => vec![RET_ALLOW],
        Verdict::Errno(errno) => vec![ret_errno(errno)],
        Verdict::ArgIn(values) => match_arg(values, RET_ALLOW, RET_DENY),
        Verdict::ArgNotIn(values) => match_arg(values, RET_DENY, RET_ALLOW),
        Verdict::ArgNoBits(mask) => vec![stmt(LD_ABS, ARG0_LOW), jump(JSET, mask, 1, 0), RET_ALLOW, RET_DENY],
    }
}

/// Code that returns `hit` if argument 0 (low 32 bits) is one of `values`, else `miss`.
fn match_arg(values: &[u32], hit: Insn, miss: Insn) -> Vec<Insn> {
    let mut code = vec![stmt(LD_ABS, ARG0_LOW)];
    code.extend(values.iter().enumerate().map(|(i, &v)| jump(JEQ, v, (values.len() - i) as u8, 0)));
    code.extend([miss, hit]);
    code
}

/// A compiled seccomp program (classic BPF), built before fork and installed by the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    program: Vec<Insn>,
}

impl Filter {
    /// docker's default profile for the running architecture and a container holding `caps`: the syscalls
    /// docker allows, those its capability rules add for `caps` (CAP_SYS_ADMIN: mount, unshare, setns, clone with
    /// namespace flags...; CAP_SYS_PTRACE: ptrace, process_vm_*...), its argument rules, EPERM for the rest.
    ///
    /// On an architecture other than x86_64 and aarch64 the filter is empty and [`Filter::install`] refuses it.
    pub fn docker_default(caps: Caps) -> Filter {
        let program = match NATIVE {
            Some(arch) => compile(arch, &resolve(arch, caps, kernel_version()), arch.top()),
            None => Vec::new(),
        };
        Filter { program }
    }

    /// The number of instructions; the kernel takes at most 4096 (BPF_MAXINSNS).
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the filter is empty, as on an architecture metac has no syscall table for.
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread (and all it will exec or fork); it cannot be removed.
    ///
    /// Needs no_new_privs set first (see [`no_new_privs`]) or CAP_SYS_ADMIN. Does not allocate unless it fails.
    pub fn install(&self) -> io::Result<()> {
        if self.program.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no seccomp profile for this architecture (metac has x86_64 and aarch64)",
            ));
        }
        let len = match u16::try_from(self.program.len()) {
            Ok(len) if i32::from(len) <= libc::BPF_MAXINSNS => len,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "seccomp filter over 4096 instructions")),
        };
        // Insn is #[repr(C)] with sock_filter's fields in its order and types, so the cast keeps the layout.
        let prog = libc::sock_fprog { len, filter: self.program.as_ptr() as *mut libc::sock_filter };
        // SAFETY: prog points at `len` valid instructions that outlive the call; the kernel copies the program
        // and never writes through the pointer.
        let done = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog)
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, pipe2, ForkResult, Pid};
    use proptest::prelude::*;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn native() -> &'static Arch {
        NATIVE.expect("metac's tests run on x86_64 or aarch64")
    }

    #[test]
    fn docker_default_is_dockers_list() {
        let caps = Caps::docker_default();
        let want = "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID CAP_SETPCAP \
                    CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SYS_CHROOT CAP_MKNOD CAP_AUDIT_WRITE CAP_SETFCAP";
        assert_eq!(caps.names(), want.split_whitespace().collect::<Vec<_>>());
        // The CapEff every docker container shows.
        assert_eq!(caps.bits(), 0xa804_25fb);
        assert_eq!(serde_json::to_string(&caps).unwrap(), "2818844155");
    }

    #[test]
    fn names_parse_in_any_case_with_or_without_prefix() {
        for name in ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "cap_Net_Admin"] {
            assert_eq!(Caps::empty().with(&strings(&[name]), &[]).unwrap().names(), ["CAP_NET_ADMIN"], "{name}");
        }
    }

    #[test]
    fn unknown_names_are_refused_naming_them() {
        let err = Caps::docker_default().with(&strings(&["NET_ADMIN", "NET_ADMINN"]), &[]).unwrap_err();
        assert_eq!(err, Error::Unknown { name: "NET_ADMINN".into(), flag: "--cap-add" });
        let message = err.to_string();
        for part in ["\"NET_ADMINN\"", "--cap-add", "\"NET_ADMIN\"", "\"CAP_NET_ADMIN\"", "ALL"] {
            assert!(message.contains(part), "{message:?} lacks {part}");
        }
        for bad in ["CAP_ALL", "", "CAP_", " CHOWN", "CHOWN,KILL"] {
            let err = Caps::docker_default().with(&[], &strings(&[bad])).unwrap_err();
            assert_eq!(err, Error::Unknown { name: bad.into(), flag: "--cap-drop" });
        }
        let err = parse_list(&strings(&["BPF"]), "--cap-add", 38).unwrap_err();
        assert_eq!(err, Error::NewerThanKernel { name: "BPF".into(), flag: "--cap-add", last: 38 });
    }

    #[test]
    fn add_and_drop_work_as_docker_with_drop_winning_contradictions() {
        let default = Caps::docker_default();
        let all = Caps::all();
        let with = |add: &[&str], drop: &[&str]| default.with(&strings(add), &strings(drop)).unwrap();
        let sys_admin = 1 << 21;
        assert_eq!(with(&[], &[]), default);
        assert_eq!(with(&["all"], &[]), all);
        assert_eq!(with(&[], &["ALL"]), Caps::empty());
        assert_eq!(with(&["NET_BIND_SERVICE"], &["ALL"]).names(), ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(with(&["ALL"], &["SYS_ADMIN"]).bits(), all.bits() & !sys_admin);
        assert_eq!(with(&["SYS_ADMIN"], &["CHOWN"]).bits(), (default.bits() | sys_admin) & !1);
        // Contradictions, where docker would keep the capability.
        assert_eq!(with(&["SYS_ADMIN"], &["SYS_ADMIN"]), default);
        assert_eq!(with(&["CHOWN"], &["ALL", "CHOWN"]), Caps::empty());
        assert_eq!(with(&["ALL"], &["ALL"]), Caps::empty());
    }

    #[test]
    fn all_is_every_capability_the_kernel_knows() {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
        assert_eq!(Caps::all().bits(), (1 << (last + 1)) - 1);
        assert_eq!(Caps::all().names().len(), last as usize + 1);
    }

    #[test]
    fn profile_names_only_real_capabilities_and_unique_numbers() {
        for rule in PROFILE {
            if let When::Cap(cap) | When::NoCap(cap) = rule.when {
                assert!(number(cap).is_some(), "{cap}");
            }
        }
        let arch = native();
        let mut seen = BTreeMap::new();
        for (name, nr) in arch.libc.iter().map(|&(sys, nr)| (&sys[4..], nr)).chain(arch.kernel.iter().copied()) {
            assert_eq!(seen.insert(nr, name), None, "{name} has the number of another syscall");
        }
    }

    /// The profile's syscalls that x86_64 lacks: 32-bit variants and other architectures' calls.
    #[cfg(target_arch = "x86_64")]
    const SKIPPED_ON_X86_64: &str = "chown32 clock_adjtime64 clock_getres_time64 clock_gettime64 \
        clock_nanosleep_time64 fadvise64_64 fchown32 fcntl64 fstat64 fstatat64 fstatfs64 ftruncate64 futex_time64 \
        getegid32 geteuid32 getgid32 getgroups32 getresgid32 getresuid32 getuid32 io_pgetevents_time64 ipc \
        lchown32 _llseek lstat64 mmap2 mq_timedreceive_time64 mq_timedsend_time64 _newselect ppoll_time64 \
        pselect6_time64 recv recvmmsg_time64 riscv_hwprobe rt_sigtimedwait_time64 sched_rr_get_interval_time64 \
        semtimedop_time64 send sendfile64 setfsgid32 setfsuid32 setgid32 setgroups32 setregid32 setresgid32 \
        setresuid32 setreuid32 setuid32 sigprocmask sigreturn socketcall stat64 statfs64 timer_gettime64 \
        timer_settime64 timerfd_gettime64 timerfd_settime64 truncate64 ugetrlimit utimensat_time64 waitpid \
        arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls umount stime \
        clock_settime64";

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_skips_only_syscalls_it_lacks() {
        let arch = native();
        let skipped: Vec<&str> = PROFILE
            .iter()
            .flat_map(|rule| rule.names.split_whitespace())
            .filter(|name| arch.number(name).is_none())
            .collect();
        assert_eq!(skipped, SKIPPED_ON_X86_64.split_whitespace().collect::<Vec<_>>());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_allows_dockers_count() {
        let arch = native();
        let allowed = |caps: Caps| {
            let table = resolve(arch, caps, (6, 0));
            table.values().filter(|v| !matches!(v, Verdict::Errno(_))).count()
        };
        // 300 of the main list, ptrace and process_vm_{readv,writev} (Linux 4.8), socket, personality, arch_prctl,
        // modify_ldt, clone without namespace flags and chroot (SYS_CHROOT); the other 70 are SKIPPED_ON_X86_64.
        assert_eq!(allowed(Caps::docker_default()), 309);
        assert_eq!(allowed(Caps::all()), 351);
        assert_eq!(arch.top(), 466);
    }

    /// Runs a seccomp program as the kernel does, for a syscall given as (arch, nr, argument 0).
    fn run(program: &[Insn], arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; std::mem::size_of::<libc::seccomp_data>()];
        data[offset_of!(libc::seccomp_data, nr)..][..4].copy_from_slice(&nr.to_ne_bytes());
        data[offset_of!(libc::seccomp_data, arch)..][..4].copy_from_slice(&arch.to_ne_bytes());
        data[offset_of!(libc::seccomp_data, args)..][..8].copy_from_slice(&arg0.to_ne_bytes());
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let insn = program[pc];
            pc += 1;
            let taken = match insn.code {
                LD_ABS => {
                    acc = u32::from_ne_bytes(data[insn.k as usize..][..4].try_into().unwrap());
                    continue;
                }
                JA => {
                    pc += insn.k as usize;
                    continue;
                }
                RET => return insn.k,
                JEQ => acc == insn.k,
                JGT => acc > insn.k,
                JGE => acc >= insn.k,
                JSET => acc & insn.k != 0,
                code => panic!("opcode {code:#x} at {}", pc - 1),
            };
            pc += usize::from(if taken { insn.jt } else { insn.jf });
        }
    }

    /// What the profile answers, read straight off the table, to check the compiled search against.
    fn model(arch: &Arch, table: &BTreeMap<u32, Verdict>, top: u32, audit: u32, nr: u32, arg0: u64) -> u32 {
        let (allow, errno) = (libc::SECCOMP_RET_ALLOW, |e: i32| libc::SECCOMP_RET_ERRNO | e as u32);
        let deny = errno(libc::EPERM);
        let low = arg0 as u32;
        if audit != arch.audit || (arch.x32 && (X32_BIT..2 * X32_BIT).contains(&nr)) {
            return libc::SECCOMP_RET_KILL_PROCESS;
        }
        if nr > top {
            return errno(libc::ENOSYS);
        }
        match table.get(&nr) {
            None => deny,
            Some(Verdict::Allow) => allow,
            Some(Verdict::Errno(e)) => errno(*e as i32),
            Some(Verdict::ArgIn(values)) => [deny, allow][values.contains(&low) as usize],
            Some(Verdict::ArgNotIn(values)) => [allow, deny][values.contains(&low) as usize],
            Some(Verdict::ArgNoBits(mask)) => [allow, deny][(low & mask != 0) as usize],
        }
    }

    const ARGS: [u64; 10] = [0, 2, 8, 38, 39, 40, 0x20000 | 17, 0xffff_ffff, 1 << 32 | 40, u64::MAX];

    #[test]
    fn compiled_filter_gives_the_profiles_answer_for_every_syscall() {
        let arch = native();
        let top = arch.top();
        let sys_admin = Caps::docker_default().with(&strings(&["SYS_ADMIN"]), &[]).unwrap();
        for caps in [Caps::empty(), Caps::docker_default(), sys_admin, Caps::all()] {
            let table = resolve(arch, caps, (6, 0));
            let program = compile(arch, &table, top);
            let numbers = (0..top + 8).chain([X32_BIT, X32_BIT + 39, 2 * X32_BIT - 1, 2 * X32_BIT, u32::MAX]);
            for nr in numbers {
                for arg0 in ARGS {
                    for audit in [arch.audit, 0x4000_0003 /* i386 */, 0] {
                        let want = model(arch, &table, top, audit, nr, arg0);
                        assert_eq!(run(&program, audit, nr, arg0), want, "{caps:?} nr {nr} arg0 {arg0:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn docker_default_answers_known_calls() {
        let arch = native();
        let (allow, eperm, enosys) =
            (libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_ERRNO | 1, libc::SECCOMP_RET_ERRNO | 38);
        let answer = |caps: Caps, nr: libc::c_long, arg0: i64| {
            let table = resolve(arch, caps, (6, 0));
            run(&compile(arch, &table, arch.top()), arch.audit, nr as u32, arg0 as u64)
        };
        let default = Caps::docker_default();
        let admin = default.with(&strings(&["SYS_ADMIN"]), &[]).unwrap();
        let new_ns = i64::from(libc::CLONE_NEWNS | libc::SIGCHLD);
        assert_eq!(answer(default, libc::SYS_getpid, 0), allow);
        assert_eq!(answer(default, libc::SYS_keyctl, 0), eperm);
        assert_eq!(answer(default, libc::SYS_clone, libc::SIGCHLD.into()), allow);
        assert_eq!(answer(default, libc::SYS_clone, new_ns), eperm);
        assert_eq!(answer(admin, libc::SYS_clone, new_ns), allow);
        assert_eq!(answer(default, libc::SYS_clone3, 0), enosys);
        assert_eq!(answer(admin, libc::SYS_clone3, 0), allow);
        assert_eq!(answer(default, libc::SYS_mount, 0), eperm);
        assert_eq!(answer(admin, libc::SYS_mount, 0), allow);
        assert_eq!(answer(default, libc::SYS_socket, libc::AF_INET.into()), allow);
        assert_eq!(answer(default, libc::SYS_socket, libc::AF_VSOCK.into()), eperm);
        assert_eq!(answer(default, libc::SYS_socket, 1 << 32 | i64::from(libc::AF_VSOCK)), eperm);
        assert_eq!(answer(default, libc::SYS_personality, 0x8), allow);
        assert_eq!(answer(default, libc::SYS_personality, 0x40000), eperm);
        assert_eq!(answer(default, libc::SYS_ptrace, 0), allow);
        assert_eq!(answer(default, libc::SYS_chroot, 0), allow);
        assert_eq!(answer(Caps::empty(), libc::SYS_chroot, 0), eperm);
        assert_eq!(answer(default, 468, 0), enosys);
    }

    proptest! {
        #[test]
        fn any_call_gets_the_profiles_answer(
            nr in prop_oneof![0u32..600, any::<u32>()],
            foreign in any::<bool>(),
            audit in any::<u32>(),
            arg0 in any::<u64>(),
            bits in any::<u64>(),
        ) {
            let arch = native();
            let audit = if foreign { audit } else { arch.audit };
            let table = resolve(arch, Caps(bits), (6, 0));
            let program = compile(arch, &table, arch.top());
            prop_assert_eq!(run(&program, audit, nr, arg0), model(arch, &table, arch.top(), audit, nr, arg0));
        }
    }

    #[test]
    fn long_searches_jump_right() {
        let arch = Arch { name: "test", audit: 7, x32: false, libc: &[], kernel: &[] };
        // Every other syscall allowed: half as many runs as syscalls, so these tops give lower halves of the
        // search on both sides of the 255-instruction reach of a conditional jump.
        for top in (380..1200).step_by(9) {
            let table: BTreeMap<u32, Verdict> = (0..top).step_by(2).map(|nr| (nr, Verdict::Allow)).collect();
            let program = compile(&arch, &table, top);
            for nr in 0..top + 2 {
                assert_eq!(run(&program, 7, nr, 0), model(&arch, &table, top, 7, nr, 0), "top {top} nr {nr}");
            }
        }
    }

    #[test]
    fn tiny_filter_encoding() {
        let arch = Arch { name: "test", audit: 0xc000_003e, x32: true, libc: &[], kernel: &[] };
        let table = BTreeMap::from([(0, Verdict::Allow), (1, Verdict::Allow), (3, Verdict::ArgNotIn(&[38, 40]))]);
        let program: Vec<(u16, u8, u8, u32)> =
            compile(&arch, &table, 3).iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
        #[rustfmt::skip]
        let want = [
            (0x20, 0, 0, 4),            // ld arch
            (0x15, 1, 0, 0xc000_003e),  // jeq AUDIT_ARCH_X86_64
            (0x06, 0, 0, 0x8000_0000),  // ret KILL_PROCESS
            (0x20, 0, 0, 0),            // ld nr
            (0x25, 0, 4, 3),            // jgt top
            (0x35, 2, 0, 0x8000_0000),  //   jge 2^31: ENOSYS
            (0x35, 0, 1, 0x4000_0000),  //   jge x32 bit
            (0x06, 0, 0, 0x8000_0000),  //   ret KILL_PROCESS
            (0x06, 0, 0, 0x0005_0026),  //   ret ERRNO(ENOSYS)
            (0x35, 1, 0, 2),            // jge 2
            (0x06, 0, 0, 0x7fff_0000),  //   ret ALLOW (0, 1)
            (0x35, 1, 0, 3),            // jge 3
            (0x06, 0, 0, 0x0005_0001),  //   ret ERRNO(EPERM) (2)
            (0x20, 0, 0, 16),           //   ld args[0] low
            (0x15, 2, 0, 38),           //   jeq AF_ALG
            (0x15, 1, 0, 40),           //   jeq AF_VSOCK
            (0x06, 0, 0, 0x7fff_0000),  //   ret ALLOW
            (0x06, 0, 0, 0x0005_0001),  //   ret ERRNO(EPERM)
        ];
        assert_eq!(program, want);
    }

    #[test]
    fn docker_default_filters_fit_the_kernel() {
        for caps in [Caps::empty(), Caps::docker_default(), Caps::all()] {
            let filter = Filter::docker_default(caps);
            assert!(!filter.is_empty());
            // A linear filter would need one compare per allowed syscall (over 340).
            assert!(filter.len() <= 300, "{caps:?}: {} instructions", filter.len());
        }
    }

    #[test]
    fn install_refuses_an_empty_filter() {
        let err = Filter { program: Vec::new() }.install().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    /// Forks; the child runs `work`, then _exits 0, or 1 after writing the error to a pipe. How the child
    /// ended and what it wrote.
    fn in_child(work: impl FnOnce() -> Result<(), String>) -> (WaitStatus, String) {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).unwrap();
        // SAFETY: the child runs `work` (syscalls, and allocation, which glibc keeps usable after fork) and
        // _exits; it never returns into the test harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                drop(read);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                let code = match outcome.unwrap_or_else(|_| Err("panicked".into())) {
                    Ok(()) => 0,
                    Err(message) => {
                        let _ = nix::unistd::write(&write, message.as_bytes());
                        1
                    }
                };
                // SAFETY: ends the child without running the harness's exit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(write);
                (waitpid(child, None).unwrap(), read_all(read))
            }
        }
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    }

    fn assert_ok((status, message): (WaitStatus, String)) {
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "child ended {status:?}: {message}");
    }

    /// The value of `key` in /proc/PID/status text.
    fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
        status.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
    }

    fn expect_mask(status: &str, key: &str, want: u64) -> Result<(), String> {
        let got = field(status, key).and_then(|hex| u64::from_str_radix(hex, 16).ok());
        expect(key, got, Some(want))
    }

    fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: got {got:x?}, want {want:x?}"))
        }
    }

    fn own_status() -> Result<String, String> {
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))
    }

    #[test]
    fn drop_bounding_leaves_only_the_kept_set() {
        assert_ok(in_child(|| {
            let keep = Caps::docker_default();
            let before = field(&own_status()?, "CapBnd").and_then(|hex| u64::from_str_radix(hex, 16).ok());
            expect("bounding set wider than the kept one", before.map(|bits| bits & !keep.bits() != 0), Some(true))?;
            drop_bounding(keep).map_err(|e| format!("drop_bounding: {e}"))?;
            expect_mask(&own_status()?, "CapBnd", keep.bits())
        }));
    }

    #[test]
    fn set_caps_keeps_the_permitted_part_and_empties_inheritable_and_ambient() {
        assert_ok(in_child(|| {
            let keep = Caps::docker_default();
            // Start with an inheritable and an ambient capability, so that set_caps must clear them.
            let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
            let mut data = [CapData::default(); 2];
            // SAFETY: version-3 header and two data structs, as capget and capset take.
            unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
            data[0].inheritable = 1 << 10;
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
            // SAFETY: integers only.
            unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, 10, 0, 0) };
            expect_mask(&own_status()?, "CapAmb", 1 << 10)?;

            drop_bounding(keep).map_err(|e| format!("drop_bounding: {e}"))?;
            set_caps(keep).map_err(|e| format!("set_caps: {e}"))?;
            let status = own_status()?;
            for (key, want) in [("CapEff", keep.bits()), ("CapPrm", keep.bits()), ("CapInh", 0), ("CapAmb", 0)] {
                expect_mask(&status, key, want)?;
            }
            // What the process no longer holds cannot come back: set_caps narrows, it never fails.
            set_caps(Caps::all()).map_err(|e| format!("set_caps(all): {e}"))?;
            expect_mask(&own_status()?, "CapPrm", keep.bits())
        }));
    }

    /// Runs the container sequence (see the module doc) as `uid` in a child that execs `cat /proc/self/status`;
    /// returns what cat printed.
    fn container_status(uid: libc::uid_t, caps: Caps) -> String {
        fn fail(step: i32) -> ! {
            // SAFETY: ends the child without running the harness's exit handlers.
            unsafe { libc::_exit(10 + step) }
        }
        let filter = Filter::docker_default(caps);
        let (cat, file) = (CString::new("/bin/cat").unwrap(), CString::new("/proc/self/status").unwrap());
        let argv = [cat.as_ptr(), file.as_ptr(), std::ptr::null()];
        let (read, write) = pipe2(OFlag::O_CLOEXEC).unwrap();
        // SAFETY: the child makes syscalls only, then execs or _exits; it never returns into the harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: write is an open descriptor; dup2 makes it stdout, without CLOEXEC, for cat.
                if unsafe { libc::dup2(write.as_raw_fd(), 1) } != 1 {
                    fail(0);
                }
                if drop_bounding(caps).is_err() {
                    fail(1);
                }
                if uid != 0 {
                    // Like runc: keep the permitted set across setuid, so that set_caps decides.
                    // SAFETY: integer arguments and a null group list of length 0.
                    let changed = unsafe {
                        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0
                            && libc::setgroups(0, std::ptr::null()) == 0
                            && libc::setresgid(uid, uid, uid) == 0
                            && libc::setresuid(uid, uid, uid) == 0
                    };
                    if !changed {
                        fail(2);
                    }
                }
                if set_caps(caps).is_err() {
                    fail(3);
                }
                if no_new_privs().is_err() {
                    fail(4);
                }
                if filter.install().is_err() {
                    fail(5);
                }
                // SAFETY: cat and argv are NUL-terminated strings and a null-terminated array, alive here.
                unsafe { libc::execv(cat.as_ptr(), argv.as_ptr()) };
                fail(6)
            }
            ForkResult::Parent { child } => {
                drop(write);
                let output = read_all(read);
                let status = waitpid(child, None).unwrap();
                assert!(matches!(status, WaitStatus::Exited(_, 0)), "container child ended {status:?}: {output}");
                output
            }
        }
    }

    #[test]
    fn root_container_keeps_the_caps_across_exec() {
        let caps = Caps::docker_default();
        let status = container_status(0, caps);
        for (key, want) in [("CapEff", caps.bits()), ("CapPrm", caps.bits()), ("CapBnd", caps.bits()), ("CapAmb", 0)] {
            expect_mask(&status, key, want).unwrap();
        }
        assert_eq!(field(&status, "NoNewPrivs"), Some("1"));
        assert_eq!(field(&status, "Seccomp"), Some("2"));
    }

    #[test]
    fn non_root_container_has_no_caps_after_exec_as_in_docker() {
        let caps = Caps::docker_default();
        let status = container_status(65534, caps);
        assert_eq!(field(&status, "Uid"), Some("65534\t65534\t65534\t65534"));
        for (key, want) in [("CapEff", 0), ("CapPrm", 0), ("CapInh", 0), ("CapAmb", 0), ("CapBnd", caps.bits())] {
            expect_mask(&status, key, want).unwrap();
        }
        assert_eq!(field(&status, "Seccomp"), Some("2"));
    }

    /// A raw syscall: Ok(what it returned) or Err(errno).
    fn sys(nr: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> Result<libc::c_long, i32> {
        // SAFETY: the tests pass integers and null pointers only, which the kernel checks.
        let done = unsafe { libc::syscall(nr, a, b, c, 0, 0) };
        if done == -1 {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(done)
        }
    }

    /// clone(2) with these flags and no new stack, which works like fork; a child it makes exits at once.
    fn clone_raw(flags: libc::c_int) -> Result<libc::c_long, i32> {
        match sys(libc::SYS_clone, (flags | libc::SIGCHLD).into(), 0, 0) {
            // SAFETY: the new process ends at once, touching nothing.
            Ok(0) => unsafe { libc::_exit(0) },
            Ok(pid) => {
                waitpid(Pid::from_raw(pid as libc::pid_t), None).map_err(|e| e as i32)?;
                Ok(pid)
            }
            refused => refused,
        }
    }

    fn install_docker_default(caps: Caps) -> Result<(), String> {
        no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        Filter::docker_default(caps).install().map_err(|e| format!("install: {e}"))?;
        expect("Seccomp", field(&own_status()?, "Seccomp"), Some("2"))
    }

    /// Forks and execs /bin/true, which must exit 0.
    fn fork_exec_true() -> Result<(), String> {
        let path = CString::new("/bin/true").unwrap();
        let argv = [path.as_ptr(), std::ptr::null()];
        // SAFETY: the new process only execs or _exits.
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                // SAFETY: path and argv are a NUL-terminated string and a null-terminated array.
                unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
                // SAFETY: ends the process without exit handlers.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => {
                let status = waitpid(child, None).map_err(|e| format!("waitpid: {e}"))?;
                expect("fork and exec /bin/true", status, WaitStatus::Exited(child, 0))
            }
        }
    }

    // These tests keep every capability of root, so each refusal comes from the filter, not from missing caps.

    #[test]
    fn docker_default_filter_refuses_what_docker_refuses() {
        assert_ok(in_child(|| {
            install_docker_default(Caps::docker_default())?;
            let (eperm, enosys) = (Err(libc::EPERM), Err(libc::ENOSYS));
            expect("getpid", sys(libc::SYS_getpid, 0, 0, 0), Ok(std::process::id().into()))?;
            expect("keyctl", sys(libc::SYS_keyctl, 0, -3, 0), eperm)?;
            expect("add_key", sys(libc::SYS_add_key, 0, 0, 0), eperm)?;
            let user_mount = (libc::CLONE_NEWUSER | libc::CLONE_NEWNS).into();
            expect("unshare(NEWUSER|NEWNS)", sys(libc::SYS_unshare, user_mount, 0, 0), eperm)?;
            expect("clone(NEWNS)", clone_raw(libc::CLONE_NEWNS), eperm)?;
            expect("clone3", sys(libc::SYS_clone3, 0, 0, 0), enosys)?;
            expect("mount", sys(libc::SYS_mount, 0, 0, 0), eperm)?;
            let stream = libc::SOCK_STREAM.into();
            expect("socket(AF_VSOCK)", sys(libc::SYS_socket, libc::AF_VSOCK.into(), stream, 0), eperm)?;
            expect(
                "socket(AF_ALG)",
                sys(libc::SYS_socket, libc::AF_ALG.into(), libc::SOCK_SEQPACKET.into(), 0),
                eperm,
            )?;
            let udp = sys(libc::SYS_socket, libc::AF_INET.into(), libc::SOCK_DGRAM.into(), 0);
            expect("socket(AF_INET)", udp.is_ok(), true)?;
            expect("personality(query)", sys(libc::SYS_personality, 0xffff_ffff, 0, 0).is_ok(), true)?;
            expect("personality(ADDR_NO_RANDOMIZE)", sys(libc::SYS_personality, 0x0004_0000, 0, 0), eperm)?;
            // file_getattr (Linux 6.17) is newer than the profile: ENOSYS, so that libc falls back.
            expect("file_getattr", sys(468, -1, 0, 0), enosys)?;
            expect("plain clone", clone_raw(0).is_ok(), true)?;
            fork_exec_true()
        }));
    }

    #[test]
    fn sys_admin_opens_namespaces_mount_and_clone3() {
        assert_ok(in_child(|| {
            install_docker_default(Caps::docker_default().with(&strings(&["SYS_ADMIN"]), &[]).unwrap())?;
            expect("unshare(NEWNS)", sys(libc::SYS_unshare, libc::CLONE_NEWNS.into(), 0, 0), Ok(0))?;
            expect("clone(NEWNS)", clone_raw(libc::CLONE_NEWNS).is_ok(), true)?;
            expect("clone3(NULL)", sys(libc::SYS_clone3, 0, 0, 0), Err(libc::EINVAL))?;
            expect("mount(NULL)", sys(libc::SYS_mount, 0, 0, 0), Err(libc::EFAULT))?;
            expect("keyctl", sys(libc::SYS_keyctl, 0, -3, 0), Err(libc::EPERM))
        }));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_calls_kill_the_process() {
        let (status, message) = in_child(|| {
            install_docker_default(Caps::docker_default())?;
            // getpid with the x32 bit: without the ABI check this would only fail with EPERM.
            let _ = sys(libc::SYS_getpid | libc::c_long::from(X32_BIT), 0, 0, 0);
            Err("x32 getpid returned".into())
        });
        assert!(matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)), "{status:?}: {message}");
    }
}
