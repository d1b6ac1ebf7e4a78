//! The session lifecycle across real nodes in one process (see `common`): binds of the `file` kind served as NBD
//! endpoints, cut by expiry, revocation and unbind, coming back with their exporter and after a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait, Cluster, ROOT};
use metac_api::types::BindView;
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::token::{Caveat, Ref};
use metac_node::Node;
use metac_resource::Clock;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

/// Reads the whole export behind a local NBD endpoint with the NBD client of metac-block.
async fn read_endpoint(socket: &Path) -> Result<Vec<u8>, String> {
    let s = tokio::net::UnixStream::connect(socket).await.map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let mut out = vec![];
    metac_block::cat(s, &mut out, |_, _| {}).await.map_err(|e| e.to_string())?;
    Ok(out)
}

fn bind_view(node: &Node, id: &str) -> Option<BindView> {
    node.binds(None, &ROOT).into_iter().find(|b| b.id == id)
}

async fn wait_state(node: &Node, id: &str, state: &str) -> BindView {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let v = bind_view(node, id);
        if v.as_ref().is_some_and(|b| b.state == state) {
            return v.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "bind {id} is not {state} after {LONG:?}: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn live_binds(node: &Node) -> u64 {
    node.exports().unwrap().iter().map(|e| e.binds as u64).sum()
}

async fn export(node: &Node, path: &Path) -> Ref {
    let (_, r) =
        node.export(Kind::File, path.display().to_string(), None, None, serde_json::Value::Null, &ROOT).await.unwrap();
    r
}

fn socket(c: &Cluster, name: &str) -> PathBuf {
    c.dir.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_bind_is_an_nbd_endpoint_listed_with_its_state_and_cut_by_unbind() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("disk.img", 3 << 20);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export(&a, &path).await;
    let sock = socket(&c, "disk.sock");
    let started = b.bind_ref(r.clone(), json!({ "socket": sock }), false, &ROOT).unwrap();
    let v = wait_state(&b, &started.id, "up").await;
    assert_eq!((v.kind.as_str(), v.target.as_str(), v.exporter.len()), ("file", sock.to_str().unwrap(), 16));
    assert_eq!(read_endpoint(&sock).await.unwrap(), data);
    // Two clients at once, multiplexed onto the bind's one stream.
    let (x, y) = tokio::join!(read_endpoint(&sock), read_endpoint(&sock));
    assert_eq!((x.unwrap().len(), y.unwrap().len()), (data.len(), data.len()));
    assert!(bind_view(&b, &started.id).unwrap().bytes >= 3 * data.len() as u64);
    assert_eq!(b.binds(Some(Kind::Fs), &ROOT).len(), 0);
    assert_eq!(b.binds(Some(Kind::File), &ROOT).len(), 1);
    // The exporter serves the endpoint's one stream.
    wait(LONG, "the exporter to count the standby bind", || async { live_binds(&a) == 1 }).await;

    // Unbind by target: the socket goes, the exporter's bind is cut.
    b.unbind(sock.to_str().unwrap(), &ROOT).await.unwrap();
    assert!(!sock.exists(), "the endpoint's socket is removed");
    assert!(b.binds(None, &ROOT).is_empty());
    wait(LONG, "the exporter to see the bind cut", || async { live_binds(&a) == 0 }).await;
    assert!(b.unbind(&started.id, &ROOT).await.is_err(), "unbinding twice says there is no such bind");
    c.stop().await;
}

/// The exporter cuts a client that does not finish the NBD handshake in time (issue 10, finding 6); a file bind's
/// standby stream waits in the handshake by design, so it is replaced in time and the bind stays up, however long
/// it goes unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_file_bind_outlives_the_handshake_limit() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("idle.img", 64 << 10);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export(&a, &path).await;
    let sock = socket(&c, "idle.sock");
    let started = b.bind_ref(r, json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;
    let until = std::time::Instant::now() + metac_block::NEGOTIATION_TIMEOUT + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        let v = bind_view(&b, &started.id).unwrap();
        assert_eq!(v.state, "up", "the unused bind stays up: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read_endpoint(&sock).await.unwrap(), data);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_cuts_a_live_bind_on_both_sides_at_that_second() {
    let mut c = Cluster::start(2).await;
    let (path, _) = c.file("f.img", 1 << 20);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export(&a, &path).await;
    let now = c.clock.now();
    let short = a.delegate(&r, &Caveat { expires: Some(now + 100), ..Caveat::default() }, false, &ROOT).unwrap();
    let sock = socket(&c, "exp.sock");
    let started = b.bind_ref(short, json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;
    wait(LONG, "the exporter to serve the bind", || async { live_binds(&a) == 1 }).await;
    // A second before expiry nothing happens.
    c.clock.advance(99);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bind_view(&b, &started.id).unwrap().state, "up");
    assert_eq!(live_binds(&a), 1);
    // At the second of expiry both sides cut it: the binder's session ends, the exporter's stream is closed.
    c.clock.advance(1);
    let v = wait_state(&b, &started.id, "expired").await;
    assert!(v.reason.is_none());
    wait(LONG, "the exporter to cut the expired bind", || async { live_binds(&a) == 0 }).await;
    assert!(!sock.exists(), "an expired endpoint's socket is removed");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_a_bind_and_the_session_says_it_was_refused() {
    let mut c = Cluster::start(2).await;
    let (path, _) = c.file("f.img", 1 << 20);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export(&a, &path).await;
    let child = b.delegate(&r, &Caveat { rights: Some(Rights::READ), ..Caveat::default() }, false, &ROOT).unwrap();
    let sock = socket(&c, "rev.sock");
    let started = b.bind_ref(child.clone(), json!({ "socket": sock }), true, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;
    // Revoked from the binding node: the exporter cuts the live bind, and refuses the session's next attempt.
    b.revoke(&child, &ROOT).await.unwrap();
    let v = wait_state(&b, &started.id, "refused").await;
    assert!(v.reason.as_deref().unwrap().contains("revoked"), "{v:?}");
    assert_eq!(live_binds(&a), 0);
    // A refused bind is not re-established after a restart.
    drop(b);
    c.nodes[1].restart().await;
    let b = c.nodes[1].n().clone();
    assert!(b.binds(None, &ROOT).is_empty(), "a refused persistent bind is forgotten");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_reconnects_when_its_exporter_comes_back() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("f.img", 2 << 20);
    let r = export(c.nodes[0].n(), &path).await;
    let b = c.nodes[1].n().clone();
    let sock = socket(&c, "re.sock");
    let started = b.bind_ref(r, json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;

    c.nodes[0].stop().await;
    let v = wait_state(&b, &started.id, "retrying").await;
    assert!(v.reason.is_some(), "a retrying bind says why: {v:?}");
    assert!(sock.exists(), "the endpoint stays while its exporter is away");

    c.nodes[0].restart().await;
    let t = std::time::Instant::now();
    wait_state(&b, &started.id, "up").await;
    eprintln!("the bind was up again {:?} after its exporter restarted", t.elapsed());
    assert_eq!(read_endpoint(&sock).await.unwrap(), data);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_bind_comes_back_after_a_restart_and_a_plain_one_does_not() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("f.img", 1 << 20);
    let r = export(c.nodes[0].n(), &path).await;
    let b = c.nodes[1].n().clone();
    let kept = socket(&c, "kept.sock");
    let gone = socket(&c, "gone.sock");
    let p = b.bind_ref(r.clone(), json!({ "socket": kept }), true, &ROOT).unwrap();
    let q = b.bind_ref(r, json!({ "socket": gone }), false, &ROOT).unwrap();
    wait_state(&b, &p.id, "up").await;
    wait_state(&b, &q.id, "up").await;
    drop(b);

    c.nodes[1].stop().await;
    assert!(!kept.exists() && !gone.exists(), "node stop closes every endpoint");
    c.nodes[1].restart().await;
    let b = c.nodes[1].n().clone();
    let v = wait_state(&b, &p.id, "up").await;
    assert!(v.persistent);
    assert!(bind_view(&b, &q.id).is_none(), "a bind not asked to persist ends with the node");
    assert_eq!(read_endpoint(&kept).await.unwrap(), data);
    // Unbound, it stays unbound after the next restart.
    b.unbind(&p.id[..6], &ROOT).await.unwrap();
    drop(b);
    c.nodes[1].restart().await;
    assert!(c.nodes[1].n().binds(None, &ROOT).is_empty());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_binds_are_refused_with_reasons() {
    let mut c = Cluster::start(2).await;
    let (path, _) = c.file("f.img", 4096);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export(&a, &path).await;
    // Options of the wrong shape, and a relative socket path.
    let e = b.bind_ref(r.clone(), json!({ "socket": 5 }), false, &ROOT).unwrap_err();
    assert!(e.message.contains("bad file bind options"), "{}", e.message);
    let e = b.bind_ref(r.clone(), json!({ "socket": "x.sock" }), false, &ROOT).unwrap_err();
    assert!(e.message.contains("must be absolute"), "{}", e.message);
    // A ref made out to another node: the session is refused, with the exporter's reason.
    let for_a = a.delegate(&r, &Caveat { audience: Some(a.me()), ..Caveat::default() }, false, &ROOT).unwrap();
    let s = b.bind_ref(for_a, json!({ "socket": socket(&c, "aud.sock") }), false, &ROOT).unwrap();
    let v = wait_state(&b, &s.id, "refused").await;
    assert!(v.reason.unwrap().contains("wrong audience"));
    // Unexported: refused too.
    a.unexport(&r.token.resource().to_string(), &ROOT).await.unwrap();
    let s = b.bind_ref(r, json!({ "socket": socket(&c, "un.sock") }), false, &ROOT).unwrap();
    let v = wait_state(&b, &s.id, "refused").await;
    assert!(v.reason.unwrap().contains("revoked"), "unexport revokes the export's refs");
    c.stop().await;
}

/// Attack (issue 10, finding 5): the exported path is swapped for a symlink to another file (a disk, in the
/// attack). The running export keeps serving what it opened; after a restart the swapped path is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_export_is_served_as_exported_and_refused_after_a_restart() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("vm.img", 1 << 20);
    let (secret, _) = c.file("secret.img", 1 << 20);
    let r = export(c.nodes[0].n(), &path).await;
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&secret, &path).unwrap();
    let b = c.nodes[1].n().clone();
    let sock = socket(&c, "swap.sock");
    let s = b.bind_ref(r.clone(), json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &s.id, "up").await;
    assert_eq!(read_endpoint(&sock).await.unwrap(), data, "the file opened at export, not the symlink's target");
    b.unbind(&s.id, &ROOT).await.unwrap();

    c.nodes[0].restart().await;
    c.wait_mesh().await;
    let s = b.bind_ref(r, json!({ "socket": socket(&c, "swap2.sock") }), false, &ROOT).unwrap();
    let v = wait_state(&b, &s.id, "refused").await;
    let reason = v.reason.unwrap();
    assert!(reason.contains("is now a symbolic link, not the file that was exported"), "{reason}");
    drop(b);
    c.stop().await;
}

/// Attack (issue 10, finding 7): anyone who saw a ref could revoke it, every request cost a store write and a new
/// advert, and there was no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_made_out_to_a_node_is_revoked_only_by_it_and_repeats_cost_nothing() {
    let mut c = Cluster::start(3).await;
    let (path, _) = c.file("f.img", 4096);
    let (a, b, stranger) = (c.nodes[0].n().clone(), c.nodes[1].n().clone(), c.nodes[2].n().clone());
    let r = export(&a, &path).await;
    let for_b = a.delegate(&r, &Caveat { audience: Some(b.me()), ..Caveat::default() }, false, &ROOT).unwrap();
    let e = stranger.revoke(&for_b, &ROOT).await.unwrap_err();
    assert!(e.message.contains("only that node or the exporter may revoke it"), "{}", e.message);
    assert!(b.revoke(&for_b, &ROOT).await.unwrap().starts_with("revoked token"));
    assert!(b.revoke(&for_b, &ROOT).await.unwrap().contains("was already revoked"), "a repeat writes nothing");
    // A bearer ref may be revoked by its holder, within the limit per peer.
    let mut refused = 0;
    for _ in 0..metac_node::refs::REVOCATIONS_PER_WINDOW + 3 {
        let child = stranger.delegate(&r, &Caveat::default(), false, &ROOT).unwrap();
        if let Err(e) = stranger.revoke(&child, &ROOT).await {
            assert!(e.message.contains("revocations asked within"), "{}", e.message);
            refused += 1;
        }
    }
    assert_eq!(refused, 4, "the 21st and later requests of one window are refused");
    drop((a, b, stranger));
    c.stop().await;
}

/// Attack (issue 10, finding 6): a holder of one read-only ref opened binds until the exporter ran out of file
/// descriptors. Now each peer gets a bounded number of live binds, and refusals beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_more_than_its_share_of_binds() {
    let mut c = Cluster::start(2).await;
    let (path, _) = c.file("f.img", 4096);
    let (a, b) = (c.nodes[0].n().clone(), c.nodes[1].n().clone());
    let r = export(&a, &path).await;
    let ro = a.delegate(&r, &Caveat { rights: Some(Rights::READ), ..Caveat::default() }, false, &ROOT).unwrap();
    let binder = b.ctx(Kind::File).binder;
    let mut held = vec![];
    for _ in 0..metac_node::serve::MAX_BINDS_PER_PEER {
        held.push(binder.open(&ro, "nbd").await.expect("binds up to the limit are served"));
    }
    let e = binder.open(&ro, "nbd").await.err().expect("one more is refused");
    assert!(e.to_string().contains("the most allowed"), "{e}");
    assert_eq!(live_binds(&a), metac_node::serve::MAX_BINDS_PER_PEER as u64);
    // Let go of some, and binds are served again.
    held.truncate(10);
    wait(LONG, "the exporter to see the binds end", || async { live_binds(&a) == 10 }).await;
    binder.open(&ro, "nbd").await.expect("served again below the limit");
    drop((held, binder, a, b));
    c.stop().await;
}

/// Runs `program args` to the end (at most 120 s) and returns its output; panics naming it if it cannot start.
async fn tool(program: &str, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(program).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(120), child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {program} (install-deps installs it): {e}"),
        Err(_) => panic!("{program} {args:?} ran for more than 120 s"),
    }
}

fn nbd_unix(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// Issue 13: a copy into a bind and one out of it go on through an exporter restart: nbdcopy (a real client) sees
/// a pause, not an error (the bind sends unanswered requests again), and every byte lands. Small requests keep each
/// copy under way for seconds, and the test checks that it was when the exporter stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_through_a_bind_survives_its_exporter_restarting() {
    let mut c = Cluster::start(2).await;
    let (path, _) = c.file("disk.img", 32 << 20);
    let source = c.dir.path().join("source.img");
    let fresh: Vec<u8> = (0..32usize << 20).map(|i| (i * 13 % 253) as u8 ^ 0x5a).collect();
    std::fs::write(&source, &fresh).unwrap();
    let r = export(c.nodes[0].n(), &path).await;
    let b = c.nodes[1].n().clone();
    let sock = socket(&c, "disk.sock");
    let started = b.bind_ref(r, json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;
    let uri = nbd_unix(&sock);
    let back = c.dir.path().join("back.img");
    for (from, to) in [(source.to_str().unwrap(), uri.as_str()), (uri.as_str(), back.to_str().unwrap())] {
        let args = ["--flush", "--request-size=16384", "--requests=2", "--connections=1", from, to].map(String::from);
        let copy =
            tokio::spawn(async move { tool("nbdcopy", &args.iter().map(String::as_str).collect::<Vec<_>>()).await });
        let at = bind_view(&b, &started.id).unwrap().bytes;
        let (b2, id) = (b.clone(), started.id.clone());
        wait(LONG, "nbdcopy to be under way", || {
            let (b, id) = (b2.clone(), id.clone());
            async move { bind_view(&b, &id).is_some_and(|v| v.bytes >= at + (2 << 20)) }
        })
        .await;
        c.nodes[0].stop().await;
        assert!(!copy.is_finished(), "the copy {from} -> {to} was still under way when its exporter stopped");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.nodes[0].restart().await;
        let out = copy.await.unwrap();
        let v = bind_view(&b, &started.id);
        assert!(out.status.success(), "nbdcopy through the restart: {} ({v:?})", String::from_utf8_lossy(&out.stderr));
    }
    assert!(std::fs::read(&path).unwrap() == fresh, "every byte nbdcopy wrote is in the exported file");
    assert!(std::fs::read(&back).unwrap() == fresh, "the copy out is whole");
    c.stop().await;
}

/// Issue 13: `--read-only` and a TCP endpoint on loopback. nbdinfo sees the size and the read-only flag, a write is
/// refused at the endpoint with EPERM and never reaches the exporter, and a TCP endpoint is refused anywhere but on
/// loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_bind_and_a_tcp_endpoint() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("ro.img", 1 << 20);
    let r = export(c.nodes[0].n(), &path).await;
    let b = c.nodes[1].n().clone();
    let sock = socket(&c, "ro.sock");
    let ro = b.bind_ref(r.clone(), json!({ "socket": sock, "read_only": true }), false, &ROOT).unwrap();
    wait_state(&b, &ro.id, "up").await;
    let out = tool("nbdinfo", &["--json", &nbd_unix(&sock)]).await;
    assert!(out.status.success(), "nbdinfo: {}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let export = &info["exports"][0];
    assert_eq!((export["export-size"].as_u64(), export["is_read_only"].as_bool()), (Some(1 << 20), Some(true)));
    let out = tool("qemu-io", &["-f", "raw", "-c", "write -P 0x33 0 4096", &nbd_unix(&sock)]).await;
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("ermission denied") || said.contains("read-only") || said.contains("read only"), "{said}");
    assert!(std::fs::read(&path).unwrap() == data, "nothing was written");

    let tcp = b.bind_ref(r.clone(), json!({ "listen": "[::1]:0" }), false, &ROOT).unwrap();
    let v = wait_state(&b, &tcp.id, "up").await;
    assert!(v.target.starts_with("nbd://[::1]:") && !v.target.ends_with(":0"), "{v:?}");
    let out =
        tool("qemu-io", &["-f", "raw", "-c", "write -P 0x33 4096 4096", "-c", "read -P 0x33 4096 4096", &v.target])
            .await;
    assert!(out.status.success(), "qemu-io over TCP: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&path).unwrap()[4096..8192].iter().all(|&x| x == 0x33));
    let e = b.bind_ref(r, json!({ "listen": "0.0.0.0:0" }), false, &ROOT).unwrap_err();
    assert!(e.to_string().contains("only a loopback address"), "{e}");
    c.stop().await;
}

/// Issue 13: nbdcopy with its defaults (four connections, 64 requests each in flight) fills the bind's window to
/// the exporter; the copy is whole and the bind never stalls or reconnects on the way. (A writer that waited for
/// room with requests still in its buffer once stalled here until the 30 s limit cut the stream.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_with_many_requests_share_one_bind_without_a_stall() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("disk.img", 256 << 20);
    let r = export(c.nodes[0].n(), &path).await;
    let b = c.nodes[1].n().clone();
    let sock = socket(&c, "disk.sock");
    let started = b.bind_ref(r, json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;
    let back = c.dir.path().join("back.img");
    let uri = nbd_unix(&sock);
    let args = [uri.clone(), back.to_str().unwrap().to_string()];
    let copy = tokio::spawn(async move { tool("nbdcopy", &[&args[0], &args[1]]).await });
    let mut states = std::collections::BTreeSet::new();
    while !copy.is_finished() {
        states.insert(bind_view(&b, &started.id).unwrap().state);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = copy.await.unwrap();
    assert!(out.status.success(), "nbdcopy: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(states.into_iter().collect::<Vec<_>>(), ["up"], "the bind stayed up all along");
    assert!(std::fs::read(&back).unwrap() == data, "the copy is whole");
    c.stop().await;
}

/// A node without the direct transport (an older node, or one run with `--no-direct`) is bound over the mesh
/// stream: the binder's offer finds no `/metac/direct/1` there and falls back by itself, and the bytes are the same.
/// Between two nodes that have it, binds go direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_direct_transport_is_bound_over_the_mesh() {
    let mut c = Cluster::start_configured(3, |i, config| {
        if i == 0 {
            config.direct_port = None;
        }
    })
    .await;
    let (path, data) = c.file("old.img", 256 << 10);
    let (old, b, d) = (c.nodes[0].n().clone(), c.nodes[1].n().clone(), c.nodes[2].n().clone());
    let figures = |n: &Node| -> Vec<u64> {
        let line = n.transport_summary();
        line.split(|ch: char| !ch.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
    };
    assert_eq!(old.transport_summary(), "mesh streams only (--no-direct)");

    let r = export(&old, &path).await;
    let sock = socket(&c, "old.sock");
    let started = b.bind_ref(r, json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;
    assert_eq!(read_endpoint(&sock).await.unwrap(), data);
    let f = figures(&b);
    assert!(f[1] == 0 && f[2] >= 1, "to the old node: none direct, some over the mesh: {}", b.transport_summary());

    let r = export(&d, &path).await;
    let sock = socket(&c, "new.sock");
    let started = b.bind_ref(r, json!({ "socket": sock }), false, &ROOT).unwrap();
    wait_state(&b, &started.id, "up").await;
    assert_eq!(read_endpoint(&sock).await.unwrap(), data);
    assert!(figures(&b)[1] >= 1, "to a new node: direct: {}", b.transport_summary());
    assert!(figures(&d)[3] >= 1, "accepted direct there: {}", d.transport_summary());
    c.stop().await;
}
