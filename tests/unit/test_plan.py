"""The planner's allocations: both directions, both layouts, stability, byte-identical files."""

from __future__ import annotations

import copy
import os
import random
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _plan

V6 = {"prefix": "2001:db8:600::/48"}
V4 = {"prefix": "198.51.100.0/24", "host_prefixlen": 26}


def g(name, **kw):
    return {"name": name, **kw}


def plan(native, parallel, guests, previous=None, **kw):
    return _plan.build_plan(native, parallel, guests, previous, **kw)


def brief(p):
    """host -> (subnet, gateway, {guest: (slot, mac, address, link_local, port, released)})."""
    return {
        h: (
            e["subnet"],
            e["gateway"],
            {
                n: (
                    x["slot"],
                    x["mac"],
                    x["address"],
                    x.get("link_local"),
                    x["port"],
                    x["released"],
                )
                for n, x in e["guests"].items()
            },
        )
        for h, e in p["hosts"].items()
    }


# (id, native, mv6_parallel, guests by host, expected brief)
LAYOUTS = [
    (
        "v4-native/v6-parallel/per_host/eui64",
        "ipv4",
        V6,
        {"hv2": [g("web6b")], "hv1": [g("web6"), g("db6")]},
        {
            "hv1": (
                "2001:db8:600::/64",
                None,
                {
                    "db6": (
                        0,
                        "02:6d:00:00:00:00",
                        "2001:db8:600:0:6d:ff:fe00:0",
                        "fe80::6d:ff:fe00:0",
                        "mv6p0",
                        False,
                    ),
                    "web6": (
                        1,
                        "02:6d:00:00:00:01",
                        "2001:db8:600:0:6d:ff:fe00:1",
                        "fe80::6d:ff:fe00:1",
                        "mv6p1",
                        False,
                    ),
                },
            ),
            "hv2": (
                "2001:db8:600:1::/64",
                None,
                {
                    "web6b": (
                        0,
                        "02:6d:00:01:00:00",
                        "2001:db8:600:1:6d:ff:fe01:0",
                        "fe80::6d:ff:fe01:0",
                        "mv6p0",
                        False,
                    )
                },
            ),
        },
    ),
    (
        "v4-native/v6-parallel/per_host/sequential/router",
        "ipv4",
        {**V6, "address_mode": "sequential"},
        {"hv1": [g("web6"), g("rtr", router=True)]},
        {
            "hv1": (
                "2001:db8:600::/64",
                "2001:db8:600::1",
                {
                    "rtr": (
                        0,
                        "02:6d:00:00:00:00",
                        "2001:db8:600::1",
                        "fe80::6d:ff:fe00:0",
                        "mv6p0",
                        False,
                    ),
                    "web6": (
                        1,
                        "02:6d:00:00:00:01",
                        "2001:db8:600::3",
                        "fe80::6d:ff:fe00:1",
                        "mv6p1",
                        False,
                    ),
                },
            )
        },
    ),
    (
        "v4-native/v6-parallel/shared/eui64",
        "ipv4",
        {"prefix": "2001:db8:600:6::/64", "layout": "shared"},
        {"hv1": [g("a"), g("b")], "hv2": [g("c")]},
        {
            "hv1": (
                "2001:db8:600:6::/64",
                None,
                {
                    "a": (
                        0,
                        "02:6d:00:00:00:00",
                        "2001:db8:600:6:6d:ff:fe00:0",
                        "fe80::6d:ff:fe00:0",
                        "mv6p0",
                        False,
                    ),
                    "b": (
                        1,
                        "02:6d:00:00:00:01",
                        "2001:db8:600:6:6d:ff:fe00:1",
                        "fe80::6d:ff:fe00:1",
                        "mv6p1",
                        False,
                    ),
                },
            ),
            "hv2": (
                "2001:db8:600:6::/64",
                None,
                {
                    "c": (
                        2,
                        "02:6d:00:00:00:02",
                        "2001:db8:600:6:6d:ff:fe00:2",
                        "fe80::6d:ff:fe00:2",
                        "mv6p2",
                        False,
                    )
                },
            ),
        },
    ),
    (
        "v6-native/v4-parallel/per_host/sequential",
        "ipv6",
        V4,
        {"hv1": [g("legacy"), g("gw", router=True)], "hv2": [g("legacy2")]},
        {
            "hv1": (
                "198.51.100.0/26",
                "198.51.100.1",
                {
                    "gw": (0, "02:6d:00:00:00:00", "198.51.100.1", None, "mv6p0", False),
                    "legacy": (1, "02:6d:00:00:00:01", "198.51.100.3", None, "mv6p1", False),
                },
            ),
            "hv2": (
                "198.51.100.64/26",
                None,
                {"legacy2": (0, "02:6d:00:01:00:00", "198.51.100.66", None, "mv6p0", False)},
            ),
        },
    ),
    (
        "v6-native/v4-parallel/shared/sequential/site-gateway",
        "ipv6",
        {"prefix": "203.0.113.0/24", "layout": "shared", "gateway": "203.0.113.3"},
        {"hv1": [g("a"), g("b")], "hv2": [g("c")]},
        {
            "hv1": (
                "203.0.113.0/24",
                "203.0.113.3",
                {
                    "a": (0, "02:6d:00:00:00:00", "203.0.113.2", None, "mv6p0", False),
                    # slot 1 would be 203.0.113.3, the site's gateway: stepped over
                    "b": (2, "02:6d:00:00:00:02", "203.0.113.4", None, "mv6p2", False),
                },
            ),
            "hv2": (
                "203.0.113.0/24",
                "203.0.113.3",
                {"c": (3, "02:6d:00:00:00:03", "203.0.113.5", None, "mv6p3", False)},
            ),
        },
    ),
    (
        "v6-native/v4-parallel/per_host/explicit-address-first",
        "ipv6",
        V4,
        {"hv1": [g("a"), g("b", address="198.51.100.2")]},
        {
            "hv1": (
                "198.51.100.0/26",
                None,
                {
                    # a would get 198.51.100.2 from slot 0, which b asks for: a steps over
                    "a": (1, "02:6d:00:00:00:01", "198.51.100.3", None, "mv6p1", False),
                    "b": (0, "02:6d:00:00:00:00", "198.51.100.2", None, "mv6p0", False),
                },
            )
        },
    ),
]


