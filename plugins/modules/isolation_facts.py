#!/usr/bin/python
# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: isolation_facts
short_description: Report every MV6 isolation violation of a hypervisor or a guest
version_added: 0.1.0
description:
  - Reads the real state of an MV6 hypervisor (O(scope=host)) or of an MV6 guest
    (O(scope=guest)) and returns every isolation violation it finds, with the raw findings.
  - The module never changes anything.
  - "Host side: addresses of any family (link-local included) on the parallel bridge, its
    ports and the uplink; the per-interface sysctls that keep the host out of L3 on them;
    the nftables C(bridge) table with its chains, counters and port set (counter values are
    returned); NICs of MV6 guests (see O(guests)) attached anywhere but the parallel bridge; QEMU
    processes running as root. Processes are those of the module's own PID namespace: a
    container on the host is another system."
  - "Guest side (Python standard library, C(ip), C(ss) and C(nft) only, no libvirt): addresses
    and routes of the wrong family outside loopback; listening sockets of the wrong family;
    DHCP clients of the wrong family (C(dhclient), C(dhcpcd), C(udhcpc), systemd-networkd
    C(DHCP=)); C(net.ipv6.conf.all.disable_ipv6) not 1 in an IPv4 guest; no rule dropping
    the wrong family in the guest's C(inet) table."
author:
  - mv6.transition developers (@mv6-transition)
