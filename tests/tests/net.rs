//! The net kind between real hosts: `metac net export` on one netns host, `metac net bind` on others, and real
//! tools on the TAP segment (ping, iperf3, dnsmasq and a DHCP client, tcpdump). Build the binary first (`cargo
//! build --bin metac`); the tests need root and never skip.

use std::process::Output;
use std::time::{Duration, Instant};

use metac_tests::{output, require_root, wait_until, Host, Lab};

fn ok(h: &Host, args: &[&str]) -> String {
    h.metac_ok(args)
}

fn json(h: &Host, args: &[&str]) -> serde_json::Value {
    h.metac_json(args)
}

/// `sh -c script` in host `h`, any exit status.
fn sh(h: &Host, script: &str) -> Output {
    output(&mut h.cmd("sh", ["-c", script]), Duration::from_secs(60)).expect("sh runs")
}

fn sh_ok(h: &Host, script: &str) -> String {
    let o = sh(h, script);
    assert!(
        o.status.success(),
        "`{script}` on host {} failed: {}{}",
        h.index(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until every net bind of `h` is up.
fn binds_up(h: &Host, n: usize) {
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let v = json(h, &["net", "ls"]);
        let b = v["binds"].as_array().unwrap();
        Ok(b.len() == n && b.iter().all(|b| b["state"] == "up"))
    })
    .unwrap_or_else(|e| panic!("host {}'s net binds come up: {e}; {}", h.index(), ok(h, &["net", "ls"])));
}

/// Gives `dev` on `h` the lab segment's addresses for host number `i`.
fn address(h: &Host, dev: &str, i: usize) {
    sh_ok(h, &format!("ip addr add 10.77.0.{i}/24 dev {dev} && ip addr add fd00:88::{i}/64 dev {dev} nodad"));
}

fn link_local(h: &Host, dev: &str) -> String {
    let o = sh_ok(h, &format!("ip -6 -o addr show dev {dev} scope link"));
    o.split_whitespace().nth(3).and_then(|a| a.split('/').next()).expect("a link-local address").to_string()
}

fn pings(h: &Host, addr: &str) -> bool {
    let fam = if addr.contains(':') { "-6" } else { "-4" };
    sh(h, &format!("ping {fam} -n -q -c 2 -i 0.2 -W 2 {addr}")).status.success()
}

/// Three hosts on one exported segment are one Ethernet: addresses of both families, ARP and neighbour discovery,
/// ping and iperf3 (TCP and UDP) between every pair, IPv6 multicast answered by all, and a DHCP server on the
/// exporter's side giving a binder an address. `net ls` shows the ports, the learned addresses and the counters.
#[test]
fn three_hosts_on_one_exported_segment_are_one_ethernet() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let h = |i| lab.host(i);
    let r = ok(h(1), &["net", "export", "newlocal:seg0", "--name", "lab-segment"]);
    assert!(r.starts_with("ref://"), "{r}");
    for i in [2, 3] {
        let out = ok(h(i), &["net", "bind", "newlocal:seg0", &r]);
        assert!(out.contains("seg0"), "{out}");
    }
    binds_up(h(2), 1);
    binds_up(h(3), 1);
    for i in 1..=3 {
        address(h(i), "seg0", i);
    }

    // Every pair, both families (the first ping of each resolves the address: ARP, neighbour discovery).
    for (a, b) in [(1, 2), (1, 3), (2, 3), (3, 1), (2, 1), (3, 2)] {
        assert!(pings(h(a), &format!("10.77.0.{b}")), "host {a} pings 10.77.0.{b}");
        assert!(pings(h(a), &format!("fd00:88::{b}")), "host {a} pings fd00:88::{b}");
    }
    let arp = sh_ok(h(2), "ip -4 neigh show dev seg0");
    assert!(arp.contains("10.77.0.3") && arp.contains("10.77.0.1"), "ARP learned both: {arp}");

    // Multicast: an echo to all nodes (ff02::1) is answered by every host on the segment.
    let all = sh_ok(h(1), "ping -6 -n -c 3 -i 0.3 -W 2 ff02::1%seg0 || true");
    for i in [2, 3] {
        let ll = link_local(h(i), "seg0");
        assert!(all.contains(&ll), "host {i} ({ll}) answers ff02::1: {all}");
    }

    // iperf3, TCP and UDP, between every pair.
    let _servers: Vec<_> =
        (1..=3).map(|i| h(i).spawn("iperf3", ["-s", "-B", &format!("10.77.0.{i}")]).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    for (a, b) in [(1, 2), (2, 3), (3, 1)] {
        let tcp: serde_json::Value =
            serde_json::from_str(&sh_ok(h(a), &format!("iperf3 -J -t 1 -c 10.77.0.{b}"))).expect("iperf3 JSON");
        let bps = tcp["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
        eprintln!("TCP {a} -> {b}: {:.2} Gbit/s", bps / 1e9);
        assert!(bps > 1e6, "TCP from host {a} to host {b}: {bps} bit/s");
        let udp: serde_json::Value =
            serde_json::from_str(&sh_ok(h(b), &format!("iperf3 -J -u -b 50M -t 1 -c 10.77.0.{a}")))
                .expect("iperf3 JSON");
        let s = &udp["end"]["sum"];
        eprintln!("UDP {b} -> {a}: {} packets, {}% lost", s["packets"], s["lost_percent"]);
        assert!(s["packets"].as_u64().unwrap() > 1000 && s["lost_percent"].as_f64().unwrap() < 20.0, "{s}");
    }

    // The exporter's view: three ports, each host's MAC learned, frames counted both ways.
    let v = json(h(1), &["net", "ls"]);
    let seg = &v["segments"][0];
    assert_eq!(seg["name"], "lab-segment");
    let ports = seg["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 3, "{seg}");
    for p in ports {
        assert!(p["macs"].as_u64().unwrap() >= 1 && p["rx_frames"].as_u64().unwrap() > 100, "{p}");
        assert!(p["tx_frames"].as_u64().unwrap() > 100, "{p}");
    }
    for i in [2, 3] {
        let mac = sh_ok(h(i), "cat /sys/class/net/seg0/address 2>/dev/null || ip -o link show seg0");
        let mac = mac.split_whitespace().find(|w| w.len() == 17 && w.matches(':').count() == 5).unwrap_or(mac.trim());
        assert!(seg["macs"].as_array().unwrap().iter().any(|m| m[0] == mac), "{mac} learned: {}", seg["macs"]);
    }
    let b = json(h(2), &["net", "ls"]);
    assert!(b["binds"][0]["sent_frames"].as_u64().unwrap() > 100, "{b}");
    assert_eq!(b["binds"][0]["mtu"], 1500);
    let text = ok(h(1), &["net", "ls"]);
    assert!(text.contains("lab-segment") && text.contains("local seg0"), "{text}");

    // DHCP: dnsmasq on the exporter's side hands a binder's second interface an address.
    let _dhcp = h(1)
        .spawn(
            "dnsmasq",
            [
                "--no-daemon",
                "--port=0",
                "--interface=seg0",
                "--bind-interfaces",
                "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,2m",
                "--dhcp-leasefile=/dev/null",
                "--no-resolv",
                "--no-hosts",
            ],
        )
        .unwrap();
    ok(h(3), &["net", "bind", "newlocal:dhcp0", &r]);
    binds_up(h(3), 2);
    let lease = sh_ok(h(3), "busybox udhcpc -i dhcp0 -n -q -f -t 10 -T 1 -s /bin/true 2>&1");
    assert!(lease.contains("lease of 10.77.0.1"), "udhcpc got a lease from dnsmasq: {lease}");

    // Unbind removes the interface.
    ok(h(3), &["net", "unbind", "dhcp0"]);
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        Ok(!sh(h(3), "ip link show dhcp0").status.success())
    })
    .expect("dhcp0 is removed on unbind");
}

/// A network namespace of the test's own behind a bridge, removed when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let o =
            output(std::process::Command::new("ip").args(["netns", "add", &name]), Duration::from_secs(10)).unwrap();
        assert!(o.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&o.stderr));
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output(std::process::Command::new("ip").args(["netns", "del", &self.0]), Duration::from_secs(10));
    }
}

