#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# ztredir demo: builds ztredir, sets up a Kubernetes-like node in network
# namespaces (a ztunnel pod running a stand-in proxy, two workload pods and
# a remote server), attaches ztredir, sends real TCP traffic, IPv4 and IPv6,
# through the proxy, and shows `status` and the proxy's log. Then the same
# node in in-pod mode: the stand-in as ztunnel's shared mode, handed each
# workload's netns by `ztredir zds`, listening inside each one.
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
NODE_PROXY=$!
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

echo "== in-pod mode: ztunnel in shared mode listens inside each workload's netns"
kill "$NODE_PROXY"; wait "$NODE_PROXY" 2>/dev/null || true
ztredir detach --all
ztredir ztunnel set --in-pod --host-ip 10.99.0.1 --host-ip fd00:99::1 --capture-dns
ztredir attach --netns "$P-a" --workload default/app-a --service-account app-a
ztredir attach --netns "$P-b" --workload default/app-b --service-account app-b
# The proxy's leg into an app binds the client's address with a port of the pod's range:
# kept apart from the clients' ranges, it never takes the tuple it serves.
for pod in a b; do in_ns "$pod" sysctl -qw net.ipv4.ip_local_port_range="20000 29999"; done
echo "== ztredir zds (the ZDS server) and the stand-in in its in-pod mode, both in $P-node"
nsenter --net="/run/netns/$P-node" "$BIN" zds --socket "$WORK/zds.sock" 2>"$WORK/zds.log" &
PIDS+=($!)
nsenter --net="/run/netns/$P-node" "$PROXY" --in-pod --zds "$WORK/zds.sock" --dns \
    --log "$WORK/inpod.log" --ready-file "$WORK/inpod.ready" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -e "$WORK/inpod.ready" ] && break; sleep 0.1; done
[ -e "$WORK/inpod.ready" ] || { echo "demo: the in-pod stand-in got no snapshot" >&2; cat "$WORK/zds.log"; exit 1; }
echo "== traffic (in-pod)"
fetch a "http://10.99.0.2:8080/hello.txt"
fetch b "http://[fd00:99::2]:8080/hello.txt"
fetch a "http://10.244.0.11:8080/hello.txt"
fetch remote "http://10.244.0.11:8080/hello.txt"
fetch remote "http://[fd00:244::11]:8080/hello.txt"
printf '  %-6s -> %-34s ' b "DNS query to 10.99.0.53:53 (udp)"
in_ns b python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"\x12\x34" + bytes(10), ("10.99.0.53", 53))
d, a = s.recvfrom(512)
print("answer %r from %s:%d" % (d[2:].decode(errors="replace"), a[0], a[1]))' || echo FAILED
sleep 0.3
echo "== ZDS messages (ztredir zds log)"
sed 's/^/  /' "$WORK/zds.log"
echo "== what the in-pod proxy saw (one JSON line per connection, with the workload)"
grep -v '"event"' "$WORK/inpod.log" || true
echo "== ztredir status"
ztredir status
echo "== ztredir conns"
ztredir conns
echo "== ztredir detach --netns $P-b: ztunnel drops b, b's traffic goes direct"
ztredir detach --netns "$P-b"
fetch b "http://[fd00:99::2]:8080/hello.txt"
echo "== done; cleaning up"
