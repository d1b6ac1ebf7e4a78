//! Remote launch (`metac run --on PEER`) between netns hosts: the process runs on another node, in a UTS
//! namespace of that node's own (so `hostname` tells them apart), with the caller's files, terminal, signals and
//! exit code. Needs root; never skips.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use metac_tests::{metac_bin, metac_on_pty, output, read_until, require_root, wait_until, Host, Lab, Node};
use serde_json::Value;

/// A lab of `n` hosts, each with a node named `lab-1`, `lab-2`, ... that runs containers.
struct Mesh {
    nodes: Vec<Node>,
    lab: Lab,
}

impl Mesh {
    fn start(n: usize) -> Mesh {
        Mesh::start_with(n, &[])
    }

    /// `n` hosts whose nodes run with `extra` arguments; `{dir}` in them is the lab's directory.
    fn start_with(n: usize, extra: &[&str]) -> Mesh {
        require_root();
        let lab = Lab::new(n).unwrap();
        let dir = lab.dir().display().to_string();
        let mut args = vec!["--no-overlay".to_string()];
        args.extend(extra.iter().map(|a| a.replace("{dir}", &dir)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if extra.iter().any(|a| a.contains("{dir}/mesh.key")) {
            std::fs::write(lab.dir().join("mesh.key"), b"0123456789abcdef-a-test-mesh-key").unwrap();
        }
        let mut nodes = vec![];
        for i in 1..=n {
            let host = lab.host(i).clone();
            for d in [host.dir().parent().unwrap(), host.dir()] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            nodes.push(host.start_node_sharing_mounts_named(&format!("lab-{i}"), &args).unwrap());
        }
        let m = Mesh { nodes, lab };
        let want = (n - 1) as u64;
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            Ok((1..=n).all(|i| m.json(i, &["status"])["peers"].as_u64().unwrap_or(0) >= want))
        })
        .unwrap_or_else(|e| panic!("the nodes did not find each other: {e}"));
        m
    }

    fn host(&self, i: usize) -> &Host {
        self.lab.host(i)
    }

    fn cmd(&self, i: usize, cwd: &Path, args: &[&str]) -> Command {
        let h = self.host(i);
        let mut cmd = h.cmd(metac_bin().unwrap(), ["--socket", h.socket().to_str().unwrap()]);
        cmd.args(args).current_dir(cwd);
        cmd
    }

    /// `metac args...` on host `i`, in `cwd`, any exit status.
    fn metac_in(&self, i: usize, cwd: &Path, args: &[&str]) -> Output {
        output(&mut self.cmd(i, cwd, args), Duration::from_secs(180)).unwrap()
    }

    fn metac(&self, i: usize, args: &[&str]) -> Output {
        self.metac_in(i, self.host(i).dir(), args)
    }

