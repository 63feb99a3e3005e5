// SPDX-License-Identifier: Apache-2.0
//! Printing rows: table, JSON and YAML are three printers of the same
//! serializable value.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::ctx::Outcome;
use crate::report::observe::{ConnRow, StatRow, TraceRow};
use crate::report::status::{IfaceRow, Status, WorkloadRow, ZtunnelRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
    /// Prometheus text format (stats only)
    Prometheus,
}

/// Prints `value` in `fmt`; `table` renders the human form.
pub fn emit<T: Serialize>(fmt: Format, value: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    let text = match fmt {
        Format::Table | Format::Prometheus => table(value),
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Yaml => serde_norway::to_string(value)?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub fn outcome(o: &Outcome) -> String {
    o.messages.iter().map(|m| format!("{m}\n")).collect()
}

/// Left-aligned columns, two spaces apart.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        s.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(|s| s.as_str()).collect());
    }
    out
}

fn join<T: ToString>(v: &[T]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn ztunnel(z: &Option<ZtunnelRow>) -> String {
    let Some(z) = z else {
        return "ztunnel: not configured\n".into();
    };
    if z.mode == "in-pod" {
        return format!(
            "ztunnel: in-pod (listens in each workload's netns)\n  host IPs:  {}\n  ports:     outbound {}, inbound {}, hbone {}, dns {}\n  DNS capture: {}\n  connection table: {}\n",
            join(&z.host_ips),
            z.ports.outbound,
            z.ports.inbound,
            z.ports.hbone,
            z.ports.dns,
            if z.capture_dns { "on" } else { "off" },
            z.conntrack_size.map_or("off".to_string(), |n| format!("{n} entries"))
        );
    }
    format!(
        "ztunnel: {} (ifindex {}) <-> {} (ifindex {}, {}) in netns {}\n  addresses: {}\n  host IPs:  {}\n  ports:     outbound {}, inbound {}, hbone {}, dns {}\n  DNS capture: {}\n  connection table: {}\n",
        z.host_iface,
        z.host_ifindex,
        z.pod_iface,
        z.pod_ifindex,
        z.pod_mac,
        z.netns,
        join(&z.ips),
        join(&z.host_ips),
        z.ports.outbound,
        z.ports.inbound,
        z.ports.hbone,
        z.ports.dns,
        if z.capture_dns { "on" } else { "off" },
        z.conntrack_size.map_or("off".to_string(), |n| format!("{n} entries"))
    )
}

fn iface_rows(rows: &[IfaceRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let hooks: Vec<String> = r
                .hooks
                .iter()
                .map(|h| match h.prog_id {
                    Some(id) => format!("{}:{id}", h.hook.name()),
                    None => format!("{}:-", h.hook.name()),
                })
                .collect();
            vec![
                r.name.clone(),
                r.ifindex.to_string(),
                r.role.name().to_string(),
                r.netns.clone(),
                r.mode.to_string(),
                if r.present { "yes" } else { "GONE" }.to_string(),
                hooks.join(" "),
            ]
        })
        .collect();
    columns(
        &[
            "IFACE",
            "IFINDEX",
            "ROLE",
            "NETNS",
            "MODE",
            "PRESENT",
            "HOOKS(prog id)",
        ],
        &rows,
    )
}

pub fn workloads(rows: &[WorkloadRow]) -> String {
    if rows.is_empty() {
        return "no workloads\n".into();
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r.ip.to_string(), r.iface.clone(), r.ifindex.to_string()])
        .collect();
    columns(&["IP", "IFACE", "IFINDEX"], &rows)
}

pub fn pods(rows: &[crate::report::status::PodRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.pod.workload(),
                r.pod.service_account.clone(),
                r.pod.uid.clone(),
                r.pod.netns.clone(),
                r.pod.iface.clone(),
                r.pod.mode.to_string(),
                join(&r.pod.ips),
                match (r.present, r.attached) {
                    (false, _) => "NETNS GONE",
                    (true, false) => "DETACHED",
                    (true, true) => "yes",
                }
                .to_string(),
            ]
        })
        .collect();
    columns(
        &[
            "WORKLOAD", "SA", "UID", "NETNS", "IFACE", "MODE", "IPS", "ATTACHED",
        ],
        &rows,
    )
}

