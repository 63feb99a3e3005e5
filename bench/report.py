#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Turns bench/e2e.sh's raw per-round numbers (CSV: round,mode,metric,value;
round 0 is the connection sweep) and its run description (key=value lines)
into the markdown report, and draws the sweep's two charts with gnuplot
beside it (BASE-qps.png, BASE-p75.png) when a BASE path is given.

    report.py RAW.csv META.txt [BASE]
"""

import csv
import os
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

MODES = [
    ("direct", "a direct (no proxy)"),
    ("explicit", "b explicit proxy"),
    ("tproxy", "c iptables TPROXY"),
    ("tcx", "d ztredir TCX"),
    ("tc", "e ztredir tc"),
    ("tcx-noct", "f ztredir TCX, no conntrack"),
    ("inpod-iptables", "g in-pod iptables"),
    ("inpod-nft", "h in-pod nftables"),
    ("inpod", "i ztredir in-pod"),
]
NAME = dict(MODES)
ZTREDIR = ["tcx", "tc", "tcx-noct", "inpod"]
PEERS = ["tproxy", "inpod-iptables", "inpod-nft"]
# metric, heading, format, higher is better
MAX_RATES = [
    ("ka_rps", "keep-alive req/s", "{:,.0f}", True),
    ("crr_rps", "conn-per-request conn/s", "{:,.0f}", True),
    ("rc_ka_rps", "answer keep-alive req/s", "{:,.0f}", True),
    ("rc_crr_rps", "answer conn-per-request conn/s", "{:,.0f}", True),
    ("bulk_gbps", "bulk Gbit/s", "{:,.2f}", True),
]
FIXED = [
    ("fx_rate", "req/s reached", "{:,.0f}", True),
    ("fx_p50_us", "p50 µs", "{:,.0f}", False),
    ("fx_p75_us", "p75 µs", "{:,.0f}", False),
    ("fx_p90_us", "p90 µs", "{:,.0f}", False),
    ("fx_p99_us", "p99 µs", "{:,.0f}", False),
    ("fx_cpu_10k", "CPU s / 10k req", "{:,.3f}", False),
]
FIXED_CRR = [
    ("fc_rate", "conn/s reached", "{:,.0f}", True),
    ("fc_p50_us", "p50 µs", "{:,.0f}", False),
    ("fc_p99_us", "p99 µs", "{:,.0f}", False),
    ("fc_cpu_10k", "CPU s / 10k req", "{:,.3f}", False),
    ("fc_overhead_10k", "above explicit, CPU s / 10k", "{:,.3f}", False),
]
# The ratio tables' columns: the rates, and the fixed-rate latency and CPU.
RATIO_METRICS = MAX_RATES + [
    ("fx_p50_us", "fixed p50", "", False),
    ("fx_p99_us", "fixed p99", "", False),
    ("fx_cpu_10k", "fixed CPU/req", "", False),
    ("fc_p99_us", "answer crr p99", "", False),
    ("fc_cpu_10k", "answer crr CPU/req", "", False),
]
CHECKS = [
    ("proxy_sessions", "proxy sessions"),
    ("captured_packets", "captured"),
    ("listener_assigns", "sk_lookup assigns"),
    ("ztredir_drops", "ztredir drops"),
    ("time_wait_reuse", "TIME_WAIT recycled"),
    ("ka_errors", "errors (ka)"),
    ("crr_errors", "errors (crr)"),
    ("fx_errors", "errors (fixed)"),
    ("fc_errors", "errors (fixed crr)"),
    ("client_syn_retrans", "client SYN retrans"),
    ("client_rsts", "client RSTs"),
    ("bulk_retrans", "iperf3 retrans"),
    ("foreign_pct", "others' CPU % (max)"),
    ("retries", "repeated"),
]
# Which measurement each metric comes from, for the disturbed marks.
SOURCE = {
    "ka": "foreign_ka_pct",
    "crr": "foreign_crr_pct",
    "rc_ka": "foreign_rc_ka_pct",
    "rc_crr": "foreign_rc_crr_pct",
    "fx": "foreign_fx_pct",
    "fc": "foreign_fc_pct",
    "bulk": "foreign_bulk_pct",
}
FOREIGN_NAMES = {
    "foreign_ka_pct": "keep-alive",
    "foreign_crr_pct": "conn-per-request",
    "foreign_rc_ka_pct": "answer keep-alive",
    "foreign_rc_crr_pct": "answer conn-per-request",
    "foreign_fx_pct": "fixed-rate keep-alive",
    "foreign_fc_pct": "fixed-rate answer conn-per-request",
    "foreign_bulk_pct": "bulk",
}


def source_of(metric):
    for prefix in ("rc_ka", "rc_crr", "ka", "crr", "fx", "fc", "bulk"):
        if metric.startswith(prefix + "_"):
            return SOURCE[prefix]
    return None


class Run:
    def __init__(self, raw, meta_path):
        self.data = defaultdict(dict)  # (mode, metric) -> {round: value}
        self.sweep = defaultdict(dict)  # (mode, metric) -> {connections: value}
        for row in csv.DictReader(open(raw)):
            if not row["value"]:
                continue
            r, m, k, v = int(row["round"]), row["mode"], row["metric"], float(row["value"])
            if r == 0:
                name, _, c = k.partition("@")
                self.sweep[(m, name)][int(c)] = v
                continue
            self.data[(m, k)][r] = v
            if k in FOREIGN_NAMES:
                key = (m, "foreign_pct")
                self.data[key][r] = max(self.data[key].get(r, 0.0), v)
        self.meta, self.fails, self.notes = {}, [], []
        for line in open(meta_path):
            k, _, v = line.rstrip("\n").partition("=")
            if k == "fail":
                self.fails.append(v)
            elif k == "note":
                self.notes.append(v)
            else:
                self.meta[k] = v
        self.threshold = float(self.meta.get("busy_pct", 3))
        # The redirect's own cost: CPU per request above the explicit proxy's
        # in the same round (redirect-cost scenario, connection per request).
        base = self.data.get(("explicit", "fc_cpu_10k"), {})
        for m, _ in MODES:
            vals = self.data.get((m, "fc_cpu_10k"), {})
            for r, v in vals.items():
                if r in base:
                    self.data[(m, "fc_overhead_10k")][r] = v - base[r]
                    self.data[(m, "foreign_fc_overhead")][r] = max(
                        self.data[(m, "foreign_fc_pct")].get(r, 0), self.data[("explicit", "foreign_fc_pct")].get(r, 0)
                    )
        self.modes = [(m, n) for m, n in MODES if (m, "ka_rps") in self.data or (m, "sweep_qps") in self.sweep]
        self.present = {m for m, _ in self.modes}

    def vals(self, m, k):
        return self.data.get((m, k), {})

    def disturbed(self, m, k, r):
        src = "foreign_fc_overhead" if k == "fc_overhead_10k" else source_of(k)
        if not src:
            return False
        return self.data.get((m, src), {}).get(r, 0) >= self.threshold

    def ratios(self, m, base, k):
        a, b = self.vals(m, k), self.vals(base, k)
        return {r: a[r] / b[r] for r in a if r in b and b[r] > 0}

    def clean_rounds(self, m, base, k, rounds):
        """Of `rounds`, those where neither side's measurement was
        disturbed, when at least two are, else all of them; and the note
        for the cell: "[2/3 rounds]", or "†" when all had to be used and
        some were disturbed."""
        rounds = list(rounds)
        clean = [r for r in rounds if not self.disturbed(m, k, r) and not self.disturbed(base, k, r)]
        if len(clean) >= 2:
            return clean, (f" [{len(clean)}/{len(rounds)} rounds]" if len(clean) < len(rounds) else "")
        return rounds, (" †" if len(clean) < len(rounds) else "")

    def clean_ratios(self, m, base, k):
        """The same-round ratios over clean_rounds, and its note."""
        rs = self.ratios(m, base, k)
        used, note = self.clean_rounds(m, base, k, rs)
        return {r: rs[r] for r in used}, note


def med_range(vals, fmt):
    if not vals:
        return "–"
    cell = fmt.format(statistics.median(vals))
    if len(vals) > 1:
        cell += f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
    return cell


def table(p, run, metrics, cell_fn):
    p("| mode | " + " | ".join(h for _, h, _, _ in metrics) + " |")
    p("|---|" + "---:|" * len(metrics))
    for m, name in run.modes:
        if (m, metrics[0][0]) not in run.data and not any((m, k) in run.data for k, *_ in metrics):
            continue
        p(f"| {name} | " + " | ".join(cell_fn(m, k, fmt) for k, _, fmt, _ in metrics) + " |")
    p("")


def values_table(p, run, metrics):
    def cell(m, k, fmt):
        vals = run.vals(m, k)
        c = med_range(list(vals.values()), fmt)
        if any(run.disturbed(m, k, r) for r in vals):
            c += " †"
        return c

    table(p, run, metrics, cell)


def ratio_table(p, run, metrics, base):
    def cell(m, k, fmt):
        r = med_ratio(run, m, base, k)
        if not r:
            return "–"
        rng = f" ({r[1]:.2f}–{r[2]:.2f})" if r[1] != r[2] else ""
        return f"{r[0]:.2f}{rng}{r[3]}"

    table(p, run, metrics, cell)


def spread_notes(run, metrics, base):
    """Modes whose spread between rounds is larger than their distance to
    the baseline: their difference from it is not shown by this run."""
    notes = []
    for m, name in run.modes:
        # The modes the goals are about: ztredir's and its peers.
        if m == base or m not in ZTREDIR + PEERS:
            continue
        for k, h, _, _ in metrics:
            if k == "bulk_gbps":
                continue
            rs = list(run.clean_ratios(m, base, k)[0].values())
            if len(rs) < 2:
                continue
            spread = max(rs) - min(rs)
            dist = abs(statistics.median(rs) - 1)
            if spread > dist:
                notes.append(f"{name} {h} ({statistics.median(rs):.2f}, rounds {min(rs):.2f}–{max(rs):.2f})")
    return notes


PEER_GOALS = [
    # metric, heading, higher is better
    ("ka_rps", "keep-alive req/s", True),
    ("crr_rps", "conn-per-request", True),
    ("rc_ka_rps", "answer keep-alive", True),
    ("rc_crr_rps", "answer conn-per-request", True),
    ("fx_cpu_10k", "CPU/req keep-alive", False),
    ("fc_cpu_10k", "CPU/req answer crr", False),
    ("fx_p99_us", "p99 at fixed rate", False),
]


def med_ratio(run, m, base, k):
    """(median, min, max, note) of the same-round ratios, over undisturbed
    rounds when there are two or more of them (note: "2/3 rounds"), else
    over every round (note: "†" when some were disturbed)."""
    rs, note = run.clean_ratios(m, base, k)
    if not rs:
        return None
    vals = list(rs.values())
    return (statistics.median(vals), min(vals), max(vals), note)


def goals(p, run):
    """The issue's goals that this run measures, as ratios with met/missed."""
    pairs = [(z, peer) for z in ZTREDIR if z in run.present for peer in PEERS if peer in run.present]
    if not pairs:
        return
    p("## Goals: ztredir against each peer")
    p("")
    p(
        "Median of per-round ratios (ztredir / peer, same round), range in brackets. Goal: at or above "
        "every interception peer on request rates (≥ 1), at or below on CPU per request and p99 (≤ 1). "
        "✓ met, ✗ missed; ≈ the rounds spread wider than the ratio's distance from 1, so this run "
        "cannot tell the two apart on that metric. A round where either side's measurement was disturbed "
        "(others above the threshold after the retries) is left out when two or more undisturbed rounds "
        "remain ([2/3 rounds]: the rounds used); † fewer than two undisturbed rounds: all rounds shown, "
        "and no verdict."
    )
    p("")
    p("| ztredir mode / peer | " + " | ".join(h for _, h, _ in PEER_GOALS) + " |")
    p("|---|" + "---:|" * len(PEER_GOALS))
    for z, peer in pairs:
        cells = []
        for k, _, higher in PEER_GOALS:
            r = med_ratio(run, z, peer, k)
            if not r:
                cells.append("–")
                continue
            ok = r[0] >= 1.0 if higher else r[0] <= 1.0
            unclear = r[2] - r[1] > abs(r[0] - 1)
            verdict = "" if r[3] == " †" else (" ✓" if ok else " ✗") + (" ≈" if unclear else "")
            cells.append(f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f}){verdict}{r[3]}")
        p(f"| {NAME[z]} / {NAME[peer]} | " + " | ".join(cells) + " |")
    p("")
    rows = []
    for z in ZTREDIR:
        if z not in run.present:
            continue
        if "explicit" in run.present:
            r = med_ratio(run, z, "explicit", "ka_rps")
            if r:
                rows.append((f"{NAME[z]}: keep-alive req/s / explicit", r, ">= 0.98", r[0] >= 0.98))
        if "inpod-iptables" in run.present and "explicit" in run.present:
            a = run.vals(z, "fc_overhead_10k")
            b = run.vals("inpod-iptables", "fc_overhead_10k")
            both, overhead_note = run.clean_rounds(z, "inpod-iptables", "fc_overhead_10k", [r for r in a if r in b])
            if both:
                za = statistics.median([a[r] for r in both])
                gb = statistics.median([b[r] for r in both])
                ratio = za / gb if gb > 0 else float("nan")
                rows.append(
                    (
                        f"{NAME[z]}: redirect overhead / in-pod iptables' (CPU s per 10k above explicit, "
                        f"answer crr: {za:.3f} vs {gb:.3f})",
                        (ratio, ratio, ratio, overhead_note),
                        "<= 0.50",
                        gb > 0 and ratio <= 0.5,
                    )
                )
        if z == "inpod" and "inpod-iptables" in run.present:
            for k, target, label, ok in [
                ("ka_rps", ">= 1.21", "keep-alive req/s / in-pod iptables (prototype 1.25)", lambda v: v >= 1.21),
                ("crr_rps", ">= 1.21", "conn-per-request / in-pod iptables (prototype 1.21)", lambda v: v >= 1.21),
                ("fx_cpu_10k", "<= 0.84", "CPU/req / in-pod iptables (prototype 0.78-0.84)", lambda v: v <= 0.84),
            ]:
                r = med_ratio(run, z, "inpod-iptables", k)
                if r:
                    rows.append((f"{NAME[z]}: {label}", r, target, ok(r[0])))
    if rows:
        p("| goal | ratio | target | |")
        p("|---|---:|---:|---|")
        for label, (med, lo, hi, note), target, met in rows:
            rng = f" ({lo:.2f}–{hi:.2f})" if lo != hi else ""
            verdict = "not judged (disturbed)" if note == " †" else ("✓ met" if met else "✗ missed")
            p(f"| {label} | {med:.2f}{rng}{note} | {target} | {verdict} |")
        p("")


