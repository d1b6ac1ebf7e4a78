//! The local user as an attacker (issue 10, finding 9), with real credentials: a real `metac node` runs as root
//! with API group 4242 (a gid, so that no test edits /etc/group), and the real `metac` CLI runs as uid 65534 through
//! `setpriv`, in the group or outside it. The kernel, not the test, says who each caller is.
//!
//! Needs root (a lab, and other users' identities); under CI these run and fail loudly without it.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use metac_tests::{require_root, Lab, Node};
use serde_json::Value;

const GROUP: &str = "4242";
const USER: u32 = 65534;
/// uid 65534 in the API group.
const MEMBER: &[&str] = &["--reuid=65534", "--regid=65534", "--groups=4242"];
/// uid 65534 in no group but its own.
const OUTSIDER: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];
/// The outsider with CAP_DAC_OVERRIDE: the socket's mode does not stop it, so only the node's own check can.
const OUTSIDER_PAST_THE_MODE: &[&str] =
    &["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_override", "--ambient-caps=+dac_override"];

/// A node of root's with API group 4242, and a directory of files: `mine.img` (the user's), `roots.img` (root's,
/// 0600) and `public.img` (root's, 0644).
struct Shared {
    node: Node,
    files: PathBuf,
    _lab: Lab,
}

impl Shared {
    fn start() -> Shared {
        require_root();
        let lab = Lab::new(1).unwrap();
        let host = lab.host(1).clone();
        // The user reaches the socket and the files through these: make sure, whatever the umask.
        for d in [host.dir().parent().unwrap(), host.dir()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let node = host.start_node(&["--api-group", GROUP, "--no-overlay", "--no-mdns"]).unwrap();
        let files = host.dir().join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, owner, mode) in [("mine.img", USER, 0o644), ("roots.img", 0, 0o600), ("public.img", 0, 0o644)] {
            let p = files.join(name);
            metac_tests::write_pseudo_random(&p, 1 << 20).unwrap();
            std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Shared { node, files, _lab: lab }
    }

    fn file(&self, name: &str) -> String {
        self.files.join(name).display().to_string()
    }

    /// `metac args...` as `who` (setpriv arguments), any exit status.
    fn run_as(&self, who: &[&str], args: &[&str]) -> Output {
        self.node.host().metac_as(who, args).unwrap()
    }

    /// Its stdout; it must succeed.
    fn ok_as(&self, who: &[&str], args: &[&str]) -> String {
        let o = self.run_as(who, args);
        assert!(o.status.success(), "`metac {}` as {who:?} failed: {}", args.join(" "), text(&o.stderr));
        text(&o.stdout)
    }

    /// Its error message; it must fail.
    fn refused_as(&self, who: &[&str], args: &[&str]) -> String {
        let o = self.run_as(who, args);
        assert!(!o.status.success(), "`metac {}` as {who:?} succeeded: {}", args.join(" "), text(&o.stdout));
        text(&o.stderr)
    }

    /// `metac --json args...` as root, parsed.
    fn root_json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = ["--json"].iter().chain(args).copied().collect();
        let o = self.node.host().metac(&args).unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn root(&self, args: &[&str]) -> String {
        text(&self.node.host().metac(args).unwrap().stdout)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o777)
}

/// Outside the group, the socket's mode refuses the user and the CLI says which group it takes; a user past the
/// mode (CAP_DAC_OVERRIDE) meets the node's own check of its credentials, 403 for every request, and nothing is
/// done for it.
#[test]
fn a_user_outside_the_api_group_is_refused() {
    let s = Shared::start();
    let sock = s.node.socket();
    assert_eq!(owner_and_mode(&sock), (0, 4242, 0o660), "the socket is root's and the group's");
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_socket());

    let e = s.refused_as(OUTSIDER, &["status"]);
    assert!(e.contains("permission denied on") && e.contains("only root and members of group 4242"), "{e}");
    assert!(!e.contains("not running"), "the CLI does not blame a missing node: {e}");

