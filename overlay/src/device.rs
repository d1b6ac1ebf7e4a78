//! The TUN device and the UDP socket, set up for batches: the TUN with `IFF_VNET_HDR` and TSO/USO offloads, the
//! socket non-blocking, dual-stack, with large buffers and (through quinn-udp) UDP GSO and GRO.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

/// Opens the TUN device `name` with `addr`/48 and `mtu`, with offloads where the kernel has them, and two queues.
/// The kernel sends a flow's packets to the queue that last wrote one of that flow (its "automq" steering), so
/// what the receiving thread writes through its own queue is answered on that queue.
pub(crate) fn open_tun(name: &str, addr: Ipv6Addr, mtu: u16) -> Result<(SyncDevice, SyncDevice), String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("no /dev/net/tun on this system (the tun module is missing)".into());
    }
    let first = DeviceBuilder::new()
        .name(name)
        .ipv6(addr, PREFIX_LEN)
        .mtu(mtu)
        .offload(true)
        .multi_queue(true)
        .build_sync()
        .map_err(|e| tun_error(name, e))?;
    let second = first.try_clone().map_err(|e| format!("cannot open a second queue of TUN device {name}: {e}"))?;
    Ok((first, second))
}

/// Binds the tunnels' UDP socket on `[::]:port` (IPv4 too), non-blocking.
pub(crate) fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    for (force, plain) in [(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF), (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)] {
        if setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, force, SOCKET_BUFFER as libc::c_int).is_err() {
            let _ = setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, plain, SOCKET_BUFFER as libc::c_int);
        }
    }
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Sets O_NONBLOCK on `fd`.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets the kernel fragment a datagram larger than the route to its destination, as WireGuard does: quinn-udp
/// forbids fragmentation (QUIC probes the path MTU instead), but a tunnel must still work behind a narrower link.
/// The engine sends such datagrams one by one, since a GSO train cannot be fragmented.
pub(crate) fn allow_fragments(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0)?;
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_WANT)?;
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_WANT)
}

/// Turns off what quinn-udp asks the kernel to attach to every received datagram and the engine never reads
/// (receive timestamps, destination address, traffic class): less work per datagram. Best effort.
pub(crate) fn drop_receive_extras(fd: RawFd) {
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0);
    let _ = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 0);
    let _ = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 0);
    let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 0);
    let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 0);
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a c_int on the stack whose size is
    // passed alongside it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
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

/// Waits until `fd` is writable, for at most `timeout`. Returns whether it is.
pub(crate) fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd on the stack, count 1; `fd` stays open for the call (owned by the engine).
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as libc::c_int) };
    r > 0 && p.revents != 0
}

/// An eventfd that tells the engine's threads to stop: they wait on it beside their own descriptor, so an idle
/// overlay sleeps in the kernel instead of waking up to look at a flag.
pub(crate) struct StopFd(OwnedFd);

impl StopFd {
    pub(crate) fn new() -> io::Result<StopFd> {
        // SAFETY: eventfd has no memory arguments; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(StopFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes every waiter, for good (the counter is never read back).
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 on the stack to the eventfd we own.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits until `fd` is readable (true), or until stopped or `timeout` passes (false). `None` waits for ever.
    pub(crate) fn wait_readable(&self, fd: Option<RawFd>, timeout: Option<Duration>) -> bool {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
        self.wait([fd.unwrap_or(-1), -1], ms) & 1 != 0
    }

    /// Waits until one of `fds` is readable, or until stopped, for at most `ms` milliseconds (-1: for ever, 0: a
    /// look). Returns a bit per descriptor that is readable (bit i for `fds[i]`); 0 when stopped or timed out. A
    /// negative descriptor is left out.
    pub(crate) fn wait(&self, fds: [RawFd; 2], ms: libc::c_int) -> u32 {
        let mut p = [
            libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: fds[1], events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: three valid pollfds on the stack (a negative fd is ignored by poll); every descriptor stays open
        // for the call (owned by the engine).
        let r = unsafe { libc::poll(p.as_mut_ptr(), 3, ms) };
        if r <= 0 || p[0].revents != 0 {
            return 0;
        }
        u32::from(p[1].revents != 0) | u32::from(p[2].revents != 0) << 1
    }
}
