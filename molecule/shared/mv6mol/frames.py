"""Ethernet frames for the injection tests, built byte by byte (standard library only).

Every test frame carries a marker ``MV6MOL`` + run id (4 bytes) + kind (1 byte) + phase
(1 byte), so an observer counts exactly the frames of one run and one kind, whatever
tags or headers surround them. Checksums are right, so a frame that gets through is a real
packet to the stack that receives it.
"""

from __future__ import annotations

import ipaddress
import os
import struct

MARK = b"MV6MOL"

# Kinds of frames. CONTROL frames are valid parallel-family traffic and must arrive: they
# prove that the observer was listening (sent before and after the bad ones).
CONTROL = 0
WRONG_FAMILY = 1
ARP_HOST = 2
DOT1Q = 3
DOT1AD = 4
UNKNOWN_ETHERTYPE = 5
ROGUE_RA = 6
SPOOF_MAC = 7
SPOOF_IP = 8
NA_SPOOF = 9
RA_FRAGMENTED = 10
REDIRECT = 11
DHCP_SERVER = 12
STEAL_MAC = 13

KIND_NAMES = {
    CONTROL: "control",
    WRONG_FAMILY: "wrong family",
    ARP_HOST: "address resolution (ARP or ND) for the host's native address",
    DOT1Q: "802.1Q-tagged",
    DOT1AD: "802.1ad-tagged",
    UNKNOWN_ETHERTYPE: "unknown ethertype",
    ROGUE_RA: "router advertisement from a non-router",
    SPOOF_MAC: "spoofed source MAC",
    SPOOF_IP: "spoofed source IP",
    NA_SPOOF: "neighbour advertisement for another guest's address",
    RA_FRAGMENTED: "router advertisement with its ICMPv6 header in the second fragment",
    REDIRECT: "ICMP redirect from a non-router",
    DHCP_SERVER: "DHCP server message from a non-router, not from the server port",
    STEAL_MAC: "another guest's MAC as the source (FDB theft)",
}
PRE, BAD, POST = 0, 1, 2

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
ETH_8021Q = 0x8100
ETH_8021AD = 0x88A8
# IEEE 802 "local experimental" ethertype: no stack on earth handles it.
ETH_UNKNOWN = 0x88B5
BROADCAST = "ff:ff:ff:ff:ff:ff"


def new_run_id() -> bytes:
    return os.urandom(4)


def marker(run: bytes, kind: int, phase: int = BAD) -> bytes:
    return MARK + run + bytes([kind, phase])


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    frame = mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload
    return frame.ljust(60, b"\0")


def tagged(tpid: int, vid: int, inner_type: int, payload: bytes) -> bytes:
    """Tag header(s) + payload, to follow the MAC addresses (tpid is the outer tag)."""
    if tpid == ETH_8021AD:
        # 802.1ad: service tag 0x88a8, then a customer tag 0x8100.
        return (
            struct.pack("!HH", vid, ETH_8021Q) + struct.pack("!HH", vid + 1, inner_type) + payload
        )
    return struct.pack("!HH", vid, inner_type) + payload


def vlan_frame(dst: str, src: str, tpid: int, vid: int, inner_type: int, payload: bytes) -> bytes:
    return ether(dst, src, tpid, tagged(tpid, vid, inner_type, payload))


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0x6D76,
        0,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    length = 8 + len(data)
    six = ":" in src
    if six:
        pseudo = (
            ipaddress.IPv6Address(src).packed
            + ipaddress.IPv6Address(dst).packed
            + struct.pack("!IxxxB", length, 17)
        )
    else:
        pseudo = (
            ipaddress.IPv4Address(src).packed
            + ipaddress.IPv4Address(dst).packed
            + struct.pack("!xBH", 17, length)
        )
    head = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + head + data) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum) + data


