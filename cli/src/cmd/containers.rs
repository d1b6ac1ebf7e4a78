//! Containers: `metac run` and the commands that manage what it started (ps, stop, kill, rm, logs, attach, wait,
//! inspect, stats, pause, unpause, update). The compute kind's routes do the work; this module parses docker-like
//! options into a [`Spec`], and drives the terminal of an attached container (raw mode, window size, the detach
//! keys Ctrl-P Ctrl-Q, signals passed on).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use metac_api::Client;
use metac_compute::api::{AttachReq, Ended, ExecReq, KillReq, LogsReq, RunReq, StatsReply, StopReq, UpdateReq};
use metac_compute::cgroup::Limits;
use metac_compute::manager::{Info, Inspect};
use metac_compute::remote::caller::On;
use metac_compute::spec::{self, Mount, Network, Process, Restart, Spec, User};
use metac_compute::stdio::{Exit, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{human_bytes, print, printable, segment, table};

/// The container commands, at the top level (`metac run`, `metac ps`, ...).
#[derive(Subcommand)]
pub enum Cmd {
    /// Run a command in a new container (the host's root read-only, unless --rootfs or --mount /=...)
    Run(Box<RunArgs>),
    /// List containers: id, name, state, pid, command, created, limits
    Ps {
        /// Also those that ended
        #[arg(short, long)]
        all: bool,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the timeout; they are not restarted
    Stop {
        /// Seconds to wait before SIGKILL
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Send a signal to containers' first process
    Kill {
        /// Signal name or number
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Remove containers with their logs
    Rm {
        /// Kill a running one first
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Print a container's output
    Logs {
        /// Keep printing as it writes, until it ends
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Each line with the time it was written
        #[arg(short, long)]
        timestamps: bool,
        container: String,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Attach to a running container's terminal or output (Ctrl-P Ctrl-Q detaches)
    Attach {
        /// Do not send input
        #[arg(long)]
        no_stdin: bool,
        container: String,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Run another command in a running container (its namespaces, cgroup, capabilities and user)
    Exec {
        /// A pseudo-terminal for the command
        #[arg(short, long)]
        tty: bool,
        /// Keep stdin open and send it to the command
        #[arg(short, long)]
        interactive: bool,
        /// Environment: KEY=VALUE
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Working directory inside [default: the container's]
        #[arg(short, long)]
        workdir: Option<PathBuf>,
        /// User inside: UID[:GID] [default: the container's]
        #[arg(short, long, value_parser = user)]
        user: Option<User>,
        container: String,
        /// The command and its arguments
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<String>,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Wait until containers end; prints each exit code
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
        /// The node it runs on (a saved name, node key or prefix, overlay address); runs started from here are
        /// found without it
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Everything about a container, as JSON
    Inspect {
        container: String,
        /// The node it runs on
        #[arg(long, value_name = "PEER")]
        on: Option<String>,
    },
    /// Memory, cpu and pids figures of running containers
    Stats {
        /// Print once and return
        #[arg(long)]
        no_stream: bool,
        /// Containers [default: every running one]
        containers: Vec<String>,
    },
    /// Freeze every process of a container
    Pause { container: String },
    /// Thaw a paused container
    Unpause { container: String },
    /// Change a running container's limits
    Update {
        #[command(flatten)]
        limits: LimitArgs,
        container: String,
    },
}

/// Memory, cpu and pids limits.
#[derive(Args, Clone, Default)]
pub struct LimitArgs {
    /// Memory limit (e.g. 512M, 2G); exceeding it OOM-kills (exit 137)
    #[arg(short, long, value_parser = bytes)]
    memory: Option<u64>,
    /// CPU quota in cpus (e.g. 1.5)
    #[arg(long, value_parser = cpus)]
    cpus: Option<f64>,
    /// Most processes at once
    #[arg(long)]
    pids_limit: Option<u64>,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits { memory: self.memory, cpus: self.cpus, pids: self.pids_limit }
    }
}

fn bytes(s: &str) -> Result<u64, String> {
    spec::parse_bytes(s).map_err(|e| e.0)
}

fn cpus(s: &str) -> Result<f64, String> {
    spec::parse_cpus(s).map_err(|e| e.0)
}

/// `metac run`.
#[derive(Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// A pseudo-terminal for the command
    #[arg(short, long)]
    tty: bool,
    /// Keep stdin open and send it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Run in the background and print the container's id
    #[arg(short, long)]
    detach: bool,
    /// A name for the container [default: the command's name and a number]
    #[arg(long)]
    name: Option<String>,
    /// Its hostname [default: its name]
    #[arg(long)]
    hostname: Option<String>,
    /// Remove it (logs, state) when it ends
    #[arg(long)]
    rm: bool,
    /// Environment: KEY=VALUE, or KEY to pass this shell's value
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Environment from a file of KEY=VALUE lines
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside [default: this directory with the host's root (mounted writable), / otherwise]
    #[arg(short, long)]
    workdir: Option<PathBuf>,
    /// User inside: UID[:GID]
    #[arg(short, long, value_parser = user)]
    user: Option<User>,
    /// Mount PATH=URI[:ro], URI local:/path, tmpfs: or an fs ref (repeatable)
    #[arg(long = "mount", value_name = "PATH=URI[:ro]", value_parser = mount)]
    mounts: Vec<Mount>,
    /// A directory to use as the root
    #[arg(long)]
    rootfs: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    /// none (only lo) or host
    #[arg(long, default_value = "none", value_parser = network)]
    network: Network,
    /// no, on-failure[:N] or always
    #[arg(long, default_value = "no", value_parser = restart)]
    restart: Restart,
    /// Add a capability (e.g. NET_ADMIN, or ALL)
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a capability
    #[arg(long)]
    cap_drop: Vec<String>,
    /// A read-only root (with --rootfs)
    #[arg(long)]
    read_only: bool,
    /// Run it in a small VM instead of a container: the host's kernel, the mounts shared over virtio-9p, the root
    /// the host's (read-only) unless --mount /=local:DIR or --rootfs gives one. Root only
    #[arg(long)]
    vm: bool,
    /// container (the default) or computevm (the same as --vm)
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// The guest kernel for --vm, a /boot/vmlinuz-VERSION whose modules are in /lib/modules/VERSION [default: the
    /// newest in /boot]
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Run on another node, with this machine's files: a saved name (`metac ref save`), a node key or prefix, an
    /// overlay address, `any` (the least loaded node you hold a compute ref for), or a compute ref
    #[arg(long, value_name = "PEER")]
    on: Option<String>,
    /// With --on: use that node's root (read-only) instead of this one's (faster, for programs it has)
    #[arg(long, requires = "on")]
    no_root: bool,
    /// The command and its arguments
    #[arg(required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn user(s: &str) -> Result<User, String> {
    s.parse().map_err(|e: spec::Error| e.0)
}

fn mount(s: &str) -> Result<Mount, String> {
    s.parse().map_err(|e: spec::Error| e.0)
}

fn network(s: &str) -> Result<Network, String> {
    s.parse().map_err(|e: spec::Error| e.0)
}

fn restart(s: &str) -> Result<Restart, String> {
    s.parse().map_err(|e: spec::Error| e.0)
}

impl RunArgs {
    /// Whether it runs in a VM; options a VM run cannot honour are refused.
    fn in_vm(&self) -> Result<bool> {
        let vm = match self.service.as_deref() {
            None | Some("container") => self.vm,
            Some("computevm") => true,
            Some(s) => bail!("--service {s:?}: container or computevm"),
        };
        if !vm {
            if self.kernel.is_some() {
                bail!("--kernel goes with --vm");
            }
            return Ok(false);
        }
        let refused = [
            (self.user.is_some(), "--user"),
            (self.network != Network::None, "--network"),
            (self.restart != Restart::No, "--restart"),
            (!self.cap_add.is_empty() || !self.cap_drop.is_empty(), "--cap-add/--cap-drop"),
            (self.limits.pids_limit.is_some(), "--pids-limit"),
            (self.rm, "--rm (a VM's record is kept until its name is used again)"),
        ];
        if let Some((_, what)) = refused.iter().find(|(given, _)| *given) {
            bail!("{what} does not go with --vm: a VM run has the guest's own users, no network and no restarts");
        }
        Ok(true)
    }

    fn spec(&self) -> Result<Spec> {
        let mut env = Vec::new();
        for f in &self.env_file {
            let text = std::fs::read_to_string(f).with_context(|| format!("read the env file {}", f.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if !line.contains('=') {
                    bail!("{}:{}: {line:?} is not KEY=VALUE", f.display(), n + 1);
                }
                env.push(line.to_string());
            }
        }
        for e in &self.env {
            match e.split_once('=') {
                Some(_) => env.push(e.clone()),
                // `-e KEY` passes this shell's value, as docker does.
                None => {
                    if let Ok(v) = std::env::var(e) {
                        env.push(format!("{e}={v}"));
                    }
                }
            }
        }
        let host_root = self.rootfs.is_none() && !self.mounts.iter().any(|m| m.target == std::path::Path::new("/"));
        let cwd = match &self.workdir {
            Some(w) => Some(w.clone()),
            None if host_root => std::env::current_dir().ok(),
            None => None,
        };
        let size = if self.tty { terminal_size() } else { None };
        let rootfs = match &self.rootfs {
            Some(r) => Some(std::path::absolute(r).with_context(|| r.display().to_string())?),
            None => None,
        };
        let spec = Spec {
            name: self.name.clone(),
            process: Process {
                args: self.command.clone(),
                env,
                cwd,
                user: self.user,
                tty: self.tty,
                stdin: self.interactive,
                size,
            },
            rootfs,
            mounts: self.mounts.clone(),
            hostname: self.hostname.clone(),
            limits: self.limits.limits(),
            network: self.network,
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            restart: self.restart,
            remove: self.rm,
        };
        spec.check().map_err(|e| anyhow::anyhow!(e.0))?;
        Ok(spec)
    }
}

/// Runs a container command; `Ok(Some(code))` when the process should exit with that code.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<Option<i32>> {
    match cmd {
        Cmd::Run(a) if a.in_vm()? => {
            let spec = a.spec()?;
            super::vm::run_spec(c, json, spec, a.kernel.clone(), a.detach).await
        }
        Cmd::Run(a) => {
            let spec = a.spec()?;
            if a.detach && a.rm && a.restart != Restart::No {
                bail!("--rm and --restart do not go together");
            }
            let on = a.on.clone().map(|peer| On { peer, no_root: a.no_root });
            let remote = on.is_some();
            let req = RunReq { spec, attach: !a.detach, on };
            let info: Info = c.post("/v1/containers", &req).await?;
            if a.detach {
                print(json, &info, |i| i.id.clone());
                return Ok(None);
            }
            let code = attached(c, &info.id, None, a.tty, a.interactive).await;
            match code {
                Ok(code) => Ok(Some(code)),
                // The node it ran on went away: as ssh does, 255.
                Err(e) if remote => {
                    eprintln!("metac: {e:#}");
                    Ok(Some(255))
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Ps { all, on } => {
            let list: Vec<Info> = c.get(&format!("/v1/containers?all={all}{}", on_query(&on, '&'))).await?;
            // VMs follow the containers: in JSON as entries of type `vm`, in text as a table of their own.
            let vms = super::vm::ps_section(c, all).await;
            if json {
                let mut v = serde_json::to_value(&list)?;
                if let (Some(rows), Some(vms)) = (v.as_array_mut(), &vms) {
                    for vm in vms {
                        let mut row = serde_json::to_value(vm)?;
                        row["type"] = "vm".into();
                        rows.push(row);
                    }
                }
                print(true, &v, |_| String::new());
                return Ok(None);
            }
            print(false, &list, |l| {
                table(
                    &["ID", "NAME", "STATE", "NODE", "PID", "COMMAND", "CREATED", "LIMITS"],
                    l.iter().map(|i| {
                        vec![
                            i.id.clone(),
                            i.name.clone(),
                            state(i),
                            i.node.as_deref().map_or("-".into(), super::short),
                            i.pid.map_or("-".into(), |p| p.to_string()),
                            printable(&shorten(&i.command.join(" "), 30)),
                            since(i.created),
                            limits(&i.limits),
                        ]
                    }),
                )
            });
            if let Some(vms) = vms {
                println!("\nVMs\n{}", printable(&super::vm::vm_table(&vms)));
            }
            Ok(None)
        }
        Cmd::Stop { time, containers, on } => {
            for id in containers {
                let e: Ended = c.post(&on_path(&id, "stop", &on), &StopReq { timeout: Some(time) }).await?;
                if !json {
                    println!("{id}");
                } else {
                    print(true, &e, |_| String::new());
                }
            }
            Ok(None)
        }
        Cmd::Kill { signal, containers, on } => {
            let signal = spec::parse_signal(&signal).map_err(|e| anyhow::anyhow!(e.0))?;
            for id in containers {
                let () = c.post(&on_path(&id, "kill", &on), &KillReq { signal }).await?;
                println!("{id}");
            }
            Ok(None)
        }
        Cmd::Rm { force, containers, on } => {
            for id in containers {
                let url = format!("/v1/containers/{}?force={force}{}", segment(&id), on_query(&on, '&'));
                let _: serde_json::Value = c.delete(&url).await?;
                println!("{id}");
            }
            Ok(None)
        }
        Cmd::Logs { follow, tail, timestamps, container, on } => {
            let url = on_path(&container, "logs", &on);
            let mut body = c.post_stream(&url, &LogsReq { follow, tail, timestamps }).await?;
            let mut buf = Vec::new();
            let mut out = std::io::stdout();
            let mut err = std::io::stderr();
            while let Some(chunk) = body.next().await {
                buf.extend_from_slice(&chunk?);
                while let Some((f, used)) = Frame::decode(&buf).context("the node sent a bad log frame")? {
                    buf.drain(..used);
                    match f {
                        Frame::Stdout(d) => out.write_all(&d)?,
                        Frame::Stderr(d) => err.write_all(&d)?,
                        _ => {}
                    }
                }
                out.flush()?;
            }
            Ok(None)
        }
        Cmd::Attach { no_stdin, container, on } => {
            let i: Inspect = c.get(&format!("/v1/containers/{}{}", segment(&container), on_query(&on, '?'))).await?;
            let p = &i.spec.process;
            let code = attached(c, &i.info.id, on.as_deref(), p.tty, !no_stdin && p.stdin).await?;
            Ok(Some(code))
        }
        Cmd::Exec { tty, interactive, env, workdir, user, container, command, on } => {
            let process = Process {
                args: command,
                env,
                cwd: workdir,
                user,
                tty,
                stdin: interactive,
                size: if tty { terminal_size() } else { None },
            };
            process.check().map_err(|e| anyhow::anyhow!(e.0))?;
            let io = c.upgrade(&on_path(&container, "exec", &on), &ExecReq { process }).await?;
            Ok(Some(stream(c, io, &container, None, tty, interactive, false).await?))
        }
        Cmd::Wait { containers, on } => {
            // As docker's: each status printed, and this command's own success.
            for id in containers {
                let e: Ended = c.post(&on_path(&id, "wait", &on), &serde_json::json!({})).await?;
                if json {
                    print(true, &e, |_| String::new());
                } else {
                    println!("{}", e.exit.map_or(0, |x| x.status()));
                }
            }
            Ok(None)
        }
        Cmd::Inspect { container, on } => {
            let i: serde_json::Value =
                c.get(&format!("/v1/containers/{}{}", segment(&container), on_query(&on, '?'))).await?;
            println!("{}", serde_json::to_string_pretty(&i)?);
            Ok(None)
        }
        Cmd::Stats { no_stream, containers } => {
            stats(c, json, no_stream, containers).await?;
            Ok(None)
        }
        Cmd::Pause { container } => {
            let () = c.post(&path(&container, "pause"), &serde_json::json!({})).await?;
            println!("{container}");
            Ok(None)
        }
        Cmd::Unpause { container } => {
            let () = c.post(&path(&container, "unpause"), &serde_json::json!({})).await?;
            println!("{container}");
            Ok(None)
        }
        Cmd::Update { limits, container } => {
            let l = limits.limits();
            if l == Limits::default() {
                bail!("say what to change: --memory, --cpus or --pids-limit");
            }
            let i: Info = c.post(&path(&container, "update"), &UpdateReq { limits: l }).await?;
            print(json, &i, |i| format!("{}: {}", i.name, self::limits(&i.limits)));
            Ok(None)
        }
    }
}

fn path(id: &str, what: &str) -> String {
    format!("/v1/containers/{}/{what}", segment(id))
}

/// `?on=PEER` (or `&on=PEER`), or nothing.
fn on_query(on: &Option<String>, sep: char) -> String {
    on.as_deref().map_or(String::new(), |p| format!("{sep}on={}", segment(p)))
}

fn on_path(id: &str, what: &str, on: &Option<String>) -> String {
    format!("{}{}", path(id, what), on_query(on, '?'))
}

fn state(i: &Info) -> String {
    match (i.state.as_str(), &i.exit) {
        ("exited", Some(e)) => format!("exited ({})", e.status()),
        ("exited", None) if i.error.is_some() => "failed".into(),
        (s, _) => s.to_string(),
    }
}

fn limits(l: &Limits) -> String {
    let mut v = Vec::new();
    if let Some(m) = l.memory {
        v.push(format!("mem {}", human_bytes(m)));
    }
    if let Some(c) = l.cpus {
        v.push(format!("cpus {c}"));
    }
    if let Some(p) = l.pids {
        v.push(format!("pids {p}"));
    }
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn since(ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

async fn stats(c: &Client, json: bool, once: bool, containers: Vec<String>) -> Result<()> {
    loop {
        let ids = if containers.is_empty() {
            let l: Vec<Info> = c.get("/v1/containers").await?;
            l.into_iter().filter(|i| i.state == "running" || i.state == "paused").map(|i| i.id).collect()
        } else {
            containers.clone()
        };
        let mut rows = Vec::new();
        for id in &ids {
            let s: StatsReply = c.get(&path(id, "stats")).await?;
            rows.push(s);
        }
        if json {
            print(true, &rows, |_| String::new());
        } else {
            if !once {
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "{}",
                table(
                    &["ID", "NAME", "CPU TIME", "MEM", "MEM LIMIT", "PIDS", "OOM KILLS"],
                    rows.iter().map(|r| vec![
                        r.info.id.clone(),
                        r.info.name.clone(),
                        format!("{:.2}s", r.stats.cpu_ns as f64 / 1e9),
                        human_bytes(r.stats.memory),
                        r.stats.memory_limit.map_or("-".into(), human_bytes),
                        format!("{}{}", r.stats.pids, r.stats.pids_limit.map_or(String::new(), |l| format!("/{l}"))),
                        r.stats.oom_kills.to_string(),
                    ])
                )
            );
        }
        if once || json {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The terminal's rows and columns, when stdout is one.
fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ writes it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ on stdout writes into `ws`, valid for the call.
    let r = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The terminal in raw mode while it lives; restored on drop (also on error and panic unwinding).
pub(crate) struct Raw(libc::termios);

impl Raw {
    /// Puts stdin's terminal in raw mode; `None` when it is not a terminal.
    pub(crate) fn enter() -> Option<Raw> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr/tcsetattr on stdin with a valid termios pointer.
        unsafe {
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let old = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(Raw(old))
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

/// Streams a container's output here and this terminal's input there until it ends (its exit status) or the
/// user detaches (0).
async fn attached(c: &Client, id: &str, on: Option<&str>, tty: bool, stdin: bool) -> Result<i32> {
    let on = on.map(str::to_string);
    let io = c.upgrade(&on_path(id, "attach", &on), &AttachReq { stdin }).await?;
    stream(c, io, id, on.as_deref(), tty, stdin, true).await
}

/// Streams frames between this terminal and a container's process on `io`; `main` says whether it is the
/// container's first process (whose end `wait` can tell when the stream breaks) or an exec'd one.
async fn stream(
    c: &Client,
    io: metac_api::Upgraded,
    id: &str,
    on: Option<&str>,
    tty: bool,
    stdin: bool,
    main: bool,
) -> Result<i32> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let raw = if tty && std::io::stdin().is_terminal() { Raw::enter() } else { None };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(64);
    if tty {
        if let Some((rows, cols)) = terminal_size() {
            let _ = tx.send(Frame::Resize { rows, cols }).await;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = terminal_size() {
                    if tx.send(Frame::Resize { rows, cols }).await.is_err() {
                        return;
                    }
                }
            }
        });
    } else {
        // Without a terminal, ^C and friends reach this process: pass them on, as docker's sig-proxy does.
        for kind in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(kind)) else {
                    return;
                };
                while s.recv().await.is_some() {
                    if tx.send(Frame::Signal(kind)).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    if stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            let mut last = 0u8;
            loop {
                let n = match input.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Frame::CloseStdin).await;
                        return;
                    }
                    Ok(n) => n,
                };
                let mut data = buf[..n].to_vec();
                if tty {
                    // Ctrl-P Ctrl-Q detaches, as in docker; the two keys are not sent.
                    if let Some(i) =
                        (0..data.len()).find(|&i| data[i] == 0x11 && (if i == 0 { last } else { data[i - 1] }) == 0x10)
                    {
                        data.truncate(i.saturating_sub(1));
                        if !data.is_empty() {
                            let _ = tx.send(Frame::Stdin(data)).await;
                        }
                        let _ = detach_tx.send(());
                        return;
                    }
                    last = *data.last().unwrap_or(&last);
                }
                if tx.send(Frame::Stdin(data)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    tokio::spawn(async move {
        let mut b = Vec::new();
        while let Some(f) = rx.recv().await {
            b.clear();
            f.encode(&mut b);
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::with_capacity(128 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    // The input task drops its sender when stdin ends: that is no detach.
    let mut input_open = true;
    let exit: Option<Exit> = loop {
        let n = tokio::select! {
            r = rd.read(&mut chunk) => r.context("the attached stream broke")?,
            d = &mut detach_rx, if input_open => {
                if d.is_err() {
                    input_open = false;
                    continue;
                }
                drop(raw);
                eprintln!("\r\ndetached from {id}: `metac attach {id}` to come back");
                return Ok(0);
            }
        };
        if n == 0 {
            break None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut done = None;
        while let Some((f, used)) = Frame::decode(&buf).context("the container sent a bad frame")? {
            buf.drain(..used);
            match f {
                Frame::Stdout(d) => out.write_all(&d).await?,
                Frame::Stderr(d) => err.write_all(&d).await?,
                Frame::Error(e) => {
                    err.write_all(format!("metac: {}\r\n", printable(&e)).as_bytes()).await?;
                }
                Frame::Exit(x) => done = Some(x),
                _ => {}
            }
        }
        out.flush().await?;
        err.flush().await?;
        if done.is_some() {
            break done;
        }
    };
    drop(raw);
    match exit {
        Some(x) => {
            if x.oom_killed {
                eprintln!("metac: the container was killed for running out of memory (its --memory limit)");
            }
            Ok(x.status())
        }
        None if main => {
            // The stream ended without an exit: ask how it ended.
            let e: Ended = c.post(&on_path(id, "wait", &on.map(str::to_string)), &serde_json::json!({})).await?;
            Ok(e.exit.map_or(1, |x| x.status()))
        }
        None => bail!("the connection to the process broke before it ended"),
    }
}
