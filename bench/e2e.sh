#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# ztredir end-to-end benchmark. Builds a node in network namespaces (a client
# pod, a ztunnel pod running haproxy as the transparent proxy, a remote server
# running nginx and iperf3 behind the node's uplink) and measures, in one run
# and in interleaved rounds, the same traffic through six paths:
#
#   a direct    client -> server, no proxy
#   b explicit  client connects to haproxy's own IP:port, haproxy -> server
#   c tproxy    node policy-routes the pod's packets to the ztunnel pod, iptables
#               TPROXY there hands them to haproxy's transparent listener
#   d tcx       ztredir, TCX links
#   e tc        ztredir, classic tc (clsact + cls_bpf)
#   f tcx-noct  ztredir, TCX links, `ztunnel set --no-conntrack`
#
# Metrics: keep-alive HTTP request rate and p50/p99 latency (wrk), connection-
# per-request rate (wrk, Connection: close), bulk TCP throughput (iperf3).
# Every mode is checked to have gone where it should (server-seen source
# address, haproxy frontend session counters, TPROXY rule counters, ztredir
# stats); a mode that fails a check makes the run exit 1.
#
# Run as root:  bench/e2e.sh [--rounds N] [--duration SEC] [--quick] [--out DIR]
# See bench/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/e2e.sh [options]      (as root)
  --rounds N         interleaved rounds (default 5)
  --duration SEC     seconds per measurement (default 5)
  --quick            smoke test: 1 round, 1-second measurements, all modes,
                     results in a temporary directory unless --out is given
  --out DIR          where the report and raw numbers go (default bench/results)
  --modes LIST       comma-separated subset of direct,explicit,tproxy,tcx,tc,tcx-noct
  --connections N    wrk connections (default 8)
  --file-size BYTES  size of the file nginx serves (default 1024)
  --quiet-wait SEC   before each mode, wait up to SEC seconds until other
                     processes use less than BUSY_PCT% of the CPUs (default 60;
                     0 = off; --quick sets 0)
  --retries N        measure again, up to N times, when other processes used
                     BUSY_PCT% or more of the CPUs meanwhile (default 2;
                     --quick sets 0)
environment:
  ZTREDIR=PATH       use this binary instead of `cargo build --release --bin ztredir`
  ZTREDIR_REV        what ZTREDIR was built from, for the report (e.g. a commit)
  CPU_CLIENT, CPU_PROXY, CPU_SERVER
                     CPUs for wrk/iperf3 client, haproxy, nginx/iperf3 server
                     (default 0, 1, 1)
  IPTABLES           iptables binary for the tproxy mode (default iptables;
                     iptables-legacy also works, see bench/README.md)
  BUSY_PCT           share of the machine others may use during a
                     measurement before it is repeated (default 3)
EOF
}

ROUNDS=5
DURATION=5
QUICK=0
OUT=
CONNS=8
FILE_SIZE=1024
QUIET_WAIT=60
RETRIES=2
BUSY_PCT=${BUSY_PCT:-3}
ALL_MODES=(direct explicit tproxy tcx tc tcx-noct)
MODES=("${ALL_MODES[@]}")
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --modes) IFS=, read -r -a MODES <<<"$2"; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --file-size) FILE_SIZE=$2; shift 2 ;;
    --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
    --retries) RETRIES=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "e2e.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    ROUNDS=1
    DURATION=1
    QUIET_WAIT=0
    RETRIES=0
fi
for v in "$ROUNDS" "$DURATION" "$CONNS" "$FILE_SIZE"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "e2e.sh: not a positive integer: $v" >&2; exit 2; }
done
for v in "$QUIET_WAIT" "$RETRIES"; do
    [[ $v =~ ^[0-9]+$ ]] || { echo "e2e.sh: not a number: $v" >&2; exit 2; }
done
for m in "${MODES[@]}"; do
    [[ " ${ALL_MODES[*]} " == *" $m "* ]] || { echo "e2e.sh: unknown mode $m" >&2; exit 2; }
done
IPTABLES=${IPTABLES:-iptables}
CPU_CLIENT=${CPU_CLIENT:-0}
CPU_PROXY=${CPU_PROXY:-1}
CPU_SERVER=${CPU_SERVER:-1}

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "e2e.sh: run as root" >&2; exit 2; }
missing=()
for t in haproxy nginx wrk iperf3 "$IPTABLES" nft nsenter taskset ip curl python3 nstat timeout; do
    command -v "$t" >/dev/null || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "e2e.sh: missing ${missing[*]}; run bench/install-deps.sh" >&2
    exit 2