def icmpv6(src: str, dst: str, icmp_type: int, code: int, body: bytes) -> bytes:
    msg = struct.pack("!BBH", icmp_type, code, 0) + body
    pseudo = (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!IxxxB", len(msg), 58)
    )
    csum = checksum(pseudo + msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


def icmpv4_echo(ident: int, data: bytes) -> bytes:
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + data
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def ip_packet(src: str, dst: str, data: bytes) -> tuple[int, bytes]:
    """A UDP packet of the family of ``src`` (ethertype, bytes), port 9 (discard)."""
    payload = udp(src, dst, 40000, 9, data)
    if ":" in src:
        return ETH_IPV6, ipv6(src, dst, 17, payload)
    return ETH_IPV4, ipv4(src, dst, 17, payload)


def multicast_mac(dst: str) -> str:
    """The destination MAC of an IP destination (broadcast for IPv4)."""
    if ":" in dst:
        low = ipaddress.IPv6Address(dst).packed[-4:]
        return "33:33:" + ":".join(f"{b:02x}" for b in low)
    return BROADCAST


def arp_request(src_mac: str, src_ip: str, target_ip: str, trailer: bytes) -> bytes:
    body = (
        struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, 1)
        + mac_bytes(src_mac)
        + ipaddress.IPv4Address(src_ip).packed
        + b"\0" * 6
        + ipaddress.IPv4Address(target_ip).packed
    )
    return ether(BROADCAST, src_mac, ETH_ARP, body + trailer)


def neighbor_solicitation(src_mac: str, src_ll: str, target: str, trailer: bytes) -> bytes:
    """An NS for ``target`` to its solicited-node group, as a host resolving it would send."""
    packed = ipaddress.IPv6Address(target).packed
    group = str(ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + packed[-3:]))
    body = b"\0" * 4 + packed + struct.pack("!BB", 1, 1) + mac_bytes(src_mac)
    body += struct.pack("!BB", 253, 2) + trailer.ljust(14, b"\0")
    pkt = ipv6(src_ll, group, 58, icmpv6(src_ll, group, 135, 0, body), hop_limit=255)
    return ether(multicast_mac(group), src_mac, ETH_IPV6, pkt)


def resolve_host(src_mac: str, src_ip: str, host_native: str, trailer: bytes) -> bytes:
    """ARP (IPv4) or ND (IPv6) for the host's native address."""
    if ":" in host_native:
        return neighbor_solicitation(src_mac, "fe80::6d76:2", host_native, trailer)
    sender4 = src_ip if ":" not in src_ip else "198.51.100.250"
    return arp_request(src_mac, sender4, host_native, trailer)


def router_advertisement(src_mac: str, src_ll: str, prefix: str, trailer: bytes) -> bytes:
    """An RA to all nodes announcing ``prefix`` (on-link, autonomous), hop limit 255."""
    net = ipaddress.IPv6Network(prefix)
    body = struct.pack("!BBHII", 64, 0, 1800, 0, 0)  # cur hop limit, flags, lifetime, timers
    body += struct.pack("!BB", 1, 1) + mac_bytes(src_mac)  # source link-layer address
    body += struct.pack("!BBBBIII", 3, 4, net.prefixlen, 0xC0, 86400, 14400, 0)
    body += net.network_address.packed
    # The marker travels in an unknown option (type 253, RFC 4727 experimental), which
    # receivers must ignore; length in units of 8 octets.
    opt = struct.pack("!BB", 253, 2) + trailer.ljust(14, b"\0")
    body += opt
    pkt = ipv6(src_ll, "ff02::1", 58, icmpv6(src_ll, "ff02::1", 134, 0, body), hop_limit=255)
    return ether("33:33:00:00:00:01", src_mac, ETH_IPV6, pkt)


def neighbor_advertisement(src_mac: str, src_ip: str, target: str, trailer: bytes) -> bytes:
    """An unsolicited, overriding NA for ``target`` whose target link-layer option is
    ``src_mac``: what an attacker sends to take ``target``'s traffic (RFC 4861 7.2.6). The
    marker is an Ethernet trailer, so the NA itself is exactly what a host would send."""
    body = struct.pack("!I", 0x20000000) + ipaddress.IPv6Address(target).packed
    body += struct.pack("!BB", 2, 1) + mac_bytes(src_mac)
    pkt = ipv6(src_ip, "ff02::1", 58, icmpv6(src_ip, "ff02::1", 136, 0, body), hop_limit=255)
    return ether("33:33:00:00:00:01", src_mac, ETH_IPV6, pkt) + trailer