/// `local:` on both sides: the exporter shares an existing bridge with a machine behind it, a binder reaches that
/// machine through a TAP of its own, and another binder joins the segment to a bridge of its own.
#[test]
fn a_bridge_and_the_host_behind_it_are_reached_from_binders() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let h = |i| lab.host(i);
    let behind = Netns::new(format!("{}-behind", lab.id()));
    let b = &behind.0;
    sh_ok(
        h(1),
        &format!(
            "ip link add lan0 type bridge && ip link set lan0 up && \
             ip link add vb0 type veth peer name eth1 netns {b} && ip link set vb0 master lan0 up && \
             ip -n {b} addr add 10.78.0.9/24 dev eth1 && ip -n {b} link set eth1 up && ip -n {b} link set lo up"
        ),
    );
    // A plain interface is not a bridge: refused with a message that says so, and nothing is left behind.
    let o = h(1).metac(&["net", "export", "local:eth0"]).expect_err("eth0 is not a bridge");
    assert!(o.to_string().contains("eth0 is not a bridge"), "{o}");
    assert!(json(h(1), &["exports"]).as_array().unwrap().is_empty());
    let r = ok(h(1), &["net", "export", "local:lan0"]);
    let v = json(h(1), &["net", "ls"]);
    let tap = v["segments"][0]["interface"].as_str().unwrap().to_string();
    assert_eq!(v["segments"][0]["bridge"], "lan0");
    assert!(
        sh_ok(h(1), &format!("ip -o link show {tap}")).contains("master lan0"),
        "the segment's TAP is in the bridge"
    );

    ok(h(2), &["net", "bind", "newlocal:office", &r]);
    binds_up(h(2), 1);
    sh_ok(h(2), "ip addr add 10.78.0.2/24 dev office");
    assert!(pings(h(2), "10.78.0.9"), "host 2 reaches the machine behind host 1's bridge");

    sh_ok(h(3), "ip link add br9 type bridge && ip addr add 10.78.0.3/24 dev br9 && ip link set br9 up");
    let out = ok(h(3), &["net", "bind", "local:br9", &r]);
    binds_up(h(3), 1);
    let v = json(h(3), &["net", "ls"]);
    let port = v["binds"][0]["interface"].as_str().unwrap();
    assert!(out.contains(port), "{out}");
    assert!(sh_ok(h(3), &format!("ip -o link show {port}")).contains("master br9"));
    assert!(pings(h(3), "10.78.0.9"), "a bridge joined on host 3 reaches the machine behind host 1's");
    assert!(pings(h(3), "10.78.0.2"), "and host 2's TAP");

    // Unexporting takes the TAP out of the bridge; the bridge and what is behind it stay.
    let id = json(h(1), &["exports"])[0]["id"].as_str().unwrap().to_string();
    ok(h(1), &["unexport", &id]);
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        Ok(!sh(h(1), &format!("ip link show {tap}")).status.success())
    })
    .expect("the exporter's TAP is removed on unexport");
    sh_ok(h(1), "ip link show lan0");
}