fi

if [ -n "${ZTREDIR:-}" ]; then
    BIN=$ZTREDIR
else
    echo "== building ztredir (cargo build --release --bin ztredir)"
    (cd "$REPO" && cargo build --release --quiet --bin ztredir)
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/ztredir
fi
if [ -z "${TESTBED:-}" ]; then
    (cd "$REPO" && cargo build --release --quiet --bin testbed)
    TESTBED=${CARGO_TARGET_DIR:-$REPO/target}/release/testbed
fi
for b in "$BIN" "$TESTBED"; do
    [ -x "$b" ] || { echo "e2e.sh: $b is not an executable" >&2; exit 2; }
done

# ---------------------------------------------------------------------------
# State and cleanup. Everything lives in namespaces $P-* and a private bpffs
# (both made by `testbed up`), $WORK, and processes whose PIDs are in PIDS
# (long-running) or FG (the current measurement).

P=ztrb$$
WORK=$(mktemp -d /tmp/ztredir-bench.XXXXXX)
PIN=
PIDS=()
FG=
ZT_ACTIVE=0
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -n "$FG" ] && kill "$FG" 2>/dev/null && wait "$FG" 2>/dev/null
    if [ "$ZT_ACTIVE" = 1 ]; then
        timeout 10 nsenter --net="/run/netns/$P-node" "$BIN" --pin-dir "$PIN" detach --all >/dev/null 2>&1
        timeout 10 nsenter --net="/run/netns/$P-node" "$BIN" --pin-dir "$PIN" ztunnel clear >/dev/null 2>&1
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    "$TESTBED" down --prefix "$P"
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "e2e.sh: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "$*" >&2; }
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$P-$ns" "$@"; }
zt() { in_ns node "$BIN" --pin-dir "$PIN" "$@"; }
# Long-running process in a namespace, pinned to a CPU. taskset and nsenter
# both exec, so $! is the program's own PID.
start_bg() { # ns cpu logfile cmd...
    local ns=$1 cpu=$2 logf=$3
    shift 3
    taskset -c "$cpu" nsenter --net="/run/netns/$P-$ns" "$@" >"$logf" 2>&1 &
    PIDS+=($!)
}
# A measurement: run in the background and wait, so that an interrupt can
# kill it (FG) and a hung one is killed by timeout.
run_fg() { # ns cpu limit-seconds outfile cmd...
    local ns=$1 cpu=$2 limit=$3 outf=$4 rc=0
    shift 4
    timeout -k 2 "$limit" taskset -c "$cpu" nsenter --net="/run/netns/$P-$ns" "$@" >"$outf" 2>&1 &
    FG=$!
    wait "$FG" || rc=$?
    FG=
    return "$rc"
}

# ---------------------------------------------------------------------------
# Topology: the tests' node (testbed up) with the ztunnel pod and one
# workload pod. Addresses:
#   node   up0 10.99.0.1/24 (the node's host IP); va, vzt 169.254.1.1/32
#   remote eth0 10.99.0.2/24, default via 10.99.0.1: nginx :80, iperf3 :5201
#   zt     eth0 10.244.0.2/32 (ztunnel pod): haproxy
#   a      eth0 10.244.0.10/32 (workload pod, the client): wrk, iperf3 -c
# (IPv6 addresses too, unused here.)
SRV=10.99.0.2
ZTIP=10.244.0.2
CLI=10.244.0.10
HOSTIP=10.99.0.1

log "== topology in namespaces $P-{node,zt,a,remote} (testbed up --prefix $P --pods zt,a), work dir $WORK"
mkdir -p "$WORK/www" "$WORK/raw"
up=$("$TESTBED" up --prefix "$P" --pods zt,a) # fails the script if up fails
eval "$up" # sets $netns, $bpffs
for full in $netns; do
    # New namespaces take IPv4 sysctls from the host's: set what matters
    # (testbed up has set forwarding: on in the node only, and DAD off).
    nsenter --net="/run/netns/$full" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done