    let e = s.refused_as(OUTSIDER_PAST_THE_MODE, &["status"]);
    assert!(e.contains("uid 65534 is not root or in group 4242"), "{e}");
    let e = s.refused_as(OUTSIDER_PAST_THE_MODE, &["file", "export", "--read-only", &s.file("public.img")]);
    assert!(e.contains("uid 65534 is not root or in group 4242"), "{e}");
    assert_eq!(s.root_json(&["exports"]), serde_json::json!([]), "nothing was exported");
    assert!(s.node.log().contains("refused an API connection"), "the node logs the refusal");
}

/// A member lists and exports a file it may read and write; the export is recorded as its own, serves its bytes,
/// and is opened again as the member after a restart: once the file is no longer the member's, it is refused.
#[test]
fn a_member_lists_and_exports_a_file_it_can_read() {
    let mut s = Shared::start();
    assert_eq!(s.ok_as(MEMBER, &["exports"]), "(none)");
    s.ok_as(MEMBER, &["status"]);
    let r = s.ok_as(MEMBER, &["file", "export", &s.file("mine.img")]);
    assert!(r.starts_with("ref://"), "{r}");
    let exports = s.root_json(&["exports"]);
    assert_eq!(exports[0]["source"], s.file("mine.img"));
    assert_eq!(exports[0]["owner"], USER);
    // A file it may only read, it exports read-only.
    let ro = s.ok_as(MEMBER, &["file", "export", "--read-only", &s.file("public.img")]);
    assert!(ro.starts_with("ref://"), "{ro}");
    let mine: Value = serde_json::from_str(&s.ok_as(MEMBER, &["--json", "ref", "ls"])).unwrap();
    let refs: Vec<&str> = mine.as_array().unwrap().iter().map(|t| t["ref"].as_str().unwrap()).collect();
    assert!(refs.contains(&r.as_str()) && refs.contains(&ro.as_str()), "its own refs are shown to it: {refs:?}");

    // `file cat` into a directory of the member's (the harness reads stdout as text).
    let data = std::fs::read(s.files.join("mine.img")).unwrap();
    let out = s.node.host().dir().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(USER), Some(USER)).unwrap();
    let copy = out.join("copy.img");
    let cat = |s: &Shared| s.run_as(MEMBER, &["file", "cat", &r, "-o", copy.to_str().unwrap()]);
    let o = cat(&s);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::read(&copy).unwrap() == data, "the export serves the file");
    s.node.restart().unwrap();
    std::fs::remove_file(&copy).unwrap();
    assert!(cat(&s).status.success() && std::fs::read(&copy).unwrap() == data, "reopened as its owner");
    // The file is taken from the member: after the next restart the node, opening it as the member, cannot.
    std::os::unix::fs::chown(s.files.join("mine.img"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(s.files.join("mine.img"), std::fs::Permissions::from_mode(0o600)).unwrap();
    s.node.restart().unwrap();
    let e = text(&cat(&s).stderr);
    assert!(e.contains("uid 65534 may not write") && e.contains("the node opens a file as the user"), "{e}");
}

/// Exporting root's 0600 file as a member is refused, because the node opens it as the member; nothing is
/// exported. A file the member may only read is not exported read-write either.
#[test]
fn a_member_cannot_export_a_file_it_may_not_read() {
    let s = Shared::start();
    let e = s.refused_as(MEMBER, &["file", "export", &s.file("roots.img")]);
    assert!(e.contains("uid 65534 may not read") && e.contains(&s.file("roots.img")), "{e}");
    let e = s.refused_as(MEMBER, &["file", "export", "--read-only", &s.file("roots.img")]);
    assert!(e.contains("uid 65534 may not read"), "{e}");
    let e = s.refused_as(MEMBER, &["file", "export", &s.file("public.img")]);
    assert!(e.contains("uid 65534 may not write") && e.contains("--read-only"), "{e}");
    assert_eq!(s.root_json(&["exports"]), serde_json::json!([]), "nothing was exported");
    // Root may, and the same file is then root's export.
    s.root(&["file", "export", &s.file("roots.img")]);
    assert_eq!(s.root_json(&["exports"])[0]["owner"], 0);
}

/// A member cannot unexport root's export or revoke its ref, does not see root's refs in listings, and cannot
/// change the node's overlay policy.
#[test]
fn a_member_cannot_unexport_roots_export() {
    let s = Shared::start();
    let root_ref = s.root(&["file", "export", &s.file("roots.img")]);
    let id = s.root_json(&["exports"])[0]["id"].as_str().unwrap().to_string();

    let e = s.refused_as(MEMBER, &["unexport", &id]);
    assert!(e.contains("belongs to uid 0") && e.contains("uid 65534 is neither"), "{e}");
    let e = s.refused_as(MEMBER, &["ref", "revoke", &root_ref]);
    assert!(e.contains("belongs to uid 0"), "{e}");
    let listed: Value = serde_json::from_str(&s.ok_as(MEMBER, &["--json", "ref", "ls"])).unwrap();
    assert_eq!(listed[0]["owner"], 0);
    assert_eq!(listed[0]["ref"], "", "root's ref (a capability) is not shown to another user");
    let e = s.refused_as(MEMBER, &["overlay", "allow", "22"]);
    assert!(e.contains("only root may change it"), "{e}");

    let exports = s.root_json(&["exports"]);
    assert_eq!(exports.as_array().unwrap().len(), 1, "root's export is still there");
    assert_eq!(s.root_json(&["ref", "ls"])[0]["revoked"], false);
    s.root(&["unexport", &id]);
}

/// A member's file bind makes its socket as the member: by default in a directory of the member's own, and
/// nowhere the member may not write. The member reads the export through it with a real NBD client, and no one
/// but root may unbind it; the member may not unbind root's.
#[test]
fn a_members_file_bind_socket_is_owned_by_it() {
    let s = Shared::start();
    let r = s.ok_as(MEMBER, &["file", "export", &s.file("mine.img")]);
    let bound: Value = serde_json::from_str(&s.ok_as(MEMBER, &["--json", "file", "bind", &r])).unwrap();
    assert_eq!((bound["state"].as_str(), bound["owner"].as_u64()), (Some("up"), Some(USER as u64)), "{bound}");
    let sock = PathBuf::from(bound["target"].as_str().unwrap());
    assert_eq!(sock.parent().unwrap(), s.node.host().dir().join("metac-binds/uid-65534"));
    assert_eq!(owner_and_mode(&sock), (USER, USER, 0o600), "the socket is the member's");
    assert_eq!(owner_and_mode(sock.parent().unwrap()), (USER, USER, 0o700), "in a directory of its own");
    assert_eq!(owner_and_mode(&s.node.host().dir().join("metac-binds")).2, 0o711);

    let url = format!("nbd+unix:///?socket={}", sock.display());
    let o = s.node.host().run("setpriv", MEMBER.iter().copied().chain(["nbdinfo", "--size", &url])).unwrap();
    assert_eq!(text(&o.stdout), (1u64 << 20).to_string(), "the member reads the export through its socket");

    // Not where the member may not write: root's state directory.
    let theirs = s.node.state_dir().join("x.sock");
    let e = s.refused_as(MEMBER, &["file", "bind", "-U", theirs.to_str().unwrap(), &r]);
    assert!(e.contains("cannot listen on") && e.contains("ermission denied"), "{e}");
    assert!(!theirs.exists());

    // Root's bind is root's.
    let root_sock = s.node.host().dir().join("root.sock");
    s.root(&["file", "bind", "-U", root_sock.to_str().unwrap(), &r]);
    assert_eq!(owner_and_mode(&root_sock).0, 0);
    let e = s.refused_as(MEMBER, &["unbind", root_sock.to_str().unwrap()]);
    assert!(e.contains("belongs to uid 0"), "{e}");
    let binds: Value = serde_json::from_str(&s.ok_as(MEMBER, &["--json", "binds"])).unwrap();
    let roots = binds.as_array().unwrap().iter().find(|b| b["owner"] == 0).unwrap();
    assert_eq!(roots["ref"], "", "root's bind's ref is not shown to another user");

    s.ok_as(MEMBER, &["unbind", sock.to_str().unwrap()]);
    assert!(!sock.exists(), "the member's socket is removed (as the member)");
    s.root(&["unbind", root_sock.to_str().unwrap()]);
}
