// SPDX-License-Identifier: Apache-2.0
//! Per-workload exclusions: outbound ports, inbound ports and outbound
//! CIDRs whose connections bypass ztunnel, and the opt-out from source
//! validation. They live in maps keyed by the workload's host veth; the
//! programs look at the port and CIDR maps only while the config's
//! EXCLUSIONS flag says some workload has any, and at the interface flags
//! only for a packet whose source is not the workload's.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::dataplane::bpf;
use crate::dataplane::skel::types::{
    ztr_addr, ztr_config_flags, ztr_excl_cidr_key, ztr_excl_port_key, ztr_excl_port_kind as K,
    ztr_iface_flag,
};
use crate::dataplane::state::{self, State, Txn};

/// An address prefix, kept with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, String> {
        // An IPv4-mapped IPv6 prefix is the IPv4 prefix it spells.
        let (addr, len) = match addr {
            IpAddr::V6(a) if len >= 96 => match a.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), len - 96),
                None => (addr, len),
            },
            other => (other, len),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Cidr { addr, len })
    }

    /// Bits of the LPM key: the ifindex and the family, then the address.
    fn key_bits(&self) -> u32 {
        64 + self.len as u32
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid CIDR {s:?}: {ip:?} is not an IP address"))?;
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| format!("invalid CIDR {s:?}: bad prefix length {l:?}"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        let c = Cidr::new(addr, len).map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
        let same = match (addr, c.addr) {
            (IpAddr::V6(a), IpAddr::V4(b)) => a.to_ipv4_mapped() == Some(b),
            (a, b) => a == b,
        };
        if !same {
            return Err(format!(
                "invalid CIDR {s:?}: host bits are set (did you mean {c}?)"
            ));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a CIDR such as 10.96.0.0/12 or fd00::/64")
            }
            // Parsing inside the visitor lets the YAML reader attach the
            // scalar's line and column to the error.
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Cidr, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// What one workload excludes from capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Exclusions {
    /// Connections to these peer ports go direct.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub outbound_ports: BTreeSet<Port>,
    /// Connections to these workload ports arrive direct.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub inbound_ports: BTreeSet<Port>,
    /// Connections with peers in these prefixes go direct, both ways.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub outbound_cidrs: BTreeSet<Cidr>,
    /// The workload may send from addresses that are not its own (a
    /// router or a VPN gateway in a pod); by default such packets drop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_source: bool,
}

/// A port number from 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number from 1 to 65535")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(Port(p)),
                    _ => Err(E::custom(format!(
                        "invalid port {v}: must be from 1 to 65535"
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                Err(E::custom(format!(
                    "invalid port {v}: must be from 1 to 65535"
                )))
            }
        }
        d.deserialize_u64(V)
    }
}

impl Exclusions {
    pub fn is_empty(&self) -> bool {
        self.outbound_ports.is_empty()
            && self.inbound_ports.is_empty()
            && self.outbound_cidrs.is_empty()
            && !self.any_source
    }

    /// One line for tables and messages, e.g. "out 5432; in 9090; cidr 10.96.0.0/12".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let join = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>().join(",");
        if !self.outbound_ports.is_empty() {
            parts.push(format!(
                "out-ports {}",
                join(&mut self.outbound_ports.iter().map(|p| p.0.to_string()))
            ));
        }
        if !self.inbound_ports.is_empty() {
            parts.push(format!(
                "in-ports {}",
                join(&mut self.inbound_ports.iter().map(|p| p.0.to_string()))
            ));
        }
        if !self.outbound_cidrs.is_empty() {
            parts.push(format!(
                "cidrs {}",
                join(&mut self.outbound_cidrs.iter().map(|c| c.to_string()))
            ));
        }
        if self.any_source {
            parts.push("any-source".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("; ")
        }
    }