options:
  scope:
    description: Whether this runs on a hypervisor or inside a guest.
    type: str
    choices: [host, guest]
    default: host
  parallel_family:
    description: The family of the parallel network (the guests' only family).
    type: str
    required: true
    choices: [ipv4, ipv6]
  bridge:
    description: The parallel bridge. Required with O(scope=host).
    type: str
  uplink:
    description: The uplink port of the parallel bridge, if the segment has one.
    type: str
  ports:
    description:
      - Guest ports that must be on the bridge and in the table's port set (for example the
        C(port) entries of the plan). The bridge's actual ports are always checked.
    type: list
    elements: str
    default: []
  nft_record:
    description:
      - The record roles/hypervisor writes right after it loads the isolation tables
        (C(/var/lib/mv6/<table>.loaded)), O(scope=host). When it exists, the live tables
        (C(nft -s list table), without counter values and without the source MACs the table
        records from the uplink) must be the same. A flushed or edited chain, or a rule or
        element added by hand, is a C(nft_drift) violation.
    type: path
  owned:
    description:
      - Require the tables (the C(bridge) one, and the C(inet) one with O(host_guard)) to
        carry nftables' C(owner) flag, as roles/hypervisor's keeper loads them (O(scope=host)).
      - A table without it is removed by C(nft flush ruleset), which C(nftables.service)
        runs on reload, restart and stop. Such a table is an C(nft_owner) violation.
    type: bool
    default: false
  port_macs:
    description:
      - The planned MAC of each guest port, a dict from port name to MAC (for example from
        the plan's C(port) and C(mac) entries), O(scope=host).
      - Each of these ports that is on the bridge must have learning off and its MAC as a
        static, sticky FDB entry, and must have learned no other MAC.
    type: dict
    default: {}
  nft_table:
    description:
      - Name of the C(bridge) table on the host (O(scope=host)) or of the C(inet) table in
        the guest (O(scope=guest)). Defaults to C(mv6_isolation) and C(mv6_guest).
    type: str
  host_guard:
    description:
      - Also require the C(inet) table of the same name as O(nft_table) that drops the host's
        own IP traffic to and from the bridge and its ports (O(scope=host)).
    type: bool
    default: true
  libvirt_uri:
    description: The libvirt connection used to list guest NICs (O(scope=host)).
    type: str
    default: qemu:///system
  check_domains:
    description: Whether to inspect libvirt domains (O(scope=host)).
    type: bool
    default: true
  capabilities_cache:
    description:
      - libvirt's QEMU capabilities cache directory (O(scope=host), with O(check_domains)).
        The module asks libvirt for the domain capabilities twice and reports
        C(libvirt_reprobe) when a file there changed in between.
    type: path
    default: /var/cache/libvirt/qemu/capabilities
  guests:
    description:
      - Names of domains that are MV6 guests of this host even without the MV6 metadata
        element (for example the plan's guests of this host), O(scope=host).
      - 'Only MV6 guests are checked for NICs outside the parallel bridge: domains whose XML
        carries C(<mv6:guest xmlns:mv6="https://mv6.invalid/transition">) (roles/guest writes
        it) and domains named here. Other domains on the host are listed in
        C(facts.other_domains) and not judged. QEMU processes running as root are reported
        whatever domain they belong to.'
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description:
      - Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module only reads; it behaves the same in check mode.
  diff_mode:
    description:
      - Will return details on what has changed (or possibly needs changing in check_mode).
    support: none
notes:
  - Runs as root, for C(nft) and C(/proc).
"""

EXAMPLES = r"""
- name: Audit the hypervisor
  mv6.transition.isolation_facts:
    scope: host
    parallel_family: ipv6
    bridge: mv6br0
    uplink: eth1
    ports: "{{ mv6_plan.hosts[inventory_hostname].guests.values() | map(attribute='port') }}"
  register: audit

- name: Fail on any violation
  ansible.builtin.assert:
    that: audit.violations | length == 0
    fail_msg: "{{ audit.violations }}"

- name: Audit a guest over the guest agent
  mv6.transition.isolation_facts:
    scope: guest
    parallel_family: ipv6
"""

RETURN = r"""
violations:
  description: Every violation found; empty when the state is isolated.
  returned: always
  type: list
  elements: dict
  contains:
    check:
      description: Which check found it, for example C(host_address) or C(guest_route).
      type: str
    object:
      description: The interface, sysctl, table, domain NIC or process concerned.
      type: str
    reason:
      description: What is wrong, in words.
      type: str
  sample:
    - check: host_address
      object: mv6br0
      reason: mv6br0 carries ipv4 address 198.51.100.9/24 but the host must take no L3 part
counters:
  description: Packet and byte counts of the named counters of the host table.
  returned: O(scope=host)
  type: dict
  sample: {"drop_ethertype": {"packets": 5, "bytes": 300}}
facts:
  description:
    - The raw findings the checks ran on (addresses, sysctls, ports, domains, ...).
    - With O(scope=host), C(domains) holds the NICs of the MV6 guests that were checked and
      C(other_domains) the names of the host's other libvirt domains, which were not, and
      C(capabilities_cache) the files of libvirt's QEMU capabilities cache after the second
      lookup (C([mtime_ns, size, inode]) by name).
    - With O(scope=host), C(coexistence) lists what else on the host touches the parallel
      side, each with C(object) and C(reason). These are reported, not violations. They are
      br_netfilter's host-wide switches, firewalld zones that hold an MV6 interface, and
      active libvirt networks with an address of the parallel family. C(nft_owned) says,
      per table family, whether the table has the C(owner) flag (with O(owned)).
  returned: always
  type: dict
"""


import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils import _isolation as iso  # noqa: E402


def run_json(module, argv, missing_ok=False):
    rc, out, err = module.run_command(argv, check_rc=False)
    if rc != 0:
        if missing_ok:
            return None
        module.fail_json(msg=f"{' '.join(argv)} failed (rc {rc}): {err.strip()}")
    text = out.strip()
    return json.loads(text) if text else []


def list_table(module, nft, family, table):
    """What the host checks read of a table (its chains, its counters, and the port set with
    its elements) as C(nft -j) prints them, and the table's text listing; (None, None) where
    there is no such table, also when it goes while it is being read.

    nft 1.0.6 prints the flags of a table with the owner flag (the keeper's) from freed
    memory, which can break the JSON of C(list table) and C(list ruleset). None of the
    listings used here prints the table object; the text listing, whose flags are right,
    says whether the table is there and whether it is owned. The chains and sets are listed
    for the whole family, so no name found in the table is ever passed back to nft.
    """
    rc, text, _err = module.run_command([nft, "list", "table", family, table])
    if rc != 0:
        return None, None
    parts = [
        ["list", "chains", family],
        ["list", "counters", "table", family, table],
        ["list", "sets", family],
    ]
    if family == "bridge":
        parts.append(["list", "set", family, table, iso.PORT_SET])
    items = []
    for part in parts:
        listed = run_json(module, [nft, "-j", *part], missing_ok=True)
        if listed is None and part[1] != "set":
            return None, None  # the table went meanwhile
        for item in (listed or {}).get("nftables", []):
            kind = next(iter(item), None)
            if kind == "metainfo" or item[kind].get("table") != table:
                continue
            # The port set comes from its own listing, the only one with its elements.
            if part[1] == "sets" and family == "bridge" and item[kind]["name"] == iso.PORT_SET:
                continue
            items.append(item)
    return {"nftables": items}, text


def read_proc(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def processes():
    """The processes of this host: those of its own PID namespace. A container on the host
    (another PID namespace) is another system, with its own QEMU and network clients."""
    procs = []
    try:
        own = os.readlink("/proc/self/ns/pid")
    except OSError:
        own = None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if own is not None:
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != own:
                    continue
            except OSError:
                continue
        comm = read_proc(f"/proc/{entry}/comm")
        status = read_proc(f"/proc/{entry}/status")
        cmdline = read_proc(f"/proc/{entry}/cmdline")
        if comm is None or status is None:
            continue
        uid = -1
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
        argv = [a for a in (cmdline or "").split("\0") if a]
        procs.append({"pid": int(entry), "comm": comm.strip(), "uid": uid, "argv": argv})
    return procs


def libvirt_domains(module, uri, guests):
    """``({name: nics})`` of the MV6 guests among the host's domains, the other domains'
    names, and a problem (or None)."""
    virsh = module.get_bin_path("virsh")
    if virsh is None:
        return None, [], "virsh is not installed"
    rc, out, err = module.run_command([virsh, "-q", "-c", uri, "list", "--all", "--name"])
    if rc != 0:
        return None, [], f"virsh list failed: {err.strip()}"
    xml_by_name = {}
    for name in (line.strip() for line in out.splitlines()):
        if not name:
            continue
        rc, xml, err = module.run_command([virsh, "-q", "-c", uri, "dumpxml", name])
        if rc != 0:
            # A domain undefined between list and dumpxml is gone: nothing to check.
            continue
        xml_by_name[name] = xml
    try:
        domains, others = iso.select_mv6_domains(xml_by_name, guests)
    except ET.ParseError as exc:
        return None, [], f"cannot parse the XML of a domain: {exc}"
    return domains, others, None


def coexistence_findings(module, params, bridge, ports):
    """What else on the host touches the parallel side: reported by name, not violations."""
    found = iso.coexistence_br_netfilter(
        {
            name: read_proc(f"/proc/sys/net/bridge/bridge-nf-call-{name}")
            for name in ("iptables", "ip6tables", "arptables")
        },
        bridge,
    )
    firewall_cmd = module.get_bin_path("firewall-cmd")
    if firewall_cmd:
        rc, _out, _err = module.run_command([firewall_cmd, "--state"])
        if rc == 0:
            rc, out, err = module.run_command([firewall_cmd, "--get-active-zones"])
            if rc != 0:
                module.fail_json(msg=f"firewall-cmd --get-active-zones: {err.strip()}")
            found += iso.coexistence_firewalld(iso.parse_firewalld_zones(out), [bridge, *ports])
    virsh = module.get_bin_path("virsh")
    if params["check_domains"] and virsh:
        uri = params["libvirt_uri"]
        rc, out, _err = module.run_command([virsh, "-q", "-c", uri, "net-list", "--name"])
        xml_by_name = {}
        for name in (line.strip() for line in out.splitlines() if rc == 0):
            if name:
                rc2, xml, _err = module.run_command([virsh, "-q", "-c", uri, "net-dumpxml", name])
                if rc2 == 0:
                    xml_by_name[name] = xml
        found += iso.coexistence_libvirt_networks(xml_by_name, params["parallel_family"])
    return found


def capabilities_snapshot(directory):
    """``{file: [mtime_ns, size, inode]}`` of the XML files in *directory*."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.xml"))):
        try:
            info = os.stat(path)
        except OSError:
            continue
        found[os.path.basename(path)] = [info.st_mtime_ns, info.st_size, info.st_ino]
    return found