# The connecting sides (wrk and iperf3 in a, haproxy's upstream connections
# in zt): a wide ephemeral port range and TIME_WAIT reuse for outgoing
# connections. Without them the client's own TIME_WAIT sockets (wrk closes
# first) use up the even half of the default port range within two seconds of
# connection-per-request load, and connect()'s port search, not the path
# under test, sets the rate (it fell to 300-500 conn/s in every mode,
# direct included, depending on what the previous mode left behind).
for ns in a zt; do
    in_ns "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
done

# ---------------------------------------------------------------------------
# Servers and the proxy, started once and kept for every mode.
head -c "$FILE_SIZE" /dev/zero | tr '\0' x >"$WORK/www/f"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    server {
        listen 80 backlog=4096;
        root $WORK/www;
        # Who the server saw: the client (direct) or the proxy (all others).
        add_header X-Peer \$remote_addr always;
    }
}
EOF
mkdir -p "$WORK/nginx-tmp"
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
    log stderr format short local0 warning

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 300s
    timeout server 300s

# The interception target, like ztunnel's outbound listener: wildcard,
# IP_TRANSPARENT (bind ... transparent), and "server 0.0.0.0" with no port
# connects to the connection's original destination address and port.
# The outbound connection gets ztunnel's own source IP (no "source ...
# usesrc", no spoofing), and "option transparent" is not needed.
frontend tproxy
    bind :15001 transparent
    default_backend orig_dst
backend orig_dst
    server s 0.0.0.0

# Explicit proxy: the client connects to haproxy's own address.
frontend explicit_http
    bind :8080
    default_backend web
backend web
    server s $SRV:80
frontend explicit_iperf
    bind :5202
    default_backend iperf
backend iperf
    server s $SRV:5201

frontend stats
    mode http
    bind 127.0.0.1:9000
    stats enable
    stats uri /
EOF

log "== nginx, iperf3 -s in $P-remote on CPU $CPU_SERVER; haproxy in $P-zt on CPU $CPU_PROXY"
start_bg remote "$CPU_SERVER" "$WORK/nginx.log" nginx -c "$WORK/nginx.conf"
start_bg remote "$CPU_SERVER" "$WORK/iperf3-server.log" iperf3 -s -p 5201
start_bg zt "$CPU_PROXY" "$WORK/haproxy.log" haproxy -db -f "$WORK/haproxy.cfg"
ready=0
for _ in $(seq 100); do
    if in_ns remote curl -sf -o /dev/null http://127.0.0.1/f &&
        in_ns zt curl -sf -o /dev/null 'http://127.0.0.1:9000/;csv' &&
        in_ns remote ss -Hltn 'sport = :5201' | grep -q LISTEN; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    log "e2e.sh: servers did not come up"
    tail -n 20 "$WORK"/nginx.log "$WORK"/nginx.err "$WORK"/haproxy.log "$WORK"/iperf3-server.log >&2 2>/dev/null
    exit 1
fi

# ---------------------------------------------------------------------------
# Observation helpers.

# Cumulative sessions (stot) of each haproxy frontend: "tproxy N explicit_http N ..."
haproxy_sessions() {
    in_ns zt curl -sf 'http://127.0.0.1:9000/;csv' |
        awk -F, '$2 == "FRONTEND" && $1 != "stats" { printf "%s %s ", $1, $8 }'
}
fe_count() { # "sessions string" frontend
    awk -v fe="$2" '{ for (i = 1; i < NF; i += 2) if ($i == fe) print $(i + 1) }' <<<"$1"
}
# Client netns TCP counters: SYN retransmissions, RSTs sent, all retransmits.
client_tcp() {
    in_ns a nstat -asz TcpExtTCPSynRetrans TcpOutRsts TcpRetransSegs |
        awk '{ c[$1] = $2 } END { printf "%d %d %d\n", c["TcpExtTCPSynRetrans"], c["TcpOutRsts"], c["TcpRetransSegs"] }'
}
# Sum of a ztredir stats reason's packets (over interfaces, hooks, CPUs).
ztr_reason_packets() { # json-file reason
    python3 - "$1" "$2" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
rows = data if isinstance(data, list) else data.get("stats", data.get("rows", []))
total = 0
def walk(o):
    global total
    if isinstance(o, dict):
        if o.get("reason") == sys.argv[2]:
            total += int(o.get("packets", 0))
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(data)
print(total)
EOF
}

