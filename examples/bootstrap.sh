#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# Node bootstrap (cloud-init runcmd, a systemd unit, a DaemonSet's init
# container): wait for the ztunnel netns, converge the node to its node
# file, and print the doctor's report.
#
# Environment:
#   ZTREDIR          the ztredir binary (default: ztredir on PATH)
#   NODE_FILE        the node file (default: /etc/ztredir/node.yaml)
#   ZTUNNEL_NETNS    wait until /run/netns/$ZTUNNEL_NETNS exists (optional)
#   WAIT_SECONDS     how long to wait for it (default: 120)
#   ZTREDIR_PIN_DIR  ztredir's pin directory (default: /sys/fs/bpf/ztredir)
#
# Exits with apply's status: 0 converged, 1 failed (and rolled back),
# 2 bad file or unknown interface (nothing changed).
set -eu

ZTREDIR=${ZTREDIR:-ztredir}
NODE_FILE=${NODE_FILE:-/etc/ztredir/node.yaml}
WAIT_SECONDS=${WAIT_SECONDS:-120}

if [ -n "${ZTUNNEL_NETNS:-}" ]; then
    waited=0
    while [ ! -e "/run/netns/$ZTUNNEL_NETNS" ]; do
        if [ "$waited" -ge "$WAIT_SECONDS" ]; then
            echo "bootstrap: netns $ZTUNNEL_NETNS did not appear in ${WAIT_SECONDS}s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
fi

# Show the plan, then make it so (apply validates everything first).
"$ZTREDIR" apply --dry-run -f "$NODE_FILE"
"$ZTREDIR" apply -f "$NODE_FILE"

# A failed check is reported, not fatal: ztunnel may not be listening yet.
"$ZTREDIR" doctor || echo "bootstrap: doctor reports failures (see above)" >&2
