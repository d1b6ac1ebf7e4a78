//! Named network namespaces as `ip netns` keeps them (bind mounts under `/run/netns`): the harness's naming scheme,
//! finding the processes inside a namespace, deleting namespaces, and removing what crashed runs left behind.
//!
//! Every lab is named `mlab<pid-hex>-<n>`, from the pid of the test process that made it and a per-process counter;
//! its namespaces are `<lab>-sw` (the bridge) and `<lab>-h<i>` (host i), its files are in `$TMPDIR/<lab>`. A lab
//! whose pid is no longer alive is stale and is removed by the next [`crate::Lab::new`].

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::error::Result;
use crate::exec::checked_stdin;

/// Where `ip netns` keeps its names.
const NETNS_DIR: &str = "/run/netns";

/// Every lab name starts with this.
pub(crate) const PREFIX: &str = "mlab";

/// Marker file that keeps a lab directory from being removed as stale (written when METAC_LAB_KEEP=1).
pub(crate) const KEEP_MARKER: &str = "KEEP";

/// The creating pid encoded in a lab name or a name derived from it (`mlab<pid-hex>-<n>[-...]`).
pub(crate) fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (hex, rest) = rest.split_once('-')?;
    let counter = rest.split('-').next()?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Whether a process with this pid exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The names `ip netns list` would show.
pub(crate) fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()
}

/// Pids of the processes whose network namespace is one of `names` (what `ip netns pids` does, for many names in
/// one pass over `/proc`).
pub(crate) fn pids_in(names: &[String]) -> Vec<u32> {
    let inodes: HashSet<u64> =
        names.iter().filter_map(|n| std::fs::metadata(Path::new(NETNS_DIR).join(n)).ok()).map(|m| m.ino()).collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    proc_dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else { return false };
            let link = link.to_string_lossy();
            let ino = link.strip_prefix("net:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse().ok());
            ino.is_some_and(|i| inodes.contains(&i))
        })
        .collect()
}

/// SIGKILLs every process inside `names` and waits (bounded) until none is left.
pub(crate) fn kill_all_in(names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = pids_in(names);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes those of `names` that exist, in one `ip -force -batch` run.
pub(crate) fn delete(names: &[String]) -> Result<()> {
    let existing: HashSet<String> = list().into_iter().collect();
    let script: String = names.iter().filter(|n| existing.contains(*n)).map(|n| format!("netns del {n}\n")).collect();
    if script.is_empty() {
        return Ok(());
    }
    checked_stdin(Command::new("ip").args(["-force", "-batch", "-"]), &script, Duration::from_secs(60))?;
    Ok(())
}

/// Removes namespaces and directories of labs whose creating process is gone. Best effort: another test process may
/// be removing the same ones, so failures are reported on stderr and otherwise ignored.
pub(crate) fn clean_stale(tmp: &Path) {
    let me = std::process::id();
    let stale = |name: &str| creator_pid(name).is_some_and(|pid| pid != me && !pid_alive(pid));
    let names: Vec<String> = list().into_iter().filter(|n| stale(n)).collect();
    if !names.is_empty() {
        eprintln!("metac-tests: removing {} namespaces left by crashed runs: {}", names.len(), names.join(" "));
        kill_all_in(&names);
        if let Err(e) = delete(&names) {
            eprintln!("metac-tests: removing stale namespaces: {e}");
        }
    }
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    let dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| stale(n) && !n.contains('.')))
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.join(KEEP_MARKER).exists())
        .collect();
    for d in dirs {
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn creator_pid_parses_only_our_names() {
        assert_eq!(creator_pid("mlab1f-0-sw"), Some(0x1f));
        assert_eq!(creator_pid("mlab1f-12-h3"), Some(0x1f));
        assert_eq!(creator_pid("mlab1f-12"), Some(0x1f));
        assert_eq!(creator_pid("mlabzz-0-sw"), None);
        assert_eq!(creator_pid("mlab1f-x-sw"), None);
        assert_eq!(creator_pid("lab-sw"), None);
        assert_eq!(creator_pid("mlab1f"), None);
    }
}
