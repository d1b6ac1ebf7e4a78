//! The spine end to end between real hosts: real `metac node`s in network namespaces find each other with no
//! configuration, a file exported on one host is read on another byte for byte, every bad ref is refused with its
//! own message, revocation cuts live binds, state survives SIGKILL, and a private mesh keeps strangers out.
//! Build the binary first (`cargo build --bin metac`); the tests need root and never skip.

use std::time::{Duration, Instant};

use metac_tests::{require_root, wait_until, Error, Host, Lab};

/// Runs a CLI command that must succeed; returns stdout, trimmed.
fn ok(h: &Host, args: &[&str]) -> String {
    match h.metac(args) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => panic!("metac {args:?} on host {} failed: {e}", h.index()),
    }
}

/// Runs a CLI command that must fail; returns stderr.
fn fails(h: &Host, args: &[&str]) -> String {
    match h.metac(args) {
        Ok(o) => panic!("metac {args:?} on host {} should fail but printed {:?}", h.index(), o.stdout.len()),
        Err(Error::Failed { output, .. }) => {
            assert_eq!(output.status.code(), Some(1), "a refused command exits 1");
            String::from_utf8_lossy(&output.stderr).to_string()
        }
        Err(e) => panic!("metac {args:?}: {e}"),
    }
}

fn json(h: &Host, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(h, &a)).expect("valid JSON")
}

fn key(h: &Host) -> String {
    json(h, &["status"])["key"].as_str().unwrap().to_string()
}

/// Writes `len` pseudo-random bytes to a file in the host's dir.
fn make_file(h: &Host, name: &str, len: usize) -> std::path::PathBuf {
    let path = h.dir().join(name);
    metac_tests::write_pseudo_random(&path, len as u64).unwrap();
    path
}

fn same_file(a: &std::path::Path, b: &std::path::Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "{} and {} differ in size", a.display(), b.display());
    assert!(x == y, "{} and {} differ in content", a.display(), b.display());
}

fn all_see_each_other(lab: &Lab, n: u64) -> Duration {
    wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
        Ok(lab.hosts().iter().all(|h| json(h, &["status"])["peers"].as_u64().unwrap_or(0) >= n))
    })
    .unwrap_or_else(|e| panic!("nodes did not find each other: {e}"))
}

#[test]
fn three_hosts_discover_each_other_and_read_files_across() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let took = all_see_each_other(&lab, 2);
    eprintln!("3 nodes see each other {took:?} after all answered");
    assert!(took <= Duration::from_secs(2), "discovery took {took:?}, more than 2 s");

    let (h1, h3) = (lab.host(1), lab.host(3));
    let peers = json(h3, &["peers"]);
    assert_eq!(peers.as_array().unwrap().len(), 2);
    assert!(peers.as_array().unwrap().iter().all(|p| p["via"] == "mdns" || p["via"] == "inbound"), "{peers}");

    for (name, len) in [("small.bin", 12_345usize), ("big.bin", 200 << 20)] {
        let src = make_file(h1, name, len);
        let r = ok(h1, &["file", "export", src.to_str().unwrap()]);
        assert!(r.starts_with("ref://[fd6f:e1da:f01c:"), "{r}");
        let out = h3.dir().join(format!("copy-{name}"));
        let t = Instant::now();
        ok(h3, &["file", "cat", &r, "-o", out.to_str().unwrap()]);
        eprintln!("{name}: {len} bytes across hosts in {:?}", t.elapsed());
        same_file(&src, &out);
    }
    // The adverts reached host 3: both exports are listed there with their owner.
    let h1key = key(h1);
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        Ok(json(h3, &["resources", "--kind", "file"]).as_array().unwrap().iter().filter(|r| r["node"] == h1key).count()
            == 2)
    })
    .expect("host 3 lists host 1's two files");
    // Unexport removes it from the mesh and revokes its refs.
    let exports = json(h1, &["exports"]);
    let id = exports[0]["id"].as_str().unwrap();
    ok(h1, &["unexport", id]);
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        Ok(json(h3, &["resources"]).as_array().unwrap().iter().filter(|r| r["node"] == h1key).count() == 1)
    })
    .expect("host 3 sees the unexport");
}

