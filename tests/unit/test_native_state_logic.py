"""The native-state core: normalising, filtering and diffing (no host access)."""

from __future__ import annotations

import copy
import grp
import os
import pwd
import re
import sys
from pathlib import Path

import pytest

# The collection is importable as ansible_collections.mv6.transition through .collections/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _native

IP_ADDR = [
    {
        "ifindex": 1,
        "ifname": "lo",
        "flags": ["LOOPBACK", "UP", "LOWER_UP"],
        "mtu": 65536,
        "operstate": "UNKNOWN",
        "addr_info": [
            {
                "family": "inet",
                "local": "127.0.0.1",
                "prefixlen": 8,
                "scope": "host",
                "valid_life_time": 4294967295,
                "preferred_life_time": 4294967295,
            }
        ],
    },
    {
        "ifindex": 7,
        "ifname": "nat0",
        "flags": ["BROADCAST", "UP", "LOWER_UP"],
        "mtu": 1500,
        "link_index": 6,
        "link_netnsid": 0,
        "addr_info": [
            {
                "family": "inet",
                "local": "198.51.100.1",
                "prefixlen": 24,
                "scope": "global",
                "valid_life_time": 100,
                "preferred_life_time": 50,
            }
        ],
    },
    {
        "ifindex": 9,
        "ifname": "mv6br0",
        "flags": ["BROADCAST", "UP"],
        "mtu": 1500,
        "addr_info": [],
    },
]
ROUTES = {
    "ipv4": [
        {"dst": "198.51.100.0/24", "dev": "nat0", "protocol": "kernel", "prefsrc": "198.51.100.1"},
        {"dst": "default", "gateway": "198.51.100.254", "dev": "nat0"},
    ],
    "ipv6": [
        {"dst": "fe80::/64", "dev": "mv6br0", "metric": 256, "expires": 30, "cache": ["x"]},
        {
            "dst": "2001:db8:9::/64",
            "nexthops": [{"gateway": "fe80::1", "dev": "mv6p3"}],
            "metric": 1024,
        },
    ],
}
RULES = {"ipv4": [{"priority": 0, "src": "all", "table": "local"}], "ipv6": []}
NFT = {
    "nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "site", "handle": 3}},
        {
            "chain": {
                "family": "inet",
                "table": "site",
                "name": "input_guard",
                "handle": 1,
                "type": "filter",
                "hook": "input",
                "prio": 0,
                "policy": "accept",
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "site",
                "chain": "input_guard",
                "handle": 4,
                "expr": [{"counter": {"packets": 12, "bytes": 900}}, {"accept": None}],
            }
        },
        {"table": {"family": "bridge", "name": "mv6_isolation", "handle": 5}},
        {
            "chain": {
                "family": "bridge",
                "table": "mv6_isolation",
                "name": "guard",
                "handle": 1,
            }
        },
    ]
}
SYSCTLS = {
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.nat0.forwarding": "0",
    "net.ipv6.conf.mv6br0.disable_ipv6": "1",
    "net.ipv6.conf.mv6p3.disable_ipv6": "1",
    "net.ipv6.conf.all.forwarding": "0",
    "net.ipv4.neigh.eth0/106.retrans_time": "100",
}
EXCL_IF = ["mv6br0", "mv6p*"]
EXCL_TABLES = ["bridge mv6_isolation"]


def _state(ip_addr=None, routes=None, nft=None, sysctls=None):
    return _native.build_state(
        ip_addr=copy.deepcopy(IP_ADDR if ip_addr is None else ip_addr),
        ip_routes=copy.deepcopy(ROUTES if routes is None else routes),
        ip_rules=copy.deepcopy(RULES),
        nft=copy.deepcopy(NFT if nft is None else nft),
        sysctls=dict(SYSCTLS if sysctls is None else sysctls),
        exclude_interfaces=EXCL_IF,
        exclude_tables=EXCL_TABLES,
    )


