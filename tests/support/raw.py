#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Raw packets for the security tests, run inside the tests' own namespaces.

  raw.py send SRC DST PROTO SPORT DPORT MARKER [EXTHDRS]
      Sends one IPv4 or IPv6 packet, header and all (IP_HDRINCL /
      IPV6_HDRINCL), whatever its source address: PROTO is tcp (a SYN) or
      udp, MARKER goes in the payload, EXTHDRS (IPv6 only) is how many
      Destination Options headers come before the transport header.
  raw.py sniff IFACE MARKER SECONDS
      Counts the frames arriving on IFACE whose bytes contain MARKER;
      prints "ready" once listening and "seen N" at the end.
"""
import ipaddress
import socket
import struct
import sys
import time

IPV6_HDRINCL = 36
ETH_P_ALL = 0x0003


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def transport(proto, src, dst, sport, dport, payload):
    if proto == "tcp":
        num = 6
        hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    else:
        num = 17
        hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    seg = hdr + payload
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, num, len(seg))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(seg), num)
    c = csum(pseudo + seg)
    at = 16 if num == 6 else 6
    seg = seg[:at] + struct.pack("!H", c) + seg[at + 2:]
    return num, seg


def send(src, dst, proto, sport, dport, marker, exthdrs=0):
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    num, seg = transport(proto, src, dst, int(sport), int(dport), marker.encode())
    if src.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, num, 0,
                         src.packed, dst.packed)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(ip + seg, (str(dst), 0))
        return
    ext = b""
    for i in range(exthdrs):
        nxt = 60 if i + 1 < exthdrs else num
        ext += bytes([nxt, 0, 1, 4, 0, 0, 0, 0])  # Destination Options, one PadN
    first = 60 if exthdrs else num
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(seg), first, 64,
                     src.packed, dst.packed)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
    s.sendto(ip + ext + seg, (str(dst), 0))


def sniff(iface, marker, seconds):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(0.1)
    print("ready", flush=True)
    marker = marker.encode()
    seen = 0
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        try:
            frame, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        # Frames this namespace sends (an ICMP error quoting the packet) are
        # not what arrived.
        if addr[2] != socket.PACKET_OUTGOING and marker in frame:
            seen += 1
    print("seen %d" % seen, flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "send":
        send(*args[:6], exthdrs=int(args[6]) if len(args) > 6 else 0)
    elif cmd == "sniff":
        sniff(*args)
    else:
        sys.exit("usage: raw.py send ... | sniff ...")
