//! Tests of the netns lab harness itself: reachability, link and partition faults, loss, teardown (also after a
//! panic and after a crashed run), processes in hosts, and the node lifecycle against a stand-in `metac`.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use metac_tests::{output, require_root, wait_until, Error, Host, Lab};

/// Names `ip netns list` shows that belong to lab `id`.
fn namespaces_of(id: &str) -> Vec<String> {
    let o = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let list = String::from_utf8_lossy(&o.stdout).into_owned();
    let prefix = format!("{id}-");
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect()
}

fn netns_inode(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).expect("netns file").ino()
}

fn pid_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// `ping` from `from` with extra args; returns (transmitted, received).
fn ping_counts(from: &Host, args: &[&str]) -> (u32, u32) {
    let o = output(&mut from.cmd("ping", args), Duration::from_secs(30)).unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("ping output: {out}"));
    let num = |word: &str| -> u32 {
        let before = line.split(word).next().unwrap();
        before.trim_end().rsplit([' ', ',']).next().unwrap().parse().unwrap()
    };
    (num(" packets transmitted"), num(" received"))
}

/// Link-local addresses that answer a ping of all-nodes multicast (ff02::1) from `from` within 2 s.
fn multicast_responders(from: &Host) -> BTreeSet<String> {
    let o = output(
        &mut from.cmd("ping", ["-6", "-n", "-c", "100", "-i", "0.2", "-w", "2", "ff02::1%eth0"]),
        Duration::from_secs(30),
    )
    .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(" bytes from ").nth(1)?.split('%').next().map(String::from))
        .collect()
}

#[test]
fn three_hosts_reach_each_other() {
    require_root();
    let lab = Lab::new(3).unwrap();
    assert_eq!(lab.len(), 3);
    assert_eq!(lab.host(1).addr(), lab.hosts()[0].addr());
    for a in lab.hosts() {
        let shown = a.run("ip", ["-6", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("{}/64", a.addr())));
        for b in lab.hosts().iter().filter(|b| b.index() != a.index()) {
            assert!(a.ping(b.addr()).unwrap(), "host {} cannot reach host {} ({})", a.index(), b.index(), b.addr());
        }
    }
}

#[test]
fn link_down_cuts_a_host_off_and_link_up_restores_it() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    lab.link_down(3).unwrap();
    assert!(!h1.ping(h3.addr()).unwrap(), "host 3's link is down");
    assert!(h1.ping(h2.addr()).unwrap(), "hosts 1 and 2 are unaffected");
    let kept = h3.run("ip", ["-6", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&kept.stdout).contains(&h3.addr().to_string()), "host 3 keeps its address");
    lab.link_up(3).unwrap();
    let took = wait_until(Duration::from_secs(10), Duration::from_millis(100), || h1.ping(h3.addr())).unwrap();
    assert!(h3.ping(h2.addr()).unwrap());
    eprintln!("reachable again {took:?} after link_up");
}

#[test]
fn partition_blocks_unicast_and_multicast_between_groups_until_heal() {
    require_root();
    let lab = Lab::new(4).unwrap();
    let h = |i| lab.host(i);
    let all_before = multicast_responders(h(1));
    assert!(all_before.len() >= 3, "all-nodes multicast reaches hosts 2..4 before the partition: {all_before:?}");

    lab.partition(&[1, 2], &[3]).unwrap();
    assert!(!h(1).ping(h(3).addr()).unwrap());
    assert!(!h(3).ping(h(2).addr()).unwrap());
    assert!(h(1).ping(h(2).addr()).unwrap(), "same side");
    assert!(h(4).ping(h(1).addr()).unwrap() && h(4).ping(h(3).addr()).unwrap(), "host 4 is in neither group");
    let during = multicast_responders(h(1));
    assert_eq!(during.len(), all_before.len() - 1, "host 3 no longer answers multicast: {during:?}");

    lab.heal().unwrap();
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || h(1).ping(h(3).addr())).unwrap();
    assert!(h(3).ping(h(2).addr()).unwrap());
    assert!(matches!(lab.partition(&[1], &[1, 2]), Err(Error::InvalidArg(_))));
}

#[test]
fn loss_drops_about_the_given_share_and_zero_removes_it() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let to2 = lab.host(2).addr().to_string();
    lab.loss(2, 50.0).unwrap();
    let (sent, got) = ping_counts(lab.host(1), &["-6", "-n", "-q", "-c", "60", "-i", "0.01", "-W", "1", &to2]);
    assert_eq!(sent, 60);
    assert!((8..=52).contains(&got), "50% loss on host 2's replies, yet {got}/60 came back");
    lab.loss(2, 0.0).unwrap();
    let (_, got) = ping_counts(lab.host(1), &["-6", "-n", "-q", "-c", "20", "-i", "0.01", "-W", "1", &to2]);
    assert_eq!(got, 20, "no loss once cleared");
    assert!(matches!(lab.loss(1, 120.0), Err(Error::InvalidArg(_))));
}

