"""The plan's picture (module_utils/_diagram.py and the plan_diagram filter): every host and
guest drawn, the two networks never joined, the same bytes for the same plan, bad input named."""

from __future__ import annotations

import random
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible.errors import AnsibleFilterError
from ansible_collections.mv6.transition.plugins.filter import plan as filters
from ansible_collections.mv6.transition.plugins.module_utils import _diagram, _plan

SVG = "{http://www.w3.org/2000/svg}"


def small(uplink=None, native="ipv4"):
    parallel = (
        {"prefix": "2001:db8:100::/48"}
        if native == "ipv4"
        else {"prefix": "198.51.100.0/24", "host_prefixlen": 26, "address_mode": "sequential"}
    )
    if uplink:
        parallel["uplink"] = uplink
    guests = {
        "hv1": [{"name": "web"}, {"name": "rtr", "router": True}, {"name": "old"}],
        "hv2": [{"name": "db"}],
        "hv3": [],
        "hv4": [{"name": "app"}, {"name": "cache"}],
    }
    plan = _plan.build_plan(native, parallel, guests)
    # 'old' removed from hv1: released, kept in the plan
    guests["hv1"] = guests["hv1"][:2]
    return _plan.build_plan(native, parallel, guests, plan)


def fleet(hosts: int, guests: int = 4) -> dict:
    return _plan.build_plan(
        "ipv4",
        {"prefix": "2001:db8::/32"},
        {f"hv{i:04d}": [{"name": f"g{i}x{j}"} for j in range(guests)] for i in range(hosts)},
    )


def parse(text: str) -> ET.Element:
    return ET.fromstring(text.encode())


def groups(root: ET.Element, kind: str) -> dict:
    return {
        g.get("data-name"): g
        for g in root.iter(f"{SVG}g")
        if kind in (g.get("class") or "").split()
    }


def texts(element: ET.Element) -> str:
    return "\n".join(t.text or "" for t in element.iter(f"{SVG}text"))


def segments(root: ET.Element, net: str) -> list:
    return [
        tuple(float(line.get(k)) for k in ("x1", "y1", "x2", "y2"))
        for line in root.iter(f"{SVG}line")
        if line.get("class") == net
    ]


def touch(a, b) -> bool:
    """Whether two axis-parallel segments share any point."""
    ax1, ax2 = sorted((a[0], a[2]))
    ay1, ay2 = sorted((a[1], a[3]))
    bx1, bx2 = sorted((b[0], b[2]))
    by1, by2 = sorted((b[1], b[3]))
    return ax1 <= bx2 and bx1 <= ax2 and ay1 <= by2 and by1 <= ay2


@pytest.mark.parametrize("uplink", [None, "eth1"])
@pytest.mark.parametrize("native", ["ipv4", "ipv6"])
def test_every_host_and_guest_is_drawn_with_its_plan(uplink, native):
    plan = small(uplink, native)
    text = _diagram.render(plan, {"hv1": "203.0.113.9"}, {"hv1": {"web": "non_persistent"}})
    root = parse(text)
    hosts = groups(root, "hv")
    assert sorted(hosts) == sorted(plan["hosts"])
    drawn_guests = {}
    for host, entry in plan["hosts"].items():
        box = texts(hosts[host])
        assert entry["subnet"] in box and f"slot {entry['slot']}" in box
        assert plan["site"]["nft_table"] in box and plan["site"]["bridge"] in box
        vms = groups(hosts[host], "vm")
        assert sorted(vms) == sorted(entry["guests"])
        for name, guest in entry["guests"].items():
            label = texts(vms[name])
            for value in (guest["address"], guest["mac"], guest["port"]):
                assert value in label, (name, value)
            assert ("router" in label) is guest["router"]
            assert ("released" in vms[name].get("class")) is guest["released"]
            drawn_guests[name] = label
    assert sorted(drawn_guests) == ["app", "cache", "db", "old", "rtr", "web"]
    assert "non_persistent" in drawn_guests["web"]
    assert "persistence not given" in drawn_guests["db"]
    assert "203.0.113.9" in texts(hosts["hv1"]) and "address not given" in texts(hosts["hv2"])
    assert ("uplink eth1" in text) is bool(uplink)
    assert "parallel router: rtr on hv1" in text


