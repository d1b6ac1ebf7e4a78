#!/usr/bin/env bash
# Installs what metac needs to build, run and test on Debian: idempotent, quiet when everything is there.
set -euo pipefail

need_pkgs=()
# Installed means "install ok installed": a removed package whose configuration files remain is not.
want() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$1"); }
# Kernel tools for the netns lab and the node (ip, tc, nft, ping), setpriv (util-linux) to run the CLI as another
# local user in the tests of who may use a node, real NBD clients and servers for the file kind's tests, iperf3 and
# a stock WireGuard (wireguard-go + wg-quick) for the overlay's tests and benchmark, pkg-config/gcc for -sys crates,
# a TrueType font for metac-sim's plots, fuse3 (fusermount3, and /dev/fuse's udev rule) for the fs kind's mounts.
# openssl names the files of the POSIX conformance suite (tests/posix); attr (setfattr, getfattr) sets xattrs on mounts.
# busybox-static is the container tests' and `bench run`'s rootfs (a static binary: the rootfs has no libc); bsdutils's
# `script` gives them a terminal. dnsmasq-base (a DHCP server) and tcpdump are the net kind's tests' real clients on a segment.
# qemu-system-x86 runs `metac vm`'s VMs; linux-image-amd64 (a kernel in /boot, its modules in /lib/modules) boots the VM
# tests' guests, whose busybox initramfs the tests build (cpio lists it in the harness's own tests). git, rsync, sqlite3
# and fio are the programs the fs tests run on a bind.
wanted=(bc iproute2 iputils-ping nftables procps psmisc util-linux libnbd-bin nbdkit qemu-utils iperf3
  wireguard-go wireguard-tools jq gcc openssl attr busybox-static bsdutils pkg-config ca-certificates curl fonts-dejavu-core fuse3
  dnsmasq-base tcpdump qemu-system-x86 linux-image-amd64 cpio git rsync sqlite3 fio)
# Two passes: installing one package may remove another (qemu-system-x86 from the release replaces a newer qemu-utils
# from backports, which some machines come with); the second pass puts back what the first took away.
for pass in 1 2; do
  need_pkgs=()
  for p in "${wanted[@]}"; do
    want "$p"
  done
  [ ${#need_pkgs[@]} -gt 0 ] || break
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to apt-get install: ${need_pkgs[*]} (run it as root)" >&2
    exit 1
  fi
  echo "install-deps: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # iperf3 must not install a system-wide server: the tests and benchmarks start their own.
  echo 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections 2>/dev/null || true
  [ "$pass" = 2 ] || apt-get update -qq
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${need_pkgs[@]}" >/dev/null
done
need_pkgs=()
for p in "${wanted[@]}"; do
  want "$p"
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "install-deps: still missing after installing: ${need_pkgs[*]}" >&2
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: no Rust toolchain; trying Debian's rustup" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rustup >/dev/null 2>&1 && rustup default stable >/dev/null || {
    echo "install-deps: cannot install Rust. Install Rust >= 1.88 with rustup (https://rustup.rs) and rerun." >&2
    exit 1
  }
fi
ver=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.88.0\n' "$ver" | sort -V | head -1)" != "1.88.0" ]; then
  echo "install-deps: Rust $ver is too old; metac needs >= 1.88 (rustup update stable)" >&2
  exit 1
fi
