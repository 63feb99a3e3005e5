// SPDX-License-Identifier: Apache-2.0
//! The node file: what `apply` converges a node to and what `export`
//! prints. YAML, every field documented in examples/node.yaml. Parsing
//! rejects unknown fields, wrong types, bad addresses and duplicate
//! interfaces or IPs with the file, line and column.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::dataplane::attach::AttachMode;
use crate::node::exclude::{Exclusions, Port};
use crate::node::ztunnel::Ports;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeFile {
    /// The format's version: 1.
    pub version: Version,
    /// auto (TCX where the kernel has it), tcx or tc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_mode: Option<AttachMode>,
    /// The node proxy. Absent: apply leaves ztunnel alone (with --prune,
    /// clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ztunnel: Option<ZtunnelFile>,
    /// Workload interfaces to capture.
    #[serde(default)]
    pub workloads: Vec<WorkloadFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ZtunnelFile {
    pub iface: IfName,
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_iface: Option<NsIfName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ips: Vec<UniqueIp>,
    #[serde(default)]
    pub capture_dns: bool,
    #[serde(default)]
    pub ports: PortsFile,
    /// Connection table entries; 0 turns the table off.
    #[serde(default = "default_conntrack")]
    pub conntrack_size: ConntrackSize,
}

fn default_conntrack() -> ConntrackSize {
    ConntrackSize(Ports::CONNTRACK_DEFAULT)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PortsFile {
    #[serde(default = "p_outbound")]
    pub outbound: Port,
    #[serde(default = "p_inbound")]
    pub inbound_plaintext: Port,
    #[serde(default = "p_hbone")]
    pub inbound_hbone: Port,
    #[serde(default = "p_dns")]
    pub dns: Port,
}

fn p_outbound() -> Port {
    Port(Ports::DEFAULT.outbound)
}
fn p_inbound() -> Port {
    Port(Ports::DEFAULT.inbound)
}
fn p_hbone() -> Port {
    Port(Ports::DEFAULT.hbone)
}
fn p_dns() -> Port {
    Port(Ports::DEFAULT.dns)
}

impl Default for PortsFile {
    fn default() -> PortsFile {
        PortsFile {
            outbound: p_outbound(),
            inbound_plaintext: p_inbound(),
            inbound_hbone: p_hbone(),
            dns: p_dns(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WorkloadFile {
    pub iface: IfName,
    /// Empty: the host routes through the interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<WorkloadIp>,
    #[serde(default, skip_serializing_if = "Exclusions::is_empty")]
    pub exclude: Exclusions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_mode: Option<AttachMode>,
}

/// Names and addresses seen so far in the file being parsed: a second
/// use is an error at the place of the second use.
#[derive(Default)]
struct Seen {
    ifaces: HashSet<String>,
    ips: HashSet<IpAddr>,
}

thread_local! {
    static SEEN: RefCell<Option<Seen>> = const { RefCell::new(None) };
}

/// Defines a scalar type whose visitor checks (and so gets the scalar's
/// line and column on error).
macro_rules! checked_scalar {
    ($name:ident, $inner:ty, $expecting:literal, $deser:ident, $visit:ident, $arg:ty, $check:expr) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn $visit<E: serde::de::Error>(self, v: $arg) -> Result<$name, E> {
                        let check: fn($arg) -> Result<$inner, String> = $check;
                        check(v).map($name).map_err(E::custom)
                    }
                }
                d.$deser(V)
            }
        }
    };
}

/// An address, unique in the file (an IPv4-mapped IPv6 address is the
/// IPv4 address).
fn unique_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|_| format!("invalid IP address {s:?}"))?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let dup = SEEN.with(|seen| {
        seen.borrow_mut()
            .as_mut()
            .is_some_and(|seen| !seen.ips.insert(ip))
    });
    if dup {
        return Err(format!("IP {ip} is given twice"));
    }
    Ok(ip)
}

checked_scalar!(
    UniqueIp,
    IpAddr,
    "an IPv4 or IPv6 address",
    deserialize_str,
    visit_str,
    &str,
    unique_ip
);