@pytest.mark.parametrize("uplink", [None, "eth1"])
def test_the_two_networks_never_meet(uplink):
    root = parse(_diagram.render(small(uplink)))
    native, parallel = segments(root, "native"), segments(root, "parallel")
    assert native and parallel
    assert {line.get("class") for line in root.iter(f"{SVG}line")} == {"native", "parallel"}
    for a in native:
        for b in parallel:
            assert not touch(a, b), (a, b)
    # and the two are drawn in two colours
    style = next(root.iter(f"{SVG}style")).text
    assert f".native{{stroke:{_diagram.NATIVE}" in style
    assert f".parallel{{stroke:{_diagram.PARALLEL}" in style
    assert _diagram.NATIVE != _diagram.PARALLEL


def test_the_same_plan_gives_the_same_bytes_whatever_its_order():
    plan = small("eth1")
    first = _diagram.render(plan)
    rng = random.Random(7)
    hosts = list(plan["hosts"].items())
    rng.shuffle(hosts)
    shuffled = {**plan, "hosts": {}}
    for host, entry in hosts:
        guests = list(entry["guests"].items())
        rng.shuffle(guests)
        shuffled["hosts"][host] = {**entry, "guests": dict(guests)}
    assert _diagram.render(shuffled) == first
    assert _diagram.render(plan) == first
    assert first.endswith("</svg>\n") and _diagram.drawn_here(first)


def test_a_large_fleet_is_a_summary_with_every_host():
    plan = fleet(1000)
    text = _diagram.render(plan)
    root = parse(text)
    hosts = groups(root, "hv")
    assert sorted(hosts) == sorted(plan["hosts"])
    for host in ("hv0000", "hv0500", "hv0999"):
        row = texts(hosts[host])
        assert plan["hosts"][host]["subnet"] in row and "4" in row
    assert "1000 hypervisors, 4000 guest slots" in text
    assert groups(root, "vm") == {}  # guests are counted, not drawn, past summary_over
    assert _diagram.render(plan) == text
    # The threshold is the caller's: the same fleet drawn in full has every guest.
    assert len(groups(parse(_diagram.render(fleet(50, 2), summary_over=50)), "vm")) == 100
    assert len(groups(parse(_diagram.render(fleet(50, 2), summary_over=49)), "vm")) == 0


def test_text_is_escaped():
    text = _diagram.render(small(), persistence={"hv1": {"web": "<&\"'>"}})
    root = parse(text)  # well-formed
    assert "<&\"'>" in texts(groups(groups(root, "hv")["hv1"], "vm")["web"])


def test_an_empty_plan_draws_a_page_saying_so():
    plan = _plan.build_plan("ipv4", {"prefix": "2001:db8::/32"}, {})
    assert "no hypervisor is in the plan yet" in texts(parse(_diagram.render(plan)))


@pytest.mark.parametrize(
    ("plan", "kwargs", "message"),
    [
        (None, {}, r"plan: a version 2 plan is needed .*got no plan"),
        ({"version": 1, "hosts": {}}, {}, r"plan: a version 2 plan is needed .*got version 1"),
        ("text", {}, r"got no plan"),
        ("SMALL", {"summary_over": -1}, r"summary_over: must be 0 or more hosts, got -1"),
        ("SMALL", {"summary_over": True}, r"summary_over: must be 0 or more hosts, got True"),
        ("SMALL", {"native_addresses": ["x"]}, r"native_addresses: must be a mapping"),
        ("SMALL", {"persistence": "x"}, r"persistence: must be a mapping"),
        ("BROKEN", {}, r"site is missing or not a mapping"),
    ],
)
def test_bad_input_is_named(plan, kwargs, message):
    if plan == "SMALL":
        plan = small()
    elif plan == "BROKEN":
        plan = {"version": 2, "hosts": {}}
    with pytest.raises(ValueError, match=message):
        _diagram.render(plan, **kwargs)
    with pytest.raises(AnsibleFilterError, match=message):
        filters.plan_diagram(plan, **kwargs)


