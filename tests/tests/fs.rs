//! The fs kind between real hosts: `metac fs export` on one netns host, `metac fs bind` on another, and real tools
//! (`tar`, `find`, `cat`, `sh`) on the mount, run in the binding node's mount namespace (which holds its FUSE
//! mounts). Build the binary first (`cargo build --bin metac`); the tests need root and never skip.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use metac_tests::{output, require_root, wait_until, Host, Lab};

fn ok(h: &Host, args: &[&str]) -> String {
    match h.metac(args) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => panic!("metac {args:?} on host {} failed: {e}", h.index()),
    }
}

fn json(h: &Host, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(h, &a)).expect("valid JSON")
}

/// Runs `script` with `sh -c` in the mount namespace of process `pid` on host `h`.
fn sh_in(h: &Host, pid: u32, script: &str) -> Output {
    output(&mut h.nsenter_cmd(pid, "sh", ["-c", script]), Duration::from_secs(120)).expect("sh runs")
}

fn sh_ok(h: &Host, pid: u32, script: &str) -> Vec<u8> {
    let o = sh_in(h, pid, script);
    assert!(o.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// What `sh -c script` prints on this machine, outside the lab (for the source tree).
fn local(script: &str) -> Vec<u8> {
    let o = std::process::Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(o.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// A tree of more than 1000 files in nested directories, a 16 MiB file, a symlink and a hard link.
fn tree(root: &Path) {
    for d in 0..12 {
        let dir = root.join(format!("dir{d}/sub"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..90 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n").repeat(f + 1)).unwrap();
        }
    }
    metac_tests::write_pseudo_random(&root.join("big.bin"), 16 << 20).unwrap();
    std::os::unix::fs::symlink("dir0/sub/f1", root.join("link")).unwrap();
    std::fs::hard_link(root.join("big.bin"), root.join("dir1/big-again.bin")).unwrap();
}

fn mounted(pid: u32, p: &Path) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

#[test]
fn a_tree_exported_on_one_host_is_mounted_on_another_and_real_tools_use_it() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let nodes = lab.start_nodes(&[]).unwrap();
    let (h1, h2) = (lab.host(1), lab.host(2));
    let src = h1.dir().join("shared");
    tree(&src);
    let r = ok(h1, &["fs", "export", &format!("local:{}", src.display()), "--name", "shared"]);
    let mnt = h2.dir().join("shared-from-host1");
    std::fs::create_dir(&mnt).unwrap();
    ok(h2, &["fs", "bind", mnt.to_str().unwrap(), &r]);
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || Ok(json(h2, &["fs", "ls"])[0]["state"] == "up"))
        .expect("the fs bind comes up");
    let pid = nodes[1].pid();
    assert!(mounted(pid, &mnt), "the binding node's namespace holds the mount");
    let (m, s) = (mnt.display(), src.display());

    // tar of the mount is the tar of the source, byte for byte; find + cat read every file right.
    let t = std::time::Instant::now();
    let tar = sh_ok(h2, pid, &format!("tar c --sort=name -C {m} . | sha256sum"));
    eprintln!("tar c of {} files over the mount took {:?}", 12 * 90 + 3, t.elapsed());
    assert_eq!(tar, local(&format!("tar c --sort=name -C {s} . | sha256sum")));
    let sums = |root: &str| format!("cd {root} && find . -type f | sort | xargs cat | sha256sum");
    assert_eq!(sh_ok(h2, pid, &sums(&m.to_string())), local(&sums(&s.to_string())));
    assert_eq!(sh_ok(h2, pid, &format!("cat {m}/link")), b"0/1\n0/1\n");

    // Changes made on the mount land in the exporter's tree.
    sh_ok(h2, pid, &format!("echo from-host2 > {m}/new.txt && mkdir {m}/made && mv {m}/new.txt {m}/made/"));
    assert_eq!(std::fs::read(src.join("made/new.txt")).unwrap(), b"from-host2\n");

    // Two writers at once, one on either side of the bind, each on a file of its own: both files end whole, and
    // each side reads the other's.
    let script = |root: &str, name: &str| {
        format!("for i in $(seq 200); do echo \"{name} line $i\"; done > {root}/{name} && sha256sum < {root}/{name}")
    };
    let (here, there) = std::thread::scope(|sc| {
        let on_exporter = sc.spawn(|| local(&script(&s.to_string(), "by-exporter")));
        let on_binder = sc.spawn(|| sh_ok(h2, pid, &script(&m.to_string(), "by-binder")));
        (on_exporter.join().unwrap(), on_binder.join().unwrap())
    });
    assert_eq!(sh_ok(h2, pid, &format!("sha256sum < {m}/by-exporter")), here);
    assert_eq!(local(&format!("sha256sum < {s}/by-binder")), there);

    // A file the binder has read grows on the exporter (a log): the writable mount, where writeback caching keeps
    // the kernel's own size of a file, reads all of it within a few seconds, not the old length.
    std::fs::write(src.join("log.txt"), b"first\n").unwrap();
    assert_eq!(sh_ok(h2, pid, &format!("cat {m}/log.txt")), b"first\n");
    let mut log = std::fs::OpenOptions::new().append(true).open(src.join("log.txt")).unwrap();
    std::io::Write::write_all(&mut log, b"second line, longer\n").unwrap();
    drop(log);
    wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        Ok(sh_ok(h2, pid, &format!("cat {m}/log.txt")) == b"first\nsecond line, longer\n")
    })
    .unwrap_or_else(|e| panic!("the grown file reads whole: {e}; {:?}", sh_in(h2, pid, &format!("cat {m}/log.txt"))));

    // A read-only ref: every change fails with EROFS.
    let ro = ok(h1, &["ref", "delegate", &r, "--read-only"]);
    let ro_mnt = h2.dir().join("ro");
    std::fs::create_dir(&ro_mnt).unwrap();
    ok(h2, &["fs", "bind", ro_mnt.to_str().unwrap(), &ro]);
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        Ok(json(h2, &["fs", "ls"]).as_array().unwrap().iter().all(|b| b["state"] == "up"))
    })
    .expect("the read-only bind comes up");
    let o = sh_in(h2, pid, &format!("touch {}/x", ro_mnt.display()));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Read-only file system"));

    // A ref narrowed with `ref delegate --path` sees only that sub-tree, and cannot be widened back out.
    let sub = ok(h1, &["ref", "delegate", &r, "--path", "dir3"]);
    assert!(json(h1, &["ref", "show", &sub])["path"] == "/dir3", "{}", ok(h1, &["ref", "show", &sub]));
    let sub_mnt = h2.dir().join("sub");
    std::fs::create_dir(&sub_mnt).unwrap();
    ok(h2, &["fs", "bind", sub_mnt.to_str().unwrap(), &sub]);
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        Ok(json(h2, &["fs", "ls"]).as_array().unwrap().iter().all(|b| b["state"] == "up"))
    })
    .expect("the sub-tree bind comes up");
    assert_eq!(sh_ok(h2, pid, &format!("ls {}", sub_mnt.display())), b"sub\n");
    assert_eq!(sh_ok(h2, pid, &format!("cat {}/sub/f0", sub_mnt.display())), b"3/0\n");
    for (bad, why) in [("/dir4", "widens the path"), ("../etc", "beneath the export"), ("", "empty")] {
        let e = h1.metac(&["ref", "delegate", &sub, "--path", bad]).expect_err("refused");
        assert!(e.to_string().contains(why), "--path {bad:?}: {e}");
    }

    // Unbind unmounts.
    ok(h2, &["fs", "unbind", mnt.to_str().unwrap()]);
    ok(h2, &["fs", "unbind", ro_mnt.to_str().unwrap()]);
    ok(h2, &["fs", "unbind", sub_mnt.to_str().unwrap()]);
    assert!(!mounted(pid, &mnt) && !mounted(pid, &ro_mnt) && !mounted(pid, &sub_mnt), "unbind unmounts");
    assert_eq!(json(h2, &["fs", "ls"]), serde_json::json!([]));
}

