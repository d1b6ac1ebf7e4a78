//! The file kind between real hosts: `metac file export` on one netns host, `metac file bind` on another, and
//! real NBD clients on the bind (nbdinfo, nbdcopy, qemu-io, qemu-img). Build the binary first (`cargo build --bin
//! metac`); the tests need root and never skip.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use metac_tests::{output, require_root, wait_until, write_pseudo_random, Host, Lab};

/// `program args` in host `h`, any exit status (at most 5 minutes).
fn run(h: &Host, program: &str, args: &[&str]) -> Output {
    output(&mut h.cmd(program, args), Duration::from_secs(300)).unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn run_ok(h: &Host, program: &str, args: &[&str]) -> String {
    let o = run(h, program, args);
    assert!(
        o.status.success(),
        "`{program} {}` on host {} failed: {}{}",
        args.join(" "),
        h.index(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let o = output(std::process::Command::new("sha256sum").arg(path), Duration::from_secs(120)).unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
}

/// Binds `r` on `h` at a socket in its directory and waits until the bind is up; returns the socket's NBD URI.
fn bind(h: &Host, r: &str, name: &str, extra: &[&str]) -> String {
    let sock = h.dir().join(format!("{name}.sock"));
    let mut args = vec!["file", "bind", r, "-U", sock.to_str().unwrap()];
    args.extend_from_slice(extra);
    h.metac_ok(&args);
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let v = h.metac_json(&["file", "ls"]);
        Ok(v.as_array().unwrap().iter().any(|b| b["target"] == sock.to_str().unwrap() && b["state"] == "up"))
    })
    .unwrap_or_else(|e| panic!("the bind comes up: {e}; {}", h.metac_ok(&["file", "ls"])));
    format!("nbd+unix:///?socket={}", sock.display())
}

/// A 1 GiB export read across hosts by nbdcopy equals its source; nbdinfo shows its size; qemu-io writes patterns
/// at several offsets and reads them back; qemu-img converts from the bind; several clients use one bind at once.
#[test]
fn real_nbd_clients_use_a_bind_across_hosts() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let big = a.dir().join("big.img");
    write_pseudo_random(&big, 1 << 30).unwrap();
    let r = a.metac_ok(&["file", "export", big.to_str().unwrap()]);
    let uri = bind(b, r.trim(), "big", &[]);

    let info: serde_json::Value = serde_json::from_str(&run_ok(b, "nbdinfo", &["--json", &uri])).unwrap();
    let e = &info["exports"][0];
    assert_eq!((e["export-size"].as_u64(), e["is_read_only"].as_bool()), (Some(1 << 30), Some(false)), "{info}");
    let copy = b.dir().join("copy.img");
    run_ok(b, "nbdcopy", &[&uri, copy.to_str().unwrap()]);
    assert_eq!(sha256(&copy), sha256(&big), "nbdcopy of the 1 GiB export equals its source");
    std::fs::remove_file(&copy).unwrap();

    // qemu-io: patterns at the start, across a 1 MiB boundary, and at the end; read back through another
    // connection, and found in the exporter's file.
    let writes = [(0u64, 4096u32, 0x11u8), ((1 << 20) - 512, 8192, 0x22), ((1 << 30) - 65536, 65536, 0x33)];
    let mut args = vec!["-f".to_string(), "raw".into()];
    for (off, len, p) in writes {
        args.extend(["-c".into(), format!("write -P {p:#x} {off} {len}")]);
    }
    args.extend(["-c".into(), "flush".into(), uri.clone()]);
    run_ok(b, "qemu-io", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args = vec!["-r".to_string(), "-f".into(), "raw".into()];
    for (off, len, p) in writes {
        args.extend(["-c".into(), format!("read -P {p:#x} {off} {len}")]);
    }
    args.push(uri.clone());
    let out = run_ok(b, "qemu-io", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let data = std::fs::read(&big).unwrap();
    for (off, len, p) in writes {
        let range = &data[off as usize..off as usize + len as usize];
        assert!(range.iter().all(|&x| x == p), "the pattern {p:#x} at {off} is in the exporter's file");
    }

    // qemu-img convert from the bind, while two nbdcopy readers use it too: three clients on one bind.
    let qcow = b.dir().join("copy.qcow2");
    let readers: Vec<_> =
        (0..2).map(|_| b.spawn("nbdcopy", [uri.as_str(), "null:"]).expect("nbdcopy starts")).collect();
    run_ok(b, "qemu-img", &["convert", "-f", "raw", "-O", "qcow2", &uri, qcow.to_str().unwrap()]);
    for p in readers {
        let status = p.wait_timeout(Duration::from_secs(300)).expect("nbdcopy ends");
        assert!(status.success(), "a reader beside qemu-img succeeds");
    }
    run_ok(a, "qemu-img", &["compare", "-f", "raw", "-F", "qcow2", big.to_str().unwrap(), qcow.to_str().unwrap()]);
}

/// A read-only ref gives a read-only export: nbdinfo says so, qemu-io will not open it for writing, nbdcopy into
/// it fails, and the exporter's file is unchanged; `--read-only` makes a read-only endpoint of a writable ref. (A
/// client that writes anyway gets EPERM from the endpoint and the exporter: the unit and protocol tests send one.)
#[test]
fn a_read_only_ref_refuses_writes() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let img = a.dir().join("ro.img");
    write_pseudo_random(&img, 8 << 20).unwrap();
    let before = sha256(&img);
    let ro = a.metac_ok(&["file", "export", img.to_str().unwrap(), "--read-only", "--name", "ro"]);
    let rw = a.metac_ok(&["file", "export", img.to_str().unwrap(), "--name", "rw"]);
    for (name, r, extra) in [("ro", ro.trim(), &[][..]), ("local-ro", rw.trim(), &["--read-only"][..])] {
        let uri = bind(b, r, name, extra);
        let info: serde_json::Value = serde_json::from_str(&run_ok(b, "nbdinfo", &["--json", &uri])).unwrap();
        assert_eq!(info["exports"][0]["is_read_only"].as_bool(), Some(true), "{name}: {info}");
        let o = run(b, "qemu-io", &["-f", "raw", "-c", "write -P 0x44 0 4096", &uri]);
        let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(said.contains("Permission denied") || said.contains("read-only"), "{name}: {said}");
        let o = run(b, "nbdcopy", &["--synchronous", img.to_str().unwrap(), &uri]);
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && said.contains("read-only"), "{name}: nbdcopy into a read-only bind: {said}");
    }
    assert_eq!(sha256(&img), before, "the exporter's file is unchanged");
}

