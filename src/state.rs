// SPDX-License-Identifier: Apache-2.0
//! ztredir's pinned state seen as Rust values: the ztunnel config, the
//! endpoints (workload, ztunnel and host addresses) and the attached
//! interfaces. Map layouts come from the skeleton's generated types.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::bpf::{self, Maps};
use crate::pins::PinDir;
use crate::skel::types::{
    ztr_addr, ztr_config, ztr_config_flags, ztr_endpoint, ztr_endpoint_kind, ztr_iface, ztr_role,
    ztr_slot,
};

/// Keys of the ifaces map: a node ifindex, or ztunnel's eth0 in its netns.
pub fn node_key(ifindex: u32) -> u64 {
    ifindex as u64
}
pub fn ztunnel_pod_key(ifindex: u32) -> u64 {
    (1u64 << 32) | ifindex as u64
}

pub fn to_addr(ip: &IpAddr) -> ztr_addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => *v6,
    };
    let o = v6.octets();
    let mut a = ztr_addr::default();
    for (i, chunk) in o.chunks_exact(4).enumerate() {
        // Memory order is network order, as the programs read packets.
        a.a[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    a
}

pub fn from_addr(a: &ztr_addr) -> IpAddr {
    let mut o = [0u8; 16];
    for i in 0..4 {
        o[i * 4..i * 4 + 4].copy_from_slice(&a.a[i].to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The one rule for workload addresses (attach --ip, workload add, node
/// files, host routes): an address no pod can have is refused, since the
/// programs would otherwise treat traffic to or from it as a workload's.
/// An IPv4-mapped IPv6 address is judged, and returned, as its IPv4 form.
pub fn workload_ip(ip: IpAddr) -> Result<IpAddr, String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let why = match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ => None,
    };
    match why {
        Some(why) => Err(format!("{ip} is {why}, never a workload's")),
        None => Ok(ip),
    }
}

/// A NUL-terminated C char array from a string (truncated to fit).
pub fn to_cstr<const N: usize>(s: &str) -> [i8; N] {
    let mut out = [0i8; N];
    for (i, b) in s.bytes().take(N - 1).enumerate() {
        out[i] = b as i8;
    }
    out
}

pub fn from_cstr(a: &[i8]) -> String {
    let bytes: Vec<u8> = a
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Workload,
    Ztunnel,
    Host,
}

impl EndpointKind {
    pub fn raw(self) -> u32 {
        match self {
            EndpointKind::Workload => ztr_endpoint_kind::ZTR_EP_WORKLOAD.0,
            EndpointKind::Ztunnel => ztr_endpoint_kind::ZTR_EP_ZTUNNEL.0,
            EndpointKind::Host => ztr_endpoint_kind::ZTR_EP_HOST.0,
        }
    }
    fn from_raw(k: u32) -> Option<EndpointKind> {
        [
            EndpointKind::Workload,
            EndpointKind::Ztunnel,
            EndpointKind::Host,
        ]
        .into_iter()
        .find(|e| e.raw() == k)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Workload,
    ZtunnelHost,
    ZtunnelPod,
}

impl Role {
    pub fn raw(self) -> u32 {
        match self {
            Role::Workload => ztr_role::ZTR_ROLE_WORKLOAD.0,
            Role::ZtunnelHost => ztr_role::ZTR_ROLE_ZTUNNEL_HOST.0,
            Role::ZtunnelPod => ztr_role::ZTR_ROLE_ZTUNNEL_POD.0,
        }
    }
    pub fn from_raw(r: u32) -> Option<Role> {
        [Role::Workload, Role::ZtunnelHost, Role::ZtunnelPod]
            .into_iter()
            .find(|x| x.raw() == r)
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Workload => "workload",
            Role::ZtunnelHost => "ztunnel-host",
            Role::ZtunnelPod => "ztunnel-pod",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub kind: EndpointKind,
    pub ifindex: u32,
}

/// The pinned maps, with typed accessors.
pub struct State {
    pub maps: Maps,
}

impl State {
    pub fn open(pins: &PinDir) -> Result<State> {
        Ok(State {
            maps: Maps::open(pins)?,
        })
    }

    /// The config map's entry, whether or not a ztunnel is configured.
    pub fn config(&self) -> Result<Option<ztr_config>> {
        bpf::lookup(&self.maps.config, &0u32)
    }

    /// The ztunnel config, if a ztunnel is configured.
    pub fn ztunnel(&self) -> Result<Option<ztr_config>> {
        let cfg: Option<ztr_config> = bpf::lookup(&self.maps.config, &0u32)?;
        Ok(cfg.filter(|c| c.flags & ztr_config_flags::ZTR_CFG_ENABLED.0 != 0))
    }

    /// The config's flags, whether or not a ztunnel is configured.
    pub fn config_flags(&self) -> Result<u32> {
        let cfg: Option<ztr_config> = bpf::lookup(&self.maps.config, &0u32)?;
        Ok(cfg.map_or(0, |c| c.flags))
    }

    pub fn set_config(&self, cfg: &ztr_config) -> Result<()> {
        bpf::update(&self.maps.config, &0u32, cfg)
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let mut out: Vec<Endpoint> = bpf::entries::<ztr_addr, ztr_endpoint>(&self.maps.endpoints)?
            .into_iter()
            .filter_map(|(k, v)| {
                Some(Endpoint {
                    ip: from_addr(&k),
                    kind: EndpointKind::from_raw(v.kind)?,
                    ifindex: v.ifindex,
                })
            })
            .collect();
        out.sort_by_key(|e| (e.kind, e.ifindex, e.ip));
        Ok(out)
    }

    pub fn endpoint(&self, ip: &IpAddr) -> Result<Option<Endpoint>> {
        let v: Option<ztr_endpoint> = bpf::lookup(&self.maps.endpoints, &to_addr(ip))?;
        Ok(v.and_then(|v| {
            Some(Endpoint {
                ip: *ip,
                kind: EndpointKind::from_raw(v.kind)?,
                ifindex: v.ifindex,
            })
        }))
    }

    pub fn put_endpoint(&self, ep: &Endpoint) -> Result<()> {
        let v = ztr_endpoint {
            kind: ep.kind.raw(),
            ifindex: ep.ifindex,
        };
        bpf::update(&self.maps.endpoints, &to_addr(&ep.ip), &v)
    }

    pub fn del_endpoint(&self, ip: &IpAddr) -> Result<()> {
        bpf::delete(&self.maps.endpoints, &to_addr(ip))
    }

    /// Makes the endpoints of `kind` exactly `want` (ifindex 0); returns
    /// whether anything changed.
    pub fn replace_endpoints(&self, kind: EndpointKind, want: &[IpAddr]) -> Result<bool> {
        let mut changed = false;
        for ep in self.endpoints()?.into_iter().filter(|e| e.kind == kind) {
            if !want.contains(&ep.ip) {
                self.del_endpoint(&ep.ip)?;
                changed = true;
            }
        }
        for ip in want {
            if self.endpoint(ip)?.map(|e| e.kind) != Some(kind) {
                self.put_endpoint(&Endpoint {
                    ip: *ip,
                    kind,
                    ifindex: 0,
                })?;
                changed = true;
            }
        }
        Ok(changed)
    }

    pub fn ifaces(&self) -> Result<Vec<(u64, ztr_iface)>> {
        let mut v = bpf::entries::<u64, ztr_iface>(&self.maps.ifaces)?;
        v.sort_by_key(|(k, i)| (i.role, from_cstr(&i.name), *k));
        Ok(v)
    }

    pub fn iface(&self, key: u64) -> Result<Option<ztr_iface>> {
        bpf::lookup(&self.maps.ifaces, &key)
    }

    pub fn put_iface(&self, key: u64, i: &ztr_iface) -> Result<()> {
        bpf::update(&self.maps.ifaces, &key, i)
    }

    pub fn del_iface(&self, key: u64) -> Result<()> {
        bpf::delete(&self.maps.ifaces, &key)
    }

    /// Workload interfaces by name.
    pub fn workload_iface_by_name(&self, name: &str) -> Result<Option<(u64, ztr_iface)>> {
        Ok(self
            .ifaces()?
            .into_iter()
            .find(|(_, i)| i.role == Role::Workload.raw() && from_cstr(&i.name) == name))
    }

    /// Forgets every listener socket, so none is kept alive by the map.
    pub fn clear_listeners(&self) -> Result<()> {
        use libbpf_rs::MapCore;
        for slot in 0..ztr_slot::ZTR_SLOT_MAX.0 {
            // An empty sockmap slot answers EINVAL, not ENOENT.
            if let Err(e) = self.maps.listeners.delete(&slot.to_ne_bytes()) {
                if !matches!(
                    e.kind(),
                    libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput
                ) {
                    return Err(e).context("clear ztunnel listener map");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_ipv4_is_mapped() {
        for s in [
            "10.244.0.10",
            "0.0.0.0",
            "255.255.255.255",
            "fd00:244::11",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let back = from_addr(&to_addr(&ip));
            // An IPv4-mapped IPv6 address is the same key as its IPv4 form.
            let want = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            assert_eq!(back, want, "{s}");
        }
        // The programs compare the third word with htonl(0xffff).
        let a = to_addr(&"10.0.0.1".parse().unwrap());
        assert_eq!(a.a[2], 0xffffu32.to_be());
        assert_eq!(a.a[3].to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn impossible_workload_addresses_are_refused() {
        for s in [
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "ff05::2",
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.5",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let e = workload_ip(ip).expect_err(s);
            assert!(e.contains("never a workload's"), "{s}: {e}");
        }
        for s in ["10.244.0.10", "fd00:244::11", "192.0.2.255", "fe80::1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(workload_ip(ip), Ok(ip), "{s}");
        }
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(workload_ip(mapped), Ok("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn c_strings_truncate_and_terminate() {
        let a: [i8; 4] = to_cstr("abcdef");
        assert_eq!(from_cstr(&a), "abc");
        let b: [i8; 16] = to_cstr("veth0");
        assert_eq!(from_cstr(&b), "veth0");
    }
}
