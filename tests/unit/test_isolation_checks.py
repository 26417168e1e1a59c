"""Table-driven tests of plugins/module_utils/_isolation.py on captured JSON and text."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

# The collection is importable as ansible_collections.mv6.transition through .collections/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _isolation as iso

ADDR_JSON = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {
        "ifname": "mv6br0",
        "addr_info": [{"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}],
    },
    {"ifname": "mv6p0", "addr_info": []},
    {
        "ifname": "eth0",
        "addr_info": [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24}],
    },
]


def test_host_addresses_named():
    found = iso.check_no_addresses(ADDR_JSON, ["mv6br0", "mv6p0"])
    assert found == [
        {
            "check": "host_address",
            "object": "mv6br0",
            "reason": "mv6br0 carries ipv6 address fe80::1/64 but the host must take no L3 part"
            " in the parallel network",
        }
    ]


def test_native_interfaces_are_not_checked():
    assert iso.check_no_addresses(ADDR_JSON, ["mv6p0"]) == []


LINKS = [
    {"ifname": "mv6br0", "linkinfo": {"info_kind": "bridge"}},
    {"ifname": "eth1", "master": "mv6br0"},
    {"ifname": "mv6p0", "master": "mv6br0"},
    {"ifname": "eth2"},
]


@pytest.mark.parametrize(
    ("bridge", "uplink", "reasons"),
    [
        ("mv6br0", "eth1", []),
        ("mv6br0", None, []),
        ("nobr", None, ["bridge nobr does not exist"]),
        ("eth2", None, ["eth2 exists but is not a bridge"]),
        ("mv6br0", "eth2", ["uplink eth2 is not a port of mv6br0 (master: None)"]),
        ("mv6br0", "eth9", ["uplink eth9 does not exist"]),
    ],
)
def test_links_present(bridge, uplink, reasons):
    assert [v["reason"] for v in iso.check_links_present(LINKS, bridge, uplink)] == reasons


def test_bridge_ports():
    assert iso.bridge_ports(LINKS, "mv6br0") == ["eth1", "mv6p0"]


def test_sysctls():
    reads = {
        "mv6br0": dict(iso.HOST_SYSCTLS),
        "eth0.106": {
            **iso.HOST_SYSCTLS,
            "net/ipv6/conf/{ifname}/disable_ipv6": "0\n",
            "net/ipv4/conf/{ifname}/arp_ignore": None,
        },
    }
    assert iso.check_sysctls(reads) == [
        {
            "check": "host_sysctl",
            "object": "net.ipv4.conf.eth0/106.arp_ignore",
            "reason": "net.ipv4.conf.eth0/106.arp_ignore cannot be read",
        },
        {
            "check": "host_sysctl",
            "object": "net.ipv6.conf.eth0/106.disable_ipv6",
            "reason": "net.ipv6.conf.eth0/106.disable_ipv6 is 0, expected 1",
        },
    ]


def _table(chains=iso.HOST_CHAINS, counters=iso.HOST_COUNTERS, ports=("mv6p0",)):
    hooks = {
        "parallel_input": "input",
        "parallel_output": "output",
        "parallel_prerouting": "prerouting",
        "parallel_forward": "forward",
    }
    items = [{"metainfo": {"version": "1.0.6"}}]
    items += [{"counter": {"name": c, "packets": 3, "bytes": 180}} for c in counters]
    items += [{"chain": {"name": c, **({"hook": hooks[c]} if c in hooks else {})}} for c in chains]
    items.append({"set": {"name": "parallel_ports", "type": "ifname", "elem": list(ports)}})
    return {"nftables": items}


def test_nft_table_complete():
    found, counters = iso.check_nft_table(_table(), "mv6_isolation", ["mv6p0"])
    assert found == []
    assert counters["drop_vlan"] == {"packets": 3, "bytes": 180}


def test_nft_table_missing():
    found, counters = iso.check_nft_table(None, "mv6_isolation", [])
    assert counters == {}
    assert found == [
        {
            "check": "nft_table",
            "object": "bridge mv6_isolation",
            "reason": "nftables table bridge mv6_isolation is missing",
        }
    ]


def test_host_guard():
    table = {"nftables": [{"chain": {"name": "parallel_host_output", "hook": "output"}}]}
    assert [v["reason"] for v in iso.check_host_guard(table, "t")] == [
        "chain parallel_host_input is missing",
        "chain parallel_notrack is missing",
    ]
    assert [v["object"] for v in iso.check_host_guard(None, "t")] == ["inet t"]


def test_nft_table_gaps():
    table = _table(
        chains=("parallel_input", "from_parallel_port"),
        counters=[c for c in iso.HOST_COUNTERS if c != "drop_qinq"],
    )
    found, _counters = iso.check_nft_table(table, "t", ["mv6p0", "mv6p7"])
    assert [v["reason"] for v in found] == [
        "chain parallel_output is missing",
        "chain parallel_prerouting is missing",
        "chain parallel_forward is missing",
        "no base chain on the prerouting hook",
        "no base chain on the output hook",
        "no base chain on the forward hook",
        "counter drop_qinq is missing",
        "port mv6p7 is on the parallel bridge but not in set parallel_ports of table bridge t:"
        " its frames are not filtered",
    ]


DOMAIN_XML = """<domain type='qemu'><name>web6</name><devices>
<interface type='bridge'><mac address='02:00:00:00:00:01'/><source bridge='mv6br0'/>
<target dev='mv6p0'/></interface>
<interface type='network'><mac address='52:54:00:00:00:02'/><source network='default'/>
</interface></devices></domain>"""


def test_domain_nics():
    nics = iso.domain_interfaces(DOMAIN_XML)
    assert nics[0] == {
        "type": "bridge",
        "source": "mv6br0",
        "target": "mv6p0",
        "mac": "02:00:00:00:00:01",
    }
    found = iso.check_domain_interfaces({"web6": nics}, "mv6br0")
    assert found == [
        {
            "check": "guest_nic",
            "object": "web6 52:54:00:00:00:02",
            "reason": "domain web6 has a network NIC on default: guests attach only to the"
            " parallel bridge mv6br0",
        }
    ]


def test_prepared_tap_on_the_bridge_is_fine():
    xml = """<domain><devices><interface type='ethernet'><target dev='mv6p3' managed='no'/>
    <mac address='02:00:00:00:00:03'/></interface></devices></domain>"""
    nics = iso.domain_interfaces(xml)
    assert iso.check_domain_interfaces({"g": nics}, "mv6br0", ["mv6p3"]) == []
    assert [v["object"] for v in iso.check_domain_interfaces({"g": nics}, "mv6br0", [])] == [
        "g 02:00:00:00:00:03"
    ]


def test_qemu_as_root():
    procs = [
        {"pid": 10, "comm": "qemu-system-x86", "uid": 0},
        {"pid": 11, "comm": "qemu-system-x86", "uid": 64055},
        {"pid": 12, "comm": "bash", "uid": 0},
    ]
    assert [v["object"] for v in iso.check_qemu_processes(procs)] == ["pid 10"]


@pytest.mark.parametrize("family", ["ipv5", "", "IPv6"])
def test_family_checked(family):
    msg = f"parallel_family must be one of ipv4, ipv6, got {family!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        iso.other_family(family)


GUEST_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {
        "ifname": "eth0",
        "addr_info": [
            {"family": "inet6", "local": "2001:db8::10", "prefixlen": 64},
            {"family": "inet", "local": "198.51.100.7", "prefixlen": 24},
        ],
    },
]


@pytest.mark.parametrize(
    ("family", "objects"),
    [("ipv6", ["eth0 198.51.100.7"]), ("ipv4", ["eth0 2001:db8::10"])],
)
def test_guest_addresses(family, objects):
    assert [v["object"] for v in iso.check_guest_addresses(GUEST_ADDR, family)] == objects


def test_guest_routes_ignore_loopback():
    routes = [
        {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
        {"dst": "198.51.100.0/24", "dev": "eth0"},
    ]
    assert [v["object"] for v in iso.check_guest_routes(routes, "ipv6")] == [
        "198.51.100.0/24 dev eth0"
    ]


SS = """tcp   LISTEN 0      128          0.0.0.0:22        0.0.0.0:*
tcp   LISTEN 0      4096   127.0.0.53%lo:53        0.0.0.0:*
tcp   LISTEN 0      128             [::]:22           [::]:*
tcp   LISTEN 0      128                *:80              *:*
udp   UNCONN 0      0      [fe80::1]%eth0:546         [::]:*
"""


@pytest.mark.parametrize(
    ("family", "objects"),
    [
        ("ipv6", ["tcp 0.0.0.0:22"]),
        ("ipv4", ["tcp [::]:22", "udp [fe80::1]%eth0:546"]),
    ],
)
def test_listeners(family, objects):
    found = iso.check_listeners(iso.parse_ss(SS), family)
    assert [v["object"] for v in found] == objects


@pytest.mark.parametrize(
    ("comm", "argv", "families"),
    [
        ("dhclient", ["dhclient", "eth0"], {"ipv4"}),
        ("dhclient", ["dhclient", "-6", "eth0"], {"ipv6"}),
        ("dhcpcd", ["dhcpcd"], {"ipv4", "ipv6"}),
        ("dhcpcd", ["dhcpcd", "-4"], {"ipv4"}),
        ("dhcpcd", ["dhcpcd", "--ipv6only"], {"ipv6"}),
        ("udhcpc", ["udhcpc"], {"ipv4"}),
        ("sshd", ["sshd"], set()),
    ],
)
def test_dhcp_client_families(comm, argv, families):
    assert iso.dhcp_client_families(comm, argv) == families


@pytest.mark.parametrize(
    ("text", "families"),
    [
        ("[Network]\nDHCP=yes\n", {"ipv4", "ipv6"}),
        ("[Network]\nDHCP=ipv6\n", {"ipv6"}),
        ("[Network]\n# DHCP=ipv4\nAddress=2001:db8::1/64\n", set()),
        ("[DHCPv4]\nDHCP=ipv4\n", set()),
    ],
)
def test_networkd_dhcp(text, families):
    assert iso.networkd_dhcp(text) == families


def test_ipv6_disabled_for_v4_guests():
    assert iso.check_ipv6_disabled("1\n", "ipv4") == []
    assert iso.check_ipv6_disabled(None, "ipv4") == []
    assert iso.check_ipv6_disabled("0", "ipv6") == []
    assert [v["reason"] for v in iso.check_ipv6_disabled("0\n", "ipv4")] == [
        "net.ipv6.conf.all.disable_ipv6 is 0 in an ipv4-only guest, expected 1"
    ]


GUEST_NFT = {
    "nftables": [
        {"table": {"family": "inet", "name": "mv6_guest"}},
        {
            "rule": {
                "chain": "input",
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"meta": {"key": "nfproto"}},
                            "right": "ipv4",
                        }
                    },
                    {"drop": None},
                ],
            }
        },
    ]
}


def test_guest_nft():
    assert iso.check_guest_nft(GUEST_NFT, "ipv6") == []
    assert [v["reason"] for v in iso.check_guest_nft(GUEST_NFT, "ipv4")] == [
        "table inet mv6_guest has no rule dropping meta nfproto ipv6"
    ]
    assert [v["reason"] for v in iso.check_guest_nft(None, "ipv6")] == [
        "nftables table inet mv6_guest is missing"
    ]


# `virsh dumpxml` of an MV6 guest as roles/guest defines it (metadata trimmed to two fields).
MV6_DOMAIN_XML = """<domain type='qemu'><name>web6</name>
<metadata><mv6:guest xmlns:mv6="https://mv6.invalid/transition">
<mv6:hypervisor>localhost</mv6:hypervisor><mv6:port>mv6p0</mv6:port></mv6:guest></metadata>
<devices><interface type='network'><mac address='52:54:00:00:00:02'/>
<source network='default'/></interface></devices></domain>"""

# An unrelated VM on the same host (another tool's test domain): no MV6 metadata.
OTHER_DOMAIN_XML = """<domain type='qemu'><name>t-other</name>
<metadata><x:app xmlns:x="https://example.invalid/other"/></metadata>
<devices><interface type='network'><mac address='52:54:00:00:00:09'/>
<source network='default'/></interface></devices></domain>"""


def test_only_mv6_domains_are_checked():
    assert iso.is_mv6_domain(MV6_DOMAIN_XML)
    assert not iso.is_mv6_domain(OTHER_DOMAIN_XML)
    assert not iso.is_mv6_domain(DOMAIN_XML)
    selected, others = iso.select_mv6_domains(
        {"web6": MV6_DOMAIN_XML, "t-other": OTHER_DOMAIN_XML, "plain": DOMAIN_XML}
    )
    assert sorted(selected) == ["web6"] and others == ["plain", "t-other"]
    # The unrelated domains' NICs on `default` are not reported; the MV6 guest's is.
    assert [v["object"] for v in iso.check_domain_interfaces(selected, "mv6br0")] == [
        "web6 52:54:00:00:00:02"
    ]


def test_planned_guest_without_metadata_is_checked():
    selected, others = iso.select_mv6_domains(
        {"plain": DOMAIN_XML, "t-other": OTHER_DOMAIN_XML}, guests=["plain"]
    )
    assert sorted(selected) == ["plain"] and others == ["t-other"]
    assert [v["object"] for v in iso.check_domain_interfaces(selected, "mv6br0")] == [
        "plain 52:54:00:00:00:02"
    ]


# `ss -H -lnptu` in an IPv6-only lab guest before the resolved drop-in (Debian 12, systemd 252):
# LLMNR on both wildcard addresses, the stub resolver on IPv4 loopback.
SS_RESOLVED = """udp UNCONN 0 0 127.0.0.54:53 0.0.0.0:* users:(("systemd-resolve",pid=301,fd=20))
udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=301,fd=18))
udp UNCONN 0 0 0.0.0.0:5355 0.0.0.0:* users:(("systemd-resolve",pid=301,fd=11))
udp UNCONN 0 0 [::]:5355 [::]:* users:(("systemd-resolve",pid=301,fd=13))
tcp LISTEN 0 4096 127.0.0.54:53 0.0.0.0:* users:(("systemd-resolve",pid=301,fd=21))
tcp LISTEN 0 4096 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=301,fd=19))
tcp LISTEN 0 4096 0.0.0.0:5355 0.0.0.0:* users:(("systemd-resolve",pid=301,fd=12))
tcp LISTEN 0 4096 [::]:5355 [::]:* users:(("systemd-resolve",pid=301,fd=14))
tcp LISTEN 0 4096 [::1]:631 [::]:* users:(("cupsd",pid=400,fd=7))
"""


@pytest.mark.parametrize(
    ("family", "objects"),
    [
        # Loopback of the wrong family (127.0.0.53/54, ::1) is allowed: every Linux has it.
        ("ipv6", ["udp 0.0.0.0:5355", "tcp 0.0.0.0:5355"]),
        ("ipv4", ["udp [::]:5355", "tcp [::]:5355"]),
    ],
)
def test_resolved_llmnr_is_reported_loopback_is_not(family, objects):
    found = iso.check_listeners(iso.parse_ss(SS_RESOLVED), family)
    assert [v["object"] for v in found] == objects


def test_capabilities_cache_rewritten_between_lookups_is_reported():
    before = {"a.xml": [1, 10, 7], "b.xml": [2, 20, 8]}
    after = {"a.xml": [5, 10, 9], "b.xml": [2, 20, 8]}
    found = iso.check_capabilities_cache(before, after, "qemu:///system")
    assert [(v["check"], v["object"]) for v in found] == [("libvirt_reprobe", "qemu:///system")]
    assert "(a.xml)" in found[0]["reason"]


def test_capabilities_cache_untouched_or_new_file():
    same = {"a.xml": [1, 10, 7]}
    assert iso.check_capabilities_cache(same, dict(same), "qemu:///system") == []
    # A binary probed for the first time between the lookups is a rewrite too.
    found = iso.check_capabilities_cache({}, same, "qemu:///system")
    assert "(a.xml)" in found[0]["reason"]


def test_counters_are_the_roles():
    """The audit's counter list is the one the hypervisor role renders (vars/main.yml)."""
    import yaml

    role_vars = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "roles/hypervisor/vars/main.yml").read_text()
    )
    assert list(iso.HOST_COUNTERS) == role_vars["__hypervisor_nft_counters"]