@pytest.mark.parametrize(
    ("native", "parallel", "guests", "expected"),
    [c[1:] for c in LAYOUTS],
    ids=[c[0] for c in LAYOUTS],
)
def test_directions_and_layouts(native, parallel, guests, expected):
    result = plan(native, parallel, guests)
    assert brief(result) == expected
    assert result["site"]["native_family"] == native
    assert result["site"]["parallel_family"] == ("ipv6" if native == "ipv4" else "ipv4")


def test_plan_header_matches_interfaces_doc():
    result = plan("ipv4", V6, {"hv1": []})
    assert {k: v for k, v in result.items() if k != "hosts"} == {
        "version": 2,
        "site": {
            "native_family": "ipv4",
            "parallel_family": "ipv6",
            "prefix": "2001:db8:600::/48",
            "layout": "per_host",
            "host_prefixlen": 64,
            "address_mode": "eui64",
            "bridge": "mv6br0",
            "uplink": None,
            "tap_prefix": "mv6p",
            "nft_table": "mv6_isolation",
            "host_guard": True,
            "dns": [],
            "owned": {
                "interfaces": ["mv6br0", "mv6p*"],
                "nft_tables": ["bridge mv6_isolation", "inet mv6_isolation"],
            },
        },
    }
    assert result["hosts"]["hv1"] == {
        "slot": 0,
        "released": False,
        "subnet": "2001:db8:600::/64",
        "gateway": None,
        "dns": [],
        "router": None,
        "dhcp4_pool": None,
        "guests": {},
    }


def test_defaults_per_family():
    v4 = plan("ipv6", {"prefix": "198.51.100.0/24", "layout": "shared"}, {})
    assert (v4["site"]["host_prefixlen"], v4["site"]["address_mode"]) == (24, "sequential")
    v6 = plan("ipv4", V6, {})
    assert (v6["site"]["host_prefixlen"], v6["site"]["address_mode"]) == (64, "eui64")


def test_dns_and_router_gateway_per_host_eui64():
    result = plan(
        "ipv4", {**V6, "dns": ["2001:db8:0:0::53"]}, {"hv1": [g("r", router=True), g("w")]}
    )
    host = result["hosts"]["hv1"]
    assert host["dns"] == ["2001:db8::53"]
    assert host["gateway"] == host["guests"]["r"]["address"] == "2001:db8:600:0:6d:ff:fe00:0"
    assert host["guests"]["r"]["router"] is True
    assert host["guests"]["w"]["router"] is False


def test_big_slots_compress_like_rfc5952():
    # host slot 0x1234 in a /32 at /64: the prefix text has no zero run, the IID has none either
    result = plan("ipv4", {"prefix": "2001:db8::/32"}, {f"h{i:05d}": [] for i in range(0x1235)})
    assert result["hosts"]["h04660"]["subnet"] == "2001:db8:0:1234::/64"
    last = plan("ipv4", {"prefix": "2001:db8::/32"}, {"h": [g("x")]}, result)
    assert last["hosts"]["h"]["guests"]["x"]["address"] == "2001:db8:0:1235:6d:12ff:fe35:0"
    assert last["hosts"]["h"]["guests"]["x"]["mac"] == "02:6d:12:35:00:00"


