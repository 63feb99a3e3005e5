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
cargo build --release --quiet --bin ztredir --example ztunnel_standin
BIN=$PWD/target/release/ztredir
PROXY=$PWD/target/release/examples/ztunnel_standin

P=ztrdemo$$
WORK=$(mktemp -d /tmp/ztredir-demo.XXXXXX)
PIDS=()
cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    for ns in node zt a b remote; do ip netns del "$P-$ns" 2>/dev/null; done
    umount -l "$WORK/bpf" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$P-$ns" "$@"; }
ztredir() { in_ns node "$BIN" "$@"; }

echo "== node topology in namespaces $P-*"
mkdir -p "$WORK/bpf"
mount -t bpf bpf "$WORK/bpf"
export ZTREDIR_PIN_DIR=$WORK/bpf/ztredir
for ns in node zt a b remote; do
    ip netns add "$P-$ns"
    ip -n "$P-$ns" link set lo up
    in_ns "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
in_ns node sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
# remote server, reached through the node's uplink; 10.99.0.1 is the node's host IP
ip -n "$P-node" link add up0 type veth peer name eth0 netns "$P-remote"
ip -n "$P-node" addr add 10.99.0.1/24 dev up0
ip -n "$P-node" addr add fd00:99::1/64 dev up0 nodad
ip -n "$P-node" link set up0 up
ip -n "$P-remote" addr add 10.99.0.2/24 dev eth0
ip -n "$P-remote" addr add fd00:99::2/64 dev eth0 nodad
ip -n "$P-remote" link set eth0 up
ip -n "$P-remote" route add default via 10.99.0.1
ip -n "$P-remote" -6 route add default via fd00:99::1
# pods, point-to-point CNI style: /32 and /128 addresses, routes via 169.254.1.1 / fe80::1
pod() { # name host-veth ipv4 [ipv6]
    local ns=$1 veth=$2 v4=$3 v6=${4:-}
    ip -n "$P-node" link add "$veth" type veth peer name eth0 netns "$P-$ns"
    ip -n "$P-node" addr add 169.254.1.1/32 dev "$veth"
    ip -n "$P-node" addr add fe80::1/64 dev "$veth" nodad
    ip -n "$P-node" link set "$veth" up
    ip -n "$P-node" route add "$v4/32" dev "$veth" src 10.99.0.1
    ip -n "$P-$ns" addr add "$v4/32" dev eth0
    ip -n "$P-$ns" link set eth0 up
    ip -n "$P-$ns" route add 169.254.1.1 dev eth0 scope link
    ip -n "$P-$ns" route add default via 169.254.1.1 dev eth0
    if [ -n "$v6" ]; then
        ip -n "$P-node" -6 route add "$v6/128" dev "$veth" src fd00:99::1
        ip -n "$P-$ns" addr add "$v6/128" dev eth0 nodad
        ip -n "$P-$ns" -6 route add default via fe80::1 dev eth0
    fi
}
pod zt vzt 10.244.0.2 fd00:244::2
pod a va 10.244.0.10
pod b vb 10.244.0.11 fd00:244::11

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