def capabilities_reprobe(module, uri, directory):
    """Two capability lookups in a row; violations when libvirt re-probed QEMU for the
    second, plus the two snapshots. The first lookup may refresh a stale cache once."""
    virsh = module.get_bin_path("virsh")
    if virsh is None:
        return [], {}
    snapshots = []
    for _lookup in range(2):
        rc, _out, err = module.run_command([virsh, "-q", "-c", uri, "domcapabilities"])
        if rc != 0:
            return [
                iso.violation(
                    "libvirt_reprobe", uri, f"virsh domcapabilities failed: {err.strip()}"
                )
            ], {}
        snapshots.append(capabilities_snapshot(directory))
    return iso.check_capabilities_cache(snapshots[0], snapshots[1], uri), snapshots[1]


def host_checks(module, params):
    family = params["parallel_family"]
    bridge = params["bridge"]
    uplink = params["uplink"]
    table = params["nft_table"] or "mv6_isolation"
    ip = module.get_bin_path("ip", required=True)
    nft = module.get_bin_path("nft", required=True)

    links = run_json(module, [ip, "-j", "-d", "link", "show"])
    addrs = run_json(module, [ip, "-j", "addr", "show"])
    violations = iso.check_links_present(links, bridge, uplink)
    actual_ports = iso.bridge_ports(links, bridge)
    expected_ports = sorted(
        set(params["ports"]) | set(actual_ports) | ({uplink} if uplink else set())
    )
    existing = {link.get("ifname") for link in links}
    l2_only = [bridge, *[p for p in expected_ports if p in existing]]
    violations += iso.check_no_addresses(addrs, l2_only)
    violations += iso.check_bridge_netfilter(links, bridge)

    sysctls = {}
    for ifname in l2_only:
        if ifname not in existing:
            continue
        sysctls[ifname] = {
            template: read_proc("/proc/sys/" + iso.sysctl_path(template, ifname))
            for template in iso.HOST_SYSCTLS
        }
    violations += iso.check_sysctls(sysctls)

    fdb = []
    if params["port_macs"] and bridge in existing:
        bridge_bin = module.get_bin_path("bridge", required=True)
        fdb = run_json(module, [bridge_bin, "-j", "fdb", "show", "br", bridge])
        violations += iso.check_port_fdb(links, fdb, bridge, params["port_macs"])

    table_json, table_text = list_table(module, nft, "bridge", table)
    nft_violations, counters = iso.check_nft_table(
        table_json, table, [p for p in expected_ports if p in existing]
    )
    violations += nft_violations
    guard_json, guard_text = None, None
    if params["host_guard"]:
        guard_json, guard_text = list_table(module, nft, "inet", table)
        violations += iso.check_host_guard(guard_json, table)

    owned = {}
    if params["owned"]:
        texts = {"bridge": table_text, "inet": guard_text}
        owned = {family: iso.table_is_owned(text) for family, text in texts.items() if text}
        violations += iso.check_nft_owner(owned, table)

    record = None
    if params["nft_record"] and os.path.exists(params["nft_record"]):
        with open(params["nft_record"], encoding="utf-8") as fh:
            record = fh.read()
    live = None
    if record is not None and table_json is not None:
        families = ["bridge"] + (["inet"] if params["host_guard"] and guard_json else [])
        texts = []
        for family in families:
            rc, out, err = module.run_command([nft, "-s", "list", "table", family, table])
            if rc != 0:
                module.fail_json(msg=f"nft -s list table {family} {table}: {err.strip()}")
            texts.append(out.rstrip("\n"))
        live = "\n".join(texts)
        violations += iso.check_nft_drift(live, record, table)

    coexistence = coexistence_findings(module, params, bridge, expected_ports)

    domains, other_domains, caps_cache = None, [], None
    if params["check_domains"]:
        domains, other_domains, problem = libvirt_domains(
            module, params["libvirt_uri"], params["guests"]
        )
        if problem:
            violations.append(iso.violation("guest_nic", params["libvirt_uri"], problem))
        else:
            violations += iso.check_domain_interfaces(domains, bridge, actual_ports)
        reprobe, caps_cache = capabilities_reprobe(
            module, params["libvirt_uri"], params["capabilities_cache"]
        )
        violations += reprobe

    qemu = [p for p in processes() if iso.QEMU_NAMES.match(p["comm"])]
    violations += iso.check_qemu_processes(qemu)

    facts = {
        "scope": "host",
        "parallel_family": family,
        "bridge": bridge,
        "bridge_ports": actual_ports,
        "l2_only_interfaces": l2_only,
        "addresses": {
            a["ifname"]: [f"{i.get('local')}/{i.get('prefixlen')}" for i in a.get("addr_info", [])]
            for a in addrs
            if a.get("ifname") in l2_only
        },
        "sysctls": {
            iso.sysctl_key(iso.sysctl_path(t, ifname)): v.strip() if v else v
            for ifname, reads in sysctls.items()
            for t, v in reads.items()
        },
        "pinned_macs": {
            e["ifname"]: str(e.get("mac")).lower()
            for e in fdb
            if e.get("ifname") in params["port_macs"] and e.get("state") == "static"
        },
        "nft_table_present": table_json is not None,
        "nft_record_compared": live is not None,
        "nft_owned": owned,
        "coexistence": coexistence,
        "host_guard_present": guard_json is not None,
        "domains": domains,
        "other_domains": other_domains,
        "capabilities_cache": caps_cache,
        "qemu_processes": [{"pid": p["pid"], "uid": p["uid"], "comm": p["comm"]} for p in qemu],
    }
    return violations, facts, counters