/// The exporter's node is killed with SIGKILL in the middle of a copy into a bind and started again: the copy
/// pauses, goes on, and every byte is in the exporter's file, flushed.
#[test]
fn an_exporter_killed_mid_copy_does_not_corrupt_data() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let mut nodes = lab.start_nodes(&[]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let img = a.dir().join("target.img");
    std::fs::write(&img, vec![0u8; 128 << 20]).unwrap();
    let source = b.dir().join("source.img");
    write_pseudo_random(&source, 128 << 20).unwrap();
    let r = a.metac_ok(&["file", "export", img.to_str().unwrap()]);
    let uri = bind(b, r.trim(), "target", &[]);
    let copy = b
        .spawn("nbdcopy", ["--flush", "--request-size=65536", "--requests=4", source.to_str().unwrap(), &uri])
        .expect("nbdcopy starts");
    let bytes = || b.metac_json(&["file", "ls"])[0]["bytes"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(60), Duration::from_millis(20), || Ok(bytes() > 8 << 20)).expect("the copy runs");
    nodes[0].kill9();
    assert!(copy.is_running(), "the copy was under way when the exporter was killed");
    std::thread::sleep(Duration::from_millis(500));
    nodes[0].restart().unwrap();
    let status = copy.wait_timeout(Duration::from_secs(300)).expect("nbdcopy ends");
    assert!(status.success(), "nbdcopy went on through the exporter's restart");
    assert_eq!(sha256(&img), sha256(&source), "every byte is in the exporter's file");
}

/// The figures of `metac status`'s data line: (direct port, streams opened direct, opened over the mesh, accepted
/// direct).
fn transport_figures(h: &Host) -> (u16, u64, u64, u64) {
    let v = h.metac_json(&["status"]);
    let line = v["transport"].as_str().unwrap_or_default().to_string();
    let nums: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    assert!(line.starts_with("direct on tcp port") && nums.len() == 4, "host {}: {line:?}", h.index());
    (nums[0] as u16, nums[1], nums[2], nums[3])
}

/// A bind's data goes on a direct connection of its own between the two hosts (sealed, keyed over the mesh); where
/// a firewall on the exporter drops the direct port, a new bind goes over the mesh stream instead, and both carry
/// the same bytes.
#[test]
fn binds_go_direct_and_over_the_mesh_where_a_firewall_drops_the_direct_port() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let img = a.dir().join("direct.img");
    write_pseudo_random(&img, 64 << 20).unwrap();
    let want = sha256(&img);
    let r = a.metac_ok(&["file", "export", img.to_str().unwrap()]);
    let copy = b.dir().join("copy.img");

    let uri = bind(b, r.trim(), "direct", &[]);
    run_ok(b, "nbdcopy", &[&uri, copy.to_str().unwrap()]);
    assert_eq!(sha256(&copy), want, "the copy over the direct connection equals its source");
    let (port, direct, mesh, _) = transport_figures(b);
    assert!(direct >= 1 && mesh == 0, "host 2 opened its bind direct: {direct} direct, {mesh} over the mesh");
    let (port_a, _, _, accepted) = transport_figures(a);
    assert!(accepted >= 1, "host 1 accepted it direct");
    assert!(port > 0 && port_a > 0);
    b.metac_ok(&["file", "unbind", b.dir().join("direct.sock").to_str().unwrap()]);

    // Host 1's own firewall drops its direct port.
    run_ok(a, "nft", &["add table inet mfw"]);
    run_ok(a, "nft", &["add chain inet mfw input { type filter hook input priority 0 ; }"]);
    run_ok(a, "nft", &[&format!("add rule inet mfw input tcp dport {port_a} drop")]);
    std::fs::remove_file(&copy).unwrap();
    let uri = bind(b, r.trim(), "mesh", &[]);
    run_ok(b, "nbdcopy", &[&uri, copy.to_str().unwrap()]);
    assert_eq!(sha256(&copy), want, "the copy over the mesh equals its source");
    let (_, direct_after, mesh, _) = transport_figures(b);
    assert!(mesh >= 1 && direct_after == direct, "host 2 fell back to the mesh: {direct_after} direct, {mesh} mesh");
}
