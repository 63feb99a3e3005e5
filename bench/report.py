#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Turns bench/e2e.sh's raw per-round numbers (CSV: round,mode,metric,value)
and its run description (key=value lines) into the markdown report."""

import csv
import statistics
import sys
from collections import defaultdict

MODES = [
    ("direct", "a direct (no proxy)"),
    ("explicit", "b explicit proxy"),
    ("tproxy", "c iptables TPROXY"),
    ("tcx", "d ztredir TCX"),
    ("tc", "e ztredir tc"),
    ("tcx-noct", "f ztredir TCX, no conntrack"),
]
# metric, heading, format, higher is better
METRICS = [
    ("ka_rps", "keep-alive req/s", "{:,.0f}", True),
    ("ka_p50_us", "keep-alive p50 µs", "{:,.0f}", False),
    ("ka_p99_us", "keep-alive p99 µs", "{:,.0f}", False),
    ("crr_rps", "conn-per-request conn/s", "{:,.0f}", True),
    ("bulk_gbps", "bulk Gbit/s", "{:,.2f}", True),
]
CHECKS = [
    ("proxy_sessions", "haproxy sessions"),
    ("captured_packets", "captured packets"),
    ("listener_assigns", "sk_lookup assigns"),
    ("ztredir_drops", "ztredir drops"),
    ("time_wait_reuse", "TIME_WAIT recycled"),
    ("ka_errors", "wrk errors (ka)"),
    ("crr_errors", "wrk errors (crr)"),
    ("client_syn_retrans", "client SYN retrans"),
    ("client_rsts", "client RSTs"),
    ("bulk_retrans", "iperf3 retrans"),
    ("foreign_pct", "others' CPU % (max)"),
    ("retries", "repeated"),
]
FOREIGN = {"foreign_ka_pct": "keep-alive", "foreign_crr_pct": "conn-per-request", "foreign_bulk_pct": "bulk"}


def main():
    raw, meta_path = sys.argv[1], sys.argv[2]
    data = defaultdict(dict)  # (mode, metric) -> {round: value}
    for row in csv.DictReader(open(raw)):
        if not row["value"]:
            continue
        data[(row["mode"], row["metric"])][int(row["round"])] = float(row["value"])
        if row["metric"] in FOREIGN:
            k = (row["mode"], "foreign_pct")
            r = int(row["round"])
            data[k][r] = max(data[k].get(r, 0.0), float(row["value"]))
    meta, fails = {}, []
    for line in open(meta_path):
        k, _, v = line.rstrip("\n").partition("=")
        if k == "fail":
            fails.append(v)
        else:
            meta[k] = v
    modes = [(m, name) for m, name in MODES if any((m, "ka_rps") == k for k in data)]

    out = []
    p = out.append
    p(f"# ztredir end-to-end benchmark, {meta.get('date', '?')}, {meta.get('host', '?')}")
    p("")
    p("| | |")
    p("|---|---|")
    for k, label in [
        ("kernel", "kernel"),
        ("cpu", "CPU"),
        ("cpus", "CPUs"),
        ("ztredir", "ztredir"),
        ("haproxy", "haproxy"),
        ("nginx", "nginx"),
        ("wrk", "wrk"),
        ("iperf3", "iperf3"),
        ("iptables", "iptables"),
    ]:
        p(f"| {label} | {meta.get(k, '?')} |")
    p(f"| rounds | {meta.get('rounds')} (interleaved, order rotated each round) |")
    p(f"| duration | {meta.get('duration')} s per measurement |")
    p(
        f"| load | wrk -t1 -c{meta.get('connections')}, {meta.get('file_size')}-byte file; "
        f"iperf3 one stream |"
    )
    p(
        f"| CPU pinning | client (wrk, iperf3 -c) CPU {meta.get('cpu_client')}, "
        f"haproxy CPU {meta.get('cpu_proxy')}, nginx and iperf3 -s CPU {meta.get('cpu_server')} |"
    )
    p(f"| load average | before {meta.get('loadavg_before')}, after {meta.get('loadavg_after')} |")
    p(f"| elapsed | {meta.get('elapsed')} s |")
    p("")
    p("## Medians (min–max over rounds)")
    p("")
    p("| mode | " + " | ".join(h for _, h, _, _ in METRICS) + " |")
    p("|---|" + "---:|" * len(METRICS))
    for m, name in modes:
        cells = []
        for key, _, fmt, _ in METRICS:
            vals = list(data.get((m, key), {}).values())
            if not vals:
                cells.append("–")
                continue
            med = statistics.median(vals)
            cell = fmt.format(med)
            if len(vals) > 1:
                cell += f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
            cells.append(cell)
        p(f"| {name} | " + " | ".join(cells) + " |")
    p("")
    for base, bname in [("explicit", "b explicit proxy"), ("tproxy", "c iptables TPROXY")]:
        if not any(m == base for m, _ in modes):
            continue
        p(f"## Ratio to {bname}, same round (median of per-round ratios)")
        p("")
        p(
            "Rates: above 1 is faster than the baseline. Latencies: above 1 is slower. "
            "Each round's value is divided by the baseline's value in the same round."
        )
        p("")
        p("| mode | " + " | ".join(h for _, h, _, _ in METRICS) + " |")
        p("|---|" + "---:|" * len(METRICS))
        for m, name in modes:
            cells = []
            for key, _, _, _ in METRICS:
                a, b = data.get((m, key), {}), data.get((base, key), {})
                ratios = [a[r] / b[r] for r in a if r in b and b[r] > 0]
                if not ratios:
                    cells.append("–")
                    continue
                cell = f"{statistics.median(ratios):.2f}"
                if len(ratios) > 1:
                    cell += f" ({min(ratios):.2f}–{max(ratios):.2f})"
                cells.append(cell)
            p(f"| {name} | " + " | ".join(cells) + " |")
        p("")
    p("## Path checks (sums over rounds)")
    p("")
    p(
        "haproxy sessions: new sessions on haproxy's frontends during the mode (0 for direct). "
        "captured packets: TPROXY rule matches (c) or ztredir capture-outbound packets (d–f). "
        "sk_lookup assigns: connections ztredir's sk_lookup program handed to the listener. "
        "TIME_WAIT recycled: SYNs ztredir saw meet one of the proxy's TIME_WAIT sockets "
        "(`time-wait-reuse`; counted by ztredir versions that have it)."
    )
    p("")
    p("| mode | " + " | ".join(h for _, h in CHECKS) + " |")
    p("|---|" + "---:|" * len(CHECKS))
    for m, name in modes:
        cells = []
        for key, _ in CHECKS:
            vals = list(data.get((m, key), {}).values())
            if not vals:
                cells.append("–")
            elif key == "foreign_pct":
                cells.append(f"{max(vals):.1f}")
            else:
                cells.append(f"{sum(vals):,.0f}")
        p(f"| {name} | " + " | ".join(cells) + " |")
    p("")
    threshold = float(meta.get("busy_pct", 3))
    busy = sorted(
        (r, m, FOREIGN[k], v)
        for (m, k), vals in data.items()
        if k in FOREIGN
        for r, v in vals.items()
        if v >= threshold
    )
    if busy:
        p(
            f"**Disturbed measurements** (other processes used {threshold:g}% or more of the "
            "machine even after the retries): "
            + ", ".join(f"{m} {k} round {r} ({v:.1f}%)" for r, m, k, v in busy)
            + ". They are included in the medians; compare with the min–max ranges."
        )
        p("")
    if fails:
        p("## FAILED checks")
        p("")
        for f in fails:
            p(f"- {f}")
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
