#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Installs what bench/e2e.sh needs on Debian 12, when missing: haproxy,
# nginx-light, wrk, h2load (nghttp2-client), iperf3, iptables and nftables,
# gnuplot-nox (the report's charts), gcc and libc6-dev (the in-pod proxy's
# SO_MARK shim, bench/somark.c), plus the basics it uses: iproute2, curl,
# python3, util-linux, procps. Then checks, in a throwaway network
# namespace, that iptables' TPROXY target works and that the in-pod rule
# sets (iptables REDIRECT/CONNMARK, their nftables form) load.
#
# Debian's postinst scripts start nginx and haproxy as host services. For the
# duration of the install a temporary /usr/sbin/policy-rc.d (exit 101) stops
# that; it is only created when none exists, and removed afterwards.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-deps: run as root" >&2; exit 2; }

have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=()
# Any of nginx's flavours will do; nginx-light is the smallest.
if ! command -v nginx >/dev/null; then need+=(nginx-light); fi
for p in haproxy wrk nghttp2-client iperf3 iptables nftables gnuplot-nox gcc libc6-dev iproute2 curl python3 util-linux procps coreutils; do
    have "$p" || need+=("$p")
done

POLICY=/usr/sbin/policy-rc.d
OURS=0
remove_policy() {
    if [ "$OURS" = 1 ]; then rm -f "$POLICY"; fi
    OURS=0
}
trap remove_policy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ ${#need[@]} -gt 0 ]; then
    echo "== installing: ${need[*]}"
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\n# temporary, from ztredir bench/install-deps.sh: do not start services\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        OURS=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # iperf3's debconf question (start a daemon?) defaults to no.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    remove_policy
fi

# TPROXY through iptables: iptables-nft needs nf_tables with nft_compat and
# xt_TPROXY (CONFIG_NFT_COMPAT, CONFIG_NETFILTER_XT_TARGET_TPROXY,
# CONFIG_NF_TPROXY_IPV4), iptables-legacy needs ip_tables and xt_TPROXY.
# Try both in a namespace of our own; e2e.sh uses $IPTABLES (default iptables).
NS=ztrbdeps$$
ip netns add "$NS"
trap 'ip netns del "$NS" 2>/dev/null || true; remove_policy' EXIT
ok=()
for ipt in iptables iptables-nft iptables-legacy; do
    command -v "$ipt" >/dev/null || continue
    if nsenter --net="/run/netns/$NS" "$ipt" -w -t mangle -A PREROUTING -i lo -p tcp \
        -j TPROXY --on-port 15001 --tproxy-mark 0x400/0xfff 2>/dev/null; then
        ok+=("$ipt")
    fi
done
# The in-pod modes' rules: REDIRECT, CONNMARK and mark matches (iptables),
# and nftables' redirect and ct mark statements.
inpod=ok
nsenter --net="/run/netns/$NS" iptables -w -t nat -A OUTPUT -p tcp -m mark ! --mark 0x539/0xfff \
    -j REDIRECT --to-ports 15001 2>/dev/null || inpod="iptables REDIRECT failed"
nsenter --net="/run/netns/$NS" iptables -w -t mangle -A OUTPUT -m connmark --mark 0x111/0xfff \
    -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff 2>/dev/null || inpod="iptables CONNMARK failed"
nsenter --net="/run/netns/$NS" nft -f - 2>/dev/null <<'EOF' || inpod="nft redirect/ct mark failed"
table inet ztrbdeps {
    chain output { type nat hook output priority -100; policy accept; meta l4proto tcp meta mark and 0xfff != 0x539 redirect to :15001; }
    chain pre { type filter hook prerouting priority -150; policy accept; meta mark and 0xfff == 0x539 ct mark set ct mark and 0xfffff000 or 0x111; }
}
EOF
ip netns del "$NS"
echo "== $(iptables --version); TPROXY works with: ${ok[*]:-nothing}; in-pod rule sets: $inpod"
[ "$inpod" = ok ] || echo "install-deps: the in-pod modes will fail ($inpod)" >&2
case " ${ok[*]} " in
*" iptables "*) ;;
*" iptables-legacy "*)
    echo "install-deps: run e2e.sh with IPTABLES=iptables-legacy (see bench/README.md)" >&2 ;;
*)
    echo "install-deps: no iptables variant can use TPROXY here: the kernel lacks xt_TPROXY/nft_compat;" \
        "e2e.sh's tproxy mode will fail (run the others with --modes)" >&2
    exit 1 ;;
esac
exit 0
