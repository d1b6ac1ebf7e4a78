//! The server on a real directory, played against as a binder would and as an attacker would.

use std::path::Path;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// An export directory `export` beside a directory `outside` holding a secret.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("export")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), b"outside the export").unwrap();
        Lab { dir }
    }

    fn export(&self) -> std::path::PathBuf {
        self.dir.path().join("export")
    }

    fn server(&self, read_only: bool) -> Server {
        Server::new(open_dir(&self.export()), read_only).unwrap()
    }
}

fn open_dir(p: &Path) -> OwnedFd {
    rustix::fs::open(p, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap()
}

fn lookup(s: &Server, parent: u64, name: &str) -> Result<Attr> {
    match s.handle(Op::Lookup { parent, name: name.into() })? {
        Reply::Entry(a) => Ok(a),
        r => panic!("lookup answered {r:?}"),
    }
}

fn open(s: &Server, ino: u64, flags: i32) -> Result<u64> {
    match s.handle(Op::Open { ino, flags })? {
        Reply::Opened { fh } => Ok(fh),
        r => panic!("open answered {r:?}"),
    }
}

fn read_all(s: &Server, ino: u64) -> Result<Vec<u8>> {
    let fh = open(s, ino, libc::O_RDONLY)?;
    let r = s.handle(Op::Read { fh, offset: 0, size: MAX_IO });
    s.handle(Op::Release { fh }).unwrap();
    match r? {
        Reply::Data(d) => Ok(d),
        r => panic!("read answered {r:?}"),
    }
}

fn names(s: &Server, ino: u64) -> Vec<String> {
    let mut out = vec![];
    let mut offset = 0;
    loop {
        let Reply::Dir(entries) = s.handle(Op::Readdir { ino, offset }).unwrap() else { panic!() };
        if entries.is_empty() {
            break;
        }
        offset = entries.last().unwrap().offset;
        out.extend(entries.into_iter().map(|e| String::from_utf8(e.name).unwrap()));
    }
    out.sort();
    out
}

#[test]
fn a_binder_creates_writes_reads_lists_renames_links_and_removes() {
    let lab = Lab::new();
    let s = lab.server(false);
    let Reply::Created { attr, fh } = s
        .handle(Op::Create {
            parent: ROOT,
            name: b"f".to_vec(),
            mode: 0o644,
            umask: 0o022,
            flags: libc::O_RDWR,
            who: Who::default(),
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(attr.mode & 0o777, 0o644);
    assert_eq!(s.handle(Op::Write { fh, offset: 3, data: b"lo".to_vec() }).unwrap(), Reply::Written(2));
    s.handle(Op::Write { fh, offset: 0, data: b"hel".to_vec() }).unwrap();
    s.handle(Op::Fsync { fh, datasync: true }).unwrap();
    s.handle(Op::Release { fh }).unwrap();
    assert_eq!(std::fs::read(lab.export().join("f")).unwrap(), b"hello");
    assert_eq!(read_all(&s, attr.ino).unwrap(), b"hello");
    assert_eq!(lookup(&s, ROOT, "f").unwrap().ino, attr.ino, "one number per inode");

    let Reply::Entry(d) =
        s.handle(Op::Mkdir { parent: ROOT, name: b"d".to_vec(), mode: 0o755, umask: 0, who: Who::default() }).unwrap()
    else {
        panic!()
    };
    s.handle(Op::Rename { parent: ROOT, name: b"f".to_vec(), newparent: d.ino, newname: b"g".to_vec(), flags: 0 })
        .unwrap();
    let Reply::Entry(l) = s.handle(Op::Link { ino: attr.ino, newparent: ROOT, newname: b"hard".to_vec() }).unwrap()
    else {
        panic!()
    };
    assert_eq!((l.ino, l.nlink), (attr.ino, 2));
    assert_eq!(names(&s, ROOT), [".", "..", "d", "hard"]);
    assert_eq!(names(&s, d.ino), [".", "..", "g"]);
    let set = SetAttr {
        size: Some(2),
        mode: Some(0o600),
        mtime: Some(Time::At { sec: 1_000_000_000, nsec: 123 }),
        ..SetAttr::default()
    };
    let Reply::Attr(a) = s.handle(Op::Setattr { ino: attr.ino, fh: None, set }).unwrap() else { panic!() };
    assert_eq!((a.size, a.mode & 0o7777, a.mtime), (2, 0o600, (1_000_000_000, 123)));
    assert_eq!(s.handle(Op::Rmdir { parent: ROOT, name: b"d".to_vec() }), Err(libc::ENOTEMPTY));
    s.handle(Op::Unlink { parent: d.ino, name: b"g".to_vec() }).unwrap();
    s.handle(Op::Rmdir { parent: ROOT, name: b"d".to_vec() }).unwrap();
    assert_eq!(lookup(&s, ROOT, "d"), Err(libc::ENOENT));
    assert!(matches!(s.handle(Op::Statfs { ino: ROOT }), Ok(Reply::Statfs(f)) if f.bsize > 0));
    // Forgetting every lookup lets the inode go; its number is stale afterwards.
    let before = s.held().0;
    s.handle(Op::Forget { ino: d.ino, n: 1 }).unwrap();
    assert_eq!(s.held().0, before - 1);
    assert_eq!(s.handle(Op::Getattr { ino: d.ino }), Err(libc::ESTALE));
    assert_eq!(s.handle(Op::Read { fh: 999, offset: 0, size: 1 }), Err(libc::EBADF));
}

#[test]
fn dot_dot_and_names_with_slashes_are_refused() {
    let lab = Lab::new();
    let s = lab.server(false);
    std::fs::create_dir(lab.export().join("sub")).unwrap();
    let sub = lookup(&s, ROOT, "sub").unwrap();
    assert_eq!(lookup(&s, ROOT, ".."), Err(libc::EPERM));
    assert_eq!(lookup(&s, sub.ino, ".."), Err(libc::EPERM));
    assert_eq!(lookup(&s, ROOT, "../outside/secret"), Err(libc::EINVAL));
    assert_eq!(lookup(&s, ROOT, "/etc"), Err(libc::EINVAL));
    assert_eq!(lookup(&s, ROOT, ""), Err(libc::EINVAL));
    let mk = |name: &[u8]| {
        s.handle(Op::Mkdir { parent: ROOT, name: name.to_vec(), mode: 0o755, umask: 0, who: Who::default() })
    };
    assert_eq!(mk(b"../escaped"), Err(libc::EINVAL));
    let mv = s.handle(Op::Rename {
        parent: sub.ino,
        name: b"x".to_vec(),
        newparent: ROOT,
        newname: b"..".to_vec(),
        flags: 0,
    });
    assert_eq!(mv, Err(libc::EPERM));
    assert!(!lab.dir.path().join("escaped").exists());
}

#[test]
fn symlinks_are_stored_and_read_but_never_followed_out() {
    let lab = Lab::new();
    let s = lab.server(false);
    let outside = lab.dir.path().join("outside");
    std::os::unix::fs::symlink(&outside, lab.export().join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", lab.export().join("rel")).unwrap();
    // One made by the binder, to a file outside.
    let target = outside.join("secret");
    let made = s.handle(Op::Symlink {
        parent: ROOT,
        name: b"mine".to_vec(),
        target: target.as_os_str().as_encoded_bytes().to_vec(),
        who: Who::default(),
    });
    assert!(made.is_ok(), "{made:?}");
    for (name, target) in [("abs", outside.clone()), ("rel", "../outside".into()), ("mine", target.clone())] {
        let l = lookup(&s, ROOT, name).unwrap();
        assert_eq!(l.mode & libc::S_IFMT, libc::S_IFLNK, "{name} is the link itself");
        assert_eq!(
            s.handle(Op::Readlink { ino: l.ino }),
            Ok(Reply::Data(target.as_os_str().as_encoded_bytes().to_vec()))
        );
        assert_eq!(open(&s, l.ino, libc::O_RDONLY), Err(libc::ELOOP), "{name} is never opened through");
        assert_eq!(lookup(&s, l.ino, "secret"), Err(libc::ENOTDIR), "{name} is never walked through");
        let set = SetAttr { mode: Some(0o777), ..SetAttr::default() };
        assert_eq!(s.handle(Op::Setattr { ino: l.ino, fh: None, set }), Err(libc::EOPNOTSUPP));
        assert_eq!(s.handle(Op::Readdir { ino: l.ino, offset: 0 }), Err(libc::ENOTDIR));
        // Times are set on the link itself (utimensat's AT_SYMLINK_NOFOLLOW), never on what it points to.
        let set = SetAttr { mtime: Some(Time::At { sec: 1_000_000, nsec: 5 }), ..SetAttr::default() };
        let Ok(Reply::Attr(a)) = s.handle(Op::Setattr { ino: l.ino, fh: None, set }) else { panic!() };
        assert_eq!(a.mtime, (1_000_000, 5));
    }
    let secret = std::fs::metadata(outside.join("secret")).unwrap();
    assert_ne!(secret.mtime(), 1_000_000, "the target outside the export was left alone");
    // A sub-path is resolved beneath the root too: a symlink out of it, or `..`, is refused.
    let root = open_dir(&lab.export());
    assert_eq!(Server::beneath(&root, "rel").unwrap_err().raw_os_error(), Some(libc::EXDEV));
    assert_eq!(Server::beneath(&root, "abs").unwrap_err().raw_os_error(), Some(libc::EXDEV));
    assert_eq!(Server::beneath(&root, "..").unwrap_err().raw_os_error(), Some(libc::EXDEV));
    std::fs::create_dir(lab.export().join("sub")).unwrap();
    std::fs::write(lab.export().join("sub/inside"), b"in").unwrap();
    let sub = Server::new(Server::beneath(&root, "/sub/").unwrap(), false).unwrap();
    assert_eq!(names(&sub, ROOT), [".", "..", "inside"]);
    assert_eq!(lookup(&sub, ROOT, ".."), Err(libc::EPERM));
}

/// A directory looked up, then swapped for a symlink to outside the export: the binder's inode is still the
/// directory it looked up, and the new name is a symlink that leads nowhere.
#[test]
fn a_symlink_swapped_in_after_lookup_leads_nowhere() {
    let lab = Lab::new();
    let s = lab.server(false);
    std::fs::create_dir(lab.export().join("d")).unwrap();
    std::fs::write(lab.export().join("d/secret"), b"inside").unwrap();
    let d = lookup(&s, ROOT, "d").unwrap();
    std::fs::rename(lab.export().join("d"), lab.export().join("moved")).unwrap();
    std::os::unix::fs::symlink(lab.dir.path().join("outside"), lab.export().join("d")).unwrap();
    let f = lookup(&s, d.ino, "secret").unwrap();
    assert_eq!(read_all(&s, f.ino).unwrap(), b"inside");
    let again = lookup(&s, ROOT, "d").unwrap();
    assert_eq!(again.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(lookup(&s, again.ino, "secret"), Err(libc::ENOTDIR));
    // A file looked up, then replaced by a symlink to the secret: opening the inode opens what was looked up.
    std::fs::write(lab.export().join("f"), b"mine").unwrap();
    let f = lookup(&s, ROOT, "f").unwrap();
    std::fs::remove_file(lab.export().join("f")).unwrap();
    std::os::unix::fs::symlink(lab.dir.path().join("outside/secret"), lab.export().join("f")).unwrap();
    assert_eq!(read_all(&s, f.ino).unwrap(), b"mine");
}

/// Swaps a directory and a symlink to outside in a loop while the server walks through the name: no read ever
/// returns the secret.
#[test]
fn a_directory_swapped_for_a_symlink_in_a_loop_never_lets_a_walk_out() {
    let lab = Lab::new();
    let s = lab.server(false);
    let (d, tmp_dir, tmp_link) = (lab.export().join("d"), lab.export().join("d.dir"), lab.export().join("d.link"));
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("secret"), b"inside").unwrap();
    std::os::unix::fs::symlink(lab.dir.path().join("outside"), &tmp_link).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(&d, &tmp_dir).and_then(|()| std::fs::rename(&tmp_link, &d));
                let _ = std::fs::rename(&d, &tmp_link).and_then(|()| std::fs::rename(&tmp_dir, &d));
            }
        });
        let mut inside = 0;
        for _ in 0..3000 {
            let Ok(dir) = lookup(&s, ROOT, "d") else { continue };
            if let Ok(f) = lookup(&s, dir.ino, "secret") {
                let data = read_all(&s, f.ino).unwrap();
                assert_eq!(data, b"inside", "a walk through a swapped name reached outside the export");
                inside += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(inside > 0, "the walk never got through at all");
    });
}

#[test]
fn a_read_only_server_refuses_every_change_with_erofs() {
    let lab = Lab::new();
    std::fs::write(lab.export().join("f"), b"data").unwrap();
    let s = lab.server(true);
    let f = lookup(&s, ROOT, "f").unwrap();
    assert_eq!(read_all(&s, f.ino).unwrap(), b"data");
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(open(&s, f.ino, flags), Err(libc::EROFS));
    }
    let fh = open(&s, f.ino, libc::O_RDONLY).unwrap();
    let changes = [
        Op::Write { fh, offset: 0, data: b"x".to_vec() },
        Op::Create {
            parent: ROOT,
            name: b"new".to_vec(),
            mode: 0o644,
            umask: 0,
            flags: libc::O_WRONLY,
            who: Who::default(),
        },
        Op::Mkdir { parent: ROOT, name: b"dir".to_vec(), mode: 0o755, umask: 0, who: Who::default() },
        Op::Unlink { parent: ROOT, name: b"f".to_vec() },
        Op::Rmdir { parent: ROOT, name: b"f".to_vec() },
        Op::Rename { parent: ROOT, name: b"f".to_vec(), newparent: ROOT, newname: b"g".to_vec(), flags: 0 },
        Op::Symlink { parent: ROOT, name: b"l".to_vec(), target: b"f".to_vec(), who: Who::default() },
        Op::Link { ino: f.ino, newparent: ROOT, newname: b"h".to_vec() },
        Op::Setattr { ino: f.ino, fh: None, set: SetAttr { size: Some(0), ..SetAttr::default() } },
        Op::Mknod {
            parent: ROOT,
            name: b"p".to_vec(),
            mode: libc::S_IFIFO | 0o644,
            umask: 0,
            rdev: 0,
            who: Who::default(),
        },
        Op::Setxattr { ino: f.ino, name: b"user.a".to_vec(), value: b"1".to_vec(), flags: 0 },
        Op::Removexattr { ino: f.ino, name: b"user.a".to_vec() },
        Op::Fallocate { fh, offset: 0, length: 4096, mode: 0 },
    ];
    for op in changes {
        assert_eq!(s.handle(op.clone()), Err(libc::EROFS), "{op:?}");
    }
    assert_eq!(std::fs::read(lab.export().join("f")).unwrap(), b"data");
    assert_eq!(names(&s, ROOT), [".", "..", "f"]);
}