def guest_checks(module, params):
    family = params["parallel_family"]
    wrong = iso.other_family(family)
    flag = "-4" if wrong == "ipv4" else "-6"
    table = params["nft_table"] or "mv6_guest"
    ip = module.get_bin_path("ip", required=True)

    addrs = run_json(module, [ip, "-j", "addr", "show"])
    violations = iso.check_guest_addresses(addrs, family)
    routes = run_json(module, [ip, "-j", flag, "route", "show", "table", "all"], missing_ok=True)
    violations += iso.check_guest_routes(routes or [], family)

    sockets = []
    ss = module.get_bin_path("ss")
    if ss is None:
        violations.append(iso.violation("guest_listener", "ss", "ss is not installed"))
    else:
        rc, out, err = module.run_command([ss, "-H", "-l", "-n", "-t", "-u"])
        if rc != 0:
            module.fail_json(msg=f"ss failed (rc {rc}): {err.strip()}")
        sockets = iso.parse_ss(out)
        violations += iso.check_listeners(sockets, family)

    procs = processes()
    dhcp = [p for p in procs if iso.dhcp_client_families(p["comm"], p["argv"] or [p["comm"]])]
    violations += iso.check_dhcp_processes(dhcp, family)
    networkd_files = {}
    if any(p["comm"] == "systemd-network" for p in procs):
        for pattern in ("/etc/systemd/network/*.network", "/run/systemd/network/*.network"):
            for path in sorted(glob.glob(pattern)):
                networkd_files[path] = read_proc(path) or ""
        violations += iso.check_networkd_files(networkd_files, family)

    disable_ipv6 = read_proc("/proc/sys/net/ipv6/conf/all/disable_ipv6")
    violations += iso.check_ipv6_disabled(disable_ipv6, family)

    nft = module.get_bin_path("nft")
    table_json = None
    if nft is not None:
        table_json = run_json(module, [nft, "-j", "list", "table", "inet", table], missing_ok=True)
    violations += iso.check_guest_nft(table_json, family, table)

    facts = {
        "scope": "guest",
        "parallel_family": family,
        "addresses": {
            a["ifname"]: [f"{i.get('local')}/{i.get('prefixlen')}" for i in a.get("addr_info", [])]
            for a in addrs
        },
        "wrong_family_routes": routes or [],
        "listeners": sockets,
        "dhcp_clients": [{"pid": p["pid"], "comm": p["comm"], "argv": p["argv"]} for p in dhcp],
        "networkd_files": sorted(networkd_files),
        "ipv6_all_disable_ipv6": disable_ipv6.strip() if disable_ipv6 else None,
        "nft_table_present": table_json is not None,
    }
    return violations, facts, None


