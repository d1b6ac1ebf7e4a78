//! The operating-system calls that build a container, behind a seam (youki's `Syscall`): [`Linux`] makes them,
//! [`Recorder`] writes them down so that the order of a container's setup (binds before pivot_root, capabilities
//! dropped before the user changes, seccomp last) is unit-tested without root.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

use crate::security::{Caps, Filter};

/// The calls a container's first process makes on itself before it runs the command.
pub trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// Makes a mount and every mount below it read-only (mount_setattr(2) with AT_RECURSIVE).
    fn read_only_tree(&self, target: &Path) -> io::Result<()>;
    /// umount2(2).
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// pivot_root(2) into the current directory, stacking the old root on top of it.
    fn pivot_root_here(&self) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// unshare(2), for the cgroup namespace, made once the process is in its cgroup.
    fn unshare(&self, flags: nix::sched::CloneFlags) -> io::Result<()>;
    /// Creates a directory and its parents (mode 0755).
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty file to bind a file onto.
    fn touch(&self, path: &Path) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Whether `path` exists, and whether it is a directory.
    fn kind_of(&self, path: &Path) -> Option<bool>;
    /// Drops every capability not in `keep` from the bounding set.
    fn drop_bounding(&self, keep: Caps) -> io::Result<()>;
    /// setgroups(2), setresgid(2), setresuid(2), in that order.
    fn set_ids(&self, uid: u32, gid: u32, groups: bool) -> io::Result<()>;
    /// Sets the process's capabilities to `keep`.
    fn set_caps(&self, keep: Caps) -> io::Result<()>;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn no_new_privs(&self) -> io::Result<()>;
    /// Installs the seccomp filter.
    fn seccomp(&self, filter: &Filter) -> io::Result<()>;
    /// execvpe(3); returns only on failure.
    fn exec(&self, args: &[CString], env: &[CString]) -> io::Error;
}

fn io(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

/// The real calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io)
    }

    fn read_only_tree(&self, target: &Path) -> io::Result<()> {
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const MOUNT_ATTR_RDONLY: u64 = 1;
        const AT_RECURSIVE: libc::c_uint = 0x8000;
        let c = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
        // SAFETY: the path is a NUL-terminated string and `attr` a valid mount_attr of the size passed; the
        // kernel reads both during the call only.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        // Kernels before 5.12: the top mount only.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(io)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io)
    }

    fn pivot_root_here(&self) -> io::Result<()> {
        nix::unistd::pivot_root(".", ".").map_err(io)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(io)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io)
    }

    fn unshare(&self, flags: nix::sched::CloneFlags) -> io::Result<()> {
        nix::sched::unshare(flags).map_err(io)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn touch(&self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new().create(true).append(true).open(path).map(drop)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn kind_of(&self, path: &Path) -> Option<bool> {
        std::fs::metadata(path).ok().map(|m| m.is_dir())
    }

    fn drop_bounding(&self, keep: Caps) -> io::Result<()> {
        crate::security::drop_bounding(keep)
    }

    fn set_ids(&self, uid: u32, gid: u32, groups: bool) -> io::Result<()> {
        use nix::unistd::{Gid, Uid};
        if groups {
            nix::unistd::setgroups(&[Gid::from_raw(gid)]).map_err(io)?;
        }
        let g = Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g).map_err(io)?;
        let u = Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(io)
    }

    fn set_caps(&self, keep: Caps) -> io::Result<()> {
        crate::security::set_caps(keep)
    }

    fn no_new_privs(&self) -> io::Result<()> {
        crate::security::no_new_privs()
    }

    fn seccomp(&self, filter: &Filter) -> io::Result<()> {
        filter.install()
    }

    fn exec(&self, args: &[CString], env: &[CString]) -> io::Error {
        // The command is looked up in the container's PATH (glibc's execvpe would use this process's own).
        let path = env.iter().find_map(|e| e.to_bytes().strip_prefix(b"PATH=")).unwrap_or(b"/usr/bin:/bin");
        let program = match lookup(args[0].as_bytes(), path) {
            Ok(p) => p,
            Err(e) => return e,
        };
        match nix::unistd::execve(&program, args, env) {
            Err(e) => io(e),
            Ok(never) => match never {},
        }
    }
}