    fn ok(&self, i: usize, args: &[&str]) -> String {
        let o = self.metac(i, args);
        assert!(o.status.success(), "metac {args:?} on host {i} failed ({}): {}", o.status, text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn json(&self, i: usize, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(i, &a)).expect("JSON")
    }

    fn key(&self, i: usize) -> String {
        self.json(i, &["status"])["key"].as_str().unwrap().to_string()
    }

    /// Host `from` exports compute to host `to`'s node, which saves the ref as `name`. Returns the ref.
    fn grant(&self, from: usize, to: usize, name: &str) -> String {
        let r = self.ok(from, &["compute", "export", "--to", &self.key(to)]);
        assert!(r.starts_with("ref://"), "{r}");
        self.ok(to, &["ref", "save", name, &r]);
        r
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `metac run --on b sleep SECS` from host 1, once the process runs on host 2; its stderr is piped.
fn sleep_on_b(m: &Mesh, secs: &str) -> std::process::Child {
    let mut cmd = m.cmd(1, m.host(1).dir(), &["run", "--on", "b", "sleep", secs]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let client = cmd.spawn().unwrap();
    let line = format!("sleep {secs}");
    wait_until(Duration::from_secs(60), Duration::from_millis(50), || Ok(running(&line) == 1))
        .expect("the remote process starts");
    client
}

/// Processes on the machine whose whole command line is `cmdline` (containers' processes included).
fn running(cmdline: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c: Vec<&[u8]> = c.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
            if c.join(&b' ') == cmdline.as_bytes() {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn a_command_runs_on_another_node_with_the_callers_files_terminal_signals_and_exit_code() {
    let m = Mesh::start(2);
    m.grant(2, 1, "b");
    // A project on host 1: a script and its data, in a directory host 2 has no copy of.
    let proj = m.host(1).dir().join("proj");
    std::fs::create_dir_all(proj.join("data")).unwrap();
    std::fs::write(proj.join("data/a.txt"), "alpha\n").unwrap();
    std::fs::write(proj.join("data/b.txt"), "beta\n").unwrap();
    let script = "#!/bin/sh\nfor f in data/*.txt; do echo \"$f: $(cat $f)\"; done | sort\nwc -c data/*.txt | tail -1\n\
                  echo made > out.txt\n";
    std::fs::write(proj.join("run.sh"), script).unwrap();
    std::fs::set_permissions(proj.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let local = Command::new("./run.sh").current_dir(&proj).output().unwrap();
    std::fs::remove_file(proj.join("out.txt")).unwrap();
    let o = m.metac_in(1, &proj, &["run", "--on", "b", "./run.sh"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&local.stdout));
    // What it wrote is on host 1, in the caller's directory.
    assert_eq!(std::fs::read_to_string(proj.join("out.txt")).unwrap(), "made\n");
    // It ran on host 2; the exit code comes back.
    let o = m.metac_in(1, &proj, &["run", "--on", "b", "sh", "-c", "hostname; pwd; exit 42"]);
    assert_eq!(o.status.code(), Some(42), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("lab-2\n{}\n", proj.display()));
    // Standard input travels.
    let mut cmd = m.cmd(1, &proj, &["run", "-i", "--on", "b", "cat"]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    assert!(o.status.success());
    // The caller lists its remote runs with the node they ran on.
    let ps = m.json(1, &["ps", "-a"]);
    let b = m.key(2);
    assert!(ps.as_array().unwrap().iter().any(|c| c["node"] == b.as_str() && c["state"] == "exited"), "{ps}");
    // ... and host 2 lists them too, as its own containers run for host 1.
    let theirs = m.json(1, &["ps", "-a", "--on", "b"]);
    assert!(theirs.as_array().unwrap().len() >= 3, "{theirs}");
}

#[test]
fn a_terminal_gets_its_size_and_ctrl_c_stops_the_remote_process() {
    let m = Mesh::start(2);
    m.grant(2, 1, "b");
    // A terminal: its window size reaches the remote shell.
    let (mut child, master) = metac_on_pty(m.host(1), &["run", "-t", "-i", "--on", "b", "sh"]);
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize { ws_row: 33, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    rustix::io::write(&master, b"stty size; hostname; exit 3\n").unwrap();
    let out = read_until(&master, "lab-2", Duration::from_secs(60));
    assert!(out.contains("33 101"), "{out}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{out}");
    // Without a terminal, SIGINT to the client reaches the process on the other node.
    let script = "trap 'echo got-int; exit 130' INT; echo ready; while :; do sleep 0.1; done";
    let mut cmd = m.cmd(1, m.host(1).dir(), &["run", "--on", "b", "sh", "-c", script]);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got-int\n");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn the_running_node_kills_the_process_when_the_network_the_client_or_the_calling_node_goes_away() {
    let mut m = Mesh::start(2);
    m.grant(2, 1, "b");
    // The network goes: host 2 hears nothing from host 1 and kills the process; host 1's client exits 255.
    let mut client = sleep_on_b(&m, "3004");
    m.lab.link_down(1).unwrap();
    let cut = Instant::now();
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(50), || Ok(running("sleep 3004") == 0));
    assert!(gone.is_ok(), "host 2 still runs the process 5 s after the network to the calling node went");
    eprintln!("the remote process was gone {:?} after the link went down", cut.elapsed());
    let status = client.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(err.contains("lost"), "the client says the run was lost: {err}");
    m.lab.link_up(1).unwrap();
    wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        Ok(m.json(1, &["status"])["peers"].as_u64().unwrap_or(0) >= 1)
    })
    .expect("the nodes find each other again");
    // The client dies (kill -9): its node drops the run's stream and host 2 kills the process.
    let mut client = sleep_on_b(&m, "3007");
    client.kill().unwrap();
    let _ = client.wait();
    let killed = Instant::now();
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(50), || Ok(running("sleep 3007") == 0));
    assert!(gone.is_ok(), "host 2 still runs the process 5 s after its client died");
    eprintln!("the remote process was gone {:?} after its client was killed", killed.elapsed());
    // The running node dies: the client says so and exits 255.
    let mut client = sleep_on_b(&m, "3006");
    m.nodes[1].kill9();
    let status = client.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(err.contains("lost") && err.contains("the running node"), "{err}");
    // Its container outlived its node (as local containers do), but not the node's next start: a remote run whose
    // caller cannot reach it any more is killed.
    m.nodes[1].restart().unwrap();
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || Ok(running("sleep 3006") == 0))
        .expect("the restarted node kills the run it lost");
    wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        Ok(m.json(1, &["status"])["peers"].as_u64().unwrap_or(0) >= 1)
    })
    .expect("the nodes find each other again");
    // The calling node dies: host 2 kills the process at once.
    let mut client = sleep_on_b(&m, "3003");
    m.nodes[0].kill9();
    let killed = Instant::now();
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(50), || Ok(running("sleep 3003") == 0));
    assert!(gone.is_ok(), "host 2 still runs the process 5 s after the calling node died");
    eprintln!("the remote process was gone {:?} after the calling node was killed", killed.elapsed());
    // The client, whose node died, fails rather than hangs.
    let status = client.wait().unwrap();
    assert!(!status.success());
    // Host 2 holds none of the dead runs' mounts (cut with them, or detached at its restart).
    let binds = m.host(2).dir().join("metac-binds").display().to_string();
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        Ok(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&binds))
    })
    .unwrap_or_else(|_| panic!("mounts left in {binds}: {}", std::fs::read_to_string("/proc/self/mountinfo").unwrap()));
}

