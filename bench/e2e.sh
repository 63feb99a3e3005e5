#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# ztredir end-to-end benchmark. Builds a node in network namespaces (a client
# pod, a ztunnel pod running haproxy as the transparent proxy, a remote server
# running nginx and iperf3 behind the node's uplink) and measures, in one run
# and in interleaved rounds, the same traffic through these paths:
#
#   a direct          client -> server, no proxy
#   b explicit        client connects to haproxy's own IP:port, haproxy -> server
#   c tproxy          node policy-routes the pod's packets to the ztunnel pod,
#                     iptables TPROXY there hands them to haproxy's listener
#   d tcx             ztredir, TCX links
#   e tc              ztredir, classic tc (clsact + cls_bpf)
#   f tcx-noct        ztredir, TCX links, `ztunnel set --no-conntrack`
#   g inpod-iptables  haproxy inside the client pod, istio-cni's in-pod
#                     iptables rules there (REDIRECT to 15001/15006)
#   h inpod-nft       the same rules in istio-cni's nftables form
#   i inpod           ztredir's in-pod mode (when the binary has it)
#
# Metrics: keep-alive and connection-per-request request rates (wrk), the same
# against a proxy that answers itself (the redirect-cost scenario), bulk TCP
# throughput (iperf3), latency percentiles and CPU seconds per 10,000
# requests at fixed request rates (h2load), and the seed's experiment: max
# requests/s and p75 latency at a fixed rate against 1..64 connections.
# Every mode is checked to have gone where it should (server-seen source
# address, haproxy frontend session counters, rule counters, ztredir stats);
# a mode that fails a check makes the run exit 1.
#
# Run as root:  bench/e2e.sh [--rounds N] [--duration SEC] [--quick] [--out DIR]
# See bench/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/e2e.sh [options]      (as root)
  --rounds N          interleaved rounds (default 3)
  --duration SEC      seconds per measurement (default 3)
  --quick             smoke test: 1 round, 1-second measurements, all modes,
                      a one-point sweep (8 connections), results in a temporary directory
                      unless --out is given
  --out DIR           where the report, raw numbers and charts go
                      (default bench/results)
  --modes LIST        comma-separated subset of direct,explicit,tproxy,tcx,tc,
                      tcx-noct,inpod-iptables,inpod-nft,inpod (default: all
                      that this ztredir supports)
  --connections N     connections of the wrk and h2load runs (default 8)
  --file-size BYTES   size of the file nginx serves (default 1024)
  --rate N            fixed keep-alive request rate for latency and CPU
                      (default 8192 req/s, a multiple of --connections)
  --conn-rate N       fixed connection-per-request rate in the redirect-cost
                      scenario, for CPU (default 4000 conn/s, multiple of 1000)
  --sweep LIST        connection counts of the seed's experiment
                      (default 1,2,4,8,16,32,64; "none" skips it)
  --sweep-duration S  seconds per sweep point (default 2)
  --sweep-rate N      fixed request rate of the sweep's latency curve
                      (default 2048 req/s, a multiple of every count)
  --quiet-wait SEC    before each mode, wait up to SEC seconds until other
                      processes use less than BUSY_PCT% of the CPUs (default 30;
                      0 = off; --quick sets 0)
  --retries N         measure again, up to N times, when other processes used
                      BUSY_PCT% or more of the CPUs meanwhile (default 1;
                      --quick sets 0)
  --wait-budget SEC   total seconds the run may spend waiting for quiet and
                      repeating measurements (default 90); after that it
                      measures on and marks what was disturbed
environment:
  ZTREDIR=PATH       use this binary instead of `cargo build --release --bin ztredir`
  ZTREDIR_REV        what ZTREDIR was built from, for the report (e.g. a commit)
  CPU_CLIENT, CPU_PROXY, CPU_SERVER
                     CPUs for the load generators, haproxy, nginx/iperf3 server
                     (default 0, 1, 1)
  IPTABLES           iptables binary for the tproxy and inpod-iptables modes
                     (default iptables; iptables-legacy also works, see
                     bench/README.md)
  BUSY_PCT           share of the machine others may use during a
                     measurement before it is repeated (default 3)
EOF
}

ROUNDS=3
DURATION=3
QUICK=0
OUT=
CONNS=8
FILE_SIZE=1024
RATE=8192
CONN_RATE=4000
SWEEP=1,2,4,8,16,32,64
SWEEP_DUR=2
SWEEP_RATE=2048
QUIET_WAIT=30
RETRIES=1
WAIT_BUDGET=90
BUSY_PCT=${BUSY_PCT:-3}
ALL_MODES=(direct explicit tproxy tcx tc tcx-noct inpod-iptables inpod-nft inpod)
MODES=()
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --modes) IFS=, read -r -a MODES <<<"$2"; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --file-size) FILE_SIZE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --conn-rate) CONN_RATE=$2; shift 2 ;;
    --sweep) SWEEP=$2; shift 2 ;;
    --sweep-duration) SWEEP_DUR=$2; shift 2 ;;
    --sweep-rate) SWEEP_RATE=$2; shift 2 ;;
    --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
    --retries) RETRIES=$2; shift 2 ;;
    --wait-budget) WAIT_BUDGET=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "e2e.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    ROUNDS=1
    DURATION=1
    QUIET_WAIT=0
    RETRIES=0
    SWEEP_DUR=1
    [ "$SWEEP" = 1,2,4,8,16,32,64 ] && SWEEP=8
fi
SWEEP_CONNS=()
[ "$SWEEP" = none ] || IFS=, read -r -a SWEEP_CONNS <<<"$SWEEP"
for v in "$ROUNDS" "$DURATION" "$CONNS" "$FILE_SIZE" "$RATE" "$CONN_RATE" "$SWEEP_DUR" "$SWEEP_RATE" "${SWEEP_CONNS[@]}"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "e2e.sh: not a positive integer: $v" >&2; exit 2; }
done
for v in "$QUIET_WAIT" "$RETRIES" "$WAIT_BUDGET"; do
    [[ $v =~ ^[0-9]+$ ]] || { echo "e2e.sh: not a number: $v" >&2; exit 2; }
done
# h2load paces each connection (--rps, whole requests per second) and opens
# connections per millisecond (-r with --rate-period 1ms).
[ $((RATE % CONNS)) = 0 ] || { echo "e2e.sh: --rate $RATE is not a multiple of --connections $CONNS" >&2; exit 2; }
[ $((CONN_RATE % 1000)) = 0 ] || { echo "e2e.sh: --conn-rate $CONN_RATE is not a multiple of 1000" >&2; exit 2; }
for c in "${SWEEP_CONNS[@]}"; do
    [ $((SWEEP_RATE % c)) = 0 ] || { echo "e2e.sh: --sweep-rate $SWEEP_RATE is not a multiple of $c connections" >&2; exit 2; }
done
IPTABLES=${IPTABLES:-iptables}
CPU_CLIENT=${CPU_CLIENT:-0}
CPU_PROXY=${CPU_PROXY:-1}
CPU_SERVER=${CPU_SERVER:-1}

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "e2e.sh: run as root" >&2; exit 2; }
missing=()
for t in haproxy nginx wrk h2load iperf3 "$IPTABLES" "$IPTABLES-restore" nft nsenter taskset ip curl python3 nstat timeout cc; do
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