#[test]
fn bad_refs_are_refused_each_with_its_own_message() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    all_see_each_other(&lab, 2);
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let src = make_file(h1, "f.bin", 100_000);
    let r = ok(h1, &["file", "export", src.to_str().unwrap()]);
    ok(h3, &["file", "cat", &r, "-o", "/dev/null"]);

    // Not a ref at all, and an address that is not the issuer's.
    assert!(fails(h3, &["file", "cat", "http://example"]).contains("bad ref"));
    let other_addr = json(h2, &["status"])["overlay"].as_str().unwrap().to_string();
    let token = r.rsplit('/').next().unwrap();
    let moved = format!("ref://[{other_addr}]/{token}");
    assert!(fails(h3, &["file", "cat", &moved]).contains("does not belong"), "address of another node");

    // Tampered: every byte changed in the signed part is refused; a change inside a signature is caught by the
    // exporter's signature check.
    let mut saw_signature = false;
    for pos in (20..token.len() - 50).step_by(7).take(30) {
        let mut t: Vec<u8> = token.bytes().collect();
        t[pos] = if t[pos] == b'A' { b'B' } else { b'A' };
        let tampered = format!("ref://[{}]/{}", r[7..].split(']').next().unwrap(), String::from_utf8(t).unwrap());
        let err = fails(h3, &["file", "cat", &tampered, "-o", "/dev/null"]);
        saw_signature |= err.contains("signature");
        assert!(err.contains("bad ref") || err.contains("signature") || err.contains("refused"), "{err}");
    }
    assert!(saw_signature, "some tampering reaches the exporter's signature check");

    // Expired.
    let short = ok(h3, &["ref", "delegate", &r, "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let err = fails(h3, &["file", "cat", &short]);
    assert!(err.contains("expired at"), "{err}");

    // Wrong audience: made out to host 2, used by host 3; host 2 may use it.
    let for2 = ok(h3, &["ref", "delegate", &r, "--to", &key(h2), "--read-only"]);
    let err = fails(h3, &["file", "cat", &for2]);
    assert!(err.contains("wrong audience"), "{err}");
    ok(h2, &["file", "cat", &for2, "-o", "/dev/null"]);
    // Audience by overlay address works too.
    let h2addr = json(h2, &["status"])["overlay"].as_str().unwrap().to_string();
    let for2b = ok(h3, &["ref", "delegate", &r, "--to", &h2addr]);
    ok(h2, &["file", "cat", &for2b, "-o", "/dev/null"]);

    // Delegation only narrows: a read-only ref shows it.
    let shown = json(h3, &["ref", "show", &for2]);
    assert_eq!(shown["state"], "not revoked as far as its exporter's advert says");
    assert_eq!(shown["rights"], "read", "read-only means read alone, not read and admin: {shown}");

    // Revoked: at once, for the ref and everything delegated from it, from a holder on another node.
    let child = ok(h2, &["ref", "delegate", &r, "--read-only"]);
    ok(h2, &["file", "cat", &child, "-o", "/dev/null"]);
    ok(h3, &["ref", "revoke", &r]);
    for (h, reference) in [(h3, &r), (h2, &child), (h1, &r)] {
        let err = fails(h, &["file", "cat", reference]);
        assert!(err.contains("revoked"), "{err}");
    }
    // The revocation is adverted: other nodes can tell before anyone tries the ref.
    assert_eq!(json(h1, &["ref", "show", &r])["state"], "revoked");
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        Ok(json(h2, &["ref", "show", &child])["state"] == "revoked")
    })
    .expect("host 2 learns of the revocation from host 1's advert");
    let listed = json(h1, &["ref", "ls"]);
    assert!(listed.as_array().unwrap().iter().any(|t| t["revoked"] == true), "{listed}");

    // Unknown node: a ref from a node that is not in this mesh.
    let stranger = Lab::new(1).unwrap();
    let _s = stranger.start_nodes(&["--no-mdns"]).unwrap();
    let sf = make_file(stranger.host(1), "s.bin", 10);
    let sref = ok(stranger.host(1), &["file", "export", sf.to_str().unwrap()]);
    let err = fails(h3, &["file", "cat", &sref]);
    assert!(err.contains("unknown"), "{err}");

    // Node not running.
    let bin = metac_tests::metac_bin().unwrap();
    let err = match h3.run(&bin, ["--socket", "/nonexistent/metac.sock", "status"]) {
        Err(Error::Failed { output, .. }) => String::from_utf8_lossy(&output.stderr).to_string(),
        other => panic!("status without a node should fail: {other:?}"),
    };
    assert!(err.contains("not running"), "{err}");
}