def fragmented_router_advertisement(
    src_mac: str, src_ll: str, prefix: str, trailer: bytes
) -> list[bytes]:
    """RFC 7113's evasion: a destination options header long enough that the RA's ICMPv6
    header is only in the second fragment. Both fragments carry the marker."""
    ra = router_advertisement(src_mac, src_ll, prefix, trailer)[14 + 40 :]
    # Destination options (next header 58): PadN carrying the marker, 208 bytes in all.
    pad = trailer.ljust(204, b"\0")
    destopts = struct.pack("!BBBB", 58, 25, 1, len(pad)) + pad
    assert len(destopts) == 208
    fragmentable = destopts + ra
    first, rest = fragmentable[:200], fragmentable[200:]
    ident = int.from_bytes(trailer[-6:-2], "big")
    out = []
    for offset, more, data in ((0, 1, first), (200, 0, rest)):
        frag = struct.pack("!BBHI", 60, 0, offset | more, ident) + data
        pkt = ipv6(src_ll, "ff02::1", 44, frag, hop_limit=255)
        out.append(ether("33:33:00:00:00:01", src_mac, ETH_IPV6, pkt))
    return out


def redirect(src_mac: str, src_ip: str, victim_mac: str, victim_ip: str, trailer: bytes) -> bytes:
    """An ICMP (v4) or ICMPv6 redirect to ``victim_ip``: "go through me for 2001:db8:ffff::1"
    (or 203.0.113.99)."""
    if ":" in victim_ip:
        body = b"\0" * 4 + ipaddress.IPv6Address(src_ip).packed
        body += ipaddress.IPv6Address("2001:db8:ffff::1").packed
        body += struct.pack("!BB", 253, 2) + trailer.ljust(14, b"\0")
        msg = icmpv6(src_ip, victim_ip, 137, 0, body)
        return ether(victim_mac, src_mac, ETH_IPV6, ipv6(src_ip, victim_ip, 58, msg, 255))
    inner = ipv4(victim_ip, "203.0.113.99", 17, udp(victim_ip, "203.0.113.99", 9, 9, trailer))
    msg = struct.pack("!BBH", 5, 1, 0) + ipaddress.IPv4Address(src_ip).packed + inner
    msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
    return ether(victim_mac, src_mac, ETH_IPV4, ipv4(src_ip, victim_ip, 1, msg))


def dhcp_server_message(src_mac: str, src_ip: str, trailer: bytes) -> bytes:
    """A DHCPv6 Reply (to port 546) or a DHCPv4 BOOTREPLY (to port 68), both from a source port
    that is not the server's: the guard must know them by what they are."""
    if ":" in src_ip:
        data = b"\x07" + trailer[-3:] + trailer
        payload = udp(src_ip, "ff02::1:2", 5547, 546, data)
        pkt = ipv6(src_ip, "ff02::1:2", 17, payload)
        return ether("33:33:00:01:00:02", src_mac, ETH_IPV6, pkt)
    bootp = struct.pack("!BBBB", 2, 1, 6, 0) + b"\0" * 232 + bytes.fromhex("63825363")
    bootp += bytes([53, 1, 2, 255]) + trailer
    payload = udp(src_ip, "255.255.255.255", 1067, 68, bootp)
    return ether(BROADCAST, src_mac, ETH_IPV4, ipv4(src_ip, "255.255.255.255", 17, payload))