# CPU time used by others while we measure (other builds and tests on a
# shared machine, and the hypervisor's steal): user+system+steal time in
# /proc/stat minus ours (long-running PIDs, this shell and its reaped
# children, and ksoftirqd, which mostly runs our packets' softirqs).
# irq/softirq time cannot be told apart and is left out, so others' network
# traffic is undercounted.
KSOFTIRQD=($(pgrep '^ksoftirqd/' || true))
NCPU=$(nproc)
cpu_mark() { # sets MARK="now_ns busy_ticks our_ticks"; not in $(...), for `times`
    local busy ours=0 pid
    busy=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $9 }' /proc/stat) # user nice system steal
    for pid in "${PIDS[@]}" "${KSOFTIRQD[@]}"; do
        ours=$((ours + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    times >"$WORK/times" # a builtin in this shell: this shell and its reaped children
    ours=$((ours + $(awk '{ for (i = 1; i <= NF; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } } END { printf "%d", t * 100 }' "$WORK/times")))
    MARK="$(date +%s%N) $busy $ours"
}
foreign_pct() { # "mark0" "mark1" -> percent of the whole machine used by others
    awk -v a="$1" -v b="$2" -v n="$NCPU" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        el = (y[1] - x[1]) / 1e9 * 100 * n
        f = (y[2] - x[2]) - (y[3] - x[3])
        if (f < 0) f = 0
        printf "%.1f", (el > 0 ? 100 * f / el : 0) }'
}
# Before a mode: wait (up to QUIET_WAIT seconds) until others use less than
# BUSY_PCT% of the machine over one second.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) m0 m1 f said=0
    while :; do
        cpu_mark
        m0=$MARK
        sleep 1
        cpu_mark
        m1=$MARK
        f=$(foreign_pct "$m0" "$m1")
        awk -v f="$f" -v t="$BUSY_PCT" 'BEGIN { exit !(f < t) }' && return 0
        [ "$SECONDS" -ge "$deadline" ] && { log "   (machine still busy: others use $f%; measuring anyway)"; return 0; }
        [ "$said" = 1 ] || log "   (others use $f% of the CPUs; waiting up to ${QUIET_WAIT}s)"
        said=1
    done
}

# One measurement from the client netns, on the client CPU. When other
# processes used BUSY_PCT% or more of the machine meanwhile, wait for quiet and
# measure again (up to RETRIES times). Sets FOREIGN (their share during the
# kept attempt) and TRIES (attempts thrown away).
measure() { # round mode name outfile cmd...
    local r=$1 m=$2 name=$3 outf=$4 mk0
    shift 4
    TRIES=0
    while :; do
        cpu_mark
        mk0=$MARK
        if ! run_fg a "$CPU_CLIENT" $((DURATION + 20)) "$outf" "$@"; then
            fail "$r" "$m" "$name: $1 exited non-zero ($(tail -n 2 "$outf" | tr '\n' ' ' | head -c 200))"
            FOREIGN=0
            return
        fi
        cpu_mark
        FOREIGN=$(foreign_pct "$mk0" "$MARK")
        awk -v f="$FOREIGN" -v t="$BUSY_PCT" 'BEGIN { exit !(f >= t) }' || return 0
        [ "$TRIES" -lt "$RETRIES" ] || return 0
        TRIES=$((TRIES + 1))
        log "   ($m $name: others used $FOREIGN% of the CPUs; measuring again)"
        [ "$QUIET_WAIT" -gt 0 ] && wait_quiet
    done
}

# TIME_WAIT sockets in a namespace.
tw_count() { in_ns "$1" ss -Htan state time-wait | wc -l; }

