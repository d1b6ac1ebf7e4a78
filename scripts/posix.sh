#!/usr/bin/env bash
# Runs the POSIX filesystem conformance suite pjdfstest (vendored in tests/posix/) on the filesystem holding DIR, as
# root. Prints "passed P of T tests (F failed) in S s" and writes the TAP output to OUT (default ./pjdfstest-PID.tap);
# exits 0 only if nothing failed.
#   ./scripts/posix.sh DIR [OUT]      PJD_JOBS=N files at once (default 2), PJD_TESTS="chmod rename" a subset,
#                                      PJD_TIMEOUT=S per file (default 300)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 DIR [OUT]  (DIR: a directory on the filesystem to test)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: pjdfstest changes owners and acts as other users: run it as root" >&2; exit 2; }
for t in gcc openssl; do
  command -v "$t" >/dev/null || { echo "$0: needs $t (run ./scripts/install-deps.sh)" >&2; exit 2; }
done
suite=$(mktemp -d /tmp/metac-posix.XXXXXX)
trap 'rm -rf "$suite"' EXIT
cp -r "$root/tests/posix/pjdfstest/tests" "$root/tests/posix/pjdfstest/run.sh" "$suite/"
gcc -O2 -w -I "$root/tests/posix/pjdfstest" -o "$suite/pjdfstest" "$root/tests/posix/pjdfstest/pjdfstest.c"
"$suite/run.sh" "$@"