def test_fresh_plan_order_is_by_sorted_name_not_input_order():
    names = [f"vm{i}" for i in range(20)]
    hosts = [f"hv{i}" for i in range(7)]
    a = plan("ipv4", V6, {h: [g(f"{h}-{n}") for n in names] for h in hosts})
    rng = random.Random(6)
    shuffled_hosts = hosts[:]
    rng.shuffle(shuffled_hosts)
    shuffled = {}
    for h in shuffled_hosts:
        ns = names[:]
        rng.shuffle(ns)
        shuffled[h] = [g(f"{h}-{n}") for n in ns]
    b = plan("ipv4", V6, shuffled)
    assert _plan.dump_plan(a) == _plan.dump_plan(b)
    assert [a["hosts"][h]["slot"] for h in sorted(hosts)] == list(range(7))
    hv0 = a["hosts"]["hv0"]["guests"]
    assert [hv0[f"hv0-{n}"]["slot"] for n in sorted(names)] == list(range(20))


def moved(before, after):
    """Allocations of `before` that `after` gives differently (released flags aside)."""
    out = []
    for h, e in before["hosts"].items():
        f = after["hosts"].get(h)
        if f is None or (f["slot"], f["subnet"]) != (e["slot"], e["subnet"]):
            out.append(h)
            continue
        for n, x in e["guests"].items():
            y = f["guests"].get(n)
            keys = ("slot", "mac", "address", "link_local", "port")
            if y is None or [x.get(k) for k in keys] != [y.get(k) for k in keys]:
                out.append(f"{h}/{n}")
    return out


SITES = [
    ("ipv4", V6),
    ("ipv4", {**V6, "address_mode": "sequential"}),
    ("ipv4", {"prefix": "2001:db8:600:6::/64", "layout": "shared"}),
    ("ipv6", V4),
    ("ipv6", {"prefix": "198.51.100.0/24", "layout": "shared"}),
]


@pytest.mark.parametrize(("native", "parallel"), SITES)
def test_stable_under_add_and_remove(native, parallel):
    first = plan(native, parallel, {"hv1": [g("a"), g("c")], "hv3": [g("x")]})

    # add a host (sorted between the others) and a guest: nothing moves, new ones go after
    second = plan(
        native,
        parallel,
        {"hv1": [g("a"), g("b"), g("c")], "hv2": [g("y")], "hv3": [g("x")]},
        first,
    )
    assert moved(first, second) == []
    assert second["hosts"]["hv2"]["slot"] == 2
    # per_host: after hv1's a and c; shared: after every slot of the fleet (a, c, x)
    shared = parallel.get("layout") == "shared"
    assert second["hosts"]["hv1"]["guests"]["b"]["slot"] == (3 if shared else 2)

    # remove a guest: it stays, released, and its slot is not given to a newcomer
    third = plan(
        native,
        parallel,
        {"hv1": [g("b"), g("c"), g("d")], "hv2": [g("y")], "hv3": [g("x")]},
        second,
    )
    assert moved(second, third) == []
    a = third["hosts"]["hv1"]["guests"]["a"]
    assert a["released"] is True
    assert a == {**second["hosts"]["hv1"]["guests"]["a"], "released": True}
    assert third["hosts"]["hv1"]["guests"]["d"]["slot"] not in {
        x["slot"] for n, x in second["hosts"]["hv1"]["guests"].items()
    }

    # bring it back: same slot, same address, no longer released
    fourth = plan(
        native,
        parallel,
        {"hv1": [g("a"), g("b"), g("c"), g("d")], "hv2": [g("y")], "hv3": [g("x")]},
        third,
    )
    assert moved(third, fourth) == []
    assert fourth["hosts"]["hv1"]["guests"]["a"] == second["hosts"]["hv1"]["guests"]["a"]


@pytest.mark.parametrize(("native", "parallel"), SITES)
def test_hosts_outside_the_play_are_kept_not_released(native, parallel):
    full = plan(native, parallel, {"hv1": [g("a")], "hv2": [g("b")], "hv3": [g("c")]})
    # --limit hv2: only hv2 is in the play, and it gains a guest
    limited = plan(native, parallel, {"hv2": [g("b"), g("b2")]}, full)
    assert limited["hosts"]["hv1"] is full["hosts"]["hv1"]
    assert limited["hosts"]["hv3"] is full["hosts"]["hv3"]
    assert moved(full, limited) == []
    assert limited["hosts"]["hv2"]["guests"]["b2"]["released"] is False
    # and a new host added with --limit gets a fresh slot, never one of the others'
    added = plan(native, parallel, {"hv0": [g("z")]}, limited)
    assert added["hosts"]["hv0"]["slot"] == 3
    assert moved(limited, added) == []