def test_owned_objects_are_left_out():
    sections = _state()["sections"]
    assert sorted(sections["links"]) == ["lo", "nat0"]
    assert not any("mv6" in key for key in sections["routes"])
    assert not any("mv6_isolation" in key for key in sections["ruleset"])
    assert sorted(sections["sysctls"]) == [
        "net.ipv4.conf.nat0.forwarding",
        "net.ipv4.ip_forward",
        "net.ipv4.neigh.eth0/106.retrans_time",
        "net.ipv6.conf.all.forwarding",
    ]


def test_volatile_fields_are_dropped():
    sections = _state()["sections"]
    assert sections["addresses"]["nat0 198.51.100.1/24"] == {
        "family": "inet",
        "ifname": "nat0",
        "local": "198.51.100.1",
        "prefixlen": 24,
        "scope": "global",
    }
    assert "ifindex" not in sections["links"]["nat0"]
    assert "link_netnsid" not in sections["links"]["nat0"]
    rule = next(v for k, v in sections["ruleset"].items() if " rule " in k)
    assert rule["expr"] == [{"counter": {}}, {"accept": None}]
    assert "handle" not in sections["ruleset"]["inet site table"]


def test_counters_and_lifetimes_do_not_make_a_difference():
    busy = copy.deepcopy(IP_ADDR)
    busy[1]["addr_info"][0]["valid_life_time"] = 3
    busy[1]["ifindex"] = 70
    nft = copy.deepcopy(NFT)
    nft["nftables"][3]["rule"]["expr"][0]["counter"] = {"packets": 99999, "bytes": 1}
    nft["nftables"][3]["rule"]["handle"] = 40
    assert _native.diff_states(_state(), _state(ip_addr=busy, nft=nft)) == []


def test_route_key_reads_like_ip_route():
    keys = sorted(_state()["sections"]["routes"])
    assert keys == [
        "ipv4 type unicast dst 198.51.100.0/24 table main dev nat0 protocol kernel "
        "prefsrc 198.51.100.1",
        "ipv4 type unicast dst default table main gateway 198.51.100.254 dev nat0",
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda d: d["ip_addr"][1]["addr_info"].__setitem__(
                0, dict(d["ip_addr"][1]["addr_info"][0], local="198.51.100.9")
            ),
            [
                "addresses: removed nat0 198.51.100.1/24",
                "addresses: added nat0 198.51.100.9/24",
            ],
            id="address-replaced",
        ),
        pytest.param(
            lambda d: d["ip_addr"][1].__setitem__("mtu", 1400),
            ["links: changed nat0: mtu 1500 -> 1400"],
            id="mtu",
        ),
        pytest.param(
            lambda d: d["sysctls"].__setitem__("net.ipv4.ip_forward", "1"),
            ["sysctls: changed net.ipv4.ip_forward: 0 -> 1"],
            id="sysctl",
        ),
        pytest.param(
            lambda d: d["routes"]["ipv4"].pop(),
            [
                "routes: removed ipv4 type unicast dst default table main "
                "gateway 198.51.100.254 dev nat0"
            ],
            id="default-route-gone",
        ),
        pytest.param(
            lambda d: d["nft"]["nftables"].append(
                {"table": {"family": "ip", "name": "intruder", "handle": 9}}
            ),
            ["ruleset: added ip intruder table"],
            id="nft-table",
        ),
        pytest.param(
            lambda d: d["nft"]["nftables"][2]["chain"].__setitem__("policy", "drop"),
            ["ruleset: changed inet site chain input_guard: policy accept -> drop"],
            id="nft-policy",
        ),
        pytest.param(
            lambda d: d["nft"]["nftables"].append(
                {
                    "rule": {
                        "family": "inet",
                        "table": "site",
                        "chain": "input_guard",
                        "expr": [{"drop": None}],
                    }
                }
            ),
            ['ruleset: added inet site rule input_guard: [{"drop":null}]'],
            id="nft-rule-added",
        ),
        pytest.param(
            lambda d: d["sysctls"].__setitem__("net.ipv6.conf.mv6p9.forwarding", "1"),
            [],
            id="owned-tap-appears",
        ),
        pytest.param(
            lambda d: d["nft"]["nftables"].append(
                {
                    "rule": {
                        "family": "bridge",
                        "table": "mv6_isolation",
                        "chain": "guard",
                        "expr": [{"drop": None}],
                    }
                }
            ),
            [],
            id="owned-table-changes",
        ),
    ],
)
def test_each_difference_is_named(mutate, expected):
    data = {
        "ip_addr": copy.deepcopy(IP_ADDR),
        "routes": copy.deepcopy(ROUTES),
        "nft": copy.deepcopy(NFT),
        "sysctls": dict(SYSCTLS),
    }
    mutate(data)
    assert _native.diff_states(_state(), _state(**data)) == expected


