//! Filesystem figures: metac's fs kind and sshfs between the same two netns hosts, in one run (issue 11). Host 2
//! exports a directory twice, as a metac ref and through an sshd (as ../shared/lab/anchor-fs.sh does); host 1
//! mounts both (`metac fs bind`; `sshfs -o allow_other,default_permissions`) and runs the same workloads on each:
//! a cold sequential read of a large file, an untar of about 1700 small files, a find + cat of that tree on a fresh
//! mount, a warm re-read of the large file (against reading the local file), and `git status` of a 5000-file
//! checkout. Then the ratios, and what a bind adds to each node's resident memory.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metac_tests::{output, wait_until, Host, Lab, Node, Proc};

/// Options of `metac-bench fs`.
#[derive(clap::Args)]
pub struct Args {
    /// Size of the file read sequentially, MiB
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Files in the tree that is untarred, then read with find + cat
    #[arg(long, default_value_t = 1700)]
    files: usize,
    /// Files in the git checkout whose `git status` is timed
    #[arg(long, default_value_t = 5000)]
    git_files: usize,
    /// Runs of each workload on each filesystem, the two filesystems in turn (the median is printed: on a shared
    /// machine, runs of the same workload differ by 2x and more)
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds both nodes idle with the bind up before their resident memory is read again (past the node's
    /// minute-ly trim of freed memory)
    #[arg(long, default_value_t = 70)]
    idle_secs: u64,
}

/// Longest any one workload may run.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(900);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// Runs `sh -c script` in the mount namespace of `pid` (which holds that filesystem's mount) on host `h`.
fn sh_in(h: &Host, pid: u32, script: &str) -> Result<Output> {
    let o = output(&mut h.nsenter_cmd(pid, "sh", ["-c", script]), WORKLOAD_TIMEOUT)?;
    if !o.status.success() {
        bail!("`{script}` failed: {}", text(&o.stderr));
    }
    Ok(o)
}

/// Drops the page, dentry and inode caches of the whole machine: both hosts, and both sides of each mount.
fn drop_caches() -> Result<()> {
    let o = std::process::Command::new("sh").args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"]).output()?;
    if !o.status.success() {
        bail!("drop caches: {}", text(&o.stderr));
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn metac(h: &Host, args: &[&str]) -> Result<String> {
    let o = h.metac(args).with_context(|| format!("metac {args:?} on host {}", h.index()))?;
    Ok(text(&o.stdout))
}

/// A filesystem under test, mounted on host 1: how to (re)mount it fresh, and the process whose mount namespace
/// holds the mount.
trait Mount {
    fn name(&self) -> &'static str;
    /// The directory on host 1 where the export appears.
    fn path(&self) -> &Path;
    /// Unmounts (if mounted) and mounts again: nothing cached on the client side.
    fn remount(&mut self) -> Result<()>;
    /// The process whose mount namespace sees the mount.
    fn pid(&self) -> u32;
}

struct MetacMount<'a> {
    host: &'a Host,
    node_pid: u32,
    reference: String,
    path: PathBuf,
    up: bool,
}

impl MetacMount<'_> {
    fn unbind(&mut self) -> Result<()> {
        if self.up {
            metac(self.host, &["fs", "unbind", self.path.to_str().unwrap()])?;
            self.up = false;
        }
        Ok(())
    }
}

impl Mount for MetacMount<'_> {
    fn name(&self) -> &'static str {
        "metac"
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn remount(&mut self) -> Result<()> {
        self.unbind()?;
        metac(self.host, &["fs", "bind", self.path.to_str().unwrap(), &self.reference])?;
        self.up = true;
        wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            let o = self.host.metac(&["--json", "fs", "ls"])?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            Ok(v.as_array().is_some_and(|b| b.iter().any(|b| b["state"] == "up")))
        })
        .context("the metac bind did not come up")?;
        Ok(())
    }
    fn pid(&self) -> u32 {
        self.node_pid
    }
}

impl Drop for MetacMount<'_> {
    fn drop(&mut self) {
        let _ = self.unbind();
    }
}

/// sshfs in the foreground in host 1 (its own mount namespace, as `ip netns exec` gives it), to the sshd of host 2.
struct SshfsMount<'a> {
    host: &'a Host,
    remote: String,
    ssh_command: String,
    path: PathBuf,
    proc: Option<Proc>,
}