def test_release_hosts_then_prune_frees_slots():
    full = plan("ipv4", V6, {"hv1": [g("a")], "hv2": [g("b")], "hv3": [g("c")]})
    released = plan("ipv4", V6, {"hv1": [g("a")]}, full, release_hosts=["hv2"])
    assert released["hosts"]["hv2"]["released"] is True
    assert released["hosts"]["hv2"]["guests"]["b"]["released"] is True
    assert released["hosts"]["hv3"] is full["hosts"]["hv3"]
    assert moved(full, released) == []
    pruned = plan("ipv4", V6, {"hv1": [g("a")]}, released, prune=True)
    assert sorted(pruned["hosts"]) == ["hv1", "hv3"]
    reused = plan("ipv4", V6, {"hv4": []}, pruned)
    assert reused["hosts"]["hv4"]["slot"] == 1  # hv2's slot, free again after the prune


def test_state_absent_releases_and_prune_removes_the_guest():
    first = plan("ipv6", V4, {"hv1": [g("a"), g("b")]})
    absent = plan("ipv6", V4, {"hv1": [g("a", state="absent"), g("b")]}, first)
    assert absent["hosts"]["hv1"]["guests"]["a"] == {
        **first["hosts"]["hv1"]["guests"]["a"],
        "released": True,
    }
    pruned = plan("ipv6", V4, {"hv1": [g("b")]}, absent, prune=True)
    assert sorted(pruned["hosts"]["hv1"]["guests"]) == ["b"]
    again = plan("ipv6", V4, {"hv1": [g("b"), g("c")]}, pruned)
    assert again["hosts"]["hv1"]["guests"]["c"]["slot"] == 0  # a's slot, free after the prune


def test_released_host_comes_back_with_its_slot():
    full = plan("ipv4", V6, {"hv1": [g("a")], "hv2": [g("b")]})
    released = plan("ipv4", V6, {}, full, release_hosts=["hv1"])
    back = plan("ipv4", V6, {"hv1": [g("a")]}, released)
    assert back["hosts"]["hv1"] == full["hosts"]["hv1"]


def test_explicit_address_given_later_moves_only_that_guest():
    first = plan("ipv4", V6, {"hv1": [g("a"), g("b")]})
    second = plan("ipv4", V6, {"hv1": [g("a"), g("b", address="2001:db8:600::b")]}, first)
    assert second["hosts"]["hv1"]["guests"]["b"]["address"] == "2001:db8:600::b"
    assert second["hosts"]["hv1"]["guests"]["a"] == first["hosts"]["hv1"]["guests"]["a"]
    third = plan("ipv4", V6, {"hv1": [g("a"), g("b")]}, second)
    assert third == first


def save(tmp_path, p):
    """Write plan p as a plan file in tmp_path; its path."""
    path = str(tmp_path / "mv6_plan.yml")
    _plan.write_plan(path, {}, _plan.dump_plan(p, path))
    return path


def test_same_input_gives_byte_identical_file(tmp_path):
    guests = {f"hv{i}": [g(f"hv{i}-vm{j}", vcpus=1) for j in range(5)] for i in range(4)}
    a = _plan.dump_plan(plan("ipv4", V6, copy.deepcopy(guests)))
    b = _plan.dump_plan(plan("ipv4", V6, copy.deepcopy(guests)))
    assert a == b
    assert a[""].startswith(_plan.PLAN_HEADER.format(hosts_dir="mv6_plan.d"))
    assert sorted(a) == ["", "hv0.json", "hv1.json", "hv2.json", "hv3.json"]
    # reading the files back and planning again writes the very same bytes
    path = save(tmp_path, plan("ipv4", V6, copy.deepcopy(guests)))
    previous, files = _plan.read_plan(path)
    assert files == a
    again = plan("ipv4", V6, guests, previous)
    assert _plan.dump_plan(again, path) == a
    # a host outside the play keeps its file's text as read (not encoded again): same bytes
    one = plan("ipv4", V6, {"hv9": [g("x")]}, previous)
    assert one["hosts"]["hv1"] is previous["hosts"]["hv1"]
    reused = _plan.dump_plan(one, path, previous, files)
    assert reused == _plan.dump_plan(one, path)
    assert reused["hv1.json"] is files["hv1.json"]


def test_one_host_is_read_from_its_own_file(tmp_path):
    p = plan("ipv4", V6, {"hv1": [g("a")], "hv2": [g("b")]})
    path = save(tmp_path, p)
    # the other host's file is unreadable: reading hv1 does not touch it
    (tmp_path / "mv6_plan.d" / "hv2.json").write_text("not json")
    assert _plan.read_host_entry(path, "hv1") == p["hosts"]["hv1"]
    assert _plan.read_host_entry(path, "hv9") is None
    with pytest.raises(ValueError, match=r"hv2\.json is corrupt \(not JSON"):
        _plan.read_plan(path)


def test_host_names_are_quoted_into_one_file_name(tmp_path):
    p = plan("ipv4", V6, {"../x": [g("a")], "hv/1": []})
    path = save(tmp_path, p)
    assert sorted(os.listdir(tmp_path / "mv6_plan.d")) == ["..%2Fx.json", "hv%2F1.json"]
    assert _plan.read_plan(path)[0] == p