/// Where `cmd` is: itself when it has a `/`, else the first executable file of that name in `path` (a
/// `:`-separated list, as in the environment's PATH). ENOENT when there is none, EACCES when one exists but may not
/// be executed.
pub fn lookup(cmd: &[u8], path: &[u8]) -> Result<CString, io::Error> {
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    if cmd.contains(&b'/') {
        return c(cmd);
    }
    let mut denied = false;
    for dir in path.split(|&b| b == b':').filter(|d| !d.is_empty()) {
        let full = Path::new(std::ffi::OsStr::from_bytes(dir)).join(std::ffi::OsStr::from_bytes(cmd));
        match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => {
                let f = c(full.as_os_str().as_bytes())?;
                if nix::unistd::access(f.as_c_str(), nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Ok(f);
                }
                denied = true;
            }
            _ => {}
        }
    }
    Err(io::Error::from_raw_os_error(if denied { libc::EACCES } else { libc::ENOENT }))
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A mount: source, target, type, flags, data.
    Mount(Option<PathBuf>, PathBuf, Option<String>, MsFlags, Option<String>),
    /// A read-only tree.
    ReadOnly(PathBuf),
    /// An unmount.
    Umount(PathBuf),
    /// pivot_root.
    PivotRoot,
    /// chdir.
    Chdir(PathBuf),
    /// sethostname.
    Hostname(String),
    /// unshare.
    Unshare(nix::sched::CloneFlags),
    /// mkdir -p.
    Mkdir(PathBuf),
    /// An empty file made.
    Touch(PathBuf),
    /// A symlink: target, link.
    Symlink(PathBuf, PathBuf),
    /// Bounding set dropped to this.
    DropBounding(Caps),
    /// Ids set: uid, gid, with setgroups.
    SetIds(u32, u32, bool),
    /// Capabilities set.
    SetCaps(Caps),
    /// no_new_privs.
    NoNewPrivs,
    /// seccomp.
    Seccomp,
    /// exec.
    Exec(Vec<String>),
}

/// A [`Syscall`] that records every call and succeeds, except where told to fail; paths listed in `existing` exist
/// (directories when they end in `/`).
#[derive(Debug, Default)]
pub struct Recorder {
    /// The calls made, in order.
    pub calls: Mutex<Vec<Call>>,
    /// Paths that exist on the fake system; a trailing `/` marks a directory.
    pub existing: Vec<String>,
    /// A target whose mount fails with EPERM.
    pub fail_mount: Option<PathBuf>,
}

impl Recorder {
    fn push(&self, c: Call) {
        self.calls.lock().expect("recorder lock").push(c);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("recorder lock").clone()
    }
}

impl Syscall for Recorder {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        if self.fail_mount.as_deref() == Some(target) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.push(Call::Mount(
            source.map(Path::to_path_buf),
            target.to_path_buf(),
            fstype.map(str::to_string),
            flags,
            data.map(str::to_string),
        ));
        Ok(())
    }

    fn read_only_tree(&self, target: &Path) -> io::Result<()> {
        self.push(Call::ReadOnly(target.to_path_buf()));
        Ok(())
    }

    fn umount(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
        self.push(Call::Umount(target.to_path_buf()));
        Ok(())
    }

    fn pivot_root_here(&self) -> io::Result<()> {
        self.push(Call::PivotRoot);
        Ok(())
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Chdir(path.to_path_buf()));
        Ok(())
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.push(Call::Hostname(name.to_string()));
        Ok(())
    }

    fn unshare(&self, flags: nix::sched::CloneFlags) -> io::Result<()> {
        self.push(Call::Unshare(flags));
        Ok(())
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Mkdir(path.to_path_buf()));
        Ok(())
    }

    fn touch(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Touch(path.to_path_buf()));
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.push(Call::Symlink(target.to_path_buf(), link.to_path_buf()));
        Ok(())
    }

    fn kind_of(&self, path: &Path) -> Option<bool> {
        let p = path.to_string_lossy();
        self.existing.iter().find_map(|e| match e.strip_suffix('/') {
            Some(d) if d == p => Some(true),
            None if e == &p => Some(false),
            _ => None,
        })
    }

    fn drop_bounding(&self, keep: Caps) -> io::Result<()> {
        self.push(Call::DropBounding(keep));
        Ok(())
    }

    fn set_ids(&self, uid: u32, gid: u32, groups: bool) -> io::Result<()> {
        self.push(Call::SetIds(uid, gid, groups));
        Ok(())
    }

    fn set_caps(&self, keep: Caps) -> io::Result<()> {
        self.push(Call::SetCaps(keep));
        Ok(())
    }

    fn no_new_privs(&self) -> io::Result<()> {
        self.push(Call::NoNewPrivs);
        Ok(())
    }

    fn seccomp(&self, _filter: &Filter) -> io::Result<()> {
        self.push(Call::Seccomp);
        Ok(())
    }

    fn exec(&self, args: &[CString], _env: &[CString]) -> io::Error {
        self.push(Call::Exec(args.iter().map(|a| a.to_string_lossy().into_owned()).collect()));
        io::Error::from_raw_os_error(libc::ENOENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_looked_up_in_the_given_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::write(d.join("plain"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("plain"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = format!("/nonexistent:{}", d.display());
        let found = lookup(b"tool", path.as_bytes()).unwrap();
        assert_eq!(found.to_bytes(), d.join("tool").as_os_str().as_encoded_bytes());
        assert_eq!(lookup(b"sh", path.as_bytes()).unwrap_err().raw_os_error(), Some(libc::ENOENT));
        if nix::unistd::geteuid().is_root() {
            // Root may execute any file with an x bit: a mode without one is still refused.
            assert_eq!(lookup(b"plain", path.as_bytes()).unwrap_err().raw_os_error(), Some(libc::EACCES));
        }
        assert_eq!(lookup(b"/bin/anything", b"").unwrap().to_bytes(), b"/bin/anything");
    }
}
