# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Isolation checks for MV6 hosts and guests.

PRIVATE to the collection: no compatibility promise. Pure functions over the data that
``ip -j``, ``nft -j``, ``ss -H``, ``virsh dumpxml`` and ``/proc`` give; no Ansible imports,
standard library only (the guest side runs inside guests that have nothing else).

Every check returns a list of *violations*: ``{"check": CHECK, "object": OBJECT,
"reason": TEXT}``. An empty list means the check passed.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET

FAMILIES = ("ipv4", "ipv6")

# The per-interface sysctls the host must hold on the parallel bridge, its ports and the
# uplink, so that the host takes no L3 part in the parallel network.
HOST_SYSCTLS = {
    "net/ipv6/conf/{ifname}/disable_ipv6": "1",
    "net/ipv6/conf/{ifname}/accept_ra": "0",
    "net/ipv6/conf/{ifname}/autoconf": "0",
    "net/ipv6/conf/{ifname}/forwarding": "0",
    "net/ipv6/conf/{ifname}/addr_gen_mode": "1",
    "net/ipv4/conf/{ifname}/arp_ignore": "8",
    "net/ipv4/conf/{ifname}/forwarding": "0",
}

# The names of the objects in the bridge table that the hypervisor role renders.
HOST_CHAINS = (
    "parallel_input",
    "parallel_output",
    "parallel_prerouting",
    "parallel_forward",
    "from_parallel_port",
)
HOST_COUNTERS = (
    "drop_input",
    "drop_output",
    "drop_vlan",
    "drop_qinq",
    "drop_ethertype",
    "drop_spoof_mac",
    "drop_spoof_ip",
    "drop_nd_spoof",
    "drop_frag",
    "drop_ra_guard",
    "drop_redirect",
    "drop_mld_query",
    "drop_dhcp_guard",
    "drop_uplink_spoof",
    "drop_fdb_limit",
    "drop_unknown_port",
    "pass_forward",
)
PORT_SET = "parallel_ports"

QEMU_NAMES = re.compile(r"^(qemu-system-.*|qemu-kvm|kvm)$")


