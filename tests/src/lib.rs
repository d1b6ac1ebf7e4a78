//! metac netns lab harness: builds hosts as network namespaces on a private bridge and runs real `metac node`
//! processes in them, for integration tests, benchmarks and simulations (DESIGN section 10).
//!
//! ```no_run
//! use metac_tests::{require_root, Lab};
//!
//! require_root();
//! let lab = Lab::new(3)?;
//! let nodes = lab.hosts().iter().map(|h| h.start_node(&[])).collect::<Result<Vec<_>, _>>()?;
//! lab.partition(&[1], &[2, 3])?;
//! let out = lab.host(2).metac(&["status", "--json"])?;
//! # drop((nodes, out));
//! # Ok::<(), metac_tests::Error>(())
//! ```
//!
//! Hosts are numbered from 1. Everything a lab made (processes, namespaces, files) goes away when it is dropped,
//! also when the test panics; a run that was killed outright is cleaned up by the next [`Lab::new`]. Every wait is
//! bounded. Needs root and `iproute2`; `ping` (`iputils-ping`) for [`Host::ping`], `nft` (`nftables`) for
//! [`Lab::partition`] and [`Lab::loss`], and `setpriv` (`util-linux`) for [`Host::metac_as`]. Set `METAC_LAB_KEEP=1` to keep the lab's files for a look afterwards.

#![warn(missing_docs)]

mod error;
mod exec;
pub mod flood;
mod host;
pub mod initramfs;
mod lab;
mod netns;
mod node;
pub mod procstat;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

pub use error::{Error, Result};
pub use exec::{checked, output, Proc, TERM_GRACE};
pub use host::{Host, RUN_TIMEOUT};
pub use initramfs::{GuestKernel, Initramfs};
pub use lab::{Lab, MAX_HOSTS, STATIC_NEIGH_ABOVE};
pub use node::{Node, LOG_LEVEL, READY_TIMEOUT, STOP_TIMEOUT};

/// The `metac` binary: `$METAC_BIN` if set, else `metac` in the cargo target directory of the running test
/// (`target/<profile>/metac`, found by walking up from the test executable out of `deps/`).
pub fn metac_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("METAC_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(Error::NoMetacBin { path: p }) };
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("find the test executable", e))?;
    let mut dirs = exe.ancestors().skip(1).take(3);
    let expected = exe.parent().map(|d| if d.ends_with("deps") { d.parent().unwrap_or(d) } else { d });
    let found = dirs.find_map(|d| Some(d.join("metac")).filter(|p| p.is_file()));
    found.ok_or_else(|| Error::NoMetacBin { path: expected.unwrap_or(&exe).join("metac") })
}

/// Panics unless the process runs as root. Lab tests never skip: under `CI=true` a privileged test must run and
/// fail loudly rather than pass by doing nothing.
pub fn require_root() {
    if !rustix::process::geteuid().is_root() {
        panic!(
            "metac-tests: this test builds network namespaces and needs root; run it as root \
             (e.g. `sudo -E cargo test -p metac-tests`). Lab tests do not skip."
        );
    }
}

/// Calls `check` every `poll` until it returns `Ok(true)`, and returns how long that took. Fails with
/// [`Error::NotReady`] once `timeout` has passed (after one last check), or with the first error `check` returns.
pub fn wait_until(timeout: Duration, poll: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(Error::NotReady {
                what: format!("condition not met within {timeout:?}"),
                log_tail: String::new(),
            });
        }
        thread::sleep(poll.min(timeout - elapsed));
    }
}

/// Writes `len` pseudo-random bytes (xorshift, seeded by `len`) to `path`: test and benchmark data that nothing on
/// the path can compress or shortcut, the same for the same length.
pub fn write_pseudo_random(path: &std::path::Path, len: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ len;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// A busybox root in `dir/busybox` (as the runc anchor builds it): `/bin/busybox` with a link for each applet, the
/// usual empty directories, and an `/etc/passwd` with root. For container and `run --vm` tests.
pub fn busybox_root(dir: &std::path::Path) -> PathBuf {
    let root = dir.join("busybox");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox (install-deps installs it)");
    let list = std::process::Command::new("/bin/busybox").arg("--list").output().unwrap();
    for a in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    root
}

/// Reads `master` (non-blocking) until its output contains `want`, at most `t`; returns all it read.
pub fn read_until(master: &std::os::fd::OwnedFd, want: &str, t: std::time::Duration) -> String {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + t;
    while std::time::Instant::now() < deadline && !String::from_utf8_lossy(&out).contains(want) {
        let mut buf = [0u8; 4096];
        match rustix::io::read(master, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `metac args...` on `h` with a new terminal as its stdio and controlling terminal; the child and the master.
pub fn metac_on_pty(h: &Host, args: &[&str]) -> (std::process::Child, std::os::fd::OwnedFd) {
    use std::os::unix::process::CommandExt;
    let master = rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY).unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new().read(true).write(true).open(name.to_str().unwrap()).unwrap();
    rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut cmd = h.cmd(crate::metac_bin().unwrap(), ["--socket", h.socket().to_str().unwrap()]);
    cmd.args(args);
    cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
    // SAFETY: between fork and exec only setsid and an ioctl, both async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            // SAFETY: fd 0 is the slave just set as stdin, open for the whole call.
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
    (cmd.spawn().unwrap(), master)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_reports_elapsed_and_times_out() {
        let mut n = 0;
        let took = wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            n += 1;
            Ok(n == 3)
        })
        .unwrap();
        assert!(took < Duration::from_secs(5));
        let t = Instant::now();
        let e = wait_until(Duration::from_millis(50), Duration::from_millis(10), || Ok(false));
        assert!(matches!(e, Err(Error::NotReady { .. })));
        assert!(t.elapsed() < Duration::from_secs(2));
        let e = wait_until(Duration::from_secs(5), Duration::from_millis(10), || Err(Error::InvalidArg("x".into())));
        assert!(matches!(e, Err(Error::InvalidArg(_))));
    }

    #[test]
    fn metac_bin_error_says_what_to_do() {
        if std::env::var_os("METAC_BIN").is_some() {
            return;
        }
        match metac_bin() {
            Ok(p) => assert!(p.ends_with("metac")),
            Err(e) => assert!(e.to_string().contains("cargo build --bin metac"), "{e}"),
        }
    }
}
