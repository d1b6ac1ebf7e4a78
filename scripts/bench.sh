#!/usr/bin/env bash
# Builds metac in release mode and runs a benchmark in network namespaces: ./scripts/bench.sh [spine|overlay|net|file|block|flood|fs|run|remote] [ARGS], as root
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root: it builds network namespaces" >&2; exit 1; }
if [ "${1:-}" = fs ]; then
  # The peer tool of `fs`: sshfs against an sshd; and git for its `git status` figure.
  need=()
  for t in sshfs:sshfs sshd:openssh-server git:git; do
    command -v "${t%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
if [ "${1:-}" = block ]; then
  # The peers and clients of `block`: nbdkit and qemu-nbd (install-deps.sh has them, with nbdcopy), fio (its nbd
  # engine, for random-read IOPS) and perf (for --profile).
  need=()
  for t in fio:fio perf:linux-perf; do
    command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
if [ "${1:-}" = run ]; then
  # The peer tool of `run`: runc, against the same busybox rootfs.
  command -v runc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends runc >/dev/null; }
fi
if [ "${1:-}" = remote ]; then
  # `remote`: runc for the local baseline of `true`, and cc and make for the C project it builds here and --on b.
  need=()
  for t in runc:runc cc:gcc make:make; do
    command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
cargo build --release --quiet --bin metac --bin metac-bench --bin metac-flood
export METAC_BIN=$PWD/target/release/metac
exec ./target/release/metac-bench "${@:-spine}"