def test_pruned_host_files_are_removed_and_nothing_else(tmp_path):
    first = plan("ipv4", V6, {"hv1": [g("a")], "hv2": [g("b")]})
    path = save(tmp_path, first)
    (tmp_path / "mv6_plan.d" / "notes.txt").write_text("mine")
    released = plan("ipv4", V6, {}, first, release_hosts=["hv2"], prune=True)
    done = _plan.write_plan(path, _plan.read_plan(path)[1], _plan.dump_plan(released, path))
    assert sorted(os.listdir(tmp_path / "mv6_plan.d")) == ["hv1.json", "notes.txt"]
    assert done == [path, str(tmp_path / "mv6_plan.d" / "hv2.json")]
    assert _plan.read_plan(path)[0] == released


def test_a_version_1_plan_is_migrated_in_place_with_nothing_moved(tmp_path):
    v4 = {"prefix": "198.51.100.0/24", "host_prefixlen": 26}
    guests = {"hv1": [g("r", router=True)] + [g(f"w{i:02d}") for i in range(40)], "hv2": [g("x")]}
    new = plan("ipv6", v4, guests)
    # the version 1 file this collection wrote before: no site block, no router, no pool
    v1 = {"version": 1, **{k: new["site"][k] for k in _plan.SITE_ALLOCATION}}
    v1["hosts"] = {
        h: {k: v for k, v in e.items() if k not in ("router", "dhcp4_pool")}
        for h, e in new["hosts"].items()
    }
    path = tmp_path / "mv6_plan.yml"
    text = "# mv6.transition address plan, written by mv6.transition.address_plan.\n"
    text += yaml.safe_dump(v1)
    path.write_text(text)
    previous, before = _plan.read_plan(str(path))
    assert previous["version"] == 1
    migrated = plan("ipv6", v4, guests, previous)
    assert brief(migrated) == brief(new)
    assert migrated["hosts"]["hv1"]["router"] == "r"
    # hv1's 41 guests reach .42: its pool starts above them, smaller than the default
    assert migrated["hosts"]["hv1"]["dhcp4_pool"] == {
        "first": "198.51.100.47",
        "last": "198.51.100.62",
    }
    _plan.write_plan(str(path), before, _plan.dump_plan(migrated, str(path)), keep_v1=True)
    assert (tmp_path / "mv6_plan.yml.v1").read_text() == text
    again, _files = _plan.read_plan(str(path))
    assert again == migrated
    # and read as version 2 in memory for the read-only playbooks
    assert _plan.upgrade_plan(previous, "ipv6", v4) == migrated


def test_a_version_1_plan_whose_guests_fill_the_pool_gets_a_smaller_or_no_pool():
    v4 = {"prefix": "198.51.100.0/24", "host_prefixlen": 26, "dhcp4_pool_size": 0}
    full = plan("ipv6", v4, {"hv1": [g(f"w{i:02d}") for i in range(55)]})
    v1 = {"version": 1, **{k: full["site"][k] for k in _plan.SITE_ALLOCATION}}
    v1["hosts"] = {
        h: {k: v for k, v in e.items() if k not in ("router", "dhcp4_pool")}
        for h, e in full["hosts"].items()
    }
    site = {"prefix": "198.51.100.0/24", "host_prefixlen": 26}
    migrated = plan("ipv6", site, {"hv1": [g(f"w{i:02d}") for i in range(55)]}, v1)
    assert migrated["hosts"]["hv1"]["dhcp4_pool"] == {
        "first": "198.51.100.57",
        "last": "198.51.100.62",
    }
    assert brief(migrated) == brief(full)


def test_the_dhcp4_pool_is_reserved_by_the_allocator():
    # a /26 with 40 guests: the pool a Jinja formula gave (.32 - .61) overlapped them
    v4 = {"prefix": "198.51.100.0/24", "host_prefixlen": 26}
    result = plan("ipv6", v4, {"hv1": [g("r", router=True)] + [g(f"w{i:02d}") for i in range(40)]})
    host = result["hosts"]["hv1"]
    first = int(host["dhcp4_pool"]["first"].rsplit(".", 1)[1])
    last = int(host["dhcp4_pool"]["last"].rsplit(".", 1)[1])
    assert (first, last) == (47, 62)
    used = {int(x["address"].rsplit(".", 1)[1]) for x in host["guests"].values()}
    assert not used & set(range(first, last + 1))
    # the pool is kept: more guests fill up to it, then no further
    more = [g("r", router=True)] + [g(f"w{i:02d}") for i in range(44)]
    grown = plan("ipv6", v4, {"hv1": more}, result)
    assert grown["hosts"]["hv1"]["dhcp4_pool"] == host["dhcp4_pool"]
    with pytest.raises(ValueError, match="holds 45 guest addresses beside its DHCPv4 pool"):
        plan("ipv6", v4, {"hv1": [*more, g("w44")]}, result)
    with pytest.raises(ValueError, match=r"198\.51\.100\.50 is inside the DHCPv4 pool"):
        plan("ipv6", v4, {"hv1": [g("x", address="198.51.100.50")]})
    # no pool: every address is a guest's
    none = plan("ipv6", {**v4, "dhcp4_pool_size": 0}, {"hv1": [g(f"w{i:02d}") for i in range(61)]})
    assert none["hosts"]["hv1"]["dhcp4_pool"] is None
    assert plan("ipv4", V6, {"hv1": [g("a")]})["hosts"]["hv1"]["dhcp4_pool"] is None