def test_rule_order_is_a_difference():
    nft = copy.deepcopy(NFT)
    second = copy.deepcopy(nft["nftables"][3])
    second["rule"]["expr"] = [{"drop": None}]
    nft["nftables"].insert(4, second)
    swapped = copy.deepcopy(nft)
    swapped["nftables"][3], swapped["nftables"][4] = swapped["nftables"][4], swapped["nftables"][3]
    lines = _native.diff_states(_state(nft=nft), _state(nft=swapped))
    assert len(lines) == 1
    assert lines[0].startswith("ruleset: changed inet site order input_guard: ")


def test_duplicate_rules_are_kept_apart():
    nft = copy.deepcopy(NFT)
    nft["nftables"].append(copy.deepcopy(nft["nftables"][3]))
    keys = [k for k in _state(nft=nft)["sections"]["ruleset"] if " rule " in k]
    assert len(keys) == 2
    assert keys[1].endswith("(#2)")


def test_filter_applies_patterns_recorded_later():
    state = _native.build_state(IP_ADDR, ROUTES, RULES, NFT, SYSCTLS)
    assert "mv6br0" in state["sections"]["links"]
    filtered = _native.filter_state(state, EXCL_IF, EXCL_TABLES)
    assert filtered == _state()


def test_filter_rejects_unknown_version():
    msg = "native state: unsupported version 7, expected 1"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _native.filter_state({"version": 7, "sections": {}})


@pytest.mark.parametrize(
    ("key", "iface"),
    [
        ("net.ipv6.conf.eth0.accept_ra", "eth0"),
        ("net.ipv4.neigh.eth0/106.retrans_time", "eth0.106"),
        ("net.ipv6.conf.all.forwarding", None),
        ("net.ipv4.conf.default.rp_filter", None),
        ("net.ipv4.ip_forward", None),
        ("net.ipv6.route.gc_interval", None),
    ],
)
def test_sysctl_interface(key, iface):
    assert _native.sysctl_interface(key) == iface


def test_read_sysctls_walks_a_tree(tmp_path):
    conf = tmp_path / "net" / "ipv4" / "conf" / "eth0.106"
    conf.mkdir(parents=True)
    (conf / "forwarding").write_text("1\n")
    (tmp_path / "net" / "ipv4" / "tcp_rmem").write_text("4096\t131072\t6291456\n")
    unreadable = tmp_path / "net" / "ipv4" / "flush"
    unreadable.mkdir()  # a directory where a file is expected reads as an error: skipped
    (tmp_path / "net" / "ipv6").mkdir()
    assert _native.read_sysctls(str(tmp_path)) == {
        "net.ipv4.conf.eth0/106.forwarding": "1",
        "net.ipv4.tcp_rmem": "4096 131072 6291456",
    }


def test_sysctls_of_an_interface_that_came_are_one_line():
    extra = copy.deepcopy(IP_ADDR)
    extra.append({"ifname": "lab1", "mtu": 1500, "addr_info": []})
    sysctls = dict(SYSCTLS)
    sysctls.update({f"net.ipv6.conf.lab1.k{i}": "0" for i in range(5)})
    sysctls["net.ipv4.conf.nat0.rp_filter"] = "1"
    assert _native.diff_states(_state(), _state(ip_addr=extra, sysctls=sysctls)) == [
        "links: added lab1",
        "sysctls: added net.ipv4.conf.nat0.rp_filter",
        "sysctls: added 5 per-interface keys of lab1",
    ]