/// What users run on a disk, on a bind (writes answered ahead, in order on the exporter): a tree of more than 1000
/// files untarred onto the mount and read back with the same checksums and mtimes on both sides; `cp -a` keeping
/// owners, modes and timestamps; git init, add, commit, status and gc; `rsync -a` onto it, then again with nothing
/// to send; sqlite3 in WAL mode passing its integrity check; fio random reads and writes with verify.
#[test]
fn programs_users_run_on_a_disk_work_on_a_bind_as_on_the_disk() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let nodes = lab.start_nodes(&[]).unwrap();
    let (h1, h2) = (lab.host(1), lab.host(2));
    let src = h1.dir().join("work");
    std::fs::create_dir(&src).unwrap();
    let r = ok(h1, &["fs", "export", &format!("local:{}", src.display()), "--name", "work"]);
    let mnt = h2.dir().join("work");
    std::fs::create_dir(&mnt).unwrap();
    ok(h2, &["fs", "bind", mnt.to_str().unwrap(), &r]);
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || Ok(json(h2, &["fs", "ls"])[0]["state"] == "up"))
        .expect("the fs bind comes up");
    let pid = nodes[1].pid();
    let (m, s) = (mnt.display().to_string(), src.display().to_string());
    // The material: a tree, outside the lab.
    let orig = h1.dir().join("orig");
    tree(&orig);
    local(&format!(
        "chown -R 1234:5678 {0}/dir2 && chmod 0750 {0}/dir3 && touch -d '2001-02-03 04:05:06.789' {0}/dir4/sub/f7",
        orig.display()
    ));
    let o = orig.display();
    // What must be the same on both sides: every file's path, size, mode, owner, mtime (to the nanosecond) and bytes.
    let listing = |root: &str, sub: &str| {
        format!(
            "cd {root}/{sub} && find . -printf '%p %y %s %m %U %G %T@\\n' | LC_ALL=C sort && \
             find . -type f | LC_ALL=C sort | xargs cat | sha256sum"
        )
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let want = text(local(&listing(&o.to_string(), ".")));

    // tar x onto the mount (a pax archive: it keeps nanoseconds), and cp -a.
    local(&format!("tar -C {o} --format=posix -cf {}/tree.tar .", h1.dir().display()));
    sh_ok(h2, pid, &format!("mkdir {m}/untarred && tar -C {m}/untarred -xpf {}/tree.tar", h1.dir().display()));
    sh_ok(h2, pid, &format!("cp -a {o} {m}/copied"));
    for sub in ["untarred", "copied"] {
        assert_eq!(text(sh_ok(h2, pid, &listing(&m, sub))), want, "{sub}, seen through the mount");
        assert_eq!(text(local(&listing(&s, sub))), want, "{sub}, on the exporter's disk");
    }

    // rsync -a onto it; a second run finds nothing to send.
    sh_ok(h2, pid, &format!("rsync -a {o}/ {m}/synced/"));
    assert_eq!(text(local(&listing(&s, "synced"))), want, "rsync's copy on the exporter's disk");
    let again = sh_ok(h2, pid, &format!("rsync -ai {o}/ {m}/synced/"));
    assert!(again.is_empty(), "nothing to send again: {}", String::from_utf8_lossy(&again));

    // git: a repository made, committed to, looked at and packed on the mount, and sound on the exporter's disk.
    let git = "git -c user.name=metac -c user.email=metac@example.invalid -c init.defaultBranch=main";
    sh_ok(
        h2,
        pid,
        &format!(
            "cd {m} && mkdir repo && cd repo && {git} init -q && cp -r {o}/dir5 {o}/dir6 . && {git} add -A && \
             {git} commit -qm first && echo change >> dir5/sub/f3 && {git} commit -qam second && {git} gc -q && \
             test -z \"$({git} status --porcelain)\""
        ),
    );
    let log = local(&format!("cd {s}/repo && {git} fsck --strict && {git} log --format=%s"));
    assert!(String::from_utf8_lossy(&log).ends_with("second\nfirst\n"), "{}", String::from_utf8_lossy(&log));

    // sqlite3 in WAL mode: a thousand rows in transactions, its integrity check, then the same on the exporter.
    let sql = "PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); \
               WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
               INSERT INTO t SELECT i, hex(randomblob(64)) FROM n; \
               BEGIN; UPDATE t SET v = 'x' || v WHERE k % 3 = 0; COMMIT; PRAGMA wal_checkpoint(TRUNCATE);";
    sh_ok(h2, pid, &format!("sqlite3 {m}/db.sqlite \"{sql}\""));
    let check = "PRAGMA integrity_check; SELECT count(*), sum(v LIKE 'x%') FROM t;";
    assert_eq!(sh_ok(h2, pid, &format!("sqlite3 {m}/db.sqlite \"{check}\"")), b"ok\n1000|333\n");
    assert_eq!(local(&format!("sqlite3 {s}/db.sqlite \"{check}\"")), b"ok\n1000|333\n");

    // fio: random reads and writes through the page cache (writeback, written ahead), every block verified.
    sh_ok(
        h2,
        pid,
        &format!(
            "fio --name=verify --filename={m}/fio.dat --size=16m --bs=4k --rw=randrw --ioengine=psync --iodepth=1 \
             --verify=crc32c --do_verify=1 --verify_fatal=1 --fsync=64 --output=/dev/null"
        ),
    );
    ok(h2, &["fs", "unbind", &m]);
}

