//! A lab: N hosts (network namespaces) on one Linux bridge that lives in a switch namespace of its own, so each lab
//! is an isolated L2 segment and the root namespace is never touched (the same topology as `shared/lab/netns.sh`).
//!
//! ```text
//!   <lab>-sw:  br0 (stp off, mcast_snooping off, IPv6 off) ── v1 … vN
//!   <lab>-hI:  lo up, eth0 (peer of vI) = fd00:77:<net>::I/64 nodad, MAC 02:77:<net>:00:I
//! ```
//!
//! Faults are applied where a test cannot see or undo them by accident: [`Lab::link_down`] takes the switch port
//! down (the host keeps its address and sees no carrier), [`Lab::partition`] and [`Lab::loss`] are nftables rules
//! on the bridge's forward hook, which covers unicast, multicast (mDNS) and neighbour discovery alike. Only
//! [`Lab::netem`] acts inside the host, as `tc` on its `eth0`.
//!
//! Dropping a lab stops every process started in it (nodes first), deletes its namespaces and, unless
//! `METAC_LAB_KEEP=1`, its directory. When the test is panicking it first prints the tail of every log.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{last_lines, text, Error, Result};
use crate::exec::{checked, checked_stdin, command, lock, require_tool, Registry, TERM_GRACE};
use crate::host::Host;
use crate::netns;
use crate::node::Node;

/// Most hosts in one lab (the last byte of the MAC and address).
pub const MAX_HOSTS: usize = 250;

/// Above this many hosts, each host gets permanent neighbour entries for all others: the kernel's neighbour table is
/// shared by all namespaces and overflows in a larger full mesh (DESIGN section 10).
pub const STATIC_NEIGH_ABOVE: usize = 30;

/// Time limit of each setup and fault command.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of each log printed by [`Lab::dump_logs`].
const DUMP_LINES: usize = 40;

/// nftables table in the switch namespace holding partitions and loss.
const NFT_TABLE: &str = "bridge metaclab";

static LABS: AtomicU32 = AtomicU32::new(0);

/// A set of hosts on one bridge; see the module doc. Hosts are numbered from 1: `lab.host(1)` is the first and
/// `lab.hosts()[0]` is the same host.
#[derive(Debug)]
pub struct Lab {
    id: String,
    switch: String,
    dir: PathBuf,
    hosts: Vec<Host>,
    registry: Arc<Registry>,
    filter: Mutex<Filter>,
}

/// The nftables state of the switch, kept so rules can be rendered again as a whole.
#[derive(Debug, Default)]
struct Filter {
    installed: bool,
    loss: BTreeMap<usize, f64>,
}

impl Lab {
    /// Builds `n` hosts (1..=250) on a fresh bridge. Panics when not root (see [`crate::require_root`]). Removes
    /// namespaces and directories left by crashed runs first.
    pub fn new(n: usize) -> Result<Lab> {
        crate::require_root();
        if !(1..=MAX_HOSTS).contains(&n) {
            return Err(Error::InvalidArg(format!("a lab has 1..={MAX_HOSTS} hosts, not {n}")));
        }
        require_tool("ip", "iproute2")?;
        let tmp = std::env::temp_dir();
        netns::clean_stale(&tmp);
        let lab = Lab::named(n, &tmp)?;
        lab.setup()?;
        Ok(lab)
    }

