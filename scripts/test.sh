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
echo "== cargo test"
cargo test --all-targets -- "$@"