pub fn status(s: &Status) -> String {
    let mut out = format!("pin dir: {}\n", s.pin_dir);
    if let Some(pinned) = &s.version.pinned {
        let skew = if s.version.current {
            ""
        } else {
            " (run `ztredir upgrade`)"
        };
        out += &format!(
            "version: pinned {pinned}, this binary {}{skew}\n",
            s.version.binary
        );
    }
    out += &ztunnel(&s.ztunnel);
    if s.interfaces.is_empty() {
        out += "interfaces: none attached\n";
    } else {
        out += "\n";
        out += &iface_rows(&s.interfaces);
        let ex: Vec<String> = s
            .interfaces
            .iter()
            .filter_map(|i| Some(format!("  {}: {}\n", i.name, i.exclude.as_ref()?.summary())))
            .collect();
        if !ex.is_empty() {
            out += "\nexclusions (not captured):\n";
            out += &ex.concat();
        }
    }
    out += "\n";
    out += &workloads(&s.workloads);
    if !s.pods.is_empty() {
        out += "\nin-pod workloads:\n";
        out += &pods(&s.pods);
    }
    if !s.counters.is_empty() {
        let c: Vec<String> = s
            .counters
            .iter()
            .map(|c| format!("{} {}", c.reason, c.packets))
            .collect();
        out += &format!("\npackets: {}\n", c.join(", "));
    }
    if s.trace.running {
        let pids: Vec<String> = s.trace.pids.iter().map(|p| p.to_string()).collect();
        out += &format!("\ntrace: on, traced by pid {}\n", pids.join(", "));
    }
    if !s.warnings.is_empty() {
        out += "\nwarnings:\n";
        for w in &s.warnings {
            out += &format!("  ! {w}\n");
        }
    }
    out
}

pub fn conns(rows: &[ConnRow], off: bool) -> String {
    if off {
        return "connection tracking is off (ztunnel set without --no-conntrack turns it on)\n"
            .into();
    }
    if rows.is_empty() {
        return "no connections\n".into();
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                c.last_seen.clone(),
                c.direction.to_string(),
                c.proto.to_string(),
                c.iface.clone(),
                c.workload.to_string(),
                c.peer.to_string(),
                c.proxy_port.to_string(),
                format!("{}/{}", c.packets_from_workload, c.bytes_from_workload),
                format!("{}/{}", c.packets_to_workload, c.bytes_to_workload),
                c.tcp_flags.join(","),
                c.last_reason.clone(),
            ]
        })
        .collect();
    columns(
        &[
            "LAST SEEN",
            "DIR",
            "PROTO",
            "IFACE",
            "WORKLOAD",
            "PEER",
            "PROXY",
            "FROM(pkts/B)",
            "TO(pkts/B)",
            "FLAGS",
            "LAST REASON",
        ],
        &rows,
    )
}

pub fn stats(rows: &[StatRow]) -> String {
    if rows.is_empty() {
        return "no packets counted\n".into();
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.iface.clone(),
                r.hook.clone(),
                r.reason.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    columns(&["IFACE", "HOOK", "REASON", "PACKETS", "BYTES"], &rows)
}

pub const TRACE_HEADER: &str =
    "TIME                      IFACE        HOOK          PROTO  SRC -> DST  LEN  REASON  VERDICT";

pub fn trace_line(r: &TraceRow) -> String {
    format!(
        "{}  {:<11}  {:<12}  {:<5}  {} -> {}  {}  {}  {}{}",
        r.time,
        r.iface,
        r.hook,
        r.proto,
        r.src,
        r.dst,
        r.len,
        r.reason,
        r.verdict,
        r.redirect_to
            .as_ref()
            .map_or(String::new(), |t| format!(" {t}"))
    )
}

pub fn apply_report(r: &crate::plan::apply::Report) -> String {
    if r.changes.is_empty() {
        return "no changes\n".into();
    }
    let head = if r.dry_run {
        "would change (dry run, nothing changed):"
    } else {
        "changed:"
    };
    let mut out = format!("{head}\n");
    for c in &r.changes {
        out += &format!("  {c}\n");
    }
    out
}

pub fn doctor(r: &crate::report::doctor::Report) -> String {
    let rows: Vec<Vec<String>> = r
        .checks
        .iter()
        .map(|c| vec![c.result.to_string(), c.name.clone(), c.detail.clone()])
        .collect();
    let mut out = columns(&["RESULT", "CHECK", "DETAIL"], &rows);
    let fixes: Vec<&crate::report::doctor::Check> =
        r.checks.iter().filter(|c| c.fix.is_some()).collect();
    if !fixes.is_empty() {
        out += "\nfixes:\n";
        for c in fixes {
            out += &format!("  {}: {}\n", c.name, c.fix.as_deref().unwrap_or_default());
        }
    }
    out += &format!(
        "\n{} passed, {} failed, {} skipped\n",
        r.passed, r.failed, r.skipped
    );
    out
}