# wrk output -> "rps requests errors non2xx p50_us p99_us"
parse_wrk() {
    awk '
    function us(v) {
        if (v ~ /us$/) return v + 0
        if (v ~ /ms$/) return v * 1000
        if (v ~ /s$/) return v * 1000000
        return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { req = $1 }
    /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx/ { n2 = $5 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    END { printf "%s %s %d %d %s %s\n", rps + 0, req + 0, err, n2, p50 + 0, p99 + 0 }' "$1"
}

CSV=$WORK/raw.csv
echo "round,mode,metric,value" >"$CSV"
record() { echo "$1,$2,$3,$4" >>"$CSV"; }
FAILS=()
fail() { # round mode message
    log "   FAIL [$2, round $1]: $3"
    FAILS+=("round $1, $2: $3")
}

# ---------------------------------------------------------------------------
# Modes: set up, tear down, where the client connects.

mode_setup() { # mode round; every step checked (set -e does not apply here)
    case $1 in
    direct | explicit) ;;
    tproxy)
        # Node: everything the pod sends goes to the ztunnel pod.
        in_ns node ip rule add iif va lookup 101 pref 101 || return 1
        in_ns node ip route add default via "$ZTIP" dev vzt onlink table 101 || return 1
        # ztunnel pod: TPROXY what is not addressed to ztunnel itself to the
        # transparent listener, mark it, and deliver marked packets locally.
        in_ns zt "$IPTABLES" -w -t mangle -A PREROUTING -i eth0 -p tcp ! -d "$ZTIP/32" \
            -j TPROXY --on-port 15001 --tproxy-mark 0x400/0xfff || return 1
        in_ns zt ip rule add fwmark 0x400/0xfff lookup 100 pref 100 || return 1
        in_ns zt ip route add local 0.0.0.0/0 dev lo table 100 || return 1
        ;;
    tcx | tc | tcx-noct)
        local am=tcx ct=()
        [ "$1" = tc ] && am=tc
        [ "$1" = tcx-noct ] && ct=(--no-conntrack)
        PIN=$bpffs/$1-$2
        ZT_ACTIVE=1
        zt --attach-mode "$am" ztunnel set --iface vzt --netns "$P-zt" --host-ip "$HOSTIP" "${ct[@]}" \
            >"$WORK/raw/r$2-$1/setup.txt" 2>&1 || return 1
        zt --attach-mode "$am" attach va >>"$WORK/raw/r$2-$1/setup.txt" 2>&1 || return 1
        ;;
    esac
}
mode_teardown() { # mode
    local rc=0
    case $1 in
    direct | explicit) ;;
    tproxy)
        in_ns node ip rule del iif va lookup 101 pref 101 || rc=1
        in_ns node ip route flush table 101 || rc=1
        in_ns zt ip rule del fwmark 0x400/0xfff lookup 100 pref 100 || rc=1
        in_ns zt ip route flush table 100 || rc=1
        # Remove the tables, not just the rules: an empty base chain would
        # still cost every later mode a netfilter hook per packet. (Not
        # possible with iptables-legacy: its mangle table stays registered in
        # the namespace once used.)
        in_ns zt "$IPTABLES" -w -t mangle -F || rc=1
        in_ns zt nft flush ruleset || rc=1
        ;;
    tcx | tc | tcx-noct)
        zt detach --all >/dev/null || rc=1
        zt ztunnel clear >/dev/null || rc=1
        ZT_ACTIVE=0
        # The loaded programs and maps stay pinned (by design); a fresh pin
        # directory per mode and round keeps the modes independent.
        rm -rf "$PIN"
        # ztredir leaves the clsact qdisc in place by design (other tools
        # may use it); remove it so that every mode runs on the same devices.
        if [ "$1" = tc ]; then
            in_ns node tc qdisc del dev va clsact 2>/dev/null || true
            in_ns node tc qdisc del dev vzt clsact 2>/dev/null || true
            in_ns zt tc qdisc del dev eth0 clsact 2>/dev/null || true
        fi
        ;;
    esac
    # Nothing may be left for the next mode: compare with the state before
    # any mode ran.
    local now
    now=$(net_state)
    if [ "$now" != "$BASELINE" ]; then
        log "   state left behind by $1:"
        diff <(echo "$BASELINE") <(echo "$now") | sed 's/^/      /' >&2 || true
        rc=1
    fi
    return "$rc"
}
# Routing, policy rules, tc, netfilter and the sysctls the modes change, in
# the node and ztunnel namespaces.
net_state() {
    local ns
    for ns in node zt; do
        echo "## $ns"
        in_ns "$ns" ip rule
        in_ns "$ns" ip route show table all | grep -v '^multicast\|^ff00::/8' || true
        in_ns "$ns" tc qdisc show
        in_ns "$ns" nft list ruleset
        in_ns "$ns" sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.ipv4.conf.all.rp_filter
    done
    in_ns node sysctl net.ipv4.conf.vzt.rp_filter net.ipv4.conf.va.rp_filter
    local d
    for d in va vzt; do in_ns node tc filter show dev "$d" ingress; in_ns node tc filter show dev "$d" egress; done
    in_ns zt tc filter show dev eth0 ingress
}