# ztredir's in-pod mode is newer than its node mode: a binary without it
# cannot run `inpod`. Asked for, that is an error; by default it is left out,
# and the report says so.
INPOD_NOTE=
if "$BIN" ztunnel set --help 2>/dev/null | grep -q -- '--in-pod'; then
    HAVE_INPOD=1
else
    HAVE_INPOD=0
fi
if [ ${#MODES[@]} = 0 ]; then
    for m in "${ALL_MODES[@]}"; do
        if [ "$m" = inpod ] && [ "$HAVE_INPOD" = 0 ]; then
            INPOD_NOTE="inpod: this ztredir has no in-pod mode (its \`ztunnel set --help\` has no --in-pod), so the mode was left out"
            continue
        fi
        MODES+=("$m")
    done
fi
for m in "${MODES[@]}"; do
    [[ " ${ALL_MODES[*]} " == *" $m "* ]] || { echo "e2e.sh: unknown mode $m" >&2; exit 2; }
    if [ "$m" = inpod ] && [ "$HAVE_INPOD" = 0 ]; then
        echo "e2e.sh: inpod: this ztredir has no in-pod mode ($BIN: \`ztunnel set --help\` has no --in-pod)" >&2
        exit 2
    fi
done

# ---------------------------------------------------------------------------
# State and cleanup. Everything lives in namespaces $P-* and a private bpffs
# (both made by `testbed up`), $WORK, and processes whose PIDs are in PIDS
# (long-running) or FG (the current measurement).

P=ztrb$$
WORK=$(mktemp -d /tmp/ztredir-bench.XXXXXX)
PIN=
PIDS=()
POD_HP= # the in-pod haproxy of the current mode (g-i)
POD_APP= # the app in the client pod, beside it
FG=
ZT_ACTIVE= # node or inpod while ztredir is set up
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -n "$FG" ] && kill "$FG" 2>/dev/null && wait "$FG" 2>/dev/null
    case $ZT_ACTIVE in
    node)
        timeout 10 nsenter --net="/run/netns/$P-node" "$BIN" --pin-dir "$PIN" detach --all >/dev/null 2>&1
        timeout 10 nsenter --net="/run/netns/$P-node" "$BIN" --pin-dir "$PIN" ztunnel clear >/dev/null 2>&1
        ;;
    inpod)
        timeout 10 nsenter --net="/run/netns/$P-node" "$BIN" --pin-dir "$PIN" detach --netns "$P-a" >/dev/null 2>&1
        timeout 10 nsenter --net="/run/netns/$P-node" "$BIN" --pin-dir "$PIN" uninstall >/dev/null 2>&1
        ;;
    esac
    [ -n "$POD_HP" ] && kill "$POD_HP" 2>/dev/null && wait "$POD_HP" 2>/dev/null
    [ -n "$POD_APP" ] && kill "$POD_APP" 2>/dev/null && wait "$POD_APP" 2>/dev/null
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
# Ephemeral ports in the client pod (somark.so sets each socket's range):
# the in-pod proxy (modes g-i) connects from the upper half, the load
# generators from the lower half, split by where they connect. With
# REDIRECT (g, h) every connection lands on the one tuple client:port ->
# 127.0.0.1:15001 at the proxy, whatever its original destination; two
# connections to different destinations from the same client port meet the
# proxy's TIME_WAIT socket of the first, and with TCP timestamp offsets that
# differ per 4-tuple (this kernel) PAWS rejects the second's SYN: a 1-second
# SYN retransmission (seen: hundreds per connection-per-request run, none
# with the ranges split). A pod talking to several services hits that; this
# benchmark keeps it out of the cost it measures, and says so in the README.
# The proxy and the app share the pod's address too, hence its own range.
# All of them above the pod's listening ports (15001, 15006, 8081): a wildcard
# bind fails while any socket of the pod holds the port, even a connected
# one in TIME_WAIT (seen: the in-pod haproxy could not bind 15006 in round 2).
PORTS_WEB=16384-24575    # nginx :80 (explicit: haproxy :8080), curl
PORTS_ANSWER=24576-31743 # the answering proxy :81 (explicit: :8081)
PORTS_BULK=31744-32767   # iperf3 :5201 (explicit: :5202)
PROXY_PORTS=32768-65535
CLIENT_PORTS=$PORTS_WEB  # set per measurement: CLIENT_PORTS=... measure ...
run_fg() { # ns cpu limit-seconds outfile cmd...
    local ns=$1 cpu=$2 limit=$3 outf=$4 rc=0
    shift 4
    timeout -k 2 "$limit" taskset -c "$cpu" nsenter --net="/run/netns/$P-$ns" \
        env LD_PRELOAD="$WORK/somark.so" SOPORTS="$CLIENT_PORTS" "$@" >"$outf" 2>&1 &
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
# The connecting sides (the load generators, and g-i's proxy, in a; haproxy's
# upstream connections in zt): a wide ephemeral port range (in a above its
# listening ports, and split per socket, see PORTS_WEB) and TIME_WAIT reuse
# for outgoing connections. Without them the client's own TIME_WAIT sockets (wrk closes
# first) use up the even half of the default port range within two seconds of
# connection-per-request load, and connect()'s port search, not the path
# under test, sets the rate (it fell to 300-500 conn/s in every mode,
# direct included, depending on what the previous mode left behind).
in_ns zt sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
in_ns a sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="16384 65535"

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
    # The redirect-cost scenario's port: answered by the proxy in every
    # proxied mode; only direct mode reaches this.
    server {
        listen 81 backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
mkdir -p "$WORK/nginx-tmp"

# The redirect-cost scenario: requests to port 81 are answered by haproxy
# itself (a two-byte body, no upstream), so the interception path is a large
# share of each request. Every proxied mode reaches it the same way: a TCP
# frontend hands the connection to this HTTP backend (haproxy upgrades the
# stream), the explicit frontend without a condition, the intercepting ones
# on the original destination port.
HAPROXY_COMMON='
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 300s
    timeout server 300s

backend answer
    mode http
    http-request return status 200 content-type text/plain string "ok"
'
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
    log stderr format short local0 warning
$HAPROXY_COMMON
# The interception target, like ztunnel's outbound listener: wildcard,
# IP_TRANSPARENT (bind ... transparent), and "server 0.0.0.0" with no port
# connects to the connection's original destination address and port.
# The outbound connection gets ztunnel's own source IP (no "source ...
# usesrc", no spoofing), and "option transparent" is not needed.
frontend tproxy
    bind :15001 transparent
    use_backend answer if { dst_port 81 }
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
frontend explicit_answer
    bind :8081
    default_backend answer

frontend stats
    mode http
    bind 127.0.0.1:9000
    stats enable
    stats uri /
EOF

# The in-pod proxy (modes g-i): a haproxy inside the client pod, with
# ztunnel's in-pod listeners there: 15001 outbound, 15006 inbound plaintext.
# Its leg into the app (15006 -> the pod's own address) comes from the
# original client's address over lo, as ztunnel's does ("source 0.0.0.0
# usesrc clientip", IP_TRANSPARENT). Every socket it opens carries SO_MARK
# 0x539 (somark.so, see there), which is how in-pod redirection tells the
# proxy's own connections from the app's.
#   iptables/nft (REDIRECT): IPv4 wildcard listeners; haproxy reads the
#     original destination with SO_ORIGINAL_DST, which it only asks of IPv4
#     sockets.
#   ztredir in-pod (BPF): dual-stack transparent listeners, [::]:15001 and
#     [::]:15006, as ztunnel binds them; the original destination is the
#     accepted socket's own (v4-mapped) address.
# "app" stands for the workload's own server, for the inbound path check: it
# answers with the peer address it saw.
pod_haproxy_cfg() { # iptables|bpf
    local b4=0.0.0.0: opt=
    if [ "$1" = bpf ]; then b4=:::; opt=" v4v6 transparent"; fi
    cat <<EOF
global
    nbthread 1
    maxconn 8192
    log stderr format short local0 warning
$HAPROXY_COMMON
frontend pod_out
    bind ${b4}15001$opt
    use_backend answer if { dst_port 81 }
    default_backend pod_orig_dst
backend pod_orig_dst
    server s 0.0.0.0

frontend pod_in
    bind ${b4}15006$opt
    default_backend pod_app_leg
backend pod_app_leg
    source 0.0.0.0 usesrc clientip
    server s 0.0.0.0

frontend stats
    mode http
    bind 127.0.0.1:9001
    stats enable
    stats uri /
EOF
}
cc -shared -fPIC -O2 -Wall -o "$WORK/somark.so" "$BENCH/somark.c" -ldl

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

# The in-pod haproxy lives as long as its mode: started by the mode's setup
# (before its rules), stopped by its teardown.
# The app in the client pod that the inbound check reaches: a process of its
# own, without the proxy's mark (a marked app would be the proxy itself: its
# replies to the spoofed client address would leave the pod). It answers
# "peer=<the source address it saw>".
POD_APP_PY='
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("peer=%s" % self.client_address[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], 8081), H).serve_forever()
'
start_pod_haproxy() { # iptables|bpf
    nsenter --net="/run/netns/$P-a" python3 -c "$POD_APP_PY" "$CLI" >>"$WORK/pod-app.log" 2>&1 &
    POD_APP=$!
    pod_haproxy_cfg "$1" >"$WORK/haproxy-pod-$1.cfg"
    taskset -c "$CPU_PROXY" nsenter --net="/run/netns/$P-a" \
        env SOMARK=0x539 SOPORTS="$PROXY_PORTS" LD_PRELOAD="$WORK/somark.so" haproxy -db -f "$WORK/haproxy-pod-$1.cfg" \
        >>"$WORK/haproxy-pod.log" 2>&1 &
    POD_HP=$!
    local _
    for _ in $(seq 50); do
        in_ns a curl -sf -o /dev/null 'http://127.0.0.1:9001/;csv' && return 0
        sleep 0.1
    done
    log "   in-pod haproxy did not come up: $(tail -n 3 "$WORK/haproxy-pod.log" | tr '\n' ' ')"
    return 1
}
stop_pod_haproxy() {
    if [ -n "${POD_APP:-}" ]; then
        kill "$POD_APP" 2>/dev/null
        wait "$POD_APP" 2>/dev/null
        POD_APP=
    fi
    [ -n "$POD_HP" ] || return 0
    kill "$POD_HP" 2>/dev/null
    wait "$POD_HP" 2>/dev/null
    POD_HP=
}

# ---------------------------------------------------------------------------
# Observation helpers.

# Cumulative sessions (stot) of each haproxy frontend, the ztunnel pod's and
# (while one runs) the in-pod one's: "tproxy N explicit_http N ... pod_out N ..."
haproxy_sessions() {
    {
        in_ns zt curl -sf 'http://127.0.0.1:9000/;csv'
        [ -z "$POD_HP" ] || in_ns a curl -sf 'http://127.0.0.1:9001/;csv'
    } | awk -F, '$2 == "FRONTEND" && $1 != "stats" { printf "%s %s ", $1, $8 }'
}
fe_count() { # "sessions string" frontend -> its count (0 when absent)
    awk -v fe="$2" '{ n = 0; for (i = 1; i < NF; i += 2) if ($i == fe) n = $(i + 1); print n }' <<<"$1"
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

# CPU time, from /proc/stat (all CPUs) and from our own processes. With tick
# accounting (this kernel has no IRQ_TIME_ACCOUNTING) a tick that lands in a
# softirq counts as softirq in /proc/stat *and* as system time of the task it
# interrupted, so softirq work done in our processes' context (most of the
# packet path) is in their times already.
#   machine: user+nice+system+irq+softirq+steal, all CPUs
#   ours:    utime+stime of our long-running processes (servers, proxies),
#            of ksoftirqd (mostly our packets), and of this shell's reaped
#            children (the load generators)
#   others = machine - ours (builds and tests of other people; the
#            hypervisor's steal; softirq that ran in no task of ours)
#   our CPU = machine - others: what the measurement cost, all CPUs
KSOFTIRQD=($(pgrep '^ksoftirqd/' || true))
NCPU=$(nproc)
HZ=$(getconf CLK_TCK)
cpu_mark() { # sets MARK="now_ns machine_ticks our_ticks"; not in $(...), for `times`
    local machine ours=0 pid
    machine=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
    for pid in "${PIDS[@]}" $POD_HP "${KSOFTIRQD[@]}"; do
        ours=$((ours + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    times >"$WORK/times" # a builtin in this shell: this shell and its reaped children
    ours=$((ours + $(awk '{ for (i = 1; i <= NF; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } } END { printf "%d", t * 100 }' "$WORK/times")))
    MARK="$(date +%s%N) $machine $ours"
}
# "mark0" "mark1" -> "others_pct our_cpu_seconds machine_cpu_seconds elapsed_s"
cpu_between() {
    awk -v a="$1" -v b="$2" -v n="$NCPU" -v hz="$HZ" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        el = (y[1] - x[1]) / 1e9
        m = y[2] - x[2]
        f = m - (y[3] - x[3])
        if (f < 0) f = 0
        printf "%.1f %.3f %.3f %.3f\n", (el > 0 ? 100 * f / (el * hz * n) : 0), (m - f) / hz, m / hz, el }'
}
foreign_pct() { cpu_between "$1" "$2" | cut -d' ' -f1; }

# The time this run may still spend waiting for quiet or repeating
# measurements (--wait-budget): a busy machine must not stretch a run
# without bound; what is measured after the budget is gone is marked.
BUDGET_LEFT=$WAIT_BUDGET
spend() { BUDGET_LEFT=$((BUDGET_LEFT - $1)); [ "$BUDGET_LEFT" -gt 0 ] || BUDGET_LEFT=0; }
# Before a mode: wait (up to QUIET_WAIT seconds, within the budget) until
# others use less than BUSY_PCT% of the machine over one second.
wait_quiet() {
    [ "$QUIET_WAIT" -gt 0 ] && [ "$BUDGET_LEFT" -gt 0 ] || return 0
    local start=$SECONDS m0 m1 f said=0
    while :; do
        cpu_mark
        m0=$MARK
        sleep 1
        cpu_mark
        m1=$MARK
        f=$(foreign_pct "$m0" "$m1")
        awk -v f="$f" -v t="$BUSY_PCT" 'BEGIN { exit !(f < t) }' && break
        if [ $((SECONDS - start)) -ge "$QUIET_WAIT" ] || [ $((SECONDS - start)) -ge "$BUDGET_LEFT" ]; then
            log "   (machine still busy: others use $f%; measuring anyway)"
            break
        fi
        [ "$said" = 1 ] || log "   (others use $f% of the CPUs; waiting up to ${QUIET_WAIT}s, ${BUDGET_LEFT}s of waiting left)"
        said=1
    done
    spend $((SECONDS - start))
}

# One measurement from the client netns, on the client CPU. When other
# processes used BUSY_PCT% or more of the machine meanwhile, wait for quiet and
# measure again (up to RETRIES times, within the budget). Sets FOREIGN (their
# share during the kept attempt), OUR_CPU (CPU seconds the attempt cost, all
# CPUs, see cpu_mark), MACHINE_CPU (the same, machine-wide) and TRIES
# (attempts thrown away). LOG=file: a log the command appends to (h2load's
# --log-file), removed before each attempt so that only the kept one counts.
measure() { # round mode name outfile cmd...
    local r=$1 m=$2 name=$3 outf=$4 mk0 t0 limit
    shift 4
    TRIES=0
    limit=$((DURATION + 20))
    [[ $name == sweep* ]] && limit=$((SWEEP_DUR + 20))
    while :; do
        [ -z "${LOG:-}" ] || rm -f "$LOG"
        t0=$SECONDS
        cpu_mark
        mk0=$MARK
        if ! run_fg a "$CPU_CLIENT" "$limit" "$outf" "$@"; then
            fail "$r" "$m" "$name: $1 exited non-zero ($(tail -n 2 "$outf" | tr '\n' ' ' | head -c 200))"
            FOREIGN=0 OUR_CPU=0 MACHINE_CPU=0
            return
        fi
        cpu_mark
        read -r FOREIGN OUR_CPU MACHINE_CPU _ < <(cpu_between "$mk0" "$MARK")
        awk -v f="$FOREIGN" -v t="$BUSY_PCT" 'BEGIN { exit !(f >= t) }' || return 0
        [ "$TRIES" -lt "$RETRIES" ] && [ "$BUDGET_LEFT" -gt 0 ] || return 0
        TRIES=$((TRIES + 1))
        spend $((SECONDS - t0))
        log "   ($m $name: others used $FOREIGN% of the CPUs; measuring again)"
        wait_quiet
    done
}

# TIME_WAIT sockets in a namespace.
tw_count() { in_ns "$1" ss -Htan state time-wait | wc -l; }

# wrk output -> "rps requests errors non2xx p50_us p75_us p90_us p99_us"
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
    $1 == "75%" { p75 = us($2) }
    $1 == "90%" { p90 = us($2) }
    $1 == "99%" { p99 = us($2) }
    END { printf "%s %s %d %d %s %s %s %s\n", rps + 0, req + 0, err, n2, p50 + 0, p75 + 0, p90 + 0, p99 + 0 }' "$1"
}
# h2load's summary and per-request log -> "requests errors non2xx rate p50_us
# p75_us p90_us p99_us": every request counts (no warm-up is cut), the rate
# is requests over the span of their start times.
parse_h2load() { # output-file log-file
    python3 - "$1" "$2" <<'EOF'
import re, sys
out = open(sys.argv[1]).read()
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
ok, errors = (int(m.group(4)), int(m.group(5)) + int(m.group(6)) + int(m.group(7))) if m else (0, 1)
m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
non2xx = int(m.group(2)) + int(m.group(3)) + int(m.group(4)) if m else 1
starts, lat = [], []
try:
    for line in open(sys.argv[2]):
        f = line.split()
        if len(f) >= 3 and f[1] == "200":
            starts.append(int(f[0]))
            lat.append(int(f[2]))
except OSError:
    pass
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else 0
span = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else 0
rate = (len(starts) - 1) / span if span > 0 else 0
print(ok, errors, non2xx, "%.0f" % rate, pct(50), pct(75), pct(90), pct(99))
EOF
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
# Modes: set up, tear down, where the client connects. One function per rule
# set, so that each mode's rules are written down in one place.

# c: the node policy-routes everything pod a sends to the ztunnel pod, where
# TPROXY hands what is not addressed to ztunnel itself to the transparent
# listener (Istio's 2022 node-level design).
tproxy_setup() {
    in_ns node ip rule add iif va lookup 101 pref 101 || return 1
    in_ns node ip route add default via "$ZTIP" dev vzt onlink table 101 || return 1
    in_ns zt "$IPTABLES" -w -t mangle -A PREROUTING -i eth0 -p tcp ! -d "$ZTIP/32" \
        -j TPROXY --on-port 15001 --tproxy-mark 0x400/0xfff || return 1
    in_ns zt ip rule add fwmark 0x400/0xfff lookup 100 pref 100 || return 1
    in_ns zt ip route add local 0.0.0.0/0 dev lo table 100 || return 1
}
tproxy_teardown() {
    local rc=0
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
    return "$rc"
}

# g: istio-cni's in-pod rules, iptables flavour, as it writes them into each
# workload netns (cni/pkg/iptables: AppendInpodRules), with the kubelet-probe
# exemption (169.254.7.127) and without DNS capture (not enabled here):
#   mangle: a packet carrying the proxy's mark 0x539 arriving (its leg into
#     the app, over lo) connmarks its connection 0x111; the app's replies get
#     the connmark back as packet mark, and `fwmark 0x111 -> table 100:
#     local default dev lo` returns them to the proxy although they are
#     addressed to a foreign (the original client's) address;
#   nat OUTPUT: TCP not to 127.0.0.1 and not marked 0x539 -> REDIRECT 15001;
#   nat PREROUTING: TCP not to 127.0.0.1, not to 15008, not marked 0x539 ->
#     REDIRECT 15006.
inpod_iptables_rules() {
    cat <<'EOF'
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
EOF
}
# h: the same rules in istio-cni's nftables form (cni/pkg/nftables), with
# its tables, base chain types and priorities (numeric: nft 1.0.6 knows no
# `dstnat` for the output hook; dstnat is -100, mangle -150), and a counter
# on every rule as it has them.
inpod_nft_rules() {
    cat <<'EOF'
table inet istio-ambient-nat {
    chain prerouting { type nat hook prerouting priority -100; policy accept; jump istio-prerouting; }
    chain output { type nat hook output priority -100; policy accept; jump istio-output; }
    chain istio-prerouting {
        meta l4proto tcp ip saddr 169.254.7.127 counter accept
        meta l4proto tcp ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept
        ip daddr != 127.0.0.1/32 tcp dport != 15008 meta mark and 0xfff != 0x539 counter redirect to :15006
        ip6 daddr != ::1/128 tcp dport != 15008 meta mark and 0xfff != 0x539 counter redirect to :15006
    }
    chain istio-output {
        meta l4proto tcp ip daddr 169.254.7.127 counter accept
        meta l4proto tcp ip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept
        meta l4proto tcp meta mark and 0xfff == 0x111 counter accept
        oifname "lo" ip daddr != 127.0.0.1/32 counter accept
        oifname "lo" ip6 daddr != ::1/128 counter accept
        meta l4proto tcp ip daddr != 127.0.0.1/32 meta mark and 0xfff != 0x539 counter redirect to :15001
        meta l4proto tcp ip6 daddr != ::1/128 meta mark and 0xfff != 0x539 counter redirect to :15001
    }
}
table inet istio-ambient-mangle {
    chain prerouting { type filter hook prerouting priority -150; policy accept; jump istio-prerouting; }
    chain output { type route hook output priority -150; policy accept; jump istio-output; }
    chain istio-prerouting {
        meta mark and 0xfff == 0x539 counter ct mark set ct mark and 0xfffff000 or 0x111
    }
    chain istio-output {
        ct mark and 0xfff == 0x111 counter meta mark set ct mark
    }
}
EOF
}
# g, h: the policy routing istio-cni adds beside either rule set.
inpod_routing() { # add|del
    local f
    for f in -4 -6; do
        in_ns a ip "$f" rule "$1" fwmark 0x111/0xfff pref 32764 lookup 100 || return 1
    done
    if [ "$1" = add ]; then
        in_ns a ip -4 route add local 0.0.0.0/0 dev lo table 100 || return 1
        in_ns a ip -6 route add local ::/0 dev lo table 100 || return 1
    else
        in_ns a ip -4 route flush table 100 || return 1
        in_ns a ip -6 route flush table 100 || return 1
    fi
}
inpod_netfilter_setup() { # iptables|nft
    start_pod_haproxy iptables || return 1
    if [ "$1" = iptables ]; then
        inpod_iptables_rules | in_ns a "$IPTABLES-restore" -w || return 1
    else
        inpod_nft_rules | in_ns a nft -f - || return 1
    fi
    inpod_routing add
}
inpod_netfilter_teardown() {
    local rc=0
    inpod_routing del || rc=1
    # Tables gone, not just emptied: an empty nat chain keeps conntrack
    # hooked into the netns (FINDINGS).
    in_ns a "$IPTABLES" -w -t nat -F 2>/dev/null
    in_ns a "$IPTABLES" -w -t mangle -F 2>/dev/null
    in_ns a nft flush ruleset || rc=1
    stop_pod_haproxy
    return "$rc"
}
# Connections the outbound REDIRECT rule sent to 15001 (nat rules see the
# first packet of a connection only).
inpod_redirected() { # iptables|nft
    if [ "$1" = iptables ]; then
        in_ns a "$IPTABLES" -w -t nat -L ISTIO_OUTPUT -v -n -x | awk '/redir ports 15001/ { s += $1 } END { print s + 0 }'
    else
        in_ns a nft list chain inet istio-ambient-nat istio-output |
            awk '/redirect to :15001/ { for (i = 1; i < NF; i++) if ($i == "packets") s += $(i + 1) } END { print s + 0 }'
    fi
}

# d-f: ztredir's node mode.
ztredir_node_setup() { # mode round
    local am=tcx ct=()
    [ "$1" = tc ] && am=tc
    [ "$1" = tcx-noct ] && ct=(--no-conntrack)
    PIN=$bpffs/$1-$2
    ZT_ACTIVE=node
    zt --attach-mode "$am" ztunnel set --iface vzt --netns "$P-zt" --host-ip "$HOSTIP" "${ct[@]}" \
        >"$WORK/raw/r$2-$1/setup.txt" 2>&1 || return 1
    zt --attach-mode "$am" attach va >>"$WORK/raw/r$2-$1/setup.txt" 2>&1 || return 1
}
ztredir_node_teardown() { # mode
    local rc=0
    zt detach --all >/dev/null || rc=1
    zt ztunnel clear >/dev/null || rc=1
    ZT_ACTIVE=
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
    return "$rc"
}

# i: ztredir's in-pod mode: BPF inside the workload netns steers to the
# in-pod proxy's transparent listeners and passes what carries mark 0x539.
ztredir_inpod_setup() { # round
    local out=$WORK/raw/r$1-inpod/setup.txt
    start_pod_haproxy bpf || return 1
    PIN=$bpffs/inpod-$1
    ZT_ACTIVE=inpod
    zt ztunnel set --in-pod --host-ip "$HOSTIP" >"$out" 2>&1 || return 1
    zt attach --netns "$P-a" eth0 --workload default/a --service-account a --ip "$CLI" >>"$out" 2>&1 || return 1
}
ztredir_inpod_teardown() {
    local rc=0
    zt detach --netns "$P-a" >/dev/null || rc=1
    zt uninstall >/dev/null || rc=1
    ZT_ACTIVE=
    rm -rf "$PIN"
    stop_pod_haproxy
    return "$rc"
}

is_ztredir() { case $1 in tcx | tc | tcx-noct | inpod) return 0 ;; esac; return 1; }
is_inpod() { case $1 in inpod-iptables | inpod-nft | inpod) return 0 ;; esac; return 1; }

mode_setup() { # mode round; every step checked (set -e does not apply here)
    case $1 in
    direct | explicit) ;;
    tproxy) tproxy_setup ;;
    tcx | tc | tcx-noct) ztredir_node_setup "$1" "$2" ;;
    inpod-iptables) inpod_netfilter_setup iptables ;;
    inpod-nft) inpod_netfilter_setup nft ;;
    inpod) ztredir_inpod_setup "$2" ;;
    esac
}
mode_teardown() { # mode
    local rc=0
    case $1 in
    direct | explicit) ;;
    tproxy) tproxy_teardown || rc=1 ;;
    tcx | tc | tcx-noct) ztredir_node_teardown "$1" || rc=1 ;;
    inpod-iptables | inpod-nft) inpod_netfilter_teardown || rc=1 ;;
    inpod) ztredir_inpod_teardown || rc=1 ;;
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
# the node, ztunnel and client namespaces.
net_state() {
    local ns
    for ns in node zt a; do
        echo "## $ns"
        in_ns "$ns" ip rule
        in_ns "$ns" ip -6 rule
        in_ns "$ns" ip route show table all | grep -v '^multicast\|^ff00::/8' || true
        in_ns "$ns" ip -6 route show table all | grep -v '^multicast\|^ff00::/8' || true
        in_ns "$ns" tc qdisc show
        in_ns "$ns" nft list ruleset
        in_ns "$ns" sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.ipv4.conf.all.rp_filter \
            net.ipv4.conf.all.accept_local
    done
    in_ns node sysctl net.ipv4.conf.vzt.rp_filter net.ipv4.conf.va.rp_filter
    in_ns a sysctl net.ipv4.conf.eth0.accept_local net.ipv4.conf.eth0.rp_filter net.ipv4.conf.lo.accept_local
    local d
    for d in va vzt; do in_ns node tc filter show dev "$d" ingress; in_ns node tc filter show dev "$d" egress; done
    in_ns zt tc filter show dev eth0 ingress
    for d in eth0 lo; do in_ns a tc filter show dev "$d" ingress; in_ns a tc filter show dev "$d" egress; done
}

