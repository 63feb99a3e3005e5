#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The whole ztredir test suite, as root: installs what it needs, checks
# formatting and lints, then runs the unit tests and the integration tests
# (real programs, real namespaces, real traffic through a real proxy).
#
#   scripts/test.sh            everything
#   scripts/test.sh NAME...    only tests whose name contains NAME
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (the tests load BPF programs and create namespaces)" >&2; exit 2; }

scripts/install-deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo build-static (the release binary, glibc linked in too)"
cargo build-static
echo "== ztredir 0.1.0 (commit 32abf0e), for the upgrade tests"
old=$(scripts/build-release.sh 32abf0e 0.1.0)
echo "$old"
echo "== cargo test"
# ZTREDIR_STATIC: the static binary linkage::static_build_runs_in_an_empty_root checks.
# ZTREDIR_OLD: the release the upgrade tests upgrade from.
ZTREDIR_STATIC=$PWD/target/release/ztredir ZTREDIR_OLD=$old cargo test --all-targets -- "$@"
echo "== leftovers"
# Every test builds its world (the testbed) in namespaces named
# ztr<pid>x<n>-* and tears them down; anything left is a bug.
# The benchmarks' smoke runs use ztrb<pid>-* and ztrc<pid>-* (testbed up).
left=$(ip netns list | awk '$1 ~ /^ztr([0-9]+x[0-9]+|[bc][0-9]+)-/ {print $1}')
procs=$(pgrep -f 'ztunnel_standin|ztredir-bench|ztredir-control|ztredir .*zds --socket' || true)
if [ -n "$left$procs" ]; then
    echo "test.sh: left behind: namespaces [$left] processes [$procs]" >&2
    exit 1
fi
echo "none"