def _slave(name, learning, master="mv6br0"):
    return {
        "ifname": name,
        "master": master,
        "linkinfo": {"info_slave_kind": "bridge", "info_slave_data": {"learning": learning}},
    }


PIN = {"mac": "02:6d:76:00:00:01", "ifname": "mv6p0", "master": "mv6br0", "state": "static",
       "flags": ["sticky"]}  # fmt: skip


def test_port_fdb_pinned_port_passes():
    links = [_slave("mv6p0", False), _slave("eth1", True)]
    fdb = [PIN, {"mac": "02:00:00:00:00:99", "ifname": "eth1", "master": "mv6br0", "state": ""}]
    assert iso.check_port_fdb(links, fdb, "mv6br0", {"mv6p0": "02:6D:76:00:00:01"}) == []


@pytest.mark.parametrize(
    ("learning", "fdb", "needle"),
    [
        (True, [PIN], "learning is on"),
        (False, [], "is not a static sticky FDB entry"),
        (False, [{**PIN, "flags": []}], "is not a static sticky FDB entry"),
        (False, [{**PIN, "ifname": "mv6p1"}], "is not a static sticky FDB entry"),
        (
            False,
            [PIN, {"mac": "02:6d:76:00:00:02", "ifname": "mv6p0", "master": "mv6br0"}],
            "learned MACs not its guest's: ['02:6d:76:00:00:02']",
        ),
    ],
)
def test_port_fdb_violations(learning, fdb, needle):
    found = iso.check_port_fdb([_slave("mv6p0", learning)], fdb, "mv6br0", {"mv6p0": PIN["mac"]})
    assert [v["check"] for v in found] == ["port_fdb"]
    assert needle in found[0]["reason"]