def batch(spec: dict, run: bytes, count: int) -> list[tuple[int, int, bytes]]:
    """The frames one sender injects: [(kind, copies, frame)], controls first and last.

    ``spec`` describes the sender and the segment::

        family        parallel family of the segment (ipv4|ipv6)
        src_mac       the sender's own MAC
        src_ip        the sender's own parallel address
        src_ll        (ipv6) its link-local address
        dst_ip        a parallel destination that must get the control frames
        host_mac      the bridge's MAC (the host's own port)
        host_native   the host's native address (ARP for IPv4, ND for IPv6)
        wrong_dst     an address of the other family (the native peer)
        prefix        the parallel subnet (for the rogue RA)
        spare_ip      an unassigned parallel address (the spoofed source)
        victim_mac    (optional) another guest's MAC: the NA, redirect and FDB-theft attacks
        victim_ip     (optional) its parallel address
        guest_attacks (default true) also the attacks only a guest may not make (NA for
                      another's address, fragmented RA, redirect, DHCP server message)
    """
    fam = spec["family"]
    src_mac, src_ip, dst_ip = spec["src_mac"], spec["src_ip"], spec["dst_ip"]
    dst_mac = multicast_mac(dst_ip) if spec.get("dst_mac") is None else spec["dst_mac"]
    out: list[tuple[int, int, bytes]] = []

    def control(phase: int) -> tuple[int, int, bytes]:
        etype, pkt = ip_packet(src_ip, dst_ip, marker(run, CONTROL, phase))
        return (CONTROL, 20, ether(dst_mac, src_mac, etype, pkt))

    out.append(control(PRE))
    half = count // 2
    # Wrong family: half broadcast (flooded to everyone), half to the host's own MAC (the
    # host stack, as if it were a router to the native network).
    wrong_src = "198.51.100.250" if fam == "ipv6" else "2001:db8:ffff::250"
    etype, pkt = ip_packet(wrong_src, spec["wrong_dst"], marker(run, WRONG_FAMILY))
    bcast = BROADCAST if fam == "ipv6" else "33:33:00:00:00:01"
    out.append((WRONG_FAMILY, half, ether(bcast, src_mac, etype, pkt)))
    out.append((WRONG_FAMILY, count - half, ether(spec["host_mac"], src_mac, etype, pkt)))
    resolve = resolve_host(src_mac, src_ip, spec["host_native"], marker(run, ARP_HOST))
    out.append((ARP_HOST, count, resolve))
    # Tagged frames carry a frame of the parallel family: the tag is what must stop them.
    etype, pkt = ip_packet(src_ip, dst_ip, marker(run, DOT1Q))
    out.append((DOT1Q, count, vlan_frame(dst_mac, src_mac, ETH_8021Q, 106, etype, pkt)))
    etype, pkt = ip_packet(src_ip, dst_ip, marker(run, DOT1AD))
    out.append((DOT1AD, count, vlan_frame(dst_mac, src_mac, ETH_8021AD, 106, etype, pkt)))
    out.append(
        (
            UNKNOWN_ETHERTYPE,
            count,
            ether(BROADCAST, src_mac, ETH_UNKNOWN, marker(run, UNKNOWN_ETHERTYPE)),
        )
    )
    if spec.get("rogue_ra", True):
        src_ll = spec.get("src_ll") or "fe80::6d76:1"
        ra = router_advertisement(src_mac, src_ll, spec["prefix"], marker(run, ROGUE_RA))
        out.append((ROGUE_RA, count, ra))
    if spec.get("spoof", True):
        etype, pkt = ip_packet(src_ip, dst_ip, marker(run, SPOOF_MAC))
        out.append((SPOOF_MAC, count, ether(dst_mac, "02:6d:76:de:ad:01", etype, pkt)))
        etype, pkt = ip_packet(spec["spare_ip"], dst_ip, marker(run, SPOOF_IP))
        out.append((SPOOF_IP, count, ether(dst_mac, src_mac, etype, pkt)))
    victim_mac, victim_ip = spec.get("victim_mac"), spec.get("victim_ip")
    if victim_mac:
        # The victim's MAC and address as the source: a bridge that learned from it would
        # move the victim's FDB entry to the sender's port.
        etype, pkt = ip_packet(victim_ip, dst_ip, marker(run, STEAL_MAC))
        out.append((STEAL_MAC, count, ether(dst_mac, victim_mac, etype, pkt)))
    if spec.get("guest_attacks", True) and victim_mac:
        if fam == "ipv6":
            na = neighbor_advertisement(src_mac, src_ip, victim_ip, marker(run, NA_SPOOF))
            out.append((NA_SPOOF, count, na))
            src_ll = spec.get("src_ll") or "fe80::6d76:1"
            for frag in fragmented_router_advertisement(
                src_mac, src_ll, spec["prefix"], marker(run, RA_FRAGMENTED)
            ):
                out.append((RA_FRAGMENTED, count, frag))
        router_src = spec.get("src_ll") if fam == "ipv6" else src_ip
        out.append(
            (REDIRECT, count, redirect(src_mac, router_src, victim_mac, victim_ip,
                                       marker(run, REDIRECT)))
        )  # fmt: skip
        out.append(
            (DHCP_SERVER, count, dhcp_server_message(src_mac, router_src, marker(run, DHCP_SERVER)))
        )
    out.append(control(POST))
    return out


def count_marked(frames: list[bytes], run: bytes) -> dict[tuple[int, int], int]:
    """{(kind, phase): number of frames} of one run."""
    key = MARK + run
    counts: dict[tuple[int, int], int] = {}
    for f in frames:
        i = f.find(key)
        if i < 0 or i + len(key) + 2 > len(f):
            continue
        k = (f[i + len(key)], f[i + len(key) + 1])
        counts[k] = counts.get(k, 0) + 1
    return counts
