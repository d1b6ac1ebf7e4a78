//! The TUN device and the UDP socket, set up for batches: the TUN with `IFF_VNET_HDR` and TSO/USO offloads, the
//! socket non-blocking, dual-stack, with large buffers and (through quinn-udp) UDP GSO and GRO.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::PREFIX_LEN;

/// Socket buffer sizes asked for (root may exceed the sysctl limits with the FORCE variants).
const SOCKET_BUFFER: usize = 8 << 20;

/// Why the TUN device cannot be made.
pub(crate) fn tun_error(name: &str, e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("no permission to create TUN device {name}: the node needs CAP_NET_ADMIN (run it as root)")
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => "no /dev/net/tun on this system (the tun module is missing)".into(),
        Some(libc::EBUSY) => format!("TUN device {name} is in use (another metac node on this host? use --tun NAME)"),
        _ => format!("cannot create TUN device {name}: {e}"),
    }
}

/// Opens the TUN device `name` with `addr`/48 and `mtu`, with offloads where the kernel has them.
pub(crate) fn open_tun(name: &str, addr: Ipv6Addr, mtu: u16) -> Result<SyncDevice, String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("no /dev/net/tun on this system (the tun module is missing)".into());
    }
    DeviceBuilder::new()
        .name(name)
        .ipv6(addr, PREFIX_LEN)
        .mtu(mtu)
        .offload(true)
        .build_sync()
        .map_err(|e| tun_error(name, e))
}

/// Binds the tunnels' UDP socket on `[::]:port` (IPv4 too), non-blocking.
pub(crate) fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    for (force, plain) in [(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF), (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)] {
        if setsockopt_int(s.as_raw_fd(), force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(s.as_raw_fd(), plain, SOCKET_BUFFER);
        }
    }
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: usize) -> io::Result<()> {
    let v = value as libc::c_int;
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a c_int on the stack whose size is
    // passed alongside it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until `fd` is readable (or writable with `write`), for at most `timeout`. Returns whether it is.
pub(crate) fn wait_fd(fd: RawFd, write: bool, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: if write { libc::POLLOUT } else { libc::POLLIN }, revents: 0 };
    // SAFETY: one valid pollfd on the stack, count 1; `fd` stays open for the call (owned by the engine).
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as libc::c_int) };
    r > 0 && p.revents != 0
}
