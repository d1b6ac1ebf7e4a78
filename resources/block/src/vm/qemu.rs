//! qemu as `metac vm` runs it: what a user writes (`--drive uri=REF,format=qcow2,readonly`, `--memory 1G`, a VM's
//! name) parsed and checked, and the command line of `qemu-system-x86_64` built from a [`Machine`]. Pure: no IO but
//! looking qemu up in `PATH` ([`find`]), so every rule here has a unit test.
//!
//! Each drive is a file bind's Unix socket, opened by qemu's own NBD client (`-blockdev driver=nbd`), with a qcow2
//! node layered on it when the image is qcow2, and shown to the guest as virtio-blk (`/dev/vda`, `/dev/vdb`, ...).
//! The serial console is qemu's stdio, which the node holds as pipes; QMP listens on a socket of the node's. The
//! kernel, initrd and cdrom are descriptors the node opened as the caller, named `/dev/fd/N`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::VmError as Error;

/// The program run for a VM.
pub const QEMU: &str = "qemu-system-x86_64";
/// The Debian package that has it.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// The longest VM name.
pub const MAX_NAME: usize = 32;
/// The fewest MiB of guest memory: below this no kernel boots.
pub const MIN_MEMORY_MIB: u64 = 16;
/// The most MiB of guest memory one VM may ask for (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// The most virtual CPUs of one VM.
pub const MAX_CPUS: u32 = 255;
/// The most drives of one VM.
pub const MAX_DRIVES: usize = 16;
/// The first descriptor number the kernel, initrd and cdrom get in qemu (after stdin, stdout and stderr).
pub const FIRST_FD: i32 = 3;

/// How a drive's bytes are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The bytes are the disk.
    #[default]
    Raw,
    /// A qcow2 image: qemu's qcow2 driver on top of the NBD export.
    Qcow2,
}

impl Format {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// A `--drive` as the user gave it: `uri=REF[,format=raw|qcow2][,readonly]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSpec {
    /// The `file` ref of the disk image.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its format.
    #[serde(default)]
    pub format: Format,
    /// Shown to the guest read-only (a ref without the write right always is).
    #[serde(default)]
    pub readonly: bool,
}

impl FromStr for DriveSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<DriveSpec, Error> {
        let bad = |why: String| Error::Drive { spec: spec.to_string(), why };
        let (mut reference, mut format, mut readonly) = (None, None, false);
        for part in spec.split(',') {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (part, None),
            };
            match (key, value) {
                ("uri" | "ref", Some(_)) if reference.is_some() => return Err(bad("uri= is given twice".into())),
                ("uri" | "ref", Some("")) => return Err(bad("uri= is empty: give the ref, uri=ref://...".into())),
                ("uri" | "ref", Some(v)) => reference = Some(v.to_string()),
                ("format", Some(v)) if format.is_none() => {
                    format = Some(match v {
                        "raw" => Format::Raw,
                        "qcow2" => Format::Qcow2,
                        v => return Err(bad(format!("format {v:?} is not one metac knows: raw or qcow2"))),
                    })
                }
                ("format", Some(_)) => return Err(bad("format= is given twice".into())),
                ("readonly", None | Some("on" | "true" | "yes")) => readonly = true,
                ("readonly", Some("off" | "false" | "no")) => readonly = false,
                ("readonly", Some(v)) => return Err(bad(format!("readonly={v}: say readonly, or readonly=on|off"))),
                ("", None) => return Err(bad("an empty option (two commas in a row?)".into())),
                (k, _) => {
                    return Err(bad(format!("{k:?} is not a drive option: uri=REF[,format=raw|qcow2][,readonly]")))
                }
            }
        }
        let reference = reference.ok_or_else(|| bad("it names no ref: uri=REF is required".into()))?;
        Ok(DriveSpec { reference, format: format.unwrap_or_default(), readonly })
    }
}

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// qemu's emulator: no /dev/kvm this node may open; works everywhere, many times slower.
    Tcg,
}

