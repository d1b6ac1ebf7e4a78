//! Containers (`metac run` and its lifecycle) with the real kernel: namespaces, cgroups, PTYs, mounts, a node
//! restarted under running containers. Each test starts a node in a netns host of its own; the containers'
//! commands are the host's own tools (sh, tail, ps) or busybox in a rootfs. Needs root; never skips.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use metac_tests::{busybox_root, output, read_until, require_root, wait_until, Host, Lab, Node};
use serde_json::Value;

struct One {
    node: Node,
    _lab: Lab,
}

impl One {
    fn start(extra: &[&str]) -> One {
        require_root();
        let lab = Lab::new(1).unwrap();
        let host = lab.host(1).clone();
        for d in [host.dir().parent().unwrap(), host.dir()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut args = vec!["--no-overlay", "--no-mdns"];
        args.extend_from_slice(extra);
        let node = host.start_node_sharing_mounts(&args).unwrap();
        One { node, _lab: lab }
    }

    fn host(&self) -> &Host {
        self.node.host()
    }

    /// `metac args...`, any exit status.
    fn metac(&self, args: &[&str]) -> Output {
        let h = self.host();
        let mut cmd = h.cmd(metac_tests::metac_bin().unwrap(), ["--socket", h.socket().to_str().unwrap()]);
        cmd.args(args);
        output(&mut cmd, Duration::from_secs(120)).unwrap()
    }

    /// `metac args...`, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.metac(args);
        assert!(
            o.status.success(),
            "metac {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("JSON")
    }

    fn ps(&self, key: &str) -> Option<Value> {
        let all = self.json(&["ps", "-a"]);
        all.as_array().unwrap().iter().find(|c| c["id"] == key || c["name"] == key).cloned()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_container_is_pid_1_with_its_own_hostname_and_only_lo_and_cannot_write_the_host() {
    let one = One::start(&[]);
    let script = "echo pid=$$; echo host=$(hostname); echo nets=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' \
                  | tr '\\n' ,); ls /sys/class/net | tr '\\n' ,; echo; touch /etc/metac-was-here 2>&1; echo touch=$?";
    let o = one.metac(&["run", "--hostname", "inside", "sh", "-c", script]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("host=inside\n"), "{out}");
    assert!(out.contains("nets=lo,\n"), "{out}");
    assert!(out.contains("\nlo,\n"), "its own sysfs lists only lo: {out}");
    assert!(out.contains("Read-only file system") && out.contains("touch=1"), "{out}");
    assert!(!Path::new("/etc/metac-was-here").exists());

    // Exit codes and failures pass through, as a shell's would.
    assert_eq!(one.metac(&["run", "sh", "-c", "exit 7"]).status.code(), Some(7));
    let o = one.metac(&["run", "no-such-command-here"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    assert!(text(&o).contains("no-such-command-here: command not found"), "{}", text(&o));
    let o = one.metac(&["run", "--mount", "/no/such/dir=tmpfs:", "true"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/no/such/dir: the host's root has no such path"), "{}", text(&o));
    // The host's network, when asked.
    let o = one.metac(&["run", "--network", "host", "sh", "-c", "tail -n +3 /proc/net/dev | wc -l"]);
    assert!(text(&o).trim().parse::<u32>().unwrap() >= 2, "the lab host has lo and its veth: {}", text(&o));
}

#[test]
fn the_memory_limit_oom_kills_and_the_pids_limit_stops_a_fork_bomb_and_cpus_cap_usage() {
    let one = One::start(&[]);
    // tail keeps one endless line of zeros in memory.
    let t = Instant::now();
    let o = one.metac(&["run", "--memory", "32M", "tail", "/dev/zero"]);
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    assert!(text(&o).contains("out of memory"), "{}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(60));

    // A fork bomb of 40 against a limit of 12 processes: the forks beyond it fail (perl counts them; a shell
    // would die of the first failed fork).
    let bomb = r#"my $n = 0; for (1..40) { my $p = fork; last unless defined $p; if ($p == 0) { sleep 5; exit 0 } $n++ }
                  opendir(my $d, "/proc"); my $procs = grep { /^\d+$/ } readdir($d); print "forked=$n procs=$procs\n""#;
    let o = one.metac(&["run", "--pids-limit", "12", "perl", "-e", bomb]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("forked=11 procs=12"), "12 processes at most, perl being the first: {out}");

    // A busy loop under 0.25 cpus uses about a quarter of the time it runs.
    let id = one.ok(&["run", "-d", "--cpus", "0.25", "sh", "-c", "while :; do :; done"]);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let s = one.json(&["stats", "--no-stream", &id]);
    let wall = t.elapsed().as_secs_f64();
    let cpu = s[0]["stats"]["cpu_ns"].as_u64().unwrap() as f64 / 1e9;
    assert!(cpu < 0.45 * wall && cpu > 0.05 * wall, "cpu {cpu:.2}s in {wall:.2}s under --cpus 0.25: {s}");
    assert_eq!(s[0]["info"]["limits"]["cpus"], 0.25);
    // Raised at run time.
    one.ok(&["update", "--cpus", "1", &id]);
    let before = one.json(&["stats", "--no-stream", &id])[0]["stats"]["cpu_ns"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let after = one.json(&["stats", "--no-stream", &id])[0]["stats"]["cpu_ns"].as_u64().unwrap();
    assert!((after - before) as f64 / 1e9 > 0.9, "after update --cpus 1: {}", (after - before) as f64 / 1e9);
    one.ok(&["rm", "-f", &id]);
}

#[test]
fn a_detached_container_outlives_the_cli_and_a_node_killed_and_restarted_and_its_logs_follow() {
    let mut one = One::start(&[]);
    let id = one.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "sh",
        "-c",
        "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    assert_eq!(id.len(), 12, "{id}");
    let c = one.ps("ticker").expect("listed");
    assert_eq!(c["state"], "running", "{c}");
    let pid = c["pid"].as_u64().unwrap();
    one.node.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the container lives on without its node");
    one.node.restart().unwrap();
    let c = one.ps("ticker").expect("re-adopted");
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(c["pid"].as_u64(), Some(pid));
    // Its output went on into the log all along.
    let logs = one.ok(&["logs", "ticker"]);
    let n = logs.lines().count();
    assert!(n >= 5 && logs.starts_with("tick 0\n"), "{logs}");
    let tail = one.ok(&["logs", "--tail", "2", "-t", "ticker"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.contains("Z tick ")), "timestamps: {tail}");
    // pause stops the ticking; unpause lets it go on.
    one.ok(&["pause", "ticker"]);
    assert_eq!(one.ps("ticker").unwrap()["state"], "paused");
    let a = one.ok(&["logs", "ticker"]).lines().count();
    std::thread::sleep(Duration::from_millis(600));
    let b = one.ok(&["logs", "ticker"]).lines().count();
    assert!(b <= a + 1, "paused, yet it printed {} lines", b - a);
    one.ok(&["unpause", "ticker"]);
    // sh as pid 1 ignores SIGTERM: stop waits the grace time, then kills.
    let t = Instant::now();
    one.ok(&["stop", "-t", "1", "ticker"]);
    assert!(t.elapsed() >= Duration::from_millis(900));
    let c = one.ps("ticker").unwrap();
    assert_eq!(c["state"], "exited");
    assert_eq!(c["exit"]["signal"], 9, "{c}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // logs -f follows a running container and returns when it ends.
    let id = one.ok(&["run", "-d", "sh", "-c", "for i in 1 2 3 4; do echo line $i; sleep 0.3; done; echo done >&2"]);
    let o = one.metac(&["logs", "-f", &id]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "line 1\nline 2\nline 3\nline 4\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "done\n");
    assert_eq!(one.ok(&["wait", &id]), "0");
    // on-failure:2 restarts a failing command twice, then leaves it ended with its code.
    let id = one.ok(&["run", "-d", "--restart", "on-failure:2", "sh", "-c", "echo attempt; exit 3"]);
    assert_eq!(one.ok(&["wait", &id]), "3");
    let c = one.ps(&id).unwrap();
    assert_eq!((c["state"].as_str(), c["restarts"].as_u64()), (Some("exited"), Some(2)), "{c}");
    assert_eq!(one.ok(&["logs", &id]), "attempt\nattempt\nattempt");
    // A running container is not removed without -f.
    let id = one.ok(&["run", "-d", "sleep", "100"]);
    let o = one.metac(&["rm", &id]);
    assert!(!o.status.success() && text(&o).contains("stop it first, or remove it with -f"), "{}", text(&o));
    one.ok(&["rm", "-f", &id]);
    assert!(one.ps(&id).is_none());
}

/// Everything of a container's in the kernel and on disk, by its id.
fn traces(one: &One, id: &str) -> Vec<String> {
    let mut found = vec![];
    let out = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "4", "-name", &format!("*{id}*")])
        .output()
        .unwrap();
    found.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
    let out =
        std::process::Command::new("find").arg(one.host().dir()).args(["-name", &format!("*{id}*")]).output().unwrap();
    found.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    found.extend(mounts.lines().filter(|l| l.contains(id)).map(str::to_string));
    found
}

#[test]
fn rm_leaves_no_cgroup_mount_or_state_behind() {
    let one = One::start(&[]);
    let id = one.ok(&["run", "-d", "--rm", "--memory", "64M", "--pids-limit", "50", "sh", "-c", "sleep 0.5; echo bye"]);
    assert!(!traces(&one, &id).is_empty(), "while it runs, it has a cgroup and a directory");
    wait_until(Duration::from_secs(20), Duration::from_millis(100), || Ok(one.ps(&id).is_none())).expect("removed");
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || Ok(traces(&one, &id).is_empty()))
        .unwrap_or_else(|_| panic!("left behind: {:?}", traces(&one, &id)));
    // rm of an ended one removes its logs and state too.
    let id = one.ok(&["run", "-d", "--memory", "64M", "true"]);
    one.ok(&["wait", &id]);
    assert_eq!(one.ps(&id).unwrap()["state"], "exited");
    one.ok(&["rm", &id]);
    assert!(traces(&one, &id).is_empty(), "left behind: {:?}", traces(&one, &id));
}

#[test]
fn local_mounts_and_a_rootfs_are_seen_inside_read_only_where_asked() {
    let one = One::start(&[]);
    let dir = one.host().dir().to_path_buf();
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host\n").unwrap();
    let rw = dir.join("rw");
    std::fs::create_dir(&rw).unwrap();
    let root = busybox_root(&dir);
    let m_ro = format!("/mnt=local:{}:ro", data.display());
    let m_rw = format!("/out=local:{}", rw.display());
    let script = "cat /mnt/hello.txt; echo x > /mnt/new 2>&1 || echo ro-refused; echo written > /out/result; \
                  ls /bin | wc -l; echo tmp > /scratch/t && cat /scratch/t";
    let o = one.metac(&[
        "run",
        "--rootfs",
        root.to_str().unwrap(),
        "--mount",
        &m_ro,
        "--mount",
        &m_rw,
        "--mount",
        "/scratch=tmpfs:",
        "sh",
        "-c",
        script,
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("hello from the host\n"), "{out}");
    assert!(out.contains("Read-only file system") && out.contains("ro-refused"), "{out}");
    assert_eq!(std::fs::read_to_string(rw.join("result")).unwrap(), "written\n");
    assert!(out.contains("tmp\n"));
    assert!(!data.join("new").exists());
    // The host's /bin has thousands of entries, busybox's a few hundred: this is busybox's root.
    let n: usize = out.lines().find_map(|l| l.trim().parse().ok()).unwrap();
    assert!(n > 100 && n < 600, "{n} entries in /bin: {out}");
    // A read-only rootfs.
    let o = one.metac(&["run", "--rootfs", root.to_str().unwrap(), "--read-only", "sh", "-c", "touch /etc/x"]);
    assert!(!o.status.success() && text(&o).contains("Read-only file system"), "{}", text(&o));
    // The working directory of the host's root is the caller's and writable; the rest is not.
    let o = one.metac(&["run", "sh", "-c", "pwd; echo made > here.txt"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).trim(), dir.display().to_string());
    assert_eq!(std::fs::read_to_string(dir.join("here.txt")).unwrap(), "made\n");
}

#[test]
fn a_pty_gets_the_terminals_size_and_passes_input_through() {
    let one = One::start(&[]);
    let h = one.host();
    let bin = metac_tests::metac_bin().unwrap();
    // `script` gives the CLI a terminal of 33x111; the container's shell sees that size and a tty on stdin.
    let inner = format!(
        "stty rows 33 cols 111; printf 'echo typed-$((6*7))\\nexit 3\\n' | {} --socket {} run -t -i sh -c 'stty size; tty; read l; eval \"$l\"; read l; eval \"$l\"'",
        bin.display(),
        h.socket().display()
    );
    let mut cmd = h.cmd("script", ["-qec", &inner, "/dev/null"]);
    let o = output(&mut cmd, Duration::from_secs(60)).unwrap();
    let out = text(&o);
    assert!(out.contains("33 111"), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("typed-42"), "{out}");
    assert_eq!(o.status.code(), Some(3), "{out}");
}

#[test]
fn a_user_other_than_root_gets_a_rootless_container_of_their_own() {
    const USER: &[&str] = &["--reuid=65534", "--regid=65534", "--groups=4242"];
    let one = One::start(&["--api-group", "4242"]);
    let h = one.host();
    let o = h
        .metac_as(USER, &["run", "-w", "/", "sh", "-c", "id -u; cat /proc/self/uid_map; touch /root/x 2>&1 | head -1"])
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "root inside: {out}");
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "65534", "1"], "{out}");
    assert!(out.contains("Read-only file system") || out.contains("Permission denied"), "{out}");
    // The attacker's way in: root's files through a mount, with every capability, as root inside. Root inside is
    // the user outside, so the kernel checks the user's rights and the capabilities stop at the user namespace.
    let o = h
        .metac_as(
            USER,
            &[
                "run",
                "--cap-add",
                "ALL",
                "-w",
                "/",
                "--mount",
                "/mnt=local:/root:ro",
                "sh",
                "-c",
                "ls /mnt 2>&1; cat /etc/shadow 2>&1; echo end",
            ],
        )
        .unwrap();
    let out = text(&o);
    assert!(out.contains("end"), "{out}");
    assert_eq!(out.matches("Permission denied").count(), 2, "root's directory and /etc/shadow stay closed: {out}");
    // Another user's id inside is refused, and the user sees only their own containers.
    let o = h.metac_as(USER, &["run", "-u", "1000", "true"]).unwrap();
    assert!(!o.status.success() && text(&o).contains("rootless"), "{}", text(&o));
    let root_id = one.ok(&["run", "-d", "sleep", "30"]);
    let o = h.metac_as(USER, &["--json", "ps", "-a"]).unwrap();
    assert!(!text(&o).contains(&root_id), "a user sees root's container: {}", text(&o));
    let o = h.metac_as(USER, &["kill", &root_id]).unwrap();
    assert!(!o.status.success() && text(&o).contains("no container"), "{}", text(&o));
    one.ok(&["rm", "-f", &root_id]);
}

#[test]
fn attach_and_exec_work_on_a_pty_and_window_size_changes_reach_the_process() {
    let one = One::start(&[]);
    let h = one.host();
    let script = "trap 'echo size=$(stty size)' WINCH; echo ready; while :; do sleep 0.05; done";
    one.ok(&["run", "-d", "-t", "-i", "--name", "termy", "sh", "-c", script]);

    // `metac attach` on a terminal this test holds: a new window size on it reaches the container's shell.
    let (mut child, master) = metac_tests::metac_on_pty(h, &["attach", "termy"]);
    std::thread::sleep(Duration::from_millis(1500));
    let ws = rustix::termios::Winsize { ws_row: 50, ws_col: 132, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&master, ws).unwrap();
    let seen = read_until(&master, "size=50 132", Duration::from_secs(15));
    assert!(seen.contains("size=50 132"), "{seen:?}");
    // Typed input reaches it too, and Ctrl-P Ctrl-Q detaches, leaving it running.
    rustix::io::write(&master, b"\x10\x11").unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "attach did not detach");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_eq!(one.ps("termy").unwrap()["state"], "running");

    // exec joins the container: its pid namespace (not pid 1), its cgroup, its hostname; exit codes pass through.
    let o = one.metac(&[
        "exec",
        "termy",
        "sh",
        "-c",
        "echo pid=$$ host=$(hostname) cg=$(cut -d: -f3 /proc/self/cgroup | sort -u); exit 4",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("host=termy cg=/\n"), "{out}");
    let pid: u32 = out.split("pid=").nth(1).and_then(|s| s.split(' ').next()?.parse().ok()).unwrap();
    assert!(pid > 1, "{out}");
    let o = one.metac(&["exec", "termy", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    // With a terminal (from `script`) of 21x77.
    let inner = format!(
        "stty rows 21 cols 77; {} --socket {} exec -t termy sh -c 'stty size; tty'",
        metac_tests::metac_bin().unwrap().display(),
        h.socket().display()
    );
    let o = output(&mut h.cmd("script", ["-qec", &inner, "/dev/null"]), Duration::from_secs(60)).unwrap();
    assert!(text(&o).contains("21 77") && text(&o).contains("/dev/pts/"), "{}", text(&o));
    one.ok(&["rm", "-f", "termy"]);
}

#[test]
fn an_fs_ref_from_another_host_is_mounted_in_a_container_read_only_where_asked() {
    require_root();
    let lab = Lab::new(2).unwrap();
    let (h1, h2) = (lab.host(1).clone(), lab.host(2).clone());
    let _n1 = h1.start_node(&["--no-overlay"]).unwrap();
    let n2 = h2.start_node_sharing_mounts(&["--no-overlay"]).unwrap();
    let shared = h1.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "from host 1\n").unwrap();
    let r =
        String::from_utf8_lossy(&h1.metac(&["fs", "export", &format!("local:{}", shared.display())]).unwrap().stdout)
            .trim()
            .to_string();
    let one = One { node: n2, _lab: lab };
    wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        Ok(one.json(&["status"])["peers"].as_u64() >= Some(1))
    })
    .expect("the two nodes meet");
    let ro = format!("/mnt={r}:ro");
    let o = one.metac(&["run", "--mount", &ro, "sh", "-c", "cat /mnt/hello.txt; echo x > /mnt/new 2>&1; ls /mnt"]);
    let out = text(&o);
    assert!(out.contains("from host 1\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!shared.join("new").exists());
    // Writable, the container's writes land on host 1; the bind ends with the container.
    let rw = format!("/mnt={r}");
    let o = one.metac(&["run", "--rm", "--mount", &rw, "sh", "-c", "echo written-in-a-container > /mnt/out.txt"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(shared.join("out.txt")).unwrap(), "written-in-a-container\n");
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        Ok(one.json(&["binds"]).as_array().is_some_and(|b| b.is_empty()))
    })
    .unwrap_or_else(|_| panic!("binds left: {}", one.json(&["binds"])));
    // A ref of another kind is refused, saying so.
    let o = one.metac(&["run", "--mount", "/mnt=ref://[fd6f::1]/bm90LWEtdG9rZW4", "true"]);
    assert!(!o.status.success() && text(&o).contains("bad ref"), "{}", text(&o));
}
