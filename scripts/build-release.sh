#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds an earlier ztredir release from this repository's own history, once,
# into target/ztredir-<version>-<commit>/, and prints the binary's path. The
# upgrade tests set a node up with it (scripts/test.sh passes the path in
# ZTREDIR_OLD). The commit is named by hash: a clone may lack the tags.
#
#   scripts/build-release.sh COMMIT VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$1 version=$2
dir="target/ztredir-$version-$commit"
bin="$dir/target/debug/ztredir"
if [ ! -x "$bin" ]; then
    if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
        # A shallow clone: try to get the history it lacks.
        git fetch --quiet --unshallow >/dev/null 2>&1 || true
    fi
    git cat-file -e "$commit^{commit}" 2>/dev/null || {
        echo "build-release: commit $commit (ztredir $version) is not in this clone's history" >&2
        exit 1
    }
    rm -rf "$dir"
    mkdir -p "$dir"
    git archive "$commit" | tar -x -C "$dir"
    (cd "$dir" && cargo build --quiet --bin ztredir) >&2
fi
echo "$PWD/$bin"