#[test]
fn revocation_cuts_a_live_bind() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    all_see_each_other(&lab, 1);
    let (h1, h2) = (lab.host(1), lab.host(2));
    let src = make_file(h1, "live.bin", 256 << 20);
    let r = ok(h1, &["file", "export", src.to_str().unwrap()]);
    // A reader that stalls: the transfer is held open by backpressure until it reads again.
    let bin = metac_tests::metac_bin().unwrap();
    let out = h2.dir().join("partial.bin");
    let script = format!(
        "set -o pipefail; {} --socket {} file cat '{}' | (sleep 3; cat > {})",
        bin.display(),
        h2.socket().display(),
        r,
        out.display()
    );
    let reader = h2.spawn("bash", ["-c", &script]).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let binds = json(h1, &["exports"])[0]["binds"].as_u64().unwrap();
    assert_eq!(binds, 1, "the bind is live before the revocation");
    let t = Instant::now();
    ok(h1, &["ref", "revoke", &r]);
    wait_until(Duration::from_secs(2), Duration::from_millis(20), || Ok(json(h1, &["exports"])[0]["binds"] == 0))
        .expect("the live bind is cut within 2 s of the revocation");
    eprintln!("live bind cut {:?} after revoke", t.elapsed());
    let status = reader.wait_timeout(Duration::from_secs(20)).expect("the reader ends");
    assert!(!status.success(), "the cut transfer ends with an error");
    let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(got < 256 << 20, "the transfer stopped early ({got} bytes)");
}

#[test]
fn identity_exports_and_refs_survive_kill_9() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let mut nodes = lab.start_nodes(&[]).unwrap();
    all_see_each_other(&lab, 1);
    let (h1, h2) = (lab.host(1), lab.host(2));
    let before = json(h1, &["status"]);
    let src = make_file(h1, "keep.bin", 3 << 20);
    let r = ok(h1, &["file", "export", src.to_str().unwrap(), "--name", "keep"]);
    let delegated = ok(h2, &["ref", "delegate", &r, "--read-only"]);

    nodes[0].kill9();
    let err = fails(h2, &["file", "cat", &r]);
    assert!(err.contains("cannot reach node"), "exporter down: refused with a reason: {err}");
    nodes[0].restart().unwrap();
    let after = json(h1, &["status"]);
    assert_eq!(before["key"], after["key"]);
    assert_eq!(before["overlay"], after["overlay"]);
    assert_eq!(json(h1, &["exports"])[0]["name"], "keep");
    all_see_each_other(&lab, 1);
    for reference in [&r, &delegated] {
        let out = h2.dir().join("after.bin");
        ok(h2, &["file", "cat", reference, "-o", out.to_str().unwrap()]);
        same_file(&src, &out);
    }
    // Revocations survive a crash too.
    ok(h1, &["ref", "revoke", &delegated]);
    nodes[0].kill9();
    nodes[0].restart().unwrap();
    all_see_each_other(&lab, 1);
    let err = fails(h2, &["file", "cat", &delegated]);
    assert!(err.contains("revoked"), "{err}");
    ok(h2, &["file", "cat", &r, "-o", "/dev/null"]);
}

