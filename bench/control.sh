#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Control-plane benchmark: time and peak memory to attach N workload
# interfaces (veth pairs in a namespace) by N `ztredir attach` calls and by
# one `ztredir apply`, and how long `status` takes with N interfaces and
# `conns` with a full 65,536-entry connection table.
#
#   bench/control.sh [--count N] [--mode auto|tcx|tc] [--out DIR] [--quick]
#
# Run as root. Everything lives in namespaces ztrc<pid>-* and a private
# bpffs mount (made by `testbed up`, as the tests' node), removed on exit. Results: a markdown table on stdout and in
# DIR (default bench/results) as control-<date>-<host>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "control.sh: run as root" >&2; exit 2; }

N=1000
OUT=bench/results
CONNS=65536
RUNS=5
MODE=auto
while [ $# -gt 0 ]; do
    case $1 in
        --count) N=$2; shift 2 ;;
        --mode) MODE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --quick) N=50; CONNS=0; RUNS=2; shift ;;
        *) echo "control.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

command -v /usr/bin/time >/dev/null || { echo "control.sh: needs GNU time (apt-get install time)" >&2; exit 2; }
if [ -z "${ZTREDIR:-}" ] || [ -z "${TESTBED:-}" ]; then
    cargo build --release --quiet --bin ztredir --bin testbed
    ZTREDIR=${ZTREDIR:-$PWD/target/release/ztredir}
    TESTBED=${TESTBED:-$PWD/target/release/testbed}
fi
# The connection-table filler lives in the dataplane bench binary.
if [ "$CONNS" -gt 0 ]; then
    cargo bench --quiet --bench dataplane --no-run 2>/dev/null
fi

P=ztrc$$
WORK=$(mktemp -d /tmp/ztredir-control.XXXXXX)
cleanup() {
    set +e
    "$TESTBED" down --prefix "$P"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_node() { nsenter --net="/run/netns/$P-node" "$@"; }
zt() { in_node "$ZTREDIR" --pin-dir "$PINS" --attach-mode "$MODE" "$@"; }
# Runs a ztredir command under GNU time; appends "seconds maxrss_kb" to $WORK/times.
timed() { in_node /usr/bin/time -a -o "$WORK/times" -f "%e %M" "$ZTREDIR" --pin-dir "$PINS" --attach-mode "$MODE" "$@" >/dev/null; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
peak() { awk 'BEGIN{m=0} $2>m{m=$2} END{printf "%.1f", m/1024}' "$WORK/times"; }
median_of() { # runs a command RUNS times, prints the median wall time in ms
    local t=()
    for _ in $(seq "$RUNS"); do
        local a b
        a=$(now); "$@" >/dev/null; b=$(now)
        t+=("$(python3 -c "import sys; print((float(sys.argv[2]) - float(sys.argv[1])) * 1000)" "$a" "$b")")
    done
    printf '%s\n' "${t[@]}" | sort -n | awk '{a[NR]=$1} END{printf "%.0f", a[int((NR+1)/2)]}'
}

echo "== $N veth pairs w<i>/p<i> in netns $P-node (testbed up --prefix $P --pods zt --veths $N)"
# The tests' node with only the ztunnel pod; its bpffs ($bpffs) holds the pin directory.
up=$("$TESTBED" up --prefix "$P" --pods zt --veths "$N") # fails the script if up fails
eval "$up"
PINS=$bpffs/ztredir
ip_of() { echo "10.200.$(( $1 / 250 )).$(( $1 % 250 + 1 ))"; }

zt ztunnel set --iface vzt --netns "$P-zt" --host-ip 10.99.0.1 --conntrack-size "$(( CONNS > 0 ? CONNS : 1024 ))" >/dev/null

echo "== $N x ztredir attach"
: > "$WORK/times"
a=$(now)
for i in $(seq 0 $((N - 1))); do
    timed attach "w$i" --ip "$(ip_of "$i")"
done
b=$(now)
attach_s=$(secs "$a" "$b")
attach_rss=$(peak)
attached=$(zt -o json status | python3 -c "import json,sys; print(sum(1 for i in json.load(sys.stdin)['interfaces'] if i['role']=='workload'))")
[ "$attached" = "$N" ] || { echo "control.sh: $attached of $N attached" >&2; exit 1; }

status_ms=$(median_of zt status)
status_json_ms=$(median_of zt -o json status)

echo "== detach --all"
a=$(now); zt detach --all >/dev/null; b=$(now)
detach_s=$(secs "$a" "$b")

echo "== one ztredir apply with $N workloads"
{
    echo "version: 1"
    echo "ztunnel: {iface: vzt, netns: /run/netns/$P-zt, host-ips: [10.99.0.1], conntrack-size: $(( CONNS > 0 ? CONNS : 1024 ))}"
    echo "workloads:"
    for i in $(seq 0 $((N - 1))); do
        echo "  - {iface: w$i, ips: [$(ip_of "$i")]}"
    done
} > "$WORK/node.yaml"
: > "$WORK/times"
a=$(now); timed apply -f "$WORK/node.yaml"; b=$(now)
apply_s=$(secs "$a" "$b")
apply_rss=$(peak)
attached=$(zt -o json status | python3 -c "import json,sys; print(sum(1 for i in json.load(sys.stdin)['interfaces'] if i['role']=='workload'))")
[ "$attached" = "$N" ] || { echo "control.sh: apply attached $attached of $N" >&2; exit 1; }
: > "$WORK/times"
a=$(now); timed apply -f "$WORK/node.yaml"; b=$(now)
reapply_s=$(secs "$a" "$b")
export_ms=$(median_of zt export)

if [ "$CONNS" -gt 0 ]; then
    echo "== $CONNS connections in the table"
    in_node cargo bench --quiet --bench dataplane -- fill-conns "$PINS" "$CONNS"
fi
have=$(zt -o json conns | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
[ "$have" -ge $((CONNS * 9 / 10)) ] || { echo "control.sh: table holds $have of $CONNS" >&2; exit 1; }
conns_ms=$(median_of zt conns)
conns_json_ms=$(median_of zt -o json conns)

kernel=$(uname -r)
cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)
host=$(hostname)
report="# ztredir control-plane benchmark

$(date -u +%Y-%m-%dT%H:%MZ), host $host, kernel $kernel, CPU $cpu x $(nproc), attach mode $MODE, $N interfaces, $CONNS table entries, medians of $RUNS runs where repeated. Rerun: \`bench/control.sh\`.

| what | time | peak RSS |
|---|---:|---:|
| $N x \`ztredir attach\` (one process each) | ${attach_s} s ($(python3 -c "print(f'{$attach_s / $N * 1000:.1f}')") ms each) | ${attach_rss} MiB (largest call) |
| \`ztredir apply\`, $N workloads + ztunnel, from nothing | ${apply_s} s | ${apply_rss} MiB |
| the same \`apply\` again (no changes) | ${reapply_s} s | |
| \`ztredir detach --all\` ($N interfaces) | ${detach_s} s | |
| \`ztredir status\` with $N interfaces | ${status_ms} ms | |
| \`ztredir -o json status\` | ${status_json_ms} ms | |
| \`ztredir export\` | ${export_ms} ms | |
| \`ztredir conns\`, $have entries | ${conns_ms} ms | |
| \`ztredir -o json conns\` | ${conns_json_ms} ms | |
"
echo "$report"
mkdir -p "$OUT"
f="$OUT/control-$MODE-$(date -u +%Y%m%d-%H%M)-$host.md"
echo "$report" > "$f"
echo "wrote $f"
