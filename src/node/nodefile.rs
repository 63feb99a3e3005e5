// SPDX-License-Identifier: Apache-2.0
//! The node file: what `apply` converges a node to and what `export`
//! prints. YAML, every field documented in examples/node.yaml. Parsing
//! rejects unknown fields, wrong types, bad addresses and names, duplicate
//! interfaces, netns, uids or IPs, and node-level and in-pod parts mixed in
//! one file, with the file, line and column.
//!
//! A node is in one mode: node-level (ztunnel in its own netns, workloads
//! captured on their host-side veths: `iface`) or in-pod (ztunnel in shared
//! mode, `mode: in-pod`; workloads named by their netns and identity:
//! `netns`, `workload`, `service-account`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use serde::de::value::MapAccessDeserializer;
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "checked_opt"
    )]
    pub ztunnel: Option<ZtunnelFile>,
    /// Workloads to capture: node-level interfaces or in-pod netns.
    #[serde(default, deserialize_with = "checked_list")]
    pub workloads: Vec<WorkloadFile>,
}

/// Where ztunnel runs, and so how the node's workloads are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZtunnelMode {
    /// In its own netns, reached over its veth; workloads by host veth.
    #[default]
    NodeLevel,
    /// Shared mode: listening inside each workload's netns.
    InPod,
}

impl ZtunnelMode {
    fn is_node_level(&self) -> bool {
        *self == ZtunnelMode::NodeLevel
    }