def test_port_fdb_skips_ports_not_on_the_bridge():
    links = [_slave("mv6p0", True, master="otherbr")]
    assert iso.check_port_fdb(links, [], "mv6br0", {"mv6p0": PIN["mac"], "mv6p9": PIN["mac"]}) == []


RECORD = """table bridge t {
\tset uplink_macs {
\t\ttype ether_addr
\t\tsize 64
\t\tflags dynamic,timeout
\t\ttimeout 5m
\t}

\tchain parallel_input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname @parallel_ports counter name "drop_input" drop
\t}
}"""


def test_nft_drift_ignores_the_uplinks_learned_macs():
    live = RECORD.replace(
        "timeout 5m\n",
        "timeout 5m\n\t\telements = { 02:00:00:00:00:01 expires 4m59s,\n"
        "\t\t\t 02:00:00:00:00:02 }\n",
    )
    assert live != RECORD
    assert iso.check_nft_drift(live + "\n", RECORD, "t") == []


def test_nft_drift_flushed_chain_is_reported():
    flushed = RECORD.replace('\t\tiifname @parallel_ports counter name "drop_input" drop\n', "")
    found = iso.check_nft_drift(flushed, RECORD, "t")
    assert [(v["check"], v["object"]) for v in found] == [("nft_drift", "bridge t")]
    assert "drop_input" in found[0]["reason"] and "missing" in found[0]["reason"]