    /// What changes from `self` to `want`, as "+..." and "-..." items.
    pub fn diff(&self, want: &Exclusions) -> Vec<String> {
        let mut out = Vec::new();
        let mut sets = |what: &str, a: Vec<String>, b: Vec<String>| {
            for x in b.iter().filter(|x| !a.contains(x)) {
                out.push(format!("+{what} {x}"));
            }
            for x in a.iter().filter(|x| !b.contains(x)) {
                out.push(format!("-{what} {x}"));
            }
        };
        let ports = |s: &BTreeSet<Port>| s.iter().map(|p| p.0.to_string()).collect::<Vec<_>>();
        let cidrs = |s: &BTreeSet<Cidr>| s.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        sets(
            "outbound port",
            ports(&self.outbound_ports),
            ports(&want.outbound_ports),
        );
        sets(
            "inbound port",
            ports(&self.inbound_ports),
            ports(&want.inbound_ports),
        );
        sets(
            "outbound cidr",
            cidrs(&self.outbound_cidrs),
            cidrs(&want.outbound_cidrs),
        );
        match (self.any_source, want.any_source) {
            (false, true) => out.push("+any source".into()),
            (true, false) => out.push("-any source".into()),
            _ => {}
        }
        out
    }
}

fn port_key(ifindex: u32, port: u16) -> ztr_excl_port_key {
    ztr_excl_port_key {
        ifindex,
        port,
        ..Default::default()
    }
}

fn cidr_key(ifindex: u32, c: &Cidr) -> ztr_excl_cidr_key {
    let mut addr = ztr_addr::default();
    let family = match c.addr {
        IpAddr::V4(a) => {
            addr.a[0] = u32::from_ne_bytes(a.octets());
            4
        }
        IpAddr::V6(_) => {
            addr = state::to_addr(&c.addr);
            6
        }
    };
    ztr_excl_cidr_key {
        prefixlen: c.key_bits(),
        ifindex,
        family,
        addr,
    }
}

