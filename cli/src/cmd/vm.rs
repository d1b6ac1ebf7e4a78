//! `metac vm`: virtual machines whose disks are remote files. `start` asks the node to bind each drive's file ref
//! and run qemu on the binds (the node's `/v1/vm` routes, in metac-block); then, as asked, it returns at once
//! (`--detach`), attaches this terminal to the serial console (`--console`), or waits for the VM to end. `ls`,
//! `stop` and `console` manage what it started; `metac ps` lists VMs too ([`ps_section`]).

use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use metac_api::Client;
use metac_block::vm::api::{StartReq, StopReq, VmInfo};
use metac_block::vm::qemu::{self, Accel, DriveSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::containers::Raw;
use super::{human_bytes, print, printable, segment, table};

/// The key that detaches a console: Ctrl-].
const DETACH: u8 = 0x1d;

/// `metac vm` subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Start a VM with qemu, its disks remote files (file refs) bound here; KVM when usable, TCG otherwise
    Start(Box<StartArgs>),
    /// List your VMs (root: everyone's): name, state, accel, cpus, memory, drives, uptime
    Ls {
        /// Also those that ended
        #[arg(short, long)]
        all: bool,
    },
    /// Stop a VM: the ACPI power button, then quit after the timeout; its drives are unbound
    Stop {
        name: String,
        /// Kill it at once
        #[arg(long)]
        force: bool,
        /// Seconds the guest gets to power off
        #[arg(short, long, default_value_t = 30)]
        timeout: u64,
    },
    /// Attach to a VM's serial console, with what it printed last (Ctrl-] detaches)
    Console { name: String },
}

/// `metac vm start`.
#[derive(Args)]
pub struct StartArgs {
    /// A disk: uri=REF[,format=raw|qcow2][,readonly], REF a file ref; the first is /dev/vda (repeat for more)
    #[arg(long = "drive", value_name = "SPEC", value_parser = drive)]
    drives: Vec<DriveSpec>,
    /// Guest memory (e.g. 512M, 2G)
    #[arg(short, long, value_parser = memory, default_value = "1G")]
    memory: u64,
    /// Virtual CPUs
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// A kernel to boot directly (read as you)
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Its initrd
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Its command line [default: console=ttyS0]
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    append: Option<String>,
    /// A CD-ROM image, booted first when there is no --kernel
    #[arg(long, value_name = "FILE")]
    cdrom: Option<PathBuf>,
    /// kvm or tcg [default: kvm when this node can use it]
    #[arg(long, value_parser = accel)]
    accel: Option<Accel>,
    /// Attach this terminal to its serial console (Ctrl-] detaches; ends when the VM does)
    #[arg(long, conflicts_with = "detach")]
    console: bool,
    /// A name for it [default: vm1, vm2, ...]
    #[arg(long)]
    name: Option<String>,
    /// Print its name and return; it runs on
    #[arg(short, long)]
    detach: bool,
}

fn drive(s: &str) -> Result<DriveSpec, String> {
    s.parse().map_err(|e: metac_block::vm::VmError| e.to_string())
}

fn memory(s: &str) -> Result<u64, String> {
    qemu::parse_memory(s).map_err(|e| e.to_string())
}

fn accel(s: &str) -> Result<Accel, String> {
    match s {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        _ => Err("kvm or tcg".into()),
    }
}

/// A path given on this command line as the node will see it: absolute.
fn absolute(p: Option<PathBuf>, what: &str) -> Result<Option<PathBuf>> {
    p.map(|p| std::path::absolute(&p).with_context(|| format!("--{what} {}", p.display()))).transpose()
}

/// Runs a `metac vm` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Start(a) => start(c, json, *a).await,
        Cmd::Ls { all } => {
            let list: Vec<VmInfo> = c.get(&format!("/v1/vm?all={all}")).await?;
            print(json, &list, |l| vm_table(l));
            Ok(())
        }
        Cmd::Stop { name, force, timeout } => {
            let i: VmInfo = c.post(&path(&name, "stop"), &StopReq { force, timeout: Some(timeout) }).await?;
            print(json, &i, |i| i.name.clone());
            Ok(())
        }
        Cmd::Console { name } => {
            let i: VmInfo = c.get(&format!("/v1/vm/{}", segment(&name))).await?;
            attach(c, &i.name, Console::VM, None).await.map(drop)
        }
    }
}

