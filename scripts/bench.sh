#!/usr/bin/env bash
# Builds metac in release mode and runs a benchmark in network namespaces: ./scripts/bench.sh [spine|overlay|file] [ARGS], as root
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root: it builds network namespaces" >&2; exit 1; }
cargo build --release --quiet --bin metac --bin metac-bench --bin metac-flood
export METAC_BIN=$PWD/target/release/metac
exec ./target/release/metac-bench "${@:-spine}"