checked_scalar!(
    WorkloadIp,
    IpAddr,
    "a workload's IPv4 or IPv6 address",
    deserialize_str,
    visit_str,
    &str,
    |s| crate::dataplane::state::workload_ip(unique_ip(s)?)
);

checked_scalar!(
    ConntrackSize,
    u32,
    "a number of entries (0 turns the table off)",
    deserialize_u64,
    visit_u64,
    u64,
    |v| {
        if v > 16_777_216 {
            return Err(format!(
                "invalid conntrack-size {v}: at most 16777216 (0 turns it off)"
            ));
        }
        Ok(v as u32)
    }
);

/// A node-netns interface name, unique in the file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(pub String);

impl Serialize for IfName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IfName, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IfName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an interface name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<IfName, E> {
                check_ifname(s).map_err(E::custom)?;
                let dup = SEEN.with(|seen| {
                    seen.borrow_mut()
                        .as_mut()
                        .is_some_and(|seen| !seen.ifaces.insert(s.to_string()))
                });
                if dup {
                    return Err(E::custom(format!("interface {s} is named twice")));
                }
                Ok(IfName(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// The kernel's rule for interface names (dev_valid_name): 1 to 15 bytes,
/// not "." or "..", no '/', ':' or white space. Every interface name ztredir
/// takes goes through it.
pub fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("interface name is empty".into());
    }
    if s.len() > 15 {
        return Err(format!("interface name {s} is longer than 15 characters"));
    }
    if s == "." || s == ".." || s.contains(['/', ':']) || s.contains(char::is_whitespace) {
        return Err(format!(
            "invalid interface name {s:?}: no '/', ':' or white space, not . or .."
        ));
    }
    Ok(())
}

/// An interface name in ztunnel's netns: checked, but not one of the node's
/// names that must be unique in the file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NsIfName(pub String);

impl Serialize for NsIfName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NsIfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NsIfName, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = NsIfName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an interface name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<NsIfName, E> {
                check_ifname(s).map_err(E::custom)?;
                Ok(NsIfName(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u32);

/// A parse error: where, and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.reason)
    }
}

fn one_line(e: &serde_norway::Error) -> ParseError {
    let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
    let mut reason = e.to_string();
    // The reader appends the place itself; the place is given up front.
    for suffix in [
        format!(" at line {line} column {column}"),
        format!(" at position {}", e.location().map_or(0, |l| l.index())),
    ] {
        if let Some(i) = reason.find(&suffix) {
            reason.replace_range(i..i + suffix.len(), "");
        }
    }
    let reason = reason.lines().next().unwrap_or_default().trim().to_string();
    ParseError {
        line,
        column,
        reason,
    }
}

/// Parses and checks a node file's text.
pub fn parse(text: &str) -> Result<NodeFile, ParseError> {
    SEEN.with(|s| *s.borrow_mut() = Some(Seen::default()));
    let parsed = serde_norway::from_str::<NodeFile>(text);
    SEEN.with(|s| *s.borrow_mut() = None);
    // The version first: a newer file's new fields are not "unknown", so a
    // file that does not parse is read loosely once more for its version.
    let version = match &parsed {
        Ok(f) => Some(f.version.0 as u64),
        Err(_) => serde_norway::from_str::<serde_norway::Value>(text)
            .ok()
            .and_then(|v| v.get("version").and_then(|v| v.as_u64())),
    };
    if let Some(v) = version.filter(|v| *v != VERSION as u64) {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with("version"))
            .map_or(1, |i| i + 1);
        return Err(ParseError {
            line,
            column: 1,
            reason: format!("version {v} is not supported (this ztredir reads version {VERSION})"),
        });
    }
    parsed.map_err(|e| one_line(&e))
}