def test_nft_drift_added_rule_is_reported():
    edited = RECORD.replace("policy accept;\n", "policy accept;\n\t\taccept\n")
    found = iso.check_nft_drift(edited, RECORD, "t")
    assert "not loaded by the role ['accept']" in found[0]["reason"]


def test_nft_drift_needs_a_record_and_a_table():
    assert iso.check_nft_drift("anything", None, "t") == []
    assert iso.check_nft_drift(None, RECORD, "t") == []


OWNED_LISTING = """table bridge mv6_isolation { # progname python3
    flags owner

    counter drop_input {
        packets 0 bytes 0
    }

    set uplink_macs {
        type ether_addr
        size 4096
        flags dynamic,timeout
        timeout 5m
    }
}
"""


def test_owner_flag_is_read_from_the_table_not_from_its_sets():
    assert iso.table_is_owned(OWNED_LISTING)
    unowned = OWNED_LISTING.replace("    flags owner\n", "")
    # The set's own "flags dynamic,timeout" is not the table's.
    assert not iso.table_is_owned(unowned)
    assert iso.table_is_owned(OWNED_LISTING.replace("flags owner", "flags dormant,owner"))


def test_nft_owner_reports_each_unowned_table():
    assert iso.check_nft_owner({"bridge": True, "inet": True}, "t") == []
    found = iso.check_nft_owner({"bridge": False, "inet": True}, "t")
    assert [(v["check"], v["object"]) for v in found] == [("nft_owner", "bridge t")]
    assert "flush ruleset" in found[0]["reason"]