# Where the client connects: the explicit proxy's own address, or the
# server's (intercepted, or not at all in direct mode).
http_url() {
    if [ "$1" = explicit ]; then echo "http://$ZTIP:8080/f"; else echo "http://$SRV:80/f"; fi
}
answer_url() {
    if [ "$1" = explicit ]; then echo "http://$ZTIP:8081/"; else echo "http://$SRV:81/"; fi
}
iperf_target() {
    if [ "$1" = explicit ]; then echo "$ZTIP 5202"; else echo "$SRV 5201"; fi
}
# The frontend that must see every connection of a mode.
mode_frontend() {
    case $1 in
    direct) echo none ;;
    explicit) echo explicit ;;
    inpod-iptables | inpod-nft | inpod) echo pod_out ;;
    *) echo tproxy ;;
    esac
}

# ---------------------------------------------------------------------------
# One mode, one round.

# The in-pod modes' inbound path: a connection from the remote server to the
# pod's app must go through the in-pod proxy's 15006 listener, and the app
# must see the original client's address (the proxy's leg into it is
# spoofed, and the app's replies find their way back only through the
# connmark/fwmark -> local rules, or their BPF equivalent).
inbound_check() { # round mode
    local hs0 hs1 body n
    hs0=$(haproxy_sessions)
    body=$(in_ns remote curl -sS --max-time 3 "http://$CLI:8081/" 2>&1) || true
    hs1=$(haproxy_sessions)
    n=$(($(fe_count "$hs1" pod_in) - $(fe_count "$hs0" pod_in)))
    [ "$body" = "peer=$SRV" ] || fail "$1" "$2" "inbound: the app answered '${body:0:120}', expected peer=$SRV"
    [ "$n" -ge 1 ] || fail "$1" "$2" "inbound: the 15006 listener saw $n sessions"
}

