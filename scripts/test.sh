#!/usr/bin/env bash
# Installs what is missing, checks formatting and lints, and runs the whole test suite (unit, property,
# NBD interop with real clients, and multi-host tests in network namespaces). Needs root for the netns lab.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root: the integration tests build network namespaces" >&2
  exit 1
fi
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== build"
cargo build --workspace --bins --quiet
echo "== tests"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log