def test_the_filter_is_registered_and_renders():
    assert filters.FilterModule().filters()["plan_diagram"] is filters.plan_diagram
    assert filters.plan_diagram(small()) == _diagram.render(small())


def test_only_a_picture_drawn_here_counts_as_one():
    assert _diagram.drawn_here(_diagram.render(small()))
    assert not _diagram.drawn_here('<?xml version="1.0"?>\n<svg/>\n')
    assert not _diagram.drawn_here("")


def test_characters_xml_forbids_still_give_a_picture_that_parses():
    plan = _plan.build_plan("ipv4", {"prefix": "2001:db8::/32"}, {"x\x01y": [{"name": "g"}]})
    root = parse(
        _diagram.render(plan, {"x\x01y": "198.51.100.1\x0c"}, {"x\x01y": {"g": "a\x01b\udc80"}})
    )
    assert list(groups(root, "hv")) == ["x\ufffdy"]
    assert "a\ufffdb\ufffd" in texts(root)


def test_persistence_from_mv6_guests_with_the_roles_default():
    plan = small()
    given = {"hv1": [{"name": "web", "persistence": "non_persistent"}, {"name": "rtr"}]}
    vms = groups(parse(_diagram.render(plan, persistence=given)), "vm")
    assert "web · non_persistent" in texts(vms["web"])
    assert "rtr · router · persistent" in texts(vms["rtr"])
    assert "persistence not given" in texts(vms["db"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"persistence": {"hv1": {"web": 5}}},
            r"persistence\[hv1\]\[web\]: must be text, got a int",
        ),
        ({"persistence": {"hv1": "x"}}, r"persistence\[hv1\]: must be a mapping of guest"),
        ({"persistence": {"hv1": ["web"]}}, r"persistence\[hv1\]\[0\]: an mv6_guests entry needs"),
        ({"native_addresses": {"hv1": 7}}, r"native_addresses\[hv1\]: must be an address as text"),
    ],
)
def test_bad_details_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _diagram.render(small(), **kwargs)


def test_released_routers_are_not_the_sites_routers_and_pools_are_drawn():
    parallel = {"prefix": "198.51.100.0/24", "host_prefixlen": 26, "address_mode": "sequential"}
    guests = {"a": [{"name": "r1", "router": True}], "b": [{"name": "r2", "router": True}]}
    plan = _plan.build_plan("ipv6", parallel, guests)
    plan = _plan.build_plan("ipv6", parallel, {"a": guests["a"]}, plan, release_hosts=["b"])
    text = _diagram.render(plan)
    assert "parallel router: r1 on a</text>" in text
    pool = plan["hosts"]["a"]["dhcp4_pool"]
    assert pool and f"DHCPv4 pool {pool['first']} to {pool['last']}" in text


def test_long_text_is_cut_to_its_box_with_the_whole_text_in_a_tooltip():
    name = "a-very-long-hypervisor-name-" + "x" * 30
    plan = _plan.build_plan("ipv4", {"prefix": "2001:db8::/32"}, {name: [{"name": "g"}]})
    root = parse(_diagram.render(plan))
    title = next(t for t in groups(root, "hv")[name].iter(f"{SVG}text") if t.get("class") == "h")
    tip = title.find(f"{SVG}title")
    shown = tip.tail  # <text><title>the whole text</title>what is shown</text>
    assert shown.endswith("…") and tip.text == name
    assert len(shown) * _diagram.CHAR_W * 14 / 11 <= _diagram.HOST_W - 130