def charts(run, base):
    """The sweep's two curves as PNG (gnuplot, pngcairo). Returns the file
    names written, or a reason why none were."""
    if not run.sweep:
        return [], "no sweep in this run"
    gp = shutil.which("gnuplot")
    if not gp:
        return [], "gnuplot is not installed (bench/install-deps.sh installs gnuplot-nox)"
    modes = [m for m, _ in MODES if (m, "sweep_qps") in run.sweep]
    conns = sorted({c for (m, k), v in run.sweep.items() if k == "sweep_qps" for c in v})
    dat = base + "-sweep.dat"
    with open(dat, "w") as f:
        f.write("# connections " + " ".join(f"{m}_qps {m}_p75" for m in modes) + "\n")
        for c in conns:
            cells = []
            for m in modes:
                q = run.sweep.get((m, "sweep_qps"), {}).get(c)
                l75 = run.sweep.get((m, "sweep_p75_us"), {}).get(c)
                cells += ["?" if q is None else f"{q:.0f}", "?" if l75 is None else f"{l75 / 1000:.3f}"]
            f.write(f"{c} " + " ".join(cells) + "\n")
    out = []
    rate = run.meta.get("sweep_rate", "?")
    for which, col, ylabel, title in [
        ("qps", 0, "requests/s (max)", "Maximum keep-alive requests/s against connections"),
        ("p75", 1, "p75 latency, ms", f"p75 latency at {rate} requests/s against connections"),
    ]:
        png = f"{base}-{which}.png"
        # ztredir's modes drawn thicker than the others.
        plots = ", ".join(
            f"'{dat}' using 1:{2 + 2 * i + col} with linespoints lw {2.5 if m in ZTREDIR else 1} title '{NAME[m]}'"
            for i, m in enumerate(modes)
        )
        script = (
            "set terminal pngcairo size 900,560 font 'sans,10'\n"
            f"set output '{png}'\n"
            f"set title '{title}'\n"
            "set logscale x 2\n"
            "set xlabel 'connections'\n"
            f"set ylabel '{ylabel}'\n"
            "set key outside right top\n"
            "set grid\n"
            "set datafile missing '?'\n"
            f"set xtics ({', '.join(str(c) for c in conns)})\n"
            f"set xrange [{min(conns) / 1.3}:{max(conns) * 1.3}]\n"
            + ("set yrange [0:*]\n")
            + f"plot {plots}\n"
        )
        res = subprocess.run([gp], input=script, text=True, capture_output=True)
        if res.returncode != 0:
            return out, f"gnuplot failed: {res.stderr.strip()[:200]}"
        out.append(os.path.basename(png))
    return out, None