#[test]
fn open_flags_never_choose_what_is_opened() {
    let f =
        open_flags(libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_APPEND | libc::O_PATH);
    assert_eq!(f, OFlags::RDWR | OFlags::APPEND);
}

fn entry(r: Result<Reply>) -> Attr {
    match r {
        Ok(Reply::Entry(a)) => a,
        r => panic!("expected an entry: {r:?}"),
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test changes owners and needs root");
}

/// With the admin right on root's export, what a binder's process makes is that process's, as on a local disk
/// (the group a setgid directory's, setuid bits kept through the chown); without it, the exporting user's, never
/// setuid, and owners, modes, extended attributes and device nodes are refused. Needs root; under CI it runs and
/// fails loudly without it.
#[test]
fn what_a_binder_makes_is_the_askers_with_admin_and_the_exporters_without() {
    require_root();
    let lab = Lab::new();
    let s = lab.server(false);
    let nobody = Who { uid: 65534, gid: 65533 };
    let create = |s: &Server, name: &str, mode: u32| match s.handle(Op::Create {
        parent: ROOT,
        name: name.into(),
        mode,
        umask: 0o022,
        flags: libc::O_WRONLY,
        who: nobody,
    }) {
        Ok(Reply::Created { attr, fh }) => {
            s.handle(Op::Release { fh }).unwrap();
            attr
        }
        r => panic!("create answered {r:?}"),
    };
    let f = create(&s, "f", 0o4755);
    assert_eq!((f.uid, f.gid, f.mode & 0o7777), (65534, 65533, 0o4755), "the asker's, setuid kept");
    let d = entry(s.handle(Op::Mkdir { parent: ROOT, name: b"d".to_vec(), mode: 0o2775, umask: 0, who: nobody }));
    assert_eq!((d.uid, d.gid), (65534, 65533));
    std::os::unix::fs::chown(lab.export().join("d"), Some(65534), Some(4242)).unwrap();
    // mkdir(2) takes no setgid bit from its mode (a directory inherits it), so it is set here.
    std::fs::set_permissions(lab.export().join("d"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    let who = Who { uid: 1000, gid: 1000 };
    let l = entry(s.handle(Op::Symlink { parent: d.ino, name: b"l".to_vec(), target: b"x".to_vec(), who }));
    assert_eq!((l.uid, l.gid), (1000, 4242), "in a setgid directory the group is the directory's");
    let dev = Op::Mknod {
        parent: ROOT,
        name: b"null".to_vec(),
        mode: libc::S_IFCHR | 0o666,
        umask: 0,
        rdev: libc::makedev(1, 3),
        who,
    };
    assert_eq!(entry(s.handle(dev)).mode & libc::S_IFMT, libc::S_IFCHR);
    let set = SetAttr { mode: Some(0o600), uid: Some(7), gid: Some(8), ..SetAttr::default() };
    let a = match s.handle(Op::Setattr { ino: f.ino, fh: None, set }) {
        Ok(Reply::Attr(a)) => a,
        r => panic!("{r:?}"),
    };
    assert_eq!((a.uid, a.gid, a.mode & 0o7777), (7, 8, 0o600));

    let s = lab.server(false).with_admin(false);
    let f = create(&s, "g", 0o6755);
    assert_eq!((f.uid, f.gid, f.mode & 0o7777), (0, 0, 0o755), "the exporting user's, never setuid");
    for set in [
        SetAttr { mode: Some(0o777), ..SetAttr::default() },
        SetAttr { uid: Some(65534), ..SetAttr::default() },
        SetAttr { gid: Some(65534), ..SetAttr::default() },
    ] {
        assert_eq!(s.handle(Op::Setattr { ino: f.ino, fh: None, set: set.clone() }), Err(libc::EPERM), "{set:?}");
    }
    let xattr = Op::Setxattr { ino: f.ino, name: b"user.a".to_vec(), value: b"1".to_vec(), flags: 0 };
    assert_eq!(s.handle(xattr), Err(libc::EPERM));
    let dev = Op::Mknod {
        parent: ROOT,
        name: b"zero".to_vec(),
        mode: libc::S_IFCHR | 0o666,
        umask: 0,
        rdev: libc::makedev(1, 5),
        who,
    };
    assert_eq!(s.handle(dev), Err(libc::EPERM));
    let fifo = Op::Mknod { parent: ROOT, name: b"fifo".to_vec(), mode: libc::S_IFIFO | 0o6644, umask: 0, rdev: 0, who };
    let p = entry(s.handle(fifo));
    assert_eq!((p.mode & libc::S_IFMT, p.mode & 0o7777, p.uid), (libc::S_IFIFO, 0o644, 0));
    let sized = SetAttr { size: Some(3), ..SetAttr::default() };
    assert!(s.handle(Op::Setattr { ino: f.ino, fh: None, set: sized }).is_ok(), "write without admin still writes");
}

/// An export of uid 1000's bound by uid 2000: each is shown as the other, in attributes and in a chown, and
/// everyone else is left alone. Needs root (it makes files of other users'); under CI it runs and fails loudly
/// without it.
#[test]
fn the_exporting_and_the_binding_user_stand_for_each_other() {
    require_root();
    let lab = Lab::new();
    for (name, owner) in [("exporters", 1000), ("binders", 2000), ("others", 3000)] {
        std::fs::write(lab.export().join(name), b"").unwrap();
        std::os::unix::fs::chown(lab.export().join(name), Some(owner), Some(owner)).unwrap();
    }
    let s = lab.server(false).exported_by(1000, 1000);
    assert_eq!(s.handle(Op::Init { uid: 2000, gid: 2001 }), Ok(Reply::Init { uid: 1000, gid: 1000 }));
    let owner = |name| {
        let a = lookup(&s, ROOT, name).unwrap();
        (a.uid, a.gid)
    };
    assert_eq!(owner("exporters"), (2000, 2001));
    assert_eq!(owner("binders"), (1000, 2000), "uid 2000 here is the exporter's 1000 there; gid 2000 is no one's");
    assert_eq!(owner("others"), (3000, 3000));
    let f = lookup(&s, ROOT, "others").unwrap();
    let set = SetAttr { uid: Some(2000), gid: Some(2001), ..SetAttr::default() };
    let Ok(Reply::Attr(a)) = s.handle(Op::Setattr { ino: f.ino, fh: None, set }) else { panic!() };
    assert_eq!((a.uid, a.gid), (2000, 2001), "shown as the binder asked");
    let m = std::fs::metadata(lab.export().join("others")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000), "stored as the exporting user's");
}

/// A FIFO, socket or device node in the export is never opened by the exporter: a FIFO would hold a worker until
/// a writer came, and a device node would hand the binder the exporter's device. Needs root (it makes a device
/// node); under CI it runs and fails loudly without it.
#[test]
fn fifos_and_devices_in_the_export_are_never_opened_by_the_exporter() {
    require_root();
    let lab = Lab::new();
    let s = lab.server(false);
    let who = Who::default();
    for (name, mode, rdev) in [("fifo", libc::S_IFIFO, 0), ("null", libc::S_IFCHR, libc::makedev(1, 3))] {
        let made =
            entry(s.handle(Op::Mknod { parent: ROOT, name: name.into(), mode: mode | 0o666, umask: 0, rdev, who }));
        for flags in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR | libc::O_NONBLOCK] {
            assert_eq!(open(&s, made.ino, flags), Err(libc::ENXIO), "{name} {flags:#o}");
        }
        // Nor by an open that reads too: not on the spot, where a blocking open would hold the stream's reader.
        let read = Op::OpenRead { ino: made.ino, flags: libc::O_RDONLY, max: 1 << 17 };
        assert!(s.handle_now(&read).is_none(), "{name}: left to a worker");
        assert_eq!(s.handle(read), Err(libc::ENXIO), "{name}");
    }
    assert_eq!(s.held().1, 0, "nothing left open");
}

#[test]
fn extended_attributes_are_set_read_listed_and_removed() {
    let lab = Lab::new();
    std::fs::write(lab.export().join("f"), b"").unwrap();
    std::os::unix::fs::symlink("f", lab.export().join("l")).unwrap();
    let s = lab.server(false);
    let f = lookup(&s, ROOT, "f").unwrap().ino;
    let set = |name: &str, value: &[u8], flags| {
        s.handle(Op::Setxattr { ino: f, name: name.into(), value: value.to_vec(), flags })
    };
    let get = |name: &str, size| s.handle(Op::Getxattr { ino: f, name: name.into(), size });
    if set("user.probe", b"", 0) == Err(libc::EOPNOTSUPP) {
        panic!("the test directory's filesystem ({}) has no user xattrs", lab.export().display());
    }
    assert_eq!(set("user.colour", b"blue", libc::XATTR_CREATE), Ok(Reply::Empty));
    assert_eq!(set("user.colour", b"red", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(set("user.none", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    assert_eq!(get("user.colour", 0), Ok(Reply::Size(4)));
    assert_eq!(get("user.colour", 64), Ok(Reply::Data(b"blue".to_vec())));
    assert_eq!(get("user.colour", 2), Err(libc::ERANGE));
    assert_eq!(get("user.none", 64), Err(libc::ENODATA));
    let Ok(Reply::Data(list)) = s.handle(Op::Listxattr { ino: f, size: 1024 }) else { panic!() };
    let names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    assert!(names.contains(&&b"user.colour"[..]) && names.contains(&&b"user.probe"[..]), "{names:?}");
    assert_eq!(s.handle(Op::Removexattr { ino: f, name: b"user.colour".to_vec() }), Ok(Reply::Empty));
    assert_eq!(get("user.colour", 64), Err(libc::ENODATA));
    assert_eq!(set("", b"x", 0), Err(libc::ERANGE), "an empty name");
    let l = lookup(&s, ROOT, "l").unwrap().ino;
    assert_eq!(s.handle(Op::Listxattr { ino: l, size: 1024 }), Ok(Reply::Data(vec![])));
    assert_eq!(s.handle(Op::Getxattr { ino: l, name: b"user.colour".to_vec(), size: 64 }), Err(libc::ENODATA));
    let on_link = Op::Setxattr { ino: l, name: b"user.colour".to_vec(), value: b"x".to_vec(), flags: 0 };
    assert_eq!(s.handle(on_link), Err(libc::EPERM));
    assert_eq!(std::fs::read(lab.export().join("f")).unwrap(), b"", "the symlink's target was left alone");
}

#[test]
fn space_is_allocated_and_punched_and_holes_are_found() {
    let lab = Lab::new();
    std::fs::write(lab.export().join("f"), b"").unwrap();
    let s = lab.server(false);
    let f = lookup(&s, ROOT, "f").unwrap().ino;
    let fh = open(&s, f, libc::O_RDWR).unwrap();
    assert_eq!(s.handle(Op::Fallocate { fh, offset: 0, length: 1 << 20, mode: 0 }), Ok(Reply::Empty));
    assert_eq!(std::fs::metadata(lab.export().join("f")).unwrap().len(), 1 << 20);
    let data = vec![7u8; 4096];
    s.handle(Op::Write { fh, offset: 8 << 20, data }).unwrap();
    let seek = |offset, whence| s.handle(Op::Lseek { fh, offset, whence });
    let Ok(Reply::Offset(hole)) = seek(0, libc::SEEK_HOLE) else { panic!() };
    assert!(hole < 8 << 20, "a hole between the allocated start and the data at 8 MiB: {hole}");
    assert_eq!(seek(hole as i64, libc::SEEK_DATA), Ok(Reply::Offset(8 << 20)));
    assert_eq!(seek(100 << 20, libc::SEEK_DATA), Err(libc::ENXIO), "past the end");
    assert_eq!(seek(0, libc::SEEK_SET), Err(libc::EINVAL), "only SEEK_DATA and SEEK_HOLE are the exporter's");
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(s.handle(Op::Fallocate { fh, offset: 8 << 20, length: 4096, mode: punch }), Ok(Reply::Empty));
    assert_eq!(s.handle(Op::Fallocate { fh, offset: 0, length: 1, mode: 1 << 30 }), Err(libc::EOPNOTSUPP));
    s.handle(Op::Release { fh }).unwrap();
}

/// What the binder changes itself is not told back to it (its own echo would drop its fresh caches); what others
/// change on the exporter is, as names in a directory and as inodes the binder knows.
#[test]
fn changes_by_others_are_told_and_the_binders_own_are_not() {
    let lab = Lab::new();
    std::fs::create_dir(lab.export().join("d")).unwrap();
    std::fs::write(lab.export().join("d/theirs"), b"1").unwrap();
    let s = lab.server(false);
    assert!(s.watch_changes().is_some(), "inotify is there");
    let d = lookup(&s, ROOT, "d").unwrap().ino;
    let theirs = lookup(&s, d, "theirs").unwrap().ino;
    let who = Who::default();
    let Ok(Reply::Created { attr, fh }) =
        s.handle(Op::Create { parent: d, name: b"mine".to_vec(), mode: 0o644, umask: 0, flags: libc::O_RDWR, who })
    else {
        panic!()
    };
    s.handle(Op::Write { fh, offset: 0, data: vec![1; 4096] }).unwrap();
    let set = SetAttr { mode: Some(0o600), mtime: Some(Time::Now), ..SetAttr::default() };
    s.handle(Op::Setattr { ino: attr.ino, fh: Some(fh), set }).unwrap();
    s.handle(Op::Release { fh }).unwrap();
    s.handle(Op::Mkdir { parent: d, name: b"sub".to_vec(), mode: 0o755, umask: 0, who }).unwrap();
    let rename = Op::Rename { parent: d, name: b"mine".to_vec(), newparent: d, newname: b"moved".to_vec(), flags: 0 };
    s.handle(rename).unwrap();
    s.handle(Op::Unlink { parent: d, name: b"moved".to_vec() }).unwrap();
    assert_eq!(s.changes(), [], "the binder's own changes are not told back");

    std::fs::write(lab.export().join("d/theirs"), b"2").unwrap();
    std::fs::write(lab.export().join("d/new"), b"").unwrap();
    let told = s.changes();
    for c in
        [Change::Inode { ino: theirs }, Change::Entry { parent: d, name: b"new".to_vec() }, Change::Inode { ino: d }]
    {
        assert!(told.contains(&c), "{c:?} is told: {told:?}");
    }
    assert_eq!(s.changes(), [], "each is told once");
}

#[test]
fn a_small_file_is_read_whole_with_its_open_and_a_larger_one_is_not() {
    let lab = Lab::new();
    std::fs::write(lab.export().join("small"), b"small file").unwrap();
    std::fs::write(lab.export().join("empty"), b"").unwrap();
    std::fs::write(lab.export().join("large"), vec![7u8; 100]).unwrap();
    std::fs::create_dir(lab.export().join("dir")).unwrap();
    let s = lab.server(false);
    let ino = |name| lookup(&s, ROOT, name).unwrap().ino;
    let (small, empty, large, dir) = (ino("small"), ino("empty"), ino("large"), ino("dir"));
    let open_read = |ino, flags, max| s.handle(Op::OpenRead { ino, flags, max });
    for (ino, content) in [(small, &b"small file"[..]), (empty, b"")] {
        // On the spot (the file is in the page cache, just written) and by a worker alike.
        let now = s.handle_now(&Op::OpenRead { ino, flags: libc::O_RDONLY, max: 64 });
        for r in [now.expect("cached: answered on the spot"), open_read(ino, libc::O_RDONLY, 64)] {
            let Ok(Reply::OpenedWith { fh, whole: true, data }) = r else { panic!("{r:?}") };
            assert_eq!(data, content);
            s.handle(Op::Release { fh }).unwrap();
        }
    }
    // Larger than asked, or not a regular file: opened, nothing read.
    for (ino, flags) in [(large, libc::O_RDONLY), (dir, libc::O_RDONLY | libc::O_DIRECTORY)] {
        let r = open_read(ino, flags, 64);
        let Ok(Reply::OpenedWith { fh, whole: false, data }) = r else { panic!("{r:?}") };
        assert!(data.is_empty());
        s.handle(Op::Release { fh }).unwrap();
    }
    // Exactly as large as asked: whole.
    let Ok(Reply::OpenedWith { fh, whole: true, data }) = open_read(large, libc::O_RDONLY, 100) else { panic!() };
    assert_eq!(data.len(), 100);
    s.handle(Op::Release { fh }).unwrap();
    // Never for writing: EINVAL here, EROFS on a read-only export, and never on the spot.
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(open_read(small, flags, 64), Err(libc::EINVAL), "{flags:#o}");
        assert!(s.handle_now(&Op::OpenRead { ino: small, flags, max: 64 }).is_none());
        assert_eq!(lab.server(true).handle(Op::OpenRead { ino: ROOT, flags, max: 64 }), Err(libc::EROFS));
    }
    assert_eq!(std::fs::read(lab.export().join("small")).unwrap(), b"small file", "nothing truncated");
    assert_eq!(s.held().1, 0, "every handle released");
}

/// A binder that never forgets (a hostile one) plays against a node whose fs binds may hold 40 descriptors: its
/// lookups and opens past the budget get ENFILE, not descriptors, so the node's other work keeps its own; another
/// bind drawing on the same budget is refused too until the first gives some back; a forget, a release and the
/// end of a bind give back what they held.
#[test]
fn binds_together_hold_no_more_descriptors_than_the_node_gives_them() {
    let lab = Lab::new();
    for i in 0..60 {
        std::fs::write(lab.export().join(format!("f{i}")), b"x").unwrap();
    }
    let budget = Descriptors::new(40);
    let hostile = lab.server(false).with_descriptors(Arc::clone(&budget));
    let other = lab.server(true).with_descriptors(Arc::clone(&budget));
    let inos: Vec<u64> = (0..40).map(|i| lookup(&hostile, ROOT, &format!("f{i}")).unwrap().ino).collect();
    for i in 40..60 {
        assert_eq!(lookup(&hostile, ROOT, &format!("f{i}")), Err(libc::ENFILE), "past the budget");
    }
    assert_eq!((inos.len(), budget.held()), (40, 40));
    assert_eq!(lookup(&hostile, ROOT, "f0").map(|a| a.ino), Ok(inos[0]), "a name it holds is found again");
    assert_eq!(open(&hostile, inos[0], libc::O_RDONLY), Err(libc::ENFILE), "an open needs a descriptor too");
    assert_eq!(lookup(&other, ROOT, "f50"), Err(libc::ENFILE), "the budget is the node's, shared by its binds");

    // Give some back: two forgets (f0 was looked up twice), and the other bind gets its file and opens it.
    hostile.handle(Op::Forget { ino: inos[0], n: 2 }).unwrap();
    hostile.handle(Op::Forget { ino: inos[1], n: 1 }).unwrap();
    assert_eq!(budget.held(), 38);
    let f = lookup(&other, ROOT, "f50").unwrap();
    let fh = open(&other, f.ino, libc::O_RDONLY).unwrap();
    assert_eq!(budget.held(), 40);
    other.handle(Op::Release { fh }).unwrap();
    assert_eq!(budget.held(), 39);
    drop(hostile);
    assert_eq!(budget.held(), 1, "a bind's end gives back all it held");
    drop(other);
    assert_eq!(budget.held(), 0);
}