run_mode() { # round mode
    local r=$1 m=$2 url aurl peer hs0 hs1 t0 t1
    local dir=$WORK/raw/r$r-$m
    mkdir -p "$dir"
    url=$(http_url "$m")
    aurl=$(answer_url "$m")
    if ! mode_setup "$m" "$r"; then
        fail "$r" "$m" "setup failed"
        mode_teardown "$m" 2>/dev/null || true
        return
    fi
    is_ztredir "$m" && zt stats reset >/dev/null

    hs0=$(haproxy_sessions)
    t0=$(client_tcp)
    local ns
    for ns in a zt remote node; do in_ns "$ns" nstat -asz >"$dir/nstat-$ns.before" 2>&1 || true; done

    # Which address did the server see? The client's (direct, and the in-pod
    # proxy, which connects from the pod's address), or the ztunnel pod's.
    peer=$(in_ns a env LD_PRELOAD="$WORK/somark.so" SOPORTS="$PORTS_WEB" \
        curl -sS -o /dev/null -D - --max-time 3 "$url" 2>"$dir/curl.err" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "x-peer" { print $2 }') || true
    local want=$ZTIP
    [ "$m" = direct ] || is_inpod "$m" && want=$CLI
    if [ "$peer" != "$want" ]; then
        fail "$r" "$m" "server saw peer '${peer:-none}', expected $want ($(head -c 200 "$dir/curl.err"))"
        mode_teardown "$m" || true
        return
    fi
    is_inpod "$m" && inbound_check "$r" "$m"

    # Maximum rates (wrk, closed loop): keep-alive, connection per request,
    # and the same two against the proxy answering itself.
    local ka_rps ka_req ka_err ka_n2 ka_p50 ka_p75 ka_p90 ka_p99
    measure "$r" "$m" keep-alive "$dir/wrk-ka.txt" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url"
    read -r ka_rps ka_req ka_err ka_n2 ka_p50 ka_p75 ka_p90 ka_p99 < <(parse_wrk "$dir/wrk-ka.txt")
    local f_ka=$FOREIGN t_ka=$TRIES
    local crr_rps crr_req crr_err crr_n2 crr_p50 crr_p75 crr_p90 crr_p99
    measure "$r" "$m" conn-per-request "$dir/wrk-crr.txt" \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Connection: close' "$url"
    read -r crr_rps crr_req crr_err crr_n2 crr_p50 crr_p75 crr_p90 crr_p99 < <(parse_wrk "$dir/wrk-crr.txt")
    local f_crr=$FOREIGN t_crr=$TRIES
    local tw_cli tw_zt tw_srv
    tw_cli=$(tw_count a) tw_zt=$(tw_count zt) tw_srv=$(tw_count remote)
    local rka_rps rka_req rka_err rka_n2 rka_p50 rka_p75 rka_p90 rka_p99
    CLIENT_PORTS=$PORTS_ANSWER measure "$r" "$m" answer-keep-alive "$dir/wrk-rc-ka.txt" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$aurl"
    read -r rka_rps rka_req rka_err rka_n2 rka_p50 rka_p75 rka_p90 rka_p99 < <(parse_wrk "$dir/wrk-rc-ka.txt")
    local f_rka=$FOREIGN t_rka=$TRIES
    local rcrr_rps rcrr_req rcrr_err rcrr_n2 rcrr_p50 rcrr_p75 rcrr_p90 rcrr_p99
    CLIENT_PORTS=$PORTS_ANSWER measure "$r" "$m" answer-conn-per-request "$dir/wrk-rc-crr.txt" \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Connection: close' "$aurl"
    read -r rcrr_rps rcrr_req rcrr_err rcrr_n2 rcrr_p50 rcrr_p75 rcrr_p90 rcrr_p99 < <(parse_wrk "$dir/wrk-rc-crr.txt")
    local f_rcrr=$FOREIGN t_rcrr=$TRIES

    # Fixed rates (h2load, paced): latency percentiles from every request's
    # own time, and the CPU the requests cost. Keep-alive to nginx at
    # RATE req/s over CONNS connections; connection per request against the
    # answering proxy at CONN_RATE conn/s (one request per connection).
    local fx_n fx_err fx_n2 fx_rate fx_p50 fx_p75 fx_p90 fx_p99
    LOG=$dir/h2load-ka.log measure "$r" "$m" fixed-keep-alive "$dir/h2load-ka.txt" \
        h2load --h1 -t1 -c"$CONNS" --rps $((RATE / CONNS)) -D "$DURATION" --log-file "$dir/h2load-ka.log" "$url"
    read -r fx_n fx_err fx_n2 fx_rate fx_p50 fx_p75 fx_p90 fx_p99 < <(parse_h2load "$dir/h2load-ka.txt" "$dir/h2load-ka.log")
    local f_fx=$FOREIGN t_fx=$TRIES c_fx=$OUR_CPU mc_fx=$MACHINE_CPU
    local fc_total=$((CONN_RATE * DURATION)) fc_n fc_err fc_n2 fc_rate fc_p50 fc_p75 fc_p90 fc_p99
    LOG=$dir/h2load-rc-crr.log CLIENT_PORTS=$PORTS_ANSWER measure "$r" "$m" fixed-answer-conn-per-request "$dir/h2load-rc-crr.txt" \
        h2load --h1 -t1 -r $((CONN_RATE / 1000)) --rate-period 1ms -c "$fc_total" -n "$fc_total" \
        --log-file "$dir/h2load-rc-crr.log" "$aurl"
    read -r fc_n fc_err fc_n2 fc_rate fc_p50 fc_p75 fc_p90 fc_p99 < <(parse_h2load "$dir/h2load-rc-crr.txt" "$dir/h2load-rc-crr.log")
    local f_fc=$FOREIGN t_fc=$TRIES c_fc=$OUR_CPU mc_fc=$MACHINE_CPU

    # bulk
    local ip port gbps retr
    read -r ip port < <(iperf_target "$m")
    CLIENT_PORTS=$PORTS_BULK measure "$r" "$m" bulk "$dir/iperf3.json" iperf3 -c "$ip" -p "$port" -t "$DURATION" -J
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
    local synr rst retx a0 b0 c0 a1 b1 c1
    read -r a0 b0 c0 <<<"$t0"
    read -r a1 b1 c1 <<<"$t1"
    synr=$((a1 - a0)) rst=$((b1 - b0)) retx=$((c1 - c0))
    local fe sessions=0 s_all=0 f
    for f in tproxy explicit_http explicit_iperf explicit_answer pod_out; do
        s_all=$((s_all + $(fe_count "$hs1" "$f") - $(fe_count "$hs0" "$f")))
    done
    fe=$(mode_frontend "$m")
    case $fe in
    explicit)
        for f in explicit_http explicit_iperf explicit_answer; do
            sessions=$((sessions + $(fe_count "$hs1" "$f") - $(fe_count "$hs0" "$f")))
        done ;;
    none) ;;
    *) sessions=$(($(fe_count "$hs1" "$fe") - $(fe_count "$hs0" "$fe"))) ;;
    esac

    # Evidence that the mode went where it should: every connection made
    # (curl, the wrk and h2load runs, iperf3's two) through the one frontend
    # of the mode's proxy, and none through any other.
    local conns_expected=$((1 + CONNS + crr_req + CONNS + rcrr_req + CONNS + fc_n + 2))
    if [ "$fe" = none ]; then
        [ "$s_all" = 0 ] || fail "$r" "$m" "haproxy saw $s_all sessions"
    else
        [ "$sessions" -ge "$conns_expected" ] || fail "$r" "$m" "frontend $fe saw $sessions sessions, wanted >= $conns_expected"
        [ "$sessions" = "$s_all" ] || fail "$r" "$m" "other frontends than $fe saw $((s_all - sessions)) sessions"
    fi
    local captured=0 drops=0 assigned=0 nconns=0 twreuse=0
    case $m in
    tproxy)
        captured=$(in_ns zt "$IPTABLES" -w -t mangle -L PREROUTING -v -n -x | awk '/TPROXY/ { s += $1 } END { print s + 0 }')
        [ "$captured" -gt 0 ] || fail "$r" "$m" "TPROXY rule matched no packet"
        ;;
    inpod-iptables | inpod-nft)
        captured=$(inpod_redirected "${m#inpod-}")
        [ "$captured" -ge "$conns_expected" ] || fail "$r" "$m" "REDIRECT to 15001 matched $captured connections, wanted >= $conns_expected"
        ;;
    tcx | tc | tcx-noct | inpod)
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
        case $m in
        tcx-noct) [ "$nconns" = 0 ] || fail "$r" "$m" "conns shows $nconns entries with --no-conntrack" ;;
        tcx | tc) [ "$nconns" -gt 0 ] || fail "$r" "$m" "conns shows no entry" ;;
        esac
        ;;
    esac
    # Traffic checks.
    local what req n2 err
    for what in "keep-alive $ka_req $ka_n2 $ka_err" "connection-close $crr_req $crr_n2 $crr_err" \
        "answer-keep-alive $rka_req $rka_n2 $rka_err" "answer-connection-close $rcrr_req $rcrr_n2 $rcrr_err" \
        "fixed-keep-alive $fx_n $fx_n2 $fx_err" "fixed-answer-connection-close $fc_n $fc_n2 $fc_err"; do
        read -r what req n2 err <<<"$what"
        [ "$req" -gt 0 ] && [ "$n2" = 0 ] || fail "$r" "$m" "$what: $req requests, $n2 non-2xx"
        [ "$err" = 0 ] || fail "$r" "$m" "$what: $err socket errors or failed requests"
    done
    [ "$synr" = 0 ] || fail "$r" "$m" "client retransmitted $synr SYNs (TIME_WAIT collision or drop)"
    awk -v g="$gbps" 'BEGIN { exit !(g > 0) }' || fail "$r" "$m" "iperf3 moved no data"

    mode_teardown "$m" || fail "$r" "$m" "teardown failed"

    local cpu_fx cpu_fc
    cpu_fx=$(awk -v c="$c_fx" -v n="$fx_n" 'BEGIN { printf "%.4f", (n > 0 ? c / n * 10000 : 0) }')
    cpu_fc=$(awk -v c="$c_fc" -v n="$fc_n" 'BEGIN { printf "%.4f", (n > 0 ? c / n * 10000 : 0) }')
    local kv
    for kv in ka_rps:$ka_rps ka_p50_us:$ka_p50 ka_p75_us:$ka_p75 ka_p90_us:$ka_p90 ka_p99_us:$ka_p99 \
        ka_requests:$ka_req ka_errors:$ka_err \
        crr_rps:$crr_rps crr_p50_us:$crr_p50 crr_p99_us:$crr_p99 crr_requests:$crr_req crr_errors:$crr_err \
        rc_ka_rps:$rka_rps rc_ka_p50_us:$rka_p50 rc_ka_p99_us:$rka_p99 rc_ka_errors:$rka_err \
        rc_crr_rps:$rcrr_rps rc_crr_p50_us:$rcrr_p50 rc_crr_p99_us:$rcrr_p99 rc_crr_errors:$rcrr_err \
        fx_rate:$fx_rate fx_requests:$fx_n fx_errors:$fx_err fx_p50_us:$fx_p50 fx_p75_us:$fx_p75 \
        fx_p90_us:$fx_p90 fx_p99_us:$fx_p99 fx_cpu_s:$c_fx fx_machine_cpu_s:$mc_fx fx_cpu_10k:$cpu_fx \
        fc_rate:$fc_rate fc_requests:$fc_n fc_errors:$fc_err fc_p50_us:$fc_p50 fc_p99_us:$fc_p99 \
        fc_cpu_s:$c_fc fc_machine_cpu_s:$mc_fc fc_cpu_10k:$cpu_fc \
        bulk_gbps:$gbps bulk_retrans:$retr client_syn_retrans:$synr client_rsts:$rst client_retrans:$retx \
        proxy_sessions:$sessions captured_packets:$captured listener_assigns:$assigned \
        ztredir_drops:$drops ztredir_conns:$nconns time_wait_reuse:$twreuse tw_cli:$tw_cli tw_zt:$tw_zt tw_srv:$tw_srv \
        foreign_ka_pct:$f_ka foreign_crr_pct:$f_crr foreign_rc_ka_pct:$f_rka foreign_rc_crr_pct:$f_rcrr \
        foreign_fx_pct:$f_fx foreign_fc_pct:$f_fc foreign_bulk_pct:$f_bulk \
        retries:$((t_ka + t_crr + t_rka + t_rcrr + t_fx + t_fc + t_bulk)); do
        record "$r" "$m" "${kv%%:*}" "${kv#*:}"
    done
    printf '   %-14s ka %6.0f/s | crr %5.0f/s | answer ka %6.0f/s crr %5.0f/s | %d/s p50 %4.0f p99 %5.0fus %5.2f cpu-s/10k | answer crr %d/s %5.2f cpu-s/10k | bulk %5.2f Gbit/s | others %s%%\n' \
        "$m" "$ka_rps" "$crr_rps" "$rka_rps" "$rcrr_rps" "$fx_rate" "$fx_p50" "$fx_p99" "$cpu_fx" "$fc_rate" "$cpu_fc" "$gbps" \
        "$(printf '%s\n' "$f_ka" "$f_crr" "$f_rka" "$f_rcrr" "$f_fx" "$f_fc" "$f_bulk" | sort -g | tail -n1)" >&2
}