/// The exporting node is killed (SIGKILL) in the middle of a slow read of a 48 MiB file and started again: the
/// reading program sees no error and ends with the right bytes (its open file is opened again on the new
/// connection, at the offset it had reached), and a path it knew is walked again without waiting for caches.
#[test]
fn the_exporter_killed_mid_read_and_restarted_the_binder_reads_on_to_the_right_bytes() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let mut nodes = lab.start_nodes(&[]).unwrap();
    let (h1, h2) = (lab.host(1), lab.host(2));
    let src = h1.dir().join("shared");
    std::fs::create_dir(&src).unwrap();
    metac_tests::write_pseudo_random(&src.join("huge.bin"), 48 << 20).unwrap();
    std::fs::write(src.join("small"), b"small\n").unwrap();
    let r = ok(h1, &["fs", "export", &format!("local:{}", src.display())]);
    let mnt = h2.dir().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ok(h2, &["fs", "bind", mnt.to_str().unwrap(), &r]);
    let up = || {
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            Ok(json(h2, &["fs", "ls"])[0]["state"] == "up")
        })
    };
    up().expect("the fs bind comes up");
    let pid = nodes[1].pid();
    let m = mnt.display();
    assert_eq!(sh_ok(h2, pid, &format!("cat {m}/small")), b"small\n");

    // 1 MiB every 0.1 s: about five seconds of reading, most of it after the exporter is back.
    let out = h2.dir().join("sum");
    let script = format!(
        "{{ for i in $(seq 48); do dd bs=1M count=1 iflag=fullblock status=none || exit 1; sleep 0.1; done; }} \
         < {m}/huge.bin | sha256sum > {}",
        out.display()
    );
    let reader = h2.spawn_cmd(h2.nsenter_cmd(pid, "sh", ["-c", &script])).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    nodes[0].kill9();
    assert!(reader.is_running(), "the reader was still reading when the exporter was killed");
    std::thread::sleep(Duration::from_millis(500));
    nodes[0].restart().unwrap();
    let status = reader.wait_timeout(Duration::from_secs(120)).expect("the reader ends");
    assert!(status.success(), "the reader saw an error: {status}");
    let want = local(&format!("sha256sum < {}", src.join("huge.bin").display()));
    assert_eq!(std::fs::read(&out).unwrap(), want, "the bytes read across the restart are the file's");
    up().expect("the bind is up again");
    assert_eq!(sh_ok(h2, pid, &format!("cat {m}/small")), b"small\n");
    ok(h2, &["fs", "unbind", mnt.to_str().unwrap()]);
}

