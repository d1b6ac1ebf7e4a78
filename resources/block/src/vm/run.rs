//! `metac run --vm`: one command in a small guest. The guest boots the host's kernel (or one given) with an
//! initramfs built here once per kernel: a static busybox, the kernel's virtio-9p modules, and an `/init` that
//! mounts the run's control share, sources its `run` script, and powers off. Everything about the run itself is in
//! that script ([`script`]), written to the control share per run, so the initramfs is cached
//! ([`cached_initramfs`]) and a run costs a boot, not a build.
//!
//! The script mounts the root share (or the host's `/`, read-only) at `/newroot`, the run's other mounts over it
//! (9p shares, tmpfs), `/proc`, `/sys`, `/dev` and a `/tmp`, sets the hostname and the console's mode (a terminal
//! with the caller's size for `-t`; no echo and no newline translation otherwise), then runs the
//! command in a session of its own with the console as its controlling terminal (so Ctrl-C reaches it), chrooted,
//! and writes its exit status to the control share, where the CLI reads it after the guest has powered off.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::initramfs::{Error, GuestKernel, Initramfs};

/// The modules a run's guest needs: virtio over PCI and the 9p filesystem over virtio.
pub const RUN_MODULES: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];
/// The control share's tag: the run's script, and where the exit status goes.
pub const CONTROL_TAG: &str = "metacctl";
/// The root share's tag.
pub const ROOT_TAG: &str = "metacroot";
/// The kernel command line of a run. The kernel's console is the second serial port, which the guest has no
/// device behind: what the kernel prints (even its "Power down") goes nowhere, and the first port, the node's
/// console pipe, carries only the command's bytes (`/init` opens it as its stdio).
pub const APPEND: &str = "console=ttyS1 loglevel=0 quiet panic=-1 printk.devkmsg=off";
/// The file of the control share the exit status is written to.
pub const EXIT_FILE: &str = "exit";
/// The file of the control share made when the command is about to start: input sent before it would be lost
/// (the serial port drops what came while it was closed), so the CLI holds stdin back until it is there.
pub const READY_FILE: &str = "ready";

/// The `/init` of a run's initramfs (the initramfs adds the module loading before, and the power-off after).
const INIT: &str = "exec 0<>/dev/ttyS0 1>&0 2>&0\nmkdir -p /ctl\n\
    if mount -t 9p -o trans=virtio,version=9p2000.L metacctl /ctl; then . /ctl/run; \
    else echo 'metac: the guest has no control share' >&2; fi\n";

/// What the guest mounts for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMount {
    /// A 9p share by its tag.
    Share {
        /// Where it appears.
        target: PathBuf,
        /// Its tag.
        tag: String,
        /// Read-only.
        readonly: bool,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Where it appears.
        target: PathBuf,
    },
}

/// One run, as the guest's script needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRun {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE`s.
    pub env: Vec<String>,
    /// The working directory [default: `/`].
    pub cwd: Option<PathBuf>,
    /// A terminal of this size (rows, columns); `None`: raw stdio.
    pub tty: Option<(u16, u16)>,
    /// stdin is forwarded; otherwise the command's stdin is `/dev/null`.
    pub stdin: bool,
    /// The guest's hostname.
    pub hostname: String,
    /// The root is the root share read-only.
    pub root_readonly: bool,
    /// Mounts over the root, in order.
    pub mounts: Vec<GuestMount>,
}

