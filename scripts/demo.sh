#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# ztredir demo: builds ztredir, sets up a Kubernetes-like node in network
# namespaces (a ztunnel pod running a stand-in proxy, two workload pods and
# a remote server), attaches ztredir, sends real TCP traffic, IPv4 and IPv6,
# through the proxy, and shows `status` and the proxy's log.
#
# Run as root:  scripts/demo.sh
# Everything it creates lives in its own namespaces and a private bpffs
# mount, and is removed on exit, success or not.
set -euo pipefail

cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 2; }

scripts/install-deps.sh
echo "== building"
cargo build --release --quiet --bin ztredir --bin ztunnel_standin --bin testbed
BIN=$PWD/target/release/ztredir
PROXY=$PWD/target/release/ztunnel_standin
TESTBED=$PWD/target/release/testbed

P=ztrdemo$$
WORK=$(mktemp -d /tmp/ztredir-demo.XXXXXX)
PIDS=()
cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    "$TESTBED" down --prefix "$P"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$P-$ns" "$@"; }
ztredir() { in_ns node "$BIN" "$@"; }

echo "== node topology in namespaces $P-* (the tests' testbed: testbed up --prefix $P)"
# Pods point-to-point CNI style: /32 and /128 addresses, routes via 169.254.1.1 / fe80::1;
# the remote server behind the node's uplink, where 10.99.0.1 is the node's host IP. `up`
# prints the plan and sets $bpffs, the private bpffs mount.
up=$("$TESTBED" up --prefix "$P" --pods zt,a,b)
echo "$up" | sed 's/^/  /'
eval "$up"
export ZTREDIR_PIN_DIR=$bpffs/ztredir

echo "== ztunnel stand-in in $P-zt, web servers in $P-remote and $P-b"
# nsenter directly, not through in_ns: "func &" forks a subshell, and $!
# would then be the subshell's PID rather than the program's.
nsenter --net="/run/netns/$P-zt" "$PROXY" --log "$WORK/proxy.log" --ready-file "$WORK/proxy.ready" 2>/dev/null &
PIDS+=($!)
nsenter --net="/run/netns/$P-remote" python3 -m http.server --bind :: 8080 --directory "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
nsenter --net="/run/netns/$P-b" python3 -m http.server --bind :: 8080 --directory "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
echo "hello from a server" > "$WORK/hello.txt"
for _ in $(seq 50); do [ -e "$WORK/proxy.ready" ] && break; sleep 0.1; done

echo "== ztredir ztunnel set / attach"
ztredir ztunnel set --iface vzt --netns "$P-zt" --host-ip 10.99.0.1 --host-ip fd00:99::1
ztredir attach va
ztredir attach vb

fetch() { # from-ns url
    printf '  %-6s -> %-34s ' "$1" "$2"
    in_ns "$1" curl -sS --max-time 5 -g "$2" || echo FAILED
}
sleep 0.5
echo "== traffic"
fetch a "http://10.99.0.2:8080/hello.txt"
fetch b "http://[fd00:99::2]:8080/hello.txt"
fetch a "http://10.244.0.11:8080/hello.txt"
fetch remote "http://10.244.0.11:8080/hello.txt"
fetch remote "http://[fd00:244::11]:8080/hello.txt"
sleep 0.3
echo "== what the proxy saw (one JSON line per connection)"
cat "$WORK/proxy.log"

echo "== ztredir status"
ztredir status
echo "== ztredir conns (the connection table, newest first)"
ztredir conns
echo "== ztredir stats --iface va"
ztredir stats --iface va
echo "== ztredir doctor (kernel and node checks)"
ztredir doctor
echo "== ztredir export (the node as a file for ztredir apply -f)"
ztredir export | tee "$WORK/node.yaml"
echo "== ztredir apply: exclude port 8080 for b, dry run first, then for real"
sed -i 's|^- iface: vb$|- iface: vb\n  exclude: {outbound-ports: [8080]}|' "$WORK/node.yaml"
ztredir apply --dry-run -f "$WORK/node.yaml"
ztredir apply -f "$WORK/node.yaml"
ztredir apply -f "$WORK/node.yaml"
before=$(wc -l < "$WORK/proxy.log")
fetch b "http://[fd00:99::2]:8080/hello.txt"
sleep 0.3
n=$(( $(wc -l < "$WORK/proxy.log") - before ))
echo "  (the proxy logged $n new connections: port 8080 is excluded for b)"
[ "$n" = 0 ] || { echo "demo: the excluded connection went through the proxy" >&2; exit 1; }
echo "== ztredir detach va: a's traffic goes direct again"
ztredir detach va
fetch a "http://10.99.0.2:8080/hello.txt"
echo "== ztredir attach vb --no-exclusions; ztredir ztunnel clear: b's captured traffic is dropped (fail closed)"
ztredir attach vb --no-exclusions
ztredir ztunnel clear
printf '  %-6s -> %-34s ' b "http://[fd00:99::2]:8080/hello.txt"
if in_ns b curl -sS --max-time 3 -g "http://[fd00:99::2]:8080/hello.txt" >/dev/null 2>&1; then
    echo "REACHED (it should not have)"; exit 1
else
    echo "dropped, as expected"
fi
echo "== done; cleaning up"
