//! The OS glue of a VM's qemu process: starting it so that it dies with the node, handing it descriptors opened as
//! the caller, signalling it and learning when it ended, all through a pidfd (no pid reuse races, no polling).
//!
//! qemu gets `PR_SET_PDEATHSIG(SIGKILL)`: when the node dies, even by SIGKILL, the kernel kills its VMs, whose
//! drives' binds died with it anyway. The signal fires when the *thread* that forked the child ends, not only the
//! process, so every qemu is forked by one launcher thread that lives as long as the process; a runtime worker or a
//! blocking-pool thread could end (idle) and take the VMs it started with it. The child also checks, after setting
//! the signal, that the node has not died in between, and starts a session of its own (`setsid`), so a Ctrl-C meant
//! for a node running in a terminal does not reach its VMs.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

/// Spawn requests waiting for the launcher thread.
const QUEUE: usize = 16;

struct Job {
    program: PathBuf,
    args: Vec<OsString>,
    fds: Vec<OwnedFd>,
    first_fd: RawFd,
    reply: oneshot::Sender<io::Result<Child>>,
}

static LAUNCHER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

fn launcher() -> &'static mpsc::Sender<Job> {
    LAUNCHER.get_or_init(|| {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        // Lives as long as the process: the sender is in a static and never dropped.
        std::thread::Builder::new()
            .name("metac-vm-launcher".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let r = spawn_here(&job.program, &job.args, &job.fds, job.first_fd);
                    let _ = job.reply.send(r);
                }
            })
            .expect("the VM launcher thread starts");
        tx
    })
}

/// A started process: its handle (to reap it) and a pidfd (to signal it and learn that it ended).
pub struct Process {
    /// Its pid, for display.
    pub pid: u32,
    /// qemu's stdin, stdout and stderr.
    pub child: Child,
    pidfd: OwnedFd,
}

/// Starts `program args` with piped stdio and `fds` as descriptors `first_fd`, `first_fd + 1`, ... in the child.
pub async fn spawn(program: PathBuf, args: Vec<OsString>, fds: Vec<OwnedFd>, first_fd: RawFd) -> io::Result<Process> {
    let (reply, rx) = oneshot::channel();
    launcher()
        .send(Job { program, args, fds, first_fd, reply })
        .await
        .map_err(|_| io::Error::other("the VM launcher thread is gone"))?;
    let child = rx.await.map_err(|_| io::Error::other("the VM launcher thread is gone"))??;
    let pid = child.id();
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1. The child is not reaped yet
    // (only `wait` below reaps it), so the pid is still its own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    // SAFETY: the descriptor was just returned by pidfd_open and is owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    Ok(Process { pid, child, pidfd })
}

fn spawn_here(program: &PathBuf, args: &[OsString], fds: &[OwnedFd], first_fd: RawFd) -> io::Result<Child> {
    let node = std::process::id();
    let sources: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and calls only async-signal-safe functions
    // (prctl, getppid, setsid, fcntl, dup2, close) on plain integers; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The node died before the signal was armed: do not outlive it.
            if libc::getppid() as u32 != node {
                return Err(io::Error::other("the node ended while starting the VM"));
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Two steps, so that a source that already sits on a target number is not overwritten first: copy
            // every source above the targets, then onto its target (dup2 clears close-on-exec).
            let above = first_fd + sources.len() as RawFd + 64;
            let mut high = [0 as RawFd; 8];
            for (i, &fd) in sources.iter().enumerate().take(high.len()) {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if high[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in high.iter().enumerate().take(sources.len().min(8)) {
                if libc::dup2(fd, first_fd + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    if fds.len() > 8 {
        return Err(io::Error::other("at most 8 descriptors are handed to qemu"));
    }
    cmd.spawn()
}

impl Process {
    /// A handle that can signal the process later, from elsewhere.
    pub fn signaller(&self) -> io::Result<Signaller> {
        Ok(Signaller(self.pidfd.try_clone()?))
    }

    /// Waits until the process ends and reaps it.
    pub async fn wait(mut self) -> io::Result<ExitStatus> {
        // SAFETY: the pidfd is owned by `self`, which outlives the registration: `afd` is dropped first.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self.pidfd.as_raw_fd(), tokio::io::Interest::READABLE)
        }?;
        let _ = afd.readable().await?;
        drop(afd);
        self.child.wait()
    }
}

/// Signals one process through its pidfd.
pub struct Signaller(OwnedFd);

impl Signaller {
    /// Sends `signal`; an error once the process has been reaped.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        signal_pidfd(self.0.as_fd(), signal)
    }
}

fn signal_pidfd(fd: std::os::fd::BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a pidfd, a signal number, a null siginfo and no flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;

    /// The child gets the descriptors at the numbers asked, its own session and the death signal; it is signalled
    /// and reaped through its pidfd.
    #[tokio::test]
    async fn a_child_gets_its_descriptors_a_session_and_the_death_signal() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        let fds = vec![std::fs::File::open(&a).unwrap().into(), std::fs::File::open(&b).unwrap().into()];
        let script = "cat /dev/fd/3; cat /dev/fd/4; echo; cut -d' ' -f6 /proc/$$/stat";
        let p = spawn("/bin/sh".into(), vec!["-c".into(), script.into()], fds, 3).await.unwrap();
        let pid = p.pid;
        let mut p = p;
        let mut out = String::new();
        p.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(out.starts_with("firstsecond\n"), "{out}");
        // Field 6 of /proc/PID/stat is the session id: its own pid after setsid.
        assert!(out.trim_end().ends_with(&pid.to_string()), "{out}");
        assert!(p.wait().await.unwrap().success());

        let p = spawn("/bin/sleep".into(), vec!["30".into()], vec![], 3).await.unwrap();
        let s = p.signaller().unwrap();
        s.signal(libc::SIGKILL).unwrap();
        assert_eq!(p.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        assert!(s.signal(0).is_err(), "a reaped process cannot be signalled through its pidfd");
    }
}