# ---------------------------------------------------------------------------
# The seed's experiment, one mode: maximum keep-alive requests/s (wrk) and
# latency at a fixed SWEEP_RATE (h2load) for each connection count. Recorded
# as round 0, metrics sweep_qps@N, sweep_p50_us@N, sweep_p75_us@N, ...
sweep_mode() { # mode
    local m=$1 url c hs0 hs1 t0 t1 fe sessions=0 expected=0 f
    local dir=$WORK/raw/r0-$m
    mkdir -p "$dir"
    url=$(http_url "$m")
    if ! mode_setup "$m" 0; then
        fail sweep "$m" "setup failed"
        mode_teardown "$m" 2>/dev/null || true
        return
    fi
    hs0=$(haproxy_sessions)
    t0=$(client_tcp)
    local line="   $m:"
    for c in "${SWEEP_CONNS[@]}"; do
        local rps req err n2 p50 p75 p90 p99 n ferr fn2 rate
        measure sweep "$m" "sweep-qps@$c" "$dir/wrk-c$c.txt" wrk -t1 -c"$c" -d"${SWEEP_DUR}s" --latency "$url"
        read -r rps req err n2 _ _ _ _ < <(parse_wrk "$dir/wrk-c$c.txt")
        record 0 "$m" "sweep_qps@$c" "$rps"
        record 0 "$m" "foreign_sweep_qps_pct@$c" "$FOREIGN"
        LOG=$dir/h2load-c$c.log measure sweep "$m" "sweep-latency@$c" "$dir/h2load-c$c.txt" \
            h2load --h1 -t1 -c"$c" --rps $((SWEEP_RATE / c)) -D "$SWEEP_DUR" --log-file "$dir/h2load-c$c.log" "$url"
        read -r n ferr fn2 rate p50 p75 p90 p99 < <(parse_h2load "$dir/h2load-c$c.txt" "$dir/h2load-c$c.log")
        for f in rate:$rate p50_us:$p50 p75_us:$p75 p90_us:$p90 p99_us:$p99; do
            record 0 "$m" "sweep_${f%%:*}@$c" "${f#*:}"
        done
        record 0 "$m" "foreign_sweep_lat_pct@$c" "$FOREIGN"
        [ "$req" -gt 0 ] && [ "$err" = 0 ] && [ "$n2" = 0 ] || fail sweep "$m" "wrk -c$c: $req requests, $err errors, $n2 non-2xx"
        [ "$n" -gt 0 ] && [ "$ferr" = 0 ] && [ "$fn2" = 0 ] || fail sweep "$m" "h2load -c$c: $n requests, $ferr failed, $fn2 non-2xx"
        expected=$((expected + 2 * c))
        line+=" c$c $(printf '%.0f' "$rps")/s p75 ${p75}us;"
    done
    hs1=$(haproxy_sessions)
    t1=$(client_tcp)
    fe=$(mode_frontend "$m")
    case $fe in
    none) ;;
    explicit) sessions=$(($(fe_count "$hs1" explicit_http) - $(fe_count "$hs0" explicit_http))) ;;
    *) sessions=$(($(fe_count "$hs1" "$fe") - $(fe_count "$hs0" "$fe"))) ;;
    esac
    [ "$fe" = none ] || [ "$sessions" -ge "$expected" ] || fail sweep "$m" "frontend $fe saw $sessions sessions, wanted >= $expected"
    [ "${t1%% *}" = "${t0%% *}" ] || fail sweep "$m" "client retransmitted $((${t1%% *} - ${t0%% *})) SYNs"
    mode_teardown "$m" || fail sweep "$m" "teardown failed"
    log "$line"
}