fn cidr_from_key(k: &ztr_excl_cidr_key) -> Option<Cidr> {
    let len = k.prefixlen.checked_sub(64)? as u8;
    let addr = match k.family {
        4 => IpAddr::V4(Ipv4Addr::from(k.addr.a[0].to_ne_bytes())),
        6 => {
            let mut o = [0u8; 16];
            for i in 0..4 {
                o[i * 4..i * 4 + 4].copy_from_slice(&k.addr.a[i].to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Cidr::new(addr, len).ok()
}

/// Every workload's exclusions, by ifindex, in one pass over the maps.
pub fn read_all(st: &State) -> Result<HashMap<u32, Exclusions>> {
    let mut all: HashMap<u32, Exclusions> = HashMap::new();
    for (k, kind) in bpf::entries::<ztr_excl_port_key, u32>(&st.maps.excl_ports)? {
        let ex = all.entry(k.ifindex).or_default();
        if kind & K::ZTR_EXCL_OUTBOUND.0 != 0 {
            ex.outbound_ports.insert(Port(k.port));
        }
        if kind & K::ZTR_EXCL_INBOUND.0 != 0 {
            ex.inbound_ports.insert(Port(k.port));
        }
    }
    for (k, _) in bpf::entries::<ztr_excl_cidr_key, u32>(&st.maps.excl_cidrs)? {
        if let Some(c) = cidr_from_key(&k) {
            all.entry(k.ifindex).or_default().outbound_cidrs.insert(c);
        }
    }
    let flags = match &st.maps.iface_flags {
        Some(m) => bpf::entries::<u32, u32>(m)?,
        None => vec![],
    };
    for (ifindex, flags) in flags {
        if flags & ztr_iface_flag::ZTR_IF_NO_SOURCE_CHECK.0 != 0 {
            all.entry(ifindex).or_default().any_source = true;
        }
    }
    Ok(all)
}

/// The exclusions of the workload on `ifindex`.
pub fn read(st: &State, ifindex: u32) -> Result<Exclusions> {
    Ok(read_all(st)?.remove(&ifindex).unwrap_or_default())
}

/// Makes the exclusions of `ifindex` exactly `want`; returns whether
/// anything changed.
pub fn write(tx: &Txn, ifindex: u32, want: &Exclusions) -> Result<bool> {
    write_from(tx, ifindex, &read(tx, ifindex)?, want)
}

/// `write`, when the caller already knows what `ifindex` has.
pub fn write_from(tx: &Txn, ifindex: u32, have: &Exclusions, want: &Exclusions) -> Result<bool> {
    if *have == *want {
        return Ok(false);
    }
    let kind_of = |ex: &Exclusions, p: Port| {
        (if ex.outbound_ports.contains(&p) {
            K::ZTR_EXCL_OUTBOUND.0
        } else {
            0
        }) | (if ex.inbound_ports.contains(&p) {
            K::ZTR_EXCL_INBOUND.0
        } else {
            0
        })
    };
    let ports: BTreeSet<Port> = have
        .outbound_ports
        .iter()
        .chain(&have.inbound_ports)
        .chain(&want.outbound_ports)
        .chain(&want.inbound_ports)
        .copied()
        .collect();
    // Additions first, then removals: a connection is never captured
    // half-way through a change that keeps excluding it.
    for p in &ports {
        let kind = kind_of(want, *p);
        if kind != 0 && kind != kind_of(have, *p) {
            tx.put("ztr_excl_ports", &port_key(ifindex, p.0), &kind)?;
        }
    }
    for c in want.outbound_cidrs.difference(&have.outbound_cidrs) {
        tx.put("ztr_excl_cidrs", &cidr_key(ifindex, c), &1u32)?;
    }
    if want.any_source && !have.any_source {
        let bit = ztr_iface_flag::ZTR_IF_NO_SOURCE_CHECK.0;
        tx.put("ztr_iface_flags", &ifindex, &bit)?;
    }
    sync_flag(tx)?;
    for p in &ports {
        if kind_of(want, *p) == 0 {
            tx.del("ztr_excl_ports", &port_key(ifindex, p.0))?;
        }
    }
    for c in have.outbound_cidrs.difference(&want.outbound_cidrs) {
        tx.del("ztr_excl_cidrs", &cidr_key(ifindex, c))?;
    }
    if have.any_source && !want.any_source {
        tx.del("ztr_iface_flags", &ifindex)?;
    }
    sync_flag(tx)?;
    Ok(true)
}

/// Sets the config's EXCLUSIONS flag when any exclusion exists, so that
/// workloads pay for the lookups only on nodes that use them.
pub fn sync_flag(tx: &Txn) -> Result<()> {
    use libbpf_rs::MapCore;
    let any =
        tx.maps.excl_ports.keys().next().is_some() || tx.maps.excl_cidrs.keys().next().is_some();
    tx.set_flag(ztr_config_flags::ZTR_CFG_EXCLUSIONS.0, any)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_normalize_and_reject() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/12");
        assert_eq!(c.key_bits(), 64 + 12);
        let h: Cidr = "fd00::1".parse().unwrap();
        assert_eq!(h.to_string(), "fd00::1/128");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().key_bits(), 64);
        // IPv4-mapped prefixes are the IPv4 ones; ::/0 is IPv6 only.
        assert_eq!(
            "::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(cidr_key(1, &"::/0".parse().unwrap()).family, 6);
        assert_eq!(cidr_key(1, &"0.0.0.0/0".parse().unwrap()).family, 4);
        for bad in [
            "10.96.0.1/12",
            "10.0.0.0/33",
            "fd00::/129",
            "nope/8",
            "10.0.0.0/x",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        // Round trip through the LPM key.
        for s in [
            "10.96.0.0/12",
            "fd00:96::/108",
            "0.0.0.0/0",
            "::/0",
            "1.2.3.4/32",
        ] {
            let c: Cidr = s.parse().unwrap();
            assert_eq!(cidr_from_key(&cidr_key(7, &c)), Some(c), "{s}");
        }
    }

    #[test]
    fn diff_lists_additions_and_removals() {
        let a = Exclusions {
            outbound_ports: [Port(5432)].into(),
            ..Default::default()
        };
        let b = Exclusions {
            inbound_ports: [Port(9090)].into(),
            outbound_cidrs: ["10.96.0.0/12".parse().unwrap()].into(),
            ..Default::default()
        };
        assert_eq!(
            a.diff(&b),
            vec![
                "-outbound port 5432",
                "+inbound port 9090",
                "+outbound cidr 10.96.0.0/12"
            ]
        );
        assert!(b.diff(&b).is_empty());
    }
}
