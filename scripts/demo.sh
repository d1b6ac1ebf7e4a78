#!/usr/bin/env bash
# The main job, shown end to end: builds metac, starts N nodes (default 3) in network namespaces on one bridge
# (IPv6 ULA only, no configuration: they find each other by mDNS), exports a file on host 1, reads it on the last
# host byte for byte, shares a directory that host 2 mounts and writes to, runs containers and a VM on host 2,
# runs a command on host 2 with host 1's files (metac run --on), delegates a narrower ref, revokes the original and
# shows it refused. Cleans up on exit.
# Also shows the overlay: host 1 pings the last host's fd6f address through a WireGuard tunnel.
#   ./scripts/demo.sh [N]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3}
[ "$N" -ge 2 ] && [ "$N" -le 20 ] || { echo "demo.sh: N must be 2..20" >&2; exit 1; }
./scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root: it builds network namespaces" >&2; exit 1; }

echo "== building metac (release)"
cargo build --release --bin metac --quiet
BIN=$PWD/target/release/metac
DIR=$(mktemp -d /tmp/metac-demo.XXXXXX)
P=mdemo$$

cleanup() {
  set +e
  for i in $(seq 1 "$N"); do
    ip netns pids "$P-$i" 2>/dev/null | xargs -r kill -TERM 2>/dev/null
  done
  sleep 0.5
  for i in $(seq 1 "$N"); do
    ip netns pids "$P-$i" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    ip netns del "$P-$i" 2>/dev/null
  done
  ip netns del "$P-sw" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

m() { local i=$1; shift; ip netns exec "$P-$i" "$BIN" --socket "$DIR/$i/api.sock" "$@"; }

echo "== $N hosts in network namespaces on one bridge (fd00:77::/64, no IPv4)"
ip netns add "$P-sw"
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 type bridge mcast_snooping 0
ip -n "$P-sw" link set br0 up
for i in $(seq 1 "$N"); do
  ip netns add "$P-$i"
  ip -n "$P-sw" link add "v$i" type veth peer name eth0 netns "$P-$i"
  ip -n "$P-sw" link set "v$i" master br0 up
  ip -n "$P-$i" link set lo up
  ip -n "$P-$i" addr add "fd00:77::$i/64" dev eth0 nodad
  ip -n "$P-$i" link set eth0 up
  mkdir -p -m 700 "$DIR/$i"
done

echo "== starting a metac node in each host (no --peer: discovery is mDNS)"
start=$(date +%s.%N)
for i in $(seq 1 "$N"); do
  ip netns exec "$P-$i" "$BIN" --socket "$DIR/$i/api.sock" node --state "$DIR/$i" --port 4747 --log-level warn \
    >"$DIR/$i/node.log" 2>&1 &
done
for _ in $(seq 1 200); do
  ok=1
  for i in $(seq 1 "$N"); do
    c=$(m "$i" --json status 2>/dev/null | sed -n 's/.*"peers": \([0-9]*\).*/\1/p' || true)
    [ "${c:-0}" -ge $((N - 1)) ] || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.05
done
[ $ok = 1 ] || { echo "nodes did not find each other; logs in $DIR" >&2; tail -n 20 "$DIR"/*/node.log; exit 1; }
printf "every node sees the other %d within %.2f s of start\n" $((N - 1)) "$(echo "$(date +%s.%N) - $start" | bc)"
echo; echo "\$ metac status   (host 1)"; m 1 status
echo; echo "\$ metac peers    (host 1)"; m 1 peers

echo; echo "== the overlay: every node's fd6f address is reachable from every other, over WireGuard tunnels"
A_N=$(m "$N" --json status | sed -n 's/.*"overlay": "\([0-9a-f:]*\)".*/\1/p')
echo "\$ ping $A_N   (host $N's overlay address, from host 1)"
ip netns exec "$P-1" ping -6 -n -c 3 -i 0.2 "$A_N" | grep -E "bytes from|packet loss"
echo; echo "\$ metac overlay status   (host 1)"; m 1 overlay status

echo; echo "== host 1 exports a 64 MiB file"
head -c $((64 << 20)) /dev/urandom >"$DIR/1/disk.img"
echo "\$ metac file export $DIR/1/disk.img"
REF=$(m 1 file export "$DIR/1/disk.img" --name disk.img)
echo "$REF"
sleep 0.3
echo; echo "\$ metac resources   (host $N: learned by gossip)"; m "$N" resources
echo; echo "\$ metac file cat REF > copy   (host $N)"
t0=$(date +%s.%N)
m "$N" file cat "$REF" >"$DIR/$N/copy.img"
t1=$(date +%s.%N)
a=$(sha256sum <"$DIR/1/disk.img" | cut -c1-16); b=$(sha256sum <"$DIR/$N/copy.img" | cut -c1-16)
printf "sha256 host 1 %s, host %d %s: %s (%.2f s)\n" "$a" "$N" "$b" "$([ "$a" = "$b" ] && echo identical || echo DIFFERENT)" "$(echo "$t1 - $t0" | bc)"
[ "$a" = "$b" ]

echo; echo "== host $N binds the file as a local NBD endpoint, which real NBD clients use"
SOCK="$DIR/$N/disk.sock"
echo "\$ metac file bind REF -U $SOCK   (host $N)"
m "$N" file bind "$REF" -U "$SOCK"
echo "\$ nbdinfo --size 'nbd+unix:///?socket=$SOCK'"
nbdinfo --size "nbd+unix:///?socket=$SOCK"
echo; echo "\$ metac binds   (host $N)"; m "$N" binds

echo; echo "== host $N delegates a read-only ref that expires in 1 hour, only for host 2"
H2=$(m 2 --json status | sed -n 's/.*"key": "\([0-9a-f]*\)".*/\1/p')
CHILD=$(m "$N" ref delegate "$REF" --read-only --expires 1h --to "$H2")
m "$N" ref show "$CHILD"
echo "host 2 reads it:  $(m 2 file cat "$CHILD" | wc -c) bytes"
echo "host $N may not:  $(m "$N" file cat "$CHILD" 2>&1 >/dev/null || true)"

echo; echo "== host 1 shares a directory; host 2 mounts it (FUSE) and uses it as a local disk"
mkdir -p "$DIR/1/shared/docs" "$DIR/2/shared-from-host1"
echo "hello from host 1" >"$DIR/1/shared/docs/readme.txt"
echo "\$ metac fs export local:$DIR/1/shared   (host 1)"
FSREF=$(m 1 fs export "local:$DIR/1/shared" --name shared)
echo "$FSREF"
MNT="$DIR/2/shared-from-host1"
echo "\$ metac fs bind $MNT REF   (host 2)"
m 2 fs bind "$MNT" "$FSREF"
for _ in $(seq 1 100); do m 2 --json fs ls | grep -q '"state": "up"' && break; sleep 0.1; done
# The mount is in host 2's node's mount namespace (ip netns exec gives each command one of its own).
in2() { nsenter -t "$(ip netns pids "$P-2" | head -n 1)" -m "$@"; }
echo "\$ cat $MNT/docs/readme.txt   (host 2)"; in2 cat "$MNT/docs/readme.txt"
echo "\$ echo from host 2 > $MNT/docs/reply.txt; mkdir $MNT/made   (host 2)"
in2 sh -c "echo 'from host 2' > '$MNT/docs/reply.txt' && mkdir '$MNT/made'"
echo "on host 1: $(cat "$DIR/1/shared/docs/reply.txt"); $(ls -d "$DIR/1/shared/made" >/dev/null && echo 'made/ is there')"
echo "\$ metac fs ls   (host 2)"; m 2 fs ls
echo "\$ metac fs unbind $MNT   (host 2)"; m 2 fs unbind "$MNT"

echo; echo "== host 2 runs containers; one mounts host 1's directory, read-only, for its life"
echo "\$ metac run --rm --hostname box --mount /mnt=REF:ro sh -c '...'   (host 2)"
m 2 run --rm --hostname box --mount "/mnt=$FSREF:ro" \
  sh -c 'echo "pid $$ on $(hostname)"; cat /mnt/docs/readme.txt; touch /mnt/new 2>&1 || true'
echo "\$ metac run -d --name ticker sh -c 'while :; do date +%T; sleep 1; done'   (host 2)"
m 2 run -d --name ticker sh -c 'while :; do date +%T; sleep 1; done'
sleep 2
echo "\$ metac ps   (host 2)"; m 2 ps
echo "\$ metac exec ticker hostname   (host 2)"; m 2 exec ticker hostname
echo "\$ metac logs --tail 2 ticker   (host 2)"; m 2 logs --tail 2 ticker
echo "\$ metac rm -f ticker   (host 2)"; m 2 rm -f ticker

echo; echo "== host 2 runs a command in a small VM (the host's kernel, its files shared over virtio-9p)"
echo "\$ metac run --vm -w / sh -c 'echo hello from a VM; uname -r'   (host 2)"
m 2 run --vm -w / sh -c 'echo hello from a VM; uname -r' || echo "(no VM here: metac run --vm needs qemu and a kernel in /boot)"

echo; echo "== host 1 runs a command on host 2, with host 1's files (metac run --on)"
KEY1=$(m 1 status | awk '/^node/ {print $2}')
echo "\$ metac compute export --to ${KEY1:0:16}...   (host 2: lets host 1 run here)"
CREF=$(m 2 compute export --to "$KEY1")
echo "$CREF"
echo "\$ metac ref save host2 REF   (host 1)"; m 1 ref save host2 "$CREF"
mkdir -p "$DIR/proj"
printf 'one\ntwo\nthree\n' > "$DIR/proj/words.txt"
echo "\$ cd $DIR/proj && metac run --on host2 sh -c 'wc -l words.txt; sort -r words.txt > sorted.txt; exit 7'   (host 1)"
(cd "$DIR/proj" && m 1 run --on host2 sh -c 'wc -l words.txt; sort -r words.txt > sorted.txt; exit 7') || echo "(exit code $? came back)"
echo "on host 1, sorted.txt: $(tr '\n' ' ' < "$DIR/proj/sorted.txt")"
echo "\$ metac ps -a   (host 2: the run was its own container, run for host 1)"; m 2 ps -a | grep -E "NODE|sh -c wc" || true
echo "\$ nbdcopy 'nbd+unix:///?socket=$SOCK' null:   (host $N: the bound file, read whole by a real NBD client)"
nbdcopy "nbd+unix:///?socket=$SOCK" null: && echo "(64 MiB through host $N's bind)"

echo; echo "== host 1 exports an Ethernet segment; the other hosts join it with TAPs of their own"
echo "\$ metac net export newlocal:seg0 --name lab-segment   (host 1)"
NETREF=$(m 1 net export newlocal:seg0 --name lab-segment)
echo "$NETREF"
for i in $(seq 2 "$N"); do
  echo "\$ metac net bind newlocal:seg0 REF   (host $i)"; m "$i" net bind newlocal:seg0 "$NETREF"
done
for _ in $(seq 1 100); do [ "$(m "$N" --json net ls | grep -c '"state": "up"')" = 1 ] && break; sleep 0.1; done
for i in $(seq 1 "$N"); do ip -n "$P-$i" addr add "10.77.0.$i/24" dev seg0; done
echo "\$ ping -c 2 10.77.0.$N   (host 1, over the segment: ARP first, then ICMP; it is Ethernet)"
ip netns exec "$P-1" ping -n -c 2 -W 2 "10.77.0.$N" || echo "(no answer)"
echo "\$ metac net ls   (host 1)"; m 1 net ls

echo; echo "== host 1 revokes the original ref; every ref delegated from it dies with it"
m 1 ref revoke "$REF"
echo "host $N: $(m "$N" file cat "$REF" 2>&1 >/dev/null || true)"
echo "host 2:  $(m 2 file cat "$CHILD" 2>&1 >/dev/null || true)"
sleep 1
echo "\$ metac binds   (host $N: the live bind was cut, and its exporter refuses it from now on)"; m "$N" binds

cat <<MSG

== done. To run metac for real on this machine:
   $BIN node   (as root)           # state in /var/lib/metac, API on /run/metac/metac.sock, port 4747
   metac status; metac peers; metac file export FILE; metac file cat REF > out; metac run -t -i bash
   (nodes on the same LAN find each other by mDNS; elsewhere use --peer HOST[:PORT]; --mesh-key FILE for a private mesh)
MSG