/// Unmounts a tmpfs when dropped (the test failing or not).
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// "passed P of T tests (F failed) in S s" of `scripts/posix.sh`: P.
fn passed(out: &Output) -> u64 {
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line
        .lines()
        .find(|l| l.starts_with("passed "))
        .unwrap_or_else(|| panic!("no summary from the suite: {line}\n{}", String::from_utf8_lossy(&out.stderr)));
    line.split(' ').nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// The POSIX filesystem conformance suite pjdfstest (vendored in tests/posix), run as root on a bind with default
/// options and on a tmpfs in the same run: the bind passes at least 99 % of what tmpfs passes.
#[test]
fn the_posix_conformance_suite_passes_on_a_bind_as_on_tmpfs() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let nodes = lab.start_nodes(&[]).unwrap();
    let (h1, h2) = (lab.host(1), lab.host(2));
    let src = h1.dir().join("posix");
    std::fs::create_dir(&src).unwrap();
    let r = ok(h1, &["fs", "export", &format!("local:{}", src.display())]);
    let mnt = h2.dir().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ok(h2, &["fs", "bind", mnt.to_str().unwrap(), &r]);
    wait_until(Duration::from_secs(60), Duration::from_millis(100), || Ok(json(h2, &["fs", "ls"])[0]["state"] == "up"))
        .unwrap_or_else(|e| panic!("the fs bind comes up: {e}; {}", ok(h2, &["binds"])));
    let tmpfs = lab.dir().join("tmpfs");
    std::fs::create_dir(&tmpfs).unwrap();
    let status = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&tmpfs).status().unwrap();
    assert!(status.success(), "mount tmpfs");
    let _tmpfs = Tmpfs(tmpfs.clone());

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/posix.sh");
    let (bind_tap, tmpfs_tap) = (lab.dir().join("bind.tap"), lab.dir().join("tmpfs.tap"));
    let suite = |h: &Host, pid: Option<u32>, dir: &std::path::Path, tap: &std::path::Path| {
        let args = [script.to_str().unwrap(), dir.to_str().unwrap(), tap.to_str().unwrap()];
        let mut cmd = match pid {
            Some(pid) => h.nsenter_cmd(pid, "bash", args),
            None => {
                let mut c = std::process::Command::new("bash");
                c.args(args);
                c
            }
        };
        cmd.env("PJD_JOBS", "3");
        output(&mut cmd, Duration::from_secs(900)).expect("the suite runs")
    };
    let pid = nodes[1].pid();
    let (on_bind, on_tmpfs) = std::thread::scope(|s| {
        let bind = s.spawn(|| suite(h2, Some(pid), &mnt, &bind_tap));
        let tmp = s.spawn(|| suite(h2, None, &tmpfs, &tmpfs_tap));
        (bind.join().unwrap(), tmp.join().unwrap())
    });
    let (b, t) = (passed(&on_bind), passed(&on_tmpfs));
    let fails = |tap: &std::path::Path| {
        let tap = std::fs::read_to_string(tap).unwrap_or_default();
        tap.lines().filter(|l| l.starts_with("# FAIL") || l.starts_with("# passed")).collect::<Vec<_>>().join("\n")
    };
    eprintln!(
        "pjdfstest: bind {}tmpfs {}",
        String::from_utf8_lossy(&on_bind.stdout),
        String::from_utf8_lossy(&on_tmpfs.stdout)
    );
    eprintln!("on the bind:\n{}", fails(&bind_tap));
    assert!(t > 8000, "tmpfs passes the suite: {}", fails(&tmpfs_tap));
    assert!(b * 100 >= t * 99, "the bind passes {b}, tmpfs {t}:\n{}", fails(&bind_tap));
    ok(h2, &["fs", "unbind", mnt.to_str().unwrap()]);
}