async fn start(c: &Client, json: bool, a: StartArgs) -> Result<()> {
    let req = StartReq {
        name: a.name,
        drives: a.drives,
        memory_mib: Some(a.memory),
        cpus: Some(a.cpus),
        kernel: absolute(a.kernel, "kernel")?,
        initrd: absolute(a.initrd, "initrd")?,
        append: a.append,
        cdrom: absolute(a.cdrom, "cdrom")?,
        accel: a.accel,
        shares: Vec::new(),
    };
    let i: VmInfo = c.post("/v1/vm", &req).await?;
    match &i.accel_reason {
        None => eprintln!("vm {}: started with KVM", i.name),
        Some(why) => eprintln!("vm {}: started with TCG, qemu's emulator, many times slower than KVM ({why})", i.name),
    }
    if a.detach {
        print(json, &i, |i| i.name.clone());
        return Ok(());
    }
    if a.console {
        if !attach(c, &i.name, Console::VM, None).await? {
            return Ok(());
        }
    } else {
        eprintln!(
            "vm {0}: waiting for it to end (`metac vm console {0}` shows its console, `metac vm stop {0}` stops it)",
            i.name
        );
    }
    let end: VmInfo = c.post(&path(&i.name, "wait"), &serde_json::json!({})).await?;
    ended(json, &end)
}

/// Reports how a VM ended: an error if qemu failed.
fn ended(json: bool, i: &VmInfo) -> Result<()> {
    if let Some(error) = i.exit.as_ref().and_then(|x| x.error.as_ref()) {
        bail!("vm {} failed: {}", i.name, printable(error));
    }
    if json {
        print(true, i, |_| String::new());
    }
    Ok(())
}

/// How a console is joined.
#[derive(Clone, Copy)]
struct Console {
    /// Say how to detach (`vm console`), or say nothing (`run --vm`, whose output is the command's).
    banner: bool,
    /// Forward stdin.
    stdin: bool,
    /// Sent when stdin ends (not a terminal): the guest terminal's end-of-file character.
    eof: Option<u8>,
}

impl Console {
    const VM: Console = Console { banner: true, stdin: true, eof: None };
}

/// Waits (at most 10 minutes) until `file` exists.
async fn appears(file: &std::path::Path) {
    for _ in 0..30_000 {
        if file.exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Joins this terminal to a VM's serial console until the VM ends (`true`) or the user detaches (`false`).
async fn attach(c: &Client, name: &str, how: Console, gate: Option<PathBuf>) -> Result<bool> {
    let io = c.upgrade(&path(name, "console"), &serde_json::json!({})).await?;
    let tty = std::io::stdin().is_terminal();
    let raw = if tty && how.stdin { Raw::enter() } else { None };
    if tty && how.banner {
        eprint!("metac: the console of vm {name}; Ctrl-] detaches\r\n");
    }
    let (mut rd, mut wr) = tokio::io::split(io);
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if !how.stdin {
            // Nothing is sent: the guest's stdin is /dev/null. (Dropping this half leaves the console open.)
            return;
        }
        if let Some(gate) = gate {
            appears(&gate).await;
        }
        let mut input = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match input.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    if let (Some(eof), false) = (how.eof, tty) {
                        let _ = wr.write_all(&[eof]).await;
                    }
                    return;
                }
                Ok(n) => n,
            };
            let data = &buf[..n];
            let cut = if tty { data.iter().position(|&b| b == DETACH) } else { None };
            if wr.write_all(&data[..cut.unwrap_or(n)]).await.is_err() {
                return;
            }
            if cut.is_some() {
                let _ = detach_tx.send(());
                return;
            }
        }
    });
    let mut out = tokio::io::stdout();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut input_open = true;
    loop {
        tokio::select! {
            r = rd.read(&mut chunk) => {
                let n = r.context("the console connection broke")?;
                if n == 0 {
                    break;
                }
                out.write_all(&chunk[..n]).await?;
                out.flush().await?;
            }
            d = &mut detach_rx, if input_open => {
                // A dropped sender is the input's end (stdin closed), not a detach.
                if d.is_err() {
                    input_open = false;
                    continue;
                }
                drop(raw);
                eprintln!("\r\nmetac: detached from vm {name}; `metac vm console {name}` comes back to it");
                return Ok(false);
            }
        }
    }
    drop(raw);
    Ok(true)
}