#[test]
fn runs_are_refused_without_a_ref_and_after_revocation_and_any_picks_a_node_that_accepts() {
    let m = Mesh::start(3);
    let b = m.key(2);
    // No compute ref for host 2: refused, with how to get one.
    let o = m.metac(1, &["run", "--on", &b[..12], "true"]);
    assert!(!o.status.success());
    let says = text(&o);
    assert!(says.contains("no compute ref for node") && says.contains("metac compute export --to"), "{says}");
    // A ref of another kind is not a compute ref.
    let fs = m.ok(2, &["fs", "export", &format!("local:{}", m.host(2).dir().display())]);
    let o = m.metac(1, &["run", "--on", &fs, "true"]);
    assert!(text(&o).contains("--on takes a compute ref"), "{}", text(&o));
    // With one, the run goes through; by key prefix too.
    let r = m.grant(2, 1, "b");
    assert_eq!(m.ok(1, &["run", "--on", &b[..12], "hostname"]), "lab-2");
    // A detached run: listed here, its output and end reached by id; another node holding its own ref to host 2
    // neither sees nor touches it.
    let id = m.ok(1, &["run", "-d", "--on", "b", "sh", "-c", "echo up; exec sleep 3005"]);
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || Ok(running("sleep 3005") == 1))
        .expect("the detached run starts");
    assert!(m.ok(1, &["logs", &id]).contains("up"));
    m.grant(2, 3, "b");
    let theirs = m.json(3, &["ps", "-a", "--on", "b"]);
    assert_eq!(theirs, serde_json::json!([]), "another node sees no run of host 1's");
    let o = m.metac(3, &["kill", "--on", "b", &id]);
    assert!(!o.status.success() && text(&o).contains("no container"), "{}", text(&o));
    assert_eq!(running("sleep 3005"), 1);
    m.ok(1, &["kill", &id]);
    assert_eq!(m.ok(1, &["wait", &id]), "137");
    assert_eq!(running("sleep 3005"), 0);
    // A ref made out to another node does not work from here.
    let elsewhere = m.ok(2, &["compute", "export", "--to", &m.key(3)]);
    let o = m.metac(1, &["run", "--on", &elsewhere, "true"]);
    assert!(!o.status.success(), "{}", text(&o));
    // Revoked: new runs are refused.
    m.ok(2, &["ref", "revoke", &r]);
    let o = m.metac(1, &["run", "--on", "b", "true"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("revoked"), "{}", text(&o));
    // `any` picks a node that accepts: host 3, once host 2's revocation has reached host 1.
    m.grant(3, 1, "c");
    wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let o = m.metac(1, &["run", "--on", "any", "hostname"]);
        Ok(o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "lab-3")
    })
    .expect("--on any runs on the node that accepts");
    // A remote run may not take the running node's capabilities or network.
    for bad in [&["--cap-add", "SYS_ADMIN"][..], &["--network", "host"]] {
        let mut a = vec!["run", "--on", "c"];
        a.extend_from_slice(bad);
        a.push("true");
        let o = m.metac(1, &a);
        assert!(!o.status.success(), "{bad:?} was allowed");
        assert!(text(&o).contains("a remote run cannot"), "{}", text(&o));
    }
}

