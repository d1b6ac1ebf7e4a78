//! The OS glue: TAP devices with `IFF_VNET_HDR` and TCP/UDP offloads (so the kernel hands over and takes 64 KiB
//! segments whole), read and written without blocking through tokio; bridges joined by ioctl. Interfaces are looked
//! up by ioctl on a socket, never through /sys: a node started with `nsenter --net` sees the host's sysfs, not its
//! own namespace's.
//!
//! A TAP is not persistent: it goes away when its descriptor is closed, so a node killed with -9 leaves none behind.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use crate::frame::MAX_RECORD;

/// A TAP device, open for frames.
pub struct Tap {
    fd: AsyncFd<SyncDevice>,
    name: String,
}

/// Checks an interface name as the kernel would take it: 1 to 15 bytes, no `/`, whitespace, `:` or `%`, and not
/// `.` or `..`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a usable interface name: 1 to 15 letters, digits, '-', '_' or '.' (not . or ..)"))
    }
}

/// A MAC address that stays the same for the same `parts` (an export's id, a bind's ref and node): a TAP made
/// again after a restart keeps its address, so the neighbours' ARP and ND caches and DHCP leases stay right. Locally
/// administered, unicast.
pub fn stable_mac(parts: &[&str]) -> [u8; 6] {
    let b = fnv(parts).to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// FNV-1a of `parts`, each ended by a NUL (so `["ab", "c"]` and `["a", "bc"]` differ): names and addresses that
/// must be the same at every start, not secrets.
pub fn fnv(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes().chain([0]))
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// The index of interface `name` in this network namespace, if there is one.
pub fn index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string that lives for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

impl Tap {
    /// Creates TAP `name` with `mtu` and MAC address `mac`, up. Fails if an interface of that name exists (it would
    /// be someone else's).
    pub fn create(name: &str, mtu: u16, mac: [u8; 6]) -> Result<Tap, String> {
        check_name(name)?;
        if index(name).is_some() {
            return Err(format!("an interface named {name} exists already: choose another name"));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("no /dev/net/tun on this system (the tun module is missing)".into());
        }
        if cfg!(target_endian = "big") {
            return Err("metac-net carries virtio headers little-endian; big-endian machines are not supported".into());
        }
        let dev = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .offload(true)
            .mtu(mtu)
            .mac_addr(mac)
            .tx_queue_len(1000)
            .enable(true)
            .build_sync()
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    format!("no permission to create TAP device {name}: the node needs CAP_NET_ADMIN (run it as root)")
                }
                _ => format!("cannot create TAP device {name}: {e}"),
            })?;
        if !dev.tcp_gso() {
            return Err(format!("TAP device {name} has no TCP offloads (IFF_VNET_HDR): this kernel is too old"));
        }
        dev.set_nonblocking(true).map_err(|e| format!("cannot make TAP device {name} non-blocking: {e}"))?;
        // SAFETY: the device owns its descriptor and keeps it open, unreplaced, for as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register_with_interest(dev, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| format!("cannot watch TAP device {name}: {e}"))?;
        Ok(Tap { fd, name: name.to_string() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes this TAP a port of `bridge`.
    pub fn join_bridge(&self, bridge: &str) -> Result<(), String> {
        let ifindex = index(&self.name).ok_or_else(|| format!("TAP device {} went away", self.name))?;
        let mut req = ifreq(bridge)?;
        req.ifr_ifru.ifru_ifindex = ifindex as libc::c_int;
        ioctl(SIOCBRADDIF, &mut req).map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => format!("{bridge} is not a bridge"),
            Some(libc::ENODEV) => format!("there is no interface {bridge}"),
            _ => format!("cannot add {} to bridge {bridge}: {e}", self.name),
        })
    }

    /// Sets the interface's MTU.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), String> {
        self.fd.get_ref().set_mtu(mtu).map_err(|e| format!("cannot set the MTU of {} to {mtu}: {e}", self.name))
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.fd.get_ref().mac_address().ok()
    }

    /// Reads one record (virtio header and frame) onto the end of `buf`, waiting for one. Returns its length.
    pub async fn recv(&self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_into(fd.get_ref().as_raw_fd(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one record onto the end of `buf` if one is waiting.
    pub fn try_recv(&self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        match read_into(self.fd.get_ref().as_raw_fd(), buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one record now, without waiting: a TAP takes a frame at once unless its device is gone or the
    /// kernel refuses the header.
    pub fn try_send(&self, record: &[u8]) -> io::Result<()> {
        // SAFETY: writes from a live slice to a descriptor the AsyncFd owns.
        let n = unsafe { libc::write(self.fd.get_ref().as_raw_fd(), record.as_ptr().cast(), record.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Writes one record. The kernel checks the header once more; a record it refuses (EINVAL) is an error the
    /// caller counts, not the end of the device.
    pub async fn send(&self, record: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|_| self.try_send(record)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// read(2) of one record into `buf`'s spare room (made at least [`MAX_RECORD`] first).
fn read_into(fd: RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(MAX_RECORD);
    let spare = buf.spare_capacity_mut();
    // SAFETY: reads at most `spare.len()` bytes into memory `buf` owns and has reserved.
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised the first `n` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// The MTU of interface `name`.
pub fn mtu(name: &str) -> Result<u16, String> {
    let mut req = ifreq(name)?;
    ioctl(libc::SIOCGIFMTU, &mut req).map_err(|e| format!("cannot read the MTU of {name}: {e}"))?;
    // SAFETY: SIOCGIFMTU filled the union's ifru_mtu member.
    let m = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(m.clamp(0, i32::from(u16::MAX)) as u16)
}

const SIOCBRADDIF: libc::c_ulong = 0x89a2;

fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    check_name(name)?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: socket(2) has no memory arguments; the result is checked before it is owned.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a new descriptor nothing else owns.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: the interface ioctls used here read and write one `struct ifreq`, which `req` is, for the call.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_macs_are_local_unicast_and_differ_by_their_parts() {
        let a = stable_mac(&["export", "abc"]);
        assert_eq!(a, stable_mac(&["export", "abc"]));
        assert_ne!(a, stable_mac(&["export", "abd"]));
        assert_ne!(stable_mac(&["ab", "c"]), stable_mac(&["a", "bc"]));
        assert_eq!(a[0] & 3, 2, "locally administered, unicast: {a:?}");
    }

    #[test]
    fn interface_names_are_checked_before_they_reach_the_kernel() {
        for ok in ["tap0", "lab-seg.1", "a", "fifteen_chars_x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "sixteen_chars_xx", "a/b", "a b", "eth0:1", "x%d", "tap\n"] {
            assert!(check_name(bad).unwrap_err().contains("not a usable interface name"), "{bad:?}");
        }
    }
}