def main():
    raw, meta_path = sys.argv[1], sys.argv[2]
    base = sys.argv[3] if len(sys.argv) > 3 else None
    run = Run(raw, meta_path)
    meta = run.meta

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
        ("h2load", "h2load"),
        ("iperf3", "iperf3"),
        ("iptables", "iptables"),
        ("nft", "nft"),
    ]:
        p(f"| {label} | {meta.get(k, '?')} |")
    p(f"| modes | {meta.get('modes')} |")
    p(f"| rounds | {meta.get('rounds')} (interleaved, order rotated each round) |")
    p(f"| duration | {meta.get('duration')} s per measurement |")
    p(
        f"| load | {meta.get('connections')} connections; {meta.get('file_size')}-byte file from nginx; "
        f"answer scenario: haproxy answers a 2-byte body itself; fixed rates {meta.get('rate')} req/s "
        f"(keep-alive) and {meta.get('conn_rate')} conn/s (answer, connection per request); iperf3 one stream |"
    )
    if meta.get("sweep"):
        p(
            f"| sweep | connections {meta.get('sweep')}, {meta.get('sweep_duration')} s per point, "
            f"latency at {meta.get('sweep_rate')} req/s |"
        )
    p(
        f"| CPU pinning | load generators CPU {meta.get('cpu_client')}, "
        f"haproxy CPU {meta.get('cpu_proxy')}, nginx and iperf3 -s CPU {meta.get('cpu_server')} |"
    )
    p(
        f"| quiet | wait up to {meta.get('quiet_wait')} s for others < {meta.get('busy_pct')}% before each mode, "
        f"{meta.get('retries')} repeat(s) per disturbed measurement, {meta.get('wait_budget')} s budget "
        f"({meta.get('wait_budget_left')} s left) |"
    )
    p(f"| load average | before {meta.get('loadavg_before')}, after {meta.get('loadavg_after')} |")
    p(f"| elapsed | {meta.get('elapsed')} s |")
    p("")
    for n in run.notes:
        p(f"**Note:** {n}.")
        p("")

    goals(p, run)

    p("## Maximum rates: medians (min–max over rounds)")
    p("")
    p(
        "wrk, closed loop, one thread. *answer*: the redirect-cost scenario, haproxy answers "
        "without an upstream (direct: nginx answers). † a round of this cell was disturbed (see below)."
    )
    p("")
    values_table(p, run, MAX_RATES)
    p("## Fixed rate, keep-alive to nginx: latency and CPU (min–max over rounds)")
    p("")
    p(
        "h2load, paced per connection; percentiles over every request of a round (its own "
        "start-to-response time); CPU: seconds of all CPUs that the measurement cost (user, "
        "system, softirq; others' share taken out, see README) per 10,000 requests."
    )
    p("")
    values_table(p, run, FIXED)
    p("## Fixed rate, answer scenario, connection per request: the redirect's cost")
    p("")
    p(
        "h2load opening connections at a fixed rate, one request each, answered by the proxy. "
        "*above explicit*: CPU per 10,000 requests minus the explicit proxy's in the same round, "
        "the cost of the interception itself."
    )
    p("")
    values_table(p, run, FIXED_CRR)

    all_metrics = RATIO_METRICS
    for b, bname in [("explicit", "b explicit proxy"), ("tproxy", "c iptables TPROXY"), ("inpod-iptables", "g in-pod iptables")]:
        if b not in run.present:
            continue
        p(f"## Ratio to {bname}, same round (median of per-round ratios, range)")
        p("")
        p("Rates: above 1 is faster. Latencies and CPU: above 1 is slower / costs more.")
        p("")
        ratio_table(p, run, all_metrics, b)
        notes = spread_notes(run, all_metrics, b)
        if notes:
            p(
                f"**Spread larger than the distance to {bname}** (the rounds disagree by more than "
                "the mode differs from the baseline, so this run does not show a difference): "
                + "; ".join(notes)
                + "."
            )
            p("")

    if run.sweep:
        p("## The seed's experiment: connections sweep")
        p("")
        conns = sorted({c for (m, k), v in run.sweep.items() if k == "sweep_qps" for c in v})
        for key, title, fmt in [
            ("sweep_qps", "Maximum keep-alive requests/s (wrk)", "{:,.0f}"),
            ("sweep_p75_us", f"p75 latency µs at {meta.get('sweep_rate')} req/s (h2load)", "{:,.0f}"),
            ("sweep_p99_us", f"p99 latency µs at {meta.get('sweep_rate')} req/s (h2load)", "{:,.0f}"),
        ]:
            p(f"{title}, one pass (mode by mode, all counts):")
            p("")
            p("| mode | " + " | ".join(f"{c}" for c in conns) + " |")
            p("|---|" + "---:|" * len(conns))
            for m, name in run.modes:
                v = run.sweep.get((m, key), {})
                if not v:
                    continue
                p(f"| {name} | " + " | ".join(fmt.format(v[c]) if c in v else "–" for c in conns) + " |")
            p("")
        disturbed = []
        for (m, k), v in run.sweep.items():
            if k.startswith("foreign_sweep"):
                for c, f in v.items():
                    if f >= run.threshold:
                        disturbed.append(f"{m} {'max' if 'qps' in k else 'latency'} c{c} ({f:.1f}%)")
        if disturbed:
            p("Disturbed sweep points: " + ", ".join(sorted(disturbed)) + ".")
            p("")
        if base:
            files, why = charts(run, base)
            for f in files:
                p(f"![{f}]({f})")
                p("")
            if why:
                p(f"(Charts: {why}.)")
                p("")
            else:
                p("Charts drawn by gnuplot (pngcairo) from the sweep's numbers above.")
                p("")

    p("## Path checks (sums over rounds)")
    p("")
    p(
        "proxy sessions: new sessions on the mode's haproxy frontend (0 for direct). "
        "captured: TPROXY rule packets (c), connections the in-pod REDIRECT to 15001 matched (g, h), "
        "ztredir capture-outbound packets (d–f, i). sk_lookup assigns: connections ztredir's "
        "sk_lookup program handed to the listener. TIME_WAIT recycled: SYNs ztredir saw meet one "
        "of the proxy's TIME_WAIT sockets."
    )
    p("")
    p("| mode | " + " | ".join(h for _, h in CHECKS) + " |")
    p("|---|" + "---:|" * len(CHECKS))
    for m, name in run.modes:
        if (m, "ka_rps") not in run.data:
            continue
        cells = []
        for key, _ in CHECKS:
            vals = list(run.vals(m, key).values())
            if not vals:
                cells.append("–")
            elif key == "foreign_pct":
                cells.append(f"{max(vals):.1f}")
            else:
                cells.append(f"{sum(vals):,.0f}")
        p(f"| {name} | " + " | ".join(cells) + " |")
    p("")
    p("## Load from others, per round")
    p("")
    p(
        "Share of the machine's CPU that other processes used during each measurement "
        "(max over the mode's measurements), per round."
    )
    p("")
    rounds = sorted({r for (m, k), v in run.data.items() if k == "foreign_pct" for r in v})
    p("| mode | " + " | ".join(f"round {r}" for r in rounds) + " |")
    p("|---|" + "---:|" * len(rounds))
    for m, name in run.modes:
        v = run.vals(m, "foreign_pct")
        if v:
            p(f"| {name} | " + " | ".join(f"{v[r]:.1f}" if r in v else "–" for r in rounds) + " |")
    p("")
    busy = sorted(
        (r, m, FOREIGN_NAMES[k], v)
        for (m, k), vals in run.data.items()
        if k in FOREIGN_NAMES
        for r, v in vals.items()
        if v >= run.threshold
    )
    if busy:
        p(
            f"**Disturbed measurements** (other processes used {run.threshold:g}% or more of the "
            "machine even after the retries; marked † above): "
            + ", ".join(f"{m} {k} round {r} ({v:.1f}%)" for r, m, k, v in busy)
            + ". They are included in the medians; compare with the min–max ranges."
        )
    else:
        p(f"No measurement was disturbed (others below {run.threshold:g}% throughout).")
    p("")
    if run.fails:
        p("## FAILED checks")
        p("")
        for f in run.fails:
            p(f"- {f}")
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