http_url() {
    if [ "$1" = explicit ]; then echo "http://$ZTIP:8080/f"; else echo "http://$SRV:80/f"; fi
}
iperf_target() {
    if [ "$1" = explicit ]; then echo "$ZTIP 5202"; else echo "$SRV 5201"; fi
}

# ---------------------------------------------------------------------------
# One mode, one round.

run_mode() { # round mode
    local r=$1 m=$2 url peer hs0 hs1 t0 t1 out ka crr
    local dir=$WORK/raw/r$r-$m
    mkdir -p "$dir"
    url=$(http_url "$m")
    if ! mode_setup "$m" "$r"; then
        fail "$r" "$m" "setup failed"
        mode_teardown "$m" 2>/dev/null || true
        return
    fi
    [ "$m" = tproxy ] || [ "$m" = direct ] || [ "$m" = explicit ] || zt stats reset >/dev/null

    hs0=$(haproxy_sessions)
    t0=$(client_tcp)
    local ns
    for ns in a zt remote node; do in_ns "$ns" nstat -asz >"$dir/nstat-$ns.before" 2>&1 || true; done

    # Which address did the server see? The client's (direct) or the proxy's.
    peer=$(in_ns a curl -sS -o /dev/null -D - --max-time 3 "$url" 2>"$dir/curl.err" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "x-peer" { print $2 }') || true
    local want=$ZTIP
    [ "$m" = direct ] && want=$CLI
    if [ "$peer" != "$want" ]; then
        fail "$r" "$m" "server saw peer '${peer:-none}', expected $want ($(head -c 200 "$dir/curl.err"))"
        mode_teardown "$m" || true
        return
    fi

    # keep-alive requests
    measure "$r" "$m" keep-alive "$dir/wrk-ka.txt" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url"
    read -r ka_rps ka_req ka_err ka_n2 ka_p50 ka_p99 < <(parse_wrk "$dir/wrk-ka.txt")
    local f_ka=$FOREIGN t_ka=$TRIES
    # connection per request
    measure "$r" "$m" conn-per-request "$dir/wrk-crr.txt" \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Connection: close' "$url"
    read -r crr_rps crr_req crr_err crr_n2 crr_p50 crr_p99 < <(parse_wrk "$dir/wrk-crr.txt")
    local f_crr=$FOREIGN t_crr=$TRIES
    local tw_cli tw_zt tw_srv
    tw_cli=$(tw_count a) tw_zt=$(tw_count zt) tw_srv=$(tw_count remote)
    # bulk
    local ip port gbps retr
    read -r ip port < <(iperf_target "$m")
    measure "$r" "$m" bulk "$dir/iperf3.json" iperf3 -c "$ip" -p "$port" -t "$DURATION" -J
    local f_bulk=$FOREIGN t_bulk=$TRIES
    read -r gbps retr < <(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    e = d["end"]
    print("%.3f %d" % (e["sum_received"]["bits_per_second"] / 1e9, e["sum_sent"].get("retransmits", 0)))
except Exception:
    print("0 0")' "$dir/iperf3.json")

    hs1=$(haproxy_sessions)
    t1=$(client_tcp)
    for ns in a zt remote node; do in_ns "$ns" nstat -asz >"$dir/nstat-$ns.after" 2>&1 || true; done
    local synr rst retx
    read -r a0 b0 c0 <<<"$t0"
    read -r a1 b1 c1 <<<"$t1"
    synr=$((a1 - a0)) rst=$((b1 - b0)) retx=$((c1 - c0))
    local s_tp s_eh s_ei
    s_tp=$(($(fe_count "$hs1" tproxy) - $(fe_count "$hs0" tproxy)))
    s_eh=$(($(fe_count "$hs1" explicit_http) - $(fe_count "$hs0" explicit_http)))
    s_ei=$(($(fe_count "$hs1" explicit_iperf) - $(fe_count "$hs0" explicit_iperf)))

    # Evidence that the mode went where it should.
    local conns_expected=$((1 + CONNS + crr_req + 2)) # curl, wrk keep-alive, wrk close, iperf3
    case $m in
    direct)
        [ $((s_tp + s_eh + s_ei)) = 0 ] || fail "$r" "$m" "haproxy saw sessions ($s_tp/$s_eh/$s_ei)"
        ;;
    explicit)
        [ "$s_tp" = 0 ] || fail "$r" "$m" "transparent frontend saw $s_tp sessions"
        [ "$s_eh" -ge $((1 + CONNS + crr_req)) ] || fail "$r" "$m" "explicit frontend saw $s_eh sessions, wanted >= $((1 + CONNS + crr_req))"
        [ "$s_ei" -ge 2 ] || fail "$r" "$m" "explicit iperf frontend saw $s_ei sessions"
        ;;
    *)
        [ $((s_eh + s_ei)) = 0 ] || fail "$r" "$m" "explicit frontends saw sessions"
        [ "$s_tp" -ge "$conns_expected" ] || fail "$r" "$m" "transparent frontend saw $s_tp sessions, wanted >= $conns_expected"
        ;;
    esac
    local captured=0 drops=0 assigned=0 nconns=0 twreuse=0
    case $m in
    tproxy)
        captured=$(in_ns zt "$IPTABLES" -w -t mangle -L PREROUTING -v -n -x | awk '/TPROXY/ { s += $1 } END { print s + 0 }')
        [ "$captured" -gt 0 ] || fail "$r" "$m" "TPROXY rule matched no packet"
        ;;
    tcx | tc | tcx-noct)
        zt -o json stats >"$dir/ztredir-stats.json"
        zt -o json conns >"$dir/ztredir-conns.json" 2>&1 || true
        zt status >"$dir/ztredir-status.txt" 2>&1 || true
        captured=$(ztr_reason_packets "$dir/ztredir-stats.json" capture-outbound)
        assigned=$(ztr_reason_packets "$dir/ztredir-stats.json" assign-listener)
        twreuse=$(ztr_reason_packets "$dir/ztredir-stats.json" time-wait-reuse)
        drops=$(($(ztr_reason_packets "$dir/ztredir-stats.json" drop-no-listener) +
            $(ztr_reason_packets "$dir/ztredir-stats.json" drop-no-ztunnel)))
        nconns=$(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print(0); sys.exit()
print(len(d) if isinstance(d, list) else len(d.get("conns", d.get("connections", []))))' "$dir/ztredir-conns.json")
        [ "$captured" -gt 0 ] || fail "$r" "$m" "ztredir captured no packet"
        [ "$assigned" -ge "$conns_expected" ] || fail "$r" "$m" "sk_lookup assigned $assigned connections, wanted >= $conns_expected"
        [ "$drops" = 0 ] || fail "$r" "$m" "ztredir dropped $drops packets"
        if [ "$m" = tcx-noct ]; then
            [ "$nconns" = 0 ] || fail "$r" "$m" "conns shows $nconns entries with --no-conntrack"
        else
            [ "$nconns" -gt 0 ] || fail "$r" "$m" "conns shows no entry"
        fi
        ;;
    esac
    # Traffic checks.
    [ "$ka_req" -gt 0 ] && [ "$ka_n2" = 0 ] || fail "$r" "$m" "keep-alive: $ka_req requests, $ka_n2 non-2xx"
    [ "$crr_req" -gt 0 ] && [ "$crr_n2" = 0 ] || fail "$r" "$m" "connection: close: $crr_req requests, $crr_n2 non-2xx"
    [ "$ka_err" = 0 ] || fail "$r" "$m" "keep-alive: $ka_err socket errors"
    [ "$crr_err" = 0 ] || fail "$r" "$m" "connection: close: $crr_err socket errors"
    [ "$synr" = 0 ] || fail "$r" "$m" "client retransmitted $synr SYNs (TIME_WAIT collision or drop)"
    awk -v g="$gbps" 'BEGIN { exit !(g > 0) }' || fail "$r" "$m" "iperf3 moved no data"

    mode_teardown "$m" || fail "$r" "$m" "teardown failed"

    for kv in ka_rps:$ka_rps ka_p50_us:$ka_p50 ka_p99_us:$ka_p99 ka_requests:$ka_req ka_errors:$ka_err \
        crr_rps:$crr_rps crr_p50_us:$crr_p50 crr_p99_us:$crr_p99 crr_requests:$crr_req crr_errors:$crr_err \
        bulk_gbps:$gbps bulk_retrans:$retr client_syn_retrans:$synr client_rsts:$rst client_retrans:$retx \
        proxy_sessions:$((s_tp + s_eh + s_ei)) captured_packets:$captured listener_assigns:$assigned \
        ztredir_drops:$drops ztredir_conns:$nconns time_wait_reuse:$twreuse tw_cli:$tw_cli tw_zt:$tw_zt tw_srv:$tw_srv \
        foreign_ka_pct:$f_ka foreign_crr_pct:$f_crr foreign_bulk_pct:$f_bulk \
        retries:$((t_ka + t_crr + t_bulk)); do
        record "$r" "$m" "${kv%%:*}" "${kv#*:}"
    done
    printf '   %-9s ka %9.0f req/s p50 %6.0fus p99 %6.0fus | crr %7.0f conn/s | bulk %6.2f Gbit/s | proxy sessions %d | others CPU %s/%s/%s%%\n' \
        "$m" "$ka_rps" "$ka_p50" "$ka_p99" "$crr_rps" "$gbps" "$((s_tp + s_eh + s_ei))" "$f_ka" "$f_crr" "$f_bulk" >&2
}

