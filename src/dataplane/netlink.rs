// SPDX-License-Identifier: Apache-2.0
//! rtnetlink access: links, addresses, routes and the ztunnel netns' policy
//! routing. One connection per netns and invocation, driven by a
//! current-thread runtime so the CLI stays synchronous.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context, Result};
use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::dataplane::netns::NetNs;
use crate::dataplane::skel::types::ztr_mark;

/// A network interface as netlink reports it.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub up: bool,
    pub is_veth: bool,
    /// The peer's ifindex (in the peer's netns) for a veth.
    pub peer_index: Option<u32>,
    /// The netns id, relative to this netns, that holds the peer, when it
    /// lives in another netns.
    pub peer_netnsid: Option<i32>,
}

pub struct Netlink {
    rt: Runtime,
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's netns.
    pub fn new() -> Result<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("start netlink runtime")?;
        let handle = {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().context("open rtnetlink socket")?;
            rt.spawn(conn);
            handle
        };
        Ok(Netlink { rt, handle })
    }

    /// A connection bound to `ns`: the socket is created there and stays
    /// there, whichever thread later uses it.
    pub fn in_netns(ns: &NetNs) -> Result<Netlink> {
        ns.run(Netlink::new)
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        not_found_is_none(self.block(first(req)))
            .with_context(|| format!("look up interface {name}"))
            .map(|m| m.map(|m| link_from(&m)))
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let req = self.handle.link().get().match_index(index).execute();
        not_found_is_none(self.block(first(req)))
            .with_context(|| format!("look up interface {index}"))
            .map(|m| m.map(|m| link_from(&m)))
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        let req = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> = self.block(req.try_collect()).context("list interfaces")?;
        Ok(msgs.iter().map(link_from).collect())
    }

    /// The other end of a veth whose peer lives in another netns, read
    /// through IFLA_TARGET_NETNSID without entering that netns.
    pub fn peer_of(&self, link: &Link) -> Result<Option<Link>> {
        let (Some(peer), Some(nsid)) = (link.peer_index, link.peer_netnsid) else {
            return Ok(None);
        };
        let mut req = self.handle.link().get().match_index(peer);
        req.message_mut()
            .attributes
            .push(LinkAttribute::IfNetnsId(nsid));
        let res = self.block(first(req.execute()));
        not_found_is_none(res)
            .with_context(|| format!("look up the peer of {}", link.name))
            .map(|m| m.map(|m| link_from(&m)))
    }

    /// Addresses of global scope on interface `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<IpAddr>> {
        let req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let msgs: Vec<_> = self.block(req.try_collect()).context("list addresses")?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == index) {
            if m.header.scope != AddressScope::Universe {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point
            // links; IFA_ADDRESS is the peer there. Prefer IFA_LOCAL.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push(ip);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Host routes (/32, /128) in the main table that leave through `index`:
    /// how a point-to-point CNI tells the node where a pod's IPs are.
    pub fn host_routes_via(&self, index: u32) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let full = if matches!(version, IpVersion::V4) {
                32
            } else {
                128
            };
            for r in self.routes(version)? {
                if r.header.table != RouteHeader::RT_TABLE_MAIN
                    || r.header.kind != RouteType::Unicast
                    || r.header.destination_prefix_length != full
                    || route_oif(&r) != Some(index)
                {
                    continue;
                }
                if let Some(ip) = route_dst(&r) {
                    out.push(ip);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The interface of the main table's default route (IPv4 first, then
    /// IPv6), if there is one.
    pub fn default_route_oif(&self) -> Result<Option<u32>> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let found = self.routes(version)?.iter().find_map(|r| {
                (r.header.table == RouteHeader::RT_TABLE_MAIN
                    && r.header.kind == RouteType::Unicast
                    && r.header.destination_prefix_length == 0)
                    .then(|| route_oif(r))
                    .flatten()
            });
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn routes(&self, version: IpVersion) -> Result<Vec<RouteMessage>> {
        let msg = match version {
            IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let req = self.handle.route().get(msg).execute();
        self.block(req.try_collect()).context("list routes")
    }

    fn rules(&self, version: IpVersion) -> Result<Vec<RuleMessage>> {
        let req = self.handle.rule().get(version).execute();
        self.block(req.try_collect()).context("list ip rules")
    }

    /// Which parts of the ztunnel netns' policy routing exist.
    pub fn policy_routing(&self) -> Result<PolicyRouting> {
        let mut pr = PolicyRouting::default();
        for (i, version) in [IpVersion::V4, IpVersion::V6].into_iter().enumerate() {
            pr.rule[i] = self.rules(version.clone())?.iter().any(is_our_rule);
            pr.route[i] = self.routes(version)?.iter().any(is_our_route);
        }
        Ok(pr)
    }

    /// Adds whatever part of the policy routing is missing.
    pub fn ensure_policy_routing(&self) -> Result<()> {
        let have = self.policy_routing()?;
        for (i, v6) in [false, true].into_iter().enumerate() {
            if !have.rule[i] {
                let base = self
                    .handle
                    .rule()
                    .add()
                    .fw_mark(ztr_mark::ZTR_MARK_LOCAL.0)
                    .table_id(ztr_mark::ZTR_ROUTE_TABLE.0)
                    .action(RuleAction::ToTable);
                let res = if v6 {
                    let mut r = base.v6();
                    r.message_mut()
                        .attributes
                        .push(RuleAttribute::FwMask(ztr_mark::ZTR_MARK_MASK.0));
                    self.block(r.execute())
                } else {
                    let mut r = base.v4();
                    r.message_mut()
                        .attributes
                        .push(RuleAttribute::FwMask(ztr_mark::ZTR_MARK_MASK.0));
                    self.block(r.execute())
                };
                res.with_context(|| format!("add ip{} rule fwmark", if v6 { " -6" } else { "" }))?;
            }
            if !have.route[i] {
                let lo = self
                    .link_by_name("lo")?
                    .ok_or_else(|| anyhow!("no lo interface"))?;
                let mut msg = if v6 {
                    RouteMessageBuilder::<Ipv6Addr>::new()
                        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                        .build()
                } else {
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                        .build()
                };
                set_local_route(&mut msg, lo.index);
                self.block(self.handle.route().add(msg).execute())
                    .with_context(|| {
                        format!("add local default route (ipv{})", if v6 { 6 } else { 4 })
                    })?;
            }
        }
        Ok(())
    }

    /// Removes the policy routing that `ensure_policy_routing` adds.
    pub fn remove_policy_routing(&self) -> Result<()> {
        for version in [IpVersion::V4, IpVersion::V6] {
            for rule in self.rules(version.clone())?.into_iter().filter(is_our_rule) {
                self.block(self.handle.rule().del(rule).execute())
                    .context("delete ip rule")?;
            }
            for route in self.routes(version)?.into_iter().filter(is_our_route) {
                self.block(self.handle.route().del(route).execute())
                    .context("delete local route")?;
            }
        }
        Ok(())
    }
}

/// The fwmark rules and "local default" routes, IPv4 then IPv6.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRouting {
    pub rule: [bool; 2],
    pub route: [bool; 2],
}

impl PolicyRouting {
    pub fn complete(&self) -> bool {
        self.rule.iter().chain(self.route.iter()).all(|x| *x)
    }
}

fn set_local_route(msg: &mut RouteMessage, lo: u32) {
    let table = ztr_mark::ZTR_ROUTE_TABLE.0;
    msg.header.table = table as u8;
    msg.header.kind = RouteType::Local;
    msg.header.scope = RouteScope::Host;
    msg.attributes.push(RouteAttribute::Table(table));
    msg.attributes.push(RouteAttribute::Oif(lo));
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_dst(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

fn is_our_route(r: &RouteMessage) -> bool {
    route_table(r) == ztr_mark::ZTR_ROUTE_TABLE.0
        && r.header.kind == RouteType::Local
        && r.header.destination_prefix_length == 0
}

fn is_our_rule(r: &RuleMessage) -> bool {
    let mut mark = None;
    let mut mask = None;
    let mut table = r.header.table as u32;
    for a in &r.attributes {
        match a {
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = Some(*m),
            RuleAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    r.header.action == RuleAction::ToTable
        && mark == Some(ztr_mark::ZTR_MARK_LOCAL.0)
        && mask == Some(ztr_mark::ZTR_MARK_MASK.0)
        && table == ztr_mark::ZTR_ROUTE_TABLE.0
}

fn link_from(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(mac) if mac.len() == 6 => l.mac.copy_from_slice(mac),
            LinkAttribute::Link(i) => l.peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(id) => l.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                l.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    l
}

async fn first<T, S>(s: S) -> Result<Option<T>, rtnetlink::Error>
where
    S: futures_util::Stream<Item = Result<T, rtnetlink::Error>>,
{
    let mut s = std::pin::pin!(s);
    s.try_next().await
}

fn not_found_is_none<T>(r: Result<Option<T>, rtnetlink::Error>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(v),
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(e.raw_code().abs(), libc::ENODEV | libc::ENOENT) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
