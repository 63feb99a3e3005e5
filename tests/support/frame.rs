// SPDX-License-Identifier: Apache-2.0
//! Ethernet frames built byte by byte for BPF_PROG_TEST_RUN: the datapath
//! verdict tests and the dataplane benchmark both use them. Each knob is a
//! way real or hostile traffic differs from a plain segment: IPv4 options,
//! IPv6 extension-header chains, fragments, VLAN tags, truncation.
#![allow(dead_code)]

use std::net::IpAddr;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_ICMP: u8 = 1;

pub const EXT_HOPOPTS: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_AH: u8 = 51;
pub const EXT_DSTOPTS: u8 = 60;

/// Which piece of a fragmented datagram a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Offset 0, more fragments follow.
    First { id: u32 },
    /// Offset in 8-byte units (> 0), with or without more to follow.
    Later { id: u32, offset: u16, more: bool },
}

/// A frame to build: the transport header and what surrounds it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub payload: usize,
    /// IPv4 options, in 4-byte words (NOPs and an end marker).
    pub ip_option_words: u8,
    /// IPv6 extension headers before the transport, in order.
    pub ext: Vec<u8>,
    pub frag: Option<Frag>,
    /// 802.1Q tags in front of the IP header.
    pub vlan_tags: u8,
    /// Keep only this many bytes of the built frame.
    pub truncate: Option<usize>,
    /// TCP data offset in words (5 normally).
    pub tcp_doff: u8,
}

impl Frame {
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Frame {
        Frame {
            src,
            dst,
            proto: PROTO_TCP,
            sport,
            dport,
            tcp_flags: flags,
            payload: 0,
            ip_option_words: 0,
            ext: Vec::new(),
            frag: None,
            vlan_tags: 0,
            truncate: None,
            tcp_doff: 5,
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Frame {
        Frame {
            proto: PROTO_UDP,
            ..Frame::tcp(src, dst, sport, dport, 0)
        }
    }

    pub fn proto(mut self, proto: u8) -> Frame {
        self.proto = proto;
        self
    }
    pub fn payload(mut self, n: usize) -> Frame {
        self.payload = n;
        self
    }
    pub fn ip_options(mut self, words: u8) -> Frame {
        self.ip_option_words = words;
        self
    }
    pub fn ext(mut self, headers: &[u8]) -> Frame {
        self.ext = headers.to_vec();
        self
    }
    pub fn frag(mut self, f: Frag) -> Frame {
        self.frag = Some(f);
        self
    }
    pub fn vlan(mut self, tags: u8) -> Frame {
        self.vlan_tags = tags;
        self
    }
    pub fn truncate(mut self, len: usize) -> Frame {
        self.truncate = Some(len);
        self
    }
    pub fn tcp_doff(mut self, words: u8) -> Frame {
        self.tcp_doff = words;
        self
    }

    /// The transport header and payload (TCP or UDP; other protocols get
    /// eight bytes standing for their header).
    fn l4(&self) -> Vec<u8> {
        let mut h = match self.proto {
            PROTO_TCP => {
                let mut t = vec![0u8; 20];
                t[4..8].copy_from_slice(&1000u32.to_be_bytes());
                t[8..12].copy_from_slice(&2000u32.to_be_bytes());
                t[12] = self.tcp_doff << 4;
                t[13] = self.tcp_flags;
                t[14..16].copy_from_slice(&65535u16.to_be_bytes());
                t
            }
            PROTO_UDP => {
                let mut u = vec![0u8; 8];
                u[4..6].copy_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                u
            }
            _ => vec![0u8; 8],
        };
        if matches!(self.proto, PROTO_TCP | PROTO_UDP) {
            h[0..2].copy_from_slice(&self.sport.to_be_bytes());
            h[2..4].copy_from_slice(&self.dport.to_be_bytes());
        }
        h.extend(std::iter::repeat_n(0xab, self.payload));
        h
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        for i in 0..self.vlan_tags {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        // A later fragment carries no transport header: only data.
        let body = match self.frag {
            Some(Frag::Later { .. }) => vec![0xcd; 16 + self.payload],
            _ => self.l4(),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let hlen = 20 + 4 * self.ip_option_words as usize;
                let mut ip = vec![0u8; hlen];
                ip[0] = 0x40 | (hlen / 4) as u8;
                ip[2..4].copy_from_slice(&((hlen + body.len()) as u16).to_be_bytes());
                let (id, frag_off) = match self.frag {
                    None => (0, 0x4000), // DF
                    Some(Frag::First { id }) => (id, 0x2000),
                    Some(Frag::Later { id, offset, more }) => {
                        (id, offset | if more { 0x2000 } else { 0 })
                    }
                };
                ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                ip[6..8].copy_from_slice(&frag_off.to_be_bytes());
                ip[8] = 64;
                ip[9] = self.proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                for b in ip[20..].iter_mut() {
                    *b = 1; // NOP options
                }
                let sum = checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut chain = self.ext.clone();
                if self.frag.is_some() {
                    chain.push(EXT_FRAGMENT);
                }
                let mut exts = Vec::new();
                for (i, &h) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).copied().unwrap_or(self.proto);
                    exts.extend(ext_header(h, next, self.frag));
                }
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((exts.len() + body.len()) as u16).to_be_bytes());
                ip[6] = chain.first().copied().unwrap_or(self.proto);
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                f.extend(ip);
                f.extend(exts);
            }
            _ => panic!("mixed address families"),
        }
        f.extend(body);
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        f
    }
}

/// One IPv6 extension header of type `h` whose next header is `next`.
fn ext_header(h: u8, next: u8, frag: Option<Frag>) -> Vec<u8> {
    match h {
        EXT_FRAGMENT => {
            let mut v = vec![next, 0, 0, 0, 0, 0, 0, 0];
            let (id, word) = match frag {
                Some(Frag::First { id }) => (id, 1u16),
                Some(Frag::Later { id, offset, more }) => (id, offset << 3 | more as u16),
                None => (0, 0), // an atomic fragment
            };
            v[2..4].copy_from_slice(&word.to_be_bytes());
            v[4..8].copy_from_slice(&id.to_be_bytes());
            v
        }
        // AH: length in 4-byte words minus 2; 12 bytes of ICV-less header.
        EXT_AH => {
            let mut v = vec![0u8; 16];
            v[0] = next;
            v[1] = 2;
            v
        }
        // Routing: type 0, no segments left.
        EXT_ROUTING => vec![next, 0, 0, 0, 0, 0, 0, 0],
        // Hop-by-hop and destination options: 8 bytes, one PadN option.
        _ => vec![next, 0, 1, 4, 0, 0, 0, 0],
    }
}

fn checksum(b: &[u8]) -> u16 {
    let sum = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    !(((sum & 0xffff) + (sum >> 16)) as u16)
}

/// A non-IP frame: an ARP request.
pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend(vec![0u8; 28]);
    f
}
