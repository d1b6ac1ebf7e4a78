//! Small guests built from what the machine has: a kernel from `/boot` ([`GuestKernel`], from the
//! `linux-image-amd64` package) and a busybox initramfs ([`Initramfs`]) with the kernel's virtio modules, whose
//! `/init` runs a shell script and powers the guest off. `metac run --vm` boots one to run a command; the `metac
//! vm` tests boot one from a remote disk.
//!
//! The initramfs is a `newc` cpio archive written here (uncompressed, as the kernel takes it), so it holds a
//! `/dev/console` device node without root or `mknod`, and needs no `cpio` program. Modules come from
//! `/lib/modules/VERSION` with their dependencies in load order (`modules.dep`), decompressed when the package
//! compresses them (`.ko.xz`, `.ko.zst`, `.ko.gz`); `/init` loads them with busybox's `insmod`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What went wrong building a guest: what is missing, and how to get it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Something the guest needs is not on this machine.
    #[error("{0}")]
    Missing(String),
}

impl Error {
    fn io(what: String, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// The modules a guest needs for its disks: virtio over PCI, and virtio-blk (`/dev/vda`...).
pub const DISK_MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];

/// A kernel to boot guests with, and its modules.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Its release (`6.1.0-57-amd64`).
    pub version: String,
    /// `/boot/vmlinuz-VERSION`.
    pub image: PathBuf,
    /// `/lib/modules/VERSION`.
    pub modules: PathBuf,
}

impl GuestKernel {
    /// The newest `/boot/vmlinuz-*` that has its modules in `/lib/modules`.
    pub fn find() -> Result<GuestKernel> {
        Self::find_in(Path::new("/boot"), Path::new("/lib/modules"))
    }

    /// The kernel image at `image` (`.../vmlinuz-VERSION`), whose modules are in `/lib/modules/VERSION`.
    pub fn from_image(image: &Path) -> Result<GuestKernel> {
        let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(version) = name.strip_prefix("vmlinuz-") else {
            return Err(Error::Missing(format!(
                "{}: name a kernel as /boot names them (vmlinuz-VERSION), so that its modules are found in \
                 /lib/modules/VERSION",
                image.display()
            )));
        };
        let modules = Path::new("/lib/modules").join(version);
        if !image.is_file() || !modules.join("modules.dep").is_file() {
            return Err(Error::Missing(format!(
                "{} with its modules in {} is needed (the guest loads its virtio and 9p modules from there)",
                image.display(),
                modules.display()
            )));
        }
        Ok(GuestKernel { version: version.to_string(), image: image.to_path_buf(), modules })
    }

    fn find_in(boot: &Path, lib: &Path) -> Result<GuestKernel> {
        let mut found: Vec<GuestKernel> = std::fs::read_dir(boot)
            .map_err(|e| Error::io(format!("list {}", boot.display()), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version = e.file_name().to_str()?.strip_prefix("vmlinuz-")?.to_string();
                let modules = lib.join(&version);
                modules.join("modules.dep").is_file().then(|| GuestKernel { image: e.path(), modules, version })
            })
            .collect();
        found.sort_by(|a, b| a.version.cmp(&b.version));
        found.pop().ok_or_else(|| {
            Error::Missing(format!(
                "no guest kernel: {}/vmlinuz-* with its modules in {} is needed; install the Debian package \
                 `linux-image-amd64`, or give one with --kernel",
                boot.display(),
                lib.display()
            ))
        })
    }

    /// The modules `names` with every module they depend on, dependencies first, as paths under
    /// [`GuestKernel::modules`].
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let dep = self.modules.join("modules.dep");
        let text = std::fs::read_to_string(&dep).map_err(|e| Error::io(format!("read {}", dep.display()), e))?;
        load_order(&text, names).map(|v| v.into_iter().map(|p| self.modules.join(p)).collect())
    }
}

/// A module's name from its path: the file name without `.ko[.xz|.zst|.gz]`, with `-` read as `_` (as modprobe).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The load order of `names` from a `modules.dep` text: each module after the modules it depends on.
fn load_order(modules_dep: &str, names: &[&str]) -> Result<Vec<String>> {
    let mut deps = std::collections::HashMap::new();
    for line in modules_dep.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            deps.insert(module_name(module), (module.to_string(), rest.split_whitespace().collect::<Vec<_>>()));
        }
    }
    fn visit<'a>(
        name: &str,
        deps: &'a std::collections::HashMap<String, (String, Vec<&'a str>)>,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        let (path, needs) = deps.get(&name.replace('-', "_")).ok_or_else(|| {
            Error::Missing(format!("module {name} is not in modules.dep (built into this kernel, or absent?)"))
        })?;
        if out.contains(path) {
            return Ok(());
        }
        if depth > 64 {
            return Err(Error::Missing(format!("modules.dep: a dependency loop through {name}")));
        }
        for n in needs {
            visit(&module_name(n), deps, out, depth + 1)?;
        }
        out.push(path.clone());
        Ok(())
    }
    let mut out = Vec::new();
    for n in names {
        visit(n, &deps, &mut out, 0)?;
    }
    Ok(out)
}