def main():
    module = AnsibleModule(
        argument_spec={
            "scope": {"type": "str", "choices": ["host", "guest"], "default": "host"},
            "parallel_family": {"type": "str", "required": True, "choices": ["ipv4", "ipv6"]},
            "bridge": {"type": "str"},
            "uplink": {"type": "str"},
            "ports": {"type": "list", "elements": "str", "default": []},
            "port_macs": {"type": "dict", "default": {}},
            "nft_record": {"type": "path"},
            "owned": {"type": "bool", "default": False},
            "nft_table": {"type": "str"},
            "host_guard": {"type": "bool", "default": True},
            "libvirt_uri": {"type": "str", "default": "qemu:///system"},
            "check_domains": {"type": "bool", "default": True},
            "guests": {"type": "list", "elements": "str", "default": []},
            "capabilities_cache": {
                "type": "path",
                "default": "/var/cache/libvirt/qemu/capabilities",
            },
        },
        required_if=[("scope", "host", ["bridge"])],
        supports_check_mode=True,
    )
    # Parse the C locale's output of ip/ss whatever the target's locale is.
    module.run_command_environ_update = {"LANG": "C", "LC_ALL": "C"}
    if module.params["scope"] == "host":
        violations, facts, counters = host_checks(module, module.params)
    else:
        violations, facts, counters = guest_checks(module, module.params)
    result = {"changed": False, "violations": violations, "facts": facts}
    if counters is not None:
        result["counters"] = counters
    module.exit_json(**result)


if __name__ == "__main__":
    main()