# ---------------------------------------------------------------------------
BASELINE=$(net_state)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date +%s)
log "== $ROUNDS round(s) x ${#MODES[@]} modes, ${DURATION}s per measurement, $CONNS connections," \
    "fixed rates $RATE req/s and $CONN_RATE conn/s; CPUs: client $CPU_CLIENT, proxy $CPU_PROXY, server $CPU_SERVER"
[ -z "$INPOD_NOTE" ] || log "   ($INPOD_NOTE)"
n=${#MODES[@]}
for r in $(seq "$ROUNDS"); do
    log "-- round $r/$ROUNDS"
    # Rotate the order each round so no mode always runs first or last.
    for i in $(seq 0 $((n - 1))); do
        wait_quiet
        run_mode "$r" "${MODES[$(((i + r - 1) % n))]}"
    done
done
if [ ${#SWEEP_CONNS[@]} -gt 0 ]; then
    log "-- sweep: connections ${SWEEP_CONNS[*]}, ${SWEEP_DUR}s per point, latency at $SWEEP_RATE req/s"
    for i in $(seq 0 $((n - 1))); do
        wait_quiet
        sweep_mode "${MODES[$i]}"
    done
fi
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
    echo "nft=$(nft --version)"
    echo "h2load=$(h2load --version 2>&1 | awk 'NR == 1 { print $2 }')"
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
    echo "rate=$RATE"
    echo "conn_rate=$CONN_RATE"
    echo "sweep=${SWEEP_CONNS[*]}"
    echo "sweep_duration=$SWEEP_DUR"
    echo "sweep_rate=$SWEEP_RATE"
    echo "quiet_wait=$QUIET_WAIT"
    echo "wait_budget=$WAIT_BUDGET"
    echo "wait_budget_left=$BUDGET_LEFT"
    [ -z "$INPOD_NOTE" ] || echo "note=$INPOD_NOTE"
    echo "busy_pct=$BUSY_PCT"
    echo "retries=$RETRIES"
    echo "loadavg_before=$LOAD0"
    echo "loadavg_after=$LOAD1"
    echo "elapsed=$ELAPSED"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host=$(hostname -s)"
    for f in "${FAILS[@]}"; do echo "fail=$f"; done
} >"$BASE.meta"
# The report can be made again from the two: report.py X.csv X.meta X >X.md
python3 "$BENCH/report.py" "$BASE.csv" "$BASE.meta" "$BASE" >"$BASE.md"
cat "$BASE.md"
log "== report: $BASE.md, raw: $BASE.csv (${ELAPSED}s)"
if [ ${#FAILS[@]} -gt 0 ]; then
    log "== FAILED checks:"
    for f in "${FAILS[@]}"; do log "   $f"; done
    exit 1
fi