impl Accel {
    /// Its name, as qemu's `-accel` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A drive as qemu gets it: a bind's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// The file bind's Unix socket, where an NBD server answers.
    pub socket: PathBuf,
    /// The image's format.
    pub format: Format,
    /// Read-only for the guest (and for qemu: no write ever leaves it).
    pub readonly: bool,
}

/// Everything a VM's command line is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The VM's name (shown by qemu's process title).
    pub name: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// KVM or TCG.
    pub accel: Accel,
    /// The disks, `/dev/vda` first.
    pub drives: Vec<Drive>,
    /// A kernel to boot directly, as a path qemu opens (`/dev/fd/N`).
    pub kernel: Option<PathBuf>,
    /// Its initrd.
    pub initrd: Option<PathBuf>,
    /// Its command line.
    pub append: Option<String>,
    /// A CD-ROM image (read-only), booted first when there is no kernel.
    pub cdrom: Option<PathBuf>,
    /// Directories of this host shared with the guest over virtio-9p (`metac run --vm`'s mounts).
    pub shares: Vec<Share>,
    /// Where QMP listens.
    pub qmp: PathBuf,
}

/// A directory of this host the guest mounts with `mount -t 9p -o trans=virtio TAG DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The mount tag the guest names it by: letters, digits, `-` and `_`, at most 31 bytes.
    pub tag: String,
    /// The directory, absolute.
    pub path: PathBuf,
    /// The guest may not change it.
    #[serde(default)]
    pub readonly: bool,
}

impl Share {
    /// Checks the tag and the path.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Share { tag: self.tag.clone(), why });
        if self.tag.is_empty() || self.tag.len() > 31 {
            return bad("a tag has 1 to 31 characters".into());
        }
        if let Some(c) = self.tag.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))) {
            return bad(format!("{c:?} is not allowed in a tag: use letters, digits, '-' and '_'"));
        }
        if !self.path.is_absolute() {
            return bad(format!("{}: the directory must be an absolute path", self.path.display()));
        }
        Ok(())
    }
}