    fn name(self) -> &'static str {
        match self {
            ZtunnelMode::NodeLevel => "node-level",
            ZtunnelMode::InPod => "in-pod",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ZtunnelFile {
    /// node-level (default) or in-pod.
    #[serde(default, skip_serializing_if = "ZtunnelMode::is_node_level")]
    pub mode: ZtunnelMode,
    /// Node-level: ztunnel's host veth (required); in-pod: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<IfName>,
    /// Node-level: ztunnel's netns (required); in-pod: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
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

/// One workload: node-level (`iface`, its host-side veth) or in-pod
/// (`netns`, with its identity; `iface` is then its interface there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WorkloadFile {
    /// In-pod: the workload's netns (a name under /run/netns, or a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsName>,
    /// Node-level: the host-side veth (required). In-pod: the interface
    /// inside the netns (default: the default route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<IfName>,
    /// In-pod: NAMESPACE/NAME (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadName>,
    /// In-pod: the service account (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccount>,
    /// In-pod: the uid ZDS hands ztunnel (default: NAMESPACE/NAME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<Uid>,
    /// Empty: the host routes through the interface (node-level), the
    /// interface's global addresses (in-pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<WorkloadIp>,
    #[serde(default, skip_serializing_if = "Exclusions::is_empty")]
    pub exclude: Exclusions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_mode: Option<AttachMode>,
}

impl WorkloadFile {
    /// Node-level (an interface) or in-pod (a netns).
    pub fn mode(&self) -> ZtunnelMode {
        match self.netns {
            Some(_) => ZtunnelMode::InPod,
            None => ZtunnelMode::NodeLevel,
        }
    }

    /// In-pod: the uid, given or NAMESPACE/NAME.
    pub fn effective_uid(&self) -> Option<String> {
        self.uid
            .as_ref()
            .map(|u| u.0.clone())
            .or_else(|| self.workload.as_ref().map(WorkloadName::to_string))
    }
}

/// Names and addresses seen so far in the file being parsed: a second
/// use is an error at the place of the second use. The modes, so that a
/// part in the other mode is an error where it is.
#[derive(Default)]
struct Seen {
    ifaces: HashSet<String>,
    ips: HashSet<IpAddr>,
    netns: HashSet<std::path::PathBuf>,
    uids: HashSet<String>,
    ztunnel: Option<ZtunnelMode>,
    workloads: Option<ZtunnelMode>,
}

fn with_seen<T>(f: impl FnOnce(&mut Seen) -> T) -> Option<T> {
    SEEN.with(|seen| seen.borrow_mut().as_mut().map(f))
}

/// A part of the file (a mapping) checked as a whole once read: its errors
/// name the line and column where the mapping starts.
trait Check: Sized {
    const WHAT: &'static str;
    fn check(self) -> Result<Self, String>;
}

struct Checked<T>(T);

impl<'de, T: Check + Deserialize<'de>> Deserialize<'de> for Checked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked<T>, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Check + Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Checked<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::WHAT)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Checked<T>, A::Error> {
                let t = T::deserialize(MapAccessDeserializer::new(map))?;
                t.check().map(Checked).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

fn checked_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Check + Deserialize<'de>,
{
    Ok(Option::<Checked<T>>::deserialize(d)?.map(|c| c.0))
}

fn checked_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Check + Deserialize<'de>,
{
    Ok(Vec::<Checked<T>>::deserialize(d)?
        .into_iter()
        .map(|c| c.0)
        .collect())
}

/// Registers a node interface name; a second use is an error.
fn unique_iface(name: &str) -> Result<(), String> {
    if with_seen(|seen| !seen.ifaces.insert(name.to_string())).unwrap_or(false) {
        return Err(format!("interface {name} is named twice"));
    }
    Ok(())
}

impl Check for ZtunnelFile {
    const WHAT: &'static str = "the ztunnel settings (a mapping)";

    fn check(self) -> Result<ZtunnelFile, String> {
        match self.mode {
            ZtunnelMode::NodeLevel => {
                let Some(iface) = &self.iface else {
                    return Err("missing field `iface` (a node-level ztunnel needs iface and netns; in-pod: mode: in-pod)".into());
                };
                if self.netns.is_none() {
                    return Err(
                        "missing field `netns` (a node-level ztunnel needs iface and netns)".into(),
                    );
                }
                unique_iface(&iface.0)?;
            }
            ZtunnelMode::InPod => {
                for (given, field) in [
                    (self.iface.is_some(), "iface"),
                    (self.netns.is_some(), "netns"),
                    (self.pod_iface.is_some(), "pod-iface"),
                ] {
                    if given {
                        return Err(format!(
                            "{field} is for a node-level ztunnel: an in-pod one listens in each workload's netns"
                        ));
                    }
                }
            }
        }
        let mode = self.mode;
        let workloads = with_seen(|seen| {
            seen.ztunnel = Some(mode);
            seen.workloads
        })
        .flatten();
        if let Some(w) = workloads.filter(|w| *w != mode) {
            return Err(format!(
                "the ztunnel is {}, but the workloads above are {}: a node is in one mode",
                mode.name(),
                w.name()
            ));
        }
        Ok(self)
    }
}

impl Check for WorkloadFile {
    const WHAT: &'static str = "a workload (a mapping)";

    fn check(self) -> Result<WorkloadFile, String> {
        let mode = self.mode();
        match mode {
            ZtunnelMode::NodeLevel => {
                let Some(iface) = &self.iface else {
                    return Err("missing field `iface` (or `netns`, for an in-pod workload)".into());
                };
                if self.workload.is_some() || self.service_account.is_some() || self.uid.is_some() {
                    return Err(
                        "workload, service-account and uid are for in-pod workloads (with netns)"
                            .into(),
                    );
                }
                unique_iface(&iface.0)?;
            }
            ZtunnelMode::InPod => {
                for (given, field) in [
                    (self.workload.is_some(), "workload"),
                    (self.service_account.is_some(), "service-account"),
                ] {
                    if !given {
                        return Err(format!(
                            "missing field `{field}` (an in-pod workload, one with netns, needs workload and service-account)"
                        ));
                    }
                }
                if !self.exclude.is_empty() {
                    return Err(
                        "exclude is for node-level workloads, not in-pod (netns) ones".into(),
                    );
                }
                let uid = self.effective_uid().unwrap_or_default();
                crate::node::inpod::check_uid(&uid).map_err(|e| e.to_string())?;
                if with_seen(|seen| !seen.uids.insert(uid.clone())).unwrap_or(false) {
                    let why = match self.uid {
                        Some(_) => "",
                        None => " (the uid defaults to the workload's NAMESPACE/NAME; give uid to tell them apart)",
                    };
                    return Err(format!("uid {uid} is given twice{why}"));
                }
            }
        }
        let (zt, first) = with_seen(|seen| {
            let first = *seen.workloads.get_or_insert(mode);
            (seen.ztunnel, first)
        })
        .unwrap_or((None, mode));
        if let Some(z) = zt.filter(|z| *z != mode) {
            return Err(match mode {
                ZtunnelMode::InPod => format!(
                    "in-pod workload (netns) with a {} ztunnel: in-pod workloads need ztunnel mode: in-pod",
                    z.name()
                ),
                ZtunnelMode::NodeLevel => format!(
                    "node-level workload (iface, no netns) with an {} ztunnel: in-pod workloads name their netns",
                    z.name()
                ),
            });
        }
        if first != mode {
            return Err(format!(
                "{} workload after {} ones: a node is in one mode",
                mode.name(),
                first.name()
            ));
        }
        Ok(self)
    }
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

/// An interface name (a node-level one is unique in the file: checked
/// with the entry that names it).
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

/// Defines a string type whose visitor checks it (errors name the
/// scalar's line and column).
macro_rules! checked_string {
    ($name:ident, $expecting:literal, $check:expr) => {
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub String);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
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
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        let check: fn(&str) -> Result<(), String> = $check;
                        check(v).map_err(E::custom)?;
                        Ok($name(v.to_string()))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

checked_string!(NetnsName, "a netns name or path", |s| {
    let path = crate::dataplane::netns::path_of(s);
    let max = crate::dataplane::skel::types::ztr_limits::ZTR_PATH_MAX.0 as usize - 1;
    if s.is_empty() || s.contains('\0') {
        return Err(format!("invalid netns {s:?}"));
    }
    if path.as_os_str().len() > max {
        return Err(format!(
            "netns path {} is longer than {max} characters",
            path.display()
        ));
    }
    if with_seen(|seen| !seen.netns.insert(path.clone())).unwrap_or(false) {
        return Err(format!("netns {} is named twice", path.display()));
    }
    Ok(())
});

checked_string!(ServiceAccount, "a service account name", |s| {
    crate::node::inpod::check_service_account(s).map_err(|e| e.to_string())
});

checked_string!(Uid, "a workload uid", |s| {
    crate::node::inpod::check_uid(s).map_err(|e| e.to_string())
});

/// An in-pod workload's Kubernetes identity: NAMESPACE/NAME.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for WorkloadName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WorkloadName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WorkloadName, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = WorkloadName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("NAMESPACE/NAME")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<WorkloadName, E> {
                let (namespace, name) = crate::node::inpod::parse_workload(v).map_err(E::custom)?;
                Ok(WorkloadName { namespace, name })
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

    const GOOD_INPOD: &str = "\
version: 1
ztunnel:
  mode: in-pod
  host-ips: [10.99.0.1]
  capture-dns: true
workloads:
  - netns: app-a
    workload: default/app-a
    service-account: app-a
  - netns: /proc/1234/ns/net
    iface: eth1
    workload: shop/cart
    service-account: cart
    uid: 0b5e4c1a-77d2-4c1e-9b0e-2f6e1c0d9a11
    ips: [10.244.0.11, 'fd00:244::11']
    attach-mode: tc
";

    #[test]
    fn an_in_pod_file_parses_and_round_trips() {
        let f = parse(GOOD_INPOD).unwrap();
        let z = f.ztunnel.as_ref().unwrap();
        assert_eq!(z.mode, ZtunnelMode::InPod);
        assert!(z.iface.is_none() && z.netns.is_none());
        assert_eq!(f.workloads.len(), 2);
        assert!(f.workloads.iter().all(|w| w.mode() == ZtunnelMode::InPod));
        assert_eq!(
            f.workloads[0].effective_uid().as_deref(),
            Some("default/app-a")
        );
        assert_eq!(f.workloads[1].workload.as_ref().unwrap().name, "cart");
        let yaml = to_yaml(&f).unwrap();
        assert!(yaml.contains("mode: in-pod"), "{yaml}");
        assert_eq!(parse(&yaml).unwrap(), f);
        // A node-level file says nothing of the mode.
        assert!(!to_yaml(&parse(GOOD).unwrap()).unwrap().contains("  mode:"));
    }

    /// Each bad in-pod file names the line of the fault.
    #[test]
    fn bad_in_pod_files_are_rejected_with_line_and_column() {
        let head = "version: 1\nztunnel:\n  mode: in-pod\nworkloads:\n";
        let a = "  - netns: a\n    workload: default/a\n    service-account: a\n";
        let cases: Vec<(String, usize, &str)> = vec![
            (format!("{head}  - netns: a\n    workload: default/a\n"), 5, "missing field `service-account`"),
            (format!("{head}  - netns: a\n    service-account: a\n"), 5, "missing field `workload`"),
            (format!("{head}{a}  - netns: a\n    workload: default/b\n    service-account: b\n"), 8, "netns /run/netns/a is named twice"),
            (format!("{head}{a}  - netns: /run/netns/a\n    workload: default/b\n    service-account: b\n"), 8, "named twice"),
            (format!("{head}{a}  - netns: b\n    workload: default/a\n    service-account: b\n"), 8, "uid default/a is given twice"),
            (format!("{head}{a}  - netns: b\n    workload: default/b\n    service-account: b\n    uid: default/a\n"), 8, "uid default/a is given twice"),
            (format!("{head}  - netns: a\n    workload: default/a\n    service-account: a\n    ips: [10.0.0.1]\n  - netns: b\n    workload: default/b\n    service-account: b\n    ips: [10.0.0.1]\n"), 12, "given twice"),
            (format!("{head}  - netns: a\n    workload: default/a\n    service-account: a\n    exclude: {{outbound-ports: [5432]}}\n"), 5, "exclude is for node-level"),
            (format!("{head}  - iface: va\n"), 5, "node-level workload"),
            (format!("{head}  - netns: a\n    workload: Default/a\n    service-account: a\n"), 6, "not a valid name"),
            (format!("{head}  - netns: a\n    workload: a\n    service-account: a\n"), 6, "not NAMESPACE/NAME"),
            (format!("{head}  - netns: a\n    workload: default/a\n    service-account: A_B\n"), 7, "service account"),
            (format!("{head}  - netns: a\n    workload: default/a\n    service-account: a\n    uid: 'a b'\n"), 8, "uid \"a b\" is not valid"),
            (format!("{head}  - netns: a\n    iface: this-name-is-too-long\n    workload: default/a\n    service-account: a\n"), 6, "longer than 15"),
            (format!("{head}  - netns: ''\n    workload: default/a\n    service-account: a\n"), 5, "invalid netns"),
            (format!("{head}  - netns: {}\n    workload: default/a\n    service-account: a\n", "n".repeat(120)), 5, "longer than 127"),
            ("version: 1\nztunnel:\n  mode: in-pod\n  iface: vzt\n".into(), 3, "iface is for a node-level ztunnel"),
            ("version: 1\nztunnel:\n  mode: in-pod\n  netns: zt\n".into(), 3, "netns is for a node-level ztunnel"),
            ("version: 1\nztunnel:\n  mode: in-pod\n  pod-iface: eth0\n".into(), 3, "pod-iface is for a node-level"),
            ("version: 1\nztunnel:\n  mode: shared\n".into(), 3, "unknown variant `shared`"),
            ("version: 1\nztunnel: {mode: node-level}\n".into(), 2, "missing field `iface`"),
            (format!("version: 1\nztunnel: {{iface: vzt, netns: zt}}\nworkloads:\n{a}"), 4, "in-pod workload (netns) with a node-level ztunnel"),
            (format!("version: 1\nworkloads:\n{a}ztunnel: {{iface: vzt, netns: zt}}\n"), 6, "the ztunnel is node-level, but the workloads above are in-pod"),
            (format!("version: 1\nworkloads:\n{a}  - iface: va\n"), 6, "node-level workload after in-pod ones"),
            (format!("version: 1\nworkloads:\n  - iface: va\n{a}"), 4, "in-pod workload after node-level ones"),
            ("version: 1\nworkloads:\n  - iface: va\n    workload: default/a\n".into(), 3, "are for in-pod workloads"),
            ("version: 1\nworkloads:\n  - ips: [10.0.0.1]\n".into(), 3, "missing field `iface` (or `netns`"),
            ("version: 1\nworkloads:\n  - va\n".into(), 3, "expected a workload"),
        ];
        for (text, line, want) in &cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.column >= 1, "{e}");
            assert!(e.reason.contains(want), "{text:?}: {e}");
            assert!(!e.reason.contains('\n'), "{e}");
        }
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