# ---------------------------------------------------------------------------
BASELINE=$(net_state)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date +%s)
log "== $ROUNDS round(s) x ${#MODES[@]} modes, ${DURATION}s per measurement, wrk -c$CONNS;" \
    "CPUs: client $CPU_CLIENT, proxy $CPU_PROXY, server $CPU_SERVER"
n=${#MODES[@]}
for r in $(seq "$ROUNDS"); do
    log "-- round $r/$ROUNDS"
    # Rotate the order each round so no mode always runs first or last.
    for i in $(seq 0 $((n - 1))); do
        [ "$QUIET_WAIT" -gt 0 ] && wait_quiet
        run_mode "$r" "${MODES[$(((i + r - 1) % n))]}"
    done
done
ELAPSED=$(($(date +%s) - START))
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------
# Report.
if [ -z "$OUT" ]; then
    if [ "$QUICK" = 1 ]; then OUT=$WORK/results; else OUT=$BENCH/results; fi
fi
mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
BASE=$OUT/e2e-$STAMP-$(hostname -s)
cp "$CSV" "$BASE.csv"
{
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "cpus=$(nproc)"
    echo "haproxy=$(haproxy -v | awk 'NR == 1 { print $3 }')"
    echo "nginx=$(nginx -v 2>&1 | awk -F/ '{ print $2 }')"
    echo "wrk=$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }')"
    echo "iperf3=$(iperf3 --version | awk 'NR == 1 { print $2 }')"
    echo "iptables=$("$IPTABLES" --version)"
    if [ -n "${ZTREDIR:-}" ]; then
        echo "ztredir=$("$BIN" --version 2>/dev/null || echo unknown), $BIN (built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)${ZTREDIR_REV:+ from $ZTREDIR_REV}; this repo is at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    else
        echo "ztredir=$("$BIN" --version 2>/dev/null || echo unknown) (built from this repo, $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src bpf build.rs Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes'))"
    fi
    echo "rounds=$ROUNDS"
    echo "duration=$DURATION"
    echo "connections=$CONNS"
    echo "file_size=$FILE_SIZE"
    echo "cpu_client=$CPU_CLIENT"
    echo "cpu_proxy=$CPU_PROXY"
    echo "cpu_server=$CPU_SERVER"
    echo "modes=${MODES[*]}"
    echo "busy_pct=$BUSY_PCT"
    echo "retries=$RETRIES"
    echo "loadavg_before=$LOAD0"
    echo "loadavg_after=$LOAD1"
    echo "elapsed=$ELAPSED"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host=$(hostname -s)"
    for f in "${FAILS[@]}"; do echo "fail=$f"; done
} >"$WORK/meta.txt"
python3 "$BENCH/report.py" "$BASE.csv" "$WORK/meta.txt" >"$BASE.md"
cat "$BASE.md"
log "== report: $BASE.md, raw: $BASE.csv (${ELAPSED}s)"
if [ ${#FAILS[@]} -gt 0 ]; then
    log "== FAILED checks:"
    for f in "${FAILS[@]}"; do log "   $f"; done
    exit 1
fi