/// A word quoted for the shell: in single quotes, with each `'` written `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// The run's script, sourced by `/init` in the guest.
pub fn script(r: &GuestRun) -> String {
    let mut s = String::from("fail() { echo \"metac: $*\" >&2; sync; poweroff -f; }\nmkdir -p /newroot\n");
    let opts = "trans=virtio,version=9p2000.L,msize=524288,cache=loose";
    let ro = if r.root_readonly { ",ro" } else { "" };
    let _ = writeln!(s, "mount -t 9p -o {opts}{ro} {ROOT_TAG} /newroot || fail 'cannot mount the root share'");
    for (fs, dir) in [("proc", "proc"), ("sysfs", "sys"), ("devtmpfs", "dev"), ("tmpfs", "tmp")] {
        let _ = writeln!(s, "[ -d /newroot/{dir} ] && mount -t {fs} {fs} /newroot/{dir}");
    }
    for m in &r.mounts {
        let (target, line) = match m {
            GuestMount::Share { target, tag, readonly } => {
                let ro = if *readonly { ",ro" } else { "" };
                (target, format!("mount -t 9p -o {opts}{ro} {tag} /newroot{}", path_str(target)))
            }
            GuestMount::Tmpfs { target } => (target, format!("mount -t tmpfs tmpfs /newroot{}", path_str(target))),
        };
        let _ = writeln!(
            s,
            "mkdir -p /newroot{t} 2>/dev/null; {line} || fail {}",
            quote(&format!("cannot mount {}", target.display())),
            t = path_str(target)
        );
    }
    let _ = writeln!(s, "hostname {}", quote(&r.hostname));
    match r.tty {
        Some((rows, cols)) => {
            let _ = writeln!(s, "stty -F /dev/ttyS0 sane rows {rows} cols {cols}");
        }
        // No echo, no newline translation; still line mode, so that the end of the caller's stdin (^D) ends it.
        None => s.push_str("stty -F /dev/ttyS0 -echo -onlcr\n"),
    }
    s.push_str("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n");
    s.push_str(if r.tty.is_some() { "export TERM=${TERM:-linux}\n" } else { "unset TERM\n" });
    for e in &r.env {
        if let Some((k, v)) = e.split_once('=') {
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                let _ = writeln!(s, "export {k}={}", quote(v));
            }
        }
    }
    let args: Vec<String> = r.args.iter().map(|a| quote(a)).collect();
    let command = match &r.cwd {
        Some(cwd) if cwd != Path::new("/") => {
            let cd = "cd \"$0\" || { echo \"metac: no directory $0 in the guest (its /tmp is its own): give \
                      --workdir\" >&2; exit 125; }; exec \"$@\"";
            format!("chroot /newroot /bin/sh -c {} {} {}", quote(cd), path_str(cwd), args.join(" "))
        }
        _ => format!("chroot /newroot {}", args.join(" ")),
    };
    let stdin = if r.stdin { "" } else { " </dev/null" };
    // setsid -c: a session of its own with the console as controlling terminal, so ^C and the like reach it.
    let _ = writeln!(s, ": > /ctl/{READY_FILE}\nsetsid -c {command}{stdin}\necho $? > /ctl/{EXIT_FILE}\nsync");
    s
}

/// The initramfs for runs with `kernel`, built once and kept at `dir/run-initramfs-VERSION.cpio`.
pub fn cached_initramfs(kernel: &GuestKernel, dir: &Path) -> Result<PathBuf, Error> {
    let path = dir.join(format!("run-initramfs-{}.cpio", kernel.version));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { what: format!("make {}", dir.display()), source: e })?;
    let mut i = Initramfs::new()?;
    i.modules(kernel, &RUN_MODULES)?.init(&[], INIT);
    // Written whole under another name, then renamed: a run never boots half an archive.
    let tmp = dir.join(format!(".run-initramfs-{}.{}.tmp", kernel.version, std::process::id()));
    i.write(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::Io { what: format!("rename to {}", path.display()), source: e })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> GuestRun {
        GuestRun {
            args: vec!["sh".into(), "-c".into(), "echo 'hi'; exit 3".into()],
            env: vec!["A=b c".into(), "BAD-KEY=x".into()],
            cwd: None,
            tty: None,
            stdin: false,
            hostname: "run1".into(),
            root_readonly: true,
            mounts: vec![
                GuestMount::Share { target: "/data".into(), tag: "m1".into(), readonly: false },
                GuestMount::Tmpfs { target: "/scratch".into() },
            ],
        }
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME `x`"), "'$HOME `x`'");
    }

    #[test]
    fn the_script_mounts_runs_and_records_the_exit_status() {
        let s = script(&run());
        assert!(s.contains("mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro metacroot"));
        assert!(s.contains("mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose m1 /newroot'/data'"));
        assert!(s.contains("mount -t tmpfs tmpfs /newroot'/scratch'"));
        assert!(s.contains("export A='b c'") && !s.contains("BAD-KEY"), "{s}");
        assert!(s.contains("stty -F /dev/ttyS0 -echo -onlcr"));
        assert!(s.contains(r"setsid -c chroot /newroot 'sh' '-c' 'echo '\''hi'\''; exit 3' </dev/null"), "{s}");
        assert!(s.find("setsid").unwrap() < s.find("echo $? > /ctl/exit").unwrap());
    }

    #[test]
    fn a_terminal_run_gets_its_size_and_a_working_directory() {
        let mut r = run();
        r.tty = Some((40, 120));
        r.stdin = true;
        r.cwd = Some("/work dir".into());
        let s = script(&r);
        assert!(s.contains("stty -F /dev/ttyS0 sane rows 40 cols 120"));
        assert!(
            s.contains(r#"chroot /newroot /bin/sh -c 'cd "$0" || { echo "metac: no directory $0 in the guest"#),
            "{s}"
        );
        assert!(s.contains(r#"exit 125; }; exec "$@"' '/work dir' 'sh'"#), "{s}");
        assert!(!s.contains("</dev/null"));
    }
}