/// One archive member.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// A busybox initramfs, built in memory and written as a newc cpio archive.
#[derive(Debug, Clone)]
pub struct Initramfs {
    entries: Vec<Entry>,
    modules: Vec<String>,
}

impl Initramfs {
    /// The base: directories, `/dev/console`, and a static busybox as `/bin/busybox` (from `busybox-static`).
    pub fn new() -> Result<Initramfs> {
        let mut i = Initramfs { entries: Vec::new(), modules: Vec::new() };
        for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", "mnt"] {
            i.entries.push(Entry { name: d.into(), mode: S_IFDIR | 0o755, rdev: (0, 0), data: Vec::new() });
        }
        // The kernel opens /dev/console for init before /init runs: without it, init has no stdio.
        i.entries.push(Entry { name: "dev/console".into(), mode: S_IFCHR | 0o600, rdev: (5, 1), data: Vec::new() });
        let busybox = static_busybox()?;
        let data = std::fs::read(&busybox).map_err(|e| Error::io(format!("read {}", busybox.display()), e))?;
        i.file("bin/busybox", data, 0o755);
        i.symlink("bin/sh", "busybox");
        Ok(i)
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, data: Vec<u8>, mode: u32) -> &mut Initramfs {
        self.entries.push(Entry {
            name: name.trim_start_matches('/').into(),
            mode: S_IFREG | mode,
            rdev: (0, 0),
            data,
        });
        self
    }

    /// Adds a symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Initramfs {
        let e = Entry { name: name.into(), mode: S_IFLNK | 0o777, rdev: (0, 0), data: target.as_bytes().to_vec() };
        self.entries.push(e);
        self
    }

    /// Adds `names` and their dependencies from `kernel`, which `/init` loads in that order.
    pub fn modules(&mut self, kernel: &GuestKernel, names: &[&str]) -> Result<&mut Initramfs> {
        for path in kernel.load_order(names)? {
            let name = module_name(&path.to_string_lossy());
            if self.modules.contains(&name) {
                continue;
            }
            let data = read_module(&path)?;
            self.file(&format!("lib/modules/{name}.ko"), data, 0o644);
            self.modules.push(name);
        }
        Ok(self)
    }

    /// Sets `/init`: mounts /proc, /sys and /dev, loads the modules, waits (at most 5 s) for each of
    /// `wait_for` (block devices such as `/dev/vda`), runs `script` with busybox's sh, then powers off.
    pub fn init(&mut self, wait_for: &[&str], script: &str) -> &mut Initramfs {
        let text = init_script(&self.modules, wait_for, script);
        self.entries.retain(|e| e.name != "init");
        self.file("init", text.into_bytes(), 0o755)
    }

    /// The archive's bytes.
    pub fn to_cpio(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, e) in self.entries.iter().enumerate() {
            write_entry(&mut out, ino as u32 + 1, e);
        }
        let trailer = Entry { name: "TRAILER!!!".into(), mode: 0, rdev: (0, 0), data: Vec::new() };
        write_entry(&mut out, 0, &trailer);
        out
    }

    /// Writes the archive to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_cpio()).map_err(|e| Error::io(format!("write {}", path.display()), e))
    }
}

/// `/init`, for [`Initramfs::init`].
fn init_script(modules: &[String], wait_for: &[&str], script: &str) -> String {
    let mut s = String::from("#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n");
    s.push_str("mount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n");
    for m in modules {
        s.push_str(&format!("insmod /lib/modules/{m}.ko || echo \"metac-initramfs: insmod {m} failed\"\n"));
    }
    for d in wait_for {
        s.push_str(&format!(
            "i=0; while [ ! -b {d} ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
             [ -b {d} ] || echo \"metac-initramfs: no {d}\"\n"
        ));
    }
    s.push_str(script);
    s.push_str("\nsync\npoweroff -f\n");
    s
}