def test_named_counter_totals_are_dropped():
    nft = copy.deepcopy(NFT)
    named = {"family": "inet", "table": "site", "name": "seen", "handle": 7}
    nft["nftables"].append({"counter": dict(named, packets=5, bytes=300)})
    busy = copy.deepcopy(nft)
    busy["nftables"][-1]["counter"].update(packets=500, bytes=30000)
    assert _state(nft=nft)["sections"]["ruleset"]["inet site counter seen"] == {
        "family": "inet",
        "name": "seen",
        "table": "site",
    }
    assert _native.diff_states(_state(nft=nft), _state(nft=busy)) == []


def test_table_patterns_exclude_tables():
    nft = copy.deepcopy(NFT)
    nft["nftables"].append({"table": {"family": "bridge", "name": "t_other", "handle": 9}})
    state = _native.build_state(IP_ADDR, ROUTES, RULES, nft, SYSCTLS, [], ["bridge *"])
    assert not any(key.startswith("bridge ") for key in state["sections"]["ruleset"])
    assert "inet site table" in state["sections"]["ruleset"]


KVM_0600 = {"/dev/kvm": {"kind": "char", "owner": "root", "group": "root", "mode": "0600"}}
KVM_0660 = {"/dev/kvm": {"kind": "char", "owner": "root", "group": "kvm", "mode": "0660"}}


def _with_devices(devices, exclude_devices=()):
    return _native.build_state(
        IP_ADDR, ROUTES, RULES, NFT, SYSCTLS, EXCL_IF, EXCL_TABLES, devices, exclude_devices
    )


def test_device_mode_change_is_named():
    assert _native.diff_states(_with_devices(KVM_0600), _with_devices(KVM_0660)) == [
        "devices: changed /dev/kvm: group root -> kvm; mode 0600 -> 0660"
    ]


def test_excluded_device_is_not_compared():
    before = _native.filter_state(_with_devices(KVM_0600), EXCL_IF, EXCL_TABLES, ["/dev/kvm"])
    assert _native.diff_states(before, _with_devices(KVM_0660, ["/dev/kvm"])) == []


def test_record_without_devices_section_skips_it():
    old = _with_devices(KVM_0600)
    del old["sections"]["devices"]
    old = _native.filter_state(old, EXCL_IF, EXCL_TABLES)
    assert "devices" not in old["sections"]
    assert _native.diff_states(old, _with_devices(KVM_0660)) == []


def test_read_devices(tmp_path):
    plain = tmp_path / "not-a-device"
    plain.write_text("")
    plain.chmod(0o640)
    found = _native.read_devices([str(plain), str(tmp_path / "missing")])
    assert found == {
        str(plain): {
            "kind": "other",
            "owner": pwd.getpwuid(os.getuid()).pw_name,
            "group": grp.getgrgid(os.getgid()).gr_name,
            "mode": "0640",
        }
    }


def test_a_record_missing_another_section_is_refused():
    truncated = _with_devices(KVM_0600)
    del truncated["sections"]["routes"]
    with pytest.raises(ValueError, match=r"^native state: section 'routes' is missing$"):
        _native.filter_state(truncated, EXCL_IF, EXCL_TABLES)


def _spare(flags, qdisc):
    return [{"ifindex": 11, "ifname": "spare0", "flags": flags, "mtu": 1500, "qdisc": qdisc}]


def test_qdisc_of_a_down_link_is_not_compared():
    """A spare uplink never up shows noop; after MV6 put it up and down again, noqueue."""
    never_up = _state(ip_addr=_spare(["BROADCAST", "MULTICAST"], "noop"))
    was_up = _state(ip_addr=_spare(["BROADCAST", "MULTICAST"], "noqueue"))
    assert _native.diff_states(never_up, was_up) == []


def test_qdisc_of_an_up_link_is_compared():
    before = _state(ip_addr=_spare(["BROADCAST", "UP"], "noqueue"))
    after = _state(ip_addr=_spare(["BROADCAST", "UP"], "fq_codel"))
    assert _native.diff_states(before, after) == [
        "links: changed spare0: qdisc noqueue -> fq_codel"
    ]
    down = _state(ip_addr=_spare(["BROADCAST"], "noqueue"))
    assert any(
        line.startswith("links: changed spare0") for line in _native.diff_states(before, down)
    )