/// Removes a run's control directory when the run is over.
struct ControlDir(PathBuf);

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `metac run --vm`: the container run's `spec` in a small guest booted from `kernel` (the newest in /boot by
/// default). Returns the command's exit status (`None` when detached).
pub async fn run_spec(
    c: &Client,
    json: bool,
    spec: metac_compute::spec::Spec,
    kernel: Option<PathBuf>,
    detach: bool,
) -> Result<Option<i32>> {
    use metac_block::vm::initramfs::GuestKernel;
    use metac_block::vm::qemu::Share;
    use metac_block::vm::run::{self, GuestMount, GuestRun};
    use metac_compute::spec::Source;

    let kernel = match kernel {
        Some(k) => GuestKernel::from_image(&std::path::absolute(&k)?)?,
        None => GuestKernel::find()?,
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let cache = if root { PathBuf::from("/var/cache/metac") } else { std::env::temp_dir().join("metac-cache") };
    let initrd = run::cached_initramfs(&kernel, &cache)?;

    let name = match &spec.name {
        Some(n) => n.clone(),
        None => format!("run{}", std::process::id()),
    };
    let control = std::env::temp_dir().join(format!("metac-run-{name}-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&control).with_context(|| format!("make {}", control.display()))?;
    let control = ControlDir(control);
    let mut shares = vec![Share { tag: run::CONTROL_TAG.into(), path: control.0.clone(), readonly: false }];
    let mut root_share = spec.rootfs.clone().map(|r| (r, spec.read_only));
    let mut mounts = Vec::new();
    for m in &spec.mounts {
        match (&m.source, m.target == std::path::Path::new("/")) {
            (Source::Local(p), true) => root_share = Some((p.clone(), m.read_only)),
            (Source::Local(p), false) => {
                let tag = format!("m{}", shares.len());
                shares.push(Share { tag: tag.clone(), path: p.clone(), readonly: m.read_only });
                mounts.push(GuestMount::Share { target: m.target.clone(), tag, readonly: m.read_only });
            }
            (Source::Tmpfs, true) => bail!("--vm: the root cannot be a tmpfs; give --mount /=local:DIR or --rootfs"),
            (Source::Tmpfs, false) => mounts.push(GuestMount::Tmpfs { target: m.target.clone() }),
            (Source::Ref(_), _) => bail!(
                "--vm: fs refs are not shared into VMs yet; bind it with `metac fs bind REF DIR` and give \
                 --mount {}=local:DIR",
                m.target.display()
            ),
        }
    }
    // No root given: the host's, read-only (a VM's writes to the host's root are not what a run is for).
    let (root_dir, root_readonly) = root_share.unwrap_or_else(|| (PathBuf::from("/"), true));
    shares.push(Share { tag: run::ROOT_TAG.into(), path: root_dir, readonly: root_readonly });
    let p = &spec.process;
    let guest = GuestRun {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        tty: if p.tty { Some(p.size.unwrap_or((24, 80))) } else { None },
        stdin: p.stdin,
        hostname: spec.hostname.clone().unwrap_or_else(|| name.clone()),
        root_readonly,
        mounts,
    };
    std::fs::write(control.0.join("run"), run::script(&guest)).context("write the run's script")?;

    let memory_mib = spec.limits.memory.map_or(512, |b| (b >> 20).max(64));
    let cpus = spec.limits.cpus.map_or(1, |c| c.ceil().max(1.0) as u32);
    let req = StartReq {
        name: Some(name),
        drives: Vec::new(),
        memory_mib: Some(memory_mib),
        cpus: Some(cpus),
        kernel: Some(kernel.image.clone()),
        initrd: Some(initrd),
        append: Some(run::APPEND.into()),
        cdrom: None,
        accel: None,
        shares,
    };
    let i: VmInfo = c.post("/v1/vm", &req).await?;
    if let Some(why) = &i.accel_reason {
        eprintln!("metac: vm {} runs under TCG, qemu's emulator, many times slower than KVM ({why})", i.name);
    }
    if detach {
        // The control directory stays for the guest; the VM's record says how it ended.
        std::mem::forget(control);
        print(json, &i, |i| i.name.clone());
        return Ok(None);
    }
    let how = Console { banner: false, stdin: p.stdin, eof: Some(0x04) };
    if !attach(c, &i.name, how, Some(control.0.join(run::READY_FILE))).await? {
        std::mem::forget(control);
        return Ok(None);
    }
    let end: VmInfo = c.post(&path(&i.name, "wait"), &serde_json::json!({})).await?;
    ended(false, &end)?;
    let status = std::fs::read_to_string(control.0.join(run::EXIT_FILE)).unwrap_or_default();
    match status.trim().parse::<i32>() {
        Ok(code) => Ok(Some(code)),
        Err(_) => bail!(
            "vm {}: the guest ended without the command's exit status (it did not start, or the guest failed: see \
             its output above)",
            end.name
        ),
    }
}

fn path(name: &str, what: &str) -> String {
    format!("/v1/vm/{}/{what}", segment(name))
}

/// VMs as a table.
pub fn vm_table(l: &[VmInfo]) -> String {
    table(
        &["NAME", "STATE", "ACCEL", "CPUS", "MEMORY", "DRIVES", "UPTIME"],
        l.iter().map(|i| {
            vec![
                printable(&i.name),
                state(i),
                i.accel.name().to_string(),
                i.cpus.to_string(),
                human_bytes(i.memory_mib << 20),
                drives(i),
                duration(i.uptime),
            ]
        }),
    )
}

fn state(i: &VmInfo) -> String {
    match (&i.state[..], &i.exit) {
        ("exited", Some(x)) if x.stopped => "stopped".into(),
        ("exited" | "failed", Some(x)) => match (x.code, x.signal) {
            (Some(c), _) => format!("{} ({c})", i.state),
            (_, Some(s)) => format!("{} (signal {s})", i.state),
            _ => i.state.clone(),
        },
        (s, _) => s.to_string(),
    }
}

fn drives(i: &VmInfo) -> String {
    if i.drives.is_empty() {
        return "-".into();
    }
    let d: Vec<String> = i
        .drives
        .iter()
        .map(|d| {
            let mut flags = Vec::new();
            if d.format != qemu::Format::Raw {
                flags.push(d.format.name());
            }
            if d.readonly {
                flags.push("ro");
            }
            let flags = if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) };
            format!("{}={}{flags}", d.device, d.resource)
        })
        .collect();
    d.join(", ")
}

fn duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// The VMs `metac ps` shows after the containers: `None` when there are none, or the node has no VM routes.
pub async fn ps_section(c: &Client, all: bool) -> Option<Vec<VmInfo>> {
    let l: Vec<VmInfo> = c.get(&format!("/v1/vm?all={all}")).await.ok()?;
    (!l.is_empty()).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metac_block::vm::api::{DriveInfo, VmExit};

    #[test]
    fn a_vm_row_shows_its_drives_state_and_uptime() {
        let mut i = VmInfo {
            name: "web".into(),
            state: "running".into(),
            owner: 0,
            pid: 42,
            accel: Accel::Kvm,
            accel_reason: None,
            cpus: 2,
            memory_mib: 1024,
            drives: vec![
                DriveInfo {
                    device: "vda".into(),
                    resource: "a1b2c3d4e5f6".into(),
                    exporter: "0123456789abcdef".into(),
                    bind: "b1".into(),
                    format: qemu::Format::Raw,
                    readonly: false,
                },
                DriveInfo {
                    device: "vdb".into(),
                    resource: "0f0f0f0f0f0f".into(),
                    exporter: "0123456789abcdef".into(),
                    bind: "b2".into(),
                    format: qemu::Format::Qcow2,
                    readonly: true,
                },
            ],
            started: 0,
            uptime: 3725,
            exit: None,
        };
        let t = vm_table(std::slice::from_ref(&i));
        assert!(
            t.contains("web   running  kvm    2     1.0 GiB  vda=a1b2c3d4e5f6, vdb=0f0f0f0f0f0f (qcow2, ro)  1h2m"),
            "{t}"
        );
        i.state = "failed".into();
        i.exit = Some(VmExit { code: Some(1), signal: None, stopped: false, error: Some("bad".into()) });
        assert_eq!(state(&i), "failed (1)");
        i.state = "exited".into();
        i.exit = Some(VmExit { code: None, signal: Some(9), stopped: true, error: None });
        assert_eq!(state(&i), "stopped");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m1s");
    }

    /// A bad `--drive` is refused by the CLI with what is wrong, before the node is asked.
    #[test]
    fn a_bad_drive_is_refused_with_the_reason() {
        let e = drive("uri=ref://x,format=vhd").unwrap_err();
        assert!(e.contains("format \"vhd\" is not one metac knows: raw or qcow2"), "{e}");
        assert!(memory("12X").unwrap_err().contains("bad --memory"));
    }
}
