//! The `fs` kind across two real nodes in one process (see `common`), mounted with real FUSE through /dev/fuse and
//! used with real tools: node A exports a directory, node B binds it, and `cat`, `ls`, `find`, `tar`, `sh` run on
//! the mount. Needs root (mounting FUSE); under CI it runs and fails loudly without it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Cluster, ROOT};
use metac_api::types::BindView;
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::token::{Caveat, Ref};
use metac_node::Node;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

fn require_fuse() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the fs tests mount FUSE and need root; run them as root");
    assert!(Path::new("/dev/fuse").exists(), "the fs tests need /dev/fuse (modprobe fuse)");
}

/// Runs a shell command (with a time limit, so a stuck mount fails the test instead of hanging it) off the
/// runtime that serves the mount; returns its status, stdout and stderr.
async fn sh(script: String) -> (bool, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("timeout").args(["60", "sh", "-c", &script]).output().expect("sh runs");
        (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap()
}

async fn ok(script: String) -> Vec<u8> {
    let (ok, out, err) = sh(script.clone()).await;
    assert!(ok, "`{script}` failed: {err}");
    out
}

fn mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// Mounts a FUSE filesystem of the fs kind's type at `path` with no server behind it: what a node killed while it
/// had a bind up leaves (the kernel aborts the connection once the device is closed; every access: ENOTCONN).
fn mount_dead(path: &Path) {
    use std::ffi::CString;
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").unwrap();
    let data = format!("fd={},rootmode=40000,user_id=0,group_id=0", std::os::fd::AsRawFd::as_raw_fd(&dev));
    let (src, target, fstype, data) = (
        CString::new("metac:crashed").unwrap(),
        CString::new(path.to_str().unwrap()).unwrap(),
        CString::new("fuse.metac").unwrap(),
        CString::new(data).unwrap(),
    );
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; mount(2) reads them only.
    let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
    drop(dev);
}

async fn wait_up(node: &Node, id: &str) -> BindView {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let v = node.binds(None, &ROOT).into_iter().find(|b| b.id == id);
        if v.as_ref().is_some_and(|b| b.state == "up") {
            return v.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "bind {id} is not up after {LONG:?}: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bind(node: &Node, r: Ref, mountpoint: &Path) -> BindView {
    std::fs::create_dir_all(mountpoint).unwrap();
    let started = node.bind_ref(r, json!({ "mountpoint": mountpoint }), false, &ROOT).unwrap();
    let v = wait_up(node, &started.id).await;
    assert!(mounted(mountpoint), "{} is mounted once the bind is up", mountpoint.display());
    v
}

/// A tree with directories, files small and large, a hard link and symlinks (one pointing out of the tree).
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for i in 0..150 {
        std::fs::write(root.join(format!("a/b/f{i}.txt")), format!("file {i}\n").repeat(i)).unwrap();
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("sub/deeper/note"), b"in the sub-tree\n").unwrap();
    std::fs::hard_link(root.join("big.bin"), root.join("a/big-again.bin")).unwrap();
    std::os::unix::fs::symlink("b/f1.txt", root.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("a/outward")).unwrap();
}

async fn export_ref(node: &Node, path: &Path, read_only: bool) -> Ref {
    let source = format!("local:{}", path.display());
    let rights = read_only.then_some(Rights::READ);
    node.export(Kind::Fs, source, None, rights, serde_json::Value::Null, &ROOT).await.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fs_bind_mounts_the_export_and_real_tools_read_and_write_it() {
    require_fuse();
    let mut c = Cluster::start(2).await;
    let src = c.dir.path().join("src");
    tree(&src);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export_ref(&a, &src, false).await;
    let mnt = c.dir.path().join("mnt");
    let v = bind(&b, r.clone(), &mnt).await;
    assert_eq!((v.kind.as_str(), v.target.as_str()), ("fs", mnt.to_str().unwrap()));
    let (m, s) = (mnt.display(), src.display());

    // cat of a 3 MB file and of a file through a relative symlink.
    assert_eq!(ok(format!("cat {m}/big.bin")).await, std::fs::read(src.join("big.bin")).unwrap());
    assert_eq!(ok(format!("cat {m}/a/link")).await, b"file 1\n");
    // ls sees the names; the symlink out of the tree is listed and read as a link, its target never served.
    let ls = String::from_utf8(ok(format!("ls -A {m}")).await).unwrap();
    assert_eq!(ls.split_whitespace().collect::<Vec<_>>(), ["a", "big.bin", "sub"]);
    assert_eq!(ok(format!("readlink {m}/a/outward")).await, b"/etc/passwd\n");
    // find lists the same tree, with the same types.
    let listing = |root: String| format!("cd {root} && find . -printf '%y %s %p\\n' | sort");
    assert_eq!(ok(listing(m.to_string())).await, ok(listing(s.to_string())).await);
    // find + cat reads every file's bytes right.
    let sums = |root: String| format!("cd {root} && find . -type f | sort | xargs cat | sha256sum");
    assert_eq!(ok(sums(m.to_string())).await, ok(sums(s.to_string())).await);
    // tar of the mount is the tar of the source, byte for byte (names, modes, owners, sizes, mtimes, links).
    let tar = |root: String| format!("tar c --sort=name -C {root} . | sha256sum");
    assert_eq!(ok(tar(m.to_string())).await, ok(tar(s.to_string())).await);
    // The hard link is one inode on the mount too.
    let inodes = ok(format!("stat -c %i {m}/big.bin {m}/a/big-again.bin")).await;
    let inodes = String::from_utf8(inodes).unwrap();
    let inodes: Vec<&str> = inodes.lines().collect();
    assert_eq!(inodes[0], inodes[1], "hard links share their inode");

    // Writes reach the exporter: a new file, an append, a directory, a rename, a removal.
    ok(format!("echo hello > {m}/new.txt && echo again >> {m}/new.txt")).await;
    assert_eq!(std::fs::read(src.join("new.txt")).unwrap(), b"hello\nagain\n");
    ok(format!("mkdir {m}/made && mv {m}/new.txt {m}/made/moved.txt && rm {m}/a/b/f3.txt")).await;
    assert_eq!(std::fs::read(src.join("made/moved.txt")).unwrap(), b"hello\nagain\n");
    assert!(!src.join("a/b/f3.txt").exists());
    // A 2 MB file written through the mount (several 1 MiB requests) arrives whole.
    ok(format!("head -c 2000000 {m}/big.bin > {m}/made/copy.bin && sync")).await;
    assert_eq!(
        std::fs::read(src.join("made/copy.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()[..2_000_000]
    );
    // Errors keep their errno.
    let (done, _, err) = sh(format!("mkdir {m}/made")).await;
    assert!(!done && err.contains("File exists"), "{err}");
    let (done, _, err) = sh(format!("rmdir {m}/a")).await;
    assert!(!done && err.contains("not empty"), "{err}");
    assert!(b.binds(Some(Kind::Fs), &ROOT)[0].bytes > 5_000_000, "bytes are counted");

    // Unbind unmounts; the exporter's side is cut. A mount namespace made while the bind was up holds a copy of
    // the mount that the unmount does not reach (a container started meanwhile, a netns lab): the connection is
    // aborted, so the copy fails with ENOTCONN instead of keeping the bind's threads (and the node's stop) waiting.
    let mut holder = Command::new("unshare").args(["-m", "sleep", "120"]).spawn().expect("unshare runs");
    let ns = format!("/proc/{}/ns/mnt", holder.id());
    common::wait(LONG, "the namespace holding a copy of the mount", || async {
        std::fs::read_link(&ns).ok() != std::fs::read_link("/proc/self/ns/mnt").ok()
    })
    .await;
    let started = std::time::Instant::now();
    b.unbind(mnt.to_str().unwrap(), &ROOT).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "unbind took {:?}", started.elapsed());
    assert!(!mounted(&mnt), "unbind unmounts");
    let (done, _, err) = sh(format!("nsenter -t {} -m cat {m}/a/link", holder.id())).await;
    assert!(!done && err.contains("not connected"), "the copy's connection is cut: {err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(b.binds(Some(Kind::Fs), &ROOT).is_empty());
    common::wait(LONG, "the exporter to see the bind cut", || async {
        a.exports().unwrap().iter().map(|e| e.binds).sum::<usize>() == 0
    })
    .await;
    // The test's handles go first, so that stopping does not wait for them to let go of the nodes.
    drop((a, b));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_and_sub_path_refs_are_enforced_and_a_node_stop_unmounts() {
    require_fuse();
    let mut c = Cluster::start(2).await;
    let src = c.dir.path().join("src");
    tree(&src);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export_ref(&a, &src, false).await;

    // A read-only ref delegated from a writable one: every change fails with EROFS.
    let ro = a.delegate(&r, &Caveat { rights: Some(Rights::READ), ..Caveat::default() }, false, &ROOT).unwrap();
    let mnt_ro = c.dir.path().join("ro");
    bind(&b, ro, &mnt_ro).await;
    assert_eq!(std::fs::read(mnt_ro.join("sub/deeper/note")).unwrap(), b"in the sub-tree\n");
    for script in ["touch {m}/x", "echo x >> {m}/big.bin", "rm {m}/big.bin", "mkdir {m}/d", "mv {m}/a {m}/b"] {
        let script = script.replace("{m}", &mnt_ro.display().to_string());
        let (done, _, err) = sh(script.clone()).await;
        assert!(!done && err.contains("Read-only file system"), "`{script}`: {err}");
    }
    let e = std::fs::write(mnt_ro.join("y"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert!(!src.join("x").exists() && !src.join("y").exists() && src.join("big.bin").exists());

    // The exporter enforces it too: a read-only export refuses writes whatever the binder mounts.
    let ro_export = export_ref(&a, &src, true).await;
    let mnt_ro2 = c.dir.path().join("ro2");
    bind(&b, ro_export, &mnt_ro2).await;
    let e = std::fs::write(mnt_ro2.join("z"), b"z").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));

    // A ref without the admin right writes but may not change owners, modes or extended attributes.
    let rights = Some(Rights::READ | Rights::WRITE);
    let rw = a.delegate(&r, &Caveat { rights, ..Caveat::default() }, false, &ROOT).unwrap();
    let mnt_rw = c.dir.path().join("rw");
    bind(&b, rw, &mnt_rw).await;
    let m = mnt_rw.display();
    ok(format!("echo written > {m}/by-rw && mkdir {m}/dir-by-rw")).await;
    assert_eq!(std::fs::read(src.join("by-rw")).unwrap(), b"written\n");
    for script in ["chmod 600 {m}/by-rw", "chown 65534 {m}/by-rw", "setfattr -n user.x -v 1 {m}/by-rw"] {
        let script = script.replace("{m}", &m.to_string());
        let (done, _, err) = sh(script.clone()).await;
        assert!(!done && err.contains("not permitted"), "`{script}`: {err}");
    }
    // The full ref (admin) may.
    let mnt_full = c.dir.path().join("full");
    bind(&b, r.clone(), &mnt_full).await;
    ok(format!(
        "chmod 600 {0}/by-rw && chown 65534 {0}/by-rw && setfattr -n user.x -v 1 {0}/by-rw",
        mnt_full.display()
    ))
    .await;
    let meta = std::fs::metadata(src.join("by-rw")).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.uid()), (0o600, 65534));

    // A ref narrowed to a sub-path sees only that sub-tree.
    let sub = a.delegate(&r, &Caveat { path: Some("/sub".into()), ..Caveat::default() }, false, &ROOT).unwrap();
    let mnt_sub = c.dir.path().join("sub");
    bind(&b, sub, &mnt_sub).await;
    let ls = String::from_utf8(ok(format!("ls -A {}", mnt_sub.display())).await).unwrap();
    assert_eq!(ls.trim(), "deeper");
    assert_eq!(ok(format!("cat {}/deeper/note", mnt_sub.display())).await, b"in the sub-tree\n");

    // Stopping the binding node unmounts everything it mounted.
    let mounts = [mnt_ro, mnt_ro2, mnt_sub, mnt_rw, mnt_full];
    assert!(mounts.iter().all(|m| mounted(m)));
    drop((a, b));
    c.nodes[1].stop().await;
    for m in &mounts {
        assert!(!mounted(m), "{} is unmounted when the node stops", m.display());
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_unmounts_and_a_persistent_bind_is_mounted_again_after_a_restart() {
    require_fuse();
    let mut c = Cluster::start(2).await;
    let src = c.dir.path().join("src");
    tree(&src);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export_ref(&a, &src, false).await;
    let (kept, revoked) = (c.dir.path().join("kept"), c.dir.path().join("revoked"));
    std::fs::create_dir_all(&kept).unwrap();
    let p = b.bind_ref(r.clone(), json!({ "mountpoint": kept }), true, &ROOT).unwrap();
    wait_up(&b, &p.id).await;
    let child = b.delegate(&r, &Caveat { rights: Some(Rights::READ), ..Caveat::default() }, false, &ROOT).unwrap();
    let v = bind(&b, child.clone(), &revoked).await;

    // Revoked: the exporter cuts the live bind, the session is refused, and the mount goes.
    let t = std::time::Instant::now();
    b.revoke(&child, &ROOT).await.unwrap();
    common::wait(LONG, "the revoked bind to be unmounted", || async { !mounted(&revoked) }).await;
    // Issue 11 asks for a second; a loaded CI machine gets some slack.
    assert!(t.elapsed() < Duration::from_secs(3), "unmounted only {:?} after the revocation", t.elapsed());
    let v = b.binds(None, &ROOT).into_iter().find(|x| x.id == v.id).unwrap();
    assert!(v.state == "refused" && v.reason.as_deref().unwrap_or("").contains("revoked"), "{v:?}");

    // A node killed while it had a mount up (kill -9) leaves it dead: the next start detaches it.
    let crashed = c.dir.path().join("crashed");
    std::fs::create_dir_all(&crashed).unwrap();
    mount_dead(&crashed);
    b.ctx(Kind::Fs).store.put(&format!("mount:{}", crashed.display()), b"").unwrap();
    assert!(mounted(&crashed));

    // A persistent bind is unmounted at stop and mounted again when the node comes back.
    drop((a, b));
    c.nodes[1].restart().await;
    assert!(!mounted(&crashed), "the dead mount is detached at the next start");
    let b = c.nodes[1].n().clone();
    let v = wait_up(&b, &p.id).await;
    assert!(v.persistent && mounted(&kept));
    assert_eq!(ok(format!("cat {}/a/link", kept.display())).await, b"file 1\n");
    drop(b);
    c.stop().await;
    assert!(!mounted(&kept));
}

/// While the exporter is away, an operation waits for it (up to the bind's timeout) and goes on when it is back;
/// a bind with a short timeout fails with EIO instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operation_waits_for_an_exporter_that_comes_back_within_the_bind_timeout() {
    require_fuse();
    let mut c = Cluster::start(2).await;
    let src = c.dir.path().join("src");
    tree(&src);
    let a = c.nodes[0].n().clone();
    let b = c.nodes[1].n().clone();
    let r = export_ref(&a, &src, false).await;
    let (patient, hasty) = (c.dir.path().join("patient"), c.dir.path().join("hasty"));
    std::fs::create_dir_all(&patient).unwrap();
    std::fs::create_dir_all(&hasty).unwrap();
    let p = b.bind_ref(r.clone(), json!({ "mountpoint": patient, "timeout": 60 }), false, &ROOT).unwrap();
    let h = b.bind_ref(r, json!({ "mountpoint": hasty, "timeout": 1 }), false, &ROOT).unwrap();
    wait_up(&b, &p.id).await;
    wait_up(&b, &h.id).await;
    assert_eq!(ok(format!("cat {}/a/link", patient.display())).await, b"file 1\n");

    drop(a);
    c.nodes[0].stop().await;
    common::wait(LONG, "the binds to see their exporter gone", || async {
        b.binds(None, &ROOT).iter().all(|v| v.state == "retrying")
    })
    .await;
    // Past the kernel's cache of entries, so that the walk below asks the exporter.
    tokio::time::sleep(mount_ttl()).await;
    let waiting = tokio::spawn(sh(format!("cat {}/a/link", patient.display())));
    let (done, _, err) = sh(format!("cat {}/a/link", hasty.display())).await;
    assert!(!done && err.contains("Input/output error"), "a 1 s timeout gives EIO: {err}");
    assert!(!waiting.is_finished(), "the patient bind's cat waits for the exporter");
    c.nodes[0].restart().await;
    let (done, out, err) = waiting.await.unwrap();
    assert!(done, "the waiting cat goes on once the exporter is back: {err}");
    assert_eq!(out, b"file 1\n");
    drop(b);
    c.stop().await;
}

fn mount_ttl() -> Duration {
    metac_fs::mount::TTL + Duration::from_millis(500)
}

/// Serves node `i`'s API on a socket of its own and returns a client of it.
fn api(c: &Cluster, i: usize) -> (metac_api::Client, tokio_util::sync::CancellationToken) {
    let sock = c.dir.path().join(format!("api{i}.sock"));
    let listener = metac_node::api::bind(&sock, None).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let access = metac_node::access::Access::new(None);
    tokio::spawn(metac_node::api::serve(listener, std::sync::Arc::clone(c.nodes[i].n()), access, cancel.clone()));
    (metac_api::Client::new(sock), cancel)
}

/// `GET /v1/fs/stats` of a node.
async fn fs_stats(api: &metac_api::Client) -> metac_fs::api::Stats {
    api.get("/v1/fs/stats").await.unwrap()
}

/// Binds `r` at `mountpoint` with the content cache, waits for it, and gives its id.
async fn bind_cached(node: &Node, r: Ref, mountpoint: &Path, cache: bool) -> String {
    std::fs::create_dir_all(mountpoint).unwrap();
    let started = node.bind_ref(r, json!({ "mountpoint": mountpoint, "cache": cache }), false, &ROOT).unwrap();
    wait_up(node, &started.id).await;
    started.id
}

/// Issue 15's cache: node B runs a program (and reads files) from A's read-only export through a bind with the
/// content cache; a second run, through a new bind, fetches no file content again (counted on A's exporter, by
/// its `GET /v1/fs/stats`), and reads the same bytes; a file changed on A is seen through a third bind (the cache
/// is by content, not name); a bind without the cache reads through A as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_run_again_through_a_new_cached_bind_fetches_no_content_again() {
    use std::sync::Arc;
    require_fuse();
    let limit = 64 << 20;
    let kinds = [metac_fs::Fs::with_cache_limit(limit), metac_fs::Fs::with_cache_limit(limit)];
    let mut c =
        Cluster::start_with(2, |i| Some(vec![Arc::new(kinds[i].clone()) as Arc<dyn metac_resource::Plugin>])).await;
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("note"), b"version 1\n").unwrap();
    std::fs::copy("/bin/echo", src.join("bin/echo")).unwrap();
    let program = std::fs::metadata(src.join("bin/echo")).unwrap().len();
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let ((api_a, stop_a), (api_b, stop_b)) = (api(&c, 0), api(&c, 1));
    let r = export_ref(&a, &src, true).await;
    let run = |m: &Path| format!("{0}/bin/echo ran && cat {0}/note && sha256sum < {0}/big.bin", m.display());
    let want = ok(format!("echo ran && cat {0}/note && sha256sum < {0}/big.bin", src.display())).await;

    let first = c.dir.path().join("first");
    let id = bind_cached(&b, r.clone(), &first, true).await;
    assert_eq!(ok(run(&first)).await, want);
    b.unbind(&id, &ROOT).await.unwrap();
    let served = fs_stats(&api_a).await.served_bytes;
    assert!(served >= big.len() as u64 + program + 10, "the first run fetched the files: {served} bytes");
    let cached = fs_stats(&api_b).await.cache;
    assert_eq!((cached.entries, cached.limit), (3, limit), "{cached:?}");
    assert!(cached.bytes >= big.len() as u64 + program + 10, "{cached:?}");

    let second = c.dir.path().join("second");
    let id = bind_cached(&b, r.clone(), &second, true).await;
    assert_eq!(ok(run(&second)).await, want, "the same bytes, from the cache");
    b.unbind(&id, &ROOT).await.unwrap();
    assert_eq!(fs_stats(&api_a).await.served_bytes, served, "the second run fetched no file content");
    assert!(fs_stats(&api_b).await.cache.hits >= 3);

    std::fs::write(src.join("note"), b"version 2, longer\n").unwrap();
    let third = c.dir.path().join("third");
    let id = bind_cached(&b, r.clone(), &third, true).await;
    assert_eq!(ok(format!("cat {}/note", third.display())).await, b"version 2, longer\n");
    assert_eq!(ok(format!("sha256sum < {}/big.bin", third.display())).await, want[14..]);
    b.unbind(&id, &ROOT).await.unwrap();
    assert_eq!(fs_stats(&api_a).await.served_bytes, served + 18, "only the changed file was fetched");

    let plain = c.dir.path().join("plain");
    let id = bind_cached(&b, r.clone(), &plain, false).await;
    assert_eq!(ok(format!("cat {}/big.bin", plain.display())).await, big);
    b.unbind(&id, &ROOT).await.unwrap();
    let after = fs_stats(&api_a).await.served_bytes;
    assert!(after >= served + 18 + big.len() as u64, "a bind without the cache reads through: {after}");
    assert_eq!(fs_stats(&api_b).await.cache.entries, 4, "and adds nothing to the cache");
    stop_a.cancel();
    stop_b.cancel();
    drop((a, b));
    c.stop().await;
}
