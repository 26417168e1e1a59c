"""Bad input to the planner: every error names the variable and says why, word for word."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _plan

V6 = {"prefix": "2001:db8:600::/48"}
V4 = {"prefix": "198.51.100.0/24", "host_prefixlen": 26}
V4S = {"prefix": "198.51.100.0/24", "layout": "shared"}
GUEST_KEYS = "address, disk_gib, image, memory_mib, name, persistence, router, state, vcpus"
PARALLEL_KEYS = (
    "address_mode, bridge, dhcp4_pool_size, dns, gateway, host_guard, host_prefixlen, layout, "
    "nft_table, prefix, uplink"
)


def g(name, **kw):
    return {"name": name, **kw}


# (id, native family, mv6_parallel, guests by host, keyword args, exact message)
CASES = [
    ("native-family", "ipv5", V6, {}, {}, "mv6_native_family: must be ipv4 or ipv6, got 'ipv5'"),
    ("parallel-not-dict", "ipv4", ["x"], {}, {}, "mv6_parallel: must be a dict, got list"),
    (
        "parallel-unknown-key",
        "ipv4",
        {**V6, "vlan": 6, "mtu": 1500},
        {},
        {},
        f"mv6_parallel: unknown key(s) mtu, vlan; known keys: {PARALLEL_KEYS}",
    ),
    (
        "prefix-missing",
        "ipv4",
        {"layout": "shared"},
        {},
        {},
        "mv6_parallel.prefix: is required (the parallel network's site block)",
    ),
    (
        "prefix-no-length",
        "ipv4",
        {"prefix": "2001:db8:600::"},
        {},
        {},
        "mv6_parallel.prefix: must be a network in CIDR notation such as 2001:db8:600::/48, "
        "got '2001:db8:600::'",
    ),
    (
        "prefix-garbage",
        "ipv4",
        {"prefix": "2001:db8:zz::/48"},
        {},
        {},
        "mv6_parallel.prefix: '2001:db8:zz::/48' is not an IP network",
    ),
    (
        "same-family-v4",
        "ipv4",
        V4,
        {},
        {},
        "mv6_parallel.prefix: 198.51.100.0/24 is ipv4, the same family as mv6_native_family; "
        "the parallel network must run the other family",
    ),
    (
        "same-family-v6",
        "ipv6",
        V6,
        {},
        {},
        "mv6_parallel.prefix: 2001:db8:600::/48 is ipv6, the same family as mv6_native_family; "
        "the parallel network must run the other family",
    ),
    (
        "prefix-host-bits",
        "ipv4",
        {"prefix": "2001:db8:600::1/48"},
        {},
        {},
        "mv6_parallel.prefix: 2001:db8:600::1/48 is not a network address (host bits are set); "
        "the network is 2001:db8:600::/48",
    ),
    (
        "prefix-v4-host-bits",
        "ipv6",
        {"prefix": "198.51.100.7/24"},
        {},
        {},
        "mv6_parallel.prefix: 198.51.100.7/24 is not a network address (host bits are set); "
        "the network is 198.51.100.0/24",
    ),
    (
        "prefix-reserved",
        "ipv4",
        {"prefix": "fe80::/64"},
        {},
        {},
        "mv6_parallel.prefix: fe80::/64 overlaps reserved range fe80::/10",
    ),
    (
        "layout",
        "ipv4",
        {**V6, "layout": "mesh"},
        {},
        {},
        "mv6_parallel.layout: must be per_host or shared, got 'mesh'",
    ),
    (
        "address-mode",
        "ipv4",
        {**V6, "address_mode": "dhcp"},
        {},
        {},
        "mv6_parallel.address_mode: must be eui64 or sequential, got 'dhcp'",
    ),
    (
        "eui64-with-v4",
        "ipv6",
        {**V4, "address_mode": "eui64"},
        {},
        {},
        "mv6_parallel.address_mode: eui64 needs an ipv6 parallel network; mv6_parallel.prefix "
        "is ipv4, use sequential",
    ),
    (
        "host-prefixlen-not-longer",
        "ipv4",
        {**V6, "host_prefixlen": 48},
        {},
        {},
        "mv6_parallel.host_prefixlen: /48 is not longer than mv6_parallel.prefix "
        "2001:db8:600::/48; each host needs a slice of it",
    ),
    (
        "host-prefixlen-shorter",
        "ipv6",
        {"prefix": "198.51.100.0/24", "host_prefixlen": 16},
        {},
        {},
        "mv6_parallel.host_prefixlen: /16 is not longer than mv6_parallel.prefix "
        "198.51.100.0/24; each host needs a slice of it",
    ),
    (
        "host-prefixlen-string",
        "ipv4",
        {**V6, "host_prefixlen": "64"},
        {},
        {},
        "mv6_parallel.host_prefixlen: must be an integer from 1 to 128, got '64'",
    ),
    (
        "host-prefixlen-bool",
        "ipv6",
        {**V4, "host_prefixlen": True},
        {},
        {},
        "mv6_parallel.host_prefixlen: must be an integer from 1 to 32, got True",
    ),
    (
        "eui64-needs-64",
        "ipv4",
        {**V6, "host_prefixlen": 56},
        {},
        {},
        "mv6_parallel.host_prefixlen: address_mode eui64 needs a /64 subnet (the length SLAAC "
        "works on), got /56",
    ),
    (
        "eui64-shared-needs-64",
        "ipv4",
        {**V6, "layout": "shared"},
        {},
        {},
        "mv6_parallel.prefix: address_mode eui64 needs a /64 subnet (the length SLAAC works "
        "on), got /48",
    ),
    (
        "shared-host-prefixlen",
        "ipv6",
        {**V4S, "host_prefixlen": 26},
        {},
        {},
        "mv6_parallel.host_prefixlen: must be left out or equal the prefix length (24) with "
        "layout shared, got 26",
    ),
    (
        "host-prefixlen-too-long-v4",
        "ipv6",
        {**V4, "host_prefixlen": 31},
        {},
        {},
        "mv6_parallel.host_prefixlen: /31 leaves no address for a guest (network, gateway and "
        "broadcast come first); use /30 or shorter",
    ),
    (
        "host-prefixlen-too-long-v6",
        "ipv4",
        {**V6, "address_mode": "sequential", "host_prefixlen": 127},
        {},
        {},
        "mv6_parallel.host_prefixlen: /127 leaves no address for a guest (network, gateway and "
        "broadcast come first); use /126 or shorter",
    ),
    (
        "guests-do-not-fit",
        "ipv6",
        {**V4, "host_prefixlen": 30},
        {"hv1": [g("a"), g("b")]},
        {},
        "mv6_guests on host hv1: 2 guests do not fit: a /30 (mv6_parallel.host_prefixlen) holds "
        "1 guest addresses",
    ),
    (
        "hosts-exhausted",
        "ipv4",
        {"prefix": "2001:db8:600::/63"},
        {"hv1": [], "hv2": [], "hv3": []},
        {},
        "mv6_parallel.prefix: pool exhausted: 2001:db8:600::/63 holds 2 subnets of /64 "
        "(mv6_parallel.host_prefixlen), the plan needs 3",
    ),
    (
        "shared-exhausted",
        "ipv6",
        {"prefix": "198.51.100.0/29", "layout": "shared"},
        {"hv1": [g(f"a{i}") for i in range(3)], "hv2": [g(f"b{i}") for i in range(3)]},
        {},
        "mv6_parallel.prefix: pool exhausted: 198.51.100.0/29 holds 5 guest addresses, the plan "
        "needs 6",
    ),
    (
        "guests-not-list",
        "ipv4",
        V6,
        {"hv1": {"web6": {}}},
        {},
        "mv6_guests on host hv1: must be a list, got dict",
    ),
    (
        "guest-not-dict",
        "ipv4",
        V6,
        {"hv1": [g("a"), "web6"]},
        {},
        "mv6_guests[1] on host hv1: must be a dict with at least name, got str",
    ),
    (
        "guest-unknown-key",
        "ipv4",
        V6,
        {"hv1": [g("a", cpus=2, ram=1)]},
        {},
        f"mv6_guests[0] on host hv1: unknown key(s) cpus, ram; known keys: {GUEST_KEYS}",
    ),
    (
        "guest-name-missing",
        "ipv4",
        V6,
        {"hv1": [{"vcpus": 1}]},
        {},
        "mv6_guests[0].name on host hv1: None is not a valid hostname (1 to 63 lowercase "
        "letters, digits or '-', not starting or ending with '-')",
    ),
    (
        "guest-name-underscore",
        "ipv4",
        V6,
        {"hv1": [g("ok"), g("web_6")]},
        {},
        "mv6_guests[1].name on host hv1: 'web_6' is not a valid hostname (1 to 63 lowercase "
        "letters, digits or '-', not starting or ending with '-')",
    ),
    (
        "guest-name-upper",
        "ipv4",
        V6,
        {"hv1": [g("Web6")]},
        {},
        "mv6_guests[0].name on host hv1: 'Web6' is not a valid hostname (1 to 63 lowercase "
        "letters, digits or '-', not starting or ending with '-')",
    ),
    (
        "guest-name-dash",
        "ipv4",
        V6,
        {"hv1": [g("-web")]},
        {},
        "mv6_guests[0].name on host hv1: '-web' is not a valid hostname (1 to 63 lowercase "
        "letters, digits or '-', not starting or ending with '-')",
    ),
    (
        "guest-name-too-long",
        "ipv4",
        V6,
        {"hv1": [g("a" * 64)]},
        {},
        f"mv6_guests[0].name on host hv1: '{'a' * 64}' is not a valid hostname (1 to 63 "
        "lowercase letters, digits or '-', not starting or ending with '-')",
    ),
    (
        "guest-name-newline",
        "ipv4",
        V6,
        {"hv1": [g("a\nb")]},
        {},
        "mv6_guests[0].name on host hv1: 'a\\nb' is not a valid hostname (1 to 63 lowercase "
        "letters, digits or '-', not starting or ending with '-')",
    ),
    (
        "guest-name-duplicate",
        "ipv4",
        V6,
        {"hv1": [g("web6"), g("db6"), g("web6")]},
        {},
        "mv6_guests[2].name on host hv1: duplicate guest name web6 (also mv6_guests[0])",
    ),
    (
        "vcpus-string",
        "ipv4",
        V6,
        {"hv1": [g("a", vcpus="2")]},
        {},
        "mv6_guests[0].vcpus on host hv1: must be an integer from 1 to 256, got '2'",
    ),
    (
        "vcpus-bool",
        "ipv4",
        V6,
        {"hv1": [g("a", vcpus=1), g("b", vcpus=True)]},
        {},
        "mv6_guests[1].vcpus on host hv1: must be an integer from 1 to 256, got True",
    ),
    (
        "vcpus-zero",
        "ipv4",
        V6,
        {"hv1": [g("a", vcpus=0)]},
        {},
        "mv6_guests[0].vcpus on host hv1: must be an integer from 1 to 256, got 0",
    ),
    (
        "vcpus-float",
        "ipv4",
        V6,
        {"hv1": [g("a", vcpus=1.5)]},
        {},
        "mv6_guests[0].vcpus on host hv1: must be an integer from 1 to 256, got 1.5",
    ),
    (
        "memory-too-small",
        "ipv4",
        V6,
        {"hv1": [g("a", memory_mib=16)]},
        {},
        "mv6_guests[0].memory_mib on host hv1: must be an integer from 32 to 4194304, got 16",
    ),
    (
        "memory-too-big",
        "ipv4",
        V6,
        {"hv1": [g("a", memory_mib=2**40)]},
        {},
        f"mv6_guests[0].memory_mib on host hv1: must be an integer from 32 to 4194304, got {2**40}",
    ),
    (
        "memory-string",
        "ipv4",
        V6,
        {"hv1": [g("a", memory_mib="512M")]},
        {},
        "mv6_guests[0].memory_mib on host hv1: must be an integer from 32 to 4194304, got '512M'",
    ),
    (
        "disk-gib",
        "ipv4",
        V6,
        {"hv1": [g("a", disk_gib=0)]},
        {},
        "mv6_guests[0].disk_gib on host hv1: must be an integer from 1 to 65536, got 0",
    ),
    (
        "router-string",
        "ipv4",
        V6,
        {"hv1": [g("a", router="yes")]},
        {},
        "mv6_guests[0].router on host hv1: must be true or false, got 'yes'",
    ),
    (
        "state",
        "ipv4",
        V6,
        {"hv1": [g("a", state="paused")]},
        {},
        "mv6_guests[0].state on host hv1: must be one of running, stopped, absent, got 'paused'",
    ),
    (
        "persistence",
        "ipv4",
        V6,
        {"hv1": [g("a", persistence="ephemeral")]},
        {},
        "mv6_guests[0].persistence on host hv1: must be one of persistent, non_persistent, "
        "got 'ephemeral'",
    ),
    (
        "image-empty",
        "ipv4",
        V6,
        {"hv1": [g("a", image="")]},
        {},
        "mv6_guests[0].image on host hv1: must be an image name (1 to 40 lowercase letters, "
        "digits, '_' or '-', starting with a letter or digit), got ''",
    ),
    (
        "image-xml",
        "ipv4",
        V6,
        {"hv1": [g("a", image="deb</mv6:image><devices>")]},
        {},
        "mv6_guests[0].image on host hv1: must be an image name (1 to 40 lowercase letters, "
        "digits, '_' or '-', starting with a letter or digit), got 'deb</mv6:image><devices>'",
    ),
    (
        "two-routers-per-host",
        "ipv4",
        V6,
        {"hv1": [g("r1", router=True), g("r2", router=True)]},
        {},
        "mv6_guests on host hv1: more than one guest has router: true (r1, r2); a subnet has "
        "one router",
    ),
    (
        "two-routers-shared",
        "ipv6",
        V4S,
        {"hv1": [g("r1", router=True)], "hv2": [g("r2", router=True)]},
        {},
        "mv6_guests: more than one guest has router: true in the shared layout (hv1/r1, "
        "hv2/r2); the shared subnet has one router",
    ),
    (
        "gateway-and-router",
        "ipv6",
        {**V4S, "gateway": "198.51.100.254"},
        {"hv1": [g("r1", router=True)]},
        {},
        "mv6_parallel.gateway: is set, but guest hv1/r1 is marked router: true; the parallel "
        "network has one router",
    ),
    (
        "gateway-per-host",
        "ipv4",
        {**V6, "gateway": "2001:db8:600::1"},
        {},
        {},
        "mv6_parallel.gateway: only allowed with layout shared; with layout per_host each "
        "host's guest marked router: true is its subnet's gateway",
    ),
    (
        "gateway-wrong-family",
        "ipv6",
        {**V4S, "gateway": "2001:db8::1"},
        {},
        {},
        "mv6_parallel.gateway: 2001:db8::1 is an ipv6 address, but mv6_parallel.prefix is ipv4",
    ),
    (
        "gateway-outside",
        "ipv6",
        {**V4S, "gateway": "203.0.113.1"},
        {},
        {},
        "mv6_parallel.gateway: 203.0.113.1 is outside its subnet 198.51.100.0/24",
    ),
    (
        "gateway-broadcast",
        "ipv6",
        {**V4S, "gateway": "198.51.100.255"},
        {},
        {},
        "mv6_parallel.gateway: 198.51.100.255 is the broadcast address of 198.51.100.0/24",
    ),
    (
        "dns-wrong-family",
        "ipv4",
        {**V6, "dns": ["2001:db8::53", "198.51.100.53"]},
        {},
        {},
        "mv6_parallel.dns[1]: 198.51.100.53 is an ipv4 address, but mv6_parallel.prefix is ipv6",
    ),
    (
        "dns-not-list",
        "ipv4",
        {**V6, "dns": "2001:db8::53"},
        {},
        {},
        "mv6_parallel.dns: must be a list of addresses, got str",
    ),
    (
        "bridge-name",
        "ipv4",
        {**V6, "bridge": "mv6-parallel-bridge"},
        {},
        {},
        "mv6_parallel.bridge: must be an interface name (1 to 15 letters, digits or '_', '.', "
        "'-', starting with a letter, a digit or '_'), got 'mv6-parallel-bridge'",
    ),
    (
        "address-wrong-family",
        "ipv4",
        V6,
        {"hv1": [g("a", address="198.51.100.9")]},
        {},
        "mv6_guests[0].address on host hv1: 198.51.100.9 is an ipv4 address, but "
        "mv6_parallel.prefix is ipv6",
    ),
    (
        "address-with-length",
        "ipv4",
        V6,
        {"hv1": [g("a", address="2001:db8:600::9/64")]},
        {},
        "mv6_guests[0].address on host hv1: must be an IP address without prefix length, "
        "got '2001:db8:600::9/64'",
    ),
    (
        "address-outside-subnet",
        "ipv4",
        V6,
        {"hv1": [g("a")], "hv2": [g("b", address="2001:db8:600::9")]},
        {},
        "mv6_guests[0].address on host hv2: 2001:db8:600::9 is outside its subnet "
        "2001:db8:600:1::/64",
    ),
    (
        "address-network",
        "ipv6",
        V4,
        {"hv1": [g("a", address="198.51.100.0")]},
        {},
        "mv6_guests[0].address on host hv1: 198.51.100.0 is the network address of 198.51.100.0/26",
    ),
    (
        "address-anycast",
        "ipv4",
        V6,
        {"hv1": [g("a", address="2001:db8:600::")]},
        {},
        "mv6_guests[0].address on host hv1: 2001:db8:600:: is the subnet-router anycast address "
        "of 2001:db8:600::/64",
    ),
    (
        "address-gateway",
        "ipv6",
        V4,
        {"hv1": [g("a", address="198.51.100.1")]},
        {},
        "mv6_guests[0].address on host hv1: 198.51.100.1 is the gateway address, kept for the "
        "guest marked router: true",
    ),
    (
        "address-taken-by-slot",
        "ipv6",
        V4,
        {"hv1": [g("a"), g("b", address="198.51.100.2")]},
        {"previous": _plan.build_plan("ipv6", V4, {"hv1": [g("a")]})},
        "mv6_guests[1].address on host hv1: 198.51.100.2 is already taken by hv1/a",
    ),
    (
        "address-taken-twice",
        "ipv4",
        V6,
        {"hv1": [g("a", address="2001:db8:600::9"), g("b", address="2001:db8:600::9")]},
        {},
        "mv6_guests[1].address on host hv1: 2001:db8:600::9 is already taken by hv1/a",
    ),
    (
        "address-taken-shared-other-host",
        "ipv6",
        V4S,
        {"hv1": [g("a")], "hv2": [g("b", address="198.51.100.2")]},
        {"previous": _plan.build_plan("ipv6", V4S, {"hv1": [g("a")]})},
        "mv6_guests[0].address on host hv2: 198.51.100.2 is already taken by hv1/a",
    ),
    (
        "address-taken-by-gateway",
        "ipv6",
        {**V4S, "gateway": "198.51.100.100"},
        {"hv1": [g("a", address="198.51.100.100")]},
        {},
        "mv6_guests[0].address on host hv1: 198.51.100.100 is already taken by "
        "mv6_parallel.gateway",
    ),
    (
        "address-in-the-dhcp4-pool",
        "ipv6",
        V4S,
        {"hv1": [g("a", address="198.51.100.254")]},
        {},
        "mv6_guests[0].address on host hv1: 198.51.100.254 is inside the DHCPv4 pool "
        "198.51.100.191 - 198.51.100.254 of 198.51.100.0/24 that the router guest hands out "
        "(mv6_parallel.dhcp4_pool_size)",
    ),
    (
        "nft-table-not-a-name",
        "ipv4",
        {**V6, "nft_table": "x; delete table inet filter"},
        {},
        {},
        "mv6_parallel.nft_table: must be an nftables table name (1 to 32 letters, digits or "
        "'_', starting with a letter), got 'x; delete table inet filter'",
    ),
    (
        "host-guard-not-a-bool",
        "ipv4",
        {**V6, "host_guard": "yes"},
        {},
        {},
        "mv6_parallel.host_guard: must be true or false, got 'yes'",
    ),
    (
        "bridge-with-the-tap-prefix",
        "ipv4",
        {**V6, "bridge": "mv6p9"},
        {},
        {},
        "mv6_parallel.bridge: mv6p9 starts with mv6p, the prefix of the guests' taps; choose "
        "another name",
    ),
    (
        "uplink-is-the-bridge",
        "ipv4",
        {**V6, "bridge": "br6", "uplink": "br6"},
        {},
        {},
        "mv6_parallel.uplink: br6 is the bridge, lo or a guest tap's name; the uplink is a NIC "
        "or VLAN of the host",
    ),
    (
        "dhcp4-pool-for-ipv6",
        "ipv4",
        {**V6, "dhcp4_pool_size": 8},
        {},
        {},
        "mv6_parallel.dhcp4_pool_size: the parallel network is ipv6; a DHCPv4 pool needs an "
        "ipv4 prefix (leave it out or set 0)",
    ),
    (
        "dhcp4-pool-with-an-outside-gateway",
        "ipv6",
        {**V4S, "gateway": "198.51.100.1", "dhcp4_pool_size": 8},
        {},
        {},
        "mv6_parallel.dhcp4_pool_size: mv6_parallel.gateway is a router outside MV6, and no guest "
        "may be the router that would serve the pool; leave it out or set 0",
    ),
    (
        "dhcp4-pool-too-big",
        "ipv6",
        {**V4, "dhcp4_pool_size": 300},
        {},
        {},
        "mv6_parallel.dhcp4_pool_size: must be an integer from 0 to 60 (a /26 leaves room for "
        "one guest beside it), got 300",
    ),
    (
        "overlap-native-address",
        "ipv6",
        V4,
        {"hv1": []},
        {"native_by_host": {"hv1": {"ansible_all_ipv4_addresses": ["198.51.100.77"]}}},
        "mv6_parallel.prefix: 198.51.100.0/24 overlaps 198.51.100.77 of host hv1 "
        "(ansible_all_ipv4_addresses); the parallel network must not touch the native one",
    ),
    (
        "overlap-native-route",
        "ipv4",
        V6,
        {"hv1": []},
        {
            "native_by_host": {
                "hv1": {
                    "ansible_all_ipv6_addresses": ["fe80::1", "::1"],
                    "ansible_default_ipv6": ["2001:db8::7", "2001:db8::1", "2001:db8::7/32"],
                }
            }
        },
        "mv6_parallel.prefix: 2001:db8:600::/48 overlaps 2001:db8::7/32 of host hv1 "
        "(ansible_default_ipv6); the parallel network must not touch the native one",
    ),
    (
        "release-unknown-host",
        "ipv4",
        V6,
        {"hv1": []},
        {"release_hosts": ["hv9"]},
        "release_hosts: hv9 is neither in the plan nor in the play",
    ),
    (
        "guest-name-on-two-hosts",
        "ipv4",
        V6,
        {"hv1": [g("web6")], "hv2": [g("app6"), g("web6")]},
        {},
        "mv6_guests on host hv2: guest name web6 is also a guest of host hv1; guest names "
        "are inventory names and must be unique across the fleet",
    ),
    (
        "guest-named-like-an-inventory-host",
        "ipv4",
        V6,
        {"hv1": [g("web6")], "hv2": [g("hv3")]},
        {"inventory_hosts": ["hv1", "hv2", "hv3"]},
        "mv6_guests on host hv2: guest name hv3 is the name of an inventory host; a guest "
        "joins the inventory under its own name",
    ),
]


@pytest.mark.parametrize(
    ("native", "parallel", "guests", "kwargs", "message"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input_names_the_variable(native, parallel, guests, kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _plan.build_plan(native, parallel, guests, **kwargs)


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_native_facts_of_the_other_family_do_not_count():
    # A v4-native host's own v4 addresses cannot overlap a v6 parallel prefix.
    native = {"hv1": {"ansible_all_ipv4_addresses": ["198.51.100.77"]}}
    plan = _plan.build_plan("ipv4", V6, {"hv1": []}, native_by_host=native)
    assert plan["hosts"]["hv1"]["subnet"] == "2001:db8:600::/64"


def base_plan():
    return _plan.build_plan("ipv4", V6, {"hv1": [g("web6")], "hv2": [g("db6")]})


CHANGED_SITE = [
    (
        {"prefix": "2001:db8:700::/48"},
        "ipv4",
        "mv6_parallel.prefix: is 2001:db8:700::/48, but the plan file was made with "
        "2001:db8:600::/48; changing it would move every allocation. Move the plan file and "
        "its .d directory away to renumber on purpose",
    ),
    (
        {**V6, "address_mode": "sequential"},
        "ipv4",
        "mv6_parallel.address_mode: is sequential, but the plan file was made with eui64; "
        "changing it would move every allocation. Move the plan file and its .d directory away to "
        "renumber on purpose",
    ),
    (
        {"prefix": "2001:db8:600::/64", "layout": "shared"},
        "ipv4",
        "mv6_parallel.prefix: is 2001:db8:600::/64, but the plan file was made with "
        "2001:db8:600::/48; changing it would move every allocation. Move the plan file and "
        "its .d directory away to renumber on purpose",
    ),
    (
        V4,
        "ipv6",
        "mv6_native_family: is ipv6, but the plan file was made with ipv4; changing it would "
        "move every allocation. Move the plan file and its .d directory away to renumber on "
        "purpose",
    ),
]


@pytest.mark.parametrize(("parallel", "native", "message"), CHANGED_SITE)
def test_a_changed_site_does_not_renumber_silently(parallel, native, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _plan.build_plan(native, parallel, {"hv1": [g("web6")]}, base_plan())


def test_guest_name_held_by_a_host_outside_the_play():
    """Adopting hv2 with --limit: hv1's guests are only in the plan file, and count."""
    first = _plan.build_plan("ipv4", V6, {"hv1": [g("web6")]})
    message = (
        "mv6_guests on host hv2: guest name web6 is also a guest of host hv1; guest names "
        "are inventory names and must be unique across the fleet"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _plan.build_plan("ipv4", V6, {"hv2": [g("web6")]}, first)
    # Once hv1 lets the guest go (state: absent releases it), hv2 may take the name.
    released = _plan.build_plan("ipv4", V6, {"hv1": [g("web6", state="absent")]}, first)
    _plan.build_plan("ipv4", V6, {"hv2": [g("web6")]}, released)