    /// Picks an unused name and creates the directories; no namespaces yet. From here on `Drop` cleans up.
    fn named(n: usize, tmp: &Path) -> Result<Lab> {
        let pid = std::process::id();
        let existing = netns::list();
        let (id, counter) = loop {
            let counter = LABS.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}{pid:x}-{counter}", netns::PREFIX);
            // An earlier process with the same pid may have left this name behind.
            let taken = existing.iter().any(|e| e.strip_prefix(&id).is_some_and(|r| r.starts_with('-')));
            if !taken && !tmp.join(&id).exists() {
                break (id, counter);
            }
        };
        // The /64 of this lab: differs between labs so addresses in logs tell labs apart; never 0 (netns.sh's).
        let net = ((pid.wrapping_mul(0x9e37) ^ counter.wrapping_mul(0x61c9)) % 0xffff + 1) as u16;
        let dir = tmp.join(&id);
        let registry = Arc::new(Registry::default());
        let mut hosts = Vec::with_capacity(n);
        for index in 1..=n {
            let [hi, lo] = net.to_be_bytes();
            hosts.push(Host {
                index,
                name: format!("{id}-h{index}"),
                addr: Ipv6Addr::new(0xfd00, 0x77, net, 0, 0, 0, 0, index as u16),
                mac: [0x02, 0x77, hi, lo, 0, index as u8],
                dir: dir.join(format!("h{index}")),
                registry: Arc::clone(&registry),
                spawned: Arc::new(AtomicUsize::new(0)),
            });
        }
        let lab = Lab { switch: format!("{id}-sw"), id, dir, hosts, registry, filter: Mutex::new(Filter::default()) };
        for h in &lab.hosts {
            std::fs::create_dir_all(&h.dir).map_err(|e| Error::io(format!("create {}", h.dir.display()), e))?;
        }
        Ok(lab)
    }

    fn setup(&self) -> Result<()> {
        let ns: String = std::iter::once(&self.switch)
            .chain(self.hosts.iter().map(|h| &h.name))
            .map(|name| format!("netns add {name}\n"))
            .collect();
        checked_stdin(&mut command("ip", ["-batch", "-"]), &ns, SETUP_TIMEOUT)?;

        // No addresses, DAD or MLD on the bridge side; hosts skip DAD (link-local too) and ignore RAs. The host
        // defaults must be set before eth0 exists so it inherits them.
        sysctl(&self.switch, &["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
        let host_sysctls = [
            "net.ipv6.conf.all.accept_ra=0",
            "net.ipv6.conf.default.accept_ra=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        par_map(&self.hosts, |h| sysctl(&h.name, &host_sysctls))?;

        let mut sw = String::from("link set lo up\nlink add br0 type bridge stp_state 0 mcast_snooping 0\n");
        sw.push_str("link set br0 up\n");
        for h in &self.hosts {
            let (i, mac, name) = (h.index, h.mac(), &h.name);
            sw.push_str(&format!("link add v{i} type veth peer name eth0 address {mac} netns {name}\n"));
            sw.push_str(&format!("link set v{i} master br0 up\n"));
        }
        checked_stdin(&mut command("ip", ["-n", &self.switch, "-batch", "-"]), &sw, SETUP_TIMEOUT)?;

        let static_neigh = self.hosts.len() > STATIC_NEIGH_ABOVE;
        par_map(&self.hosts, |h| {
            let mut s = format!("link set lo up\naddr add {}/64 dev eth0 nodad\nlink set eth0 up\n", h.addr);
            if static_neigh {
                for o in self.hosts.iter().filter(|o| o.index != h.index) {
                    s.push_str(&format!("neigh replace {} lladdr {} nud permanent dev eth0\n", o.addr, o.mac()));
                }
            }
            checked_stdin(&mut command("ip", ["-n", &h.name, "-batch", "-"]), &s, SETUP_TIMEOUT).map(drop)
        })?;
        self.check_ready()
    }

    /// Host 1 reaches the last host within ~3 s (skipped without `ping`; the parts are synchronous anyway).
    fn check_ready(&self) -> Result<()> {
        let (first, last) = (&self.hosts[0], &self.hosts[self.hosts.len() - 1]);
        if first.index == last.index || require_tool("ping", "iputils-ping").is_err() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !first.ping(last.addr)? {
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: format!("lab {}: host 1 cannot reach host {} ({})", self.id, last.index, last.addr),
                    log_tail: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Host `i`, counting from 1. Panics when there is no such host.
    pub fn host(&self, i: usize) -> &Host {
        match i.checked_sub(1).and_then(|k| self.hosts.get(k)) {
            Some(h) => h,
            None => panic!("lab {} has hosts 1..={}, not {i}", self.id, self.hosts.len()),
        }
    }

    /// All hosts, host 1 first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a lab has at least one host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The lab's name, `mlab<pid-hex>-<n>`; every namespace of the lab starts with it followed by `-`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The switch namespace, which holds `br0` and the ports `v1..vN`.
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// The lab's directory; host `i` uses `<dir>/h<i>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a `metac node` in every host at once (see [`Host::start_node`]), host 1's first in the result.
    pub fn start_nodes(&self, extra_args: &[&str]) -> Result<Vec<Node>> {
        self.start_nodes_with(&crate::metac_bin()?, extra_args)
    }

    /// [`Lab::start_nodes`] with a given `metac` binary.
    pub fn start_nodes_with(&self, bin: &Path, extra_args: &[&str]) -> Result<Vec<Node>> {
        par_map(&self.hosts, |h| h.start_node_with(bin, extra_args))
    }

    /// Takes host `i`'s switch port down: the host keeps its address but has no carrier, as with a pulled cable.
    pub fn link_down(&self, i: usize) -> Result<()> {
        self.switch_port(i, "down")
    }

    /// Brings host `i`'s switch port back up.
    pub fn link_up(&self, i: usize) -> Result<()> {
        self.switch_port(i, "up")
    }

    fn switch_port(&self, i: usize, state: &str) -> Result<()> {
        let port = format!("v{}", self.host(i).index);
        checked(&mut command("ip", ["-n", &self.switch, "link", "set", &port, state]), SETUP_TIMEOUT).map(drop)
    }

    /// `tc qdisc replace dev eth0 root netem <spec>` in host `i`, e.g. `"delay 20ms loss 5%"`. Returns
    /// [`Error::Unsupported`] on kernels built without the netem qdisc; [`Lab::loss`] works everywhere.
    pub fn netem(&self, i: usize, spec: &str) -> Result<()> {
        let h = self.host(i);
        let mut cmd = command("tc", ["-n", &h.name, "qdisc", "replace", "dev", "eth0", "root", "netem"]);
        cmd.args(spec.split_whitespace());
        match checked(&mut cmd, SETUP_TIMEOUT) {
            Err(Error::Failed { output, .. }) if text(&output.stderr).contains("kind is unknown") => {
                Err(Error::Unsupported(format!(
                    "netem `{spec}` in host {i}: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); \
                     use Lab::loss for packet loss"
                )))
            }
            r => r.map(drop),
        }
    }

    /// Removes a [`Lab::netem`] setting from host `i` (no-op if there is none).
    pub fn netem_clear(&self, i: usize) -> Result<()> {
        let h = self.host(i);
        let show = checked(&mut command("tc", ["-n", &h.name, "qdisc", "show", "dev", "eth0", "root"]), SETUP_TIMEOUT)?;
        if !text(&show.stdout).contains("netem") {
            return Ok(());
        }
        checked(&mut command("tc", ["-n", &h.name, "qdisc", "del", "dev", "eth0", "root"]), SETUP_TIMEOUT).map(drop)
    }

    /// Drops each frame host `i` sends with probability `percent`/100 (like netem's egress loss), at the bridge.
    /// `0.0` removes it. Needs `nft` (Debian package `nftables`).
    pub fn loss(&self, i: usize, percent: f64) -> Result<()> {
        let h = self.host(i);
        if !(0.0..=100.0).contains(&percent) {
            return Err(Error::InvalidArg(format!("loss for host {i} must be 0..=100 %, not {percent}")));
        }
        let mut f = lock(&self.filter);
        self.install_filter(&mut f)?;
        if percent == 0.0 {
            f.loss.remove(&h.index);
        } else {
            f.loss.insert(h.index, percent);
        }
        let mut script = format!("flush chain {NFT_TABLE} loss\n");
        for (i, p) in &f.loss {
            let ppm = (p * 10_000.0).round() as u32;
            script.push_str(&format!(
                "add rule {NFT_TABLE} loss iifname \"v{i}\" numgen random mod 1000000 < {ppm} drop\n"
            ));
        }
        self.nft(&script)
    }

    /// Drops all traffic between hosts in `a` and hosts in `b` (both directions, all protocols), at the bridge.
    /// Other pairs are unaffected; several partitions add up. Undo with [`Lab::heal`].
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<()> {
        if a.is_empty() || b.is_empty() || a.iter().any(|i| b.contains(i)) {
            return Err(Error::InvalidArg(format!(
                "partition needs two non-empty disjoint groups, got {a:?} and {b:?}"
            )));
        }
        let ports =
            |g: &[usize]| g.iter().map(|&i| format!("\"v{}\"", self.host(i).index)).collect::<Vec<_>>().join(", ");
        let (pa, pb) = (ports(a), ports(b));
        let mut f = lock(&self.filter);
        self.install_filter(&mut f)?;
        self.nft(&format!(
            "add rule {NFT_TABLE} partition iifname {{ {pa} }} oifname {{ {pb} }} drop\n\
             add rule {NFT_TABLE} partition iifname {{ {pb} }} oifname {{ {pa} }} drop\n"
        ))
    }

    /// Removes every [`Lab::partition`].
    pub fn heal(&self) -> Result<()> {
        let f = lock(&self.filter);
        if !f.installed {
            return Ok(());
        }
        self.nft(&format!("flush chain {NFT_TABLE} partition\n"))
    }

    fn install_filter(&self, f: &mut Filter) -> Result<()> {
        if f.installed {
            return Ok(());
        }
        require_tool("nft", "nftables")?;
        self.nft(&format!(
            "add table {NFT_TABLE}\n\
             add chain {NFT_TABLE} partition\n\
             add chain {NFT_TABLE} loss\n\
             add chain {NFT_TABLE} forward {{ type filter hook forward priority 0; policy accept; }}\n\
             add rule {NFT_TABLE} forward jump partition\n\
             add rule {NFT_TABLE} forward jump loss\n"
        ))?;
        f.installed = true;
        Ok(())
    }

    fn nft(&self, script: &str) -> Result<()> {
        checked_stdin(&mut command("ip", ["netns", "exec", &self.switch, "nft", "-f", "-"]), script, SETUP_TIMEOUT)
            .map(drop)
    }

    /// Prints the last lines of every log in every host directory to stderr (called by `Drop` during a panic).
    pub fn dump_logs(&self) {
        eprintln!("==== metac-tests: logs of lab {} ({}) ====", self.id, self.dir.display());
        for h in &self.hosts {
            let Ok(entries) = std::fs::read_dir(&h.dir) else { continue };
            let mut logs: Vec<PathBuf> = entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for log in logs {
                let body = std::fs::read(&log).map(|b| text(&b)).unwrap_or_default();
                if body.trim().is_empty() {
                    continue;
                }
                let name = log.file_name().unwrap_or_default().to_string_lossy();
                eprintln!("---- host {} ({}) {name}, last {DUMP_LINES} lines ----", h.index, h.addr);
                eprintln!("{}", last_lines(body.trim_end(), DUMP_LINES));
            }
        }
        eprintln!("==== end of lab {} logs ====", self.id);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
        self.registry.stop_all(TERM_GRACE);
        let names: Vec<String> =
            self.hosts.iter().map(|h| h.name.clone()).chain(std::iter::once(self.switch.clone())).collect();
        // Whatever was started by other means (a daemonised child, `ip netns exec` from the test) keeps a namespace
        // alive after its name is gone: kill it first.
        netns::kill_all_in(&names);
        if let Err(e) = netns::delete(&names) {
            eprintln!("metac-tests: deleting the namespaces of lab {}: {e}", self.id);
        }
        if std::env::var_os("METAC_LAB_KEEP").is_some_and(|v| v == "1") {
            let _ = std::fs::write(self.dir.join(netns::KEEP_MARKER), "");
            eprintln!("metac-tests: METAC_LAB_KEEP=1: files of lab {} kept in {}", self.id, self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("metac-tests: removing {}: {e}", self.dir.display());
            }
        }
    }
}

/// `sysctl -qw settings...` inside namespace `ns`.
fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut cmd = command("ip", ["netns", "exec", ns, "sysctl", "-qw"]);
    cmd.args(settings);
    checked(&mut cmd, SETUP_TIMEOUT).map(drop)
}

/// Runs `f` on every item with a few threads (lab work is mostly waiting for processes) and returns the results in
/// order; after the first error no new item is started and that error is returned.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R>>>> = Mutex::new(items.iter().map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..items.len().clamp(1, 4) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= items.len() || failed.load(Ordering::Relaxed) {
                    return;
                }
                let r = f(&items[k]);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                lock(&results)[k] = Some(r);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.into_iter().flatten().collect()
}

// Tests share a lab between threads.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<Lab>();
};