#[test]
fn a_node_with_another_mesh_key_stays_out() {
    require_root();
    let lab = Lab::new(5).unwrap();
    let key_a = lab.dir().join("mesh-a.key");
    let key_b = lab.dir().join("mesh-b.key");
    std::fs::write(&key_a, b"mesh a secret: 0123456789abcdef").unwrap();
    std::fs::write(&key_b, b"mesh b secret: fedcba9876543210").unwrap();
    let mut nodes = vec![];
    for i in 1..=3 {
        nodes.push(lab.host(i).start_node(&["--mesh-key", key_a.to_str().unwrap()]).unwrap());
    }
    // Host 4 has another key, host 5 none.
    nodes.push(lab.host(4).start_node(&["--mesh-key", key_b.to_str().unwrap()]).unwrap());
    nodes.push(lab.host(5).start_node(&[]).unwrap());
    let outsiders = [key(lab.host(4)), key(lab.host(5))];
    for i in [4, 5] {
        let src = make_file(lab.host(i), "secret.bin", 1000);
        ok(lab.host(i), &["file", "export", src.to_str().unwrap()]);
    }
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok((1..=3).all(|i| json(lab.host(i), &["status"])["peers"].as_u64() == Some(2)))
    })
    .expect("the three members find each other");
    // Give the outsiders every chance: mDNS has long since announced them.
    std::thread::sleep(Duration::from_secs(3));
    for i in 1..=3 {
        let peers = json(lab.host(i), &["peers"]);
        assert_eq!(peers.as_array().unwrap().len(), 2, "host {i}: {peers}");
        for o in &outsiders {
            assert!(peers.as_array().unwrap().iter().all(|p| p["key"] != o.as_str()), "host {i} knows an outsider");
        }
        assert!(json(lab.host(i), &["resources"]).as_array().unwrap().is_empty(), "no resource of an outsider leaks");
        assert_eq!(json(lab.host(i), &["status"])["peers"], 2, "host {i} keeps no connection to an outsider");
    }
    for i in [4, 5] {
        assert_eq!(json(lab.host(i), &["peers"]).as_array().unwrap().len(), 0, "outsider {i} knows nobody");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    require_root();
    let lab = Lab::new(1).unwrap();
    let _n = lab.start_nodes(&[]).unwrap();
    let h = lab.host(1);
    let dir = h.dir().to_str().unwrap().to_string();
    let cases: [(&[&str], &str); 7] = [
        (&["file", "export", "/nonexistent/file"], "/nonexistent/file"),
        (&["file", "export", &dir], "neither a regular file nor a block device"),
        (&["resources", "--kind", "bogus"], "file"),
        (&["ref", "show", "ref://[fd6f:e1da:f01c::1]/!!!"], "bad ref"),
        (&["ref", "delegate", "ref://[::1]/AAAA", "--read-only"], "fd6f:e1da:f01c::/48"),
        (&["unexport", "nosuchexport"], "no export matches"),
        (&["ref", "delegate", "ref://[fd6f:e1da:f01c::1]/AAAA", "--to", "nobody"], "bad ref"),
    ];
    for (args, needle) in cases {
        let err = fails(h, args);
        assert!(err.to_lowercase().contains(&needle.to_lowercase()), "metac {args:?}: {err}");
    }
    assert!(json(h, &["exports"]).as_array().unwrap().is_empty(), "nothing was exported by the bad requests");

    // The API socket is private to its owner, and a second node cannot take it over.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(h.socket()).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(h.state_dir()).unwrap().permissions().mode() & 0o777, 0o700, "state dir is private");
    let bin = metac_tests::metac_bin().unwrap();
    let other_state = h.dir().join("second");
    let sock = h.socket();
    let args = ["--socket", sock.to_str().unwrap(), "node", "--state", other_state.to_str().unwrap(), "--port", "0"];
    let err = match h.run(&bin, args) {
        Err(Error::Failed { output, .. }) => String::from_utf8_lossy(&output.stderr).to_string(),
        other => panic!("a second node on the same socket must refuse to start: {other:?}"),
    };
    assert!(err.contains("already running"), "{err}");
    // And one state dir serves one node.
    let state = h.state_dir();
    let args = ["--socket", "/tmp/metac-unused.sock", "node", "--state", state.to_str().unwrap(), "--port", "0"];
    let err = match h.run(&bin, args) {
        Err(Error::Failed { output, .. }) => String::from_utf8_lossy(&output.stderr).to_string(),
        other => panic!("a second node on the same state dir must refuse to start: {other:?}"),
    };
    assert!(err.contains("in use by another metac node"), "{err}");
    assert_eq!(json(h, &["status"])["exports"], 0, "the first node still answers");
}