def test_bridge_netfilter_switches_of_the_parallel_bridge():
    link = {"ifname": "mv6br0", "linkinfo": {"info_kind": "bridge", "info_data": {}}}
    data = link["linkinfo"]["info_data"]
    data.update(nf_call_iptables=0, nf_call_ip6tables=0, nf_call_arptables=0)
    other = {"ifname": "docker0", "linkinfo": {"info_data": {"nf_call_iptables": 1}}}
    assert iso.check_bridge_netfilter([link, other], "mv6br0") == []
    data["nf_call_ip6tables"] = 1
    found = iso.check_bridge_netfilter([link, other], "mv6br0")
    assert [(v["check"], v["object"]) for v in found] == [("bridge_netfilter", "mv6br0")]
    assert "nf_call_ip6tables" in found[0]["reason"]


def test_br_netfilter_host_switches_are_reported_by_name():
    assert iso.coexistence_br_netfilter({"iptables": None, "ip6tables": None}, "b") == []
    assert iso.coexistence_br_netfilter({"iptables": "0\n", "ip6tables": "0\n"}, "b") == []
    found = iso.coexistence_br_netfilter({"iptables": "1\n", "ip6tables": "0\n"}, "b")
    assert [f["object"] for f in found] == ["net.bridge.bridge-nf-call-iptables"]