impl Machine {
    /// qemu's arguments (without the program).
    pub fn args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.push(["-name", &format!("guest={},debug-threads=on", self.name)]);
        // Nothing the user's or the system's qemu configuration adds; no display, no default devices.
        a.push(["-nodefaults", "-no-user-config", "-display", "none", "-msg", "timestamp=off"]);
        // qemu runs as the node's user: no new privileges, no processes, no obsolete syscalls.
        a.push(["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
        a.push(["-machine", "q35", "-accel", self.accel.name()]);
        a.push(["-cpu", if self.accel == Accel::Kvm { "host" } else { "max" }]);
        a.push(["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()]);
        a.push(["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]);
        a.push([
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", escape(&self.qmp)),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]);
        let boot_disk = self.kernel.is_none() && self.cdrom.is_none();
        for (i, d) in self.drives.iter().enumerate() {
            let nbd = format!("nbd{i}");
            let mut node = serde_json::json!({
                "driver": "nbd",
                "node-name": nbd,
                "server": {"type": "unix", "path": d.socket},
                "read-only": d.readonly,
                // A bind that loses its exporter comes back by itself: requests wait for it this long.
                "reconnect-delay": 30,
            });
            let mut top = nbd.clone();
            if d.format == Format::Qcow2 {
                top = format!("disk{i}");
                node = serde_json::json!({"driver": "qcow2", "node-name": top, "file": node, "read-only": d.readonly});
            }
            a.push(["-blockdev".into(), node.to_string()]);
            let boot = if i == 0 && boot_disk { ",bootindex=1" } else { "" };
            // A full export (it cannot grow) is the guest's write error, not a VM paused with no one told.
            a.push([
                "-device".into(),
                format!("virtio-blk-pci,drive={top},id=vd{i},werror=report,rerror=report{boot}"),
            ]);
        }
        if let Some(cd) = &self.cdrom {
            let bootindex = if self.kernel.is_none() { ",bootindex=0" } else { "" };
            a.push([
                "-drive".into(),
                format!("if=none,id=cd0,media=cdrom,readonly=on,format=raw,file={}", escape(cd)),
                "-device".into(),
                format!("ide-cd,drive=cd0{bootindex}"),
            ]);
        }
        for (i, sh) in self.shares.iter().enumerate() {
            // security_model=none: files keep the owners the guest gives them where the node may set them, and a
            // node that may not does not fail the guest's writes; multidevs=remap keeps inode numbers unique when
            // the directory spans filesystems.
            let ro = if sh.readonly { ",readonly=on" } else { "" };
            a.push([
                "-fsdev".into(),
                format!("local,id=fs{i},path={},security_model=none,multidevs=remap{ro}", escape(&sh.path)),
                "-device".into(),
                format!("virtio-9p-pci,fsdev=fs{i},mount_tag={}", sh.tag),
            ]);
        }
        if let Some(k) = &self.kernel {
            a.push(["-kernel".into(), k.as_os_str().to_owned()]);
            if let Some(i) = &self.initrd {
                a.push(["-initrd".into(), i.as_os_str().to_owned()]);
            }
            a.push(["-append", self.append.as_deref().unwrap_or("console=ttyS0")]);
        }
        a.0
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<const N: usize, S: Into<OsString>>(&mut self, args: [S; N]) {
        self.0.extend(args.map(Into::into));
    }
}

/// A path as a value of a qemu `key=value,...` option: commas doubled.
fn escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Checks a VM name: 1 to [`MAX_NAME`] letters, digits, `-`, `_` and `.`, starting with a letter or digit (it is
/// part of socket names and of qemu's process title).
pub fn check_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Name { name: name.to_string(), why: why.to_string() });
    if name.is_empty() || name.len() > MAX_NAME {
        return bad(&format!("a name has 1 to {MAX_NAME} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("a name starts with a letter or a digit");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return bad(&format!("{c:?} is not allowed: use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Parses a memory size: a number with an optional K, M, G or T suffix (binary units, an optional `iB` or `B`
/// after it); a bare number is MiB, as qemu's `-m` reads it. Returns MiB.
pub fn parse_memory(s: &str) -> Result<u64, Error> {
    let bad = |why: &str| Error::Memory { value: s.to_string(), why: why.to_string() };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| bad("give a size such as 512M or 2G"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.strip_suffix("IB").or_else(|| unit.strip_suffix('B')).unwrap_or(&unit);
    let kib = match unit {
        "K" => n,
        "" | "M" => n.saturating_mul(1 << 10),
        "G" => n.saturating_mul(1 << 20),
        "T" => n.saturating_mul(1 << 30),
        _ => return Err(bad("the unit is one of K, M, G, T")),
    };
    if !kib.is_multiple_of(1024) {
        return Err(bad("give a whole number of MiB"));
    }
    let mib = kib / 1024;
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(bad(&format!("a VM has {MIN_MEMORY_MIB} MiB to {} GiB", MAX_MEMORY_MIB >> 10)));
    }
    Ok(mib)
}

/// Checks a CPU count.
pub fn check_cpus(cpus: u32) -> Result<(), Error> {
    if (1..=MAX_CPUS).contains(&cpus) {
        Ok(())
    } else {
        Err(Error::Cpus { cpus })
    }
}

/// Finds [`QEMU`] in the directories of `path` (a `PATH` value); the error says which package to install.
pub fn find(path: Option<&std::ffi::OsStr>) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    let dirs = path.map(|p| std::env::split_paths(p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.iter()
        .map(|d| d.join(QEMU))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| Error::NoQemu { path: std::env::join_paths(&dirs).unwrap_or_default().into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            name: "web".into(),
            memory_mib: 256,
            cpus: 2,
            accel: Accel::Kvm,
            drives: vec![Drive { socket: "/run/metac/vm-web-0.sock".into(), format: Format::Raw, readonly: false }],
            kernel: None,
            initrd: None,
            append: None,
            cdrom: None,
            shares: Vec::new(),
            qmp: "/run/metac/vm-web.qmp".into(),
        }
    }

    #[test]
    fn shares_are_virtio_9p_devices_with_checked_tags() {
        let mut m = machine();
        m.shares = vec![
            Share { tag: "root".into(), path: "/srv/rootfs".into(), readonly: true },
            Share { tag: "m1".into(), path: "/data,x".into(), readonly: false },
        ];
        assert_eq!(
            values(&m, "-fsdev"),
            [
                "local,id=fs0,path=/srv/rootfs,security_model=none,multidevs=remap,readonly=on",
                "local,id=fs1,path=/data,,x,security_model=none,multidevs=remap"
            ]
        );
        assert!(values(&m, "-device").contains(&"virtio-9p-pci,fsdev=fs1,mount_tag=m1".to_string()));
        let bad = Share { tag: "a b".into(), path: "/x".into(), readonly: false };
        assert!(bad.check().unwrap_err().to_string().contains("not allowed in a tag"));
        assert!(Share { tag: "ok".into(), path: "rel".into(), readonly: false }.check().is_err());
        assert!(Share { tag: "x".repeat(32), path: "/x".into(), readonly: false }.check().is_err());
    }

    fn line(m: &Machine) -> String {
        m.args().iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    /// The value after `flag`, for each time it appears.
    fn values(m: &Machine, flag: &str) -> Vec<String> {
        let a: Vec<String> = m.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        a.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
    }

    #[test]
    fn a_drive_spec_reads_as_qemu_users_write_it() {
        let d: DriveSpec = "uri=ref://abc".parse().unwrap();
        assert_eq!(d, DriveSpec { reference: "ref://abc".into(), format: Format::Raw, readonly: false });
        let d: DriveSpec = "uri=ref://abc,format=qcow2,readonly".parse().unwrap();
        assert_eq!((d.format, d.readonly), (Format::Qcow2, true));
        let d: DriveSpec = "readonly=on,ref=ref://x=y".parse().unwrap();
        assert_eq!((d.reference.as_str(), d.readonly), ("ref://x=y", true));
    }

    /// A bad `--drive` says what is wrong with it and how it should read.
    #[test]
    fn a_bad_drive_spec_says_what_is_wrong() {
        let cases = [
            ("format=raw", "names no ref: uri=REF is required"),
            ("uri=ref://a,format=vmdk", "format \"vmdk\" is not one metac knows: raw or qcow2"),
            ("uri=ref://a,cache=none", "\"cache\" is not a drive option: uri=REF[,format=raw|qcow2][,readonly]"),
            ("uri=ref://a,,readonly", "an empty option"),
            ("uri=ref://a,uri=ref://b", "uri= is given twice"),
            ("uri=ref://a,readonly=maybe", "readonly=maybe: say readonly"),
            ("uri=", "uri= is empty"),
        ];
        for (spec, want) in cases {
            let e = spec.parse::<DriveSpec>().unwrap_err().to_string();
            assert!(e.starts_with(&format!("bad --drive {spec:?}: ")), "{e}");
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn a_raw_drive_is_qemus_nbd_client_on_the_binds_socket_as_virtio_blk() {
        let m = machine();
        let nodes = values(&m, "-blockdev");
        assert_eq!(nodes.len(), 1);
        let node: serde_json::Value = serde_json::from_str(&nodes[0]).unwrap();
        assert_eq!(node["driver"], "nbd");
        assert_eq!(node["server"], serde_json::json!({"type": "unix", "path": "/run/metac/vm-web-0.sock"}));
        assert_eq!(node["read-only"], false);
        assert_eq!(values(&m, "-device"), ["virtio-blk-pci,drive=nbd0,id=vd0,werror=report,rerror=report,bootindex=1"]);
        let l = line(&m);
        assert!(l.contains("-accel kvm -cpu host -m 256 -smp 2"), "{l}");
        assert!(l.contains("-chardev stdio,id=console,signal=off -serial chardev:console"), "{l}");
        assert!(l.contains("-chardev socket,id=qmp,path=/run/metac/vm-web.qmp,server=on,wait=off"), "{l}");
        assert!(!l.contains("-kernel"), "{l}");
    }

    #[test]
    fn qcow2_is_layered_on_the_nbd_node_and_readonly_reaches_both() {
        let mut m = machine();
        m.drives.push(Drive { socket: "/s/b.sock".into(), format: Format::Qcow2, readonly: true });
        let nodes = values(&m, "-blockdev");
        let q: serde_json::Value = serde_json::from_str(&nodes[1]).unwrap();
        assert_eq!(
            (q["driver"].as_str(), q["node-name"].as_str(), &q["read-only"]),
            (Some("qcow2"), Some("disk1"), &true.into())
        );
        assert_eq!((q["file"]["driver"].as_str(), &q["file"]["read-only"]), (Some("nbd"), &true.into()));
        assert_eq!(q["file"]["server"]["path"], "/s/b.sock");
        assert_eq!(values(&m, "-device")[1], "virtio-blk-pci,drive=disk1,id=vd1,werror=report,rerror=report");
    }

    #[test]
    fn tcg_a_kernel_and_a_cdrom() {
        let mut m = machine();
        m.accel = Accel::Tcg;
        m.kernel = Some("/dev/fd/3".into());
        m.initrd = Some("/dev/fd/4".into());
        m.cdrom = Some("/dev/fd/5".into());
        m.qmp = "/odd,dir/vm.qmp".into();
        let l = line(&m);
        assert!(l.contains("-accel tcg -cpu max"), "{l}");
        assert!(l.contains("-kernel /dev/fd/3 -initrd /dev/fd/4 -append console=ttyS0"), "{l}");
        assert!(l.contains("file=/dev/fd/5 -device ide-cd,drive=cd0 "), "the kernel boots first: {l}");
        assert!(l.contains("path=/odd,,dir/vm.qmp,"), "commas in a path are doubled: {l}");
        assert!(!values(&m, "-device")[0].contains("bootindex"), "no disk boot with a kernel");
        m.append = Some("console=ttyS0 root=/dev/vda rw".into());
        assert_eq!(values(&m, "-append"), ["console=ttyS0 root=/dev/vda rw"]);
    }

    #[test]
    fn names_memory_and_cpus_are_checked() {
        for ok in ["web", "vm1", "a.b_c-d", &"x".repeat(MAX_NAME)] {
            check_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "1 to 32"),
            (&"x".repeat(MAX_NAME + 1), "1 to 32"),
            ("-x", "starts with a letter"),
            ("a/b", "'/' is not allowed"),
            ("a b", "' ' is not allowed"),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("bad VM name"), "{bad:?}: {e}");
        }
        assert_eq!(parse_memory("256M").unwrap(), 256);
        assert_eq!(parse_memory("1G").unwrap(), 1024);
        assert_eq!(parse_memory("2GiB").unwrap(), 2048);
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("65536k").unwrap(), 64);
        for bad in ["", "1X", "8M", "1.5G", "G", "2000T", "1000k"] {
            assert!(parse_memory(bad).unwrap_err().to_string().starts_with("bad --memory"), "{bad}");
        }
        check_cpus(1).unwrap();
        assert!(check_cpus(0).unwrap_err().to_string().contains("1 to 255"));
    }

    /// A node without qemu says which package to install, and that it installs nothing itself.
    #[test]
    fn missing_qemu_names_the_debian_package() {
        let dir = tempfile::tempdir().unwrap();
        let e = find(Some(dir.path().as_os_str())).unwrap_err().to_string();
        assert!(e.contains("qemu-system-x86_64 is not installed"), "{e}");
        assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        let e = find(None).unwrap_err().to_string();
        assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
        // Found when there, executable.
        let q = dir.path().join(QEMU);
        std::fs::write(&q, "").unwrap();
        assert!(find(Some(dir.path().as_os_str())).is_err(), "not executable");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(Some(dir.path().as_os_str())).unwrap(), q);
    }
}