#[test]
fn netem_applies_or_says_the_kernel_lacks_it() {
    require_root();
    let lab = Lab::new(2).unwrap();
    match lab.netem(1, "delay 30ms") {
        Ok(()) => {
            let o =
                lab.host(1).run("ping", ["-6", "-n", "-c", "1", "-W", "2", &lab.host(2).addr().to_string()]).unwrap();
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let ms: f64 = out.split("time=").nth(1).and_then(|s| s.split(' ').next()?.parse().ok()).expect(&out);
            assert!(ms >= 30.0, "netem delay 30ms, rtt {ms} ms");
            lab.netem_clear(1).unwrap();
        }
        Err(Error::Unsupported(msg)) => assert!(msg.contains("netem") && msg.contains("Lab::loss"), "{msg}"),
        Err(e) => panic!("netem failed: {e}"),
    }
    lab.netem_clear(2).unwrap();
}

#[test]
fn processes_run_inside_their_host_and_errors_carry_output() {
    require_root();
    let lab = Lab::new(1).unwrap();
    let h = lab.host(1);
    let p = h.spawn("sleep", ["30"]).unwrap();
    assert_eq!(netns_inode(format!("/proc/{}/ns/net", p.pid())), netns_inode(format!("/run/netns/{}", h.name())));
    let seen =
        output(&mut h.nsenter_cmd(p.pid(), "ip", ["-6", "addr", "show", "dev", "eth0"]), Duration::from_secs(10))
            .unwrap();
    assert!(String::from_utf8_lossy(&seen.stdout).contains(&h.addr().to_string()));
    let pwd = h.run("pwd", [] as [&str; 0]).unwrap();
    assert_eq!(PathBuf::from(String::from_utf8_lossy(&pwd.stdout).trim()), h.dir());

    match h.run("sh", ["-c", "echo oops >&2; exit 4"]) {
        Err(e @ Error::Failed { .. }) => {
            assert!(e.to_string().contains("oops"), "{e}");
            let Error::Failed { output, .. } = e else { unreachable!() };
            assert_eq!(output.status.code(), Some(4));
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let pid = p.pid();
    let t = Instant::now();
    drop(p);
    assert!(pid_gone(pid) && t.elapsed() < Duration::from_secs(4), "sleep obeys SIGTERM");
}

#[test]
fn drop_removes_namespaces_processes_and_files() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let (id, dir) = (lab.id().to_owned(), lab.dir().to_owned());
    assert_eq!(namespaces_of(&id).len(), 3, "two hosts and the switch");
    let kept = lab.host(1).spawn("sleep", ["60"]).unwrap();
    // Started behind the harness's back: Drop must still find it by its namespace.
    let mut stray = lab.host(2).cmd("sleep", ["60"]).spawn().unwrap();
    drop(lab);
    assert_eq!(namespaces_of(&id), Vec::<String>::new());
    assert!(!dir.exists(), "{} removed", dir.display());
    assert!(!kept.is_running(), "a process outliving its lab is stopped with it");
    assert!(stray.try_wait().unwrap().is_some(), "stray process killed");
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_root();
    let mut seen = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new(2).unwrap();
        let p = lab.host(1).spawn("sh", ["-c", "echo hello from host 1; exec sleep 60"]).unwrap();
        seen = Some((lab.id().to_owned(), lab.dir().to_owned(), p.pid()));
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            Ok(std::fs::read_to_string(p.log_path().unwrap()).unwrap_or_default().contains("hello"))
        })
        .unwrap();
        panic!("deliberate failure: the lab's logs are dumped above");
    }));
    assert!(r.is_err());
    let (id, dir, pid) = seen.unwrap();
    assert_eq!(namespaces_of(&id), Vec::<String>::new());
    assert!(!dir.exists());
    assert!(pid_gone(pid));
}

#[test]
fn labs_left_by_a_dead_process_are_removed() {
    require_root();
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let stale = format!("mlab{:x}-0", dead.id());
    let ns = format!("{stale}-sw");
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let dir = std::env::temp_dir().join(&stale);
    std::fs::create_dir_all(dir.join("h1")).unwrap();
    let _lab = Lab::new(1).unwrap();
    assert_eq!(namespaces_of(&stale), Vec::<String>::new());
    assert!(!dir.exists());
}

#[test]
fn bad_sizes_are_rejected() {
    require_root();
    assert!(matches!(Lab::new(0), Err(Error::InvalidArg(_))));
    assert!(matches!(Lab::new(251), Err(Error::InvalidArg(_))));
}