def other_family(family: str) -> str:
    """The family that must not appear on the parallel side of a *family* network."""
    if family not in FAMILIES:
        raise ValueError(f"parallel_family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return "ipv4" if family == "ipv6" else "ipv6"


def violation(check: str, obj: str, reason: str) -> dict:
    return {"check": check, "object": obj, "reason": reason}


def sysctl_path(template: str, ifname: str) -> str:
    """The /proc/sys relative path; a VLAN name's dot stays a dot in /proc paths."""
    return template.format(ifname=ifname)


def sysctl_key(path: str) -> str:
    """``net/ipv4/conf/eth0.106/x`` -> ``net.ipv4.conf.eth0/106.x`` (sysctl(8) notation)."""
    return ".".join(part.replace(".", "/") for part in path.split("/"))


# ---------------------------------------------------------------------------- host side


def _addr_family(info: dict) -> str:
    return "ipv6" if info.get("family") == "inet6" else "ipv4"


def check_no_addresses(addr_json: list, names: list[str]) -> list[dict]:
    """Any address, of either family and any scope, on one of *names*."""
    found = []
    wanted = set(names)
    for link in addr_json:
        name = link.get("ifname")
        if name not in wanted:
            continue
        for info in link.get("addr_info", []):
            local = info.get("local")
            found.append(
                violation(
                    "host_address",
                    name,
                    f"{name} carries {_addr_family(info)} address {local}/{info.get('prefixlen')}"
                    " but the host must take no L3 part in the parallel network",
                )
            )
    return found


def check_links_present(link_json: list, bridge: str, uplink: str | None) -> list[dict]:
    """The bridge exists and is a bridge; the uplink, if any, is one of its ports."""
    links = {link.get("ifname"): link for link in link_json}
    found = []
    br = links.get(bridge)
    if br is None:
        found.append(violation("bridge", bridge, f"bridge {bridge} does not exist"))
    elif (br.get("linkinfo") or {}).get("info_kind") != "bridge":
        found.append(violation("bridge", bridge, f"{bridge} exists but is not a bridge"))
    if uplink:
        up = links.get(uplink)
        if up is None:
            found.append(violation("uplink", uplink, f"uplink {uplink} does not exist"))
        elif up.get("master") != bridge:
            found.append(
                violation(
                    "uplink",
                    uplink,
                    f"uplink {uplink} is not a port of {bridge} (master: {up.get('master')})",
                )
            )
    return found


def bridge_ports(link_json: list, bridge: str) -> list[str]:
    return sorted(link["ifname"] for link in link_json if link.get("master") == bridge)


def check_sysctls(values: dict[str, dict[str, str | None]]) -> list[dict]:
    """*values*: interface name -> {HOST_SYSCTLS template: value read, or None}."""
    found = []
    for ifname, reads in sorted(values.items()):
        for template, actual in sorted(reads.items()):
            want = HOST_SYSCTLS.get(template)
            key = sysctl_key(sysctl_path(template, ifname))
            if want is None:
                continue
            if actual is None:
                # No IPv6 conf directory: IPv6 is off for the device, which is what we want.
                if not template.startswith("net/ipv6/"):
                    found.append(violation("host_sysctl", key, f"{key} cannot be read"))
            elif actual.strip() != want:
                found.append(
                    violation("host_sysctl", key, f"{key} is {actual.strip()}, expected {want}")
                )
    return found


def _nft_items(nft_json: dict, kind: str) -> list[dict]:
    return [item[kind] for item in nft_json.get("nftables", []) if kind in item]


def check_nft_table(
    nft_json: dict | None, table: str, ports: list[str]
) -> tuple[list[dict], dict[str, dict]]:
    """The bridge table exists with the expected chains, counters and port set.

    Returns the violations and the counter values by name.
    """
    obj = f"bridge {table}"
    if nft_json is None:
        return [violation("nft_table", obj, f"nftables table bridge {table} is missing")], {}
    found = []
    chains = {c["name"]: c for c in _nft_items(nft_json, "chain")}
    for name in HOST_CHAINS:
        if name not in chains:
            found.append(violation("nft_chain", f"{obj} {name}", f"chain {name} is missing"))
    hooks = {c.get("hook") for c in chains.values() if c.get("hook")}
    for hook in ("prerouting", "input", "output", "forward"):
        if hook not in hooks:
            found.append(violation("nft_chain", obj, f"no base chain on the {hook} hook"))
    counters = {
        c["name"]: {"packets": c.get("packets", 0), "bytes": c.get("bytes", 0)}
        for c in _nft_items(nft_json, "counter")
    }
    for name in HOST_COUNTERS:
        if name not in counters:
            found.append(violation("nft_counter", f"{obj} {name}", f"counter {name} is missing"))
    sets = {s["name"]: s for s in _nft_items(nft_json, "set")}
    members = _set_elements(sets.get(PORT_SET))
    if PORT_SET not in sets:
        found.append(violation("nft_set", f"{obj} {PORT_SET}", f"set {PORT_SET} is missing"))
    else:
        for port in ports:
            if port not in members:
                found.append(
                    violation(
                        "nft_set",
                        port,
                        f"port {port} is on the parallel bridge but not in set {PORT_SET}"
                        f" of table bridge {table}: its frames are not filtered",
                    )
                )
    return found, counters


def check_port_fdb(link_json: list, fdb_json: list, bridge: str, port_macs: dict) -> list[dict]:
    """Each guest port on *bridge* learns nothing and holds its planned MAC, static and sticky.

    *link_json* is ``ip -j -d link show``, *fdb_json* ``bridge -j fdb show br BRIDGE``,
    *port_macs* ``{port: planned MAC}``. Ports that are not on the bridge now are skipped
    (a stopped guest has no tap).
    """
    found = []
    on_bridge = {link.get("ifname"): link for link in link_json if link.get("master") == bridge}
    for port, mac in sorted(port_macs.items()):
        link = on_bridge.get(port)
        if link is None:
            continue
        mac = mac.lower()
        slave = (link.get("linkinfo") or {}).get("info_slave_data") or {}
        if slave.get("learning", True):
            found.append(
                violation(
                    "port_fdb",
                    port,
                    f"learning is on: a frame with another guest's source MAC would move that"
                    f" MAC's FDB entry to {port}",
                )
            )
        entries = [e for e in fdb_json if e.get("ifname") == port and e.get("master") == bridge]
        pinned = [
            e
            for e in entries
            if str(e.get("mac", "")).lower() == mac
            and e.get("state") == "static"
            and "sticky" in (e.get("flags") or [])
        ]
        if not pinned:
            found.append(
                violation(
                    "port_fdb",
                    port,
                    f"the guest's MAC {mac} is not a static sticky FDB entry on {port}",
                )
            )
        learned = sorted(
            str(e.get("mac")).lower()
            for e in entries
            if e.get("state") in (None, "", "stale") and str(e.get("mac", "")).lower() != mac
        )
        if learned:
            found.append(
                violation("port_fdb", port, f"{port} learned MACs not its guest's: {learned}")
            )
    return found


# The elements the bridge table adds to itself (the uplink's source MACs): not drift. The
# hypervisor role's drift check leaves them out the same way (roles/hypervisor/vars/main.yml).
NFT_DYNAMIC_ELEMENTS = re.compile(r"(set uplink_macs \{[^}]*?)\s*elements = \{[^}]*\}")


def normalize_ruleset(text: str) -> str:
    """``nft -s list table`` output without the table's own dynamic elements, stripped."""
    return NFT_DYNAMIC_ELEMENTS.sub(r"\1", text).strip()


def check_nft_drift(live: str | None, record: str | None, table: str) -> list[dict]:
    """The loaded tables (*live*, ``nft -s list table`` of each, joined by newlines) are what
    roles/hypervisor loaded (*record*, written right after it loaded them).

    A flushed or edited chain, a rule or a set element added or removed by hand is a
    violation; counter values and the uplink's learned MACs are not compared. Nothing is
    reported without a record (no role run) or without a live table (``nft_table`` reports
    a missing table).
    """
    if record is None or live is None:
        return []
    want = normalize_ruleset(record).splitlines()
    have = normalize_ruleset(live).splitlines()
    if want == have:
        return []
    removed = [line.strip() for line in want if line not in have]
    added = [line.strip() for line in have if line not in want]
    parts = []
    if removed:
        parts.append(f"missing {removed[:3]}")
    if added:
        parts.append(f"not loaded by the role {added[:3]}")
    if not parts:
        parts.append("the same lines in another order")
    return [
        violation(
            "nft_drift",
            f"bridge {table}",
            "the live isolation tables differ from what roles/hypervisor loaded: "
            + "; ".join(parts),
        )
    ]


TABLE_FLAGS = re.compile(r"^\s*flags\s+(\S.*?)\s*$", re.MULTILINE)


def table_is_owned(listing: str) -> bool:
    """Whether ``nft list table`` output shows the ``owner`` flag on the table itself."""
    head = listing.split("chain ", 1)[0].split("set ", 1)[0].split("counter ", 1)[0]
    match = TABLE_FLAGS.search(head)
    return bool(match) and "owner" in re.split(r"[,\s]+", match.group(1))


def check_nft_owner(owned: dict[str, bool], table: str) -> list[dict]:
    """Each present table is held by roles/hypervisor's keeper (nftables' owner flag)."""
    return [
        violation(
            "nft_owner",
            f"{family} {table}",
            f"table {family} {table} has no owner flag (it was not loaded by the MV6 keeper):"
            " nft flush ruleset, which nftables.service runs on reload, restart and stop,"
            " removes it and the parallel ports then pass frames unfiltered",
        )
        for family, is_owned in sorted(owned.items())
        if not is_owned
    ]


GUARD_CHAINS = ("parallel_host_input", "parallel_host_output", "parallel_notrack")

BRIDGE_NF_CALLS = ("nf_call_iptables", "nf_call_ip6tables", "nf_call_arptables")


def check_bridge_netfilter(link_json: list, bridge: str) -> list[dict]:
    """The parallel bridge's own br_netfilter switches are off (roles/hypervisor sets them)."""
    for link in link_json:
        if link.get("ifname") != bridge:
            continue
        info = (link.get("linkinfo") or {}).get("info_data") or {}
        on = [name for name in BRIDGE_NF_CALLS if info.get(name)]
        if on:
            return [
                violation(
                    "bridge_netfilter",
                    bridge,
                    f"{', '.join(on)} on: with br_netfilter, the bridge hands its frames to the"
                    " host's iptables, ip6tables or arptables chains",
                )
            ]
    return []


def coexistence_br_netfilter(sysctls: dict[str, str | None], bridge: str) -> list[dict]:
    """br_netfilter's host-wide switches (Docker and Kubernetes turn them on): reported, not
    a violation; no per-bridge switch can opt a bridge out of them."""
    on = [
        f"net.bridge.bridge-nf-call-{name}"
        for name, value in sorted(sysctls.items())
        if value is not None and value.strip() == "1"
    ]
    if not on:
        return []
    return [
        {
            "object": " ".join(on),
            "reason": f"br_netfilter is loaded and {', '.join(on)} = 1: frames bridged on {bridge}"
            " pass the host's iptables/ip6tables FORWARD chains (a DROP policy there, as Docker"
            " sets, blackholes the parallel network). The host guard's parallel_notrack chain"
            " keeps them out of conntrack and NAT; set these sysctls to 0 where nothing on the"
            " host needs them.",
        }
    ]


def parse_firewalld_zones(text: str) -> dict[str, list[str]]:
    """``firewall-cmd --get-active-zones`` output: {zone: [interfaces]}."""
    zones: dict[str, list[str]] = {}
    zone = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            zone = line.split()[0]
            zones.setdefault(zone, [])
        elif zone is not None and line.strip().startswith("interfaces:"):
            zones[zone] += line.split(":", 1)[1].split()
    return zones


def coexistence_firewalld(zones: dict[str, list[str]], mv6_ifaces: list[str]) -> list[dict]:
    return [
        {
            "object": f"firewalld zone {zone}",
            "reason": f"firewalld zone {zone} holds"
            f" {', '.join(sorted(set(ifaces) & set(mv6_ifaces)))}: its rules (and any service"
            " it opens) apply to the parallel side; take these interfaces out of every zone",
        }
        for zone, ifaces in sorted(zones.items())
        if set(ifaces) & set(mv6_ifaces)
    ]


def coexistence_libvirt_networks(xml_by_name: dict[str, str], parallel_family: str) -> list[dict]:
    """Active libvirt networks whose host side holds an address of the parallel family (the
    ``default`` NAT network on an IPv6-native host gives the host IPv4 and turns forwarding
    on): the host is then dual stack."""
    found = []
    want = "ipv6" if parallel_family == "ipv6" else "ipv4"
    for name, xml in sorted(xml_by_name.items()):
        root = ET.fromstring(xml)
        bridge = root.find("bridge")
        families = set()
        for ip in root.findall("ip"):
            family = ip.get("family") or ("ipv6" if ":" in (ip.get("address") or "") else "ipv4")
            families.add(family)
        if want in families:
            dev = bridge.get("name") if bridge is not None else "?"
            found.append(
                {
                    "object": f"libvirt network {name}",
                    "reason": f"libvirt network {name} is active and gives the host an {want}"
                    f" address on {dev}: the host is dual stack. Stop it"
                    " (mv6_hypervisor_default_network: stop for the default network).",
                }
            )
    return found


def check_host_guard(nft_json: dict | None, table: str) -> list[dict]:
    """The ``inet`` table that keeps the host's own IP stack off the parallel ports."""
    obj = f"inet {table}"
    if nft_json is None:
        return [violation("nft_table", obj, f"nftables table inet {table} is missing")]
    chains = {c["name"] for c in _nft_items(nft_json, "chain")}
    return [
        violation("nft_chain", f"{obj} {name}", f"chain {name} is missing")
        for name in GUARD_CHAINS
        if name not in chains
    ]


def _set_elements(nft_set: dict | None) -> set[str]:
    if not nft_set:
        return set()
    elements = set()
    for elem in nft_set.get("elem", []):
        if isinstance(elem, str):
            elements.add(elem)
        elif isinstance(elem, dict) and "elem" in elem:
            elements.add(str(elem["elem"].get("val")))
    return elements


# The metadata element roles/guest writes into every MV6 domain (docs/interfaces.md).
MV6_METADATA_NS = "https://mv6.invalid/transition"


def is_mv6_domain(xml_text: str) -> bool:
    """Whether a domain's XML carries ``<metadata><mv6:guest xmlns:mv6=...>``."""
    root = ET.fromstring(xml_text)
    return root.find(f"./metadata/{{{MV6_METADATA_NS}}}guest") is not None


def select_mv6_domains(xml_by_name: dict[str, str], guests=()) -> tuple[dict, list[str]]:
    """Split the host's domains into MV6 guests and the rest.

    A domain is an MV6 guest when its XML carries the MV6 metadata element or its name is in
    *guests* (for example the plan's guests of this host). Returns ``({name: nics})`` of the
    MV6 guests and the sorted names of the other domains, which the audit leaves alone: an
    unrelated VM on the same host is not part of the parallel network.
    """
    named = set(guests)
    selected, others = {}, []
    for name, xml_text in xml_by_name.items():
        if name in named or is_mv6_domain(xml_text):
            selected[name] = domain_interfaces(xml_text)
        else:
            others.append(name)
    return selected, sorted(others)


def domain_interfaces(xml_text: str) -> list[dict]:
    """The NICs of one libvirt domain: type, source (bridge or network), target, mac."""
    root = ET.fromstring(xml_text)
    nics = []
    for iface in root.findall("./devices/interface"):
        source = iface.find("source")
        target = iface.find("target")
        mac = iface.find("mac")
        src = {} if source is None else dict(source.attrib)
        nics.append(
            {
                "type": iface.get("type"),
                "source": src.get("bridge") or src.get("network") or src.get("dev"),
                "target": None if target is None else target.get("dev"),
                "mac": None if mac is None else mac.get("address"),
            }
        )
    return nics


def check_domain_interfaces(
    domains: dict[str, list[dict]], bridge: str, bridge_ports: list[str] | tuple = ()
) -> list[dict]:
    """Every guest NIC attaches to the parallel bridge and nowhere else.

    A NIC of type ``bridge`` must name the bridge; a NIC of type ``ethernet`` (a tap made
    before the guest starts, ``managed='no'``) must be one of the bridge's ports.
    """
    found = []
    for name, nics in sorted(domains.items()):
        for nic in nics:
            if nic["type"] == "bridge" and nic["source"] == bridge:
                continue
            if nic["type"] == "ethernet" and nic["target"] in bridge_ports:
                continue
            found.append(
                violation(
                    "guest_nic",
                    f"{name} {nic.get('mac') or nic.get('target') or '?'}",
                    f"domain {name} has a {nic['type']} NIC on {nic['source']}: guests attach"
                    f" only to the parallel bridge {bridge}",
                )
            )
    return found


def check_qemu_processes(processes: list[dict]) -> list[dict]:
    """*processes*: ``{"pid", "comm", "uid"}``; a QEMU running as root is a violation."""
    return [
        violation(
            "qemu_root",
            f"pid {p['pid']}",
            f"{p['comm']} (pid {p['pid']}) runs as uid 0: QEMU must run unprivileged",
        )
        for p in processes
        if QEMU_NAMES.match(p.get("comm") or "") and int(p.get("uid", -1)) == 0
    ]


def check_capabilities_cache(before: dict, after: dict, uri: str) -> list[dict]:
    """*before*/*after*: ``{file: [mtime_ns, size, inode]}`` of libvirt's QEMU capabilities
    cache, read after one lookup and after a second one. A file that changed between two
    lookups in a row means libvirt probes QEMU again at every define and start."""
    rewritten = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    if not rewritten:
        return []
    return [
        violation(
            "libvirt_reprobe",
            uri,
            "libvirt rewrote its QEMU capabilities cache between two lookups in a row ("
            + ", ".join(rewritten)
            + "): it probes QEMU again on every define and start. On a host without udev,"
            " check that the QEMU user can open /dev/kvm (docs/hypervisor.md)",
        )
    ]


# --------------------------------------------------------------------------- guest side


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_interface(address).ip.is_loopback
    except ValueError:
        return False


def check_guest_addresses(addr_json: list, family: str) -> list[dict]:
    wrong = other_family(family)
    found = []
    for link in addr_json:
        name = link.get("ifname")
        if name == "lo":
            continue
        for info in link.get("addr_info", []):
            if _addr_family(info) == wrong:
                found.append(
                    violation(
                        "guest_address",
                        f"{name} {info.get('local')}",
                        f"{wrong} address {info.get('local')}/{info.get('prefixlen')} on"
                        f" {name} in a {family}-only guest",
                    )
                )
    return found


def check_guest_routes(route_json: list, family: str) -> list[dict]:
    """*route_json*: ``ip -j -4|-6 route show table all`` for the wrong family."""
    wrong = other_family(family)
    found = []
    for route in route_json:
        dev = route.get("dev")
        if dev == "lo" or _is_loopback(str(route.get("dst", ""))):
            continue
        found.append(
            violation(
                "guest_route",
                f"{route.get('dst')} dev {dev}",
                f"{wrong} route {route.get('dst')} via {dev}"
                f" (table {route.get('table', 'main')}) in a {family}-only guest",
            )
        )
    return found


def parse_ss(text: str) -> list[dict]:
    """``ss -H -l -n -t -u`` lines -> ``{"proto", "local"}``."""
    sockets = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            sockets.append({"proto": fields[0], "local": fields[4]})
    return sockets


def _listener_family(local: str) -> str | None:
    """``0.0.0.0:22`` -> ipv4; ``[::]:22`` -> ipv6; ``*:22`` (both) -> None."""
    host = local.rsplit(":", 1)[0]
    if host == "*":
        return None
    if host.startswith("["):
        host = host[1:].split("]")[0]
    host = host.split("%")[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if addr.is_loopback:
        return None
    return "ipv6" if addr.version == 6 else "ipv4"


def check_listeners(sockets: list[dict], family: str) -> list[dict]:
    wrong = other_family(family)
    return [
        violation(
            "guest_listener",
            f"{s['proto']} {s['local']}",
            f"a {s['proto']} socket listens on {s['local']} ({wrong}) in a {family}-only guest",
        )
        for s in sockets
        if _listener_family(s["local"]) == wrong
    ]


def dhcp_client_families(comm: str, argv: list[str]) -> set[str]:
    """The families a DHCP client process asks leases for."""
    args = set(argv[1:])
    if comm == "dhclient":
        return {"ipv6"} if "-6" in args else {"ipv4"}
    if comm == "dhcpcd":
        if "-4" in args or "--ipv4only" in args:
            return {"ipv4"}
        if "-6" in args or "--ipv6only" in args:
            return {"ipv6"}
        return {"ipv4", "ipv6"}
    if comm == "udhcpc":
        return {"ipv4"}
    if comm in ("udhcpc6", "dhcp6c", "odhcp6c"):
        return {"ipv6"}
    return set()


def check_dhcp_processes(processes: list[dict], family: str) -> list[dict]:
    """*processes*: ``{"pid", "comm", "argv"}``."""
    wrong = other_family(family)
    return [
        violation(
            "guest_dhcp",
            f"pid {p['pid']}",
            f"{p['comm']} (pid {p['pid']}) runs a {wrong} DHCP client in a {family}-only guest",
        )
        for p in processes
        if wrong in dhcp_client_families(p["comm"], p.get("argv") or [p["comm"]])
    ]


def networkd_dhcp(text: str) -> set[str]:
    """Families that a systemd-networkd ``.network`` file's ``DHCP=`` enables."""
    section = None
    value = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]").strip()
            continue
        if section == "Network" and "=" in line:
            key, _sep, val = line.partition("=")
            if key.strip() == "DHCP":
                value = val.strip().lower()
    return {
        "yes": {"ipv4", "ipv6"},
        "true": {"ipv4", "ipv6"},
        "both": {"ipv4", "ipv6"},
        "ipv4": {"ipv4"},
        "ipv6": {"ipv6"},
    }.get(value or "no", set())


def check_networkd_files(files: dict[str, str], family: str) -> list[dict]:
    wrong = other_family(family)
    return [
        violation(
            "guest_dhcp",
            path,
            f"{path} enables {wrong} DHCP in systemd-networkd in a {family}-only guest",
        )
        for path, text in sorted(files.items())
        if wrong in networkd_dhcp(text)
    ]


def check_ipv6_disabled(value: str | None, family: str) -> list[dict]:
    """An IPv4 guest must have ``net.ipv6.conf.all.disable_ipv6 = 1`` (or no IPv6 at all)."""
    if family != "ipv4" or value is None or value.strip() == "1":
        return []
    return [
        violation(
            "guest_sysctl",
            "net.ipv6.conf.all.disable_ipv6",
            f"net.ipv6.conf.all.disable_ipv6 is {value.strip()} in an ipv4-only guest, expected 1",
        )
    ]


def _drops_nfproto(rule: dict, proto: str) -> bool:
    exprs = rule.get("expr", [])
    matches = any(
        "match" in e
        and e["match"].get("left") == {"meta": {"key": "nfproto"}}
        and e["match"].get("op") in ("==", "in")
        and e["match"].get("right") == proto
        for e in exprs
    )
    return matches and any("drop" in e for e in exprs)


def check_guest_nft(nft_json: dict | None, family: str, table: str = "mv6_guest") -> list[dict]:
    """The guest's own ``inet`` table drops the wrong family."""
    wrong = other_family(family)
    obj = f"inet {table}"
    if nft_json is None:
        return [violation("guest_nft", obj, f"nftables table inet {table} is missing")]
    rules = _nft_items(nft_json, "rule")
    if not any(_drops_nfproto(r, wrong) for r in rules):
        return [
            violation(
                "guest_nft", obj, f"table inet {table} has no rule dropping meta nfproto {wrong}"
            )
        ]
    return []
