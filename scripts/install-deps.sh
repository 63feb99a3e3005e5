#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what building and testing ztredir needs on Debian 12, when missing.
set -euo pipefail
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# libelf-dev and zlib1g-dev also carry libelf.a and libz.a, which the binary links statically
# (libbpf-sys's "static" feature): nothing else is needed for a static binary.
for p in clang llvm libelf-dev zlib1g-dev pkg-config iproute2 iputils-ping ethtool curl python3 procps util-linux time; do
    have "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The benchmarks' smoke runs need haproxy, nginx, wrk, h2load, iperf3, iptables, nft, gnuplot and a C compiler.
"$(dirname "$0")/../bench/install-deps.sh" >/dev/null
command -v cargo >/dev/null || { echo "install-deps: cargo not found (install Rust with rustup)" >&2; exit 1; }