#[test]
fn forty_hosts_use_permanent_neighbours() {
    require_root();
    let t = Instant::now();
    let lab = Lab::new(40).unwrap();
    let built = t.elapsed();
    let neigh = lab.host(1).run("ip", ["-6", "neigh", "show", "nud", "permanent", "dev", "eth0"]).unwrap();
    let entries = String::from_utf8_lossy(&neigh.stdout).lines().count();
    assert_eq!(entries, 39, "one permanent entry per other host");
    for (a, b) in [(1, 40), (40, 1), (17, 23), (2, 39)] {
        assert!(lab.host(a).ping(lab.host(b).addr()).unwrap(), "host {a} cannot reach host {b}");
    }
    eprintln!("40 hosts built in {built:?}, checked in {:?}", t.elapsed());
}

/// A stand-in for `metac` that speaks the CLI the harness uses: `node --state D --socket S ...` (makes S after
/// 0.3 s, exits 0 on SIGTERM, exits 3 at once with `--fail-start`) and `--socket S status --json`.
const FAKE_METAC: &str = r#"#!/bin/sh
if [ "$1" = node ]; then
  # First of all, so that a TERM however early ends cleanly.
  trap 'echo "fake node $$ got TERM"; rm -f "$sock"; exit 0' TERM
  shift; args="$*"
  while [ $# -gt 0 ]; do
    case "$1" in
      --socket) sock=$2; shift ;;
      --state) state=$2; shift ;;
      --fail-start) echo "fake: failing on purpose"; exit 3 ;;
    esac
    shift
  done
  echo "fake node $$ args: $args"
  echo start >> "$state/starts"
  rm -f "$sock"
  sleep 0.3
  echo $$ > "$sock"
  while :; do sleep 0.1; done
fi
# A socket left by a node killed with -9 names a dead pid: no node there (as a real node's socket refuses).
if [ "$1" = --socket ] && [ "$3" = status ] && [ -e "$2" ] && kill -0 "$(cat "$2")" 2>/dev/null; then
  printf '{"fake":true,"net":"%s"}\n' "$(readlink /proc/self/ns/net)"; exit 0
fi
echo "fake: no node at $2" >&2; exit 1
"#;

fn fake_metac(lab: &Lab) -> PathBuf {
    let path = lab.dir().join("fake-metac");
    std::fs::write(&path, FAKE_METAC).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn node_lifecycle_against_a_stand_in_metac() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let fake = fake_metac(&lab);
    let h = lab.host(2);
    let mut node = h.start_node_with(&fake, &["--no-mdns"]).unwrap();
    assert!(node.is_running());
    let net = format!("net:[{}]", netns_inode(format!("/run/netns/{}", h.name())));
    assert_eq!(node.status().unwrap()["net"], net.as_str(), "status runs in the host's namespace");
    let log = node.log();
    let want = format!(
        "--state {} --socket {} --port 0 --log-level {} --no-mdns",
        h.state_dir().display(),
        h.socket().display(),
        metac_tests::LOG_LEVEL
    );
    assert!(log.contains(&want), "node arguments, in:\n{log}");

    let first = node.pid();
    node.restart().unwrap();
    assert_ne!(node.pid(), first);
    assert!(pid_gone(first));
    assert_eq!(std::fs::read_to_string(h.state_dir().join("starts")).unwrap().lines().count(), 2, "same state dir");

    node.kill9();
    assert!(!node.is_running());
    node.restart().unwrap();
    let status = node.stop().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
    assert!(node.log().contains("got TERM"));
    assert!(node.stop().is_err(), "already stopped");

    let mut other = lab.host(1).start_node_with(&fake, &["--log-level", "info"]).unwrap();
    assert!(!other.log().contains("debug"), "an explicit --log-level replaces the default");
    other.kill9();
}

#[test]
fn a_node_that_dies_at_start_reports_its_log() {
    require_root();
    let lab = Lab::new(1).unwrap();
    let fake = fake_metac(&lab);
    let t = Instant::now();
    let err = lab.host(1).start_node_with(&fake, &["--fail-start"]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("exited with") && msg.contains("failing on purpose"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5), "no need to wait for the ready timeout");
    assert!(matches!(lab.host(1).start_node_with(Path::new("/nonexistent/metac"), &[]), Err(Error::NoMetacBin { .. })));
}

#[test]
fn nodes_start_in_every_host_at_once() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let fake = fake_metac(&lab);
    let nodes = lab.start_nodes_with(&fake, &[]).unwrap();
    assert_eq!(nodes.len(), 3);
    for (node, host) in nodes.iter().zip(lab.hosts()) {
        assert_eq!(node.host().index(), host.index());
        let net = format!("net:[{}]", netns_inode(format!("/run/netns/{}", host.name())));
        assert_eq!(node.status().unwrap()["net"], net.as_str());
    }
}