/// The file as YAML, as `export` prints it.
pub fn to_yaml(file: &NodeFile) -> anyhow::Result<String> {
    Ok(format!(
        "# ztredir node file (ztredir export); apply with: ztredir apply -f FILE\n{}",
        serde_norway::to_string(file)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
version: 1
attach-mode: auto
ztunnel:
  iface: vzt
  netns: ztunnel
  host-ips: [10.99.0.1, fd00:99::1]
  capture-dns: true
  ports: {outbound: 15001}
  conntrack-size: 1024
workloads:
  - iface: va
    ips: [10.244.0.10]
    exclude:
      outbound-ports: [5432]
      inbound-ports: [9090]
      outbound-cidrs: [10.96.0.0/12, 'fd00:96::/108']
  - iface: vb
";

    #[test]
    fn a_good_file_parses_and_round_trips() {
        let f = parse(GOOD).unwrap();
        assert_eq!(f.workloads.len(), 2);
        let z = f.ztunnel.as_ref().unwrap();
        assert_eq!(z.ports.inbound_hbone, Port(15008), "defaults fill in");
        assert_eq!(z.conntrack_size, ConntrackSize(1024));
        assert_eq!(f.workloads[0].exclude.outbound_cidrs.len(), 2);
        let again = parse(&to_yaml(&f).unwrap()).unwrap();
        assert_eq!(again, f);
    }

    /// Each bad file names the right place; none is accepted.
    #[test]
    fn bad_files_are_rejected_with_line_and_column() {
        let cases: &[(&str, usize, &str)] = &[
            ("version: 1\nbogus: 3\n", 2, "unknown field `bogus`"),
            ("version: 1\nworkloads:\n  - iface: va\n    ipz: []\n", 4, "unknown field `ipz`"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: [10.0.0.300]\n", 4, "invalid IP address"),
            ("version: 1\nworkloads:\n  - iface: va\n  - iface: va\n", 4, "named twice"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: [10.0.0.1]\n  - iface: vb\n    ips: [10.0.0.1]\n", 6, "given twice"),
            ("version: 1\nztunnel: {iface: vzt, netns: z, conntrack-size: many}\n", 2, "invalid type"),
            ("version: 1\nworkloads:\n  - iface: va\n    exclude: {outbound-ports: [0]}\n", 4, "invalid port 0"),
            ("version: 1\nworkloads:\n  - iface: va\n    exclude: {outbound-ports: [70000]}\n", 4, "invalid port 70000"),
            ("version: 1\nworkloads:\n  - iface: va\n    exclude: {outbound-cidrs: [10.0.0.1/8]}\n", 4, "host bits"),
            ("version: 1\nattach-mode: fast\n", 2, "unknown variant `fast`"),
            ("version: 2\n", 1, "version 2 is not supported"),
            ("version: 2\nnew-thing: {}\n", 1, "version 2 is not supported"),
            ("workloads: []\n", 1, "missing field `version`"),
            ("version: 1\n\tworkloads: []\n", 2, "tab character"),
            ("version: 1\nworkloads:\n  - iface: this-name-is-too-long\n", 3, "interface name this-name-is-too-long is longer than 15 characters"),
            ("version: 1\nworkloads:\n  - iface: 'a/b'\n", 3, "invalid interface name"),
            ("version: 1\nztunnel: {iface: vzt, netns: z, pod-iface: abcdefghijklmnop}\n", 2, "is longer than 15"),
            ("version: 1\nztunnel: {iface: vzt}\n", 2, "missing field `netns`"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: [10.0.0.1, '::ffff:10.0.0.1']\n", 4, "given twice"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: [10.0.0.1, 127.0.0.1]\n", 4, "127.0.0.1 is a loopback address"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: ['::ffff:127.0.0.2']\n", 4, "127.0.0.2 is a loopback address"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: ['::']\n", 4, ":: is the unspecified"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: [0.0.0.0]\n", 4, "0.0.0.0 is the unspecified"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: [255.255.255.255]\n", 4, "broadcast"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: [224.0.0.1]\n", 4, "multicast"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: ['ff02::1']\n", 4, "multicast"),
            ("version: 1\nworkloads:\n  - iface: va\n    ips: ['::1']\n", 4, "loopback"),
        ];
        for (text, line, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.column >= 1, "{e}");
            assert!(e.reason.contains(want), "{text:?}: {e}");
            assert!(!e.reason.contains('\n'), "{e}");
        }
    }
}