def test_a_given_pool_size_resizes_kept_pools_and_never_moves_an_address():
    v4 = {"prefix": "198.51.100.0/24", "host_prefixlen": 26}
    guests = {"hv1": [g(f"w{i:02d}") for i in range(40)]}
    first = plan("ipv6", v4, guests)
    pool = first["hosts"]["hv1"]["dhcp4_pool"]
    assert pool == {"first": "198.51.100.47", "last": "198.51.100.62"}
    # without the key the kept pool stays, whatever the default would be now
    assert plan("ipv6", v4, guests, first)["hosts"]["hv1"]["dhcp4_pool"] == pool
    smaller = plan("ipv6", {**v4, "dhcp4_pool_size": 8}, guests, first)
    assert smaller["hosts"]["hv1"]["dhcp4_pool"] == {
        "first": "198.51.100.55",
        "last": "198.51.100.62",
    }
    assert (
        plan("ipv6", {**v4, "dhcp4_pool_size": 0}, guests, first)["hosts"]["hv1"]["dhcp4_pool"]
        is None
    )
    larger = plan("ipv6", {**v4, "dhcp4_pool_size": 21}, guests, first)
    assert larger["hosts"]["hv1"]["dhcp4_pool"]["first"] == "198.51.100.42"
    with pytest.raises(
        ValueError,
        match=r"^mv6_parallel.dhcp4_pool_size: 22 would put 198\.51\.100\.41 of guest hv1/w39 "
        r".*at most 21\)$",
    ):
        plan("ipv6", {**v4, "dhcp4_pool_size": 22}, guests, first)
    for p in (smaller, larger):
        assert brief(p) == brief(first)
    # a shared subnet whose router is outside MV6 (mv6_parallel.gateway) has no pool
    shared = {"prefix": "198.51.100.0/24", "layout": "shared", "gateway": "198.51.100.254"}
    assert plan("ipv6", shared, {"hv1": [g("a")]})["hosts"]["hv1"]["dhcp4_pool"] is None


def test_new_host_files_are_as_private_as_the_site_file(tmp_path):
    first = plan("ipv4", V6, {"hv1": [g("a")]})
    path = save(tmp_path, first)
    os.chmod(path, 0o600)
    more = plan("ipv4", V6, {"hv2": [g("b")]}, first)
    _plan.write_plan(path, _plan.read_plan(path)[1], _plan.dump_plan(more, path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "mv6_plan.d" / "hv2.json").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "mv6_plan.d" / "hv1.json").st_mode & 0o777 == 0o644


def test_a_missing_site_file_beside_host_files_is_refused(tmp_path):
    path = save(tmp_path, plan("ipv4", V6, {"hv1": [g("a")]}))
    (tmp_path / "mv6_plan.yml").unlink()
    with pytest.raises(
        ValueError, match=r"is missing or empty, but .*mv6_plan\.d holds host files"
    ):
        _plan.read_plan(path)
    (tmp_path / "mv6_plan.yml").write_text("")
    with pytest.raises(ValueError, match="would give their slots again"):
        _plan.read_plan(path)


def test_a_host_name_too_long_for_a_file_name_gets_a_hashed_one(tmp_path):
    name = "h" * 251
    p = plan("ipv4", V6, {name: [g("a")]})
    path = save(tmp_path, p)
    (only,) = os.listdir(tmp_path / "mv6_plan.d")
    assert only.startswith("h-") and len(only) == 2 + 64 + 5
    assert _plan.read_plan(path)[0] == p


def test_site_names_cannot_change_under_a_plan():
    first = plan("ipv4", V6, {"hv1": [g("a")]})
    for key, value in (("bridge", "mv6br1"), ("nft_table", "mv6_other")):
        with pytest.raises(
            ValueError, match=f"^mv6_parallel.{key}: is {value}, but the plan names"
        ):
            plan("ipv4", {**V6, key: value}, {"hv1": [g("a")]}, first)
    # the uplink and the host guard are settings the roles apply: they may change
    changed = plan("ipv4", {**V6, "uplink": "eth9", "host_guard": False}, {"hv1": [g("a")]}, first)
    assert (changed["site"]["uplink"], changed["site"]["host_guard"]) == ("eth9", False)
    assert changed["site"]["owned"]["interfaces"] == ["mv6br0", "mv6p*", "eth9"]