fn write_entry(out: &mut Vec<u8>, ino: u32, e: &Entry) {
    let name_len = e.name.len() + 1;
    let fields = [
        ino,
        e.mode,
        0,
        0,
        if e.mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
        0,
        e.data.len() as u32,
        0,
        0,
        e.rdev.0,
        e.rdev.1,
        name_len as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&e.data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A module's bytes, decompressed if the package compressed it.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let p = path.to_string_lossy();
    let (tool, package) = if p.ends_with(".ko.xz") {
        ("xz", "xz-utils")
    } else if p.ends_with(".ko.zst") {
        ("zstd", "zstd")
    } else if p.ends_with(".ko.gz") {
        ("gzip", "gzip")
    } else {
        return std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e));
    };
    let out = Command::new(tool).arg("-dc").arg(path).output().map_err(|e| {
        Error::Missing(format!("cannot run {tool} to decompress {} ({e}): install {package}", path.display()))
    })?;
    if !out.status.success() {
        return Err(Error::Missing(format!(
            "{tool} -dc {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// A static busybox: a program with no ELF interpreter, since the initramfs has no libc.
fn static_busybox() -> Result<PathBuf> {
    let candidates = ["/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox"];
    for c in candidates {
        if let Ok(bytes) = std::fs::read(c) {
            if is_static_elf(&bytes) {
                return Ok(c.into());
            }
        }
    }
    Err(Error::Missing("no static busybox (/bin/busybox): install the Debian package busybox-static".into()))
}

/// Whether `elf` is a 64-bit ELF with no `PT_INTERP` program header.
fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let o = phoff + i * size;
        elf.get(o..o + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
                       kernel/drivers/virtio/virtio_ring.ko\n\
                       kernel/drivers/virtio/virtio.ko:\n\
                       kernel/drivers/virtio/virtio_ring.ko:\n\
                       kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
                       kernel/drivers/virtio/virtio_pci-modern-dev.ko kernel/drivers/virtio/virtio_ring.ko \
                       kernel/drivers/virtio/virtio.ko\n\
                       kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
                       kernel/drivers/virtio/virtio_pci-modern-dev.ko:\n";

    #[test]
    fn modules_load_after_what_they_depend_on_once_each() {
        let order = load_order(DEP, &["virtio_pci", "virtio-blk"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            ["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci", "virtio_blk"]
        );
        assert!(order[4].ends_with("virtio_pci.ko.xz"));
        let e = load_order(DEP, &["e1000"]).unwrap_err().to_string();
        assert!(e.contains("module e1000 is not in modules.dep"), "{e}");
    }

    #[test]
    fn the_archive_is_newc_with_aligned_members_and_a_trailer() {
        let i = Initramfs {
            entries: vec![
                Entry { name: "dev".into(), mode: S_IFDIR | 0o755, rdev: (0, 0), data: vec![] },
                Entry { name: "dev/console".into(), mode: S_IFCHR | 0o600, rdev: (5, 1), data: vec![] },
                Entry { name: "init".into(), mode: S_IFREG | 0o755, rdev: (0, 0), data: b"#!/bin/sh\n".to_vec() },
            ],
            modules: vec![],
        };
        let a = i.to_cpio();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert_eq!(text.matches("070701").count(), 4, "three members and the trailer");
        assert!(text.contains("TRAILER!!!"));
        // The console's header: mode 020600, rdev 5:1, a name of 12 bytes with its NUL.
        let at = text.find("dev/console").unwrap() - 110;
        let field = |n: usize| &text[at + 6 + 8 * n..at + 14 + 8 * n];
        assert_eq!((field(1), field(9), field(10), field(11)), ("00002180", "00000005", "00000001", "0000000c"));
        // cpio(1) reads it back (install-deps installs it).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &a).unwrap();
        let o = Command::new("sh").arg("-c").arg(format!("cpio -it < {}", path.display())).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "dev\ndev/console\ninit\n");
    }

    #[test]
    fn init_loads_modules_waits_for_disks_runs_the_script_and_powers_off() {
        let s = init_script(&["virtio".into(), "virtio_blk".into()], &["/dev/vda"], "echo hi");
        let insmod = s.find("insmod /lib/modules/virtio.ko").unwrap();
        assert!(insmod < s.find("insmod /lib/modules/virtio_blk.ko").unwrap());
        assert!(s.find("[ ! -b /dev/vda ]").unwrap() < s.find("echo hi").unwrap());
        assert!(s.starts_with("#!/bin/busybox sh\n") && s.ends_with("echo hi\nsync\npoweroff -f\n"), "{s}");
    }

    #[test]
    fn a_static_program_has_no_interpreter() {
        let ls = std::fs::read("/bin/ls").expect("/bin/ls");
        assert!(!is_static_elf(&ls), "/bin/ls is linked dynamically");
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        let b = static_busybox().expect("busybox-static is installed (scripts/install-deps.sh)");
        assert!(is_static_elf(&std::fs::read(b).unwrap()));
    }
}