/// A read-only ref is a monitor port: its holder sees the segment's frames (tcpdump captures them) but nothing it
/// sends reaches the segment. A revoked ref is cut within a second, and the binder's interface goes.
#[test]
fn a_read_only_ref_only_listens_and_a_revoked_ref_is_cut_within_a_second() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let h = |i| lab.host(i);
    let r = ok(h(1), &["net", "export", "newlocal:seg0"]);
    let rw = ok(h(1), &["ref", "delegate", &r]);
    let ro = ok(h(1), &["ref", "delegate", &r, "--read-only"]);
    ok(h(2), &["net", "bind", "newlocal:seg0", &rw]);
    ok(h(3), &["net", "bind", "newlocal:mon0", &ro]);
    binds_up(h(2), 1);
    binds_up(h(3), 1);
    address(h(1), "seg0", 1);
    address(h(2), "seg0", 2);
    address(h(3), "mon0", 3);
    assert!(pings(h(2), "10.77.0.1"));

    // The monitor captures an echo to all nodes sent on the segment...
    let dump = h(3)
        .spawn("timeout", ["15", "tcpdump", "-l", "-n", "-i", "mon0", "-c", "2", "icmp6 and ip6[40] == 128"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    sh(h(1), "ping -6 -n -c 4 -i 0.3 ff02::1%seg0");
    assert!(dump.wait_timeout(Duration::from_secs(15)).is_some_and(|s| s.success()), "tcpdump captured 2 frames");
    let log = std::fs::read_to_string(dump.log_path().unwrap()).unwrap();
    assert!(log.contains("ff02::1") && log.contains("echo request"), "{log}");
    // ...but cannot be heard: no ping from it gets through, and the exporter never saw a frame from it.
    assert!(!pings(h(3), "10.77.0.1"), "a read-only binder's frames reach nobody");
    let v = json(h(3), &["net", "ls"]);
    assert_eq!(v["binds"][0]["can_send"], false);
    assert!(v["binds"][0]["dropped"].as_u64().unwrap() > 0, "{v}");
    assert!(v["binds"][0]["received_frames"].as_u64().unwrap() > 0, "{v}");
    let v = json(h(1), &["net", "ls"]);
    let ports = v["segments"][0]["ports"].as_array().unwrap();
    let mon = ports.iter().find(|p| p["name"].as_str().unwrap().ends_with("(read-only)")).expect("the monitor port");
    assert_eq!(mon["rx_frames"], 0, "{mon}");

    // Revoking host 2's ref cuts it at the exporter within a second, and host 2's TAP goes.
    let t = Instant::now();
    ok(h(1), &["ref", "revoke", &rw]);
    wait_until(Duration::from_secs(1), Duration::from_millis(20), || {
        Ok(json(h(1), &["net", "ls"])["segments"][0]["ports"].as_array().unwrap().len() == 2)
    })
    .expect("the revoked bind's port is gone within a second");
    eprintln!("revoked bind cut after {:?}", t.elapsed());
    assert!(!pings(h(2), "10.77.0.1"));
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(!sh(h(2), "ip link show seg0").status.success())
    })
    .expect("the revoked binder's TAP is removed");
    let b = json(h(2), &["binds"]);
    assert_eq!(b[0]["state"], "refused", "{b}");
}