def test_mac_that_yaml_1_1_would_read_as_a_number_stays_a_string():
    # 02:6d:... never looks like a number, but a hand-edited file might: it must stay text
    p = plan("ipv4", V6, {})
    p["site"]["dns"] = ["02:60:00:00:00:00"]
    text = _plan.dump_plan(p)[""]
    assert yaml.safe_load(text)["site"]["dns"] == ["02:60:00:00:00:00"]


def test_every_mac_is_locally_administered_unicast():
    result = plan("ipv4", V6, {f"hv{i}": [g(f"h{i}v{j}") for j in range(9)] for i in range(9)})
    for host in result["hosts"].values():
        for guest in host["guests"].values():
            first = int(guest["mac"][:2], 16)
            assert first & 0x02 and not first & 0x01


def test_hand_edited_mac_in_the_plan_file_is_refused(tmp_path):
    path = save(tmp_path, plan("ipv4", V6, {"hv1": [g("a"), g("b")]}))
    host = tmp_path / "mv6_plan.d" / "hv1.json"
    host.write_text(
        host.read_text().replace('"mac": "02:6d:00:00:00:01"', '"mac": "02:6d:00:00:00:00"')
    )
    message = (
        f"mv6_plan_file: {path} is corrupt (hosts.hv1.guests.b.mac is 02:6d:00:00:00:00, but its "
        "slots give 02:6d:00:00:00:01); it was kept unchanged, fix it or move it away"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _plan.read_plan(path)


CORRUPT = [
    (
        "not-yaml",
        "hosts: [\n",
        "mv6_plan_file: {path} is corrupt (not YAML: while parsing a flow node did not find "
        'expected node content in "<unicode string>", line 2, column 1); it was kept '
        "unchanged, fix it or move it away",
    ),
    (
        "a-list",
        "- 1\n",
        "mv6_plan_file: {path} is corrupt (the plan is a list, not a mapping); it was kept "
        "unchanged, fix it or move it away",
    ),
    (
        "version",
        "version: 3\n",
        "mv6_plan_file: {path} is corrupt (version is 3, expected 1 or 2); it was kept unchanged, "
        "fix it or move it away",
    ),
    (
        "guest-without-mac",
        "CUT_MAC",
        "mv6_plan_file: {path} is corrupt (hosts.hv1.guests.a.mac is missing or not a str); it "
        "was kept unchanged, fix it or move it away",
    ),
    (
        "shared-slot",
        "SAME_SLOT",
        "mv6_plan_file: {path} is corrupt (hosts hv1 and hv2 share slot 0); it was kept "
        "unchanged, fix it or move it away",
    ),
    (
        "owned-edited",
        "OWNED",
        "mv6_plan_file: {path} is corrupt (site.owned is not what the site's bridge, taps, "
        "uplink and table give); it was kept unchanged, fix it or move it away",
    ),
    (
        "router-not-a-guest",
        "ROUTER",
        "mv6_plan_file: {path} is corrupt (hosts.hv1.router is missing or not one of its guests "
        "or null); it was kept unchanged, fix it or move it away",
    ),
    (
        "slot-out-of-range",
        "BIG_SLOT",
        "mv6_plan_file: {path} is corrupt (hosts.hv1.guests.a.slot is 65536, out of range); it "
        "was kept unchanged, fix it or move it away",
    ),
    (
        "host-file-missing",
        "NO_HOST_FILE",
        "mv6_plan_file: {path} is corrupt (host hv2 is in its index but {hosts}/hv2.json is "
        "missing); it was kept unchanged, fix it or move it away",
    ),
    (
        "host-file-of-another-host",
        "OTHER_HOST",
        "mv6_plan_file: {hosts}/hv2.json is corrupt (it is not the entry of host hv2); it was "
        "kept unchanged, fix it or move it away",
    ),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_plan_file_is_refused(tmp_path, text, message):
    path = tmp_path / "mv6_plan.yml"
    hosts = tmp_path / "mv6_plan.d"
    save(tmp_path, plan("ipv4", V6, {"hv1": [g("a")], "hv2": []}))
    good = path.read_text()
    if text == "CUT_MAC":
        h1 = hosts / "hv1.json"
        h1.write_text(re.sub(r'"mac": "[^"]*", ', "", h1.read_text(), count=1))
        text = good
    elif text == "SAME_SLOT":
        text = good.replace("  hv2: 1\n", "  hv2: 0\n")
        h2 = hosts / "hv2.json"
        h2.write_text(h2.read_text().replace('"slot": 1', '"slot": 0'))
    elif text == "OWNED":
        text = good.replace("    - mv6p*\n", "    - '*'\n")
    elif text == "ROUTER":
        h1 = hosts / "hv1.json"
        h1.write_text(h1.read_text().replace('"router": null', '"router": "nope"'))
        text = good
    elif text == "BIG_SLOT":
        h1 = hosts / "hv1.json"
        # a guest slot beyond the 16 bits a per_host MAC holds for it
        h1.write_text(h1.read_text().replace('"slot": 0}', '"slot": 65536}'))
        text = good
    elif text == "NO_HOST_FILE":
        (hosts / "hv2.json").unlink()
        text = good
    elif text == "OTHER_HOST":
        (hosts / "hv2.json").write_text((hosts / "hv1.json").read_text())
        text = good
    path.write_text(text)
    snapshot = {p.name: p.read_text() for p in hosts.iterdir()}
    expected = message.format(path=path, hosts=hosts)
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        _plan.read_plan(str(path))
    assert path.read_text() == text
    assert {p.name: p.read_text() for p in hosts.iterdir()} == snapshot


def test_empty_plan_file_is_no_plan(tmp_path):
    (tmp_path / "empty.yml").write_text("")
    assert _plan.read_plan(str(tmp_path / "empty.yml"))[0] is None
    assert _plan.read_plan(str(tmp_path / "absent.yml")) == (None, {})


def test_unreadable_plan_file(tmp_path):
    path = tmp_path / "mv6_plan.yml"
    path.mkdir()
    message = f"mv6_plan_file: cannot read {path} (Is a directory); it was kept unchanged"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _plan.read_plan_file(str(path))
    bad = tmp_path / "latin1.yml"
    bad.write_bytes(b"version: \xff\n")
    with pytest.raises(ValueError, match=r"^mv6_plan_file: cannot read .*latin1\.yml \("):
        _plan.read_plan_file(str(bad))


def test_write_is_atomic_and_keeps_the_mode(tmp_path):
    path = tmp_path / "mv6_plan.yml"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    _plan.write_plan_file(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["mv6_plan.yml"]  # no temporary file left behind


def test_write_into_a_missing_directory_fails_cleanly(tmp_path):
    path = tmp_path / "nope" / "mv6_plan.yml"
    message = f"mv6_plan_file: cannot write in {path.parent} (No such file or directory)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _plan.write_plan_file(str(path), "x")


FILTER_CASES = [
    (_plan.parallel_subnet, (V6, 3), "2001:db8:600:3::/64"),
    (_plan.parallel_subnet, (V4, 3), "198.51.100.192/26"),
    (
        _plan.parallel_subnet,
        ({"prefix": "198.51.100.0/24", "layout": "shared"}, 9),
        "198.51.100.0/24",
    ),
    (_plan.guest_mac, (V6, 2, 5), "02:6d:00:02:00:05"),
    (
        _plan.guest_mac,
        ({"prefix": "2001:db8:1::/64", "layout": "shared"}, 2, 70000),
        "02:6d:00:01:11:70",
    ),
    (_plan.guest_address, (V6, 2, 5), "2001:db8:600:2:6d:ff:fe02:5"),
    (_plan.guest_address, (V4, 1, 0), "198.51.100.66"),
    (_plan.guest_address, (V4, 1, 0, True), "198.51.100.65"),
]


@pytest.mark.parametrize(("func", "args", "expected"), FILTER_CASES)
def test_one_off_lookups(func, args, expected):
    assert func(*args) == expected


def test_one_off_lookups_agree_with_the_plan():
    result = plan("ipv6", V4, {"hv1": [g("a"), g("r", router=True)], "hv2": [g("b")]})
    for h, host in result["hosts"].items():
        assert _plan.parallel_subnet(V4, host["slot"]) == host["subnet"]
        for n, x in host["guests"].items():
            assert _plan.guest_entry(result, h, n) is x
            assert _plan.guest_mac(V4, host["slot"], x["slot"]) == x["mac"]
            assert _plan.guest_address(V4, host["slot"], x["slot"], x["router"]) == x["address"]


LOOKUP_ERRORS = [
    (_plan.host_entry, ({"hosts": {}}, "hv1"), "mv6_plan: host hv1 is not in the plan"),
    (
        _plan.host_entry,
        ("x", "hv1"),
        "mv6_plan: must be a plan returned by mv6.transition.address_plan",
    ),
    (
        _plan.guest_entry,
        ({"hosts": {"hv1": {"guests": {}}}}, "hv1", "a"),
        "mv6_plan: host hv1 has no guest a in the plan",
    ),
    (_plan.guest_mac, (V6, 70000, 0), "host_slot: must be an integer from 0 to 65535, got 70000"),
    (_plan.guest_address, (V4, 0, -1), "guest_slot: must be an integer from 0 to 60, got -1"),
    (_plan.guest_address, (V4, 0, 1, "no"), "router: must be true or false, got 'no'"),
    (
        _plan.parallel_subnet,
        ({"prefix": "198.51.100.0/24", "host_prefixlen": 26}, 4),
        "host_slot: must be an integer from 0 to 3, got 4",
    ),
]


@pytest.mark.parametrize(("func", "args", "message"), LOOKUP_ERRORS)
def test_one_off_lookup_errors(func, args, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        func(*args)