#[test]
fn bootstrap_peers_without_mdns_retry_and_gossip_the_rest() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let h1 = lab.host(1);
    let peer = format!("[{}]:4747", h1.addr());
    // Hosts 2 and 3 start first and know only host 1, which is not up yet: they retry with backoff.
    let _n2 = lab.host(2).start_node(&["--no-mdns", "--peer", &peer]).unwrap();
    let _n3 = lab.host(3).start_node(&["--no-mdns", "--peer", &peer]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(json(lab.host(2), &["status"])["peers"], 0);
    let _n1 = h1.start_node(&["--no-mdns", "--port", "4747"]).unwrap();
    // Hosts 2 and 3 reach host 1 on a retry, then learn of each other from its adverts and connect directly.
    let took = all_see_each_other(&lab, 2);
    eprintln!("bootstrap + gossip full mesh {took:?} after host 1 started");
    let peers = json(lab.host(2), &["peers"]);
    let via: Vec<&str> = peers.as_array().unwrap().iter().map(|p| p["via"].as_str().unwrap()).collect();
    assert!(via.contains(&"bootstrap"), "{peers}");
    let h3key = key(lab.host(3));
    let p3 = peers.as_array().unwrap().iter().find(|p| p["key"] == h3key.as_str()).expect("host 2 knows host 3");
    assert!(p3["via"] == "gossip" || p3["via"] == "inbound", "host 3 came from gossip: {p3}");
}

/// Loads an nftables ruleset into host `h`.
fn nft(h: &Host, ruleset: &str) {
    let file = h.dir().join("rules.nft");
    std::fs::write(&file, format!("{ruleset}\n")).unwrap();
    h.run("nft", ["-f", file.to_str().unwrap()]).unwrap();
}

/// mDNS reports an address once per record lifetime (minutes): a node whose first dial to a LAN peer failed
/// must retry on its own. Here only mDNS gets through at first: both nodes hear of each other, every dial fails;
/// once the filter lifts they connect within seconds, not at the next announcement.
#[test]
fn lan_peers_whose_first_dials_failed_are_redialed() {
    require_root();
    let lab = Lab::new(2).unwrap();
    // Each host sends nothing but mDNS (UDP to port 5353) to the LAN: its TCP dials are refused at once, its QUIC
    // dials give up after QUIC's 5 s handshake timeout.
    for h in lab.hosts() {
        nft(
            h,
            "table inet mdnsonly {
                chain out {
                    type filter hook output priority 0;
                    oifname \"eth0\" meta l4proto tcp reject with tcp reset
                    oifname \"eth0\" udp dport != 5353 drop
                }
            }",
        );
    }
    let nodes = lab.start_nodes(&["--no-overlay"]).unwrap();
    for node in &nodes {
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            Ok(std::fs::read_to_string(node.log_path()).unwrap_or_default().contains("discovered by mDNS"))
        })
        .unwrap_or_else(|e| panic!("host {} hears of the other by mDNS: {e}", node.host().index()));
    }
    // Past QUIC's handshake timeout: no first dial is still pending when the filter lifts.
    std::thread::sleep(Duration::from_secs(7));
    for h in lab.hosts() {
        assert_eq!(json(h, &["status"])["peers"], 0, "host {}: nothing but mDNS got through", h.index());
    }
    for h in lab.hosts() {
        h.run("nft", ["delete table inet mdnsonly"]).unwrap();
    }
    let took = all_see_each_other(&lab, 1);
    eprintln!("connected {took:?} after the filter lifted");
}

/// Dials go one address at a time, TCP first: a firewall that drops TCP silently must not hold up the QUIC
/// fallback for the kernel's two minutes of SYN retries. Host 2 drops all TCP from the LAN; both nodes meet
/// over QUIC once their TCP handshakes time out (10 s).
#[test]
fn a_lan_that_drops_tcp_falls_back_to_quic_within_seconds() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let h2 = lab.host(2);
    nft(
        h2,
        "table inet notcp {
            chain in {
                type filter hook input priority 0;
                iifname \"eth0\" meta l4proto tcp drop
            }
        }",
    );
    let _nodes = lab.start_nodes(&["--no-overlay"]).unwrap();
    let took = all_see_each_other(&lab, 1);
    eprintln!("connected over QUIC {took:?} after both answered");
}