FIREWALLD_ZONES = """docker
  interfaces: docker0
public
  interfaces: eth0 mv6up0
trusted
  sources: 203.0.113.0/24
"""


def test_firewalld_zones_holding_mv6_interfaces():
    zones = iso.parse_firewalld_zones(FIREWALLD_ZONES)
    assert zones == {"docker": ["docker0"], "public": ["eth0", "mv6up0"], "trusted": []}
    found = iso.coexistence_firewalld(zones, ["mv6br0", "mv6up0", "mv6p0"])
    assert [(f["object"], "mv6up0" in f["reason"]) for f in found] == [
        ("firewalld zone public", True)
    ]
    assert iso.coexistence_firewalld(zones, ["mv6br0"]) == []


DEFAULT_NET = """<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'/>
</network>"""


def test_libvirt_network_of_the_parallel_family_is_reported():
    found = iso.coexistence_libvirt_networks({"default": DEFAULT_NET}, "ipv4")
    assert [f["object"] for f in found] == ["libvirt network default"]
    assert "virbr0" in found[0]["reason"]
    # On an IPv4-native host (parallel IPv6) the default network's IPv4 is the native family.
    assert iso.coexistence_libvirt_networks({"default": DEFAULT_NET}, "ipv6") == []
    v6 = DEFAULT_NET.replace(
        "<ip address='192.168.122.1' netmask='255.255.255.0'/>",
        "<ip family='ipv6' address='2001:db8:122::1' prefix='64'/>",
    )
    assert iso.coexistence_libvirt_networks({"n6": v6}, "ipv6")[0]["object"] == "libvirt network n6"
