#!/bin/bash
# run.sh DIR [OUT] -- run the whole pjdfstest suite on the filesystem holding DIR.
#
# Each tests/**/*.t file runs with cwd = its own fresh subdirectory of DIR
# (DIR/pjdfstest-run.PID/NNN), so parallel jobs never share a directory
# (several tests compare the mtime/ctime of ".").  Each file runs under
# `timeout` (PJD_TIMEOUT seconds, default 300).  PJD_JOBS parallel files
# (default 2).  All TAP output (with "# file:" headers and a "# FAIL" list at
# the end) goes to OUT, default ./pjdfstest-<pid>.tap in the caller's cwd.
# Needs: bash, /bin/sh, coreutils (timeout), awk; dd + openssl (namegen).
#
# PJD_TESTS="chmod rename ..." restricts to those tests/ subdirs (default all).
#
# Counting: T = sum over files of max(plan "1..N", ok + not-ok lines seen);
# P = "ok" lines + "not ok # TODO" lines (TAP/prove semantics: TODO = known
# Linux deviation, expected to fail; counted and shown in OUT); F = T - P, so tests
# never reached because a file crashed/timed out count as failures.
# Prints exactly one line on stdout:  passed P of T tests (F failed) in S s
# Exit status: 0 if F == 0, else 1; 2 on usage error.
set -u
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: $0 DIR [OUT]" >&2; exit 2; }
dir=$(cd "$1" && pwd)
out=${2:-$PWD/pjdfstest-$$.tap}
jobs=${PJD_JOBS:-2}
tmo=${PJD_TIMEOUT:-300}
[ -x "$here/pjdfstest" ] || { echo "$here/pjdfstest not built" >&2; exit 2; }

work="$dir/pjdfstest-run.$$"
res=$(mktemp -d /tmp/pjdfstest-res.XXXXXX)
trap 'rm -rf "$res"' EXIT
mkdir -p "$work" || exit 2

start=$(date +%s.%N)
tdirs=""
for s in ${PJD_TESTS:-.}; do tdirs="$tdirs $here/tests/$s"; done
find $tdirs -name '*.t' | LC_ALL=C sort | awk '{printf "%04d %s\n", NR, $0}' > "$res/list"

# one_file IDX PATH : run one test file in its own dir, leave TAP in $res/IDX.tap
one_file() {
	idx=$1; t=$2
	d="$work/$idx"; mkdir -p "$d"
	s=$(date +%s.%N)
	( cd "$d" && timeout -k 10 "$tmo" /bin/sh "$t" ) > "$res/$idx.tap" 2>"$res/$idx.err" < /dev/null
	rc=$?
	e=$(date +%s.%N)
	echo "$rc $(awk -v a="$s" -v b="$e" 'BEGIN{printf "%.1f", b-a}')" > "$res/$idx.rc"
	rm -rf "$d" 2>/dev/null
}
export -f one_file
export work res tmo

xargs -P "$jobs" -L 1 bash -c 'one_file "$0" "$1"' < "$res/list"

rmdir "$work" 2>/dev/null || echo "# note: leftovers in $work" >&2
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.0f", b-a}')

: > "$out"
P=0; T=0; TD=0
while read -r idx t; do
	rel=${t#"$here/tests/"}
	read -r rc el < "$res/$idx.rc"
	read -r plan ok nok todo <<< "$(awk '
		/^1\.\.[0-9]+/ { sub(/^1\.\./, ""); plan = $1 + 0 }
		/^ok( |$)/ { ok++ }
		/^not ok( |$)/ { if ($0 ~ /# *TODO/) todo++; else nok++ }
		END { printf "%d %d %d %d\n", plan, ok, nok, todo }' "$res/$idx.tap")"
	ok=$((ok + todo))	# TAP: "not ok # TODO" is an expected failure, not a failure
	tot=$(( plan > ok + nok ? plan : ok + nok ))
	P=$((P + ok)); T=$((T + tot)); TD=$((TD + todo))
	note=""
	[ "$rc" = 124 ] || [ "$rc" = 137 ] && note=" TIMEOUT"
	{
		echo "# file: $rel rc=$rc time=${el}s planned=$plan ok=$ok(incl. $todo todo) not_ok=$nok missing=$((tot - ok - nok))$note"
		cat "$res/$idx.tap"
		sed 's/^/# stderr: /' "$res/$idx.err"
	} >> "$out"
	if [ $((tot - ok)) -gt 0 ]; then
		fails=$(grep '^not ok' "$res/$idx.tap" | grep -v '# *TODO' | awk '{print $3}' | paste -sd, -)
		echo "$rel failed=$((tot - ok)) not_ok=[$fails] missing=$((tot - ok - nok))$note" >> "$res/summary"
	fi
done < "$res/list"
F=$((T - P))
{
	echo "# ---- summary ----"
	[ -f "$res/summary" ] && sed 's/^/# FAIL /' "$res/summary"
	echo "# expected (TODO) failures counted as passed: $TD"
	echo "# passed $P of $T tests ($F failed) in $secs s"
} >> "$out"
echo "passed $P of $T tests ($F failed) in $secs s"
[ "$F" -eq 0 ]