/// The exporter's node restarts: its segment comes back and the binder, which kept its interface and addresses,
/// is on it again by itself. A persistent bind comes back after its node restarts; a node that stops removes its
/// interfaces.
#[test]
fn segments_heal_after_restarts_and_interfaces_go_with_their_node() {
    require_root();
    let lab = Lab::new(3).unwrap();
    let mut nodes = lab.start_nodes(&[]).unwrap();
    let h = |i| lab.host(i);
    let r = ok(h(1), &["net", "export", "newlocal:seg0"]);
    ok(h(2), &["net", "bind", "newlocal:seg0", &r]);
    ok(h(3), &["net", "bind", "newlocal:seg0", &r, "--persistent"]);
    binds_up(h(2), 1);
    binds_up(h(3), 1);
    for i in 1..=3 {
        address(h(i), "seg0", i);
    }
    assert!(pings(h(2), "10.77.0.1"));
    let ifindex = sh_ok(h(2), "cat /sys/class/net/seg0/ifindex");

    nodes[0].restart().unwrap();
    sh_ok(h(1), "ip link show seg0");
    address(h(1), "seg0", 1);
    wait_until(Duration::from_secs(30), Duration::from_millis(200), || Ok(pings(h(2), "10.77.0.1"))).unwrap_or_else(
        |e| {
            panic!(
                "host 2 reaches the restarted exporter again: {e}\n{}\n{}",
                ok(h(1), &["net", "ls"]),
                ok(h(2), &["net", "ls"])
            )
        },
    );
    assert_eq!(sh_ok(h(2), "cat /sys/class/net/seg0/ifindex"), ifindex, "the binder kept its interface");
    assert!(pings(h(2), "10.77.0.3"), "and the other binder");

    nodes[2].restart().unwrap();
    binds_up(h(3), 1);
    address(h(3), "seg0", 3);
    assert!(pings(h(3), "10.77.0.2"), "the persistent bind is back after its node restarted");

    nodes[1].stop().unwrap();
    assert!(!sh(h(2), "ip link show seg0").status.success(), "a stopped node leaves no interface behind");
    nodes[0].kill9();
    assert!(!sh(h(1), "ip link show seg0").status.success(), "nor does one killed with -9");
}