impl Mount for SshfsMount<'_> {
    fn name(&self) -> &'static str {
        "sshfs"
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn remount(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            p.term(); // sshfs unmounts on SIGTERM; its mount namespace goes with it in any case
            p.wait_timeout(Duration::from_secs(10));
        }
        let opts = format!("allow_other,default_permissions,ssh_command={}", self.ssh_command);
        let p = self.host.spawn("sshfs", ["-f", "-o", &opts, &self.remote, self.path.to_str().unwrap()])?;
        let pid = p.pid();
        let path = self.path.clone();
        self.proc = Some(p);
        wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            Ok(info.lines().any(|l| l.split(' ').nth(4) == path.to_str() && l.contains("fuse.sshfs")))
        })
        .context("sshfs did not mount (see sshfs-*.log in host 1's lab directory)")?;
        Ok(())
    }
    fn pid(&self) -> u32 {
        self.proc.as_ref().map(Proc::pid).unwrap_or(0)
    }
}

/// Starts sshd in host 2 on port 2222, root's key only, with its keys and config in `dir`. Returns the process and
/// the `ssh` command sshfs is to use from host 1.
fn sshd(h2: &Host, h1: &Host, dir: &Path) -> Result<(Proc, String)> {
    std::fs::create_dir_all("/run/sshd")?; // sshd's privilege separation directory
    let key = dir.join("id");
    for (f, file) in [("hostkey", dir.join("hostkey")), ("id", key.clone())] {
        let o = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&file)
            .output()
            .context("ssh-keygen (apt-get install openssh-client)")?;
        if !o.status.success() {
            bail!("ssh-keygen {f}: {}", text(&o.stderr));
        }
    }
    std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys"))?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress [{}]:2222\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            h2.addr(),
            dir.join("hostkey").display(),
            dir.join("authorized_keys").display()
        ),
    )?;
    let p = h2.spawn("/usr/sbin/sshd", ["-D", "-e", "-f", config.to_str().unwrap()])?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(!h2.run("ss", ["-ltnH", "sport = :2222"])?.stdout.is_empty())
    })
    .context("sshd does not listen on port 2222 in host 2")?;
    let ssh = format!(
        "ip netns exec {} ssh -i {} -p 2222 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o LogLevel=ERROR",
        h1.name(),
        key.display()
    );
    Ok((p, ssh))
}

/// A tar of the first `n` small files of /usr/include and Python's library (as anchor-fs.sh takes them).
fn tree_tar(n: usize, out: &Path) -> Result<usize> {
    let script = format!(
        "cd / && find usr/include usr/lib/python3* -type f -size -256k 2>/dev/null | LC_ALL=C sort | head -n {n} \
         > {list} && tar -cf {out} -T {list} && wc -l < {list}",
        list = out.with_extension("list").display(),
        out = out.display()
    );
    let o = std::process::Command::new("sh").args(["-c", &script]).output()?;
    if !o.status.success() {
        bail!("building the tree: {}", text(&o.stderr));
    }
    text(&o.stdout).parse().context("file count")
}