#[test]
fn in_a_private_mesh_a_node_may_run_for_every_member_without_a_ref() {
    let m = Mesh::start_with(2, &["--mesh-key", "{dir}/mesh.key"]);
    let b = m.key(2);
    let o = m.metac(1, &["run", "--on", &b[..12], "true"]);
    assert!(text(&o).contains("no compute ref"), "nothing is open to members unless asked: {}", text(&o));
    m.ok(2, &["compute", "export", "--mesh"]);
    // The ref travels in host 2's advert: host 1 runs there with none saved.
    wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        let o = m.metac(1, &["run", "--on", &b[..12], "hostname"]);
        Ok(o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "lab-2")
    })
    .expect("a member runs on a node that accepts every member");
    assert_eq!(m.ok(1, &["run", "--on", "any", "hostname"]), "lab-2");
}

#[test]
fn a_node_in_an_open_mesh_refuses_to_run_for_everyone() {
    require_root();
    let lab = Lab::new(1).unwrap();
    let node = lab.host(1).start_node_sharing_mounts(&["--no-overlay", "--no-mdns"]).unwrap();
    let h = node.host();
    let o = output(
        &mut h.cmd(metac_bin().unwrap(), ["--socket", h.socket().to_str().unwrap(), "compute", "export", "--mesh"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("needs a private mesh"), "{}", text(&o));
    // Nothing was exported.
    let exports = output(
        &mut h.cmd(metac_bin().unwrap(), ["--socket", h.socket().to_str().unwrap(), "--json", "exports"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&exports.stdout).trim(), "[]");
}

/// Issue 15's cache: the second run of a program on another node fetches no file content again. The running node
/// binds the caller's `/` read-only with the content cache; what host 1's exporters served (`metac fs stats`,
/// counted on host 1) does not grow on the second run, and host 2 served it from its cache.
#[test]
fn a_program_run_again_on_another_node_fetches_no_file_content_again() {
    let m = Mesh::start(2);
    m.grant(2, 1, "b");
    let proj = m.host(1).dir().join("cached");
    std::fs::create_dir_all(&proj).unwrap();
    let program = ["run", "--on", "b", "sha256sum", "/usr/bin/sha256sum"];
    let want = Command::new("sha256sum").arg("/usr/bin/sha256sum").output().unwrap().stdout;
    let served = |i| m.json(i, &["fs", "stats"])["served_bytes"].as_u64().unwrap();
    let before = served(1);
    let o = m.metac_in(1, &proj, &program);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, want);
    let first = served(1);
    let binary = std::fs::metadata("/usr/bin/sha256sum").unwrap().len();
    assert!(first - before >= binary, "the first run fetched the program: {} bytes", first - before);
    let o = m.metac_in(1, &proj, &program);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, want);
    assert_eq!(served(1), first, "the second run fetched no file content");
    let cache = &m.json(2, &["fs", "stats"])["cache"];
    assert!(cache["hits"].as_u64().unwrap() >= 2 && cache["entries"].as_u64().unwrap() >= 2, "{cache}");
}

/// A local user of the calling node runs on another node as themselves: their uid there, their files here made by
/// them, and nothing of this node's that they could not read here (the caller's files are exported as the caller).
#[test]
fn a_local_user_runs_remotely_as_themselves_and_reads_no_more_than_at_home() {
    const MEMBER: &[&str] = &["--reuid=65534", "--regid=65534", "--groups=4242"];
    let m = Mesh::start_with(2, &["--api-group", "4242"]);
    let r = m.ok(2, &["compute", "export", "--to", &m.key(1)]);
    let as_user = |cwd: &Path, args: &[&str]| {
        let h = m.host(1);
        let mut cmd = h.cmd("setpriv", MEMBER);
        cmd.arg(metac_bin().unwrap()).arg("--socket").arg(h.socket()).args(args).current_dir(cwd);
        output(&mut cmd, Duration::from_secs(120)).unwrap()
    };
    let home = m.host(1).dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    // Outside /tmp (a remote run gets a fresh one): on the root the run sees, read-only.
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let secret = Gone(std::path::PathBuf::from(format!("/var/tmp/metac-test-secret-{}", std::process::id())));
    let secret = &secret.0;
    std::fs::write(secret, "root's\n").unwrap();
    std::fs::set_permissions(secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Saved refs are the user's own: root's saved ref is not theirs.
    m.ok(1, &["ref", "save", "b", &r]);
    let o = as_user(&home, &["run", "--on", "b", "true"]);
    assert!(text(&o).contains("is not a saved name"), "{}", text(&o));
    let o = as_user(&home, &["run", "--on", &m.key(2)[..8], "true"]);
    assert!(text(&o).contains("no compute ref"), "{}", text(&o));
    let o = as_user(&home, &["ref", "save", "b", &r]);
    assert!(o.status.success(), "{}", text(&o));
    let script = format!("id -u; echo mine > made.txt; cat {} 2>&1 || echo refused", secret.display());
    let o = as_user(&home, &["run", "--on", "b", "sh", "-c", &script]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("65534\n"), "runs as the caller's uid: {out}");
    assert!(out.contains("Permission denied") && out.contains("refused") && !out.contains("root's"), "{out}");
    let made = home.join("made.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "mine\n");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap()), 65534, "made by them");
    // The user's runs are theirs: root's list has them, the user's list has no run of root's.
    m.ok(1, &["run", "--on", "b", "true"]);
    let theirs = serde_json::from_slice::<Value>(&as_user(&home, &["--json", "ps", "-a"]).stdout).unwrap();
    assert_eq!(theirs.as_array().unwrap().len(), 1, "{theirs}");
    assert!(theirs.as_array().unwrap().iter().all(|c| c["owner"] == 65534), "{theirs}");
}