/// `metac file bind`: a local NBD endpoint that real NBD clients use as they would nbdkit, listed with its state,
/// read-only when the ref is, surviving its exporter's restart, and gone on unbind.
#[test]
fn file_bind_serves_real_nbd_clients() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let mut nodes = lab.start_nodes(&[]).unwrap();
    all_see_each_other(&lab, 1);
    let (h1, h2) = (lab.host(1), lab.host(2));
    let src = make_file(h1, "disk.img", 64 << 20);
    let r = ok(h1, &["file", "export", src.to_str().unwrap(), "--name", "disk"]);
    let sock = h2.dir().join("disk.sock");
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let bound = json(h2, &["file", "bind", &r, "-U", sock.to_str().unwrap()]);
    assert_eq!(bound["state"], "up", "{bound}");
    let id = bound["id"].as_str().unwrap().to_string();

    // nbdinfo sees the size; nbdcopy reads it byte for byte; qemu-img knows it as a raw disk.
    let info = h2.run("nbdinfo", ["--json", &uri]).expect("nbdinfo on the bind");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["exports"][0]["export-size"], 64u64 << 20, "{info}");
    let out = h2.dir().join("copy.img");
    h2.run("nbdcopy", [uri.as_str(), out.to_str().unwrap()]).expect("nbdcopy from the bind");
    same_file(&src, &out);
    let qemu = h2.run("qemu-img", ["info", "--output=json", &uri]).expect("qemu-img info on the bind");
    assert!(String::from_utf8_lossy(&qemu.stdout).contains(&format!("{}", 64u64 << 20)));

    // Listed, per kind and in all binds, with the bytes it moved.
    let listed = json(h2, &["file", "ls"]);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(listed[0]["bytes"].as_u64().unwrap() >= 64 << 20, "{listed}");
    assert_eq!(json(h2, &["binds"])[0]["target"], sock.to_str().unwrap());

    // A write through a read-only ref fails; through the full ref it lands in the exported file.
    let ro = ok(h1, &["ref", "delegate", &r, "--read-only"]);
    let ro_sock = h2.dir().join("ro.sock");
    ok(h2, &["file", "bind", &ro, "-U", ro_sock.to_str().unwrap()]);
    let patch = h2.dir().join("patch.bin");
    std::fs::write(&patch, vec![0xabu8; 1 << 20]).unwrap();
    let ro_uri = format!("nbd+unix:///?socket={}", ro_sock.display());
    assert!(h2.run("nbdcopy", [patch.to_str().unwrap(), ro_uri.as_str()]).is_err(), "a read-only bind refuses writes");
    h2.run("nbdcopy", [patch.to_str().unwrap(), uri.as_str()]).expect("a write through the read-write bind");
    assert_eq!(&std::fs::read(&src).unwrap()[..1 << 20], &vec![0xabu8; 1 << 20][..]);

    // The exporter restarts: the bind says so, then comes back by itself.
    nodes[0].kill9();
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        Ok(json(h2, &["binds"]).as_array().unwrap().iter().any(|b| b["state"] == "retrying"))
    })
    .expect("the bind reports its exporter gone");
    nodes[0].restart().unwrap();
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        Ok(json(h2, &["file", "ls"]).as_array().unwrap().iter().all(|b| b["state"] == "up"))
    })
    .expect("the binds come back with their exporter");
    h2.run("nbdinfo", ["--size", &uri]).expect("nbdinfo after the exporter came back");

    // Unbind by socket path and by id: the sockets go.
    ok(h2, &["file", "unbind", sock.to_str().unwrap()]);
    assert!(!sock.exists(), "the endpoint's socket is removed");
    let rest = json(h2, &["binds"]);
    ok(h2, &["unbind", rest[0]["id"].as_str().unwrap()]);
    assert!(!ro_sock.exists());
    assert_eq!(json(h2, &["binds"]), serde_json::json!([]));
    let err = fails(h2, &["file", "unbind", "nothing"]);
    assert!(err.contains("no bind matches"), "{err}");
}