/// Seconds an untar of `tar` takes straight into `dir` (created), on this host.
fn untar_on_disk(tar: &Path, dir: &Path) -> Result<f64> {
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    let o = std::process::Command::new("tar").arg("--no-same-owner").arg("-xf").arg(tar).arg("-C").arg(dir).output()?;
    if !o.status.success() {
        bail!("untar on the exporter's disk: {}", text(&o.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// A git checkout of `n` small files in `dir`, committed.
fn git_repo(dir: &Path, n: usize) -> Result<()> {
    for i in 0..n {
        let d = dir.join(format!("src/m{}", i / 100));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("f{i}.c")), format!("int f{i}(void) {{ return {i}; }}\n"))?;
    }
    let script = "git init -q && git add -A && git -c user.name=bench -c user.email=bench@metac commit -qm tree";
    let o = std::process::Command::new("sh").args(["-c", script]).current_dir(dir).output()?;
    if !o.status.success() {
        bail!("git: {} (apt-get install git)", text(&o.stderr));
    }
    Ok(())
}

/// Seconds `script` takes in the mount's namespace on host 1.
/// A `dd` of `file` to /dev/null, timed inside the shell that runs it: what starting the shell and entering a
/// mount's namespaces cost (tens of milliseconds, against a tenth of a second for a warm read of 1 GiB) is not
/// the filesystem's, and the local read, run without them, would not pay it.
fn dd_script(file: &str) -> String {
    format!("s=$(date +%s%N); dd if={file} of=/dev/null bs=1M status=none; e=$(date +%s%N); echo $((e - s))")
}

/// The seconds a [`dd_script`] printed.
fn dd_secs(o: &Output) -> Result<f64> {
    let ns: u64 = text(&o.stdout).parse().with_context(|| format!("dd's time: {:?}", text(&o.stdout)))?;
    Ok(ns as f64 / 1e9)
}

fn timed(h: &Host, m: &dyn Mount, script: &str) -> Result<f64> {
    let t = Instant::now();
    sh_in(h, m.pid(), script).with_context(|| format!("{} workload", m.name()))?;
    Ok(t.elapsed().as_secs_f64())
}

/// The workloads on one mount; returns seconds for each: cold read, warm re-read, untar, find + cat and git status
/// on a fresh mount with cold caches (as the lab's anchor measures them), then find + cat and git status on a fresh
/// mount with the exporter's caches warm (the binder's are new with the mount; this machine's disk then weighs
/// nothing, and what is left is the protocol's).
fn workloads(h: &Host, m: &mut dyn Mount, tar: &Path, mib: u64, rep: usize) -> Result<[f64; 8]> {
    let p = m.path().display().to_string();
    drop_caches()?;
    m.remount()?;
    let seq = dd_secs(&sh_in(h, m.pid(), &dd_script(&format!("{p}/big")))?)?;
    let warm = dd_secs(&sh_in(h, m.pid(), &dd_script(&format!("{p}/big")))?)?;
    let again = dd_secs(&sh_in(h, m.pid(), &dd_script(&format!("{p}/big")))?)?;
    m.remount()?;
    let dest = format!("{p}/untar-{}-{rep}", m.name());
    let untar = timed(h, m, &format!("mkdir {dest} && tar --no-same-owner -xf {} -C {dest}", tar.display()))?;
    drop_caches()?;
    m.remount()?;
    let find = timed(h, m, &format!("find {dest} -type f -exec cat {{}} + > /dev/null"))?;
    drop_caches()?;
    m.remount()?;
    let git_status = format!("git -c safe.directory='*' -C {p}/repo status --porcelain > /dev/null");
    let git = timed(h, m, &git_status)?;
    m.remount()?;
    let find_warm = timed(h, m, &format!("find {dest} -type f -exec cat {{}} + > /dev/null"))?;
    m.remount()?;
    let git_warm = timed(h, m, &git_status)?;
    eprintln!(
        "run {}: {}: read {:.0} MiB/s, warm {:.0} MiB/s, untar {untar:.2} s, find+cat {find:.2} s, git status {git:.2} s, \
         with the exporter warm: find+cat {find_warm:.2} s, git status {git_warm:.2} s",
        rep + 1,
        m.name(),
        mib as f64 / seq,
        mib as f64 / warm
    );
    Ok([seq, warm, untar, find, git, find_warm, git_warm, again])
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 || a.mib == 0 || a.files == 0 || a.git_files == 0 {
        bail!("--reps, --mib, --files and --git-files must be at least 1");
    }
    for (tool, package) in [("sshfs", "sshfs"), ("/usr/sbin/sshd", "openssh-server"), ("git", "git")] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?;
        if !found.status.success() {
            bail!("{tool} is missing: apt-get install {package} (scripts/bench.sh installs it)");
        }
    }
    let lab = Lab::new(2)?;
    let (h1, h2) = (lab.host(1), lab.host(2));
    let export = h2.dir().join("export");
    std::fs::create_dir_all(export.join("repo"))?;
    eprintln!("preparing: a {} MiB file, a tree of {} files, a git checkout of {} files", a.mib, a.files, a.git_files);
    metac_tests::write_pseudo_random(&export.join("big"), a.mib << 20)?;
    git_repo(&export.join("repo"), a.git_files)?;
    let tar = h1.dir().join("tree.tar");
    let nfiles = tree_tar(a.files, &tar)?;

    let nodes: Vec<Node> = lab.start_nodes(&[])?;
    wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        Ok(nodes.iter().all(|n| n.status().is_ok_and(|s| s["peers"].as_u64() >= Some(1))))
    })
    .context("the two nodes did not find each other")?;
    let rss_before = [rss_kib(nodes[0].pid())?, rss_kib(nodes[1].pid())?];
    let reference = metac(h2, &["fs", "export", &format!("local:{}", export.display()), "--name", "bench"])?;

    let (_sshd, ssh_command) = sshd(h2, h1, h2.dir())?;
    let mut sshfs = SshfsMount {
        host: h1,
        remote: format!("root@[{}]:{}", h2.addr(), export.display()),
        ssh_command,
        path: h1.dir().join("sshfs"),
        proc: None,
    };
    let mut mfs = MetacMount { host: h1, node_pid: nodes[0].pid(), reference, path: h1.dir().join("metac"), up: false };
    std::fs::create_dir_all(&sshfs.path)?;
    std::fs::create_dir_all(&mfs.path)?;

    // Local figures: the untar onto host 1's disk, and the warm read of the file on the exporter's disk.
    let local_dir = h1.dir().join("local");
    std::fs::create_dir_all(&local_dir)?;
    let t = Instant::now();
    let o = std::process::Command::new("tar")
        .arg("--no-same-owner")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&local_dir)
        .output()?;
    if !o.status.success() {
        bail!("local untar: {}", text(&o.stderr));
    }
    let local_untar = t.elapsed().as_secs_f64();
    // The same timed `dd` as on the mounts, so that only the filesystem differs.
    let dd = dd_script(&export.join("big").display().to_string());
    let read_local = || -> Result<f64> {
        let o = std::process::Command::new("sh").args(["-c", &dd]).output()?;
        if !o.status.success() {
            bail!("local read: {}", text(&o.stderr));
        }
        dd_secs(&o)
    };
    // As on the mounts: caches dropped, one cold read, then two re-reads. On a FUSE mount the first re-read after
    // the cold read is slower than the next (about 300 against 190 ms for 1 GiB here; on ext4 both take 150-170
    // ms), so both are shown.
    drop_caches()?;
    read_local()?;
    let local_warm = read_local()?;
    let local_again = read_local()?;

    let mut runs: Vec<Vec<[f64; 8]>> = vec![vec![], vec![]];
    // The same untar straight onto the exporter's disk, before each mount's: what creating the files costs there,
    // which both mounts pay on top of their own round trips.
    let mut on_disk: Vec<Vec<f64>> = vec![vec![], vec![]];
    for rep in 0..a.reps {
        on_disk[0].push(untar_on_disk(&tar, &export.join(format!("disk-metac-{rep}")))?);
        runs[0].push(workloads(h1, &mut mfs, &tar, a.mib, rep)?);
        on_disk[1].push(untar_on_disk(&tar, &export.join(format!("disk-sshfs-{rep}")))?);
        runs[1].push(workloads(h1, &mut sshfs, &tar, a.mib, rep)?);
    }
    let m = |fs: usize, i: usize| median(runs[fs].iter().map(|r| r[i]).collect());

    // What the bind costs each node at idle, the bind up and its caches warm.
    mfs.remount()?;
    sh_in(h1, mfs.pid(), &format!("ls -R {} > /dev/null", mfs.path.display()))?;
    std::thread::sleep(Duration::from_secs(a.idle_secs));
    let rss_after = [rss_kib(nodes[0].pid())?, rss_kib(nodes[1].pid())?];

    let mib = a.mib as f64;
    println!("tree: {nfiles} files; git checkout: {} files; {} MiB file; median of {}", a.git_files, a.mib, a.reps);
    for (fs, name) in [(0, "metac"), (1, "sshfs")] {
        println!("{name}_seq_read_mib_s: {:.0} MiB/s", mib / m(fs, 0));
        println!("{name}_warm_reread_mib_s: {:.0} MiB/s (then {:.0} MiB/s again)", mib / m(fs, 1), mib / m(fs, 7));
        println!("{name}_untar_s: {:.2} s", m(fs, 2));
        println!("{name}_find_cat_s: {:.2} s", m(fs, 3));
        println!("{name}_git_status_s: {:.2} s", m(fs, 4));
        println!("{name}_find_cat_exporter_warm_s: {:.2} s", m(fs, 5));
        println!("{name}_git_status_exporter_warm_s: {:.2} s", m(fs, 6));
    }
    println!("local_untar_s: {local_untar:.2} s");
    for (fs, name) in [(0, "metac"), (1, "sshfs")] {
        let disk = median(on_disk[fs].clone());
        println!("untar_on_exporter_disk_before_{name}_s: {disk:.2} s (what creating the files costs there)");
    }
    println!("local_warm_read_mib_s: {:.0} MiB/s (then {:.0} MiB/s again)", mib / local_warm, mib / local_again);
    println!("ratio_seq_read_metac_over_sshfs: {:.2}x (goal >= 2)", m(1, 0) / m(0, 0));
    println!("ratio_untar_time_metac_over_sshfs: {:.2} (goal <= 0.5)", m(0, 2) / m(1, 2));
    println!("ratio_find_cat_time_metac_over_sshfs: {:.2} (goal <= 0.5)", m(0, 3) / m(1, 3));
    println!("ratio_git_status_time_metac_over_sshfs: {:.2}", m(0, 4) / m(1, 4));
    println!("ratio_find_cat_exporter_warm_time_metac_over_sshfs: {:.2}", m(0, 5) / m(1, 5));
    println!("ratio_git_status_exporter_warm_time_metac_over_sshfs: {:.2}", m(0, 6) / m(1, 6));
    println!(
        "ratio_warm_reread_time_metac_over_local: {:.2} the first re-read after the cold read, {:.2} the next (goal <= 1.5)",
        m(0, 1) / local_warm,
        m(0, 7) / local_again
    );
    for (i, who) in [(0, "binding"), (1, "exporting")] {
        println!(
            "{who}_node_rss_with_bind_kib: +{} KiB ({} -> {} KiB; goal <= 10 MiB)",
            rss_after[i] as i64 - rss_before[i] as i64,
            rss_before[i],
            rss_after[i]
        );
    }
    Ok(())
}
